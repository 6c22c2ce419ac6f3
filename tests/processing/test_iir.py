"""numpy Butterworth design and block IIR filtering, checked against scipy.signal as reference.

scipy is only a test-time reference here: the daemon must not import it (issue 6, memory).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from agent.processing.iir import (
    CHUNK,
    BlockFilter,
    butter,
    frequency_response,
    lfilter_zi,
)

DESIGNS = [
    *[(order, 1.6, "lowpass", 64.0) for order in range(1, 5)],
    *[(order, 10.0, "lowpass", 100.0) for order in range(1, 5)],
    *[(order, (1.0, 3.0), "bandpass", 50.0) for order in range(1, 5)],
    *[(order, (0.5, 8.0), "bandpass", 200.0) for order in range(1, 5)],
]


@pytest.mark.parametrize(("order", "cutoff", "btype", "fs"), DESIGNS)
def test_butter_matches_scipy(order: int, cutoff: float | tuple[float, float], btype: str,
                              fs: float) -> None:
    b, a = butter(order, cutoff, btype, fs)  # type: ignore[arg-type]
    rb, ra = signal.butter(order, cutoff, btype=btype, fs=fs)
    assert b.shape == rb.shape and a.shape == ra.shape
    np.testing.assert_allclose(b, rb, rtol=0, atol=1e-10 * np.max(np.abs(rb)))
    np.testing.assert_allclose(a, ra, rtol=0, atol=1e-10)
    # 6th/8th-order band-pass transfer functions are ill-conditioned: the steady-state solve and
    # the polynomial evaluation amplify last-bit differences of ``a`` (both implementations are
    # equally affected). The daemon only uses transfer functions of order <= 4.
    rtol = 0.0 if a.size <= 5 else 1e-2
    zi, ref_zi = lfilter_zi(b, a), signal.lfilter_zi(rb, ra)
    np.testing.assert_allclose(zi, ref_zi, rtol=rtol, atol=1e-9)
    for f in (0.3, 1.0, 2.0, 5.0):
        (ref,) = signal.freqz(rb, ra, worN=[f], fs=fs)[1]
        assert abs(frequency_response(b, a, f, fs) - ref) <= 1e-10 + rtol * abs(ref)


def test_butter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="order"):
        butter(0, 1.0, "lowpass", 50.0)
    with pytest.raises(ValueError, match="cut-off"):
        butter(2, 30.0, "lowpass", 50.0)
    with pytest.raises(ValueError, match="cut-off"):
        butter(2, (3.0, 1.0), "bandpass", 50.0)
    with pytest.raises(ValueError, match="needs 2"):
        butter(2, 1.0, "bandpass", 50.0)


def _blocks(n: int, rng: np.random.Generator) -> list[slice]:
    """Random block cuts, including empty blocks and blocks longer than CHUNK."""
    cuts = np.sort(rng.integers(0, n, size=max(1, n // 60)))
    edges = [0, *cuts.tolist(), n, n]
    return [slice(s, e) for s, e in itertools.pairwise(edges)]


@pytest.mark.parametrize(
    ("b", "a"),
    [
        butter(4, 1.6, "lowpass", 64.0),
        butter(2, (1.0, 3.0), "bandpass", 50.0),
        butter(1, 5.0, "lowpass", 50.0),
        (np.array([1 - 0.99336]), np.array([1.0, -0.99336])),  # the EMA of the step detector
        (np.array([2.0, 1.0]), np.array([2.0, -0.5, 0.1])),  # unnormalised a[0], short b
    ],
)
def test_block_filter_equals_lfilter_for_any_block_cuts(b: np.ndarray, a: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    x = 9.81 + rng.normal(size=3000) + np.sin(np.arange(3000) / 7.0)
    filt = BlockFilter(b, a)
    zi0 = filt.zi(x[0])
    ref, ref_zf = signal.lfilter(b, a, x, zi=signal.lfilter_zi(b, a) * x[0])
    np.testing.assert_allclose(zi0, signal.lfilter_zi(b, a) * x[0], rtol=1e-9, atol=1e-9)
    zi = zi0
    parts = []
    for sl in _blocks(x.size, rng):
        y, zi = filt.filter(x[sl], zi)
        assert y.shape == x[sl].shape
        parts.append(y)
    y_all = np.concatenate(parts)
    scale = np.max(np.abs(ref))
    assert np.max(np.abs(y_all - ref)) < 1e-9 * scale
    np.testing.assert_allclose(zi, ref_zf, rtol=0, atol=1e-9 * scale)
    # one call over the whole stream (several chunks) agrees as well
    y_one, _ = filt.filter(x, zi0)
    assert np.max(np.abs(y_one - ref)) < 1e-9 * scale
    assert x.size > CHUNK


def test_multichannel_state_layout() -> None:
    b, a = butter(4, 1.6, "lowpass", 64.0)
    filt = BlockFilter(b, a)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 3)) + np.array([0.0, 9.81, -3.0])
    zi = filt.zi(x[0])
    assert zi.shape == (filt.order, 3) == (4, 3)
    y1, z1 = filt.filter(x[:300], zi)
    y2, z2 = filt.filter(x[300:], z1)
    ref, ref_zf = signal.lfilter(b, a, x.T, axis=-1, zi=zi.T)
    np.testing.assert_allclose(np.concatenate([y1, y2]), ref.T, rtol=0, atol=1e-9)
    np.testing.assert_allclose(z2, ref_zf.T, rtol=0, atol=1e-9)


def test_steady_state_start_does_not_ring() -> None:
    b, a = butter(2, (1.0, 3.0), "bandpass", 50.0)
    filt = BlockFilter(b, a)
    y, _ = filt.filter(np.full(200, 9.81), filt.zi(9.81))
    assert np.max(np.abs(y)) < 1e-9


def test_pure_gain_is_rejected() -> None:
    with pytest.raises(ValueError, match="order 0"):
        BlockFilter(np.array([2.0]), np.array([1.0]))


def test_daemon_processing_path_does_not_import_scipy() -> None:
    code = (
        "import sys, agent.processing.pipeline, agent.processing.steps, "
        "agent.processing.decimate; print('scipy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"
