"""Anti-alias low-pass and decimation of 3-axis streams (ACCELERATION, GYROSCOPE).

Theory of operation
-------------------
Sensors deliver 25–400 Hz with irregular timestamps (bursts, gaps); the broker wants a few
readings per second (Terra's demo producer sends 4 Hz). Taking every k-th sample would fold all
motion above the output Nyquist frequency (walking harmonics at 2–10 Hz!) into slow fake motion,
so the stream is filtered first, in two stages that are both block-wise numpy:

1. **Bin averaging onto a uniform grid** at ``OVERSAMPLE × rate_hz`` (64 Hz for 4 Hz output),
   aligned to absolute Unix time. Averaging makes irregular input uniform and is itself a first
   low-pass (sinc); bins without samples hold the previous value (slower inputs).
2. **Butterworth low-pass** (order 4, cut-off ``CUTOFF_RATIO × rate_hz``) run on the uniform
   grid with persistent state by :class:`agent.processing.iir.BlockFilter` (an exact numpy
   ``lfilter``; scipy is kept out of the daemon for its ~60 MB of memory), then every
   ``OVERSAMPLE``-th value is output, at grid times that are multiples of ``1 / rate_hz``.
   The cut-off is always 1/40 of the grid rate, where the order-4 transfer function is
   numerically safe (it matches the second-order-sections form to 1e-11).

Output time stamps are the grid times; the Butterworth group delay (~0.2 s at 4 Hz) is not
compensated, which is harmless for display and small against the output period. A gap longer
than :data:`MAX_GAP_S` restarts the filter (initialised to the first new sample, so gravity
does not ring). ``rate_hz = 0`` disables the stream. Samples not after the last accepted one
(duplicates, clock steps backwards) are dropped.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from agent.processing.iir import BlockFilter, butter

#: Intermediate grid rate / output rate: leaves room for the Butterworth transition band.
OVERSAMPLE: Final = 16
#: Butterworth cut-off as a fraction of the output rate (0.4 × rate: 80 % of output Nyquist).
CUTOFF_RATIO: Final = 0.4
#: Filter order: ≥ 27 dB attenuation at the first alias band edge (0.9 × rate) at 0.4 × rate.
ORDER: Final = 4
#: A longer gap in the input restarts the filter instead of bridging it with held values.
MAX_GAP_S: Final = 2.0


class Decimator:
    """Stateful low-pass + decimation of an (n, 3) stream to ``rate_hz``."""

    def __init__(self, rate_hz: float, *, cutoff_ratio: float = CUTOFF_RATIO) -> None:
        if rate_hz < 0:
            raise ValueError(f"submit rate must be >= 0 Hz, got {rate_hz}")
        self.rate_hz = rate_hz
        self._grid_hz = rate_hz * OVERSAMPLE
        self._filter: BlockFilter | None = None
        if rate_hz > 0:
            b, a = butter(ORDER, cutoff_ratio * rate_hz, "lowpass", fs=self._grid_hz)
            self._filter = BlockFilter(b, a)
        self._zi: NDArray[np.float64] | None = None
        self._bin: int | None = None  # index of the grid bin being accumulated
        self._acc_sum = np.zeros(3)
        self._acc_n = 0
        self._hold = np.zeros(3)
        self._last_t = -np.inf

    @property
    def enabled(self) -> bool:
        """False when the submit rate is 0."""
        return self._filter is not None

    def reset(self) -> None:
        """Drop filter state (next sample starts a new filter run)."""
        self._zi = None
        self._bin = None
        self._acc_sum = np.zeros(3)
        self._acc_n = 0

    def feed(
        self, t: NDArray[np.float64], xyz: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Add a block; returns ``(times (m,), values (m, 3))`` of new output samples."""
        empty = (np.empty(0), np.empty((0, 3)))
        if self._filter is None:
            return empty
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        ok = np.isfinite(t) & np.all(np.isfinite(xyz), axis=1)
        prev_max = np.maximum.accumulate(np.concatenate([[self._last_t], t]))[:-1]
        ok &= t > prev_max
        if not np.all(ok):
            t, xyz = t[ok], xyz[ok]
        if t.size == 0:
            return empty
        if t[0] - self._last_t > MAX_GAP_S:
            self.reset()
        self._last_t = float(t[-1])
        bins = np.floor(t * self._grid_hz).astype(np.int64)
        # Split at internal gaps: each run is processed with a fresh filter.
        gaps = np.flatnonzero(np.diff(t) > MAX_GAP_S) + 1
        if gaps.size == 0:
            return self._run(bins, xyz)
        out_t: list[NDArray[np.float64]] = []
        out_v: list[NDArray[np.float64]] = []
        for i, (b, v) in enumerate(
            zip(np.split(bins, gaps), np.split(xyz, gaps), strict=True)
        ):
            if i:
                self.reset()
            ot, ov = self._run(b, v)
            out_t.append(ot)
            out_v.append(ov)
        return np.concatenate(out_t), np.concatenate(out_v)

    def _run(
        self, bins: NDArray[np.int64], xyz: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        filt = self._filter
        assert filt is not None
        if self._bin is None:
            self._bin = int(bins[0])
            self._acc_sum = np.zeros(3)
            self._acc_n = 0
            self._hold = xyz[0].copy()
            self._zi = filt.zi(xyz[0])  # (order, 3) steady state
        first = self._bin
        rel = bins - first
        nbins = int(rel[-1]) + 1  # the last bin stays open (more samples may follow)
        counts = np.bincount(rel, minlength=nbins).astype(np.float64)
        sums = np.stack(
            [np.bincount(rel, weights=xyz[:, k], minlength=nbins) for k in range(3)], axis=1
        )
        counts[0] += self._acc_n
        sums[0] += self._acc_sum
        # Keep the open bin for the next block.
        self._acc_n = int(counts[-1])
        self._acc_sum = sums[-1].copy()
        self._bin = first + nbins - 1
        done = nbins - 1
        if done == 0:
            return np.empty(0), np.empty((0, 3))
        counts, sums = counts[:done], sums[:done]
        have = counts > 0
        means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=have[:, None])
        # Forward-fill empty bins with the last mean (or the held value from the last block).
        idx = np.where(have, np.arange(done), -1)
        idx = np.maximum.accumulate(idx)
        filled = np.where((idx >= 0)[:, None], means[np.maximum(idx, 0)], self._hold[None, :])
        self._hold = filled[-1].copy()
        assert self._zi is not None
        y, self._zi = filt.filter(filled, self._zi)
        # Grid value of bin b stands for the end of the bin, time (b + 1) / grid_hz.
        ends = np.arange(first + 1, first + done + 1, dtype=np.int64)
        pick = ends % OVERSAMPLE == 0
        out_t = ends[pick].astype(np.float64) / self._grid_hz
        return out_t, y[pick]
