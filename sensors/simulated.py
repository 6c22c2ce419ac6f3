"""A simulated wearer: accelerometer, gyroscope, heart rate, barometer, foot pod and battery.

Theory of operation
-------------------
``agent run --simulate`` and the processing tests need sensor data whose truth is known: how many
steps were taken and when, how many floors were climbed, how far the wearer went. This module
synthesises such data from a small physical model and keeps the truth beside it.

*Schedule.* The wearer follows a list of :class:`Segment` (rest, walk, run, stairs up/down),
repeated forever. Each realised segment draws its own cadence, step length, impact amplitude and
heart-rate target from a generator seeded by ``(seed, segment index)``, so a segment looks the
same whatever the chunking.

*Gait.* A step phase φ(s) (s = session seconds) advances at the cadence, which wanders slowly around
the segment's nominal value (three sinusoids, integrated analytically so φ needs no state). Every
integer crossing of φ is one true step. The vertical acceleration is a cadence-periodic wave with a
heel-strike harmonic, lateral sway runs at half the cadence (left/right foot), forward acceleration
at the cadence; the amplitude cross-fades over :data:`RAMP_S` between segments. Body-frame specific
force (gravity up plus gait) is rotated into the device frame by a fixed random orientation, a slow
wobble and, at rest, occasional "turn the wrist over" fidgets, then bias and white noise are added.
The gyroscope is the angular velocity of those same rotations plus trunk yaw/roll/pitch of the gait,
expressed in the same device frame.

*Heart.* A first-order response towards each segment's target (τ ≈ 30 s up, ≈ 50 s recovery), plus
slow wander and respiratory sinus arrhythmia. Beats are the integer crossings of ∫HR/60 dt
(evaluated on a 20 Hz grid), so RR intervals are physiologically smooth. Occasionally a beat comes
early (premature ectopic beat, full compensatory pause because the following beat keeps its time),
and rarely the strap misses a beat (one RR interval spanning two beats). Notifications come about
once a second, like a real strap: integer bpm from the last four RR intervals and the RR intervals
(1/1024 s resolution) of the beats since the previous notification.

*Barometer.* Pressure = site pressure + weather (sum of slow random-phase sinusoids, periods
3–48 h, mean absolute rate ``weather_drift_hpa_per_h``) − (dp/dh ≈ 0.12 hPa/m) × altitude
+ door-slam transients (±0.15–0.35 hPa, τ 0.6 s, ~6 an hour) + noise. Altitude follows the
stair step phase; stair segments are sized to whole floors of :data:`STEPS_PER_FLOOR` risers (3 m)
whenever the cadence allows it, and a descent goes back down the floors climbed before.

*Non-steps.* At rest the wearer sometimes turns the wrist/torso (a ~1 rad turn and back within
1–2 s, with a small linear jolt): a realistic thing a step detector must not count as steps.

*Pacing.* :class:`SimulatedStream` is the sans-I/O core (blocks of ``block_s`` on demand);
:class:`SimulatedSource` only paces it with the injected ``clock``/``sleep``.

*Chunks.* Everything is computed in chunks of :data:`CHUNK_S` seconds of session time on global
sample grids (sample i of a stream is at ``i / rate``) with per-chunk random generators seeded by
``(seed, stream, chunk)``. The pure :func:`simulate` and the paced :class:`SimulatedSource` walk the
same chunks, so they produce identical values, and memory stays bounded however long a run lasts.
Only the heart-beat integrator, pending beats and short-lived events cross chunk boundaries.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sensors.base import (
    AccBlock,
    BatterySample,
    Emit,
    FloatArray,
    GyroBlock,
    HeartRateSample,
    PressureSample,
    RscSample,
    SensorSample,
    SourceState,
    SourceStatus,
)

# --- constants and their derivation -------------------------------------------------------------

GRAVITY = 9.80665
#: Session time generated per chunk. 30 s keeps per-chunk Python overhead negligible at 25 Hz and
#: the chunk small (6000 × 3 floats) at 200 Hz.
CHUNK_S = 30.0
#: Amplitude cross-fade between segments: people speed up/slow down over about one step.
RAMP_S = 0.4
#: A floor is ~3 m; 18 risers of 16.7 cm (a common building-code riser height).
FLOOR_HEIGHT_M = 3.0
STEPS_PER_FLOOR = 18
RISER_M = FLOOR_HEIGHT_M / STEPS_PER_FLOOR
#: Horizontal length of one stair step (tread), counted as distance walked.
STAIR_STEP_LENGTH_M = 0.30
#: Hypsometric slope dp/dh = p·g/(R_d·T) at 1013 hPa and 15 °C ≈ 0.120 hPa/m.
DRY_AIR_R = 287.05
AIR_TEMPERATURE_K = 288.15
#: Grid on which heart rate is integrated into beats; linear interpolation error < 0.1 ms.
HR_GRID_HZ = 20.0
#: Notification grids (offset so streams do not all land on whole seconds).
HR_NOTIFY_PERIOD_S = 1.0
HR_NOTIFY_OFFSET_S = 0.37
RSC_PERIOD_S = 1.0
RSC_OFFSET_S = 0.61
BATTERY_PERIOD_S = 60.0
BATTERY_OFFSET_S = 0.05  # first reading right at the start, like a read on connect
#: Sensor noise: ~3 mg accelerometer, ~0.3 °/s gyroscope, ~0.015 hPa barometer (BMP388 class).
ACC_NOISE = 0.03
GYRO_NOISE = 0.005
PRESSURE_NOISE_HPA = 0.015
#: Impact amplitude varies from step to step (SD, relative); real gait shows ~5–10 %.
STEP_GAIN_SD = 0.08
#: Rates of the rare events.
FIDGET_PER_S = 1.0 / 90.0  # non-step arm/torso movements while resting
DOOR_SLAM_PER_S = 1.0 / 600.0
DOOR_SLAM_TAU_S = 0.6
#: Start used by :func:`simulate` when ``start_t`` is None (keeps it pure and deterministic).
SIM_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# stream ids for per-chunk random generators
_ACC, _GYRO, _HR, _PRESS, _RSC, _FIDGET, _DOOR = range(10, 17)


class Activity(enum.StrEnum):
    """What the simulated wearer is doing."""

    REST = "rest"
    WALK = "walk"
    RUN = "run"
    STAIRS_UP = "stairs_up"
    STAIRS_DOWN = "stairs_down"


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of the schedule: an activity held for ``duration_s`` seconds."""

    activity: Activity
    duration_s: float


