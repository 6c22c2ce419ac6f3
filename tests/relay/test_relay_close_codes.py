"""Every close code of the relay, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from agent.relay.server import Relay
from tests.relay.conftest import (
    FakeClock,
    MakeRelay,
    consumer,
    expect_close,
    heartbeat_roundtrip,
    identify_text,
    producer,
    raw_client,
    recv_json,
    submit,
)


async def test_hello_then_ready_and_heartbeats_acked(relay: Relay) -> None:
    async with producer(relay) as ws:
        for _ in range(3):
            await heartbeat_roundtrip(ws)


async def test_no_identify_closes_4000(make_relay: MakeRelay) -> None:
    async with make_relay(identify_timeout_s=0.3) as relay, raw_client(relay) as ws:
        reason = await expect_close(ws, 4000)
        assert "IDENTIFY" in reason


async def test_silent_client_gets_4000_even_if_heartbeat_window_is_shorter(
    make_relay: MakeRelay,
) -> None:
    """interval × 1.5 = 0.3 s < identify timeout 0.4 s: still 4000 (no IDENTIFY), not 4005."""
    async with (
        make_relay(identify_timeout_s=0.4, heartbeat_interval_ms=200) as relay,
        raw_client(relay) as ws,
    ):
        await expect_close(ws, 4000)


async def test_heartbeats_do_not_extend_identify_deadline(make_relay: MakeRelay) -> None:
    async with (
        make_relay(identify_timeout_s=0.3, heartbeat_interval_ms=200) as relay,
        raw_client(relay) as ws,
    ):
        await heartbeat_roundtrip(ws)  # allowed before IDENTIFY, but no substitute
        await expect_close(ws, 4000)


async def test_unknown_token_closes_4001(relay: Relay) -> None:
    async with raw_client(relay) as ws:
        await ws.send(identify_text("not-a-token", 0))
        await expect_close(ws, 4001)


async def test_used_token_closes_4001(relay: Relay) -> None:
    token = await relay.mint_token(user_id="u")
    async with raw_client(relay) as first:
        await first.send(identify_text(token, 0))
        assert await recv_json(first) == {"op": 4}
        async with raw_client(relay) as second:
            await second.send(identify_text(token, 0))
            await expect_close(second, 4001)
        await heartbeat_roundtrip(first)  # the holder is unaffected


async def test_token_of_other_kind_closes_4001(relay: Relay) -> None:
    token = await relay.mint_token(developer="dev-a")  # consumer token
    async with raw_client(relay) as ws:
        await ws.send(identify_text(token, 0))  # used as a producer
        await expect_close(ws, 4001)


async def test_expired_token_closes_4001(relay: Relay, clock: FakeClock) -> None:
    token = await relay.mint_token(user_id="u")
    fresh = await relay.mint_token(user_id="v")
    clock.advance(relay.config.token_ttl_s)
    async with raw_client(relay) as ws:
        await ws.send(identify_text(token, 0))
        await expect_close(ws, 4001)
    clock.advance(-1.0)  # just before expiry a token still works
    async with raw_client(relay) as ws:
        await ws.send(identify_text(fresh, 0))
        assert await recv_json(ws) == {"op": 4}


async def test_second_identify_closes_4003(relay: Relay) -> None:
    async with producer(relay) as ws:
        await ws.send(identify_text(await relay.mint_token(user_id="user-1"), 0))
        await expect_close(ws, 4003)


async def test_identify_while_pending_closes_4003(relay: Relay) -> None:
    """Two IDENTIFYs back to back: the second is refused even before READY was seen."""
    token = await relay.mint_token(user_id="u")
    async with raw_client(relay) as ws:
        await ws.send(identify_text(token, 0))
        await ws.send(identify_text(token, 0))
        assert await recv_json(ws) == {"op": 4}
        await expect_close(ws, 4003)


@pytest.mark.parametrize(
    "frame",
    [
        '{"op":99}',
        '{"op":-1}',
        '{"op":1}',  # HEARTBEAT_ACK is a server opcode
        '{"op":2,"d":{"heartbeat_interval":5}}',
        '{"op":4}',
        '{"op":5,"d":{},"uid":"u","seq":1,"t":"HEART_RATE"}',
        '{"op":7,"d":{"after":0,"before":9}}',  # REPLAY from a producer
    ],
)
async def test_unknown_or_misplaced_opcode_on_producer_closes_4004(
    relay: Relay, frame: str
) -> None:
    async with producer(relay) as ws:
        await ws.send(frame)
        await expect_close(ws, 4004)


async def test_submit_from_consumer_closes_4004(relay: Relay) -> None:
    async with consumer(relay) as ws:
        await ws.send(submit(60))
        await expect_close(ws, 4004)


@pytest.mark.parametrize("frame", [submit(60), '{"op":7,"d":{"after":0}}'])
async def test_submit_or_replay_before_identify_closes_4004(relay: Relay, frame: str) -> None:
    async with raw_client(relay) as ws:
        await ws.send(frame)
        await expect_close(ws, 4004)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"op":"6"}',
        '{"op":6,"d":{"ts":"2022-05-04T10:26:11","val":1},"t":"HEART_RATE"}',  # no offset
        '{"op":6,"d":{"val":"72"},"t":"HEART_RATE"}',
        '{"op":6,"d":{"d":[1,2]},"t":"ACCELERATION"}',
        '{"op":6,"d":{"val":1,"extra":2},"t":"HEART_RATE"}',
        '{"op":6,"d":{"val":1},"t":"BLOOD_PRESSURE"}',
        '{"op":6,"d":{"val":NaN},"t":"HEART_RATE"}',
    ],
)
async def test_invalid_json_or_submit_closes_1007(relay: Relay, frame: str) -> None:
    async with producer(relay) as ws:
        await ws.send(frame)
        await expect_close(ws, 1007)
    assert await relay.dispatches() == []


async def test_invalid_utf8_text_frame_closes_1007(relay: Relay) -> None:
    async with producer(relay) as ws:
        await ws.send(b'{"op":0,"x":"\xff"}', text=True)
        await expect_close(ws, 1007)


async def test_binary_frame_with_json_is_accepted(relay: Relay) -> None:
    """Binary frames are read as UTF-8 JSON, like the core parser does."""
    async with producer(relay) as ws:
        await ws.send(b'{"op":0}')
        assert await recv_json(ws) == {"op": 1}
        await ws.send(b"\xff\xfe")
        await expect_close(ws, 1007)


async def test_missing_heartbeat_closes_4005(make_relay: MakeRelay) -> None:
    async with (
        # a long identify timeout: the heartbeat rule must take over at READY, not after it
        make_relay(heartbeat_interval_ms=200, heartbeat_leeway_s=0.05,
                   identify_timeout_s=60.0) as relay,
        producer(relay) as ws,
    ):
        loop = asyncio.get_running_loop()
        start = loop.time()
        await expect_close(ws, 4005)
        # the window is interval + leeway, measured from READY: not before it
        assert loop.time() - start >= 0.25 - 0.02


async def test_heartbeats_keep_connection_alive(make_relay: MakeRelay) -> None:
    """Heartbeats every interval keep it open past several windows; stopping them → 4005."""
    async with make_relay(heartbeat_interval_ms=400) as relay, consumer(relay) as ws:
        loop = asyncio.get_running_loop()
        start = loop.time()
        # driven by the ACKs: each round-trip is followed by the next beat 0.2 s later, well
        # inside the 0.6 s window even on a loaded machine; 1.3 s spans two whole windows
        while loop.time() - start < 1.3:
            await heartbeat_roundtrip(ws)
            await asyncio.sleep(0.2)  # the client's own heartbeat cadence, not a wait
        await expect_close(ws, 4005)


async def test_oversized_frame_closes_1009(make_relay: MakeRelay) -> None:
    async with make_relay(max_frame_bytes=1024) as relay, producer(relay) as ws:
        await ws.send(json.dumps({"op": 0, "pad": "x" * 2000}))
        await expect_close(ws, 1009)


async def test_shutdown_closes_every_connection_1001(make_relay: MakeRelay) -> None:
    relay = make_relay()
    async with relay, producer(relay) as p, consumer(relay) as c, raw_client(relay) as r:
        await relay.close()
        for ws in (p, c, r):
            await expect_close(ws, 1001)


async def test_every_close_is_logged_once_without_secrets(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.relay")
    token = await relay.mint_token(user_id="alice")
    async with raw_client(relay) as ws:
        await ws.send(identify_text(token, 0))
        assert await recv_json(ws) == {"op": 4}
        await ws.send('{"op":42}')
        await expect_close(ws, 4004)
    async with raw_client(relay) as ws:
        await ws.send(identify_text(token, 0))
        await expect_close(ws, 4001)
    await relay.close()
    lines = [r.getMessage() for r in caplog.records if "closed" in r.getMessage()]
    closes = [line for line in lines if line.startswith("relay: closed")]
    assert len(closes) == 2, closes
    assert "producer user='alice' dev='dev-a' code=4004" in closes[0]
    assert "code=4001" in closes[1]
    for record in caplog.records:
        assert token not in record.getMessage()
        for key in relay.config.developers.values():
            assert key not in record.getMessage()
