"""Hypothesis fuzzing of inbound frames against a live relay.

The relay runs in a background thread with its own event loop for the whole test; each example
opens a fresh connection (unidentified, producer or consumer), sends one arbitrary frame (text
or binary) followed by a HEARTBEAT, and checks the outcome against the protocol core: a frame
the core accepts is followed by the HEARTBEAT_ACK (the connection lives on), a frame it refuses
closes the connection with exactly the core's close code. Afterwards a fresh connection must
still be served, and stored rows must be exactly the accepted SUBMITs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from agent.protocol import (
    CloseRequested,
    HeartbeatRequested,
    IdentifyRequested,
    ServerSession,
    SubmitRequested,
)
from agent.relay.server import Relay, RelayConfig
from tests.relay.conftest import DEVELOPERS, TS, WAIT_S

MAX_FRAME = 4096


class _Collect(logging.Handler):
    """Keeps ERROR records of the relay (an internal error is a crash we must see)."""

    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


class RelayThread:
    """A relay serving from its own thread and loop (hypothesis examples are synchronous)."""

    def __init__(self, db: Path) -> None:
        self.relay = Relay(
            RelayConfig(port=0, db=db, developers=DEVELOPERS, max_frame_bytes=MAX_FRAME,
                        heartbeat_interval_ms=30_000, identify_timeout_s=30.0)
        )
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[logging.LogRecord] = []
        self._handler = _Collect(self.errors)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.relay.start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.relay.close())
        self._loop.close()

    def __enter__(self) -> RelayThread:
        logging.getLogger("agent.relay").addHandler(self._handler)
        self._thread.start()
        assert self._started.wait(WAIT_S)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT_S)
        logging.getLogger("agent.relay").removeHandler(self._handler)
        assert not self._thread.is_alive()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT_S)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayThread]:
    with RelayThread(tmp_path_factory.mktemp("fuzz") / "relay.sqlite3") as r:
        yield r


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
ops = st.integers(-2, 9) | st.sampled_from([0, 3, 6, 7]) | json_values
data_types = st.sampled_from(
    ["HEART_RATE", "STEPS", "SPEED", "ACCELERATION", "GYROSCOPE", "heart_rate", ""]
) | st.text(max_size=10)
submit_d = st.fixed_dictionaries(
    {},
    optional={
        "ts": st.sampled_from([TS, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00", "x"])
        | st.text(max_size=30),
        "val": st.integers(-10, 10) | st.floats() | st.text(max_size=3) | st.booleans(),
        "d": st.lists(st.floats() | st.integers(-5, 5), max_size=4) | json_values,
        "extra": json_values,
    },
)
frame_objects = st.one_of(
    st.fixed_dictionaries({"op": ops}, optional={"d": json_values, "t": data_types,
                                                 "uid": json_values, "seq": json_values}),
    st.fixed_dictionaries({"op": st.just(6), "d": submit_d, "t": data_types}),
    st.fixed_dictionaries(
        {"op": st.just(7), "d": st.fixed_dictionaries({"after": json_values},
                                                      optional={"before": json_values})}
    ),
    st.fixed_dictionaries(
        {"op": st.just(3), "d": st.fixed_dictionaries({"token": json_values,
                                                       "type": json_values})}
    ),
)


def _dumps(obj: object) -> str:
    return json.dumps(obj, allow_nan=True)  # NaN/Infinity must be refused by the relay


frames = st.one_of(
    frame_objects.map(_dumps),
    st.text(max_size=200),
    frame_objects.map(lambda o: _dumps(o).encode()),
    st.binary(max_size=200),
    st.sampled_from(['{"op":0}', "{}", "[]", "null", '{"op":6}', '{"op":0,"d":5}', "NaN"]),
)
roles = st.sampled_from(["none", "producer", "consumer"])


def _expected(frame: str | bytes, role: str) -> int | None:
    """Close code the core demands for ``frame`` in ``role``'s READY state (None: accepted)."""
    session = ServerSession(0.0, heartbeat_interval_ms=30_000)
    if role != "none":
        kind = 0 if role == "producer" else 1
        session.receive(json.dumps({"op": 3, "d": {"token": "t", "type": kind}}), 0.0)
        session.accept(0.0)
    event = session.receive(frame, 0.0)
    if isinstance(event, CloseRequested):
        return int(event.code)
    if isinstance(event, IdentifyRequested):
        return 4001 if role == "none" else 4003  # a fuzzed token is never valid
    assert isinstance(event, HeartbeatRequested | SubmitRequested) or role == "consumer"
    return None


@contextmanager
def _open(live: RelayThread, role: str) -> Iterator[ClientConnection]:
    """A connection after HELLO (and READY for a producer or consumer)."""
    relay = live.relay
    with connect(relay.ws_url, open_timeout=WAIT_S, close_timeout=WAIT_S, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=WAIT_S))["op"] == 2
        if role != "none":
            if role == "producer":
                token = live.call(relay.mint_token(user_id="fuzz-user"))
            else:
                token = live.call(relay.mint_token(developer="dev-b"))  # dev-b: no fuzz data
            kind = 0 if role == "producer" else 1
            ws.send(json.dumps({"op": 3, "d": {"token": token, "type": kind}}))
            assert json.loads(ws.recv(timeout=WAIT_S)) == {"op": 4}
        yield ws


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frame=frames, role=roles)
def test_fuzzed_frame_gets_the_core_close_code(
    live: RelayThread, frame: str | bytes, role: str
) -> None:
    expected = _expected(frame, role)
    with _open(live, role) as ws:
        ws.send(frame)
        with suppress(ConnectionClosed):  # the relay may have closed already
            ws.send('{"op":0}')
        if expected is None:
            # a consumer's REPLAY would dispatch dev-b's rows, and dev-b has none: only the ACK
            assert json.loads(ws.recv(timeout=WAIT_S)) == {"op": 1}
        else:
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=WAIT_S)
            assert ws.close_code == expected, (frame, role, ws.close_reason)


def test_relay_still_serves_after_fuzzing(live: RelayThread) -> None:
    """Runs after the fuzz test (file order): a fresh producer and consumer still work."""
    relay = live.relay
    before = live.call(relay.dispatches("dev-a"))
    with _open(live, "consumer") as c, _open(live, "producer") as p:
        p.send(json.dumps({"op": 6, "d": {"ts": TS, "val": 1}, "t": "HEART_RATE"}))
        p.send('{"op":0}')
        assert json.loads(p.recv(timeout=WAIT_S)) == {"op": 1}
        c.send('{"op":0}')
        assert json.loads(c.recv(timeout=WAIT_S)) == {"op": 1}
    after = live.call(relay.dispatches("dev-a"))
    assert len(after) == len(before) + 1
    assert [s.seq for s in after] == sorted({s.seq for s in after})  # strictly increasing
    assert all(s.uid == "fuzz-user" for s in after)
    for s in after:  # every stored payload is valid JSON of the shape the core accepted
        assert isinstance(json.loads(s.d), dict)
    assert live.call(relay.dispatches("dev-b")) == []
    assert [r.getMessage() for r in live.errors] == []  # no internal error on any input


def test_oversized_frames_close_1009(live: RelayThread) -> None:
    for payload in ("x" * (MAX_FRAME + 1), b"\x00" * (MAX_FRAME * 2)):
        with _open(live, "producer") as ws:
            ws.send(payload)
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=WAIT_S)
            assert ws.close_code == 1009
