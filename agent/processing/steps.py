"""Streaming step detection from a raw accelerometer of any orientation, rate and timing.

Theory of operation (every stage is causal and carries its state across ``feed`` calls, so the
result does not depend on how the stream is cut into blocks):

1. **Resample.** The acceleration magnitude ``|a|`` (orientation-free: the device may sit in a
   pocket, a hand, a strap) is averaged over each interval of a fixed internal grid (50 Hz by
   default, anchored at the first sample) from its running integral: linear interpolation with a
   box anti-alias filter, one vectorised ``np.interp`` per block. Irregular timestamps, bursts
   and rates from 25 Hz up all look the same after this. A silence longer than ``max_gap_s``
   ends the segment: what is pending is settled, filter state is dropped and the next sample
   starts a fresh segment, so no step is ever interpolated across a hole.
2. **Band-pass.** A Butterworth band-pass over walking step frequencies (1–3 Hz, i.e. 60–180
   steps/min) removes gravity and the impact ringing. The low edge at 1 Hz matters: a device on
   one leg (trouser pocket) or arm sees a strong *stride*-rate component (half the step rate,
   0.7–1.1 Hz) that would otherwise swamp the other leg's step; attenuating it makes both steps
   of a stride similar peaks. Designed and run with :mod:`agent.processing.iir` (numpy; scipy
   costs the daemon ~60 MB of memory) as an exact block ``lfilter`` on the (b, a) coefficients
   with carried state, initialised at the steady state of the first sample so gravity does not
   ring into fake steps. (For this 4th-order filter at 50 Hz the transfer-function form agrees
   with second-order sections to ~1e-12.)
3. **Peak candidates.** Each heel strike produces one dominant peak of the filtered magnitude.
   Peaks are found by :func:`local_maxima` and :func:`peak_prominences` (within a window of
   ``2 * settle_s``, as ``scipy.signal.find_peaks`` defines them) on a short look-back buffer,
   and accepted once the stream has moved ``settle_s`` past them (their prominence is then
   fully known); that is the detector's bounded confirmation delay. A peak must rise above a
   fraction of the *running* amplitude of the signal (an exponential RMS), so the threshold
   follows a stroll and a sprint alike, plus a small absolute floor that rest noise never
   reaches.
4. **Refractory interval.** Two peaks closer than the current minimum interval (a fixed fraction
   of the current step period, never below the ~3.5 steps/s a human reaches and never above
   ``max_refractory_s``) are one step: the more prominent wins. This removes the double bump of
   heel strike and push-off without letting a detector latched onto the stride rate stay there.
   Beyond the absolute minimum, only *unequal* peaks are merged (``merge_ratio``): two alike
   peaks are two steps, so a sudden rise in cadence (breaking into a run) is followed at once
   instead of being halved by a refractory interval sized for the slower gait.
5. **Walking-bout gate.** A step is only counted once ``bout_min_steps`` peaks occur with plausible
   and mutually consistent intervals (within ``rhythm_tolerance`` of their median) *and* regular
   strides: every two-step interval of the train within ``stride_tolerance`` of their median. The
   buffered ones are then counted retroactively. Isolated bumps (putting the phone down, a door,
   a sit-to-stand) never form such a train, yet the first steps of a real walk are not lost.
   The stride test is what separates walking from rhythmic handling (a phone slid into a back
   pocket, rummaging in a purse): gait repeats its stride to within a few percent even when the
   two steps of a stride differ (a device on one leg or in a swinging bag sees left and right
   steps unequally, so single step intervals may be lopsided), while handling motions wander.
   Because the stride test guards the start of a walk, the single-interval ``rhythm_tolerance``
   can be loose enough for that left/right asymmetry. While walking, each further peak that
   keeps the rhythm counts; one that breaks it ends the walk and must start a new train.
6. **Impact consistency.** Steps of one walk have similar impact. Peaks much weaker than the walk's
   recent full steps (``min_step_ratio``) are the weight shift before the first heel strike, the
   closing shuffle after the last one, a bag still swinging after the walker stopped, or
   handling: weak peaks leading a train are dropped, and weak peaks inside a walk are held and
   counted only when a full step follows them in rhythm. Every stride contains at least one full
   step, so a third weak peak in a row ends the walk (and the held ones are dropped). Weak peaks
   never enter the walk's impact reference, so a fading swing cannot drag it down step by step.
   For ``walk_memory_s`` after a walk ends, a new train must also be comparable to that walk
   (people stop, then take the phone out of a pocket or bag: rhythmic, but much weaker).
7. **Gait initiation.** A walker starting from standing needs about one stride to reach full
   impact, so the first one or two heel strikes can be as weak as the weight shift that stage 6
   drops. When a walk is confirmed, the dropped leading peaks just before it are looked at again,
   walking back from its first full step: each that keeps the walk's rhythm (one step interval
   earlier, within ``rhythm_tolerance``) and reaches ``initiation_ratio`` of its impact is
   counted as one of its first steps (at most ``initiation_steps``). A handling bump off the
   rhythm, or rest noise far below the steps, is not. (The mirror image, a weak *closing* step
   after the last full one, is deliberately not counted: whether the foot drawn alongside at a
   stop is a step differs between the labelled datasets, and a swinging bag looks the same.)

Step times are reported as the time of the filtered peak minus the band-pass filter's phase delay
at a typical cadence (2 steps/s), which puts them close to the heel strike.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

from agent.processing.iir import BlockFilter, butter, frequency_response

FloatArray: TypeAlias = NDArray[np.float64]

_EMPTY = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class StepDetectorConfig:
    """Tuning of :class:`StepDetector`. Defaults come from the physics of human walking.

    Attributes:
        fs_hz: internal resampling rate. 50 Hz keeps ~15x headroom over the step frequency and is
            reachable from any source at 25 Hz or more.
        band_hz: pass band of the step filter: walking cadence 60-180 steps/min; its low edge
            also suppresses the stride-rate swing of leg- and arm-worn devices.
        filter_order: Butterworth order of each band edge (low order = little ringing, small delay).
        max_gap_s: a silence longer than this resets the filter (no steps invented across it).
        settle_s: how long after a peak the detector waits before judging it (confirmation delay).
        rel_prominence: a peak must stand out by this fraction of the running RMS amplitude...
        min_prominence: ...and by at least this much in m/s² (rest and handling noise stay below).
        amp_tau_s: time constant of the running RMS amplitude (a few steps).
        min_interval_s: absolute minimum step interval: 4.5 steps/s, a sprinter's cadence (fast
            runners reach 3.3-3.6 steps/s; with 0.28 s, counting collapsed above 3.4 steps/s).
        refractory_frac: minimum interval as a fraction of the current step period...
        max_refractory_s: ...but never more than this: the double bump of one step (heel strike,
            push-off) lies well within half a second, and a longer lock-out would let a detector
            that latched onto the stride rate (leg- or arm-worn device) stay there forever.
        merge_ratio: inside the refractory interval (but beyond ``min_interval_s``) two peaks are
            merged only if the weaker is below this fraction of the stronger: the two bumps of
            one step (heel strike, push-off) are unequal, while two steps are alike (left/right
            impact asymmetry stays well within 30 %). Without this a sudden cadence jump (walk to
            run: 1.8 to 3 steps/s, i.e. intervals at the old refractory limit) merges every other
            step and the period estimate then latches onto the stride for the whole run.
        max_interval_s: a pause longer than this ends a walking bout (0.5 steps/s).
        bout_min_steps: peaks that must form a rhythmic train before any is counted.
        rhythm_tolerance: relative deviation of a step interval from the current period that
            still counts as the same walk. Single step intervals of a leg- or bag-worn device
            are lopsided (left/right asymmetry, a slightly early or late peak), so this is
            loose; regularity is judged on whole strides (``stride_tolerance``).
        stride_tolerance: to open a walk, every stride (two-step interval) of the train must lie
            within this fraction of the train's median stride. Healthy gait repeats its stride
            with a coefficient of variation of 2-3 %; peak timing on the 50 Hz grid adds a few
            hundredths of a second; 15 % leaves room for both while rejecting handling motions.
        min_step_ratio: a peak weaker than this fraction of the walk's median step prominence is
            not a step on its own (see stage 6). Steady gait repeats its impact closely; the
            weight shift before the first heel strike, the closing shuffle after the last one,
            a swinging bag and handling bumps are several times weaker than real steps.
        walk_memory_s: for this long after a walk ends, a new train must also reach
            ``min_step_ratio`` of that walk's step prominence (stopping, then handling the phone).
        initiation_steps: at most this many weak peaks just before a walk's first full step are
            counted as its first steps when the walk is confirmed (gait initiation: a walker
            starting from standing needs about one stride to reach full impact, so the first
            one or two heel strikes are much weaker than the steady ones).
        initiation_ratio: ...if each reaches this fraction of the walk's step prominence and
            keeps its rhythm (within ``rhythm_tolerance`` of the walk's step interval). Rest
            noise and handling bumps before a walk are weaker still or off the rhythm.
    """

    fs_hz: float = 50.0
    band_hz: tuple[float, float] = (1.0, 3.0)
    filter_order: int = 2
    max_gap_s: float = 1.5
    settle_s: float = 0.8
    rel_prominence: float = 0.3
    min_prominence: float = 0.3
    amp_tau_s: float = 3.0
    min_interval_s: float = 0.22
    refractory_frac: float = 0.6
    max_refractory_s: float = 0.45
    max_interval_s: float = 2.0
    bout_min_steps: int = 5
    rhythm_tolerance: float = 0.5
    stride_tolerance: float = 0.15
    merge_ratio: float = 0.7
    min_step_ratio: float = 0.35
    walk_memory_s: float = 10.0
    initiation_steps: int = 2
    initiation_ratio: float = 0.2
    slower_gait_ratio: float = 1.3


def _strides_regular(times: FloatArray, tolerance: float) -> bool:
    """True when every stride (two-step interval) of a train is within ``tolerance`` of the median.

    Judged on strides, not steps: a leg-worn or bag-carried device sees left and right steps
    unequally, but walking repeats the stride closely; handling motions do not.
    """
    strides = times[2:] - times[:-2]
    if strides.size == 0:
        return True
    med = float(np.median(strides))
    return med > 0 and float(np.max(np.abs(strides / med - 1.0))) <= tolerance


def local_maxima(y: FloatArray) -> NDArray[np.intp]:
    """Indices of the local maxima of ``y``, as ``scipy.signal.find_peaks(y)`` finds them.

    A peak is higher than both neighbours; a flat top (plateau) counts once, at its middle
    (rounded down), and only if it falls off on both sides. The first and last samples are never
    peaks. Vectorised over runs of equal values, so plateaus cost nothing extra.
    """
    n = y.size
    if n < 3:
        return np.zeros(0, dtype=np.intp)
    change = np.flatnonzero(y[1:] != y[:-1]) + 1
    if change.size == n - 1:  # no plateaus (the usual case for a filtered signal)
        mid = y[1:-1]
        return np.flatnonzero((mid > y[:-2]) & (mid > y[2:])) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change - 1, [n - 1]))
    vals = y[starts]
    r = np.flatnonzero((vals[1:-1] > vals[:-2]) & (vals[1:-1] > vals[2:])) + 1
    return ((starts[r] + ends[r]) // 2).astype(np.intp)


def _parabolic_offset(y: FloatArray, peaks: NDArray[np.intp]) -> FloatArray:
    """Sub-sample position of each peak (in samples, within ±0.5) from a parabola through it.

    Step times on the bare 50 Hz grid are quantised to 20 ms: at 1.8 steps/s the median of a few
    intervals flips between 0.54 and 0.56 s, and cadence and speed with it (±4 %). Fitting a
    parabola through the peak and its two neighbours puts the time within a few ms.
    """
    if peaks.size == 0:
        return np.zeros(0, dtype=np.float64)
    ym, y0, yp = y[peaks - 1], y[peaks], y[peaks + 1]
    den = ym - 2.0 * y0 + yp
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (ym - yp) / den, 0.0)
    return np.asarray(np.clip(off, -0.5, 0.5), dtype=np.float64)


@functools.cache
def _walk_offsets(half: int) -> NDArray[np.intp]:
    offs = np.arange(half + 1)
    return np.stack((-offs, offs))[None]


def peak_prominences(y: FloatArray, peaks: NDArray[np.intp], wlen: int) -> FloatArray:
    """Prominence of each peak within a window of ``wlen`` samples centred on it.

    Same definition as ``scipy.signal.peak_prominences(y, peaks, wlen)``: on each side, the
    lowest point between the peak and the nearest higher sample (or the window edge, or the
    signal end); the prominence is the peak height above the higher of those two bases.
    Vectorised over peaks: one ``(peaks, 2, wlen // 2 + 1)`` array holds both walks.
    """
    if peaks.size == 0:
        return np.zeros(0, dtype=np.float64)
    half = wlen // 2
    # (peaks, 2, half + 1): walking left and walking right from each peak. The +inf padding
    # stops a walk at the signal ends exactly like a higher sample would.
    pad = np.full(half, np.inf)
    ypad = np.concatenate((pad, y, pad))
    seg = ypad[(peaks + half)[:, None, None] + _walk_offsets(half)]
    v = y[peaks]
    blocked = np.logical_or.accumulate(seg > v[:, None, None], axis=2)
    bases = np.min(np.where(blocked, np.inf, seg), axis=2)
    return np.asarray(v - np.max(bases, axis=1), dtype=np.float64)


class StepDetector:
    """Causal, block-wise step detector; see the module docstring for the algorithm.

    ``feed`` returns the times (Unix s) of steps newly confirmed by that block; a step is
    confirmed about ``settle_s`` + one step interval after it happens (a weak step when the next
    full step is), or, for the first steps of a walk, when the walking-bout gate opens (up to
    ``bout_min_steps`` steps later). Memory is bounded (a ~2 s look-back buffer, a few deques).
    """

    def __init__(self, config: StepDetectorConfig | None = None) -> None:
        self.config = cfg = config or StepDetectorConfig()
        if cfg.fs_hz < 10 or cfg.band_hz[1] >= cfg.fs_hz / 2 or cfg.band_hz[0] <= 0:
            raise ValueError(f"inconsistent rates: fs_hz={cfg.fs_hz}, band_hz={cfg.band_hz}")
        self._dt = 1.0 / cfg.fs_hz
        b, a = butter(cfg.filter_order, cfg.band_hz, "bandpass", fs=cfg.fs_hz)
        self._b: FloatArray = b
        self._a: FloatArray = a
        self._band = BlockFilter(b, a)
        self._zi0: FloatArray = self._band.zi(1.0)
        self._amp_a = math.exp(-self._dt / cfg.amp_tau_s)
        # running mean square: y2[n] = a y2[n-1] + (1 - a) y[n]^2, state = a * previous value
        self._ema = BlockFilter(np.array([1 - self._amp_a]), np.array([1.0, -self._amp_a]))
        self._settle_n = max(2, round(cfg.settle_s * cfg.fs_hz))
        self._wlen = 2 * self._settle_n + 1
        # phase delay of the band-pass at a typical step frequency (2 steps/s): subtracting it
        # puts reported times near the heel strike. Constant on purpose: a cadence-dependent
        # correction would make results depend on where the stream was cut into blocks.
        f0 = 2.0
        h = frequency_response(self._b, self._a, f0, cfg.fs_hz)
        # (+ half a grid interval for the box average of the resampler)
        phase = math.atan2(h.imag, h.real)
        self._delay_s = max(0.0, -phase / (2 * math.pi * f0)) + self._dt / 2
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything (start of a new stream)."""
        self._last_t: float | None = None
        self._last_m = 0.0
        self._cum_last = 0.0  # integral of |a| up to _last_t (relative to the last grid point)
        self._cum_grid = 0.0  # integral of |a| up to the last grid point
        self._reset_segment()
        self._amp2 = 0.0
        # refractory stage: (time, prominence) of the peak awaiting its refractory window
        self._pending: tuple[float, float] | None = None
        # bout gate
        self._walking = False
        self._bout: list[tuple[float, float]] = []  # (time, prominence) of the train
        self._proms: deque[float] = deque(maxlen=8)  # prominences of recent counted steps
        self._held: list[tuple[float, float]] = []  # weak in-rhythm peaks awaiting a strong one
        # weak peaks dropped from the front of the train: maybe the first steps of a walk
        self._lead: deque[tuple[float, float]] = deque(maxlen=max(1, self.config.initiation_steps))
        # (end, median step prominence, step period) of the walk that ended last
        self._prev_walk: tuple[float, float, float] | None = None
        self._last_step: float | None = None
        self._last_strong: float | None = None  # latest peak as strong as the walk's steps
        self._intervals: deque[float] = deque(maxlen=8)
        self._period = 0.55
        self._fine: dict[float, float] = {}  # grid time of a candidate peak -> refined time

    def _reset_segment(self) -> None:
        self._anchor: float | None = None  # time of grid index 0 of this segment
        self._k_next = 0  # next grid index to produce
        self._zi: FloatArray | None = None
        self._buf_y: FloatArray = _EMPTY
        self._buf_thr: FloatArray = _EMPTY
        self._buf_k0 = 0  # grid index of _buf_y[0]
        self._k_done = -1  # peaks at grid index <= this have been judged

    # ------------------------------------------------------------------ public API
    @property
    def cadence(self) -> float:
        """Current cadence estimate in steps per second (0 when not walking)."""
        if not self._walking or not self._intervals:
            return 0.0
        return 1.0 / float(np.median(np.asarray(self._intervals)))

    @property
    def last_strong_peak(self) -> float | None:
        """Time of the latest peak (counted or not yet) as strong as the current walk's steps.

        While the bout gate re-forms a walk whose rhythm broke (breaking from a run into a
        walk), no step is confirmed for a few seconds although the walker never stopped; this
        tells the cadence estimator so (weak peaks, e.g. a bag swinging after a stop, do not).
        """
        return self._last_strong

    def cadence_at(self, t: float) -> float:
        """Cadence at time ``t``: decays to 0 once no step has been seen for a bout time-out."""
        if self._last_step is None or t - self._last_step > self._timeout():
            return 0.0
        return self.cadence

    def feed(self, t: FloatArray, xyz: FloatArray) -> FloatArray:
        """Process one block of samples; return the times of steps confirmed by it."""
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        if t.shape[0] != xyz.shape[0]:
            raise ValueError(f"{t.shape[0]} timestamps but {xyz.shape[0]} samples")
        m = np.sqrt(np.einsum("ij,ij->i", xyz, xyz))
        ok = np.isfinite(t) & np.isfinite(m)
        if not ok.all():
            t, m = t[ok], m[ok]
        out: list[float] = []
        if t.size == 0:
            return _EMPTY
        # keep strictly increasing timestamps only (duplicates/out-of-order are dropped)
        prev = -math.inf if self._last_t is None else self._last_t
        keep = t > np.maximum.accumulate(np.concatenate(([prev], t[:-1])))
        if not keep.all():
            t, m = t[keep], m[keep]
        if t.size == 0:
            return _EMPTY
        # split at gaps: a silence longer than max_gap_s starts a new segment
        edges = np.diff(np.concatenate(([prev], t)))
        cuts = np.flatnonzero(edges > self.config.max_gap_s).tolist()
        bounds = sorted({0, *cuts, t.size})
        for s, e in itertools.pairwise(bounds):
            if s in cuts and self._anchor is not None:
                self._settle(math.inf, out)
                self._reset_segment()
            self._segment(t[s:e], m[s:e], out)
        return self._refined(out, float(t[-1]))

    def flush(self) -> FloatArray:
        """End of stream: judge every buffered peak and count a pending bout if it qualifies."""
        out: list[float] = []
        if self._anchor is not None:
            self._settle(math.inf, out)
        if self._pending is not None:
            self._commit(*self._pending, out)
            self._pending = None
        self._reset_segment()
        return self._refined(out, math.inf)

    def _refined(self, out: list[float], now: float) -> FloatArray:
        """Reported times of the confirmed steps; forget refinements no peak can still need."""
        fine = self._fine
        times = np.asarray([fine.pop(t, t) for t in out], dtype=np.float64)
        if len(fine) > 64:  # candidates judged and dropped long ago (bounded memory)
            cfg = self.config
            oldest = cfg.bout_min_steps + cfg.initiation_steps + 2  # peaks a decision may hold
            horizon = now - oldest * cfg.max_interval_s - cfg.settle_s
            for t in [t for t in fine if t < horizon]:
                del fine[t]
        return times

    # ------------------------------------------------------------------ stages
    def _segment(self, t: FloatArray, m: FloatArray, out: list[float]) -> None:
        if self._anchor is None:
            self._anchor = float(t[0])
            self._k_next = 0
            self._zi = self._zi0 * m[0]
            tt, mm = t, m
            self._cum_last = 0.0
            self._cum_grid = -float(m[0]) * self._dt
        else:
            assert self._last_t is not None
            tt = np.concatenate(([self._last_t], t))
            mm = np.concatenate(([self._last_m], m))
        # Anti-aliased resampling: each grid value is the mean of |a| over the preceding grid
        # interval (a box filter, nulls at multiples of fs_hz), taken from the running integral of
        # the linearly interpolated input. Point-sampling a 100-400 Hz stream would alias the
        # heel-strike transients into the step band; averaging also copes with bursts naturally.
        cum = self._cum_last + np.concatenate(
            ([0.0], np.cumsum(0.5 * (mm[1:] + mm[:-1]) * np.diff(tt)))
        )
        self._last_t, self._last_m = float(t[-1]), float(m[-1])
        self._cum_last = float(cum[-1])
        k_end = math.floor((tt[-1] - self._anchor) * self.config.fs_hz + 1e-9)
        if k_end < self._k_next:
            return
        k = np.arange(self._k_next, k_end + 1)
        grid = self._anchor + k * self._dt
        cum_grid = np.interp(grid, tt, cum)
        x = np.diff(np.concatenate(([self._cum_grid], cum_grid))) / self._dt
        # keep the integral small (re-reference at the last grid point): bounded rounding error
        ref = float(cum_grid[-1])
        self._cum_grid = 0.0
        self._cum_last -= ref
        self._k_next = k_end + 1
        assert self._zi is not None
        y, self._zi = self._band.filter(x, self._zi)
        # running mean square (EMA of y^2), carried across blocks
        p2, _ = self._ema.filter(y * y, np.array([self._amp_a * self._amp2]))
        self._amp2 = float(p2[-1])
        thr = np.maximum(self.config.min_prominence, self.config.rel_prominence * np.sqrt(p2))
        self._buf_y = np.concatenate((self._buf_y, y))
        self._buf_thr = np.concatenate((self._buf_thr, thr))
        self._settle(float(k_end - self._settle_n), out)

    def _settle(self, k_horizon: float, out: list[float]) -> None:
        """Judge peaks with grid index in (k_done, k_horizon]; trim the look-back buffer."""
        y = self._buf_y
        if y.size < 3 or self._anchor is None:
            return
        peaks = local_maxima(y)
        kk = peaks + self._buf_k0
        sel = (kk > self._k_done) & (kk <= k_horizon)
        pk = peaks[sel]
        prom = peak_prominences(y, pk, self._wlen)
        good = prom >= self._buf_thr[pk]
        delay = self._delay_s
        pk, prom = pk[good], prom[good]
        frac = _parabolic_offset(y, pk)
        for p, f, pr in zip(pk.tolist(), frac.tolist(), prom.tolist(), strict=True):
            tp = self._anchor + (p + self._buf_k0) * self._dt - delay
            # decisions run on grid times (they are what the thresholds were chosen for); only
            # the reported time is refined (see _parabolic_offset)
            self._fine[tp] = tp + f * self._dt
            self._refractory(tp, pr, out)
        if math.isinf(k_horizon):
            self._k_done = self._buf_k0 + y.size - 1
        else:
            self._k_done = max(self._k_done, int(k_horizon))
        # the pending peak is final once its refractory window has passed
        now = self._anchor + (self._buf_k0 + y.size - 1 - self._settle_n) * self._dt - delay
        if self._pending is not None and now - self._pending[0] >= self._min_interval():
            self._commit(*self._pending, out)
            self._pending = None
        # keep enough history for the prominence window of not yet judged peaks
        drop = self._k_done - self._buf_k0 - self._wlen
        if drop > 0:
            self._buf_y = y[drop:]
            self._buf_thr = self._buf_thr[drop:]
            self._buf_k0 += drop

    def _min_interval(self) -> float:
        cfg = self.config
        return min(
            cfg.max_refractory_s, max(cfg.min_interval_s, cfg.refractory_frac * self._period)
        )

    def _timeout(self) -> float:
        return min(self.config.max_interval_s, max(1.0, 3.0 * self._period))

    def _refractory(self, tp: float, prom: float, out: list[float]) -> None:
        if self._pending is not None:
            dt = tp - self._pending[0]
            weaker, stronger = sorted((prom, self._pending[1]))
            if dt < self.config.min_interval_s or (
                dt < self._min_interval() and weaker < self.config.merge_ratio * stronger
            ):
                if prom > self._pending[1]:
                    self._pending = (tp, prom)
                return
            self._commit(*self._pending, out)
        self._pending = (tp, prom)

    def _commit(self, ts: float, prom: float, out: list[float]) -> None:
        """Walking-bout gate: count a step directly while walking, else buffer the train."""
        cfg = self.config
        if self._proms and prom >= cfg.min_step_ratio * float(np.median(np.asarray(self._proms))):
            self._last_strong = ts
        if self._walking and self._last_step is not None:
            iv = ts - self._last_step
            weak = prom < cfg.min_step_ratio * float(np.median(np.asarray(self._proms)))
            in_rhythm = iv <= min(cfg.max_interval_s, (1 + cfg.rhythm_tolerance) * self._period)
            if in_rhythm and not (weak and len(self._held) >= 2):
                # a weak peak in the rhythm counts only once a full step follows it: the closing
                # shuffle after the last heel strike and a bag still swinging after the walker
                # stopped are weak. Every stride has at least one full step, so a third weak
                # peak in a row means the walk is over.
                self._observe(iv)
                self._last_step = ts
                if weak:
                    self._held.append((ts, prom))
                else:
                    for t_h, _ in self._held:
                        out.append(t_h)
                    self._held = []
                    self._count(ts, prom, out)
                return
            # the rhythm broke: this peak may start a new walk, it must earn its place again
            self._walking = False
            self._held = []
            self._bout = []
            self._prev_walk = (
                self._last_step, float(np.median(np.asarray(self._proms))), self._period
            )
        if self._bout and ts - self._bout[-1][0] > cfg.max_interval_s:
            self._bout = []
            self._lead.clear()
        self._bout.append((ts, prom))
        # the weight shift before the first heel strike (and handling bumps before a walk) are
        # much weaker than the steps that follow: drop weak leading peaks of the train
        while len(self._bout) >= 2 and self._bout[0][1] < cfg.min_step_ratio * float(
            np.median([p for _, p in self._bout[1:]])
        ):
            self._lead.append(self._bout.pop(0))
        if len(self._bout) > cfg.bout_min_steps:
            self._bout.pop(0)
        if len(self._bout) == cfg.bout_min_steps:
            times = np.asarray([b[0] for b in self._bout])
            ivs = np.diff(times)
            med = float(np.median(ivs))
            train_prom = float(np.median([p for _, p in self._bout]))
            if (
                cfg.min_interval_s <= med <= cfg.max_interval_s
                and float(np.max(np.abs(ivs / med - 1.0))) <= cfg.rhythm_tolerance
                and _strides_regular(times, cfg.stride_tolerance)
                and not self._after_walk_and_weak(float(times[0]), train_prom, med)
            ):
                self._walking = True
                self._intervals.clear()
                for d in ivs.tolist():
                    self._observe(d)
                self._proms.clear()
                out.extend(self._initiation_steps(float(times[0]), med, train_prom))
                for t_b, p_b in self._bout:
                    self._count(t_b, p_b, out)
                self._bout = []

    def _initiation_steps(self, t_first: float, period: float, train_prom: float) -> list[float]:
        """Times of the weak leading peaks that are the first steps of the walk now confirmed.

        Walking back from the train's first full step, a dropped weak peak counts if it keeps
        the rhythm (one step interval earlier, within ``rhythm_tolerance``) and reaches
        ``initiation_ratio`` of the walk's impact; the first one that does not ends the search.
        Without this the gait-initiation steps of every walk were lost (about one per walk on
        arm- and hand-held devices, whose first strides are markedly weaker).
        """
        cfg = self.config
        steps: list[float] = []
        nxt = t_first
        for t_l, p_l in reversed(self._lead):
            if len(steps) >= cfg.initiation_steps:
                break
            if self._last_step is not None and t_l <= self._last_step:
                break
            if (
                abs((nxt - t_l) / period - 1.0) > cfg.rhythm_tolerance
                or p_l < cfg.initiation_ratio * train_prom
            ):
                break
            steps.append(t_l)
            nxt = t_l
        self._lead.clear()
        return steps[::-1]

    def _after_walk_and_weak(self, t_start: float, train_prom: float, period: float) -> bool:
        """True for a weak rhythmic train right after a walk: handling the phone, not walking.

        People often stop and then take the phone out of a pocket or bag; that motion can be
        rhythmic but is several times weaker than the walk just before it. Walking resumed after
        a pause has an impact comparable to the previous walk.
        """
        if self._prev_walk is None:
            return False
        cfg = self.config
        t_end, prom, prev_period = self._prev_walk
        if t_start - t_end > cfg.walk_memory_s:
            return False
        if (
            period >= cfg.slower_gait_ratio * prev_period
            and t_start - t_end <= (1 + cfg.rhythm_tolerance) * period
        ):
            # no pause, and a markedly slower rhythm: a run slowing into a walk or onto the
            # stairs, which lands several times softer than the run (impact grows steeply with
            # speed). Handling the phone comes after a stop.
            return False
        return train_prom < self.config.min_step_ratio * prom

    def _count(self, ts: float, prom: float, out: list[float]) -> None:
        self._proms.append(prom)
        self._last_step = ts
        out.append(ts)

    def _observe(self, interval: float) -> None:
        cfg = self.config
        if cfg.min_interval_s <= interval <= cfg.max_interval_s:
            self._intervals.append(interval)
            self._period = float(np.median(np.asarray(self._intervals)))
