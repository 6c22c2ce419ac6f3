"""Shared parts of the reliability tests: a relay as a real process, tokens, readings, secrets.

Why a real process: a relay that is SIGKILLed loses everything it had not committed, which an
in-process relay cannot imitate. Every wait here is on an event (a line on a pipe, a process
exit, an uplink condition) and bounded by :data:`WAIT_S` only as a safety net. Randomness comes
from seeded :class:`random.Random` instances so a failing run replays with the same choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.backoff import Backoff
from agent.outbox import Outbox
from agent.protocol import DataType, format_ts
from agent.readings import Reading
from agent.relay.server import Relay, RelayConfig
from agent.relay.store import DispatchStore, Stored
from agent.tokens import TokenProvider

#: Safety net for any single wait (never a delay that lets things happen).
WAIT_S = 20.0
DEV_ID = "dev-rel"
API_KEY = "rel-api-key-0123456789abcdef-SECRET"
USER_ID = "user-rel"
#: First sample time; reading ``i`` is at ``T0 + i * DT`` (distinct, increasing ``ts``).
T0 = 1_700_000_000.0
DT = 0.001
#: The two scalar types streamed (alternating), so "in order per type" is checked per type.
TYPES = (DataType.STEPS, DataType.HEART_RATE)
REPO = Path(__file__).resolve().parents[2]


def numbered(i: int) -> Reading:
    """Reading number ``i``: ``val == i``, distinct ``ts``, type alternating between TYPES."""
    return Reading(TYPES[i % len(TYPES)], T0 + i * DT, val=float(i))


def fast_backoff(seed: int, cap_s: float = 0.2) -> Backoff:
    """Small, seeded full-jitter backoff so reconnects take milliseconds."""
    return Backoff(base_s=0.02, cap_s=cap_s, stable_after_s=60.0, rng=random.Random(seed).random)


def free_port() -> int:
    """A port that was free a moment ago (the relay binds with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api_key_file(tmp_path: Path) -> Path:
    """The developer's API key, mode 0600 as ``agent relay`` demands."""
    path = tmp_path / "api.key"
    path.write_text(API_KEY + "\n")
    path.chmod(0o600)
    return path


class RecordingTokens:
    """Wraps a provider: counts calls and remembers every token (to scan logs for them)."""

    def __init__(self, inner: TokenProvider) -> None:
        self.inner = inner
        self.issued: list[str] = []
        self.calls = 0

    async def get(self) -> str:
        self.calls += 1
        token = await self.inner.get()
        self.issued.append(token)
        return token


class RelayTokens:
    """Producer tokens minted by an in-process relay (no HTTP)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def get(self) -> str:
        return await self.relay.mint_token(user_id=USER_ID, developer=DEV_ID)


@contextlib.asynccontextmanager
async def inprocess_relay(db: Path, heartbeat_ms: int = 300) -> AsyncIterator[Relay]:
    """A relay in the test's event loop (for failures that are not process failures)."""
    config = RelayConfig(
        port=0, db=db, developers={DEV_ID: API_KEY}, heartbeat_interval_ms=heartbeat_ms,
        identify_timeout_s=5.0, token_ttl_s=60.0,
    )
    async with Relay(config) as relay:
        yield relay


@dataclass
class RelayProcess:
    """``python -m agent relay`` as a child process on a fixed port with a fixed database.

    ``start()`` returns once the relay printed its listening line; ``kill()`` is SIGKILL (no
    shutdown code runs); stderr of every run is appended to ``log_path``.
    """

    db: Path
    api_key_file: Path
    log_path: Path
    heartbeat_ms: int = 300
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    stdout_lines: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connect"

    async def start(self) -> None:
        assert self.proc is None, "relay already running"
        argv = [
            sys.executable, "-m", "agent", "relay", "--port", str(self.port), "--db", str(self.db),
            "--dev-id", DEV_ID, "--api-key-file", str(self.api_key_file),
            "--heartbeat-interval", str(self.heartbeat_ms), "--identify-timeout", "5",
        ]
        with self.log_path.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )
        self.starts += 1
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT_S):
            first = (await self.proc.stdout.readline()).decode()
        self.stdout_lines.append(first)
        assert first.strip() == f"relay listening on {self.url}", (first, self.logs())
        self._drain = asyncio.create_task(self._drain_stdout(self.proc))

    async def _drain_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.stdout_lines.append(line.decode())

    async def _reap(self) -> int:
        proc, self.proc = self.proc, None
        assert proc is not None
        async with asyncio.timeout(WAIT_S):
            code = await proc.wait()
            if self._drain is not None:
                await self._drain
        self._drain = None
        return code

    async def kill(self) -> None:
        """SIGKILL: nothing of the relay's shutdown path runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self._reap() == -signal.SIGKILL

    async def stop(self) -> int:
        """SIGTERM (clean shutdown); returns the exit status."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        return await self._reap()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
