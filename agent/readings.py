"""Processed readings: what processing hands to the outbox, one per future SUBMIT frame.

A :class:`Reading` keeps the sample time as Unix seconds; it becomes wire text only once, when it
enters the outbox (:func:`Reading.submit_text`), so the outbox can send stored frames without
re-serialising them while draining a backlog.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo

from agent.protocol import DataType, format_ts, submit_text


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of one data type at time ``t`` (Unix seconds): ``val`` or ``vec``."""

    type: DataType
    t: float
    val: float | None = None
    vec: tuple[float, float, float] | None = None

    def submit_text(self, tz: tzinfo | None = None) -> str:
        """The SUBMIT frame for this reading, ``ts`` with microseconds and offset."""
        return submit_text(self.type, format_ts(self.t, tz), self.val, self.vec)
