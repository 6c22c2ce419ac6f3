"""Cadence: median of recent intervals, decay to 0 after walking stops, foot pod preferred."""

from __future__ import annotations

import numpy as np

from agent.processing.cadence import DECAY_S, LATENCY_S, STOP_AFTER_S, CadenceEstimator

T0 = 1_767_772_800.0


def steps(start: float, n: int, hz: float) -> np.ndarray:
    return start + np.arange(n) / hz


def test_steady_walk_gives_step_rate() -> None:
    c = CadenceEstimator()
    s = steps(T0, 30, 1.8)
    c.add_steps(s[:10])
    c.add_steps(s[10:])
    assert abs(c.value(float(s[-1]) + 0.3) - 1.8) < 1e-6


def test_missed_step_does_not_swing_the_median() -> None:
    c = CadenceEstimator()
    s = np.delete(steps(T0, 20, 2.0), 15)  # one step missed: one interval doubled
    c.add_steps(s)
    assert abs(c.value(float(s[-1])) - 2.0) < 1e-6


def test_decays_monotonically_to_zero_after_walking_stops() -> None:
    c = CadenceEstimator()
    s = steps(T0, 20, 1.8)
    c.add_steps(s)
    last = float(s[-1])
    times = last + np.linspace(0.0, STOP_AFTER_S + 1.0, 60)
    values = np.array([c.value(float(t)) for t in times])
    assert np.all(np.diff(values) <= 1e-12)
    hold = 1 / 1.8 + LATENCY_S
    assert abs(c.value(last + hold - 0.01) - 1.8) < 1e-6  # held while steps may be late
    assert 0.0 < c.value(last + hold + DECAY_S / 2) < 1.8
    assert c.value(last + hold + DECAY_S + 1e-3) == 0.0
    assert hold + DECAY_S < 4.0  # "within a few seconds"
    assert c.value(last + 60.0) == 0.0


def test_pause_starts_a_new_bout() -> None:
    c = CadenceEstimator()
    c.add_steps(steps(T0, 5, 1.0))
    later = steps(T0 + 20.0, 4, 2.0)
    c.add_steps(later)
    assert abs(c.value(float(later[-1])) - 2.0) < 1e-6


def test_no_steps_is_zero() -> None:
    assert CadenceEstimator().value(T0) == 0.0


def test_recent_foot_pod_wins_then_steps_take_over() -> None:
    c = CadenceEstimator()
    s = steps(T0, 20, 1.8)
    c.add_steps(s)
    now = float(s[-1])
    c.add_rsc(now, 150.0)  # steps per minute
    assert c.rsc_active(now)
    assert abs(c.value(now + 0.5) - 2.5) < 1e-9
    assert abs(c.value(now + 1.0) - 2.5) < 1e-9
    assert not c.rsc_active(now + 10.0)
    assert c.value(now + 10.0) == 0.0  # pod stale, steps stopped long ago


def test_stops_by_the_upper_bound_even_for_very_slow_steps() -> None:
    c = CadenceEstimator()
    s = steps(T0, 10, 0.45)  # 2.2 s between steps
    c.add_steps(s)
    assert c.value(float(s[-1]) + STOP_AFTER_S + 0.01) == 0.0


def test_unconfirmed_stepping_holds_the_value_but_not_past_the_stop_bound() -> None:
    """Run → walk: the detector re-forms the walk for a few seconds; cadence must not dip."""
    c = CadenceEstimator()
    s = steps(T0, 30, 3.0)
    c.add_steps(s)
    last = float(s[-1])
    hold = 1 / 3.0 + LATENCY_S
    assert c.value(last + hold + DECAY_S) == 0.0  # without news it would have decayed
    for k in range(1, 6):  # strong impacts every 0.55 s, not confirmed as steps yet
        c.note_stepping(last + 0.55 * k)
    c.note_stepping(None)  # (a detector with nothing to say)
    assert abs(c.value(last + hold + DECAY_S) - 3.0) < 1e-5
    assert abs(c.value(last + 0.55 * 5 + hold - 0.01) - 3.0) < 1e-5
    assert c.value(last + STOP_AFTER_S + 0.01) == 0.0  # the last *confirmed* step still rules
    c.add_steps(last + 0.55 * np.arange(1, 6, dtype=np.float64))  # walk confirmed
    assert abs(c.value(last + 0.55 * 5) - 1 / 0.55) < 0.2