async def relay_process(tmp_path: Path, api_key_file: Path) -> AsyncIterator[RelayProcess]:
    relay = RelayProcess(tmp_path / "relay.sqlite3", api_key_file, tmp_path / "relay.log")
    try:
        yield relay
    finally:
        if relay.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                relay.proc.send_signal(signal.SIGKILL)
            await relay._reap()


def stored_rows(db: Path, dev_id: str = DEV_ID) -> list[Stored]:
    """Everything the relay committed for ``dev_id``, by seq (read-only connection)."""
    store = DispatchStore(db, readonly=True)
    try:
        return [row for page in store.replay(dev_id, 0, None) for row in page]
    finally:
        store.close()


def number_of(row_type: str, d_text: str | Mapping[str, Any]) -> int:
    """Recover ``i`` from a stored/dispatched reading and check its type and ``ts`` match."""
    d = json.loads(d_text) if isinstance(d_text, str) else d_text
    i = int(d["val"])
    assert d["val"] == i, d
    assert row_type == str(TYPES[i % len(TYPES)]), (row_type, d)
    assert d["ts"] == format_ts(T0 + i * DT), (i, d["ts"])
    return i


@dataclass
class DeliveryReport:
    """What a sequence of delivered numbers looks like."""

    missing: list[int]
    unexpected: list[int]
    duplicates: int
    max_copies: int


def check_delivery(
    received: Iterable[tuple[str, int]], expected: Iterable[int]
) -> DeliveryReport:
    """Zero loss, order per type (first occurrences increase) and the duplicate figures.

    ``received`` is ``(type, number)`` in the order the relay stored (seq order).
    """
    want = set(expected)
    seen: dict[int, int] = {}
    last_first: dict[str, int] = {}
    for type_, i in received:
        copies = seen.get(i, 0)
        seen[i] = copies + 1
        if copies == 0:
            prev = last_first.get(type_)
            assert prev is None or i > prev, f"{type_} {i} first arrived after {prev}"
            last_first[type_] = i
    duplicates = sum(n - 1 for n in seen.values())
    return DeliveryReport(
        missing=sorted(want - set(seen)),
        unexpected=sorted(set(seen) - want),
        duplicates=duplicates,
        max_copies=max(seen.values(), default=0),
    )


def assert_no_secrets(texts: Iterable[str], secrets: Iterable[str]) -> None:
    """No secret (API key, token) appears in any captured line."""
    secrets = [s for s in secrets if s]
    assert secrets, "nothing to look for: the test did not record its secrets"
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into the logs: {text[:200]!r}"


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every captured record, formatted with its arguments (what a handler would write)."""
    out: list[str] = []
    for record in caplog.records:
        out.append(record.getMessage())
        if record.exc_text:
            out.append(record.exc_text)
    return out


async def wait_until(
    wait_for: Callable[[Callable[[], bool]], Any], pred: Callable[[], bool], limit_s: float = WAIT_S
) -> None:
    """``await wait_for(pred)`` bounded by ``limit_s`` (fails the test instead of hanging)."""
    async with asyncio.timeout(limit_s):
        await wait_for(pred)


class Sensor:
    """Streams numbered readings into an outbox, committed durably a batch at a time.

    The pace (``period_s`` per batch) imitates a sensor; it is not a wait for anything.
    """

    def __init__(self, box: Outbox, batch: int = 10, period_s: float = 0.02) -> None:
        self.box = box
        self.batch = batch
        self.period_s = period_s
        self.appended = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Sensor:
        self._task = asyncio.create_task(self._run(), name="sensor")
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            readings = [numbered(self.appended + k) for k in range(self.batch)]
            await self.box.append_durable(readings)
            self.appended += self.batch
            await asyncio.sleep(self.period_s)

    async def stop(self) -> int:
        """Stop after the batch in progress; returns how many readings were appended."""
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(WAIT_S):
                await self._task
        return self.appended


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Capture INFO and up everywhere, and the uplink's websockets frame log at DEBUG.

    The uplink's frame log is where a token would leak (IDENTIFY carries it), so the secret
    scans must see it; other DEBUG output (every consumer frame) only costs time.
    """
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="agent.uplink.websockets")


def env_without_secrets() -> dict[str, str]:
    """Environment for child processes (nothing secret is passed through it)."""
    return {k: v for k, v in os.environ.items() if "KEY" not in k and "TOKEN" not in k}
