"""FLOORS_CLIMBED from barometric pressure, counted only while walking.

Theory of operation
-------------------
Pressure becomes altitude with the international barometric (hypsometric, standard atmosphere)
formula, ``h = 44330.8 × (1 − (p / 1013.25)^0.190263)``, about 8.3 m per hPa near sea level and
more at altitude; only altitude *differences* matter, so the reference pressure cancels out.

Three disturbances must not become floors:

* **Door slams and gusts** change pressure for well under a second: a causal running median over
  :data:`MEDIAN_WINDOW_S` removes any spike shorter than half the window.
* **Weather** moves pressure by a few hPa over hours (tens of metres): slow, and mostly while the
  wearer is not walking. Altitude change is credited only while walking; while not walking the
  floor reference moves *with* the filtered altitude, so drift (and lifts, which carry a standing
  person) never accumulates into floors. During a walk, drift is centimetres per minute.
  A walk can still last an hour, so while walking on the level (altitude changing by less than
  :data:`LEVEL_RATE_MPS` over the last :data:`RATE_WINDOW_S`) the reference also *leaks* towards
  the filtered altitude at :data:`LEAK_MPS` (36 m/h, above a 4 hPa/h storm front). Stairs climb
  at ≥ 0.1 m/s, so they are never leaked away, however many storeys in a row.
* **Sensor noise** (~0.1 m) is absorbed by a Schmitt trigger: the wearer is on floor level
  ``ref``; a floor is counted when the filtered altitude rises :data:`UP_THRESHOLD_M` above it and
  ``ref`` then moves up by exactly one :data:`FLOOR_HEIGHT_M`. Going down by the threshold moves
  ``ref`` down a floor without counting, so up-down-up on the same stair counts each new ascent
  once and a continuous climb of N floors counts exactly N.

"Walking" for a pressure sample at time ``t`` means a step within ``[t − WALK_BEFORE_S,
t + WALK_AFTER_S]``. Steps are confirmed a little after they happen and the median filter lags,
so pressure samples wait in a short queue until the accelerometer has been seen up to
``t + WALK_AFTER_S`` (the *horizon*); without any accelerometer they are never credited.
Pressure arrives at ≤ 25 Hz, so the per-sample loop here is not a hot path.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Final

import numpy as np
from numpy.typing import NDArray

#: One storey. Building codes put floor-to-floor heights at 2.7–3.5 m; 3 m is the usual
#: fitness-tracker floor (10 ft).
FLOOR_HEIGHT_M: Final = 3.0
#: Rise above the current floor level that counts a floor: below 3 m so a 2.7 m storey counts,
#: far above noise (0.1 m) and single-stair heights.
UP_THRESHOLD_M: Final = 2.2
#: Causal median window: rejects pressure spikes shorter than half of it (door slams ≪ 2 s).
MEDIAN_WINDOW_S: Final = 4.0
#: A step this long before a pressure sample makes it "walking" (covers pauses on landings).
WALK_BEFORE_S: Final = 4.0
#: ... or this long after it (the median lags ~half its window; steps are confirmed late).
WALK_AFTER_S: Final = 3.0
#: Rate at which the floor reference follows the altitude while walking on the level.
LEAK_MPS: Final = 0.01
#: Below this vertical speed a walk is "on the level" (stairs: 0.1–0.3 m/s; drift: < 0.01 m/s).
LEVEL_RATE_MPS: Final = 0.03
#: Window over which vertical speed is measured (spans a landing between two flights).
RATE_WINDOW_S: Final = 12.0
#: Pending pressure samples kept at most (bounded memory if the accelerometer stalls).
MAX_PENDING: Final = 4096
#: Step times remembered for the walking test.
MAX_STEPS: Final = 256

_P0_HPA: Final = 1013.25
_H_SCALE_M: Final = 44330.8
_EXPONENT: Final = 0.190263


def pressure_to_altitude(hpa: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """Standard-atmosphere altitude (m) for pressure(s) in hPa."""
    p = np.asarray(hpa, dtype=np.float64)
    return _H_SCALE_M * (1.0 - np.power(p / _P0_HPA, _EXPONENT))


class FloorCounter:
    """Counts floors climbed; feed steps, horizon and pressure, read ``total`` or deltas."""

    def __init__(
        self,
        *,
        floor_height_m: float = FLOOR_HEIGHT_M,
        up_threshold_m: float = UP_THRESHOLD_M,
        median_window_s: float = MEDIAN_WINDOW_S,
    ) -> None:
        self.floor_height_m = floor_height_m
        self.up_threshold_m = min(up_threshold_m, floor_height_m)
        self._median_window = median_window_s
        self._steps: deque[float] = deque(maxlen=MAX_STEPS)
        self._pending: deque[tuple[float, float]] = deque(maxlen=MAX_PENDING)
        self._window: deque[tuple[float, float]] = deque()
        self._horizon = -np.inf
        self._ref: float | None = None
        self._prev_alt: float | None = None
        self._prev_t = 0.0
        self._history: deque[tuple[float, float]] = deque()
        self.total = 0
        self.altitude_m: float | None = None

    def note_steps(self, times: NDArray[np.float64]) -> None:
        """Record confirmed step times."""
        self._steps.extend(np.asarray(times, dtype=np.float64).tolist())

    def note_time(self, t: float) -> None:
        """The accelerometer (and hence step detection) has been processed up to ``t``."""
        self._horizon = max(self._horizon, t)

    def add_pressure(self, t: float, hpa: float) -> int:
        """Queue one pressure sample; returns floors newly counted by processing what is ready."""
        if np.isfinite(hpa) and 300.0 <= hpa <= 1200.0:
            self._pending.append((t, hpa))
        return self.process()

    def process(self) -> int:
        """Credit every queued sample whose walking status is settled; returns new floors."""
        added = 0
        while self._pending and self._pending[0][0] + WALK_AFTER_S <= self._horizon:
            t, hpa = self._pending.popleft()
            added += self._update(t, hpa)
        return added

    def flush(self) -> int:
        """Process everything still queued (at shutdown / end of a recording)."""
        added = 0
        while self._pending:
            t, hpa = self._pending.popleft()
            added += self._update(t, hpa)
        return added

    def _walking(self, t: float) -> bool:
        lo, hi = t - WALK_BEFORE_S, t + WALK_AFTER_S
        for s in reversed(self._steps):
            if s < lo:
                return False
            if s <= hi:
                return True
        return False

    def _update(self, t: float, hpa: float) -> int:
        alt = float(pressure_to_altitude(hpa))
        window = self._window
        window.append((t, alt))
        while window and window[0][0] < t - self._median_window:
            window.popleft()
        filt = statistics.median([a for _, a in window])
        self.altitude_m = filt
        if self._ref is None or self._prev_alt is None:
            self._ref = filt
            self._prev_alt = filt
            self._prev_t = t
            return 0
        prev_t, self._prev_t = self._prev_t, t
        if not self._walking(t):
            self._ref += filt - self._prev_alt  # drift, lifts and noise move the reference
            self._prev_alt = filt
            self._history.clear()
            return 0
        hist = self._history
        while hist and hist[0][0] < t - RATE_WINDOW_S:
            hist.popleft()
        level = not hist or abs(filt - hist[0][1]) < LEVEL_RATE_MPS * RATE_WINDOW_S
        hist.append((t, filt))
        if level:
            dt = max(0.0, min(t - prev_t, 10.0))
            self._ref += float(np.clip(filt - self._ref, -LEAK_MPS * dt, LEAK_MPS * dt))
        self._prev_alt = filt
        added = 0
        while filt - self._ref >= self.up_threshold_m:
            self._ref += self.floor_height_m
            added += 1
        while self._ref - filt >= self.up_threshold_m:
            self._ref -= self.floor_height_m
        self.total += added
        return added
