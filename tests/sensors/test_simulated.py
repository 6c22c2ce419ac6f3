"""Tests for the simulated wearer: determinism, rates, ground truth, physics, pacing."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import signal

from sensors.base import (
    AccBlock,
    BatterySample,
    FloatArray,
    GyroBlock,
    HeartRateSample,
    PressureSample,
    RscSample,
    SensorSample,
    SourceState,
)
from sensors.simulated import (
    CHUNK_S,
    FLOOR_HEIGHT_M,
    GRAVITY,
    Activity,
    Segment,
    SimulatedRecording,
    SimulatedSource,
    SimulatedStream,
    SimulationConfig,
    simulate,
)

DAY_LOOP_S = 5400.0  # a bit more than one default loop
#: For tests about slow signals: the accelerometer cannot be switched off, so make it cheap.
LOW_RATE: dict[str, Any] = {"acc_rate_hz": 25.0, "gyro_rate_hz": None}


@pytest.fixture(scope="module")
def day() -> SimulatedRecording:
    """One default day loop at 100 Hz with everything on (shared: generating it takes ~0.5 s)."""
    return simulate(SimulationConfig(seed=7, rsc=True), DAY_LOOP_S)


def _between(t: FloatArray, a: float, b: float) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = (t >= a) & (t < b)
    return out


class FakeClock:
    """Clock and sleep that advance fake time only: no real sleeping in tests."""

    def __init__(self, now: float = 50_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += max(delay, 0.0)


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"acc_rate_hz": 0.0},
        {"acc_rate_hz": -5.0},
        {"acc_rate_hz": math.nan},
        {"gyro_rate_hz": 0.0},
        {"pressure_rate_hz": 0.0},
        {"speed": 0.0},
        {"block_s": 0.0},
        {"schedule": ()},
        {"schedule": (Segment(Activity.WALK, 0.0),)},
        {"weather_drift_hpa_per_h": -1.0},
        {"ectopic_per_beat": 1.5},
        {"duration_s": -1.0},
    ],
)
def test_bad_config_is_rejected_with_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimulationConfig(**kwargs)  # type: ignore[arg-type]


def test_simulate_rejects_bad_duration() -> None:
    with pytest.raises(ValueError):
        simulate(SimulationConfig(), -1.0)
    with pytest.raises(ValueError):
        simulate(SimulationConfig(), math.inf)


def test_zero_duration_gives_empty_recording() -> None:
    rec = simulate(SimulationConfig(), 0.0)
    assert rec.acc.shape == (0, 3)
    assert rec.truth.steps == 0
    assert rec.hr == []


# --- determinism and rates ------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays_and_other_seed_differs() -> None:
    cfg = SimulationConfig(seed=3, rsc=True, start_t=1000.0)
    a, b = simulate(cfg, 400.0), simulate(cfg, 400.0)
    for name in ("acc_t", "acc", "gyro_t", "gyro", "pressure_t", "pressure_hpa"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.hr == b.hr
    assert a.rsc == b.rsc
    assert np.array_equal(a.truth.step_times, b.truth.step_times)
    c = simulate(SimulationConfig(seed=4, rsc=True, start_t=1000.0), 400.0)
    assert not np.array_equal(a.acc, c.acc)
    assert not np.array_equal(a.truth.step_times, c.truth.step_times)


def test_start_t_none_is_deterministic_for_pure_simulate() -> None:
    a = simulate(SimulationConfig(), 10.0)
    b = simulate(SimulationConfig(), 10.0)
    assert np.array_equal(a.acc_t, b.acc_t)


@pytest.mark.parametrize(("acc_hz", "gyro_hz", "p_hz"), [(25.0, 50.0, 1.0), (52.0, None, 4.0)])
def test_rates_are_honoured(acc_hz: float, gyro_hz: float | None, p_hz: float) -> None:
    cfg = SimulationConfig(acc_rate_hz=acc_hz, gyro_rate_hz=gyro_hz, pressure_rate_hz=p_hz)
    dur = 100.0
    rec = simulate(cfg, dur)
    assert rec.acc.shape == (round(dur * acc_hz), 3)
    assert np.allclose(np.diff(rec.acc_t), 1.0 / acc_hz, atol=1e-6)
    assert rec.acc_t[0] == rec.start_t and rec.acc_t[-1] < rec.start_t + dur
    if gyro_hz is None:
        assert rec.gyro.shape == (0, 3) and rec.gyro_t.size == 0
    else:
        assert rec.gyro.shape == (round(dur * gyro_hz), 3)
        assert np.allclose(np.diff(rec.gyro_t), 1.0 / gyro_hz, atol=1e-6)
    assert rec.pressure_hpa.size == round(dur * p_hz)
    assert np.allclose(np.diff(rec.pressure_t), 1.0 / p_hz, atol=1e-6)
    hr_t = np.array([h[0] for h in rec.hr])
    assert np.allclose(np.diff(hr_t), 1.0)  # a strap notifies about once a second
    assert len(rec.battery) == 2  # every 60 s


def test_disabled_streams_are_empty() -> None:
    cfg = SimulationConfig(gyro_rate_hz=None, hr=False, pressure=False, rsc=False)
    rec = simulate(cfg, 60.0)
    assert rec.gyro.size == 0 and rec.hr == [] and rec.pressure_hpa.size == 0 and rec.rsc == []
    assert rec.acc.shape[0] == 6000
    assert rec.truth.beat_times.size == 0


def test_truth_does_not_depend_on_sensor_rates() -> None:
    """Steps are a property of the wearer, not of the accelerometer rate."""
    a = simulate(SimulationConfig(seed=9, acc_rate_hz=25.0), 900.0)
    b = simulate(SimulationConfig(seed=9, acc_rate_hz=200.0, gyro_rate_hz=None), 900.0)
    assert np.array_equal(a.truth.step_times, b.truth.step_times)
    assert a.hr == b.hr


# --- ground truth ---------------------------------------------------------------------------------


def test_ground_truth_is_consistent(day: SimulatedRecording) -> None:
    truth = day.truth
    assert truth.steps == truth.step_times.size == truth.step_lengths_m.size
    assert truth.steps > 3000
    assert np.all(np.diff(truth.step_times) > 0.25)  # never faster than 4 steps/s
    assert truth.distance_m == pytest.approx(float(truth.step_lengths_m.sum()))
    kinds = {seg.activity for seg in truth.segments}
    assert kinds == set(Activity)
    # segments tile the recording
    starts = np.array([seg.start_t for seg in truth.segments])
    ends = np.array([seg.end_t for seg in truth.segments])
    assert starts[0] == day.start_t and ends[-1] == pytest.approx(day.start_t + DAY_LOOP_S)
    assert np.array_equal(starts[1:], ends[:-1])
    for seg in truth.segments:
        inside = truth.step_times[_between(truth.step_times, seg.start_t, seg.end_t)]
        dur = seg.end_t - seg.start_t
        if seg.activity is Activity.REST:
            assert inside.size == 0
            continue
        cadence = inside.size / dur
        assert cadence == pytest.approx(seg.cadence_sps, abs=0.05)
        lo, hi = {
            Activity.WALK: (1.6, 2.0),
            Activity.RUN: (2.6, 3.0),
            Activity.STAIRS_UP: (1.4, 1.7),
            Activity.STAIRS_DOWN: (1.4, 1.7),
        }[seg.activity]
        assert lo <= seg.cadence_sps <= hi, seg
        lengths = truth.step_lengths_m[_between(truth.step_times, seg.start_t, seg.end_t)]
        assert np.all(lengths == seg.step_length_m)


def test_floors_match_stair_segments(day: SimulatedRecording) -> None:
    truth = day.truth
    up = [s for s in truth.segments if s.activity is Activity.STAIRS_UP]
    down = [s for s in truth.segments if s.activity is Activity.STAIRS_DOWN]
    assert up and down
    assert truth.floors_up == sum(s.floors for s in up)
    assert truth.ascent_m == pytest.approx(truth.floors_up * FLOOR_HEIGHT_M)
    assert truth.descent_m == pytest.approx(sum(s.floors for s in down) * FLOOR_HEIGHT_M)
    # whole floors: steps in each stair segment are a multiple of 18 risers
    for seg in up + down:
        n = int(_between(truth.step_times, seg.start_t, seg.end_t).sum())
        assert n == seg.floors * 18


def test_partial_stair_segments_count_only_whole_floors() -> None:
    sched = (
        Segment(Activity.REST, 10.0),
        Segment(Activity.STAIRS_UP, 5.0),  # too short for a whole floor at a human cadence
        Segment(Activity.REST, 10.0),
    )
    rec = simulate(SimulationConfig(schedule=sched, hr=False), 25.0)
    assert 0 < rec.truth.ascent_m < FLOOR_HEIGHT_M
    assert rec.truth.floors_up == 0


def test_custom_schedule_repeats() -> None:
    sched = (Segment(Activity.WALK, 20.0), Segment(Activity.REST, 10.0))
    rec = simulate(SimulationConfig(schedule=sched), 90.0)
    acts = [s.activity for s in rec.truth.segments]
    assert acts == [Activity.WALK, Activity.REST] * 3


# --- accelerometer physics ------------------------------------------------------------------------


def _detect_steps(t: FloatArray, acc: FloatArray, rate: float) -> FloatArray:
    """A plain step detector: band-pass 0.5–3 Hz on |a| and peak picking."""
    mag = np.linalg.norm(acc, axis=1)
    sos = signal.butter(2, [0.5, 3.0], btype="bandpass", fs=rate, output="sos")
    filtered = signal.sosfilt(sos, mag - GRAVITY)
    peaks, _ = signal.find_peaks(filtered, height=0.6, distance=max(1, int(0.25 * rate)))
    out: FloatArray = t[peaks]
    return out


@pytest.mark.parametrize(("seed", "rate"), [(1, 25.0), (2, 100.0), (3, 200.0)])
def test_plain_step_detector_counts_roughly_the_true_steps(seed: int, rate: float) -> None:
    cfg = SimulationConfig(seed=seed, acc_rate_hz=rate, gyro_rate_hz=None, hr=False)
    rec = simulate(cfg, 3000.0)
    detected = _detect_steps(rec.acc_t, rec.acc, rate)
    assert rec.truth.steps > 2000
    assert detected.size == pytest.approx(rec.truth.steps, rel=0.02)
    # and per activity, not only in total
    for seg in rec.truth.segments:
        n_true = int(_between(rec.truth.step_times, seg.start_t, seg.end_t).sum())
        n_det = int(_between(detected, seg.start_t, seg.end_t).sum())
        assert abs(n_det - n_true) <= max(3, 0.03 * n_true), seg


def test_acceleration_amplitudes_per_activity(day: SimulatedRecording) -> None:
    mag = np.linalg.norm(day.acc, axis=1) - GRAVITY
    peaks: dict[Activity, list[float]] = {a: [] for a in Activity}
    for seg in day.truth.segments:
        m = _between(day.acc_t, seg.start_t + 2.0, seg.end_t - 1.0)
        peaks[seg.activity].append(float(np.percentile(mag[m], 99)))
        if seg.activity is Activity.REST:
            assert float(np.median(np.abs(mag[m]))) < 0.1  # still: just gravity and noise
    assert all(1.8 < p < 4.5 for p in peaks[Activity.WALK]), peaks
    assert all(7.0 < p < 15.0 for p in peaks[Activity.RUN]), peaks
    assert all(1.5 < p < 4.5 for p in peaks[Activity.STAIRS_UP]), peaks
    assert all(1.5 < p < 5.0 for p in peaks[Activity.STAIRS_DOWN]), peaks


def test_orientation_is_random_per_session_and_gravity_is_kept() -> None:
    rest = (Segment(Activity.REST, 60.0),)
    dirs = []
    for seed in (1, 2, 3):
        rec = simulate(SimulationConfig(seed=seed, schedule=rest, fidgets=False), 60.0)
        mean = rec.acc.mean(axis=0)
        assert float(np.linalg.norm(mean)) == pytest.approx(GRAVITY, abs=0.15)
        dirs.append(mean / np.linalg.norm(mean))
    # three random orientations: gravity points in clearly different device directions
    assert min(float(np.dot(a, b)) for a, b in [(dirs[0], dirs[1]), (dirs[1], dirs[2])]) < 0.95


def test_fidgets_turn_the_device_at_rest_without_walking() -> None:
    rest = (Segment(Activity.REST, 900.0),)
    rec = simulate(SimulationConfig(seed=5, schedule=rest), 900.0)
    unit = rec.acc / np.linalg.norm(rec.acc, axis=1, keepdims=True)
    baseline = np.median(unit, axis=0)
    baseline /= np.linalg.norm(baseline)
    tilt = np.degrees(np.arccos(np.clip(unit @ baseline, -1.0, 1.0)))
    assert tilt.max() > 20.0  # a wrist turn changes the gravity direction a lot
    assert rec.truth.steps == 0
    still = simulate(SimulationConfig(seed=5, schedule=rest, fidgets=False), 900.0)
    unit = still.acc / np.linalg.norm(still.acc, axis=1, keepdims=True)
    assert np.degrees(np.arccos(np.clip(unit @ baseline, -1.0, 1.0))).max() < 15.0


def test_gyro_follows_the_motion() -> None:
    sched = (Segment(Activity.REST, 60.0), Segment(Activity.WALK, 60.0))
    rec = simulate(SimulationConfig(seed=2, schedule=sched, fidgets=False), 120.0)
    rate = np.linalg.norm(rec.gyro, axis=1)
    t0 = rec.start_t
    rest_rms = float(np.sqrt(np.mean(rate[_between(rec.gyro_t, t0 + 5, t0 + 55)] ** 2)))
    walk_rms = float(np.sqrt(np.mean(rate[_between(rec.gyro_t, t0 + 65, t0 + 115)] ** 2)))
    assert rest_rms < 0.1
    assert 0.15 < walk_rms < 2.0
    assert walk_rms > 3 * rest_rms


# --- heart ----------------------------------------------------------------------------------------


def test_heart_rate_is_physiological_and_follows_activity(day: SimulatedRecording) -> None:
    t = np.array([h[0] for h in day.hr])
    bpm = np.array([h[1] for h in day.hr])
    rr = np.concatenate([np.array(h[2]) for h in day.hr])
    assert bpm.min() >= 30 and bpm.max() <= 210
    assert rr.min() >= 200 and rr.max() <= 2500
    for seg in day.truth.segments:
        if seg.end_t - seg.start_t < 300:
            continue
        last = bpm[_between(t, seg.end_t - 60, seg.end_t)]
        if seg.activity is Activity.RUN:
            assert last.mean() > 130
        if seg.activity is Activity.REST:
            assert last.mean() < 80
    # rises with a time constant of tens of seconds, not instantly
    run = next(s for s in day.truth.segments if s.activity is Activity.RUN)
    before = bpm[_between(t, run.start_t - 10, run.start_t)].mean()
    after5 = bpm[_between(t, run.start_t + 3, run.start_t + 7)].mean()
    after120 = bpm[_between(t, run.start_t + 115, run.start_t + 125)].mean()
    assert after5 - before < 0.4 * (after120 - before)
    assert after120 - before > 40


def test_rr_intervals_match_beats_and_show_ectopic_and_missed_beats() -> None:
    cfg = SimulationConfig(seed=11, ectopic_per_beat=0.01, missed_beat_per_beat=0.005)
    rec = simulate(cfg, 1800.0)
    truth = rec.truth
    assert truth.ectopic_times.size > 5 and truth.missed_beat_times.size > 2
    rr = np.concatenate([np.array(h[2]) for h in rec.hr]) / 1000.0
    detected = np.setdiff1d(truth.beat_times, truth.missed_beat_times)
    # every reported RR is the gap between consecutive detected beats (1/1024 s resolution)
    assert rr.size == detected.size - 1 - _unreported(rec, detected)
    assert np.allclose(rr, np.diff(detected)[: rr.size], atol=1e-3)
    local = signal.medfilt(rr, 9)
    short_then_long = (rr[:-1] < 0.8 * local[:-1]) & (rr[1:] > 1.15 * local[1:])
    assert short_then_long.sum() >= 0.8 * truth.ectopic_times.size
    # full compensatory pause: premature + following interval ≈ two normal intervals
    idx = np.flatnonzero(short_then_long)
    assert np.allclose(rr[idx] + rr[idx + 1], 2 * local[idx], rtol=0.15)
    doubled = rr > 1.7 * local
    assert doubled.sum() >= truth.missed_beat_times.size


def _unreported(rec: SimulatedRecording, detected: FloatArray) -> int:
    """Beats after the last notification are reported by the next (not yet generated) one."""
    last_notify = rec.hr[-1][0]
    return int((detected > last_notify).sum())


def test_default_ectopics_are_present_but_rare(day: SimulatedRecording) -> None:
    beats = day.truth.beat_times.size
    assert 0 < day.truth.ectopic_times.size < 0.02 * beats


# --- barometer ------------------------------------------------------------------------------------


def test_pressure_drops_about_0_12_hpa_per_metre_on_stairs() -> None:
    cfg = SimulationConfig(seed=4, weather_drift_hpa_per_h=0.0, door_slams=False)
    rec = simulate(cfg, 1500.0)
    p, t = rec.pressure_hpa, rec.pressure_t
    for seg in rec.truth.segments:
        if seg.activity not in (Activity.STAIRS_UP, Activity.STAIRS_DOWN):
            continue
        before = p[_between(t, seg.start_t - 20, seg.start_t)].mean()
        after = p[_between(t, seg.end_t + 1, seg.end_t + 11)].mean()
        metres = seg.floors * FLOOR_HEIGHT_M * (1 if seg.activity is Activity.STAIRS_UP else -1)
        assert after - before == pytest.approx(-0.12 * metres, abs=0.03 + 0.02 * abs(metres))


def test_weather_drift_magnitude() -> None:
    rest = (Segment(Activity.REST, 3600.0),)
    changes = []
    for seed in range(8):
        cfg = SimulationConfig(seed=seed, schedule=rest, door_slams=False, hr=False, **LOW_RATE)
        rec = simulate(cfg, 3600.0)
        first = rec.pressure_hpa[:300].mean()
        last = rec.pressure_hpa[-300:].mean()
        changes.append(abs(last - first) / (3300.0 / 3600.0))  # hPa per hour
    assert 0.3 < float(np.median(changes)) < 2.0
    assert max(changes) < 5.0
    flat = simulate(
        SimulationConfig(
            schedule=rest, door_slams=False, hr=False, weather_drift_hpa_per_h=0.0, **LOW_RATE
        ),
        3600.0,
    )
    assert float(np.ptp(flat.pressure_hpa)) < 0.15  # only sensor noise left
    assert 950 < flat.pressure_hpa.mean() < 1050


def test_door_slams_are_short_transients() -> None:
    rest = (Segment(Activity.REST, 3600.0),)
    base = {"schedule": rest, "hr": False, "weather_drift_hpa_per_h": 0.0, "seed": 2, **LOW_RATE}
    with_slams = simulate(SimulationConfig(**base), 3600.0)
    without = simulate(SimulationConfig(door_slams=False, **base), 3600.0)
    dev = np.abs(with_slams.pressure_hpa - without.pressure_hpa)
    spikes = dev > 0.05
    assert 1 <= spikes.sum() <= 40
    assert dev.max() < 0.4
    # transient: never more than a few consecutive samples at 1 Hz
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, spikes.astype(int), 0])))[::2]
    assert runs.max() <= 4


# --- RSC and battery ------------------------------------------------------------------------------


def test_rsc_foot_pod_reports_speed_cadence_and_distance(day: SimulatedRecording) -> None:
    assert len(day.rsc) == int(DAY_LOOP_S)
    totals = np.array([r.total_m for r in day.rsc])
    assert np.all(np.diff(totals) >= 0)
    assert totals[-1] == pytest.approx(day.truth.distance_m, rel=0.01)
    run = next(s for s in day.truth.segments if s.activity is Activity.RUN)
    inside = [r for r in day.rsc if run.start_t + 5 < r.t < run.end_t]
    assert all(r.running for r in inside)
    speed = np.mean([r.speed_mps for r in inside])
    assert speed == pytest.approx(run.cadence_sps * run.step_length_m, rel=0.05)
    assert np.mean([r.cadence_spm for r in inside]) == pytest.approx(60 * run.cadence_sps, rel=0.05)


def test_battery_drains_slowly() -> None:
    rec = simulate(
        SimulationConfig(battery_hours=10.0, hr=False, pressure=False, **LOW_RATE), 7200.0
    )
    pct = np.array([b.percent for b in rec.battery])
    assert np.all((pct >= 0) & (pct <= 100))
    drops = np.diff(pct)
    assert np.all((drops <= 0) | (drops > 50))  # drains, or "recharged" once flat
    assert 15 <= -drops[drops <= 0].sum() <= 25  # 2 h of a 10 h battery ≈ 20 %


# --- streaming and pacing -------------------------------------------------------------------------


def _collect_stream(
    cfg: SimulationConfig, start: float
) -> tuple[list[SensorSample], SimulatedStream]:
    stream = SimulatedStream(cfg, start)
    out = [s for _, block in stream.blocks() for s in block]
    return out, stream


def _split(samples: list[SensorSample]) -> dict[str, list[SensorSample]]:
    kinds: dict[str, list[SensorSample]] = {}
    for s in samples:
        kinds.setdefault(type(s).__name__, []).append(s)
    return kinds


def test_stream_equals_pure_simulate_across_chunk_boundaries() -> None:
    duration = 2.5 * CHUNK_S + 0.3
    sched = (Segment(Activity.STAIRS_UP, 40.0), Segment(Activity.WALK, 30.0))
    cfg = SimulationConfig(
        seed=8, rsc=True, block_s=0.7, start_t=2_000.0, duration_s=duration, schedule=sched
    )
    rec = simulate(cfg, duration)
    samples, stream = _collect_stream(cfg, 2_000.0)
    kinds = _split(samples)
    acc = [s for s in kinds["AccBlock"] if isinstance(s, AccBlock)]
    assert np.array_equal(np.concatenate([b.t for b in acc]), rec.acc_t)
    assert np.array_equal(np.concatenate([b.xyz for b in acc]), rec.acc)
    gyro = [s for s in kinds["GyroBlock"] if isinstance(s, GyroBlock)]
    assert np.array_equal(np.concatenate([b.xyz for b in gyro]), rec.gyro)
    hr = [s for s in kinds["HeartRateSample"] if isinstance(s, HeartRateSample)]
    assert [(h.t, h.bpm, h.rr_ms) for h in hr] == rec.hr
    pressure = [s for s in kinds["PressureSample"] if isinstance(s, PressureSample)]
    assert np.array_equal([p.hpa for p in pressure], rec.pressure_hpa)
    assert [s for s in kinds["RscSample"] if isinstance(s, RscSample)] == rec.rsc
    assert [s for s in kinds["BatterySample"] if isinstance(s, BatterySample)] == rec.battery
    truth = stream.truth
    assert truth.steps == rec.truth.steps > 0
    assert np.array_equal(truth.step_times, rec.truth.step_times)
    assert truth.distance_m == pytest.approx(rec.truth.distance_m)
    assert np.array_equal(truth.beat_times, rec.truth.beat_times)
    assert truth.segments == rec.truth.segments
    # and the recording's own sample view agrees in count
    assert len(rec.samples(block_s=0.7)) == len(samples)


def test_stream_blocks_are_in_time_order_and_sized() -> None:
    cfg = SimulationConfig(block_s=0.5, rsc=True, duration_s=40.0, start_t=0.0)
    stream = SimulatedStream(cfg, 0.0)
    last = -math.inf
    for end, block in stream.blocks():
        for s in block:
            first = float(s.t[0]) if isinstance(s, AccBlock | GyroBlock) else s.t
            assert first >= last
            last = first
            if isinstance(s, AccBlock):
                assert s.t.size == 50 and s.xyz.shape == (50, 3)
                assert s.t[-1] < end
    assert stream.emitted_s == 40.0


async def test_run_paces_with_the_injected_clock_and_sleep() -> None:
    clock = FakeClock()
    cfg = SimulationConfig(speed=10.0, duration_s=20.0, block_s=0.5)
    source = SimulatedSource(cfg, clock=clock, sleep=clock.sleep)
    emitted: list[tuple[float, SensorSample]] = []
    await source.run(lambda s: emitted.append((clock.now, s)))
    wall0 = 50_000.0
    assert clock.now == pytest.approx(wall0 + 2.0)  # 20 s of session at 10x
    assert len(clock.sleeps) == 40 and all(d >= 0 for d in clock.sleeps)
    for now, s in emitted:
        t_last = float(s.t[-1]) if isinstance(s, AccBlock | GyroBlock) else s.t
        assert now >= wall0 + (t_last - wall0) / 10.0 - 1e-9  # never emitted before it happened
    assert source.status.state is SourceState.STOPPED
    assert (
        source.truth.steps
        == simulate(SimulationConfig(start_t=wall0, duration_s=20.0), 20.0).truth.steps
    )


async def test_run_at_infinite_speed_only_yields() -> None:
    clock = FakeClock()
    cfg = SimulationConfig(speed=math.inf, duration_s=60.0, start_t=0.0)
    source = SimulatedSource(cfg, clock=clock, sleep=clock.sleep)
    count = 0

    def emit(sample: SensorSample) -> None:
        nonlocal count
        count += 1

    await source.run(emit)
    assert count > 600
    assert set(clock.sleeps) == {0.0}
    assert clock.now == 50_000.0


async def test_run_until_cancelled_updates_status_and_truth() -> None:
    cfg = SimulationConfig(speed=math.inf, start_t=0.0, schedule=(Segment(Activity.WALK, 60.0),))
    source = SimulatedSource(cfg, sleep=asyncio.sleep)  # sleep(0) only: no wall-clock waiting
    enough = asyncio.Event()
    seen: list[SensorSample] = []

    def emit(sample: SensorSample) -> None:
        seen.append(sample)
        if isinstance(sample, AccBlock) and sample.t[-1] > 30.0:
            enough.set()

    task = asyncio.create_task(source.run(emit))
    await enough.wait()
    assert source.status.state is SourceState.STREAMING
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    status = source.status
    assert status.state is SourceState.STOPPED
    assert status.battery_percent is not None and status.last_sample_t is not None
    assert status.last_sample_t > 30.0
    truth = source.truth
    assert truth.steps > 40
    assert truth.step_times[-1] <= status.last_sample_t
    assert status.as_dict()["simulated"] is True
