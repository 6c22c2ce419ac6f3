"""The relay is SIGKILLed and restarted (same port, same database) while a producer streams.

The relay is a real ``python -m agent relay`` process; the producer a real Outbox + Uplink that
mints every token over HTTP (RestToken). At the end every reading must be in the relay's store
and in a fresh consumer's REPLAY from 0 (``agent watch``'s Watcher), in order per type, with
duplicates only as resends of the unconfirmed window, and the outbox must be empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent import protocol as p
from agent.outbox import Outbox
from agent.protocol import format_ts, serialize_dispatch
from agent.tokens import RestToken
from agent.uplink import Uplink
from agent.uplink_state import ConnState
from agent.watch import Watcher, WatchOptions
from tests.reliability.conftest import (
    API_KEY,
    DEV_ID,
    T0,
    USER_ID,
    WAIT_S,
    RecordingTokens,
    RelayProcess,
    assert_no_secrets,
    check_delivery,
    fast_backoff,
    log_lines,
    number_of,
    numbered,
    stored_rows,
    wait_until,
)

SEED = 20261127
KILLS = 5
MAX_IN_FLIGHT = 200
BATCH = 10  # readings appended per durable commit (half a second of a 20 Hz sensor)
TAIL = 100  # readings streamed after the last restart


def sent_at_least(uplink: Uplink, point: int) -> Callable[[], bool]:
    return lambda: uplink.state.sent >= point


async def replay_from_zero(relay: RelayProcess, expected_rows: int) -> list[p.Dispatch]:
    """A fresh consumer's ``REPLAY after=0``: everything the relay holds, by seq."""
    got: list[p.Dispatch] = []
    options = WatchOptions(
        server=relay.url, dev_id=DEV_ID, api_key=API_KEY, replay_only=True,
        max_messages=expected_rows, idle_timeout_s=WAIT_S,
    )
    watcher = Watcher(options, on_dispatch=got.append, backoff=fast_backoff(SEED + 3))
    async with asyncio.timeout(WAIT_S):
        assert await watcher.run() == 0
    return got


@pytest.mark.slow
async def test_relay_sigkilled_repeatedly_during_a_stream_loses_nothing(
    tmp_path: Path, relay_process: RelayProcess, api_key_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(SEED)
    relay = relay_process
    relay.heartbeat_ms = 500
    await relay.start()
    tokens = RecordingTokens(
        RestToken(relay.url, USER_ID, DEV_ID, api_key_file=api_key_file, timeout_s=2.0)
    )
    box = await Outbox.open(tmp_path / "outbox.sqlite3")
    uplink = Uplink(
        relay.ws_url, tokens, box, backoff=fast_backoff(SEED), rng=random.Random(SEED + 4).random,
        barrier_spacing_s=0.02, max_in_flight=MAX_IN_FLIGHT, send_batch=50, open_timeout_s=2.0,
    )
    appended = 0
    stop_stream = asyncio.Event()

    async def stream() -> None:
        """A sensor: numbered readings, committed durably a few at a time, until told to stop."""
        nonlocal appended
        while not stop_stream.is_set():
            await box.append_durable([numbered(appended + k) for k in range(BATCH)])
            appended += BATCH
            await asyncio.sleep(0.02)  # sensor pace (≤ 500 readings/s), not a wait for anything

    runner = asyncio.create_task(uplink.run())
    streaming = asyncio.create_task(stream())
    kill_points: list[int] = []
    try:
        await wait_until(uplink.wait_for, lambda: uplink.state.state is ConnState.READY)
        for _ in range(KILLS):
            # a random moment: after a random number of further frames went out
            point = uplink.state.sent + rng.randint(20, 300)
            await wait_until(uplink.wait_for, sent_at_least(uplink, point))
            kill_points.append(uplink.state.sent)
            await relay.kill()
            # the uplink notices (a failed attempt puts it in BACKOFF) before the relay returns
            await wait_until(
                uplink.wait_for, lambda: uplink.state.state is ConnState.BACKOFF
            )
            await relay.start()
        await wait_until(uplink.wait_for, lambda: uplink.state.state is ConnState.READY)
        tail_from = appended
        await wait_until(uplink.wait_for, lambda: appended >= tail_from + TAIL)
        stop_stream.set()
        await asyncio.wait_for(streaming, WAIT_S)
        await wait_until(uplink.wait_for, lambda: uplink.acked_id >= box.last_id, 60.0)
        await uplink.close(grace_s=2.0)
        await asyncio.wait_for(runner, WAIT_S)
        stats = await box.stats()
    finally:
        stop_stream.set()
        for task in (streaming, runner):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await box.close()

    assert len(kill_points) == KILLS and relay.starts == KILLS + 1
    # outbox empty: everything was confirmed by an ACK and deleted
    assert stats.depth == 0 and stats.buffered == 0 and stats.dropped == 0
    assert box.last_id == appended

    # the store: zero loss, order per type, duplicates only as resends
    rows = await asyncio.to_thread(stored_rows, relay.db)
    report = check_delivery(
        ((r.t, number_of(r.t, r.d)) for r in rows), range(appended)
    )
    print(f"appended={appended} stored={len(rows)} connections={uplink.state.connections}", report)
    assert report.missing == [] and report.unexpected == []
    reconnects = uplink.state.connections - 1
    assert reconnects >= KILLS
    assert report.duplicates <= MAX_IN_FLIGHT * reconnects, (report, reconnects)
    assert report.max_copies <= uplink.state.connections
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))  # no seq lost or reused

    # a fresh consumer's REPLAY from 0 returns the same, in seq order
    replayed = await replay_from_zero(relay, len(rows))
    assert [(d.seq, d.t, number_of(d.t, d.d)) for d in replayed] == [
        (r.seq, r.t, number_of(r.t, r.d)) for r in rows
    ]
    assert await relay.stop() == 0

    # no secret in any log line: ours, the consumer's, the relay process's output
    secrets = [API_KEY, *tokens.issued]
    assert len(tokens.issued) >= uplink.state.connections  # a fresh token per connection
    assert len(set(tokens.issued)) == len(tokens.issued)
    lines = log_lines(caplog)
    # the scan saw the uplink's frame log, where IDENTIFY (and so a token) would appear
    assert any("frame redacted" in line for line in lines)
    assert_no_secrets([*lines, relay.logs(), *relay.stdout_lines], secrets)


