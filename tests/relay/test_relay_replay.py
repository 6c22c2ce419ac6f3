"""REPLAY bounds, persistence across restarts, seq continuity and retention."""

from __future__ import annotations

import json

import pytest

from agent.relay.server import Relay
from tests.relay.conftest import (
    FakeClock,
    MakeRelay,
    consumer,
    heartbeat_roundtrip,
    producer,
    recv_json,
    submit,
)


def replay(after: int, before: int | None = None) -> str:
    d = {"after": after} if before is None else {"after": after, "before": before}
    return json.dumps({"op": 7, "d": d})


async def fill(relay: Relay, n: int, user_id: str = "alice", developer: str = "dev-a") -> None:
    async with producer(relay, user_id, developer) as p:
        for i in range(n):
            await p.send(submit(i))
        await heartbeat_roundtrip(p)


async def replayed_seqs(c: object, expected: int) -> list[int]:
    frames = [await recv_json(c) for _ in range(expected)]  # type: ignore[arg-type]
    assert all(f["op"] == 5 for f in frames)
    return [f["seq"] for f in frames]


@pytest.mark.parametrize(
    ("after", "before", "expected"),
    [
        (0, None, list(range(1, 11))),
        (3, 7, [4, 5, 6]),  # both bounds exclusive
        (3, 4, []),
        (3, 5, [4]),
        (0, 1, []),
        (9, None, [10]),
        (10, None, []),
        (-5, 3, [1, 2]),
        (7, 3, []),  # empty range
        (5, 1000, [6, 7, 8, 9, 10]),
        (-(2**70), 2**70, list(range(1, 11))),  # beyond SQLite's 64-bit integers
        (2**70, None, []),
    ],
)
async def test_replay_bounds_are_exclusive(
    relay: Relay, after: int, before: int | None, expected: list[int]
) -> None:
    await fill(relay, 10)
    async with consumer(relay) as c:
        await c.send(replay(after, before))
        await c.send(replay(0, 2))  # a marker: REPLAYs are served in order
        got = await replayed_seqs(c, len(expected) + 1)
    assert got == [*expected, 1]


async def test_replayed_frames_equal_the_live_ones(relay: Relay) -> None:
    async with consumer(relay) as c:
        await fill(relay, 5)
        live = [await recv_json(c) for _ in range(5)]
        await c.send(replay(0))
        again = [await recv_json(c) for _ in range(5)]
    assert live == again


async def test_replay_only_returns_own_developer(relay: Relay) -> None:
    await fill(relay, 3, developer="dev-a")
    await fill(relay, 2, "bob", developer="dev-b")
    async with consumer(relay, "dev-b") as c:
        await c.send(replay(0))
        await c.send('{"op":0}')
        frames = [await recv_json(c) for _ in range(3)]
    # the ACK may overtake replayed frames (consumer ACKs have priority), so compare sets
    assert {"op": 1} in frames
    dispatches = [f for f in frames if f["op"] == 5]
    assert [(f["uid"], f["seq"]) for f in dispatches] == [("bob", 1), ("bob", 2)]


async def test_replay_and_seq_survive_restart(make_relay: MakeRelay) -> None:
    async with make_relay() as first:
        await fill(first, 4)
    async with make_relay() as second:
        async with consumer(second) as c:
            await c.send(replay(1, 4))
            assert await replayed_seqs(c, 2) == [2, 3]
            await fill(second, 2)  # seq continues, never reuses
            assert await replayed_seqs(c, 2) == [5, 6]
        assert [s.seq for s in await second.dispatches()] == [1, 2, 3, 4, 5, 6]


async def test_huge_replay_is_streamed_in_pages(make_relay: MakeRelay) -> None:
    """A replay far larger than the consumer queue arrives complete and in order."""
    async with make_relay(
        replay_page_rows=7, consumer_queue_frames=40, max_pending_submits=20
    ) as relay:
        await fill(relay, 1000)
        async with consumer(relay) as c:
            await c.send(replay(0))
            await c.send(replay(990, 995))
            got = await replayed_seqs(c, 1000 + 4)
    assert got == [*range(1, 1001), 991, 992, 993, 994]


async def test_replay_without_before_stops_at_the_present(relay: Relay) -> None:
    """`before` absent means up to the last seq dispatched when REPLAY arrived; later ones
    come live, exactly once."""
    await fill(relay, 3)
    async with consumer(relay) as c, producer(relay) as p:
        await c.send(replay(0))
        await heartbeat_roundtrip(c)  # REPLAY was read (ACKs follow frames in order)
        await p.send(submit(99))
        await heartbeat_roundtrip(p)
        got = await replayed_seqs(c, 4)
        await c.send(replay(0, 2))  # REPLAYs are served in order: seq 1 comes next
        assert await replayed_seqs(c, 1) == [1]
    assert sorted(got) == [1, 2, 3, 4]


async def test_retention_prunes_old_rows_but_never_seq(
    make_relay: MakeRelay, clock: FakeClock
) -> None:
    async with make_relay(retention_s=3600.0) as relay:
        await fill(relay, 3)
        clock.advance(1800)
        await fill(relay, 2)
        clock.advance(1801)  # the first three are now older than retention
        assert await relay.prune() == 3
        assert [s.seq for s in await relay.dispatches()] == [4, 5]
        clock.advance(3600)
        assert await relay.prune() == 2
        assert await relay.dispatches() == []
    async with make_relay(retention_s=3600.0) as relay:
        await fill(relay, 1)
        assert [s.seq for s in await relay.dispatches()] == [6]
