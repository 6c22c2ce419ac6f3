"""Butterworth design and exact, stateful block IIR filtering in plain numpy.

Why not scipy: ``from scipy import signal`` pulls in scipy.stats, scipy.sparse and friends and
costs the daemon ~60 MB of resident memory for the handful of functions the pipeline uses
(issue 6). The pieces needed here are small and well defined, so they are written out:

* :func:`butter` designs low-pass and band-pass Butterworth filters the way
  ``scipy.signal.butter`` does: analog prototype poles, frequency pre-warping, ``lp2bp`` for the
  band-pass, bilinear transform, then ``(b, a)`` polynomials. Coefficients agree with scipy to
  rounding (~1e-14 for the orders used here).
* :class:`BlockFilter` runs ``y = lfilter(b, a, x, zi)`` with carried state, exactly (no
  truncation), with no per-sample Python loop. The filter is written in the state-space form of
  the transposed direct form II, the same realisation as ``scipy.signal.lfilter``, so the state
  vector *is* scipy's ``zi``. A block is processed in chunks of up to :data:`CHUNK` samples; for
  a chunk of ``m`` samples::

      y      = H[:m] @ s + T[:m, :m] @ u        (zero-input response + zero-state response)
      s_next = A^m @ s + K_m @ u                (K_m = [A^(m-1) B, ..., A B, B])

  with ``H[i] = C A^i`` and ``T`` the lower-triangular Toeplitz matrix of the impulse response,
  all precomputed once per coefficient set. Live and replay blocks (1 s, 25–64 samples) are a
  single chunk, i.e. two small matrix products per block; longer blocks loop over chunks, not
  samples. The result is independent of how the stream is cut into blocks up to rounding
  (~1e-12 relative for the filters used here).
* :func:`lfilter_zi` gives the steady-state initial state for a constant input (so a filter
  started on gravity does not ring) and :func:`frequency_response` evaluates ``H(e^jw)``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Final, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

FloatArray: TypeAlias = NDArray[np.float64]

#: Samples per matrix-product chunk: one chunk covers a typical 1 s block at up to 256 Hz, and the
#: ``T`` product (``CHUNK²`` multiply-adds per chunk) stays small.
CHUNK: Final = 256


def butter(
    order: int,
    cutoff_hz: float | tuple[float, float],
    btype: Literal["lowpass", "bandpass"],
    fs: float,
) -> tuple[FloatArray, FloatArray]:
    """Digital Butterworth ``(b, a)`` like ``scipy.signal.butter(order, cutoff, btype, fs=fs)``.

    ``cutoff_hz`` is one frequency for ``"lowpass"`` and ``(low, high)`` for ``"bandpass"``
    (whose transfer function then has order ``2 * order``). Cut-offs must lie in (0, fs / 2).
    """
    if not 1 <= order <= 8:
        raise ValueError(f"Butterworth order must be 1..8, got {order}")
    edges = np.atleast_1d(np.asarray(cutoff_hz, dtype=np.float64))
    expected = 1 if btype == "lowpass" else 2
    if edges.size != expected or btype not in ("lowpass", "bandpass"):
        raise ValueError(f"{btype} needs {expected} cut-off frequencies, got {cutoff_hz!r}")
    if np.any(edges <= 0) or np.any(edges >= fs / 2) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"cut-off {cutoff_hz!r} Hz must be increasing and in (0, {fs / 2}) Hz")
    # Analog prototype (cut-off 1 rad/s): poles on the left half of the unit circle.
    m = np.arange(-order + 1, order, 2)
    p: NDArray[np.complex128] = -np.exp(1j * np.pi * m / (2 * order))
    z: NDArray[np.complex128] = np.zeros(0, dtype=np.complex128)
    k = 1.0
    # Pre-warp so the digital filter has its edges exactly at the requested frequencies.
    warped = 2.0 * fs * np.tan(np.pi * edges / fs)
    if btype == "lowpass":
        p = p * warped[0]
        k = float(warped[0]) ** order
    else:
        bw = float(warped[1] - warped[0])
        wo = math.sqrt(float(warped[0] * warped[1]))
        p_lp = p * bw / 2
        root = np.sqrt(p_lp**2 - wo**2)
        p = np.concatenate((p_lp + root, p_lp - root))
        z = np.zeros(order, dtype=np.complex128)
        k = bw**order
    # Bilinear transform; zeros at infinity map to z = -1.
    fs2 = 2.0 * fs
    k_z = k * float(np.real(np.prod(fs2 - z) / np.prod(fs2 - p)))
    z_z = np.concatenate(((fs2 + z) / (fs2 - z), -np.ones(p.size - z.size)))
    p_z = (fs2 + p) / (fs2 - p)
    b = k_z * np.real(np.poly(z_z))
    a = np.real(np.poly(p_z))
    return b.astype(np.float64), a.astype(np.float64)


def _normalise(b: FloatArray, a: FloatArray) -> tuple[FloatArray, FloatArray]:
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    if a.size == 0 or a[0] == 0:
        raise ValueError("a[0] must be non-zero")
    n = max(a.size, b.size)
    b = np.pad(b, (0, n - b.size)) / a[0]
    a = np.pad(a, (0, n - a.size)) / a[0]
    return b, a


def _state_space(b: FloatArray, a: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``(A, B)`` of the transposed direct form II (``C = e0``, ``D = b[0]``)."""
    p = a.size - 1
    big_a = np.zeros((p, p))
    big_a[:, 0] = -a[1:]
    big_a[np.arange(p - 1), np.arange(1, p)] = 1.0
    return big_a, b[1:] - a[1:] * b[0]


