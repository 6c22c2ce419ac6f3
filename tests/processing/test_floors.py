"""Floors from pressure: exact on a simulated stair session with drift, door slams and a lift."""

from __future__ import annotations

import numpy as np
import pytest

from agent.processing.floors import FloorCounter, pressure_to_altitude

T0 = 1_767_772_800.0
FS = 10.0  # barometer rate (Hz)
STEP_HZ = 1.6
STEP_LATENCY_S = 1.0  # steps are confirmed this long after they happen


def altitude_to_pressure(h: np.ndarray, ground_hpa: float = 1002.0) -> np.ndarray:
    h0 = float(pressure_to_altitude(ground_hpa))
    return 1013.25 * (1.0 - (h0 + h) / 44330.8) ** (1.0 / 0.190263)


class Session:
    """Builds altitude (m) and step times segment by segment."""

    def __init__(self) -> None:
        self.t = T0
        self.h = 0.0
        self.times: list[np.ndarray] = []
        self.heights: list[np.ndarray] = []
        self.steps: list[np.ndarray] = []

    def segment(self, dur: float, rise: float = 0.0, walking: bool = True) -> None:
        n = int(dur * FS)
        tt = self.t + np.arange(n) / FS
        self.times.append(tt)
        self.heights.append(self.h + rise * np.arange(n) / n)
        if walking:
            self.steps.append(np.arange(self.t, self.t + dur, 1.0 / STEP_HZ))
        self.t += dur
        self.h += rise

    def stand(self, dur: float, rise: float = 0.0) -> None:
        self.segment(dur, rise, walking=False)

    def walk(self, dur: float) -> None:
        self.segment(dur)

    def stairs(self, floors: int, storey_m: float = 3.0) -> None:
        for _ in range(abs(floors)):
            self.segment(12.0, storey_m if floors > 0 else -storey_m)
            self.walk(4.0)  # landing

    def pressure(self, rng: np.random.Generator, drift_hpa_per_h: float) -> tuple[
        np.ndarray, np.ndarray
    ]:
        t = np.concatenate(self.times)
        p = altitude_to_pressure(np.concatenate(self.heights))
        p = p + drift_hpa_per_h * (t - T0) / 3600.0 + 0.05 * np.sin((t - T0) / 900.0)
        p = p + rng.normal(0.0, 0.012, t.size)  # ~0.1 m sensor noise
        # Door slams and gusts: +0.5 hPa (≈ −4 m) for 0.3 s, every ~40 s, walking or not.
        for start in np.arange(T0 + 17.0, t[-1], 41.0):
            p[(t >= start) & (t < start + 0.3)] += 0.5
        return t, p


def run(t: np.ndarray, p: np.ndarray, steps: np.ndarray) -> FloorCounter:
    fc = FloorCounter()
    confirmed = steps + STEP_LATENCY_S
    k = 0
    for ti, pi in zip(t.tolist(), p.tolist(), strict=True):
        j = int(np.searchsorted(confirmed, ti, side="right"))
        if j > k:
            fc.note_steps(steps[k:j])
            k = j
        fc.note_time(ti)  # accelerometer processed up to now
        fc.add_pressure(ti, pi)
    fc.flush()
    return fc


def stair_session() -> Session:
    s = Session()
    s.stand(60.0)
    s.walk(30.0)
    s.stairs(3)  # +3
    s.walk(20.0)
    s.stand(90.0, rise=6.0)  # lift up two storeys: standing, must not count
    s.walk(15.0)
    s.stairs(-1)
    s.walk(10.0)
    s.stairs(2, storey_m=3.1)  # +2
    s.walk(10.0)
    s.stand(60.0)
    s.walk(5.0)
    s.stairs(1, storey_m=3.4)  # +1 (tall storey)
    s.stand(30.0)
    s.walk(20.0)
    s.stairs(8)  # +8: a tall building in one go
    s.walk(10.0)
    return s


@pytest.mark.parametrize("drift", [-1.5, 0.0, 1.5])  # hPa/h: a strong weather front
def test_stair_session_is_exact_with_drift_and_door_slams(drift: float) -> None:
    s = stair_session()
    t, p = s.pressure(np.random.default_rng(3), drift)
    fc = run(t, p, np.concatenate(s.steps))
    assert fc.total == 14


def test_no_floors_without_walking() -> None:
    s = stair_session()
    t, p = s.pressure(np.random.default_rng(4), 3.0)
    assert run(t, p, np.empty(0)).total == 0


def test_long_flat_walk_with_weather_front_counts_nothing() -> None:
    s = Session()
    s.walk(1800.0)
    t, p = s.pressure(np.random.default_rng(5), -3.0)  # falling pressure looks like climbing
    assert run(t, p, np.concatenate(s.steps)).total == 0


def test_hypsometric_sensitivity_near_sea_level() -> None:
    dh = float(pressure_to_altitude(1012.75) - pressure_to_altitude(1013.25))
    assert dh == pytest.approx(8.3 * 0.5, rel=0.02)


def test_implausible_pressure_is_ignored() -> None:
    fc = FloorCounter()
    fc.note_time(T0 + 100)
    assert fc.add_pressure(T0, float("nan")) == 0
    assert fc.add_pressure(T0, 5.0) == 0
    assert fc.altitude_m is None
