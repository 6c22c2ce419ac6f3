"""Step-length model, DISTANCE (accumulated metres) and SPEED (m/s), with foot-pod preference.

Theory of operation
-------------------
Without a foot pod, distance is the sum of per-step lengths. Step length scales with body height
(about 0.415 × height at a comfortable walking cadence of ~1.8 steps/s, the classic
anthropometric ratio) and grows with cadence: people lengthen their steps as they speed up, so
a fixed length would underestimate brisk walking and running. The model is linear in cadence,

    length = height × factor × clip(0.415 + 0.25 × (cadence − 1.8), 0.25, 0.75)

where ``cadence`` is the mean of the last few inter-step intervals (inverted) and ``factor`` is a
per-user correction, 1.0 by default. :func:`calibrate_factor` derives ``factor`` from one walk of
known distance: it is the ratio of the known distance to what the model with ``factor = 1``
measured for the same steps, so the residual after calibration is only the walk-to-walk
variation of the user's gait.

SPEED is cadence × step length at the current cadence, so it decays to 0 with the cadence.

A foot pod (RSC) measures speed and distance at the foot, which beats any wrist/chest model; while
a pod reading is recent, steps add no distance and the pod's cumulative distance (or its speed
integrated over time when it reports no distance) is used instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

#: Step length / height at the reference cadence (walking; Zijlstra & Hof, and pedometer manuals).
BASE_RATIO: Final = 0.415
#: Cadence (steps/s) at which BASE_RATIO applies: a comfortable adult walk.
REFERENCE_CADENCE_HZ: Final = 1.8
#: Growth of the ratio per step/s of cadence: 1.4 steps/s → 0.315, 2.8 steps/s (running) → 0.665.
RATIO_PER_HZ: Final = 0.25
#: Bounds of the ratio: shuffling at the low end, running strides at the high end.
RATIO_MIN: Final = 0.25
RATIO_MAX: Final = 0.75
#: Intervals longer than this end a walking bout; the next step uses the reference cadence.
MAX_INTERVAL_S: Final = 2.0
#: Intervals shorter than this are clipped (4 steps/s is a sprint).
MIN_INTERVAL_S: Final = 0.25
#: Intervals averaged into the cadence used for one step's length.
SMOOTH_INTERVALS: Final = 4
#: A foot-pod reading older than this is no longer current.
RSC_MAX_AGE_S: Final = 3.0
#: Longest gap over which a pod's speed is integrated when it reports no distance.
RSC_MAX_DT_S: Final = 5.0


def length_ratio(cadence_hz: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """Step length / height at the given cadence(s) (steps/s)."""
    c = np.asarray(cadence_hz, dtype=np.float64)
    return np.clip(BASE_RATIO + RATIO_PER_HZ * (c - REFERENCE_CADENCE_HZ), RATIO_MIN, RATIO_MAX)


def _ratio(cadence_hz: float) -> float:
    """Scalar :func:`length_ratio` (hot path: no numpy call overhead)."""
    r = BASE_RATIO + RATIO_PER_HZ * (cadence_hz - REFERENCE_CADENCE_HZ)
    return min(max(r, RATIO_MIN), RATIO_MAX)


def step_length(height_m: float, cadence_hz: float, factor: float = 1.0) -> float:
    """One step's length in metres."""
    return height_m * factor * _ratio(cadence_hz)


