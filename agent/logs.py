"""Logging: concise, journald-friendly, rate-limited, with secrets redacted.

Theory of operation
-------------------
One handler on the root logger, writing to stderr, with two filters in this order:

1. :class:`RateLimitFilter` — a BLE strap out of range or a broker that is down fails the same way
   every few seconds for hours. Records at WARNING and above with the same logger, level and
   message *template* (``record.msg`` before ``%`` formatting, so "connect failed: %s" with
   different errors counts as one) pass at most once per ``interval_s``; the next one that passes
   carries ``(repeated N times)`` for the ones held back. Filters are passive, so the count is
   reported when the failure recurs after the interval (or never, if it stopped: then it no
   longer matters). DEBUG/INFO are never limited.
2. :class:`RedactingFilter` — renders the message (and any traceback) once and passes it through
   :func:`agent.secrets.redact`: every secret read by :func:`agent.secrets.read_secret` or given to
   :func:`register_secret`, plus token-shaped values in URLs, JSON and headers.

Under systemd (detected through ``$JOURNAL_STREAM``, which names the device and inode of the
stream the journal reads, so a redirected stderr is not mistaken for it) lines carry no timestamp
(journald adds its own) and start with a ``<N>`` syslog priority, which journald strips and turns
into the entry's level, so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Final, TextIO

from agent.secrets import redact, register_secret

__all__ = [
    "RateLimitFilter",
    "RedactingFilter",
    "journald_detected",
    "register_secret",
    "setup_logging",
    "syslog_priority",
]

#: Default minimum spacing of repeated warnings. A minute keeps a day-long outage to ~1,400
#: lines per distinct failure while still showing within a minute that it is still happening.
DEFAULT_RATE_LIMIT_S: Final = 60.0
#: Keys remembered by the rate limiter before stale ones are pruned (bounded memory).
_MAX_KEYS: Final = 1024

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def syslog_priority(levelno: int) -> int:
    """The syslog priority (sd-daemon ``<N>`` prefix) for a logging level."""
    if levelno >= logging.CRITICAL:
        return 2  # LOG_CRIT
    if levelno >= logging.ERROR:
        return 3  # LOG_ERR
    if levelno >= logging.WARNING:
        return 4  # LOG_WARNING
    if levelno >= logging.INFO:
        return 6  # LOG_INFO
    return 7  # LOG_DEBUG


def journald_detected(stream: TextIO, env: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError, AttributeError):
        return False


class RedactingFilter(logging.Filter):
    """Renders each record's message and traceback with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the record (or leak its args)
            message = f"{record.msg!s} (unformattable arguments)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RateLimitFilter(logging.Filter):
    """Passes a repeated warning at most once per ``interval_s`` and counts the rest.

    Args:
        interval_s: minimum time between two records with the same key.
        clock: monotonic seconds; injected by tests.
        min_level: records below this level are never limited.
    """

    def __init__(
        self,
        interval_s: float = DEFAULT_RATE_LIMIT_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_level: int = logging.WARNING,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.min_level = min_level
        # key -> [time last passed, number suppressed since]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or self.interval_s <= 0:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval_s:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            suffix = f" (repeated {int(entry[1])} times)"
            try:
                record.msg = record.getMessage() + suffix
            except Exception:
                record.msg = f"{record.msg!s}{suffix}"
            record.args = None
        if entry is None and len(self._seen) >= _MAX_KEYS:
            self._prune(now)
        self._seen[key] = [now, 0]
        return True

    def _prune(self, now: float) -> None:
        stale = [k for k, (t, _n) in self._seen.items() if now - t >= self.interval_s]
        for k in stale:
            del self._seen[k]
        if len(self._seen) >= _MAX_KEYS:  # all fresh: forget the oldest half
            by_age = sorted(self._seen, key=lambda k: self._seen[k][0])
            for k in by_age[: len(by_age) // 2]:
                del self._seen[k]


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{syslog_priority(record.levelno)}>"
        # journald reads each line as its own entry: give continuation lines the level too.
        return "\n".join(prefix + line for line in text.split("\n"))


_HANDLER_ATTR: Final = "_wearable_agent_handler"


def setup_logging(
    level: str,
    *,
    journald: bool | None = None,
    stream: TextIO | None = None,
    rate_limit_s: float = DEFAULT_RATE_LIMIT_S,
    clock: Callable[[], float] = time.monotonic,
    env: Mapping[str, str] = os.environ,
) -> logging.Handler:
    """Install the agent's handler on the root logger (replacing one installed before).

    Args:
        level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
        journald: force the journald format on/off; ``None`` detects it from ``$JOURNAL_STREAM``.
        stream: where to write (default ``sys.stderr``).
        rate_limit_s: spacing of repeated warnings (0 disables the limit).
        clock: monotonic clock for the rate limiter.
        env: environment, for ``$JOURNAL_STREAM``.

    Returns:
        The installed handler (tests read its filters).
    """
    try:
        levelno = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None
    out = stream if stream is not None else sys.stderr
    if journald is None:
        journald = journald_detected(out, env)
    handler = logging.StreamHandler(out)
    setattr(handler, _HANDLER_ATTR, True)
    handler.addFilter(RateLimitFilter(rate_limit_s, clock=clock))
    handler.addFilter(RedactingFilter())
    if journald:
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_ATTR, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    # Library chatter (every websockets frame, every D-Bus message) only when asked for.
    for noisy in ("websockets", "bleak", "dbus_fast", "asyncio"):
        logging.getLogger(noisy).setLevel(
            logging.DEBUG if levelno <= logging.DEBUG else max(levelno, logging.WARNING)
        )
    return handler