#: Default day loop (~1.5 h): all activities, stairs balanced (5 and 8 floors up and down again).
DEFAULT_SCHEDULE: tuple[Segment, ...] = (
    Segment(Activity.REST, 120.0),
    Segment(Activity.WALK, 300.0),
    Segment(Activity.STAIRS_UP, 60.0),
    Segment(Activity.WALK, 60.0),
    Segment(Activity.STAIRS_DOWN, 55.0),
    Segment(Activity.REST, 180.0),
    Segment(Activity.RUN, 420.0),
    Segment(Activity.WALK, 180.0),
    Segment(Activity.REST, 600.0),
    Segment(Activity.WALK, 240.0),
    Segment(Activity.STAIRS_UP, 90.0),
    Segment(Activity.REST, 60.0),
    Segment(Activity.STAIRS_DOWN, 85.0),
    Segment(Activity.WALK, 300.0),
    Segment(Activity.REST, 1800.0),
)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Everything that defines a simulated session; same config → same data."""

    seed: int = 1
    acc_rate_hz: float = 100.0
    gyro_rate_hz: float | None = 100.0
    hr: bool = True
    pressure: bool = True
    pressure_rate_hz: float = 1.0
    rsc: bool = False
    height_m: float = 1.75
    start_t: float | None = None
    speed: float = 1.0
    block_s: float = 0.1
    schedule: tuple[Segment, ...] | None = None
    weather_drift_hpa_per_h: float = 1.0
    door_slams: bool = True
    #: Probability that a beat is a premature (ectopic) beat / that the strap misses a beat.
    ectopic_per_beat: float = 0.004
    missed_beat_per_beat: float = 0.0005
    #: Non-step movements while resting (wrist turns); off gives a perfectly still rest.
    fidgets: bool = True
    #: Battery runs flat after this many hours, then is "recharged" to 100 %.
    battery_hours: float = 100.0
    #: Stop :meth:`SimulatedSource.run` after this much session time (None = until cancelled).
    duration_s: float | None = None
    name: str = "sim"

    def __post_init__(self) -> None:
        def positive(name: str, value: float) -> None:
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SimulationConfig.{name} must be a positive number, got {value}")

        if not 0 <= self.seed < 2**63:
            raise ValueError(
                f"SimulationConfig.seed must be a non-negative integer, got {self.seed}"
            )
        positive("acc_rate_hz", self.acc_rate_hz)
        if self.acc_rate_hz > 1000:
            raise ValueError(f"acc_rate_hz {self.acc_rate_hz} is above 1000 Hz; use 25–200")
        if self.gyro_rate_hz is not None:
            positive("gyro_rate_hz", self.gyro_rate_hz)
        positive("pressure_rate_hz", self.pressure_rate_hz)
        positive("height_m", self.height_m)
        positive("block_s", self.block_s)
        positive("battery_hours", self.battery_hours)
        if not (self.speed > 0):  # inf allowed
            raise ValueError(f"speed must be > 0 (math.inf = flat out), got {self.speed}")
        if self.weather_drift_hpa_per_h < 0 or not math.isfinite(self.weather_drift_hpa_per_h):
            raise ValueError("weather_drift_hpa_per_h must be a finite number ≥ 0")
        for name in ("ectopic_per_beat", "missed_beat_per_beat"):
            p = float(getattr(self, name))
            if not 0.0 <= p <= 0.2:
                raise ValueError(f"{name} must be within [0, 0.2], got {p}")
        if self.schedule is not None:
            if not self.schedule:
                raise ValueError("schedule must hold at least one Segment (or be None)")
            for seg in self.schedule:
                if not (math.isfinite(seg.duration_s) and seg.duration_s > 0):
                    raise ValueError(f"segment duration must be positive: {seg}")
        if self.duration_s is not None and not self.duration_s >= 0:
            raise ValueError("duration_s must be ≥ 0 or None")


@dataclass(frozen=True, slots=True)
class SegmentTruth:
    """A realised schedule segment with the values the simulation drew for it (Unix seconds)."""

    activity: Activity
    start_t: float
    end_t: float
    cadence_sps: float  # nominal steps per second (0 at rest)
    step_length_m: float
    hr_target_bpm: float
    floors: int  # whole floors this segment climbs (STAIRS_UP) or descends (STAIRS_DOWN)


@dataclass(frozen=True, slots=True, eq=False)
class GroundTruth:
    """What really happened, for tests: compare processing output against these."""

    step_times: FloatArray
    step_lengths_m: FloatArray
    steps: int
    floors_up: int
    ascent_m: float
    descent_m: float
    distance_m: float
    segments: tuple[SegmentTruth, ...]
    beat_times: FloatArray  # every true heart beat, ectopic ones included
    ectopic_times: FloatArray  # premature beats
    missed_beat_times: FloatArray  # true beats the strap did not report


@dataclass(frozen=True, slots=True, eq=False)
class SimulatedRecording:
    """Everything :func:`simulate` generated, as arrays (times in Unix seconds)."""

    start_t: float
    duration_s: float
    acc_t: FloatArray
    acc: FloatArray
    gyro_t: FloatArray
    gyro: FloatArray
    hr: list[tuple[float, float, tuple[float, ...]]]
    pressure_t: FloatArray
    pressure_hpa: FloatArray
    rsc: list[RscSample]
    battery: list[BatterySample]
    truth: GroundTruth

    def samples(self, block_s: float = 1.0, source: str = "sim") -> list[SensorSample]:
        """The recording as source samples in time order (ACC/GYRO in blocks of ``block_s``)."""
        out: list[tuple[float, int, SensorSample]] = []
        for t_arr, xyz, kind in ((self.acc_t, self.acc, 0), (self.gyro_t, self.gyro, 1)):
            if t_arr.size == 0:
                continue
            idx = np.floor((t_arr - self.start_t) / block_s).astype(np.int64)
            cuts = np.flatnonzero(np.diff(idx)) + 1
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, t_arr.size], strict=True):
                t_blk, v_blk = t_arr[a:b].copy(), xyz[a:b].copy()
                blk: SensorSample = (
                    AccBlock(t_blk, v_blk, source) if kind == 0 else GyroBlock(t_blk, v_blk, source)
                )
                out.append((float(t_blk[0]), kind, blk))
        for t, bpm, rr in self.hr:
            out.append((t, 2, HeartRateSample(t, bpm, rr, True, source)))
        for t, p in zip(self.pressure_t.tolist(), self.pressure_hpa.tolist(), strict=True):
            out.append((t, 3, PressureSample(t, p, source)))
        out.extend((s.t, 4, s) for s in self.rsc)
        out.extend((s.t, 5, s) for s in self.battery)
        out.sort(key=lambda x: (x[0], x[1]))
        return [s for _, _, s in out]


# --- the wearer's plan ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Seg:
    """A realised segment with everything needed to evaluate it analytically at any time."""

    index: int
    activity: Activity
    s0: float
    s1: float
    cadence: float
    fl_amp: FloatArray  # cadence wander: c(s) = c·(1 + Σ a sin(ω s + p))
    fl_omega: FloatArray
    fl_phase: FloatArray
    phase0: float
    amp_prev: float
    amp: float
    harmonic: float  # heel-strike harmonic of the vertical wave (relative)
    lateral: float  # lateral sway amplitude (relative)
    forward: float  # forward amplitude (relative)
    step_len: float
    climb: float  # metres of altitude per unit of step phase (+ up, − down, 0 level)
    h0: float
    hr0: float
    hr_target: float
    hr_tau: float
    floors: int

    def phase(self, s: FloatArray) -> FloatArray:
        """Step phase at times ``s`` (analytic integral of the cadence)."""
        ds = s - self.s0
        if self.cadence == 0.0:
            return np.full_like(s, self.phase0)
        wander = np.zeros_like(s)
        for a, w, p in zip(self.fl_amp, self.fl_omega, self.fl_phase, strict=True):
            wander -= a / w * (np.cos(w * s + p) - math.cos(w * self.s0 + p))
        return self.phase0 + self.cadence * (ds + wander)

    def cadence_at(self, s: FloatArray) -> FloatArray:
        c = np.full_like(s, self.cadence)
        for a, w, p in zip(self.fl_amp, self.fl_omega, self.fl_phase, strict=True):
            c += self.cadence * a * np.sin(w * s + p)
        return c

    def amplitude(self, s: FloatArray) -> FloatArray:
        u = np.clip((s - self.s0) / RAMP_S, 0.0, 1.0)
        u = u * u * (3.0 - 2.0 * u)  # smoothstep
        return self.amp_prev + (self.amp - self.amp_prev) * u

    def hr(self, s: FloatArray) -> FloatArray:
        return self.hr_target + (self.hr0 - self.hr_target) * np.exp(-(s - self.s0) / self.hr_tau)

    def end_phase(self) -> float:
        return float(self.phase(np.array([self.s1]))[0])

    def end_hr(self) -> float:
        return float(self.hr(np.array([self.s1]))[0])


_REL_SHAPE: dict[Activity, tuple[float, float, float]] = {
    # (heel-strike harmonic, lateral sway, forward) relative to vertical amplitude
    Activity.WALK: (0.25, 0.35, 0.45),
    Activity.RUN: (0.35, 0.20, 0.35),
    Activity.STAIRS_UP: (0.20, 0.35, 0.35),
    Activity.STAIRS_DOWN: (0.30, 0.35, 0.30),
}


class _Plan:
    """Lazily realises schedule segments in order; keeps only the ones still needed."""

    def __init__(self, config: SimulationConfig, hr_rest: float) -> None:
        self._cfg = config
        self._schedule = config.schedule if config.schedule is not None else DEFAULT_SCHEDULE
        self._hr_rest = hr_rest
        self._live: list[_Seg] = []
        self._last: _Seg | None = None
        self._next_index = 0

    def _realise(self) -> _Seg:
        k = self._next_index
        self._next_index += 1
        spec = self._schedule[k % len(self._schedule)]
        prev = self._last
        s0 = prev.s1 if prev is not None else 0.0
        s1 = s0 + spec.duration_s
        rng = np.random.default_rng([self._cfg.seed, 1, k])
        act = spec.activity
        height = self._cfg.height_m
        prev_phase = prev.end_phase() if prev is not None else 0.0
        prev_amp = prev.amp if prev is not None else 0.0
        hr0 = prev.end_hr() if prev is not None else self._hr_rest
        h0 = prev.h0 + prev.climb * (prev.end_phase() - prev.phase0) if prev is not None else 0.0
        empty = np.zeros(0)
        fl_amp, fl_omega, fl_phase = empty, empty, empty
        floors = 0
        climb = 0.0
        if act is Activity.REST:
            cadence, amp, step_len = 0.0, 0.0, 0.0
            shape = (
                (prev.harmonic, prev.lateral, prev.forward)
                if prev is not None
                else _REL_SHAPE[Activity.WALK]
            )
            hr_target = self._hr_rest + float(rng.uniform(-2.0, 2.0))
        elif act is Activity.WALK or act is Activity.RUN:
            if act is Activity.WALK:
                cadence = float(rng.uniform(1.65, 1.95))
                amp = float(rng.uniform(2.0, 3.2))
                step_len = height * 0.415 * math.sqrt(cadence / 1.8)
                hr_target = self._hr_rest + float(rng.uniform(28.0, 40.0))
            else:
                cadence = float(rng.uniform(2.6, 3.0))
                amp = float(rng.uniform(7.0, 10.0))
                step_len = height * 0.62 * cadence / 2.8
                hr_target = self._hr_rest + float(rng.uniform(80.0, 100.0))
            fl_amp = rng.uniform(0.005, 0.02, 3)
            fl_omega = 2 * np.pi * rng.uniform([0.005, 0.03, 0.2], [0.02, 0.1, 0.5])
            fl_phase = rng.uniform(0, 2 * np.pi, 3)
            shape = _REL_SHAPE[act]
        else:
            up = act is Activity.STAIRS_UP
            nominal = float(rng.uniform(1.4, 1.6) if up else rng.uniform(1.5, 1.7))
            n_floors = max(1, round(spec.duration_s * nominal / STEPS_PER_FLOOR))
            above = round(h0 / FLOOR_HEIGHT_M)
            # going back down to where the wearer came from, when the cadence allows
            if not up and above >= 1 and 1.2 <= above * STEPS_PER_FLOOR / spec.duration_s <= 2.0:
                n_floors = above
            cadence = n_floors * STEPS_PER_FLOOR / spec.duration_s
            if not 1.2 <= cadence <= 2.0:  # too short/long for whole floors: partial floors
                cadence = nominal
            floors = math.floor(cadence * spec.duration_s / STEPS_PER_FLOOR + 1e-6)
            amp = float(rng.uniform(2.0, 2.8) if up else rng.uniform(2.5, 3.5))
            step_len = STAIR_STEP_LENGTH_M
            climb = RISER_M if up else -RISER_M
            hr_target = self._hr_rest + float(
                rng.uniform(50.0, 65.0) if up else rng.uniform(25.0, 35.0)
            )
            shape = _REL_SHAPE[act]
        phase0 = prev_phase
        if cadence > 0 and (prev is None or prev.cadence == 0.0):
            phase0 = math.floor(prev_phase) + 0.5  # first step half a step after starting
        tau = (30.0 if hr_target > hr0 else 50.0) * float(rng.uniform(0.85, 1.15))
        seg = _Seg(
            index=k,
            activity=act,
            s0=s0,
            s1=s1,
            cadence=cadence,
            fl_amp=fl_amp,
            fl_omega=fl_omega,
            fl_phase=fl_phase,
            phase0=phase0,
            amp_prev=prev_amp,
            amp=amp,
            harmonic=shape[0],
            lateral=shape[1],
            forward=shape[2],
            step_len=step_len,
            climb=climb,
            h0=h0,
            hr0=hr0,
            hr_target=hr_target,
            hr_tau=tau,
            floors=floors,
        )
        self._last = seg
        return seg

    def covering(self, sa: float, sb: float) -> list[_Seg]:
        """Segments overlapping [sa, sb]; forgets segments that ended before ``sa``."""
        while self._last is None or self._last.s1 <= sb:
            self._live.append(self._realise())
        self._live = [g for g in self._live if g.s1 > sa - 1.0]
        return [g for g in self._live if g.s0 <= sb and g.s1 > sa]


@dataclass(slots=True)
class _Motion:
    """Segment-derived quantities evaluated on a time grid."""

    phase: FloatArray
    cadence: FloatArray
    amp: FloatArray
    harmonic: FloatArray
    lateral: FloatArray
    forward: FloatArray
    altitude: FloatArray
    hr: FloatArray
    step_len: FloatArray
    running: BoolArray


def _evaluate(segs: list[_Seg], s: FloatArray) -> _Motion:
    n = s.size

    def z() -> FloatArray:
        return np.zeros(n)

    m = _Motion(z(), z(), z(), z(), z(), z(), z(), z(), z(), np.zeros(n, dtype=bool))
    for g in segs:
        a, b = np.searchsorted(s, [g.s0, g.s1], side="left")
        if a >= b:
            continue
        ss = s[a:b]
        ph = g.phase(ss)
        m.phase[a:b] = ph
        m.cadence[a:b] = g.cadence_at(ss) if g.cadence > 0 else 0.0
        m.amp[a:b] = g.amplitude(ss)
        m.harmonic[a:b] = g.harmonic
        m.lateral[a:b] = g.lateral
        m.forward[a:b] = g.forward
        m.altitude[a:b] = g.h0 + g.climb * (ph - g.phase0)
        m.hr[a:b] = g.hr(ss)
        m.step_len[a:b] = g.step_len
        m.running[a:b] = g.activity is Activity.RUN
    return m


def _hash_unit(k: IntArray, seed: int) -> FloatArray:
    """Deterministic pseudo-random numbers in [0, 1) for integers ``k`` (splitmix64 finaliser)."""
    x = k.view(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    out: FloatArray = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out


# --- rotations ------------------------------------------------------------------------------------


def _rotate(v: FloatArray, rotvec: FloatArray) -> FloatArray:
    """Rotate rows of ``v`` by rotation vectors (rows, or one vector) — Rodrigues, vectorised."""
    rv = np.broadcast_to(rotvec, v.shape)
    kx, ky, kz = rv[:, 0], rv[:, 1], rv[:, 2]
    angle = np.sqrt(kx * kx + ky * ky + kz * kz)
    inv = 1.0 / np.where(angle > 1e-12, angle, 1.0)
    kx, ky, kz = kx * inv, ky * inv, kz * inv
    vx, vy, vz = v[:, 0], v[:, 1], v[:, 2]
    cos, sin = np.cos(angle), np.sin(angle)
    kdv = (kx * vx + ky * vy + kz * vz) * (1.0 - cos)
    out: FloatArray = np.empty_like(v)
    out[:, 0] = vx * cos + (ky * vz - kz * vy) * sin + kx * kdv
    out[:, 1] = vy * cos + (kz * vx - kx * vz) * sin + ky * kdv
    out[:, 2] = vz * cos + (kx * vy - ky * vx) * sin + kz * kdv
    return out


def _random_rotation(rng: np.random.Generator) -> FloatArray:
    """Uniformly random rotation matrix (device → body), from a random unit quaternion."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@dataclass(frozen=True, slots=True)