class DistanceTracker:
    """Accumulates DISTANCE from steps or a foot pod and computes SPEED."""

    def __init__(
        self, height_m: float, factor: float = 1.0, *, rsc_max_age_s: float = RSC_MAX_AGE_S
    ) -> None:
        if not (0.5 <= height_m <= 2.6):
            raise ValueError(f"height_m must be between 0.5 and 2.6 m, got {height_m}")
        if not (0.2 <= factor <= 5.0):
            raise ValueError(f"step length factor must be between 0.2 and 5, got {factor}")
        self.height_m = height_m
        self.factor = factor
        self._rsc_max_age = rsc_max_age_s
        self._last_step: float | None = None
        self._iv_hist: deque[float | None] = deque([None] * SMOOTH_INTERVALS,
                                                   maxlen=SMOOTH_INTERVALS)
        self._rsc_t: float | None = None
        self._rsc_speed = 0.0
        self._rsc_total: float | None = None
        self._since_total = 0.0
        self.step_distance_m = 0.0
        self.rsc_distance_m = 0.0

    def reset(self) -> None:
        """Forget gait history (totals are kept by the caller)."""
        self._last_step = None
        self._iv_hist = deque([None] * SMOOTH_INTERVALS, maxlen=SMOOTH_INTERVALS)
        self._rsc_t = None
        self._rsc_total = None

    def rsc_active(self, now: float) -> bool:
        """True when a foot-pod reading is recent enough to be preferred."""
        return self._rsc_t is not None and 0.0 <= now - self._rsc_t <= self._rsc_max_age

    def step_lengths(self, times: NDArray[np.float64]) -> NDArray[np.float64]:
        """Lengths of the given new steps (updates gait history; does not add distance).

        Steps arrive at ~2 per second, a handful per block, so this loops over steps (never
        over samples): at that size plain Python beats a dozen tiny numpy calls.
        """
        hist = self._iv_hist
        prev = self._last_step
        scale = self.height_m * self.factor
        out: list[float] = []
        for t in np.asarray(times, dtype=np.float64).tolist():
            iv = None if prev is None else t - prev
            # Pauses (and the very first step) are not intervals; clip double detections.
            hist.append(max(iv, MIN_INTERVAL_S) if iv is not None and iv <= MAX_INTERVAL_S
                        else None)
            valid = [x for x in hist if x is not None]
            cadence = len(valid) / sum(valid) if valid else REFERENCE_CADENCE_HZ
            out.append(scale * _ratio(cadence))
            prev = t
        self._last_step = prev
        return np.asarray(out, dtype=np.float64)

    def add_steps(self, times: NDArray[np.float64]) -> NDArray[np.float64]:
        """Add new steps; returns the distance credited per step (0 where a foot pod covers it)."""
        lengths = self.step_lengths(times)
        if lengths.size and self._rsc_t is not None:
            since = np.asarray(times, dtype=np.float64) - self._rsc_t
            lengths = np.where(np.abs(since) <= self._rsc_max_age, 0.0, lengths)
        self.step_distance_m += float(lengths.sum())
        return lengths

    def add_rsc(self, t: float, speed_mps: float, total_m: float | None = None) -> float:
        """Add a foot-pod reading; returns the distance added.

        The pod's own cumulative distance is used when reported (its first value is only a
        baseline; a drop means the pod restarted and re-baselines); otherwise speed is integrated.
        """
        if not np.isfinite(speed_mps) or speed_mps < 0:
            return 0.0
        added = 0.0
        if total_m is not None and np.isfinite(total_m):
            if self._rsc_total is not None and 0.0 <= total_m - self._rsc_total < 1000.0:
                # Part of this stretch may already have been integrated from speed (a pod
                # that reports its total only in some notifications): add the rest.
                added = max(0.0, total_m - self._rsc_total - self._since_total)
            self._rsc_total = total_m
            self._since_total = 0.0
        elif self._rsc_t is not None and 0.0 < t - self._rsc_t <= RSC_MAX_DT_S:
            # Trapezoid between the previous and this speed.
            added = 0.5 * (self._rsc_speed + speed_mps) * (t - self._rsc_t)
            self._since_total += added
        self._rsc_t = t
        self._rsc_speed = speed_mps
        self.rsc_distance_m += added
        return added

    def speed(self, now: float, step_cadence_hz: float) -> float:
        """SPEED in m/s at ``now``: the pod's when recent, else cadence × step length."""
        if self.rsc_active(now):
            return self._rsc_speed
        if step_cadence_hz <= 0:
            return 0.0
        return step_cadence_hz * step_length(self.height_m, step_cadence_hz, self.factor)


def model_distance(step_times: NDArray[np.float64], height_m: float, factor: float = 1.0) -> float:
    """Distance the model assigns to a sequence of step times (metres)."""
    tracker = DistanceTracker(height_m, factor)
    return float(tracker.add_steps(np.sort(np.asarray(step_times, dtype=np.float64))).sum())


def calibrate_factor(
    step_times: NDArray[np.float64], known_distance_m: float, height_m: float
) -> float:
    """Per-user step-length factor from a walk of known distance.

    Raises ``ValueError`` when the walk is too short to calibrate from (fewer than 20 steps) or
    the resulting factor is implausible (outside 0.5–2), which means the distance or the steps
    are wrong rather than the user's gait.
    """
    steps = np.asarray(step_times, dtype=np.float64)
    if steps.size < 20:
        raise ValueError(f"calibration walk has only {steps.size} steps; walk at least 20")
    if not known_distance_m > 0:
        raise ValueError("known distance must be positive")
    factor = known_distance_m / model_distance(steps, height_m, 1.0)
    if not (0.5 <= factor <= 2.0):
        raise ValueError(
            f"calibration gives an implausible factor {factor:.2f}: check the distance and height"
        )
    return factor


def calibrate_from_recording(
    path: str | Path,
    known_distance_m: float,
    height_m: float | None = None,
    detect: Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]]
    | None = None,
) -> float:
    """Calibration factor from a recording directory of a walk of known distance.

    Steps are detected with the same streaming detector as live data (``detect`` overrides it,
    mapping ``(t, xyz)`` to step times); height comes from ``meta.json`` when not given.
    """
    from sensors.recording import read_recording

    rec = read_recording(path)
    if rec.acc_t is None or rec.acc is None:
        raise ValueError(f"{path}: recording has no accelerometer stream")
    if height_m is None:
        subject = rec.meta.get("subject")
        h = subject.get("height_m") if isinstance(subject, dict) else None
        if not isinstance(h, int | float):
            raise ValueError(f"{path}: no height given and none in meta.json subject.height_m")
        height_m = float(h)
    if detect is None:
        from agent.processing.steps import StepDetector

        detector = StepDetector()
        first = detector.feed(rec.acc_t, rec.acc)
        steps = np.concatenate([np.asarray(first), np.asarray(detector.flush())])
    else:
        steps = detect(rec.acc_t, rec.acc)
    return calibrate_factor(steps, known_distance_m, height_m)