@dataclass
class ReplayingBroker:
    """Scripted consumer side of a broker that dies halfway through serving a REPLAY.

    Connection 0 answers the consumer's REPLAY (after=0) with seq 1, then a *live* DISPATCH of
    seq 5 (stored after the REPLAY arrived: the relay interleaves live frames with replay pages),
    then dies before replaying seqs 2-4. Every later connection records its REPLAY's ``after``.
    """

    replay_after: list[int] = field(default_factory=list)
    second_replay: asyncio.Event = field(default_factory=asyncio.Event)

    def http(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/auth/developer"):
            body = json.dumps({"token": f"consumer-token-{len(self.replay_after)}"}).encode()
            headers = Headers([("Content-Length", str(len(body))), ("Connection", "close")])
            return Response(200, "OK", headers, body)
        return None

    async def handler(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"op": 2, "d": {"heartbeat_interval": 60_000}}))
            assert json.loads(await ws.recv())["op"] == 3
            await ws.send('{"op":4}')
            replay = json.loads(await ws.recv())
            assert replay["op"] == 7
            self.replay_after.append(int(replay["d"]["after"]))
            if len(self.replay_after) > 1:
                self.second_replay.set()
                await ws.wait_closed()
                return
            for seq in (1, 5):
                d = {"ts": format_ts(T0 + seq), "val": seq}
                await ws.send(serialize_dispatch(d, USER_ID, seq, "STEPS"))
            ws.transport.abort()  # the relay is SIGKILLed here


async def test_consumer_replays_the_gap_left_by_an_interrupted_replay() -> None:
    broker = ReplayingBroker()
    seen: list[int] = []
    async with serve(broker.handler, "127.0.0.1", 0, process_request=broker.http) as server:
        port = server.sockets[0].getsockname()[1]
        options = WatchOptions(
            server=f"http://127.0.0.1:{port}", dev_id=DEV_ID, api_key=API_KEY, since=0
        )
        watcher = Watcher(
            options, on_dispatch=lambda d: seen.append(d.seq), backoff=fast_backoff(SEED + 5)
        )
        task = asyncio.create_task(watcher.run())
        try:
            async with asyncio.timeout(WAIT_S):
                await broker.second_replay.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert seen == [1, 5]
    assert broker.replay_after[0] == 0
    # seqs 2-4 were never delivered: the second REPLAY must ask for them again
    assert broker.replay_after[1] <= 1, broker.replay_after
