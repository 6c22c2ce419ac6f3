"""HEART_RATE clean-up: RR-interval artifact rejection plus light smoothing.

Theory of operation
-------------------
A chest strap reports, per notification, a device-computed bpm and the RR intervals (ms) of the
beats it saw. Artifacts (motion, dry electrodes) and ectopic beats show up as RR intervals that
are physiologically impossible or far from their neighbours, so rejection works on RR:

1. outside 250–2000 ms (240–30 bpm) → rejected;
2. more than :data:`MAX_DEVIATION` (22 %) away from the running median of the last
   :data:`MEDIAN_BEATS` accepted intervals → rejected. A premature (ectopic) beat and its
   compensatory pause are each ~20–40 % off the median, so both go, while beat-to-beat variability
   of a normal rhythm (< 10 %) stays.
3. A *real* sudden change (e.g. the first seconds of a sprint) would be rejected forever by rule 2
   alone; after :data:`RELOCK_BEATS` consecutive rejections that agree with each other within the
   same tolerance, the median history is replaced by them (the filter "re-locks").

The output is 60000 / mean of the accepted intervals of the last :data:`SMOOTH_S` seconds of beats
(at least the last beat), which removes respiratory jitter while lagging a real change by about
half that window. Without RR data (some devices, or no beats in a notification) the device's bpm
goes through the same rules as one beat of 60000/bpm ms at the notification time: a lone 220 bpm
spike between 60s is an artifact whatever its source, while a real change re-locks after
:data:`RELOCK_BEATS` notifications (about 4 s). Readings while the strap reports no skin contact
are dropped.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import numpy as np

from sensors.base import HeartRateSample

#: Physiological RR bounds (ms): 240 bpm and 30 bpm (young athletes exceed 200 bpm at maximum).
RR_MIN_MS: Final = 250.0
RR_MAX_MS: Final = 2000.0
#: Relative deviation from the running median beyond which a beat is an artifact/ectopic.
MAX_DEVIATION: Final = 0.22
#: Accepted beats in the running median (odd; ~7 s at rest).
MEDIAN_BEATS: Final = 9
#: Consecutive mutually consistent rejections after which the filter re-locks to them.
RELOCK_BEATS: Final = 4
#: Seconds of accepted beats averaged into the output.
SMOOTH_S: Final = 3.0
#: Plausible device bpm when no RR is available.
BPM_MIN: Final = 25.0
BPM_MAX: Final = 240.0
#: After this long without a sample the history no longer describes the current rhythm.
RESET_GAP_S: Final = 10.0


class HeartRateFilter:
    """Streaming heart-rate clean-up; :meth:`feed` returns the cleaned bpm or ``None``."""

    def __init__(self) -> None:
        self._median: deque[float] = deque(maxlen=MEDIAN_BEATS)
        self._rejected: deque[tuple[float, float]] = deque(maxlen=RELOCK_BEATS)
        self._recent: deque[tuple[float, float]] = deque(maxlen=64)  # (beat time, rr ms)
        self._last_t: float | None = None
        self.accepted = 0
        self.rejected = 0
        self.relocks = 0

    def reset(self) -> None:
        """Forget the rhythm history."""
        self._median.clear()
        self._rejected.clear()
        self._recent.clear()

    def _beat(self, bt: float, rr: float) -> None:
        if not (RR_MIN_MS <= rr <= RR_MAX_MS):
            self.rejected += 1
            return
        if len(self._median) >= 3:
            med = float(np.median(self._median))
            if abs(rr - med) > MAX_DEVIATION * med:
                self.rejected += 1
                self._rejected.append((bt, rr))
                if len(self._rejected) == RELOCK_BEATS:
                    rej = np.asarray([r for _, r in self._rejected])
                    rmed = float(np.median(rej))
                    if np.all(np.abs(rej - rmed) <= MAX_DEVIATION * rmed):
                        self._median.clear()
                        self._median.extend(rej.tolist())
                        self._recent.clear()
                        self._recent.extend(self._rejected)
                        self.accepted += RELOCK_BEATS
                        self.rejected -= RELOCK_BEATS
                        self.relocks += 1
                        self._rejected.clear()
                return
        self._rejected.clear()
        self._median.append(rr)
        self._recent.append((bt, rr))
        self.accepted += 1

    def feed(self, sample: HeartRateSample) -> float | None:
        """Clean one notification; returns bpm to report at ``sample.t`` or ``None``."""
        if sample.contact is False or (not sample.rr_ms and sample.bpm <= 0):
            return None  # no contact (a recording stores that as bpm 0 without RR)
        t = sample.t
        if self._last_t is not None and (t - self._last_t > RESET_GAP_S or t < self._last_t):
            self.reset()
        self._last_t = t
        if sample.rr_ms:
            # The last beat of a notification is at (about) the notification time.
            rrs = np.asarray(sample.rr_ms, dtype=np.float64)
            ends = np.cumsum(rrs[::-1])[::-1] / 1000.0
            beat_t = t - ends + rrs / 1000.0
            for bt, rr in zip(beat_t.tolist(), rrs.tolist(), strict=True):
                self._beat(bt, rr)
            if self._recent and self._recent[-1][0] >= t - SMOOTH_S:
                return self._smoothed(t)
            return None
        if not (BPM_MIN <= sample.bpm <= BPM_MAX):
            return None
        self._beat(t, 60000.0 / sample.bpm)
        if self._recent and self._recent[-1][0] == t:
            return self._smoothed(t)
        return None

    def _smoothed(self, t: float) -> float:
        lo = t - SMOOTH_S
        rrs = [rr for bt, rr in self._recent if bt >= lo] or [self._recent[-1][1]]
        return 60000.0 / float(np.mean(rrs))
