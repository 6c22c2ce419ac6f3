"""The Processor end to end: samples in (as the daemon feeds them), readings out."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from agent.processing.pipeline import ProcessingConfig, Processor
from agent.protocol import DataType
from agent.readings import Reading
from sensors.base import (
    AccBlock,
    BatterySample,
    GyroBlock,
    HeartRateSample,
    PressureSample,
    RscSample,
)

T0 = 1_767_772_800.0


def walking_acc(
    t0: float, dur: float, step_hz: float, fs: float = 100.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Trunk-like acceleration of walking (m/s², gravity on z): step-rate bounce + harmonics."""
    rng = np.random.default_rng(seed)
    t = t0 + np.arange(int(dur * fs)) / fs
    ph = 2 * np.pi * step_hz * (t - t0)
    z = 9.81 + 2.5 * np.sin(ph) + 0.8 * np.sin(2 * ph + 0.5) + rng.normal(0, 0.2, t.size)
    x = 0.8 * np.sin(ph / 2) + rng.normal(0, 0.2, t.size)
    y = 0.5 * np.sin(ph + 1) + rng.normal(0, 0.2, t.size)
    return t, np.stack([x, y, z], axis=1)


def resting_acc(t0: float, dur: float, fs: float = 100.0, seed: int = 1) -> tuple[
    np.ndarray, np.ndarray
]:
    rng = np.random.default_rng(seed)
    t = t0 + np.arange(int(dur * fs)) / fs
    xyz = np.tile([0.0, 0.0, 9.81], (t.size, 1)) + rng.normal(0, 0.03, (t.size, 3))
    return t, xyz