class _Fidget:
    """A non-step movement at rest: turn about ``axis`` by up to ``angle`` and back."""

    s0: float
    dur: float
    axis: FloatArray
    angle: float
    lin: FloatArray  # peak linear acceleration vector (body frame), one sine cycle

    @property
    def s1(self) -> float:
        return self.s0 + self.dur


@dataclass(frozen=True, slots=True)
class _Slam:
    s0: float
    hpa: float


# --- the generator --------------------------------------------------------------------------------


def _grid(rate: float, sa: float, sb: float, offset: float = 0.0) -> FloatArray:
    """Global grid ``offset + i/rate`` restricted to [sa, sb); identical however it is chunked."""
    i0 = math.ceil((sa - offset) * rate - 1e-9)
    i1 = math.ceil((sb - offset) * rate - 1e-9)
    grid: FloatArray = offset + np.arange(i0, i1, dtype=np.float64) / rate
    return grid


@dataclass(slots=True)
class _Chunk:
    """One chunk of generated data, times in session seconds."""

    sa: float
    sb: float
    segs: list[_Seg]
    acc_s: FloatArray
    acc: FloatArray
    gyro_s: FloatArray
    gyro: FloatArray
    hr_s: FloatArray
    hr_bpm: FloatArray
    hr_rr: list[tuple[float, ...]]
    pressure_s: FloatArray
    pressure: FloatArray
    rsc_s: FloatArray
    rsc: FloatArray  # columns: speed, cadence_spm, stride, total, running
    battery_s: FloatArray
    battery: FloatArray
    step_s: FloatArray
    step_len: FloatArray
    step_climb: FloatArray  # altitude change of each step (m)
    beat_s: FloatArray
    ectopic_s: FloatArray
    missed_s: FloatArray


