"""The sd_notify client on real AF_UNIX datagram sockets; the unit files checked by systemd.

``NotifySocket`` is reusable: a test that runs the daemon binds one, puts ``env`` into the daemon's
environment (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``) and reads what the daemon sent with
``recv``/``arecv``, e.g.::

    from tests.test_systemd import NotifySocket

    with NotifySocket(tmp_path, watchdog_usec=200_000) as sock:
        ...start the daemon with env=sock.env...
        async with asyncio.timeout(10):
            assert "READY=1" in (await sock.arecv_until("READY=1"))[-1]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from agent.config import APP_NAME, EXIT_CONFIG
from agent.systemd import Notifier, watchdog_pinger

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "wearable-agent.service"
SYSUSERS = ROOT / "systemd" / "wearable-agent.sysusers"
EXAMPLE = ROOT / "config.example.toml"
MAX_EXPOSURE = 1.5


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notification socket.

    Args:
        directory: where to bind (a short path: AF_UNIX paths are limited to 107 bytes), or None
            for an abstract-namespace socket.
        watchdog_usec: value for ``WATCHDOG_USEC`` in :attr:`env` (None: no watchdog).
    """

    def __init__(self, directory: Path | None, *, watchdog_usec: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if directory is None:
            self.address = f"@wearable-agent-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + self.address[1:])
        else:
            self.address = str(directory / "notify.sock")
            self.sock.bind(self.address)
        self.env: dict[str, str] = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            self.env["WATCHDOG_USEC"] = str(watchdog_usec)

    def recv(self, timeout: float = 5.0) -> str:
        """The next datagram (blocks at most ``timeout`` seconds, then raises TimeoutError)."""
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        out: list[str] = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    async def arecv(self) -> str:
        """The next datagram, awaited on the running loop."""
        self.sock.setblocking(False)
        data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        return data.decode()

    async def arecv_until(self, assignment: str) -> list[str]:
        """Datagrams up to and including the first one containing ``assignment`` (a line).

        Wrap the call in ``asyncio.timeout()`` to bound the wait.
        """
        seen: list[str] = []
        while True:
            message = await self.arecv()
            seen.append(message)
            if assignment in message.split("\n"):
                return seen

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(tmp_path) as sock:
        yield sock


# --------------------------------------------------------------------------------------------------
# Notifier


def test_messages_reach_a_path_socket(tmp_path: Path) -> None:
    with NotifySocket(tmp_path) as sock:
        notifier = Notifier.from_env(sock.env)
        assert notifier.enabled
        assert notifier.ready()
        assert sock.recv() == "READY=1"
        assert notifier.status("connected to wss://example; outbox 3")
        assert sock.recv() == "STATUS=connected to wss://example; outbox 3"
        assert notifier.watchdog()
        assert sock.recv() == "WATCHDOG=1"
        assert notifier.stopping("flushing outbox")
        assert sock.recv() == "STOPPING=1\nSTATUS=flushing outbox"
        assert notifier.ready(status="up")
        assert sock.recv() == "READY=1\nSTATUS=up"
        assert notifier.extend_timeout(2.5)
        assert sock.recv() == "EXTEND_TIMEOUT_USEC=2500000"


def test_messages_reach_an_abstract_socket() -> None:
    with NotifySocket(None) as sock:
        assert sock.address.startswith("@")
        notifier = Notifier.from_env(sock.env)
        notifier.ready()
        notifier.watchdog()
        assert [sock.recv(), sock.recv()] == ["READY=1", "WATCHDOG=1"]


def test_status_newlines_cannot_inject_assignments(tmp_path: Path) -> None:
    with NotifySocket(tmp_path) as sock:
        Notifier(sock.address).status("line one\nREADY=1\r\nthree")
        assert sock.recv() == "STATUS=line one READY=1 three"


def test_no_notify_socket_is_a_silent_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.watchdog_interval_s() is None


def test_send_failure_returns_false_and_never_raises(tmp_path: Path) -> None:
    gone = Notifier(str(tmp_path / "no-such-socket"))
    assert gone.enabled
    assert gone.ready() is False
    assert gone.watchdog() is False
    with NotifySocket(tmp_path) as sock:
        notifier = Notifier(sock.address)
    # The manager went away after we found the socket (closed and unlinked).
    os.unlink(sock.address)
    assert notifier.watchdog() is False


def test_send_never_blocks_when_the_receiver_queue_is_full(tmp_path: Path) -> None:
    with NotifySocket(tmp_path) as sock:
        sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        notifier = Notifier(sock.address)
        results = [notifier.status("x" * 1000) for _ in range(2000)]
        assert results[0] is True
        assert False in results  # queue filled up: reported, not blocked, not raised
        assert sock.pending()[0].startswith("STATUS=")


def test_watchdog_interval_from_environment() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_interval_s() == 30.0
    mine = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(mine).watchdog_interval_s() == 30.0
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval_s() is None
    for bad in ("", "abc", "0", "-5"):
        assert Notifier.from_env({**env, "WATCHDOG_USEC": bad}).watchdog_interval_s() is None


async def test_async_helper_reads_until_an_assignment(tmp_path: Path) -> None:
    with NotifySocket(tmp_path, watchdog_usec=200_000) as sock:
        notifier = Notifier.from_env(sock.env)
        assert notifier.watchdog_interval_s() == pytest.approx(0.2)
        notifier.status("starting")
        notifier.ready()
        notifier.watchdog()
        async with asyncio.timeout(10):
            seen = await sock.arecv_until("READY=1")
        assert seen == ["STATUS=starting", "READY=1"]
        assert await sock.arecv() == "WATCHDOG=1"


# --------------------------------------------------------------------------------------------------
# Unit files

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_has_the_required_settings() -> None:
    s = _unit_settings(UNIT)
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    assert s["StateDirectory"] == [APP_NAME]
    assert s["ConfigurationDirectory"] == [APP_NAME]
    assert s["ExecStart"] == ["/opt/wearable-agent/venv/bin/agent run"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # Every credential the unit loads has an empty fallback, so a missing file is not fatal…
    loaded = {v.split(":", 1)[0] for v in s["LoadCredential"]}
    fallback = {v.split(":", 1)[0] for v in s["SetCredential"]}
    assert loaded == fallback == {"token", "api-key"}
    # …and is the credential the example config tells users to reference.
    example = EXAMPLE.read_text()
    for name in loaded:
        assert f'"cred:{name}"' in example


def test_unit_user_is_the_one_sysusers_creates() -> None:
    s = _unit_settings(UNIT)
    entries = [
        line.split() for line in SYSUSERS.read_text().splitlines() if line and line[0] != "#"
    ]
    users = {e[1] for e in entries if e[0] == "u"}
    assert s["User"] == s["Group"] == [APP_NAME]
    assert APP_NAME in users
    assert ["m", APP_NAME, "bluetooth"] in [e[:3] for e in entries]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_file_creates_the_user_in_a_scratch_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Failed" not in done.stderr and "ignoring" not in done.stderr, done.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    user = next(line for line in passwd.splitlines() if line.startswith(f"{APP_NAME}:"))
    fields = user.split(":")
    assert fields[5] == f"/var/lib/{APP_NAME}"
    assert fields[6].endswith("nologin")
    assert 0 < int(fields[2]) < 1000  # a system user
    group = (tmp_path / "etc" / "group").read_text()
    bluetooth = next(line for line in group.splitlines() if line.startswith("bluetooth:"))
    assert bluetooth.split(":")[3].split(",") == [APP_NAME]


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with only ExecStart's binary replaced by this interpreter running the agent.

    ``systemd-analyze verify`` insists that the ExecStart binary exists; the unit names the
    documented install location, which does not exist on a development machine. Everything else
    is verified byte for byte.
    """
    text = UNIT.read_text()
    executable = "/opt/wearable-agent/venv/bin/agent run"
    assert text.count(f"ExecStart={executable}\n") == 1
    local = ROOT / ".venv" / "bin" / "agent"
    command = f"{local} run" if local.exists() else f"{sys.executable} -m agent run"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={executable}\n", f"ExecStart={command}\n"))
    return copy


@needs_analyze
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = _runnable_copy(tmp_path)
    done = subprocess.run(
        [ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    # verify exits 0 on unknown keys and bad values ("ignoring"): any stderr is a failure.
    assert done.stderr == ""
    assert done.returncode == 0


@needs_analyze
def test_systemd_analyze_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above can fail: an unknown key is reported on stderr."""
    assert ANALYZE is not None
    unit = _runnable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=30", "WatchdogSecs=30"))
    done = subprocess.run(
        [ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert "WatchdogSecs" in done.stderr


def _exposure(unit: Path, cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    assert ANALYZE is not None
    done = subprocess.run(
        [
            ANALYZE,
            "security",
            "--offline=true",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            "--no-pager",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout + done.stderr
    return float(match.group(1)), done


@needs_analyze
def test_security_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    exposure, done = _exposure(UNIT, tmp_path)
    assert exposure <= MAX_EXPOSURE, done.stdout
    # --threshold is exposure x 10; the command itself agrees.
    assert done.returncode == 0, done.stdout + done.stderr


@needs_analyze
def test_security_check_would_catch_weakened_hardening(tmp_path: Path) -> None:
    """The threshold can fail: dropping the sandboxing pushes exposure above it."""
    weak = tmp_path / UNIT.name
    kept = [
        line
        for line in UNIT.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "SystemCall", "Restrict", "Capability"))
    ]
    weak.write_text("\n".join(kept) + "\n")
    exposure, done = _exposure(weak, tmp_path)
    assert exposure > MAX_EXPOSURE
    assert done.returncode != 0


async def test_watchdog_pinger_pings_at_half_the_interval(tmp_path: Path) -> None:
    with NotifySocket(tmp_path, watchdog_usec=30_000_000) as sock:
        notifier = Notifier.from_env(sock.env)
        naps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            naps.append(seconds)
            if len(naps) == 3:
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await watchdog_pinger(notifier, sleep=fake_sleep)
        assert naps == [15.0, 15.0, 15.0]
        assert sock.pending() == ["WATCHDOG=1"] * 3


async def test_watchdog_pinger_on_the_real_loop(tmp_path: Path) -> None:
    # 20 ms watchdog: pings every 10 ms; we await the datagrams, not a wall-clock sleep.
    with NotifySocket(tmp_path, watchdog_usec=20_000) as sock:
        task = asyncio.create_task(watchdog_pinger(Notifier.from_env(sock.env)))
        try:
            async with asyncio.timeout(10):
                assert [await sock.arecv() for _ in range(3)] == ["WATCHDOG=1"] * 3
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_watchdog_pinger_returns_without_a_watchdog() -> None:
    await asyncio.wait_for(watchdog_pinger(Notifier.from_env({"NOTIFY_SOCKET": "/x"})), 5)
