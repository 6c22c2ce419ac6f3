"""Heart-rate clean-up: RR artifact/ectopic rejection, quick tracking, device bpm fallback."""

from __future__ import annotations

import numpy as np
import pytest

from agent.processing.heart_rate import HeartRateFilter
from sensors.base import HeartRateSample

T0 = 1_767_772_800.0


def notifications(rr_ms: list[float], bpm: float = 70.0) -> list[HeartRateSample]:
    """Group beats into ~1 Hz notifications like a strap does (each carries the RRs it saw)."""
    beat_t = T0 + np.cumsum(rr_ms) / 1000.0
    out: list[HeartRateSample] = []
    sec = np.floor(beat_t - T0).astype(int)
    for s in np.unique(sec):
        idx = np.flatnonzero(sec == s)
        out.append(
            HeartRateSample(float(beat_t[idx[-1]]), bpm, tuple(float(rr_ms[i]) for i in idx))
        )
    return out


def run(f: HeartRateFilter, samples: list[HeartRateSample]) -> list[tuple[float, float]]:
    out = []
    for s in samples:
        v = f.feed(s)
        if v is not None:
            out.append((s.t, v))
    return out


def test_steady_rhythm_is_reported() -> None:
    rng = np.random.default_rng(0)
    rr = list(rng.normal(800.0, 15.0, 200))
    values = np.array([v for _, v in run(HeartRateFilter(), notifications(rr))])
    assert np.all(np.abs(values[3:] - 75.0) < 3.0)


def test_ectopic_beats_and_artifacts_are_rejected() -> None:
    rng = np.random.default_rng(1)
    rr = list(rng.normal(800.0, 12.0, 300))
    bad = 0
    for i in range(20, 290, 25):
        rr[i], rr[i + 1] = 480.0, 1150.0  # premature beat + compensatory pause
        bad += 2
    for i in range(32, 290, 50):
        rr[i] = 1600.0  # missed beat (detection dropout)
        bad += 1
    rr[100] = 250.0  # impossible
    rr[200] = 2600.0
    bad += 2
    f = HeartRateFilter()
    values = np.array([v for _, v in run(f, notifications(rr))])
    assert f.rejected == bad
    assert np.max(np.abs(values[3:] - 75.0)) < 3.0
    # Without rejection the same window would have swung far more.
    naive = 60000.0 / np.convolve(rr, np.ones(3) / 3, mode="valid")
    assert np.max(np.abs(naive - 75.0)) > 10.0


def test_real_step_change_is_tracked_within_seconds() -> None:
    rr = [1000.0] * 60 + [600.0] * 60  # 60 → 100 bpm at once (a 40 % jump)
    out = run(HeartRateFilter(), notifications(rr))
    change_t = T0 + 60.0
    after = [(t - change_t, v) for t, v in out if t > change_t]
    settled = [dt for dt, v in after if abs(v - 100.0) < 3.0]
    assert settled, "never reached the new rate"
    assert settled[0] < 4.0
    assert all(abs(v - 100.0) < 3.0 for dt, v in after if dt > settled[0])


def test_gradual_rise_is_followed_without_rejections() -> None:
    rr = list(np.linspace(1000.0, 500.0, 200))  # 60 → 120 bpm over ~150 s
    f = HeartRateFilter()
    out = run(f, notifications(rr))
    assert f.rejected == 0
    assert out[-1][1] == pytest.approx(120.0, abs=3.0)


def test_device_bpm_fallback_and_contact() -> None:
    f = HeartRateFilter()
    assert f.feed(HeartRateSample(T0, 72.0)) == 72.0
    assert f.feed(HeartRateSample(T0 + 1, 0.0)) is None
    assert f.feed(HeartRateSample(T0 + 2, 300.0)) is None
    assert f.feed(HeartRateSample(T0 + 3, 72.0, (830.0,), contact=False)) is None
    assert f.feed(HeartRateSample(T0 + 4, 72.0, (), contact=True)) == 72.0


def test_device_bpm_without_rr_gets_the_same_artifact_rejection() -> None:
    """A strap or watch that sends no RR: a lone spike is dropped, a real change is followed."""
    f = HeartRateFilter()
    bpm = [60.0] * 20 + [220.0] + [60.0] * 10 + [100.0] * 20
    out = run(f, [HeartRateSample(T0 + i, b) for i, b in enumerate(bpm)])
    values = dict(out)
    assert T0 + 20 not in values  # the 220 bpm spike
    assert all(abs(v - 60.0) < 1.0 for t, v in out if t < T0 + 31)
    settled = [t - (T0 + 31) for t, v in out if t >= T0 + 31 and abs(v - 100.0) < 3.0]
    assert settled and settled[0] <= 6.0  # re-locked within a few seconds
    assert f.rejected >= 1


def test_maximal_heart_rate_above_200_is_followed() -> None:
    """Young athletes reach 205-210 bpm; a ramp there must not vanish."""
    rr = list(60000.0 / np.linspace(180.0, 210.0, 400))
    out = run(HeartRateFilter(), notifications(rr))
    assert out[-1][1] == pytest.approx(210.0, abs=3.0)


def test_no_contact_stored_as_bpm_zero_is_dropped_like_live() -> None:
    f = HeartRateFilter()
    assert f.feed(HeartRateSample(T0, 0.0, ())) is None
    assert f.feed(HeartRateSample(T0 + 1, 72.0, (), contact=False)) is None
    assert f.feed(HeartRateSample(T0 + 2, 72.0)) == pytest.approx(72.0)
