"""Logging setup: journald format, redaction and rate limiting, on a fake clock."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import secrets
from agent.logs import (
    RateLimitFilter,
    journald_detected,
    register_secret,
    setup_logging,
    syslog_priority,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: logging.getLogger(n).level for n in ("websockets", "bleak", "dbus_fast", "asyncio")}
    secrets._forget_registered()
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    secrets._forget_registered()


def _setup(journald: bool, clock: FakeClock | None = None, level: str = "debug") -> io.StringIO:
    out = io.StringIO()
    setup_logging(level, journald=journald, stream=out, clock=clock or FakeClock(), env={})
    return out


def test_journald_format_has_priority_prefix_and_no_timestamp() -> None:
    out = _setup(journald=True)
    log = logging.getLogger("agent.uplink")
    log.debug("d")
    log.info("connected to %s", "wss://x")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert out.getvalue().splitlines() == [
        "<7>agent.uplink: d",
        "<6>agent.uplink: connected to wss://x",
        "<4>agent.uplink: w",
        "<3>agent.uplink: e",
        "<2>agent.uplink: c",
    ]


def test_journald_tracebacks_keep_the_level_on_every_line() -> None:
    out = _setup(journald=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("agent").exception("failed")
    lines = out.getvalue().splitlines()
    assert lines[0] == "<3>agent: failed"
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>RuntimeError: boom"


def test_terminal_format_has_a_timestamp_and_level() -> None:
    out = _setup(journald=False)
    logging.getLogger("agent.outbox").warning("disk %d%% full", 91)
    line = out.getvalue().strip()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING agent\.outbox: disk 91% full", line
    )


def test_level_filters_and_unknown_level_is_refused() -> None:
    out = _setup(journald=True, level="warning")
    logging.getLogger("agent").info("hidden")
    logging.getLogger("agent").warning("shown")
    assert out.getvalue() == "<4>agent: shown\n"
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("verbose", stream=io.StringIO())


def test_setup_twice_replaces_the_handler() -> None:
    _setup(journald=True)
    out = _setup(journald=True)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_wearable_agent_handler", 0)]
    assert len(ours) == 1
    logging.getLogger("agent").info("once")
    assert out.getvalue() == "<6>agent: once\n"


def test_journald_detection_compares_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journald_detected(stream, env)
        assert not journald_detected(other, env)  # stderr redirected elsewhere: not the journal
        assert not journald_detected(stream, {})
        assert not journald_detected(stream, {"JOURNAL_STREAM": "garbage"})
        assert not journald_detected(io.StringIO(), env)  # no file descriptor
        # Auto-detection picks the format.
        setup_logging("info", stream=stream, env=env)
        logging.getLogger("agent").info("hello")
        stream.flush()
    assert (tmp_path / "stream").read_text() == "<6>agent: hello\n"


def test_syslog_priorities() -> None:
    assert [syslog_priority(lvl) for lvl in (5, 10, 20, 25, 30, 40, 50)] == [7, 7, 6, 6, 4, 3, 2]


def test_secrets_are_redacted_in_messages_args_and_tracebacks() -> None:
    out = _setup(journald=True)
    register_secret("my-api-key-123")
    log = logging.getLogger("agent.tokens")
    log.info("minting with x-api-key: %s", "my-api-key-123")
    log.info("identify %s", '{"op":3,"d":{"token":"tok-abcdef","type":0}}')
    log.warning("connect to wss://host/connect?token=%s failed", "tok-abcdef")
    try:
        raise ValueError("bad key my-api-key-123")
    except ValueError:
        log.exception("request failed")
    text = out.getvalue()
    assert "my-api-key-123" not in text
    assert "tok-abcdef" not in text
    assert "x-api-key: ***" in text
    assert '"token":"***"' in text
    assert "token=*** failed" in text
    assert "ValueError: bad key ***" in text


def test_bad_format_arguments_do_not_crash_or_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _setup(journald=True)
    root = logging.getLogger()
    # Only our handler: pytest's capture handler would trip over the bad record first.
    ours = [h for h in root.handlers if getattr(h, "_wearable_agent_handler", False)]
    monkeypatch.setattr(root, "handlers", ours)
    register_secret("leaky-secret-1")
    logging.getLogger("agent").error("two %s %s", "leaky-secret-1")  # one argument missing
    text = out.getvalue()
    assert "leaky-secret-1" not in text
    assert "unformattable" in text


def test_repeated_failures_are_rate_limited_with_a_count() -> None:
    clock = FakeClock()
    out = _setup(journald=True, clock=clock)
    log = logging.getLogger("agent.ble")
    for i in range(58):
        log.warning("connect to %s failed: %s", "A0:9E", f"attempt {i}")
        clock.now += 0.5  # 58 attempts in 29 s: inside one 60 s window
    assert out.getvalue() == "<4>agent.ble: connect to A0:9E failed: attempt 0\n"
    clock.now += 31.0
    log.warning("connect to %s failed: %s", "A0:9E", "attempt 58")
    assert out.getvalue().splitlines()[-1] == (
        "<4>agent.ble: connect to A0:9E failed: attempt 58 (repeated 57 times)"
    )
    # After the summary the count starts again.
    clock.now += 61.0
    log.warning("connect to %s failed: %s", "A0:9E", "attempt 59")
    assert out.getvalue().splitlines()[-1].endswith("attempt 59")


def test_rate_limit_keys_on_logger_level_and_template() -> None:
    clock = FakeClock()
    out = _setup(journald=True, clock=clock)
    logging.getLogger("a").warning("x %s", 1)
    logging.getLogger("a").warning("x %s", 2)  # same key: dropped
    logging.getLogger("b").warning("x %s", 3)  # other logger
    logging.getLogger("a").error("x %s", 4)  # other level
    logging.getLogger("a").warning("y")  # other template
    for _ in range(5):
        logging.getLogger("a").info("progress")  # INFO is never limited
    assert out.getvalue().splitlines() == [
        "<4>a: x 1",
        "<4>b: x 3",
        "<3>a: x 4",
        "<4>a: y",
        *["<6>a: progress"] * 5,
    ]


def test_rate_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimitFilter(60.0, clock=clock)
    for i in range(5000):
        record = logging.LogRecord("agent", logging.WARNING, __file__, 1, f"msg {i}", None, None)
        assert limiter.filter(record)
    assert len(limiter._seen) <= 1024


def test_rate_limit_zero_disables() -> None:
    out = io.StringIO()
    setup_logging("info", journald=True, stream=out, rate_limit_s=0, env={})
    for _ in range(3):
        logging.getLogger("a").warning("same")
    assert out.getvalue().count("same") == 3