def lfilter_zi(b: FloatArray, a: FloatArray) -> FloatArray:
    """State ``(order,)`` of the filter after a unit step has settled (as scipy's ``lfilter_zi``).

    Scale it by the first input value to start a filter without a transient.
    """
    b, a = _normalise(b, a)
    big_a, big_b = _state_space(b, a)
    return np.asarray(np.linalg.solve(np.eye(a.size - 1) - big_a, big_b), dtype=np.float64)


def frequency_response(b: FloatArray, a: FloatArray, f_hz: float, fs: float) -> complex:
    """``H(e^jw)`` at ``f_hz`` (as ``scipy.signal.freqz(b, a, worN=[f_hz], fs=fs)``)."""
    zinv = np.exp(-2j * np.pi * f_hz / fs) ** np.arange(max(len(a), len(b)))
    num = np.dot(np.asarray(b, dtype=np.float64), zinv[: len(b)])
    den = np.dot(np.asarray(a, dtype=np.float64), zinv[: len(a)])
    return complex(num / den)


class BlockFilter:
    """Exact ``lfilter`` for blocks of samples with carried state; see the module docstring.

    Samples run along axis 0: ``x`` is ``(n,)`` or ``(n, channels)`` and the state ``zi`` is
    ``(order,)`` or ``(order, channels)`` respectively (scipy's ``zi`` layout transposed for
    multi-channel input). Instances are immutable and may be shared between streams.
    """

    def __init__(self, b: FloatArray, a: FloatArray) -> None:
        mats = _matrices(tuple(np.asarray(b, dtype=np.float64).tolist()),
                         tuple(np.asarray(a, dtype=np.float64).tolist()))
        self.order: int = mats[0].shape[1]
        self._h, self._t, self._pw, self._g = mats

    def zi(self, x0: FloatArray | float) -> FloatArray:
        """Steady-state initial state for a constant input ``x0`` (scalar or ``(channels,)``)."""
        x0 = np.asarray(x0, dtype=np.float64)
        return np.multiply.outer(self._zi_unit, x0)

    def filter(self, x: FloatArray, zi: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Filter a block: returns ``(y, zf)`` like ``scipy.signal.lfilter(b, a, x, zi=zi)``."""
        x = np.asarray(x, dtype=np.float64)
        s = np.asarray(zi, dtype=np.float64)
        n = x.shape[0]
        if n <= CHUNK:
            return self._chunk(x, s)
        out = np.empty_like(x)
        for i in range(0, n, CHUNK):
            out[i : i + CHUNK], s = self._chunk(x[i : i + CHUNK], s)
        return out, s

    def _chunk(self, u: FloatArray, s: FloatArray) -> tuple[FloatArray, FloatArray]:
        m = u.shape[0]
        if m == 0:
            return u.copy(), s
        y = self._h[:m] @ s + self._t[:m, :m] @ u
        s_next = self._pw[m] @ s + self._g[m - 1 :: -1].T @ u
        return y, s_next

    @property
    def _zi_unit(self) -> FloatArray:
        # steady state: s = A s + B, i.e. (I - A) s = B; B = g[0], A = pw[1]
        return np.linalg.solve(np.eye(self.order) - self._pw[1], self._g[0])


@lru_cache(maxsize=32)
def _matrices(
    b_t: tuple[float, ...], a_t: tuple[float, ...]
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """``(H, T, A^0..A^CHUNK, G)`` for a coefficient set; cached (one per filter design)."""
    b, a = _normalise(np.asarray(b_t), np.asarray(a_t))
    p = a.size - 1
    if p < 1:
        raise ValueError("a pure gain (order 0) needs no filter state; use b[0] * x")
    big_a, big_b = _state_space(b, a)
    pw = np.empty((CHUNK + 1, p, p))
    pw[0] = np.eye(p)
    for i in range(CHUNK):  # design time only: CHUNK small matrix products
        pw[i + 1] = big_a @ pw[i]
    h_zi = pw[:CHUNK, 0, :].copy()  # H[i] = e0^T A^i: state -> output i samples later
    g = pw[:CHUNK] @ big_b  # G[j] = A^j B
    imp = np.concatenate(([b[0]], g[: CHUNK - 1, 0]))  # impulse response h[0..CHUNK-1]
    idx = np.arange(CHUNK)
    lag = idx[:, None] - idx[None, :]
    toeplitz = np.where(lag >= 0, imp[np.clip(lag, 0, CHUNK - 1)], 0.0)
    for arr in (h_zi, toeplitz, pw, g):
        arr.setflags(write=False)
    return h_zi, toeplitz, pw, g
