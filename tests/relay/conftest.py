"""Fixtures for relay tests: a real relay on 127.0.0.1 with a real SQLite file, raw clients.

Everything runs over loopback sockets. Time-dependent rules use tiny configured intervals
(per test, through ``make_relay(**overrides)``) or the injected :class:`FakeClock`; waits are on
events (a frame or a close arriving), each bounded by :data:`WAIT_S` only as a safety net.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent.relay.server import Relay, RelayConfig

#: Safety net for every wait on the relay (never a delay that lets things happen).
WAIT_S = 10.0

DEVELOPERS: dict[str, str] = {
    "dev-a": "key-a-0123456789abcdef",
    "dev-b": "key-b-fedcba9876543210",
}
TS = "2022-05-04T10:26:11.268507+01:00"


class FakeClock:
    """Injectable wall clock (Unix seconds) for token expiry and retention."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeRelay = Callable[..., Relay]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "relay.sqlite3"


@pytest.fixture
def make_relay(db_path: Path, clock: FakeClock) -> MakeRelay:
    """Factory of (unstarted) relays on a free port sharing one database file.

    Defaults are roomy (2 s heartbeat, 2 s identify) so tests that do not test timeouts never
    hit them; override any :class:`RelayConfig` field by keyword.
    """

    def make(**overrides: Any) -> Relay:
        fields: dict[str, Any] = {
            "port": 0,
            "db": db_path,
            "developers": DEVELOPERS,
            "heartbeat_interval_ms": 2000,
            "identify_timeout_s": 2.0,
            "token_ttl_s": 60.0,
        }
        fields.update(overrides)
        return Relay(RelayConfig(**fields), clock=clock)

    return make


@pytest.fixture
async def relay(make_relay: MakeRelay) -> AsyncIterator[Relay]:
    async with make_relay() as r:
        yield r


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    """Next frame as JSON (fails the test instead of hanging)."""
    async with asyncio.timeout(WAIT_S):
        raw = await ws.recv()
    obj = json.loads(raw)
    assert isinstance(obj, dict)
    return obj


async def expect_close(ws: ClientConnection, code: int) -> str:
    """Read until the relay closes; assert the close code it sent; return the reason."""
    async with asyncio.timeout(WAIT_S):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    assert ws.close_code == code, (ws.close_code, ws.close_reason)
    return ws.close_reason or ""


@asynccontextmanager
async def raw_client(relay: Relay, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A connection that has received HELLO (checked) and sent nothing."""
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("max_size", None)
    async with connect(relay.ws_url, open_timeout=WAIT_S, **kwargs) as ws:
        hello = await recv_json(ws)
        assert hello == {
            "op": 2,
            "d": {"heartbeat_interval": relay.config.heartbeat_interval_ms},
        }
        yield ws


def identify_text(token: str, kind: int) -> str:
    return json.dumps({"op": 3, "d": {"token": token, "type": kind}})


@asynccontextmanager
async def producer(
    relay: Relay, user_id: str = "user-1", developer: str = "dev-a", **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """A producer connection after READY."""
    token = await relay.mint_token(user_id=user_id, developer=developer)
    async with raw_client(relay, **kwargs) as ws:
        await ws.send(identify_text(token, 0))
        assert await recv_json(ws) == {"op": 4}
        yield ws


@asynccontextmanager
async def consumer(
    relay: Relay, developer: str = "dev-a", **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """A consumer connection after READY."""
    token = await relay.mint_token(developer=developer)
    async with raw_client(relay, **kwargs) as ws:
        await ws.send(identify_text(token, 1))
        assert await recv_json(ws) == {"op": 4}
        yield ws


def submit(val: float, t: str = "HEART_RATE", ts: str = TS) -> str:
    """SUBMIT text for one reading (vector types get ``[val, val+1, val+2]``)."""
    if t in ("ACCELERATION", "GYROSCOPE"):
        d: dict[str, Any] = {"ts": ts, "d": [val, val + 1, val + 2]}
    else:
        d = {"ts": ts, "val": val}
    return json.dumps({"op": 6, "d": d, "t": t})


async def heartbeat_roundtrip(ws: ClientConnection) -> None:
    """Send HEARTBEAT and wait for its ACK (proves every earlier frame was handled)."""
    await ws.send('{"op":0}')
    assert await recv_json(ws) == {"op": 1}
