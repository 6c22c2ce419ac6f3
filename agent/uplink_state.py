"""Operator-facing state of the uplink, for ``agent status`` and the logs.

Kept separate from :mod:`agent.uplink` so that status readers (CLI, systemd STATUS=, tests)
depend on a plain value object and not on the connection machinery.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any


class ConnState(enum.StrEnum):
    """Where the uplink is in its connect / serve / back-off cycle."""

    IDLE = "idle"
    CONNECTING = "connecting"
    IDENTIFYING = "identifying"
    READY = "ready"
    BACKOFF = "backoff"
    CLOSING = "closing"
    CLOSED = "closed"
    STOPPED = "stopped"  # a close code or token error that retrying cannot fix


@dataclass(slots=True)
class UplinkState:
    """Snapshot-able state; the uplink mutates one instance and hands it to ``on_state``."""

    state: ConnState = ConnState.IDLE
    last_ready_at: float | None = None  # Unix time of the last READY
    outbox_depth: int = 0
    outbox_bytes: int = 0
    oldest_undelivered_t: float | None = None  # Unix sample time
    dropped: int = 0
    last_close_code: int | None = None
    last_close_reason: str | None = None
    last_error: str | None = None
    stopped_reason: str | None = None
    connections: int = 0
    sent: int = 0  # frames written (including resends)
    confirmed: int = 0  # rows confirmed by a HEARTBEAT_ACK
    next_retry_in_s: float | None = None

    def oldest_age_s(self, now: float | None = None) -> float | None:
        """Age of the oldest undelivered reading in seconds."""
        if self.oldest_undelivered_t is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.oldest_undelivered_t)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """Plain JSON-able dict (never holds a token)."""
        return {
            "state": self.state.value,
            "last_ready_at": self.last_ready_at,
            "outbox_depth": self.outbox_depth,
            "outbox_bytes": self.outbox_bytes,
            "oldest_undelivered_age_s": self.oldest_age_s(now),
            "dropped": self.dropped,
            "last_close_code": self.last_close_code,
            "last_close_reason": self.last_close_reason,
            "last_error": self.last_error,
            "stopped_reason": self.stopped_reason,
            "connections": self.connections,
            "sent": self.sent,
            "confirmed": self.confirmed,
            "next_retry_in_s": self.next_retry_in_s,
        }
