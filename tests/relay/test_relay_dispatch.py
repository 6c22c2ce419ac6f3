"""Dispatch: order, per-developer seq, ACK-after-store, duplicates (4002), slow consumers."""

from __future__ import annotations

import asyncio
import json
import socket

from websockets.exceptions import ConnectionClosed

from agent.relay.server import Relay
from tests.relay.conftest import (
    TS,
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


async def test_dispatch_shape_and_order(relay: Relay) -> None:
    async with consumer(relay) as c, producer(relay, user_id="alice") as p:
        sent = [submit(60 + i) for i in range(50)]
        sent.append(submit(1.5, "ACCELERATION"))
        for text in sent:
            await p.send(text)
        got = [await recv_json(c) for _ in sent]
    for i, (text, frame) in enumerate(zip(sent, got, strict=True)):
        submitted = json.loads(text)
        assert frame == {
            "op": 5,
            "d": submitted["d"],
            "uid": "alice",
            "seq": i + 1,
            "t": submitted["t"],
        }


async def test_dispatch_text_is_compact_and_keyed_like_the_seed(relay: Relay) -> None:
    async with consumer(relay) as c, producer(relay, user_id="u1") as p:
        await p.send('{"op":6,"d":{"ts":"' + TS + '","val":72},"t":"HEART_RATE"}')
        raw = await asyncio.wait_for(c.recv(), 10)
    assert raw == (
        '{"op":5,"d":{"ts":"' + TS + '","val":72},"uid":"u1","seq":1,"t":"HEART_RATE"}'
    )


async def test_seq_is_per_developer_and_interleaved_users_keep_order(relay: Relay) -> None:
    async with (
        consumer(relay, "dev-a") as ca,
        consumer(relay, "dev-b") as cb,
        producer(relay, "alice", "dev-a") as pa,
        producer(relay, "bob", "dev-a") as pb,
        producer(relay, "carol", "dev-b") as pc,
    ):
        for i in range(20):
            await pa.send(submit(i))
            await pb.send(submit(100 + i))
            await pc.send(submit(200 + i))
        for ws in (pa, pb, pc):
            await heartbeat_roundtrip(ws)
        a_frames = [await recv_json(ca) for _ in range(40)]
        b_frames = [await recv_json(cb) for _ in range(20)]
    assert [f["seq"] for f in a_frames] == list(range(1, 41))
    assert [f["seq"] for f in b_frames] == list(range(1, 21))
    assert {f["uid"] for f in b_frames} == {"carol"}
    for uid, base in (("alice", 0), ("bob", 100)):
        vals = [f["d"]["val"] for f in a_frames if f["uid"] == uid]
        assert vals == [base + i for i in range(20)]
    assert [s.seq for s in await relay.dispatches("dev-b")] == list(range(1, 21))


async def test_ack_only_after_earlier_submits_are_stored_and_dispatched(relay: Relay) -> None:
    """When the HEARTBEAT_ACK arrives, every earlier SUBMIT is in SQLite and was dispatched."""
    async with consumer(relay) as c, producer(relay) as p:
        for round_ in range(5):
            n = 200
            for i in range(n):
                await p.send(submit(round_ * n + i))
            await heartbeat_roundtrip(p)
            stored = await relay.dispatches(after=round_ * n)
            assert len(stored) == n
            assert relay.last_seq("dev-a") == (round_ + 1) * n
            for i in range(n):
                frame = await recv_json(c)
                assert frame["seq"] == round_ * n + i + 1


async def test_submits_survive_in_order_across_many_batches(make_relay: MakeRelay) -> None:
    async with (
        make_relay(max_pending_submits=7, heartbeat_interval_ms=20_000) as relay,
        producer(relay) as p,
    ):
        for i in range(500):
            await p.send(submit(i))
        await heartbeat_roundtrip(p)
        stored = await relay.dispatches()
    assert [s.seq for s in stored] == list(range(1, 501))
    assert [json.loads(s.d)["val"] for s in stored] == list(range(500))


async def test_second_producer_for_same_user_closes_older_4002(relay: Relay) -> None:
    async with consumer(relay) as c, producer(relay, "alice") as old:
        await old.send(submit(1))
        await heartbeat_roundtrip(old)
        async with producer(relay, "alice") as new:
            await expect_close(old, 4002)
            await new.send(submit(2))
            await heartbeat_roundtrip(new)
            async with producer(relay, "bob") as other:  # a different user is no duplicate
                await heartbeat_roundtrip(other)
            await heartbeat_roundtrip(new)
        assert [(await recv_json(c))["d"]["val"] for _ in range(2)] == [1, 2]


async def test_second_consumer_for_same_developer_closes_older_4002(relay: Relay) -> None:
    async with consumer(relay, "dev-a") as old, consumer(relay, "dev-b") as other:
        new_ctx = consumer(relay, "dev-a")  # opened only after `old` is READY
        async with new_ctx as new, producer(relay) as p:
            await expect_close(old, 4002)
            await p.send(submit(5))
            frame = await recv_json(new)
            assert frame["d"]["val"] == 5
            await heartbeat_roundtrip(other)  # dev-b's consumer is untouched


async def test_duplicate_check_happens_only_after_a_valid_token(relay: Relay) -> None:
    """A bad IDENTIFY for the same identity must not kick the holder."""
    async with producer(relay, "alice") as holder, raw_client(relay) as intruder:
        await intruder.send(identify_text("forged", 0))
        await expect_close(intruder, 4001)
        await heartbeat_roundtrip(holder)


async def test_small_queue_consumer_that_reads_gets_everything(make_relay: MakeRelay) -> None:
    """Flow control: a consumer that keeps reading is never cut off, however small its queue."""
    async with (
        make_relay(
            consumer_queue_frames=20, max_pending_submits=10, heartbeat_interval_ms=20_000
        ) as relay,
        consumer(relay) as c,
        producer(relay) as p,
    ):
        n = 3000

        async def produce() -> None:
            for i in range(n):
                await p.send(submit(i))
            await heartbeat_roundtrip(p)

        task = asyncio.create_task(produce())
        seqs = [(await recv_json(c))["seq"] for _ in range(n)]
        await task
        await heartbeat_roundtrip(c)
    assert seqs == list(range(1, n + 1))


async def test_slow_consumer_is_closed_1008_and_can_replay(make_relay: MakeRelay) -> None:
    """A consumer that stops reading is cut off after consumer_stall_s; producers go on.

    The consumer's client reads nothing, its socket has a tiny receive buffer and the relay's
    send buffer is fixed (``send_buffer_bytes``; Linux autotuning would otherwise absorb
    megabytes), so the relay's bounded per-consumer queue stays full.
    """
    async with make_relay(
        consumer_queue_frames=200,
        max_pending_submits=100,
        consumer_stall_s=0.2,
        send_buffer_bytes=4096,
        heartbeat_interval_ms=20_000,
    ) as relay:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect(("127.0.0.1", relay.port))
        async with consumer(relay, sock=sock, max_queue=1) as c, producer(relay) as p:
            n = 5000
            for i in range(n):
                await p.send(submit(i))
            await heartbeat_roundtrip(p)  # the producer is not held up for good
            seqs: list[int] = []
            try:
                while True:
                    seqs.append((await recv_json(c))["seq"])
            except ConnectionClosed:
                pass
            reason = await expect_close(c, 1008)
            assert "REPLAY" in reason
            assert seqs == list(range(1, len(seqs) + 1))  # what arrived is a gapless prefix
            assert len(seqs) < n
        assert len(await relay.dispatches()) == n  # everything is stored for the REPLAY
        last = seqs[-1] if seqs else 0
        async with consumer(relay) as again:
            await again.send(json.dumps({"op": 7, "d": {"after": last}}))
            rest = [(await recv_json(again))["seq"] for _ in range(n - last)]
        assert rest == list(range(last + 1, n + 1))
