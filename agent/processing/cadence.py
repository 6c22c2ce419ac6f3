"""Step cadence (STEPS_CADENCE, steps per second) from recent step times or a foot pod.

Theory of operation: cadence is the inverse of the median interval between the last few confirmed
steps. The median (not the mean) keeps one missed or doubled step from swinging the value. After
the last step the value is held for one step interval plus :data:`LATENCY_S` (the streaming
step detector confirms a step 1–1.5 s after it happened, so that much silence is normal while
walking) and then ramps linearly down to exactly 0 over :data:`DECAY_S`, so it decays smoothly
instead of freezing at the walking value: about 3.5 s after the last confirmed step at a normal
walking cadence, never later than :data:`STOP_AFTER_S`. Strong impacts the step detector has
seen but not yet confirmed (:meth:`CadenceEstimator.note_stepping`) extend the hold: when the
walker breaks from a run into a walk the detector needs a few steps to re-form the walk, and the
value must not dip to 0 meanwhile.

A foot pod (Running Speed and Cadence profile) measures cadence directly at the foot; when a pod
sample is recent it wins over the accelerometer estimate. RSC reports steps per minute.

Memory is bounded (a fixed ring of the last :data:`HISTORY_STEPS` step times), and work per block
is numpy on that small array, independent of the accelerometer rate.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Final

import numpy as np
from numpy.typing import NDArray

#: Steps whose intervals form the estimate: 8 steps (~4 s of walking) react within a few seconds
#: yet outvote a single missed step.
HISTORY_STEPS: Final = 8
#: Confirmation delay of the step detector (its settle time plus one block) that is still normal.
LATENCY_S: Final = 1.6
#: Ramp from the walking value down to 0 once a step is overdue.
DECAY_S: Final = 1.5
#: Upper bound: walking is over when no step was confirmed for this long.
STOP_AFTER_S: Final = 5.0
#: Intervals longer than this are pauses, not steps of a walk (0.4 steps/s is slower than any gait).
MAX_INTERVAL_S: Final = 2.5
#: Intervals shorter than this are double detections (5 steps/s exceeds sprinting cadence).
MIN_INTERVAL_S: Final = 0.2
#: A foot-pod reading older than this no longer describes the current gait (pods notify at ~1 Hz).
RSC_MAX_AGE_S: Final = 3.0


class CadenceEstimator:
    """Streaming cadence in steps/s; feed step times and RSC samples, read :meth:`value`."""

    def __init__(
        self,
        *,
        history_steps: int = HISTORY_STEPS,
        stop_after_s: float = STOP_AFTER_S,
        rsc_max_age_s: float = RSC_MAX_AGE_S,
    ) -> None:
        self._n = max(2, history_steps)
        self._stop_after = stop_after_s
        self._rsc_max_age = rsc_max_age_s
        self._times: NDArray[np.float64] = np.empty(0)
        self._interval: float | None = None
        self._last: float | None = None
        self._stepping: float | None = None
        self._rsc_t: float | None = None
        self._rsc_hz = 0.0

    def reset(self) -> None:
        """Forget all history (e.g. after a long gap)."""
        self._times = np.empty(0)
        self._interval = None
        self._last = None
        self._stepping = None
        self._rsc_t = None
        self._rsc_hz = 0.0

    @property
    def last_step(self) -> float | None:
        """Time of the most recent step seen, if any."""
        return float(self._times[-1]) if self._times.size else None

    def add_steps(self, times: NDArray[np.float64]) -> None:
        """Record newly confirmed step times (ascending Unix seconds)."""
        if times.size == 0:
            return
        self._times = np.concatenate([self._times, np.asarray(times, dtype=np.float64)])[
            -(self._n + 1) :
        ]
        # The median interval only changes here, so value() is cheap between steps.
        ts = self._times.tolist()
        iv: list[float] = []
        for a, b in itertools.pairwise(ts):
            d = b - a
            if d > MAX_INTERVAL_S:
                iv.clear()  # a pause: only the current bout counts
            elif d >= MIN_INTERVAL_S:
                iv.append(d)
        self._interval = statistics.median(iv) if iv else None
        self._last = ts[-1]

    def note_stepping(self, t: float | None) -> None:
        """The step detector saw a step-like impact at ``t`` that it has not confirmed (yet).

        Holds the current value through the few seconds in which the detector re-forms a walk
        whose rhythm changed abruptly (run → walk); :data:`STOP_AFTER_S` after the last
        *confirmed* step still ends it.
        """
        if t is not None and (self._stepping is None or t > self._stepping):
            self._stepping = t

    def add_rsc(self, t: float, cadence_spm: float) -> None:
        """Record a foot-pod cadence (steps per minute, as the RSC profile reports it)."""
        if np.isfinite(cadence_spm) and cadence_spm >= 0:
            self._rsc_t = t
            self._rsc_hz = cadence_spm / 60.0

    def rsc_active(self, now: float) -> bool:
        """True when a foot-pod reading is recent enough to be preferred."""
        return self._rsc_t is not None and 0.0 <= now - self._rsc_t <= self._rsc_max_age

    def step_cadence(self, now: float) -> float:
        """Cadence from accelerometer steps only (steps/s) at time ``now``."""
        interval, last = self._interval, self._last
        if interval is None or last is None:
            return 0.0
        if now - last > self._stop_after:
            return 0.0
        if self._stepping is not None and self._stepping > last:
            last = self._stepping  # still stepping, only not confirmed yet
        since = now - last
        hold = interval + LATENCY_S
        if since <= hold:
            return 1.0 / interval
        return max(0.0, 1.0 - (since - hold) / DECAY_S) / interval

    def value(self, now: float) -> float:
        """Current cadence in steps/s: foot pod when recent, else accelerometer steps."""
        if self.rsc_active(now):
            return self._rsc_hz
        return self.step_cadence(now)
