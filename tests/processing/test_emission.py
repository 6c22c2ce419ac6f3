"""Emission policy: on change, rate limit (latest value still gets out), keep-alive, staleness."""

from __future__ import annotations

import itertools

import pytest

from agent.processing.emission import DEFAULT_POLICIES, EmissionPolicy, Emitter
from agent.protocol import DataType
from agent.readings import Reading

T0 = 1_767_772_800.0
STEPS = DataType.STEPS


def drive(e: Emitter, values: list[tuple[float, float]], tick_every: float = 1.0) -> list[Reading]:
    """Offer values in time order, ticking on a fixed grid in between (like the daemon)."""
    out: list[Reading] = []
    next_tick = T0 + tick_every
    for t, v in values:
        while next_tick <= t:
            out.extend(e.tick(next_tick))
            next_tick += tick_every
        r = e.offer(STEPS, t, v)
        if r is not None:
            out.append(r)
    return out


def test_changes_are_rate_limited_but_the_latest_value_gets_out() -> None:
    e = Emitter({STEPS: EmissionPolicy(min_interval_s=2.0, max_interval_s=60.0)})
    values = [(T0 + 0.1 * i, float(i)) for i in range(100)]  # changes 10×/s for 10 s
    out = drive(e, values)
    out.extend(e.tick(T0 + 12.0))
    times = [r.t for r in out]
    assert 5 <= len(out) <= 7
    assert all(b - a >= 2.0 - 0.11 for a, b in itertools.pairwise(times))
    assert out[-1].val == 99.0  # the final value was emitted, stamped when observed
    assert out[-1].t == pytest.approx(T0 + 9.9)
    assert e.tick(T0 + 13.0) == []


def test_keep_alive_repeats_unchanged_state() -> None:
    e = Emitter({STEPS: EmissionPolicy(min_interval_s=1.0, max_interval_s=10.0)})
    assert e.offer(STEPS, T0, 5.0) is not None
    assert e.offer(STEPS, T0 + 3.0, 5.0) is None  # unchanged: nothing new
    beats = [r for s in range(1, 61) for r in e.tick(T0 + s)]
    assert [r.t - T0 for r in beats] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert all(r.val == 5.0 for r in beats)


def test_stale_values_are_not_kept_alive() -> None:
    e = Emitter({DataType.HEART_RATE: EmissionPolicy(1.0, 5.0, stale_after_s=5.0)})
    e.offer(DataType.HEART_RATE, T0, 70.0)
    out = [r for s in range(1, 30) for r in e.tick(T0 + s)]
    assert [r.t - T0 for r in out] == [5.0]  # still current at 5 s, then the strap is gone


def test_epsilon_suppresses_jitter() -> None:
    e = Emitter({DataType.SPEED: EmissionPolicy(0.0, None, epsilon=0.05)})
    assert e.offer(DataType.SPEED, T0, 1.40) is not None
    assert e.offer(DataType.SPEED, T0 + 1, 1.43) is None
    assert e.offer(DataType.SPEED, T0 + 2, 1.47) is not None
    assert e.tick(T0 + 1000) == []  # keep-alive disabled


def test_standing_still_with_defaults_does_not_flood() -> None:
    e = Emitter(DEFAULT_POLICIES)
    out: list[Reading] = []
    for s in range(3600):  # an hour of unchanged state, recomputed every second
        t = T0 + s
        for dt, v in ((DataType.STEPS, 1234.0), (DataType.STEPS_CADENCE, 0.0),
                      (DataType.SPEED, 0.0), (DataType.DISTANCE, 900.0)):
            r = e.offer(dt, t, v)
            if r is not None:
                out.append(r)
        out.extend(e.tick(t))
    per_type = {dt: sum(r.type is dt for r in out) for dt in DataType}
    assert per_type[DataType.STEPS] <= 61 and per_type[DataType.STEPS_CADENCE] <= 121
    assert sum(per_type.values()) <= 400  # ~0.1 frame/s, yet state is re-sent every minute


def test_flush_emits_pending_and_types_without_policy_pass_through() -> None:
    e = Emitter({STEPS: EmissionPolicy(min_interval_s=5.0)})
    e.offer(STEPS, T0, 1.0)
    assert e.offer(STEPS, T0 + 1, 2.0) is None
    assert [r.val for r in e.flush(T0 + 1.5)] == [2.0]
    assert e.offer(DataType.HEART_RATE, T0, 60.0) == Reading(DataType.HEART_RATE, T0, 60.0)


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        EmissionPolicy(min_interval_s=10.0, max_interval_s=5.0)
    with pytest.raises(ValueError):
        EmissionPolicy(epsilon=-1.0)
