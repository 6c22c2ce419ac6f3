"""Step-length model, calibration (distance within 5 %), foot-pod preference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from agent.processing.distance import (
    BASE_RATIO,
    DistanceTracker,
    calibrate_factor,
    calibrate_from_recording,
    length_ratio,
    model_distance,
    step_length,
)

T0 = 1_767_772_800.0


def walk(
    start: float, cadences: list[tuple[float, int]], rng: np.random.Generator
) -> NDArray[np.float64]:
    """Step times for consecutive stretches of (cadence, steps), with 3 % interval jitter."""
    out: list[float] = []
    t = start
    for hz, n in cadences:
        iv = rng.normal(1.0 / hz, 0.03 / hz, n)
        times = t + np.cumsum(iv)
        out.extend(times.tolist())
        t = float(times[-1])
    return np.asarray(out)


def true_distance(times: np.ndarray, height: float, gait: float, rng: np.random.Generator) -> float:
    """A person whose steps are ``gait`` × the model's, with 4 % step-to-step variation."""
    iv = np.diff(times)
    cad = 1.0 / np.concatenate([[iv[0]], iv])
    lengths = height * gait * length_ratio(cad) * rng.normal(1.0, 0.04, times.size)
    return float(lengths.sum())


def test_reference_length_and_growth_with_cadence() -> None:
    assert step_length(1.75, 1.8) == pytest.approx(BASE_RATIO * 1.75)
    assert step_length(1.75, 1.4) < step_length(1.75, 1.8) < step_length(1.75, 2.2)
    assert step_length(1.75, 1.8, 1.1) == pytest.approx(1.1 * BASE_RATIO * 1.75)
    assert step_length(1.75, 50.0) < 1.75  # clipped


def test_calibration_brings_distance_within_5_percent() -> None:
    rng = np.random.default_rng(7)
    height, gait = 1.68, 0.88  # this person takes shorter steps than the model assumes
    calib = walk(T0, [(1.8, 150)], rng)
    known = true_distance(calib, height, gait, rng)
    factor = calibrate_factor(calib, known, height)
    assert factor == pytest.approx(gait, rel=0.03)
    # A different walk: slower, then brisker, with a pause in between.
    later = np.concatenate([
        walk(T0 + 1000, [(1.5, 200)], rng), walk(T0 + 2000, [(2.1, 300), (1.7, 100)], rng)
    ])
    truth = true_distance(later, height, gait, rng)
    uncalibrated = model_distance(later, height)
    calibrated = model_distance(later, height, factor)
    assert abs(uncalibrated - truth) / truth > 0.08  # calibration was needed ...
    assert abs(calibrated - truth) / truth < 0.05  # ... and is enough


def test_calibration_rejects_bad_walks() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        calibrate_factor(np.asarray(T0 + np.arange(5) * 0.5, dtype=np.float64), 10.0, 1.75)
    with pytest.raises(ValueError, match="implausible"):
        calibrate_factor(np.asarray(T0 + np.arange(100) * 0.55, dtype=np.float64), 5.0, 1.75)


def test_blockwise_equals_all_at_once() -> None:
    rng = np.random.default_rng(1)
    s = walk(T0, [(1.7, 120)], rng)
    a = DistanceTracker(1.8)
    total = sum(float(a.add_steps(s[i : i + 7]).sum()) for i in range(0, s.size, 7))
    assert total == pytest.approx(model_distance(s, 1.8))


def test_speed_is_cadence_times_step_length() -> None:
    d = DistanceTracker(1.75)
    assert d.speed(T0, 0.0) == 0.0
    assert d.speed(T0, 1.8) == pytest.approx(1.8 * BASE_RATIO * 1.75)


def test_foot_pod_is_preferred_while_recent() -> None:
    d = DistanceTracker(1.75)
    assert d.add_rsc(T0, 3.0, total_m=1000.0) == 0.0  # first total is a baseline
    assert d.add_rsc(T0 + 1.0, 3.0, total_m=1003.2) == pytest.approx(3.2)
    covered = d.add_steps(np.asarray(T0 + 1.0 + np.arange(4) * 0.4, dtype=np.float64))
    assert np.all(covered == 0.0)  # steps during pod coverage add nothing
    assert d.speed(T0 + 1.5, 1.8) == 3.0
    # Without a total, speed is integrated; a pod restart (total drops) re-baselines.
    assert d.add_rsc(T0 + 2.0, 3.0, total_m=5.0) == 0.0
    e = DistanceTracker(1.75)
    e.add_rsc(T0, 2.0)
    assert e.add_rsc(T0 + 2.0, 4.0) == pytest.approx(6.0)
    # A pod that reports its total only in some notifications is not counted twice.
    f = DistanceTracker(1.75)
    total = 0.0
    for k in range(61):
        total += f.add_rsc(T0 + k, 3.0, total_m=(50.0 + 3.0 * k) if k % 3 == 0 else None)
    assert total == pytest.approx(180.0)
    # Pod gone: steps count again.
    later = e.add_steps(np.asarray(T0 + 100 + np.arange(5) * 0.5, dtype=np.float64))
    assert np.all(later > 0)


def test_calibrate_from_recording_uses_the_streaming_detector(tmp_path: Path) -> None:
    from sensors.base import AccBlock
    from sensors.recording import RecordingWriter
    from tests.processing.test_pipeline import walking_acc

    t, xyz = walking_acc(T0, 60.0, 1.8)
    with RecordingWriter(tmp_path, {"subject": {"height_m": 1.75}}) as w:
        w.write(AccBlock(t, xyz))
    # 108 steps at 1.8 steps/s; say the walk really was 80 m.
    factor = calibrate_from_recording(tmp_path, 80.0)
    per_step = 80.0 / 108
    assert factor == pytest.approx(per_step / (BASE_RATIO * 1.75), rel=0.03)