class ScriptedDetector:
    """Stand-in step detector: reports known step times ``latency`` seconds late."""

    def __init__(self, steps: np.ndarray, latency: float = 0.8) -> None:
        self.steps = np.sort(steps)
        self.latency = latency
        self.k = 0

    def feed(self, t: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        j = int(np.searchsorted(self.steps, t[-1] - self.latency, side="right"))
        out, self.k = self.steps[self.k : j], max(self.k, j)
        return out

    def flush(self) -> np.ndarray:
        out, self.k = self.steps[self.k :], self.steps.size
        return out

    def reset(self) -> None:
        self.k = 0

    @property
    def last_strong_peak(self) -> float | None:
        return None


def live(
    proc: Processor, t: np.ndarray, xyz: np.ndarray, *, gyro: bool = False, hr: bool = False,
    block: int = 36,
) -> list[Reading]:
    """Feed like the daemon: PMD-sized blocks, 1 Hz heart rate, a tick every second."""
    out: list[Reading] = []
    next_tick = np.floor(t[0]) + 1.0
    for i in range(0, t.size, block):
        bt, bx = t[i : i + block], xyz[i : i + block]
        while next_tick <= bt[-1]:
            out += proc.tick(next_tick)
            if hr:
                out += proc.feed(HeartRateSample(next_tick, 80.0, (750.0,)))
            next_tick += 1.0
        out += proc.feed(AccBlock(bt, bx))
        if gyro:
            out += proc.feed(GyroBlock(bt, bx[:, ::-1] * 0.1))
    return out


def of(readings: list[Reading], type: DataType) -> list[Reading]:
    return [r for r in readings if r.type is type]


def test_walk_then_rest_with_the_real_detector() -> None:
    proc = Processor(ProcessingConfig(height_m=1.75, totals_reset="never"))
    t1, a1 = walking_acc(T0, 60.0, 1.8)
    t2, a2 = resting_acc(T0 + 60.0, 30.0)
    out = live(proc, np.concatenate([t1, t2]), np.concatenate([a1, a2]), gyro=True, hr=True)
    out += proc.flush(T0 + 90.0)
    steps = of(out, DataType.STEPS)
    assert steps[-1].val == pytest.approx(108, abs=2)
    assert all(b.val >= a.val for a, b in itertools.pairwise(steps))  # type: ignore[operator]
    cad = of(out, DataType.STEPS_CADENCE)
    walking = [r.val for r in cad if T0 + 10 < r.t < T0 + 60]
    assert walking and all(abs(v - 1.8) < 0.1 for v in walking if v is not None)
    stopped = [r.t for r in cad if r.val == 0.0 and r.t > T0 + 60]
    assert stopped and stopped[0] - (T0 + 60.0) < 5.0  # decays to 0 within a few seconds
    assert cad[-1].val == 0.0 and of(out, DataType.SPEED)[-1].val == 0.0
    dist = of(out, DataType.DISTANCE)[-1].val
    assert dist == pytest.approx(108 * 0.415 * 1.75, rel=0.05)
    acc = of(out, DataType.ACCELERATION)
    assert abs(len(acc) - 90 * 4) <= 2 and len(of(out, DataType.GYROSCOPE)) == len(acc)
    assert all(r.vec is not None for r in acc)
    hr = of(out, DataType.HEART_RATE)
    assert hr and all(r.val == 80.0 for r in hr)
    snap = proc.snapshot()
    assert snap["steps"] == steps[-1].val and snap["cadence_sps"] == 0.0


def test_totals_do_not_depend_on_block_size() -> None:
    t, a = walking_acc(T0, 40.0, 2.0, fs=50.0, seed=4)
    finals = []
    for block in (5, 36, 200):
        proc = Processor(ProcessingConfig(totals_reset="never"))
        live(proc, t, a, block=block)
        proc.flush(T0 + 41.0)
        snap = proc.snapshot()
        finals.append((snap["steps"], snap["distance_m"]))
    assert finals[0] == finals[1] == finals[2]
    assert finals[0][0] == pytest.approx(80, abs=2)


def test_standing_still_does_not_flood() -> None:
    minutes = 20
    proc = Processor(ProcessingConfig(acc_submit_hz=0.0, gyro_submit_hz=0.0),
                     step_detector=ScriptedDetector(np.empty(0)))
    t, a = resting_acc(T0, minutes * 60.0, fs=25.0)
    out = live(proc, t, a, hr=True, block=50)
    per_type = {dt: len(of(out, dt)) for dt in DataType}
    assert per_type[DataType.ACCELERATION] == 0
    assert per_type[DataType.HEART_RATE] <= minutes * 12 + 2  # unchanged HR: every 5 s
    # Totals once a minute, cadence and speed every 30 s: about 7 frames a minute in all.
    assert sum(per_type.values()) - per_type[DataType.HEART_RATE] <= minutes * 8


def test_totals_persist_and_reset_at_local_midnight(tmp_path: Path) -> None:
    tz = timezone(timedelta(hours=2))
    midnight = datetime(2026, 1, 8, 0, 0, tzinfo=tz).timestamp()
    path = tmp_path / "totals.json"
    start = midnight - 120.0
    steps = start + 1.0 + np.arange(100) * 0.5  # 50 s of steps before midnight
    cfg = ProcessingConfig(acc_submit_hz=0, gyro_submit_hz=0)
    a = Processor(cfg, totals_path=path, tz=tz, step_detector=ScriptedDetector(steps))
    t, x = resting_acc(start, 60.0)
    live(a, t, x)
    a.flush(start + 60.0)
    assert path.is_file()
    # Restart: the count continues from the file.
    later = start + 70.0 + np.arange(20) * 0.5
    b = Processor(cfg, totals_path=path, tz=tz, step_detector=ScriptedDetector(later))
    t, x = resting_acc(start + 60.0, 40.0)
    out = live(b, t, x)
    assert of(out, DataType.STEPS)[-1].val == 120.0
    # Midnight passes while idle: totals restart from zero and a tick says so.
    out = b.tick(midnight + 1.0)
    assert {r.type: r.val for r in out}[DataType.STEPS] == 0.0
    assert b.snapshot()["totals_day"] == "2026-01-08"
    b.flush(midnight + 2.0)
    assert Processor(cfg, totals_path=path, tz=tz,
                     step_detector=ScriptedDetector(np.empty(0))).snapshot()["steps"] == 0


def test_restored_totals_are_announced_and_kept_alive_at_rest(tmp_path: Path) -> None:
    """After a restart a consumer sees today's totals at once and every minute, without a step."""
    tz = timezone(timedelta(hours=2))
    path = tmp_path / "totals.json"
    cfg = ProcessingConfig(acc_submit_hz=0, gyro_submit_hz=0)
    steps = T0 + 1.0 + np.arange(40) * 0.5
    a = Processor(cfg, totals_path=path, tz=tz, step_detector=ScriptedDetector(steps))
    t, x = resting_acc(T0, 30.0)
    live(a, t, x)
    a.flush(T0 + 30.0)
    b = Processor(cfg, totals_path=path, tz=tz, step_detector=ScriptedDetector(np.empty(0)))
    t, x = resting_acc(T0 + 40.0, 200.0)
    out = live(b, t, x, block=25)
    for dt, want in ((DataType.STEPS, 40.0), (DataType.FLOORS_CLIMBED, 0.0)):
        got = of(out, dt)
        assert got and got[0].t <= T0 + 42.0, dt  # announced on the first tick
        assert all(r.val == want for r in got)
        assert len(got) >= 3, (dt, len(got))  # ... and re-sent every minute at rest
    assert of(out, DataType.DISTANCE)[0].val == pytest.approx(b.snapshot()["distance_m"])


def test_floors_only_while_walking_through_the_pipeline() -> None:
    steps = T0 + 10.0 + np.arange(0, 40.0, 0.6)  # walking 10 s … 50 s
    proc = Processor(ProcessingConfig(acc_submit_hz=0, gyro_submit_hz=0, totals_reset="never"),
                     step_detector=ScriptedDetector(steps))
    out: list[Reading] = []
    t, x = resting_acc(T0, 120.0, fs=50.0)
    for i in range(0, t.size, 50):  # 1 s blocks, 10 Hz pressure
        bt = t[i : i + 50]
        out += proc.feed(AccBlock(bt, x[i : i + 50]))
        for tp in bt[::5]:
            climb = np.clip((tp - (T0 + 15.0)) / 24.0, 0.0, 1.0) * 6.0  # 6 m while walking
            lift = np.clip((tp - (T0 + 70.0)) / 20.0, 0.0, 1.0) * 9.0  # 9 m standing (a lift)
            hpa = 1000.0 - (climb + lift) / 8.4
            out += proc.feed(PressureSample(float(tp), hpa))
        out += proc.tick(float(np.floor(bt[-1])))
    out += proc.flush(T0 + 120.0)
    floors = of(out, DataType.FLOORS_CLIMBED)
    assert floors[-1].val == 2.0


def test_foot_pod_wins_for_cadence_speed_and_distance() -> None:
    steps = T0 + np.arange(0, 30.0, 0.5)
    proc = Processor(ProcessingConfig(acc_submit_hz=0, gyro_submit_hz=0, totals_reset="never"),
                     step_detector=ScriptedDetector(steps, latency=0.0))
    out: list[Reading] = []
    t, x = resting_acc(T0, 30.0)
    for s in range(30):
        sel = (t >= T0 + s) & (t < T0 + s + 1)
        out += proc.feed(RscSample(T0 + s + 0.5, 3.0, 170.0, None, 100.0 + 3.0 * s))
        out += proc.feed(AccBlock(t[sel], x[sel]))
        out += proc.tick(T0 + s + 1)
    out += proc.flush(T0 + 30.5)
    assert of(out, DataType.STEPS_CADENCE)[-1].val == pytest.approx(170.0 / 60, abs=0.01)
    assert of(out, DataType.SPEED)[-1].val == 3.0
    assert of(out, DataType.DISTANCE)[-1].val == pytest.approx(87.0, abs=0.5)  # pod's, not steps'
    assert of(out, DataType.STEPS)[-1].val == 60.0


def test_foot_pod_alone_counts_steps_from_its_cadence() -> None:
    proc = Processor(ProcessingConfig(totals_reset="never"),
                     step_detector=ScriptedDetector(np.empty(0)))
    out: list[Reading] = []
    for s in range(61):  # one minute at 150 steps/min, 1 Hz notifications, no accelerometer
        out += proc.feed(RscSample(T0 + s, 2.5, 150.0, None, None))
        out += proc.tick(T0 + s + 0.5)
    out += proc.flush(T0 + 61)
    assert of(out, DataType.STEPS)[-1].val == 150.0
    assert of(out, DataType.DISTANCE)[-1].val == pytest.approx(150.0, abs=0.5)  # 2.5 m/s × 60 s


def test_bad_input_never_raises() -> None:
    proc = Processor(ProcessingConfig(), step_detector=ScriptedDetector(np.empty(0)))
    proc.feed(AccBlock(np.array([T0, T0 + 0.01]), np.zeros((3, 3))))  # shape mismatch
    proc.feed(AccBlock(np.array([T0, np.nan]), np.array([[0, 0, 9.8], [0, 0, 9.8]])))
    proc.feed(AccBlock(np.array([T0 - 5.0]), np.array([[0, 0, 9.8]])))  # time went backwards
    proc.feed(AccBlock(np.empty(0), np.empty((0, 3))))
    proc.feed(HeartRateSample(float("nan"), 70.0))
    proc.feed(PressureSample(T0, float("inf")))
    proc.feed(RscSample(T0, float("nan"), -3.0))
    proc.feed(BatterySample(T0, 55, "strap"))
    assert proc.snapshot()["battery_percent"] == {"strap": 55}
    assert proc.snapshot()["dropped_samples"] >= 3
    proc.tick(T0 + 1)
    proc.flush()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ProcessingConfig(totals_reset="weekly")
    with pytest.raises(ValueError):
        ProcessingConfig(height_m=4.0)
    with pytest.raises(ValueError):
        ProcessingConfig(acc_submit_hz=-1.0)
    assert ProcessingConfig().acc_submit_hz == 4.0 and ProcessingConfig().totals_reset == "daily"


def test_utc_default_timezone_is_not_required() -> None:
    # tz=None uses the system zone; nothing here may depend on it.
    proc = Processor(ProcessingConfig(totals_reset="never"), tz=UTC,
                     step_detector=ScriptedDetector(np.empty(0)))
    assert proc.tick(T0) is not None
