"""Capped, full-jitter exponential backoff shared by every reconnecting loop.

Why full jitter: many agents behind one broker that restarts must not reconnect in lockstep
(AWS architecture blog, "Exponential Backoff And Jitter"). Why the "stable" rule: a session that
dies right after its handshake (bad token, duplicate connection, broker crash loop) must not reset
the attempt counter, or the client would hot-loop; only a session that stayed up for
``stable_after_s`` counts as recovered. Time and randomness are injected so tests run instantly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

#: Terra's reference consumer: ``min(1000 * 2**attempt, 30000)`` ms. We keep base and cap and
#: use full jitter; the floor keeps a hot loop impossible even at a lucky draw of 0.
DEFAULT_BASE_S = 1.0
DEFAULT_CAP_S = 30.0
DEFAULT_STABLE_AFTER_S = 30.0
MIN_DELAY_FRACTION = 0.1


@dataclass(slots=True)
class Backoff:
    """Delay generator: ``U(0.1, 1) × min(cap, base × 2**attempt)``."""

    base_s: float = DEFAULT_BASE_S
    cap_s: float = DEFAULT_CAP_S
    stable_after_s: float = DEFAULT_STABLE_AFTER_S
    rng: Callable[[], float] = field(default=random.random)
    attempt: int = 0
    _session_start: float | None = None

    def next_delay(self) -> float:
        """Delay before the next attempt; grows the attempt counter."""
        ceiling = min(self.cap_s, self.base_s * (2.0 ** min(self.attempt, 30)))
        self.attempt += 1
        u = MIN_DELAY_FRACTION + (1.0 - MIN_DELAY_FRACTION) * self.rng()
        return ceiling * u

    def max_delay(self) -> float:
        """A delay at the cap (half-jittered), for "someone else holds this identity" (4002)."""
        self.attempt = max(self.attempt, 30)
        return self.cap_s * (0.5 + 0.5 * self.rng())

    def session_started(self, now: float) -> None:
        """A connection completed its handshake at ``now``."""
        self._session_start = now

    def session_ended(self, now: float) -> None:
        """The connection ended at ``now``; a long enough session resets the counter."""
        if self._session_start is not None and now - self._session_start >= self.stable_after_s:
            self.attempt = 0
        self._session_start = None

    def reset(self) -> None:
        """Forget all failures."""
        self.attempt = 0