class _Generator:
    """Pure chunk-by-chunk generator; all state that must cross chunk boundaries lives here."""

    def __init__(self, config: SimulationConfig) -> None:
        self.cfg = config
        rng = np.random.default_rng([config.seed, 0])
        self._hr_rest = float(rng.uniform(55.0, 70.0))
        self.plan = _Plan(config, self._hr_rest)
        self._r0t = _random_rotation(rng).T  # body → device
        self._acc_bias = rng.normal(0.0, 0.05, 3)
        self._gyro_bias = rng.normal(0.0, 0.01, 3)
        axes = rng.normal(size=(3, 3))
        self._wob_axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
        self._wob_amp = rng.uniform(0.01, 0.04, 3)  # rad
        self._wob_omega = 2 * np.pi * rng.uniform([0.01, 0.05, 0.2], [0.05, 0.2, 0.4])
        self._wob_phase = rng.uniform(0, 2 * np.pi, 3)
        self._lat_phase = float(rng.uniform(0, 2 * np.pi))
        # heart-rate variability
        self._lf_amp = rng.uniform(1.0, 2.5, 2)
        self._lf_omega = 2 * np.pi / rng.uniform([20.0, 45.0], [45.0, 120.0])
        self._lf_phase = rng.uniform(0, 2 * np.pi, 2)
        self._rsa_amp = float(rng.uniform(2.0, 5.0))
        self._rsa_omega = 2 * np.pi * float(rng.uniform(0.2, 0.3))
        self._rsa_phase = float(rng.uniform(0, 2 * np.pi))
        # weather: random-phase sinusoids (3–48 h) whose mean |rate| is weather_drift_hpa_per_h
        periods_s = 3600.0 * np.exp(rng.uniform(math.log(3.0), math.log(48.0), 6))
        omega = 2 * np.pi / periods_s
        # RMS rate of a·sin(ωs) is a·ω/√2; split the rate variance evenly over the components.
        # The sum is ~Gaussian, whose mean |x| is σ·√(2/π): scale σ so the mean |rate| matches.
        rate_hpa_s = config.weather_drift_hpa_per_h / 3600.0 * math.sqrt(math.pi / 2.0)
        self._wx_amp = rate_hpa_s * math.sqrt(2.0 / omega.size) / omega
        self._wx_omega = omega
        self._wx_phase = rng.uniform(0, 2 * np.pi, omega.size)
        self._p0 = float(rng.uniform(990.0, 1025.0))
        self._dpdh = self._p0 * GRAVITY / (DRY_AIR_R * AIR_TEMPERATURE_K)  # hPa per m
        self._battery0 = float(rng.uniform(0.0, 0.3))  # fraction already used at start
        # carried state
        self._chunk = 0
        self._hr_grid_last: tuple[float, float, float] | None = None  # (s, hr, ψ)
        self._psi0 = float(rng.uniform(0.0, 1.0))
        self._last_true_beat: float | None = None
        self._last_detected_beat: float | None = None
        self._pending_beats: FloatArray = np.zeros(0)
        self._pending_rr: FloatArray = np.zeros(0)
        self._recent_rr: FloatArray = np.zeros(0)  # last ≤3 RR (s) for the strap's bpm average
        self._fidgets: list[_Fidget] = []
        self._slams: list[_Slam] = []
        self._distance = 0.0

    @property
    def chunk_end(self) -> float:
        return self._chunk * CHUNK_S

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, stream, self._chunk])

    # -- pieces -------------------------------------------------------------------------------

    def _wobble(self, s: FloatArray) -> tuple[FloatArray, FloatArray]:
        arg = np.outer(s, self._wob_omega) + self._wob_phase
        ang = np.sin(arg) * self._wob_amp
        rate = np.cos(arg) * self._wob_amp * self._wob_omega
        rotvec: FloatArray = ang @ self._wob_axes
        rotrate: FloatArray = rate @ self._wob_axes
        return rotvec, rotrate

    def _to_device(
        self, v: FloatArray, s: FloatArray, wob: FloatArray, fidgets: list[_Fidget]
    ) -> FloatArray:
        out = _rotate(v, -wob)
        for f in fidgets:
            a, b = np.searchsorted(s, [f.s0, f.s1])
            if a < b:
                u = (s[a:b] - f.s0) / f.dur
                ang = f.angle * np.sin(np.pi * u) ** 2
                out[a:b] = _rotate(out[a:b], -ang[:, None] * f.axis)
        rotated: FloatArray = out @ self._r0t.T
        return rotated

    def _fidget_terms(self, s: FloatArray, fidgets: list[_Fidget]) -> tuple[FloatArray, FloatArray]:
        lin = np.zeros((s.size, 3))
        rate = np.zeros((s.size, 3))
        for f in fidgets:
            a, b = np.searchsorted(s, [f.s0, f.s1])
            if a < b:
                u = (s[a:b] - f.s0) / f.dur
                lin[a:b] += np.sin(2 * np.pi * u)[:, None] * f.lin
                rate[a:b] += (f.angle * np.pi / f.dur * np.sin(2 * np.pi * u))[:, None] * f.axis
        return lin, rate

    def _step_gain(self, phase: FloatArray) -> FloatArray:
        """Step-to-step impact variability (~8 % SD), a stateless hash of the step number."""
        k = np.floor(phase)
        w = phase - k
        w = w * w * (3.0 - 2.0 * w)
        g0 = _hash_unit(k.astype(np.int64), self.cfg.seed)
        g1 = _hash_unit(k.astype(np.int64) + 1, self.cfg.seed)
        spread = STEP_GAIN_SD * math.sqrt(3.0)  # uniform on ±spread has SD STEP_GAIN_SD
        gain: FloatArray = 1.0 + spread * (2.0 * (g0 * (1.0 - w) + g1 * w) - 1.0)
        return gain

    def _acc(self, segs: list[_Seg], s: FloatArray, fidgets: list[_Fidget]) -> FloatArray:
        m = _evaluate(segs, s)
        tp = 2 * np.pi * m.phase
        amp = m.amp * self._step_gain(m.phase)
        vert = amp * (np.cos(tp) + m.harmonic * np.cos(2 * tp + 0.4) + 0.05 * np.sin(0.5 * tp))
        lat = amp * m.lateral * np.sin(0.5 * tp + self._lat_phase)
        fwd = amp * m.forward * np.sin(tp + 0.9)
        body = np.column_stack([fwd, lat, GRAVITY + vert])
        lin, _ = self._fidget_terms(s, fidgets)
        body += lin
        wob, _ = self._wobble(s)
        dev = self._to_device(body, s, wob, fidgets)
        dev += self._acc_bias + self._rng(_ACC).normal(0.0, ACC_NOISE, dev.shape)
        return dev

    def _gyro(self, segs: list[_Seg], s: FloatArray, fidgets: list[_Fidget]) -> FloatArray:
        m = _evaluate(segs, s)
        tp = 2 * np.pi * m.phase
        e = np.clip(m.amp / 3.0, 0.0, 3.0) * m.cadence * np.pi
        roll = 0.05 * e * np.cos(0.5 * tp + self._lat_phase)
        pitch = 0.03 * 2.0 * e * np.cos(tp + 0.9)
        yaw = 0.08 * e * np.cos(0.5 * tp + self._lat_phase + 0.5)
        wob, wob_rate = self._wobble(s)
        _, fid_rate = self._fidget_terms(s, fidgets)
        body = np.column_stack([roll, pitch, yaw]) + wob_rate + fid_rate
        dev = self._to_device(body, s, wob, fidgets)
        dev += self._gyro_bias + self._rng(_GYRO).normal(0.0, GYRO_NOISE, dev.shape)
        return dev

    def _steps(self, segs: list[_Seg], sa: float, sb: float) -> tuple[FloatArray, ...]:
        times: list[FloatArray] = []
        lens: list[FloatArray] = []
        climbs: list[FloatArray] = []
        for g in segs:
            if g.cadence == 0.0:
                continue
            lo, hi = max(sa, g.s0), min(sb, g.s1)
            if lo >= hi:
                continue
            ph_lo, ph_hi = g.phase(np.array([lo, hi]))
            ks = np.arange(math.floor(ph_lo) + 1, math.floor(ph_hi) + 1, dtype=np.float64)
            if ks.size == 0:
                continue
            if g.fl_amp.size == 0:
                st = g.s0 + (ks - g.phase0) / g.cadence
            else:
                fine = np.linspace(lo, hi, max(2, math.ceil((hi - lo) * 50.0) + 1))
                st = np.interp(ks, g.phase(fine), fine)
            times.append(st)
            lens.append(np.full(ks.size, g.step_len))
            climbs.append(np.full(ks.size, g.climb))
        if not times:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        return np.concatenate(times), np.concatenate(lens), np.concatenate(climbs)

    def _events(self, segs: list[_Seg], sa: float, sb: float) -> None:
        """Draw fidgets and door slams starting in [sa, sb); keep those still active."""
        self._fidgets = [f for f in self._fidgets if f.s1 > sa]
        self._slams = [d for d in self._slams if d.s0 + 10 * DOOR_SLAM_TAU_S > sa]
        if self.cfg.fidgets:
            rng = self._rng(_FIDGET)
            for s0 in np.sort(rng.uniform(sa, sb, rng.poisson(FIDGET_PER_S * (sb - sa)))):
                dur = float(rng.uniform(1.0, 2.0))
                axis = rng.normal(size=3)
                lin = rng.normal(size=3)
                f = _Fidget(
                    float(s0),
                    dur,
                    axis / np.linalg.norm(axis),
                    float(rng.uniform(0.4, 1.4)),
                    lin / np.linalg.norm(lin) * float(rng.uniform(0.2, 0.8)),
                )
                at_rest = all(
                    g.activity is Activity.REST
                    for g in self.plan.covering(sa, f.s1 + RAMP_S)
                    if g.s0 < f.s1 + RAMP_S and g.s1 > f.s0 - RAMP_S
                )
                if at_rest:
                    self._fidgets.append(f)
        if self.cfg.door_slams:
            rng = self._rng(_DOOR)
            for s0 in np.sort(rng.uniform(sa, sb, rng.poisson(DOOR_SLAM_PER_S * (sb - sa)))):
                mag = float(rng.uniform(0.15, 0.35))
                self._slams.append(_Slam(float(s0), mag if rng.random() < 0.5 else -mag))

    def _pressure(self, segs: list[_Seg], s: FloatArray) -> FloatArray:
        m = _evaluate(segs, s)
        weather = np.sin(np.outer(s, self._wx_omega) + self._wx_phase) @ self._wx_amp
        p = self._p0 + weather - self._dpdh * m.altitude
        for d in self._slams:
            dt = s - d.s0
            p += np.where(dt >= 0, d.hpa * np.exp(-np.maximum(dt, 0.0) / DOOR_SLAM_TAU_S), 0.0)
        p += self._rng(_PRESS).normal(0.0, PRESSURE_NOISE_HPA, s.size)
        out: FloatArray = p
        return out

    def _heart(
        self, segs: list[_Seg], sa: float, sb: float
    ) -> tuple[FloatArray, FloatArray, list[tuple[float, ...]], FloatArray, FloatArray, FloatArray]:
        cfg = self.cfg
        grid = _grid(HR_GRID_HZ, sa, sb)
        dyn = _evaluate(segs, grid).hr
        lf = np.sin(np.outer(grid, self._lf_omega) + self._lf_phase) @ self._lf_amp
        rsa_scale = np.clip((150.0 - dyn) / 90.0, 0.0, 1.0)
        rsa = self._rsa_amp * rsa_scale * np.sin(self._rsa_omega * grid + self._rsa_phase)
        hr = np.clip(dyn + lf + rsa, 35.0, 210.0)
        # integrate beats: ψ(s) = ∫ hr/60 ds, trapezoid on the global grid
        if self._hr_grid_last is None:
            s_prev, hr_prev, psi_prev = float(grid[0]), float(hr[0]), self._psi0
            gs, ghr = grid, hr
            psi = psi_prev + np.concatenate(
                [[0.0], np.cumsum((ghr[1:] + ghr[:-1]) * 0.5 / 60.0 * np.diff(gs))]
            )
        else:
            s_prev, hr_prev, psi_prev = self._hr_grid_last
            gs = np.concatenate([[s_prev], grid])
            ghr = np.concatenate([[hr_prev], hr])
            psi = psi_prev + np.concatenate(
                [[0.0], np.cumsum((ghr[1:] + ghr[:-1]) * 0.5 / 60.0 * np.diff(gs))]
            )
        self._hr_grid_last = (float(gs[-1]), float(ghr[-1]), float(psi[-1]))
        ks = np.arange(math.floor(psi[0]) + 1, math.floor(psi[-1]) + 1, dtype=np.float64)
        beats = np.interp(ks, psi, gs)
        rng = self._rng(_HR)
        u_ect = rng.random(beats.size)
        u_mis = rng.random(beats.size)
        prev_true = np.concatenate(
            [[self._last_true_beat if self._last_true_beat is not None else -np.inf], beats[:-1]]
        )
        true_beats = beats.copy()
        ectopic = (u_ect < cfg.ectopic_per_beat) & np.isfinite(prev_true)
        true_beats[ectopic] = beats[ectopic] - 0.35 * (beats[ectopic] - prev_true[ectopic])
        missed = (u_mis < cfg.missed_beat_per_beat) & ~ectopic
        if beats.size:
            self._last_true_beat = float(beats[-1])
        detected = true_beats[~missed]
        prev_det = np.concatenate(
            [
                [self._last_detected_beat if self._last_detected_beat is not None else np.nan],
                detected[:-1],
            ]
        )
        rr = detected - prev_det  # NaN for the very first beat of the session
        # the strap's 1/1024 s RR resolution
        rr = np.round(rr * 1024.0) / 1024.0
        if detected.size:
            self._last_detected_beat = float(detected[-1])
        keep = np.isfinite(rr)
        pend_t = np.concatenate([self._pending_beats, detected[keep]])
        pend_rr = np.concatenate([self._pending_rr, rr[keep]])
        # notifications
        notif = _grid(1.0 / HR_NOTIFY_PERIOD_S, sa, sb, HR_NOTIFY_OFFSET_S)
        upto = np.searchsorted(pend_t, notif, side="right")
        all_rr = np.concatenate([self._recent_rr, pend_rr])
        csum = np.concatenate([[0.0], np.cumsum(all_rr)])
        end = upto + self._recent_rr.size
        begin = np.maximum(end - 4, 0)
        count = end - begin
        hr_at = np.interp(notif, grid, hr) if grid.size else np.full(notif.size, self._hr_rest)
        with np.errstate(divide="ignore", invalid="ignore"):
            avg = np.where(count > 0, (csum[end] - csum[begin]) / np.maximum(count, 1), np.nan)
            bpm = np.where(count > 0, np.round(60.0 / avg), np.round(hr_at))
        rr_ms = np.round(pend_rr * 1000.0, 3)
        starts = np.concatenate([[0], upto[:-1]]) if upto.size else upto
        rr_lists = [tuple(rr_ms[a:b].tolist()) for a, b in zip(starts, upto, strict=True)]
        used = int(upto[-1]) if upto.size else 0
        self._recent_rr = all_rr[: self._recent_rr.size + used][-3:]
        self._pending_beats = pend_t[used:]
        self._pending_rr = pend_rr[used:]
        return (
            notif,
            bpm.astype(np.float64),
            rr_lists,
            true_beats,
            true_beats[ectopic],
            true_beats[missed],
        )

    def _rsc(
        self, segs: list[_Seg], sa: float, sb: float, step_s: FloatArray, step_len: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        s = _grid(1.0 / RSC_PERIOD_S, sa, sb, RSC_OFFSET_S)
        m = _evaluate(segs, s)
        rng = self._rng(_RSC)
        noise = 1.0 + rng.normal(0.0, 0.02, s.size)
        cadence = m.cadence
        speed = cadence * m.step_len * noise
        total = (
            self._distance
            + np.concatenate([[0.0], np.cumsum(step_len)])[np.searchsorted(step_s, s, side="right")]
        )
        cols = np.column_stack(
            [speed, np.round(cadence * 60.0), m.step_len, total, m.running.astype(np.float64)]
        )
        return s, cols

    # -- a chunk ------------------------------------------------------------------------------

    def next_chunk(self) -> _Chunk:
        cfg = self.cfg
        sa, sb = self._chunk * CHUNK_S, (self._chunk + 1) * CHUNK_S
        segs = self.plan.covering(sa, sb)
        self._events(segs, sa, sb)
        segs = self.plan.covering(sa, sb)
        fidgets = [f for f in self._fidgets if f.s0 < sb and f.s1 > sa]
        acc_s = _grid(cfg.acc_rate_hz, sa, sb)
        acc = self._acc(segs, acc_s, fidgets)
        if cfg.gyro_rate_hz is not None:
            gyro_s = _grid(cfg.gyro_rate_hz, sa, sb)
            gyro = self._gyro(segs, gyro_s, fidgets)
        else:
            gyro_s, gyro = np.zeros(0), np.zeros((0, 3))
        step_s, step_len, step_climb = self._steps(segs, sa, sb)
        hr_s, hr_bpm = np.zeros(0), np.zeros(0)
        hr_rr: list[tuple[float, ...]] = []
        beat_s, ect_s, mis_s = np.zeros(0), np.zeros(0), np.zeros(0)
        if cfg.hr:
            hr_s, hr_bpm, hr_rr, beat_s, ect_s, mis_s = self._heart(segs, sa, sb)
        if cfg.pressure:
            pressure_s = _grid(cfg.pressure_rate_hz, sa, sb)
            pressure = self._pressure(segs, pressure_s)
        else:
            pressure_s, pressure = np.zeros(0), np.zeros(0)
        if cfg.rsc:
            rsc_s, rsc = self._rsc(segs, sa, sb, step_s, step_len)
        else:
            rsc_s, rsc = np.zeros(0), np.zeros((0, 5))
        if step_len.size:  # cumsum, not sum: the same rounding as the RSC totals above
            self._distance += float(np.cumsum(step_len)[-1])
        battery_s = _grid(1.0 / BATTERY_PERIOD_S, sa, sb, BATTERY_OFFSET_S)
        used = (self._battery0 + battery_s / (cfg.battery_hours * 3600.0)) % 1.0
        battery = np.floor(100.0 * (1.0 - used) + 0.5)
        self._chunk += 1
        return _Chunk(
            sa, sb, segs, acc_s, acc, gyro_s, gyro, hr_s, hr_bpm, hr_rr, pressure_s, pressure,
            rsc_s, rsc, battery_s, battery, step_s, step_len, step_climb, beat_s, ect_s, mis_s,
        )  # fmt: skip


def _seg_truth(g: _Seg, start_t: float, until_s: float) -> SegmentTruth:
    return SegmentTruth(
        activity=g.activity,
        start_t=start_t + g.s0,
        end_t=start_t + min(g.s1, until_s),
        cadence_sps=g.cadence,
        step_length_m=g.step_len,
        hr_target_bpm=g.hr_target,
        floors=g.floors,
    )


# --- truth accumulation ---------------------------------------------------------------------------


#: Newest step/beat times kept by a streaming truth (8 MB each); counts and totals stay exact.
TRUTH_KEEP = 1_000_000
#: Newest segments kept by a streaming truth (a default loop realises ~250 a day).
TRUTH_KEEP_SEGMENTS = 10_000


class _Series:
    """Append-only float series, compacted as it grows and capped to the newest ``keep`` values."""

    def __init__(self, keep: int = TRUTH_KEEP) -> None:
        self._parts: list[FloatArray] = []
        self._keep = keep

    def append(self, values: FloatArray) -> None:
        if values.size:
            self._parts.append(values)
            if len(self._parts) > 256:
                self.values()

    def values(self) -> FloatArray:
        out: FloatArray = np.concatenate(self._parts)[-self._keep :] if self._parts else np.zeros(0)
        self._parts = [out] if out.size else []
        return out


class _TruthAccumulator:
    """Collects ground truth for the data emitted so far, in bounded memory."""

    def __init__(self, start_t: float) -> None:
        self._start = start_t
        self._steps = _Series()
        self._lens = _Series()
        self._beats = _Series()
        self._ect = _Series()
        self._mis = _Series()
        self._ascent = 0.0
        self._descent = 0.0
        self._distance = 0.0
        self._n = 0
        self._segments: dict[int, _Seg] = {}
        self._until = 0.0

    def add(
        self,
        step_s: FloatArray,
        step_len: FloatArray,
        step_climb: FloatArray,
        beats: FloatArray,
        ectopic: FloatArray,
        missed: FloatArray,
        segs: list[_Seg],
        until_s: float,
    ) -> None:
        if step_s.size:
            self._steps.append(step_s + self._start)
            self._lens.append(step_len)
            self._n += step_s.size
            self._distance += float(step_len.sum())
            self._ascent += float(step_climb[step_climb > 0].sum())
            self._descent -= float(step_climb[step_climb < 0].sum())
        self._beats.append(beats + self._start)
        self._ect.append(ectopic + self._start)
        self._mis.append(missed + self._start)
        for g in segs:
            if g.s0 < until_s:
                self._segments[g.index] = g
        while len(self._segments) > TRUTH_KEEP_SEGMENTS:
            del self._segments[min(self._segments)]
        self._until = max(self._until, until_s)

    def snapshot(self) -> GroundTruth:
        return GroundTruth(
            step_times=self._steps.values(),
            step_lengths_m=self._lens.values(),
            steps=self._n,
            floors_up=math.floor(self._ascent / FLOOR_HEIGHT_M + 1e-6),
            ascent_m=self._ascent,
            descent_m=self._descent,
            distance_m=self._distance,
            segments=tuple(
                _seg_truth(g, self._start, self._until) for _, g in sorted(self._segments.items())
            ),
            beat_times=self._beats.values(),
            ectopic_times=self._ect.values(),
            missed_beat_times=self._mis.values(),
        )


_TruthArgs = tuple[
    FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, list[_Seg], float
]


def _cut(s: FloatArray, until: float) -> int:
    return int(np.searchsorted(s, until, side="left"))


# --- pure API -------------------------------------------------------------------------------------


def simulate(config: SimulationConfig, duration_s: float) -> SimulatedRecording:
    """Generate ``duration_s`` seconds of a simulated session at once (pure, deterministic).

    ``config.start_t`` of None means :data:`SIM_EPOCH`, so the result depends on the config only.
    Values are identical to what :class:`SimulatedSource` emits for the same config and start.
    """
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be a finite number ≥ 0, got {duration_s}")
    start = SIM_EPOCH if config.start_t is None else config.start_t
    gen = _Generator(config)
    truth = _TruthAccumulator(start)
    chunks: list[_Chunk] = []
    while gen.chunk_end < duration_s:
        c = gen.next_chunk()
        chunks.append(c)
        k = _cut(c.step_s, duration_s)
        kb = _cut(c.beat_s, duration_s)
        truth.add(
            c.step_s[:k], c.step_len[:k], c.step_climb[:k], c.beat_s[:kb],
            c.ectopic_s[c.ectopic_s < duration_s], c.missed_s[c.missed_s < duration_s],
            c.segs, min(c.sb, duration_s),
        )  # fmt: skip

    def cat(get: Callable[[_Chunk], FloatArray], s: Callable[[_Chunk], FloatArray]) -> FloatArray:
        parts = [get(c)[: _cut(s(c), duration_s)] for c in chunks]
        out: FloatArray = np.concatenate(parts) if parts else np.zeros(0)
        return out

    acc_t = cat(lambda c: c.acc_s, lambda c: c.acc_s) + start
    acc = cat(lambda c: c.acc, lambda c: c.acc_s).reshape(-1, 3)
    gyro_t = cat(lambda c: c.gyro_s, lambda c: c.gyro_s) + start
    gyro = cat(lambda c: c.gyro, lambda c: c.gyro_s).reshape(-1, 3)
    pressure_t = cat(lambda c: c.pressure_s, lambda c: c.pressure_s) + start
    pressure = cat(lambda c: c.pressure, lambda c: c.pressure_s)
    hr: list[tuple[float, float, tuple[float, ...]]] = []
    rsc: list[RscSample] = []
    battery: list[BatterySample] = []
    for c in chunks:
        n = _cut(c.hr_s, duration_s)
        hr.extend(
            (start + s, bpm, rr)
            for s, bpm, rr in zip(
                c.hr_s[:n].tolist(), c.hr_bpm[:n].tolist(), c.hr_rr[:n], strict=True
            )
        )
        rsc.extend(_rsc_samples(c, start, config.name, -math.inf, duration_s))
        battery.extend(_battery_samples(c, start, config.name, -math.inf, duration_s))
    return SimulatedRecording(
        start_t=start,
        duration_s=duration_s,
        acc_t=acc_t,
        acc=acc,
        gyro_t=gyro_t,
        gyro=gyro,
        hr=hr,
        pressure_t=pressure_t,
        pressure_hpa=pressure,
        rsc=rsc,
        battery=battery,
        truth=truth.snapshot(),
    )


def _rsc_samples(c: _Chunk, start: float, name: str, sa: float, sb: float) -> list[RscSample]:
    a, b = np.searchsorted(c.rsc_s, [sa, sb])
    return [
        RscSample(start + s, v[0], v[1], v[2] if v[2] > 0 else None, v[3], bool(v[4]), name)
        for s, v in zip(c.rsc_s[a:b].tolist(), c.rsc[a:b].tolist(), strict=True)
    ]


def _battery_samples(
    c: _Chunk, start: float, name: str, sa: float, sb: float
) -> list[BatterySample]:
    a, b = np.searchsorted(c.battery_s, [sa, sb])
    return [
        BatterySample(start + s, int(p), name)
        for s, p in zip(c.battery_s[a:b].tolist(), c.battery[a:b].tolist(), strict=True)
    ]


# --- streaming ------------------------------------------------------------------------------------


class SimulatedStream:
    """Pure, unpaced block iterator: the sans-I/O core of :class:`SimulatedSource`.

    Each :meth:`next_block` returns the session time at which the block ends and the samples
    inside it, in time order, generating chunks only as needed (memory bounded for weeks of data).
    """

    def __init__(self, config: SimulationConfig, start_t: float) -> None:
        self.config = config
        self.start_t = start_t
        self._gen = _Generator(config)
        self._chunks: list[_Chunk] = []
        self._block = 0
        self._truth = _TruthAccumulator(start_t)
        self._uncommitted: list[_TruthArgs] = []

    @property
    def truth(self) -> GroundTruth:
        """Ground truth of everything returned so far."""
        return self._truth.snapshot()

    @property
    def emitted_s(self) -> float:
        """Session seconds covered by the blocks returned so far."""
        end = self._block * self.config.block_s
        limit = self.config.duration_s
        return end if limit is None else min(end, limit)

    def commit(self) -> None:
        """Count the last block returned by ``next_block(commit=False)`` into :attr:`truth`."""
        for args in self._uncommitted:
            self._truth.add(*args)
        self._uncommitted = []

    def next_block(self, *, commit: bool = True) -> tuple[float, list[SensorSample]]:
        """The next block; with ``commit=False`` its truth counts only after :meth:`commit`."""
        self.commit()
        cfg, name, start = self.config, self.config.name, self.start_t
        lo, hi = self._block * cfg.block_s, (self._block + 1) * cfg.block_s
        if cfg.duration_s is not None:
            hi = min(hi, cfg.duration_s)
        self._block += 1
        while not self._chunks or self._chunks[-1].sb < hi:
            self._chunks.append(self._gen.next_chunk())
        out: list[tuple[float, int, SensorSample]] = []
        acc_t: list[FloatArray] = []
        acc_v: list[FloatArray] = []
        gyr_t: list[FloatArray] = []
        gyr_v: list[FloatArray] = []
        for c in self._chunks:
            if c.sb <= lo or c.sa >= hi:
                continue
            a, b = np.searchsorted(c.acc_s, [lo, hi])
            acc_t.append(c.acc_s[a:b])
            acc_v.append(c.acc[a:b])
            a, b = np.searchsorted(c.gyro_s, [lo, hi])
            gyr_t.append(c.gyro_s[a:b])
            gyr_v.append(c.gyro[a:b])
            a, b = np.searchsorted(c.hr_s, [lo, hi])
            for i in range(int(a), int(b)):
                t = start + float(c.hr_s[i])
                out.append((t, 2, HeartRateSample(t, float(c.hr_bpm[i]), c.hr_rr[i], True, name)))
            a, b = np.searchsorted(c.pressure_s, [lo, hi])
            for s, p in zip(c.pressure_s[a:b].tolist(), c.pressure[a:b].tolist(), strict=True):
                out.append((start + s, 3, PressureSample(start + s, p, name)))
            out.extend((r.t, 4, r) for r in _rsc_samples(c, start, name, lo, hi))
            out.extend((r.t, 5, r) for r in _battery_samples(c, start, name, lo, hi))
            a, b = np.searchsorted(c.step_s, [lo, hi])
            ka, kb = np.searchsorted(c.beat_s, [lo, hi])
            ect = c.ectopic_s[(c.ectopic_s >= lo) & (c.ectopic_s < hi)]
            mis = c.missed_s[(c.missed_s >= lo) & (c.missed_s < hi)]
            self._uncommitted.append(
                (
                    c.step_s[a:b], c.step_len[a:b], c.step_climb[a:b], c.beat_s[ka:kb], ect, mis,
                    [g for g in c.segs if g.s0 < hi and g.s1 > lo], hi,
                )
            )  # fmt: skip
        t_acc = np.concatenate(acc_t)
        if t_acc.size:
            out.append(
                (start + float(t_acc[0]), 0, AccBlock(t_acc + start, np.concatenate(acc_v), name))
            )
        t_gyr = np.concatenate(gyr_t)
        if t_gyr.size:
            out.append(
                (start + float(t_gyr[0]), 1, GyroBlock(t_gyr + start, np.concatenate(gyr_v), name))
            )
        self._chunks = [c for c in self._chunks if c.sb > hi]
        out.sort(key=lambda x: (x[0], x[1]))
        if commit:
            self.commit()
        return hi, [s for _, _, s in out]

    def blocks(self, *, commit: bool = True) -> Iterator[tuple[float, list[SensorSample]]]:
        """Blocks forever (or until ``config.duration_s``); ``commit`` as in :meth:`next_block`."""
        limit = self.config.duration_s
        while limit is None or self.emitted_s < limit - 1e-9:
            yield self.next_block(commit=commit)


class SimulatedSource:
    """A :class:`sensors.base.Source` that plays a simulated wearer, paced by ``config.speed``.

    Block *k* (ending at session time ``s``) is emitted once the injected clock reaches
    ``start + s / speed``; with ``speed = inf`` blocks go out back to back, still yielding to the
    event loop (``sleep(0)``) after every block so the daemon stays responsive.
    """

    def __init__(
        self,
        config: SimulationConfig | None = None,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config if config is not None else SimulationConfig()
        self._clock = clock
        self._sleep = sleep
        self._status = SourceStatus(name=self.config.name)
        self._status.extra["simulated"] = True
        # JSON has no infinity: "as fast as possible" shows as null
        speed = self.config.speed
        self._status.extra["speed"] = speed if math.isfinite(speed) else None
        self._stream: SimulatedStream | None = None

    @property
    def status(self) -> SourceStatus:
        return self._status

    @property
    def truth(self) -> GroundTruth:
        """Ground truth of everything emitted so far (empty before :meth:`run`)."""
        if self._stream is None:
            return _TruthAccumulator(self.config.start_t or 0.0).snapshot()
        return self._stream.truth

    async def run(self, emit: Emit) -> None:
        """Emit samples until cancelled (or until ``config.duration_s`` of session time)."""
        cfg = self.config
        wall0 = self._clock()
        start = wall0 if cfg.start_t is None else cfg.start_t
        stream = SimulatedStream(cfg, start)
        self._stream = stream
        status = self._status
        status.state = SourceState.STREAMING
        status.error = None
        try:
            for end_s, samples in stream.blocks(commit=False):
                due = wall0 + end_s / cfg.speed if math.isfinite(cfg.speed) else wall0
                delay = due - self._clock()
                await self._sleep(delay if delay > 0 else 0.0)
                for sample in samples:
                    emit(sample)
                    if isinstance(sample, BatterySample):
                        status.battery_percent = sample.percent
                if samples:
                    status.last_sample_t = max(
                        float(x.t[-1]) if isinstance(x, AccBlock | GyroBlock) else x.t
                        for x in samples
                    )
                stream.commit()
                status.extra["session_s"] = end_s
        except asyncio.CancelledError:
            status.state = SourceState.STOPPED
            raise
        except Exception as exc:  # a bug here must show in `agent status`, not vanish
            status.state = SourceState.FAILED
            status.error = f"simulation failed: {exc!r}"
            raise
        status.state = SourceState.STOPPED
