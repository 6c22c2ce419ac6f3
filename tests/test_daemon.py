"""``agent run`` as a user runs it: a real process, real SQLite, the embedded relay, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "NOTIFY_",
                                                                     "WATCHDOG_", "JOURNAL_"))}
    env.update({
        "AGENT_STATUS__INTERVAL_S": "0.2",
        "AGENT_SENSORS__SIMULATION__ACC_RATE_HZ": "50",
        "AGENT_SENSORS__SIMULATION__GYRO_RATE_HZ": "50",
        "AGENT_UPLINK__SHUTDOWN_GRACE_S": "10",
        "AGENT_CONFIG": str(_empty_config(tmp_path)),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.touch()
    return path


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition of another process's files (an event we cannot await directly)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _status(state_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    assert isinstance(data, dict)
    return data


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--simulate", "--quiet",
             "--state-dir", str(tmp_path / "state"), *args],
            cwd=ROOT, env=_env(tmp_path, **env), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _ready_with_readings(state_dir: Path, n: int) -> Callable[[], bool]:
    def check() -> bool:
        st = _status(state_dir)
        uplink = st.get("uplink")
        total = st.get("readings_total")
        return (isinstance(uplink, dict) and uplink.get("state") == "ready"
                and isinstance(total, int) and total >= n)
    return check


def test_sigterm_delivers_everything_and_exits_zero(
    tmp_path: Path, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    state = tmp_path / "state"
    proc = daemon("--speed", "50")
    # ~3000 readings: the simulated wearer has started walking (after 120 s of sample time)
    _wait_for(_ready_with_readings(state, 3000), 90, "readings streaming")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    final = _status(state)
    assert final.get("stopped") is True
    total = final["readings_total"]
    assert isinstance(total, int) and total >= 3000
    with sqlite3.connect(state / "outbox.sqlite") as db:
        (left,) = db.execute("SELECT COUNT(*) FROM readings").fetchone()
    assert left == 0, f"{left} readings left undelivered after a clean shutdown\n{out}"
    # Everything that reached the outbox reached the (embedded) broker's durable store.
    from agent.relay.store import DispatchStore

    store = DispatchStore(state / "relay.sqlite", readonly=True)
    try:
        assert store.count() >= total
        rows = store.page("local", 0, None, 1_000_000)
    finally:
        store.close()
    # Sample time, not the wall clock, drives every reading: at --speed 50 a reading stamped
    # by the 1 s tick or the final flush must not go back in time (per type, in send order).
    from agent.protocol import ts_to_unix

    last: dict[str, float] = {}
    for row in rows:
        ts = ts_to_unix(json.loads(row.d)["ts"])
        assert ts >= last.get(row.t, 0.0) - 1e-6, (row.t, ts, last.get(row.t))
        last[row.t] = ts


def test_sigint_also_stops_cleanly(
    tmp_path: Path, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = daemon("--speed", "20")
    _wait_for(_ready_with_readings(tmp_path / "state", 20), 60, "readings streaming")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out


def test_bad_configuration_exits_78_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[uplink]\nserver = "ftp://example.org"\n')
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 78
    assert "uplink.server" in result.stderr
    assert "Traceback" not in result.stderr


def test_systemd_notify_ready_watchdog_status_stopping(
    tmp_path: Path, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    messages: list[str] = []

    def receive_until(pred: Callable[[str], bool]) -> None:
        while True:
            msg = sock.recv(4096).decode()
            messages.extend(msg.splitlines())
            if pred(msg):
                return

    try:
        proc = daemon("--speed", "5", NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
        receive_until(lambda m: "READY=1" in m)
        watchdogs_before = sum(1 for m in messages if m == "WATCHDOG=1")
        receive_until(lambda m: m.startswith("STATUS=") and "ready" in m)
        # at least three watchdog pings after READY (interval 0.4 s → pings every ≤ 0.2 s)
        receive_until(lambda _m: sum(1 for x in messages if x == "WATCHDOG=1")
                      >= watchdogs_before + 3)
        proc.send_signal(signal.SIGTERM)
        receive_until(lambda m: "STOPPING=1" in m)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
    finally:
        sock.close()
    assert messages.index("READY=1") < messages.index("STOPPING=1")
    assert any(m.startswith("STATUS=") for m in messages)


def test_record_writes_a_replayable_recording(
    tmp_path: Path, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    from sensors.recording import read_recording

    rec_root = tmp_path / "recordings"
    proc = daemon("--speed", "20", "--record", str(rec_root))
    _wait_for(_ready_with_readings(tmp_path / "state", 100), 60, "readings streaming")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    (session,) = list(rec_root.iterdir())  # one directory per session
    rec = read_recording(session)
    assert rec.meta["format"] == "agent-recording/1"
    assert rec.acc is not None and rec.acc.shape[1] == 3 and len(rec.acc) > 500
    assert rec.hr and all(bpm > 20 for _t, bpm, _rr in rec.hr)
    assert rec.pressure_hpa is not None and len(rec.pressure_hpa) > 5
    replay = subprocess.run([sys.executable, "-m", "agent", "replay", str(session), "--jsonl"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    frames = [json.loads(line) for line in replay.stdout.splitlines()]
    assert frames and all(f["op"] == 6 for f in frames)
    assert {f["t"] for f in frames} >= {"HEART_RATE", "ACCELERATION"}


def test_secret_readable_by_others_is_refused_with_78(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("do-not-print-me-123\n")
    key.chmod(0o644)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--server", "ws://127.0.0.1:9/connect",
         "--token-url", "http://127.0.0.1:9", "--dev-id", "d", "--api-key-file", str(key),
         "--user-id", "u", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 78
    assert "chmod 600" in result.stderr and "uplink.api_key_file" in result.stderr
    assert "do-not-print-me" not in result.stderr + result.stdout


def test_emit_drops_the_oldest_samples_when_processing_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent import daemon
    from agent.config import default_config
    from sensors.base import PressureSample

    monkeypatch.setattr(daemon, "MAX_QUEUED_SAMPLES", 3)
    d = daemon.Daemon(default_config(tmp_path))
    for i in range(5):
        d._emit(PressureSample(t=float(i), hpa=1000.0))
    assert d.samples_dropped == 2
    assert [d.queue.get_nowait().t for _ in range(3)] == [2.0, 3.0, 4.0]
    assert d.state()["samples_dropped"] == 2


def test_default_time_zone_keeps_daylight_saving_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without processing.timezone the daily reset follows the machine's zone *with* DST.

    (It used to freeze the offset in force when the daemon started.)
    """
    from datetime import datetime, timedelta

    from agent import daemon
    from agent.config import default_config

    monkeypatch.setenv("TZ", "Europe/London")
    tz = daemon.Daemon(default_config(tmp_path))._tz()
    assert tz is not None
    assert datetime(2026, 1, 1, 12, tzinfo=tz).utcoffset() == timedelta(0)
    assert datetime(2026, 7, 1, 12, tzinfo=tz).utcoffset() == timedelta(hours=1)


def test_two_sessions_in_the_same_second_get_their_own_recording(tmp_path: Path) -> None:
    from agent.daemon import _new_session_dir

    a = _new_session_dir(tmp_path / "rec", "20261127T234910")
    b = _new_session_dir(tmp_path / "rec", "20261127T234910")
    c = _new_session_dir(tmp_path / "rec", "20261127T234910")
    assert [p.name for p in (a, b, c)] == ["20261127T234910", "20261127T234910-2",
                                           "20261127T234910-3"]
    assert all(p.is_dir() for p in (a, b, c))


def test_record_dir_that_cannot_be_created_stops_with_78(tmp_path: Path) -> None:
    """A study asked for a recording: running without one would lose it silently."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--simulate", "--quiet", "--duration", "5",
         "--record", str(blocker / "rec"), "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 78, result.stderr
    assert "recording.dir" in result.stderr and "Traceback" not in result.stderr
