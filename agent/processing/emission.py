"""Emission policy: when a derived value becomes a reading (on change, keep-alive, rate limit).

Theory of operation
-------------------
Derived values (totals, cadence, speed, heart rate) are recomputed far more often than anyone
needs them, and most of the time they do not change (someone sitting still). Per data type an
:class:`EmissionPolicy` says:

* **on change**: a value differing from the last emitted one by more than ``epsilon`` is emitted
  at once ...
* **rate limit**: ... unless the last emission was less than ``min_interval_s`` ago; then it is
  kept pending and emitted (with the time it was observed) as soon as the interval has passed,
  so the *latest* value always gets out, only later;
* **keep-alive**: when nothing was emitted for ``max_interval_s``, the current value is emitted
  again (time stamped "now"), so a consumer that connects late still sees the current state;
  ``None`` disables it. Values not observed for ``stale_after_s`` (a strap that went away) are
  not kept alive: repeating an old heart rate would be a lie.

Vector types (ACCELERATION, GYROSCOPE) are not governed here: their rate is the decimator's.
Default policies are in :data:`DEFAULT_POLICIES` (documented in the README's processing table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from agent.protocol import DataType
from agent.readings import Reading


@dataclass(frozen=True, slots=True)
class EmissionPolicy:
    """How one scalar data type is emitted; times in seconds."""

    min_interval_s: float = 1.0
    max_interval_s: float | None = 60.0
    epsilon: float = 0.0
    stale_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.min_interval_s < 0:
            raise ValueError("min_interval_s must be >= 0")
        if self.max_interval_s is not None and self.max_interval_s < self.min_interval_s:
            raise ValueError("max_interval_s must be >= min_interval_s (or None)")
        if self.epsilon < 0:
            raise ValueError("epsilon must be >= 0")


#: Defaults. Heart rate: 1 Hz like Terra's demo producer, repeated every 5 s while unchanged, and
#: dropped 5 s after the strap stopped reporting. Totals: at most every 2–5 s while walking (a
#: step every 0.5 s need not be a frame each), re-sent each minute. Cadence/speed: at most every
#: 2 s, only on a visible change (0.05 steps/s ≈ 3 steps/min; 0.05 m/s), re-sent every 30 s.
DEFAULT_POLICIES: Final[Mapping[DataType, EmissionPolicy]] = MappingProxyType(
    {
        # 0.5 s: a strap notifies about once a second with jitter; a 1 s limit would hold every
        # early notification for up to a second (latency), while 0.5 s still stops floods.
        DataType.HEART_RATE: EmissionPolicy(0.5, 5.0, 0.0, stale_after_s=5.0),
        DataType.STEPS: EmissionPolicy(2.0, 60.0, 0.0),
        DataType.DISTANCE: EmissionPolicy(5.0, 60.0, 0.05),
        DataType.FLOORS_CLIMBED: EmissionPolicy(1.0, 60.0, 0.0),
        DataType.STEPS_CADENCE: EmissionPolicy(2.0, 30.0, 0.05),
        DataType.SPEED: EmissionPolicy(2.0, 30.0, 0.05),
    }
)


@dataclass(slots=True)
class _State:
    value: float | None = None  # latest observed value
    observed_t: float = 0.0
    emitted: float | None = None  # last emitted value
    emitted_t: float | None = None  # processing time of the last emission (rate limit clock)
    pending: bool = False


class Emitter:
    """Applies per-type policies; :meth:`offer` on every new value, :meth:`tick` periodically."""

    def __init__(self, policies: Mapping[DataType, EmissionPolicy] = DEFAULT_POLICIES) -> None:
        self.policies = dict(policies)
        self._state: dict[DataType, _State] = {}

    def current(self, type: DataType) -> float | None:
        """Latest observed value of ``type``."""
        s = self._state.get(type)
        return None if s is None else s.value

    def offer(
        self, type: DataType, t: float, value: float, now: float | None = None
    ) -> Reading | None:
        """A value observed at ``t``, computed at processing time ``now`` (default ``t``).

        Returns a reading (stamped ``t``) if it is to be emitted now. The rate limit runs on
        ``now``: a value observed a little in the past (steps are confirmed late) must not slip
        through it.
        """
        policy = self.policies.get(type)
        if policy is None:
            return Reading(type, t, val=value)
        now = t if now is None else max(now, t)
        s = self._state.setdefault(type, _State())
        s.value, s.observed_t = value, t
        changed = s.emitted is None or abs(value - s.emitted) > policy.epsilon
        if not changed:
            s.pending = False
            return self._keepalive(type, s, policy, now)
        if (
            s.emitted_t is None
            or now - s.emitted_t >= policy.min_interval_s
            or now < s.emitted_t - policy.min_interval_s  # the clock was set back
        ):
            return self._emit(type, s, t, value, now)
        s.pending = True
        return None

    def tick(self, now: float) -> list[Reading]:
        """Pending values whose rate limit expired, and keep-alives that are due at ``now``."""
        out: list[Reading] = []
        for type, s in self._state.items():
            policy = self.policies[type]
            if s.value is None or s.emitted_t is None:
                continue
            if s.pending and now - s.emitted_t >= policy.min_interval_s:
                out.append(self._emit(type, s, s.observed_t, s.value, now))
                continue
            r = self._keepalive(type, s, policy, now)
            if r is not None:
                out.append(r)
        return out

    def flush(self, now: float) -> list[Reading]:
        """Emit every pending value now, regardless of rate limits (shutdown, end of replay)."""
        out: list[Reading] = []
        for type, s in self._state.items():
            if s.pending and s.value is not None:
                out.append(self._emit(type, s, min(s.observed_t, now), s.value, now))
        return out

    def _keepalive(
        self, type: DataType, s: _State, policy: EmissionPolicy, now: float
    ) -> Reading | None:
        if policy.max_interval_s is None or s.emitted_t is None or s.value is None:
            return None
        if now - s.emitted_t < policy.max_interval_s:
            return None
        if policy.stale_after_s is not None and now - s.observed_t > policy.stale_after_s:
            return None
        return self._emit(type, s, now, s.value, now)

    @staticmethod
    def _emit(type: DataType, s: _State, ts: float, value: float, now: float) -> Reading:
        """Reading stamped ``ts`` (when the value was observed); rate-limit clock set to ``now``."""
        s.emitted, s.emitted_t, s.pending = value, now, False
        return Reading(type, ts, val=value)
