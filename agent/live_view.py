"""The terminal view of ``agent run``: what a consumer of the stream receives, refreshed live.

It holds the latest DISPATCH per data type with a per-type rate, plus the producer's connection and
outbox state, and renders them as a small table. On a terminal the table is redrawn in place; when
stdout is a pipe or a file it prints one summary line per refresh instead (no escape codes in logs).
Rendering is a pure function of the state so it can be tested without a terminal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agent.protocol import DataType, Dispatch

#: Window for the per-type rate shown in the view.
RATE_WINDOW_S = 10.0

UNITS: dict[str, str] = {
    DataType.HEART_RATE: "bpm",
    DataType.STEPS: "steps",
    DataType.DISTANCE: "m",
    DataType.FLOORS_CLIMBED: "floors",
    DataType.STEPS_CADENCE: "steps/s",
    DataType.SPEED: "m/s",
    DataType.ACCELERATION: "m/s²",
    DataType.GYROSCOPE: "rad/s",
}


@dataclass
class TypeView:
    """Latest value and recent arrival times of one data type."""

    value: Any = None
    ts: str = ""
    seq: int = 0
    count: int = 0
    arrivals: deque[float] = field(default_factory=deque)

    def rate(self, now: float) -> float:
        """Dispatches per second over the last :data:`RATE_WINDOW_S`."""
        while self.arrivals and self.arrivals[0] < now - RATE_WINDOW_S:
            self.arrivals.popleft()
        return len(self.arrivals) / RATE_WINDOW_S


@dataclass
class LiveView:
    """State behind the view; ``add`` is called for every DISPATCH the embedded consumer gets."""

    types: dict[str, TypeView] = field(default_factory=dict)
    received: int = 0
    last_seq: int = 0

    def add(self, dispatch: Dispatch, now: float) -> None:
        """Record one DISPATCH received at monotonic time ``now``."""
        view = self.types.setdefault(dispatch.t, TypeView())
        view.value = dispatch.d.get("val", dispatch.d.get("d"))
        view.ts = str(dispatch.d.get("ts", ""))
        view.seq = dispatch.seq
        view.count += 1
        view.arrivals.append(now)
        self.received += 1
        self.last_seq = max(self.last_seq, dispatch.seq)


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def render(view: LiveView, state: dict[str, Any], now: float) -> list[str]:
    """The table as lines: one row per data type, then connection and outbox state."""
    lines = ["what the consumer receives (embedded relay)",
             f"{'type':<15} {'latest':>26} {'unit':<7} {'rate/s':>7} {'count':>8}  ts"]
    for name in DataType:
        row = view.types.get(name)
        if row is None:
            lines.append(f"{name.value:<15} {'-':>26}")
            continue
        lines.append(
            f"{name.value:<15} {_fmt(row.value):>26} {UNITS[name]:<7} {row.rate(now):>7.1f} "
            f"{row.count:>8}  {row.ts}"
        )
    lines.append(summary(view, state))
    return lines


def summary(view: LiveView, state: dict[str, Any]) -> str:
    """One line: connection, outbox depth and age, drops, dispatches received."""
    uplink = state.get("uplink", {})
    outbox = state.get("outbox", {})
    age = outbox.get("oldest_age_s")
    age_text = "-" if age is None else f"{age:.1f}s"
    return (
        f"uplink {uplink.get('state', '?')} | outbox {outbox.get('depth', '?')} rows, oldest "
        f"{age_text}, dropped {outbox.get('dropped', 0)} | received {view.received} "
        f"(last seq {view.last_seq})"
    )
