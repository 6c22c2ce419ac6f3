"""Developer credentials and single-use connection tokens of the relay.

Why a separate module: the rules here (constant-time key comparison, single use, expiry, a
bounded registry) are the relay's whole security surface, and they are pure: every time is
passed in by the caller, so tests drive expiry with a fake clock instead of sleeping.

Rules
-----
* A developer is identified by ``dev-id`` and proves it with ``x-api-key``. Keys are compared
  with :func:`hmac.compare_digest` against every configured key digest, so neither the key nor
  whether the developer exists leaks through timing.
* A token is 256 random bits (``secrets.token_urlsafe(32)``), valid for one IDENTIFY of the
  kind it was minted for (a producer token cannot open a consumer connection), and forgotten
  ``ttl_s`` after minting if unused.
* The registry holds at most ``max_tokens`` unused tokens; minting more evicts the oldest, so a
  client that mints in a loop cannot grow the relay's memory without bound.
* Tokens and keys never appear in ``repr`` or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agent.protocol import IdentifyType

#: Unused tokens kept at most; beyond this the oldest are evicted.
DEFAULT_MAX_TOKENS: Final = 100_000
#: Longest user id accepted in ``POST /auth/user?id=...`` (Terra uses UUIDs: 36 chars).
MAX_USER_ID_CHARS: Final = 256


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token entitles its bearer to: one connection of ``kind`` for ``dev_id``.

    ``user_id`` is set for producer tokens (it becomes the ``uid`` of every DISPATCH).
    """

    kind: IdentifyType
    dev_id: str
    user_id: str | None
    expires_at: float


class Credentials:
    """Configured developers (dev id → API key), checked in constant time."""

    def __init__(self, developers: Mapping[str, str]) -> None:
        self._digests = {dev: _digest(key) for dev, key in developers.items()}
        # compared against when the dev id is unknown, so the answer takes the same time
        self._dummy = _digest(secrets.token_hex(16))

    def __repr__(self) -> str:
        return f"Credentials(<{len(self._digests)} developers>)"

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, dev_id: str | None, api_key: str | None) -> bool:
        """True when ``api_key`` is the key of ``dev_id``; never raises."""
        if dev_id is None or api_key is None:
            return False
        expected = self._digests.get(dev_id)
        ok = hmac.compare_digest(_digest(api_key), expected or self._dummy)
        return ok and expected is not None


class TokenRegistry:
    """Single-use, expiring tokens; all times are passed in."""

    def __init__(self, ttl_s: float, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        if ttl_s <= 0:
            raise ValueError("token ttl must be positive")
        self.ttl_s = ttl_s
        self.max_tokens = max_tokens
        # insertion order == expiry order (constant ttl), so purging pops from the front
        self._tokens: OrderedDict[str, Grant] = OrderedDict()

    def __repr__(self) -> str:
        return f"TokenRegistry(<{len(self._tokens)} tokens>, ttl_s={self.ttl_s})"

    def __len__(self) -> int:
        return len(self._tokens)

    def mint(
        self, kind: IdentifyType, dev_id: str, now: float, user_id: str | None = None
    ) -> str:
        """A fresh token for one connection of ``kind``."""
        if kind is IdentifyType.USER and not user_id:
            raise ValueError("a producer token needs a user id")
        self.purge(now)
        while len(self._tokens) >= self.max_tokens:
            self._tokens.popitem(last=False)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = Grant(kind, dev_id, user_id, now + self.ttl_s)
        return token

    def consume(self, token: str, kind: IdentifyType, now: float) -> Grant | None:
        """Use ``token`` for a connection of ``kind``: the grant, or None if refused.

        A token is removed on any attempt to use it, even a refused one (wrong kind): a token
        offered on the wrong connection type has leaked into the wrong place.
        """
        grant = self._tokens.pop(token, None)
        if grant is None or now >= grant.expires_at or grant.kind is not kind:
            return None
        return grant

    def purge(self, now: float) -> int:
        """Forget expired tokens; returns how many."""
        n = 0
        while self._tokens:
            token, grant = next(iter(self._tokens.items()))
            if grant.expires_at > now:
                break
            del self._tokens[token]
            n += 1
        return n
