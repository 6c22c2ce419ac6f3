"""The processing pipeline: raw sensor samples in, readings (future SUBMIT frames) out.

Theory of operation
-------------------
:class:`Processor` is a pure, synchronous object shared by the live daemon and ``agent replay``:
the daemon calls :meth:`Processor.feed` for every sample a source emits and
:meth:`Processor.tick` about once a second; replay does the same with recorded samples and ticks
at recorded times. Processing time is *sample* time, never the wall clock (``tick(now)`` takes
``now`` from the caller), so a replay is deterministic and runs as fast as numpy allows.

Per sample kind::

    AccBlock      → StepDetector → steps ─┬→ totals STEPS, DISTANCE (DistanceTracker)
                                           ├→ CadenceEstimator → STEPS_CADENCE, SPEED
                                           └→ FloorCounter (walking test)
                  → Decimator → ACCELERATION
    GyroBlock     → Decimator → GYROSCOPE
    PressureSample→ FloorCounter → totals FLOORS_CLIMBED
    HeartRateSample → HeartRateFilter → HEART_RATE
    RscSample     → foot-pod cadence, speed and distance (preferred while recent)
    BatterySample → status only

Scalar values pass the :class:`~agent.processing.emission.Emitter` (on change / keep-alive /
rate limit); vector values are emitted at the decimator's rate. Totals live in a
:class:`~agent.processing.totals.TotalsStore` (persisted, daily reset). Bad input (NaN, wrong
shapes, time going backwards) is dropped, never raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from agent.processing.cadence import CadenceEstimator
from agent.processing.decimate import Decimator
from agent.processing.distance import DistanceTracker
from agent.processing.emission import DEFAULT_POLICIES, EmissionPolicy, Emitter
from agent.processing.floors import FLOOR_HEIGHT_M, FloorCounter
from agent.processing.heart_rate import HeartRateFilter
from agent.processing.totals import SAVE_INTERVAL_S, ResetPolicy, TotalsStore, local_day
from agent.protocol import DataType
from agent.readings import Reading
from sensors.base import (
    AccBlock,
    BatterySample,
    GyroBlock,
    HeartRateSample,
    PressureSample,
    RscSample,
    SensorSample,
)

FloatArray = NDArray[np.float64]

#: Default submit rate of ACCELERATION and GYROSCOPE: Terra's demo producer sends 4 Hz.
DEFAULT_SUBMIT_HZ = 4.0
#: A foot pod counts steps itself only when no accelerometer block arrived for this long (and
#: pod samples further apart than this are a gap, not walking time).
POD_STEPS_AFTER_S = 5.0


class StepDetectorLike(Protocol):
    """What the pipeline needs from a step detector (``agent.processing.steps.StepDetector``)."""

    def feed(self, t: FloatArray, xyz: FloatArray) -> FloatArray:
        """Add samples; return newly confirmed step times."""
        ...

    def flush(self) -> FloatArray:
        """Confirm what can be confirmed at end of input."""
        ...

    def reset(self) -> None:
        """Forget state."""
        ...

    @property
    def last_strong_peak(self) -> float | None:
        """Latest step-like impact not necessarily confirmed as a step (for cadence hold)."""
        ...


@dataclass(frozen=True, slots=True)
class ProcessingConfig:
    """Everything tunable about processing (``[processing]`` in the agent's config).

    ``acc_submit_hz`` / ``gyro_submit_hz`` = 0 disable those streams. ``totals_reset`` is
    ``daily`` (local midnight), ``never`` or ``session``.
    """

    height_m: float = 1.75
    step_length_factor: float = 1.0
    acc_submit_hz: float = DEFAULT_SUBMIT_HZ
    gyro_submit_hz: float = DEFAULT_SUBMIT_HZ
    totals_reset: str = ResetPolicy.DAILY.value
    totals_save_interval_s: float = SAVE_INTERVAL_S
    floor_height_m: float = FLOOR_HEIGHT_M
    emission: Mapping[DataType, EmissionPolicy] = field(
        default_factory=lambda: dict(DEFAULT_POLICIES)
    )

    def __post_init__(self) -> None:
        if not (0.5 <= self.height_m <= 2.6):
            raise ValueError(f"height_m must be between 0.5 and 2.6, got {self.height_m}")
        if not (0.2 <= self.step_length_factor <= 5.0):
            raise ValueError("step_length_factor must be between 0.2 and 5")
        if self.acc_submit_hz < 0 or self.gyro_submit_hz < 0:
            raise ValueError("submit rates must be >= 0 (0 disables)")
        ResetPolicy(self.totals_reset)  # raises ValueError naming the bad value
        if not (1.0 <= self.floor_height_m <= 10.0):
            raise ValueError("floor_height_m must be between 1 and 10")


def _default_detector() -> StepDetectorLike:
    from agent.processing.steps import StepDetector

    detector: StepDetectorLike = StepDetector()
    return detector


class Processor:
    """Turns sensor samples into readings; one instance per agent run (or replay)."""

    def __init__(
        self,
        config: ProcessingConfig | None = None,
        *,
        totals_path: Path | None = None,
        tz: tzinfo | None = None,
        step_detector: StepDetectorLike | None = None,
    ) -> None:
        self.config = config = config or ProcessingConfig()
        self.tz = tz
        self._detector = step_detector if step_detector is not None else _default_detector()
        self._cadence = CadenceEstimator()
        self._distance = DistanceTracker(config.height_m, config.step_length_factor)
        self._floors = FloorCounter(floor_height_m=config.floor_height_m)
        self._hr = HeartRateFilter()
        self._acc_dec = Decimator(config.acc_submit_hz)
        self._gyro_dec = Decimator(config.gyro_submit_hz)
        self._totals = TotalsStore(
            totals_path,
            config.totals_reset,
            tz=tz,
            save_interval_s=config.totals_save_interval_s,
        )
        self._emitter = Emitter(config.emission)
        self._last_acc_t = -np.inf
        self._now: float | None = None
        self._heart_rate: float | None = None
        self._battery: dict[str, int] = {}
        self._pod_t: float | None = None
        self._pod_fraction = 0.0
        self._totals_announced = False
        self.dropped = 0

    # -- input ---------------------------------------------------------------------------------

    def feed(self, sample: SensorSample) -> list[Reading]:
        """Process one sample (or block); returns the readings to submit now."""
        out: list[Reading] = []
        if isinstance(sample, AccBlock):
            self._feed_acc(sample, out)
        elif isinstance(sample, GyroBlock):
            t, xyz = self._clean_block(sample.t, sample.xyz)
            if t.size:
                self._advance(float(t[-1]))
                self._vectors(DataType.GYROSCOPE, *self._gyro_dec.feed(t, xyz), out)
        elif isinstance(sample, HeartRateSample):
            if np.isfinite(sample.t):
                self._advance(sample.t)
                bpm = self._hr.feed(sample)
                if bpm is not None:
                    self._heart_rate = bpm
                    self._offer(DataType.HEART_RATE, sample.t, round(bpm, 1), out)
        elif isinstance(sample, PressureSample):
            if np.isfinite(sample.t):
                self._advance(sample.t)
                self._credit_floors(self._floors.add_pressure(sample.t, sample.hpa), out)
        elif isinstance(sample, RscSample):
            self._feed_rsc(sample, out)
        elif isinstance(sample, BatterySample):
            self._battery[sample.source or "device"] = sample.percent
        return out

    def tick(self, now: float) -> list[Reading]:
        """Time-driven work at ``now`` (cadence decay, keep-alives, midnight reset, saving)."""
        out: list[Reading] = []
        if self._totals.roll(now) or not self._totals_announced:
            # the first tick announces the totals as they stand (restored after a restart, or
            # 0): a consumer must see the current state even if the wearer never moves, and the
            # emitter's keep-alive only re-sends what was sent once
            self._totals_announced = True
            self._offer_totals(now, out)
        self._derived(now, out)
        out.extend(self._emitter.tick(now))
        self._totals.maybe_save(now)
        return out

    def flush(self, now: float | None = None) -> list[Reading]:
        """End of input (shutdown or end of a recording): emit what is pending, save totals."""
        if now is None:
            now = self._now if self._now is not None else 0.0
        out: list[Reading] = []
        steps = np.asarray(self._detector.flush(), dtype=np.float64)
        self._on_steps(steps, out)
        self._credit_floors(self._floors.flush(), out, now)
        self._derived(now, out)
        out.extend(self._emitter.flush(now))
        self._totals.save(now)
        return out

    def snapshot(self) -> dict[str, Any]:
        """Current values for ``agent status``."""
        now = self._now
        totals = self._totals.totals
        return {
            "steps": totals.steps,
            "distance_m": round(totals.distance_m, 2),
            "floors": totals.floors,
            "totals_day": totals.day,
            "totals_reset": str(self._totals.policy),
            "cadence_sps": None if now is None else round(self._cadence.value(now), 3),
            "speed_mps": None
            if now is None
            else round(self._distance.speed(now, self._cadence.step_cadence(now)), 3),
            "heart_rate_bpm": self._heart_rate,
            "hr_rr_accepted": self._hr.accepted,
            "hr_rr_rejected": self._hr.rejected,
            "altitude_m": None
            if self._floors.altitude_m is None
            else round(self._floors.altitude_m, 2),
            "battery_percent": dict(self._battery),
            "sample_time": now,
            "dropped_samples": self.dropped,
        }

    # -- internals -----------------------------------------------------------------------------

    def _advance(self, t: float) -> None:
        if self._now is None or t > self._now:
            self._now = t

    def _clean_block(self, t_in: FloatArray, xyz_in: FloatArray) -> tuple[FloatArray, FloatArray]:
        t = np.asarray(t_in, dtype=np.float64).reshape(-1)
        xyz = np.asarray(xyz_in, dtype=np.float64)
        if xyz.ndim != 2 or xyz.shape != (t.size, 3):
            self.dropped += t.size
            return np.empty(0), np.empty((0, 3))
        ok = np.isfinite(t) & np.all(np.isfinite(xyz), axis=1)
        if not np.all(ok):
            self.dropped += int((~ok).sum())
            t, xyz = t[ok], xyz[ok]
        return t, xyz

    def _feed_acc(self, block: AccBlock, out: list[Reading]) -> None:
        t, xyz = self._clean_block(block.t, block.xyz)
        if t.size == 0:
            return
        # The step detector needs strictly increasing time: drop samples not after the last one.
        increasing = t > np.maximum.accumulate(np.concatenate([[self._last_acc_t], t]))[:-1]
        if not np.all(increasing):
            self.dropped += int((~increasing).sum())
            t, xyz = t[increasing], xyz[increasing]
            if t.size == 0:
                return
        end = float(t[-1])
        self._last_acc_t = end
        self._advance(end)
        steps = np.asarray(self._detector.feed(t, xyz), dtype=np.float64)
        self._vectors(DataType.ACCELERATION, *self._acc_dec.feed(t, xyz), out)
        self._on_steps(steps, out)
        self._cadence.note_stepping(self._detector.last_strong_peak)
        self._floors.note_time(end)
        self._credit_floors(self._floors.process(), out)
        self._derived(end, out)
        self._totals.maybe_save(end)

    def _feed_rsc(self, s: RscSample, out: list[Reading]) -> None:
        if not np.isfinite(s.t):
            return
        self._advance(s.t)
        self._cadence.add_rsc(s.t, s.cadence_spm)
        added = self._distance.add_rsc(s.t, s.speed_mps, s.total_m)
        steps = self._pod_steps(s)
        if added > 0 or steps:
            if self._totals.add(s.t, steps=steps, distance_m=added):
                self._offer_totals(s.t, out)
            self._offer(DataType.STEPS, s.t, float(self._totals.totals.steps), out)
            self._offer(DataType.DISTANCE, s.t, round(self._totals.totals.distance_m, 2), out)
        self._derived(s.t, out)

    def _pod_steps(self, s: RscSample) -> int:
        """Whole steps from a foot pod's cadence, only while no accelerometer is streaming.

        With an accelerometer the step detector counts; a pod alone would otherwise never
        advance STEPS. Cadence × elapsed time is accumulated with its fraction carried over.
        """
        prev, self._pod_t = self._pod_t, s.t
        if prev is None or s.t - self._last_acc_t <= POD_STEPS_AFTER_S:
            return 0
        dt = s.t - prev
        if not (0.0 < dt <= POD_STEPS_AFTER_S) or not (0.0 <= s.cadence_spm <= 300.0):
            return 0
        self._pod_fraction += s.cadence_spm / 60.0 * dt
        whole = int(self._pod_fraction)
        self._pod_fraction -= whole
        return whole

    def _on_steps(self, steps: FloatArray, out: list[Reading]) -> None:
        if steps.size == 0:
            return
        steps = steps[np.isfinite(steps)]
        if steps.size == 0:
            return
        lengths = self._distance.add_steps(steps)
        self._cadence.add_steps(steps)
        self._floors.note_steps(steps)
        t_last = float(steps[-1])
        tz = self.tz
        if self._totals.policy is ResetPolicy.DAILY and local_day(
            float(steps[0]), tz
        ) != local_day(t_last, tz):
            # Steps straddle local midnight (rare): credit each to its own day.
            for t, length in zip(steps.tolist(), lengths.tolist(), strict=True):
                if self._totals.add(t, steps=1, distance_m=length):
                    self._offer_totals(t, out)
        elif self._totals.add(
            float(steps[0]), steps=int(steps.size), distance_m=float(lengths.sum())
        ):
            self._offer_totals(float(steps[0]), out)
        self._offer(DataType.STEPS, t_last, float(self._totals.totals.steps), out)
        self._offer(DataType.DISTANCE, t_last, round(self._totals.totals.distance_m, 2), out)

    def _credit_floors(self, added: int, out: list[Reading], t: float | None = None) -> None:
        if added <= 0:
            return
        when = t if t is not None else (self._now if self._now is not None else 0.0)
        self._totals.add(when, floors=added)
        self._offer(DataType.FLOORS_CLIMBED, when, float(self._totals.totals.floors), out)

    def _offer_totals(self, t: float, out: list[Reading]) -> None:
        totals = self._totals.totals
        self._offer(DataType.STEPS, t, float(totals.steps), out)
        self._offer(DataType.DISTANCE, t, round(totals.distance_m, 2), out)
        self._offer(DataType.FLOORS_CLIMBED, t, float(totals.floors), out)

    def _derived(self, now: float, out: list[Reading]) -> None:
        cadence = self._cadence.value(now)
        speed = self._distance.speed(now, self._cadence.step_cadence(now))
        self._offer(DataType.STEPS_CADENCE, now, round(cadence, 3), out)
        self._offer(DataType.SPEED, now, round(speed, 3), out)

    def _offer(self, type: DataType, t: float, value: float, out: list[Reading]) -> None:
        r = self._emitter.offer(type, t, value, self._now)
        if r is not None:
            out.append(r)

    @staticmethod
    def _vectors(
        type: DataType, t: FloatArray, v: FloatArray, out: list[Reading]
    ) -> None:
        if t.size == 0:
            return
        for ti, (x, y, z) in zip(t.tolist(), np.round(v, 4).tolist(), strict=True):
            out.append(Reading(type, ti, vec=(x, y, z)))
