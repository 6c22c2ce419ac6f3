"""Anti-alias decimation: removes an aliasing tone, keeps the pass band, emits at the set rate."""

from __future__ import annotations

import numpy as np
import pytest

from agent.processing.decimate import Decimator

T0 = 1_767_772_800.0


def irregular_signal(
    fs: float, dur: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = T0 + np.cumsum(rng.uniform(0.5 / fs, 1.5 / fs, int(dur * fs)))
    x = 9.81 + np.sin(2 * np.pi * 3.5 * t)  # 3.5 Hz aliases to 0.5 Hz at 4 Hz output
    y = np.sin(2 * np.pi * 0.2 * t)  # pass band
    z = np.zeros_like(t)
    return t, np.stack([x, y, z], axis=1)


def feed_blocks(
    d: Decimator, t: np.ndarray, v: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    ts, vs = [], []
    for i in range(0, t.size, n):
        a, b = d.feed(t[i : i + n], v[i : i + n])
        ts.append(a)
        vs.append(b)
    return np.concatenate(ts), np.concatenate(vs)


def test_aliasing_tone_is_removed_and_pass_band_kept() -> None:
    t, v = irregular_signal(100.0, 120.0)
    _, ov = feed_blocks(Decimator(4.0), t, v, 36)
    settled = ov[20:]
    assert np.std(settled[:, 0]) < 0.06  # 3.5 Hz tone attenuated > 20×
    assert np.mean(settled[:, 0]) == pytest.approx(9.81, abs=0.01)  # gravity kept
    assert np.std(settled[:, 1]) * np.sqrt(2) == pytest.approx(1.0, abs=0.05)
    naive = v[::25, 0]  # picking every 25th sample aliases the tone at full strength
    assert np.std(naive) > 0.5


def test_emits_at_the_configured_rate_on_an_absolute_grid() -> None:
    t, v = irregular_signal(200.0, 30.0, seed=2)
    for rate in (1.0, 4.0, 10.0):
        ot, _ = feed_blocks(Decimator(rate), t, v, 36)
        assert np.allclose(np.diff(ot), 1.0 / rate)
        assert np.allclose(ot * rate, np.round(ot * rate))
        assert abs(ot.size - (t[-1] - t[0]) * rate) <= 2


def test_block_size_does_not_change_the_result() -> None:
    t, v = irregular_signal(100.0, 20.0, seed=3)
    a_t, a_v = feed_blocks(Decimator(4.0), t, v, 7)
    b_t, b_v = feed_blocks(Decimator(4.0), t, v, 500)
    assert np.array_equal(a_t, b_t)
    assert np.allclose(a_v, b_v)


def test_slow_input_gaps_and_bad_samples() -> None:
    d = Decimator(4.0)
    t = T0 + np.arange(0, 10, 1 / 25.0)  # 25 Hz input
    v = np.tile([0.0, 0.0, 9.81], (t.size, 1))
    ot, ov = d.feed(t, v)
    assert ot.size >= 38 and np.allclose(ov[:, 2], 9.81)
    # A 5 s gap: nothing is invented inside it and the filter restarts cleanly.
    t2 = t[-1] + 5.0 + np.arange(0, 5, 1 / 25.0)
    ot2, ov2 = d.feed(t2, v[: t2.size])
    assert ot2.size and ot2[0] >= t2[0]
    assert np.allclose(ov2[:, 2], 9.81)
    # Duplicates, time going backwards and NaN rows are dropped, never raised.
    bad_t = np.array([t2[-1], t2[-1] - 1.0, t2[-1] + 0.04, t2[-1] + 0.08])
    bad_v = np.array([[0, 0, 9.81], [0, 0, 9.81], [np.nan, 0, 0], [0, 0, 9.81]])
    d.feed(bad_t, bad_v)
    assert d.feed(np.empty(0), np.empty((0, 3)))[0].size == 0


def test_rate_zero_disables() -> None:
    d = Decimator(0.0)
    t, v = irregular_signal(100.0, 5.0)
    assert not d.enabled
    assert d.feed(t, v)[0].size == 0
    with pytest.raises(ValueError):
        Decimator(-1.0)


def test_matches_scipy_lfilter_reference_on_a_grid_aligned_stream() -> None:
    """One sample per grid bin: the output is exactly scipy's Butterworth + lfilter, subsampled.

    scipy is only the reference here; the daemon filters with numpy (agent.processing.iir).
    """
    from scipy import signal

    rate, grid = 4.0, 64.0
    rng = np.random.default_rng(5)
    k = np.arange(int(T0 * grid), int(T0 * grid) + 64 * 60)
    t = (k + 0.5) / grid  # mid-bin: bin index = k
    v = np.array([0.3, -9.81, 1.0]) + rng.normal(size=(k.size, 3))
    ot, ov = feed_blocks(Decimator(rate), t, v, 37)
    b, a = signal.butter(4, 0.4 * rate, btype="low", fs=grid)
    zi = signal.lfilter_zi(b, a)[None, :] * v[0][:, None]
    ref, _ = signal.lfilter(b, a, v.T, axis=-1, zi=zi)
    pick = ((k + 1) % 16 == 0) & (k < k[-1])  # the last bin is still open
    assert np.allclose(ot, (k[pick] + 1) / grid, rtol=0, atol=1e-6)
    assert np.max(np.abs(ov - ref.T[pick])) < 1e-9
