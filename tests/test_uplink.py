"""Uplink: delivery proven only by ACKs, resend after reconnect, barriers, close-code policies."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agent.backoff import Backoff
from agent.outbox import Outbox
from agent.protocol import DataType
from agent.readings import Reading
from agent.relay.server import Relay, RelayConfig
from agent.tokens import StaticToken
from agent.uplink import InsecureUrl, Uplink, UplinkStopped, check_url, run_producer
from agent.uplink_state import ConnState

T0 = 1_700_000_000.0


def hr(i: int) -> Reading:
    return Reading(DataType.HEART_RATE, T0 + i, val=60 + i % 50)


class CountingTokens:
    """Distinct token per connection; records how many were handed out."""

    def __init__(self, mint: Callable[[], Awaitable[str]] | None = None) -> None:
        self.issued: list[str] = []
        self._mint = mint

    async def get(self) -> str:
        token = await self._mint() if self._mint else f"tok-{len(self.issued)}-secretvalue"
        self.issued.append(token)
        return token


@dataclass
class Broker:
    """A scripted broker: ``script(index, ws, broker)`` runs each connection after HELLO."""

    script: Callable[[int, ServerConnection, Broker], Awaitable[None]]
    interval_ms: int = 60_000
    connections: int = 0
    tokens: list[str] = field(default_factory=list)
    submits: list[dict[str, object]] = field(default_factory=list)
    beats: list[tuple[int, float]] = field(default_factory=list)  # (connection, loop time)
    url: str = ""

    async def handler(self, ws: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        await ws.send(json.dumps({"op": 2, "d": {"heartbeat_interval": self.interval_ms}}))
        with contextlib.suppress(ConnectionClosed):
            ident = json.loads(await ws.recv())
            assert ident["op"] == 3 and ident["d"]["type"] == 0
            self.tokens.append(ident["d"]["token"])
            await self.script(index, ws, self)

    async def read_one(self, index: int, ws: ServerConnection, *, ack: bool) -> None:
        msg = json.loads(await ws.recv())
        if msg["op"] == 6:
            self.submits.append(msg)
        elif msg["op"] == 0:
            self.beats.append((index, asyncio.get_running_loop().time()))
            if ack:
                await ws.send('{"op":1}')


@contextlib.asynccontextmanager
async def running_broker(broker: Broker) -> AsyncIterator[Broker]:
    async with serve(broker.handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        broker.url = f"ws://127.0.0.1:{port}/connect"
        yield broker


async def serve_forever(index: int, ws: ServerConnection, broker: Broker) -> None:
    await ws.send('{"op":4}')
    while True:
        await broker.read_one(index, ws, ack=True)


async def until(uplink: Uplink, pred: Callable[[], bool]) -> None:
    """Wait (event-driven, bounded) until ``pred`` holds."""
    async with asyncio.timeout(20):
        await uplink.wait_for(pred)


@contextlib.asynccontextmanager
async def running(uplink: Uplink, grace_s: float = 0.5) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``uplink`` for the body of the ``async with``; close it (bounded) afterwards."""
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        if not task.done():
            await uplink.close(grace_s=grace_s)
        with contextlib.suppress(UplinkStopped, asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


def fast_backoff(rng: Callable[[], float] = lambda: 0.5) -> Backoff:
    return Backoff(base_s=0.01, cap_s=0.05, stable_after_s=60.0, rng=rng)


# ---------------------------------------------------------------------------------------------
# Against the real relay
# ---------------------------------------------------------------------------------------------


async def test_stream_through_real_relay_delivers_everything_and_empties_outbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = RelayConfig(port=0, heartbeat_interval_ms=2000, developers={"dev": "key"})
    async with Relay(cfg) as relay:
        tokens = CountingTokens(lambda: relay.mint_token(user_id="u1"))
        box = await Outbox.open(tmp_path / "o.sqlite3")
        states: list[ConnState] = []
        uplink = Uplink(
            relay.ws_url, tokens, box, barrier_spacing_s=0.05, backoff=fast_backoff(),
            max_in_flight=300, send_batch=100, on_state=lambda s: states.append(s.state),
        )
        async with running(uplink):
            for chunk in range(10):
                await box.append_durable([hr(chunk * 100 + i) for i in range(100)])
            await until(uplink, lambda: uplink.acked_id >= box.last_id)
            await until(uplink, lambda: uplink.state.outbox_depth == 0)
        assert uplink.state.state is ConnState.CLOSED
        assert ConnState.READY in states
        stored = await relay.dispatches()
        await box.close()
    assert [json.loads(s.d)["val"] for s in stored] == [60 + i % 50 for i in range(1000)]
    assert all(s.uid == "u1" and s.t == "HEART_RATE" for s in stored)
    assert uplink.state.confirmed == 1000
    for token in tokens.issued:
        assert not any(token in r.getMessage() for r in caplog.records)


async def test_close_delivers_pending_within_grace(tmp_path: Path) -> None:
    cfg = RelayConfig(port=0, heartbeat_interval_ms=30_000)
    async with Relay(cfg) as relay:
        tokens = CountingTokens(lambda: relay.mint_token(user_id="u1"))
        box = await Outbox.open(tmp_path / "o.sqlite3")
        uplink = Uplink(relay.ws_url, tokens, box, barrier_spacing_s=0.02)
        task = asyncio.create_task(uplink.run())
        await until(uplink, lambda: uplink.state.state is ConnState.READY)
        box.append([hr(i) for i in range(500)])  # buffered: close() flushes and delivers
        await uplink.close(grace_s=10.0)
        await task
        assert (await box.stats()).depth == 0
        assert len(await relay.dispatches()) == 500
        await box.close()


async def test_run_producer_helper_streams_a_source(tmp_path: Path) -> None:
    appended: list[int] = []

    async def source() -> AsyncIterator[list[Reading]]:
        for k in range(5):
            yield [hr(k * 10 + i) for i in range(10)]

    async with Relay(RelayConfig(port=0, heartbeat_interval_ms=5000)) as relay:
        tokens = CountingTokens(lambda: relay.mint_token(user_id="u9"))
        state = await run_producer(
            relay.ws_url, tokens, tmp_path / "o.sqlite3", source(),
            on_appended=lambda batch: appended.append(len(batch)), barrier_spacing_s=0.02,
        )
        stored = await relay.dispatches()
    assert appended == [10] * 5
    assert state.outbox_depth == 0 and state.confirmed == 50
    assert [json.loads(s.d)["val"] for s in stored] == [60 + i for i in range(50)]


def test_websockets_debug_frames_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("agent.uplink.websockets").debug(
        "> TEXT %s", '\'{"op":3,"d":{"token":"abcdef","type":0}}\''
    )
    assert "abcdef" not in caplog.text and "redacted" in caplog.text


# ---------------------------------------------------------------------------------------------
# Delivery proof: only an ACK confirms
# ---------------------------------------------------------------------------------------------


async def test_nothing_confirmed_without_ack_then_resent_after_reconnect(tmp_path: Path) -> None:
    first_conn_read = asyncio.Event()

    async def script(index: int, ws: ServerConnection, broker: Broker) -> None:
        await ws.send('{"op":4}')
        if index == 0:
            # read everything, acknowledge nothing, then go away
            while len(broker.submits) < 50 or not broker.beats:
                await broker.read_one(index, ws, ack=False)
            first_conn_read.set()
            await ws.close(1001, "going away")
            return
        while True:
            await broker.read_one(index, ws, ack=True)

    broker = Broker(script, interval_ms=60_000)
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        await box.append_durable([hr(i) for i in range(50)])
        uplink = Uplink(broker.url, CountingTokens(), box, barrier_spacing_s=0.01,
                        backoff=fast_backoff())
        async with running(uplink):
            await first_conn_read.wait()
            assert uplink.acked_id == 0
            assert (await box.stats()).depth == 50  # read by the broker, but not proven
            await until(uplink, lambda: uplink.acked_id == box.last_id)
            await until(uplink, lambda: uplink.state.outbox_depth == 0)
            assert uplink.state.last_close_code == 1001
        await box.close()
    vals = [m["d"]["val"] for m in broker.submits]  # type: ignore[index]
    assert vals[:50] == [60 + i % 50 for i in range(50)]
    assert vals[50:] == vals[:50]  # everything unconfirmed sent again, in order
    assert broker.connections == 2
    assert len(set(broker.tokens)) == 2  # a fresh token per connection


async def test_unacked_heartbeat_kills_connection_and_reconnects(tmp_path: Path) -> None:
    async def script(index: int, ws: ServerConnection, broker: Broker) -> None:
        await ws.send('{"op":4}')
        while True:
            await broker.read_one(index, ws, ack=index > 0)

    broker = Broker(script, interval_ms=150)  # short interval: dead after 150 ms un-ACKed
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        await box.append_durable([hr(i) for i in range(5)])
        uplink = Uplink(broker.url, CountingTokens(), box, backoff=fast_backoff())
        async with running(uplink):
            await until(uplink, lambda: uplink.acked_id == box.last_id)
            assert broker.connections >= 2
            assert uplink.state.last_close_code == 1006
            await until(uplink, lambda: uplink.state.outbox_depth == 0)
            assert uplink.state.confirmed == 5
        await box.close()
    assert uplink.state.connections >= 2


async def test_barrier_spacing_respected(tmp_path: Path) -> None:
    spacing = 0.1

    broker = Broker(serve_forever, interval_ms=60_000)
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        uplink = Uplink(broker.url, CountingTokens(), box, barrier_spacing_s=spacing,
                        send_batch=1)
        async with running(uplink):
            await until(uplink, lambda: uplink.state.state is ConnState.READY)
            for i in range(40):  # a steady trickle of fresh readings
                await box.append_durable([hr(i)])
                await asyncio.sleep(0.01)
            await until(uplink, lambda: uplink.acked_id == box.last_id)
        await box.close()
    times = [t for _, t in broker.beats]
    assert len(times) >= 2  # barriers were sent although the regular beat is a minute away
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= spacing * 0.8, gaps  # no more often than the spacing


async def test_in_flight_window_bounds_unconfirmed(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def script(index: int, ws: ServerConnection, broker: Broker) -> None:
        await ws.send('{"op":4}')
        while True:
            await broker.read_one(index, ws, ack=release.is_set())
            if len(broker.submits) >= 20 and not release.is_set():
                await asyncio.sleep(0.2)  # give the sender time to overrun, if it would
                release.set()
                for _ in broker.beats:  # a slow broker: the withheld ACKs arrive late
                    await ws.send('{"op":1}')

    broker = Broker(script, interval_ms=60_000)
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        await box.append_durable([hr(i) for i in range(100)])
        uplink = Uplink(broker.url, CountingTokens(), box, barrier_spacing_s=0.01,
                        max_in_flight=20, send_batch=10)
        async with running(uplink):
            await release.wait()
            assert len(broker.submits) == 20
            await until(uplink, lambda: uplink.state.outbox_depth == 0)
        await box.close()


# ---------------------------------------------------------------------------------------------
# Close-code policies
# ---------------------------------------------------------------------------------------------


def closing_with(code: int) -> Callable[[int, ServerConnection, Broker], Awaitable[None]]:
    async def script(index: int, ws: ServerConnection, broker: Broker) -> None:
        await ws.close(code, "scripted")

    return script


class RecordingSleep:
    """Back-off sleep that records the delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._called = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self._called.set()
        self._called = asyncio.Event()
        await asyncio.sleep(0)

    async def calls(self, n: int) -> None:
        async with asyncio.timeout(20):
            while len(self.delays) < n:
                await self._called.wait()


@pytest.mark.parametrize("code", [4004, 1007, 4000, 4003, 1003])
async def test_client_bug_codes_stop_and_report(tmp_path: Path, code: int) -> None:
    broker = Broker(closing_with(code))
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        uplink = Uplink(broker.url, CountingTokens(), box, sleep=RecordingSleep())
        with pytest.raises(UplinkStopped) as info:
            await uplink.run()
        await box.close()
    assert info.value.close_code == code
    assert uplink.state.state is ConnState.STOPPED
    assert str(code) in (uplink.state.stopped_reason or "")
    assert broker.connections == 1
    await uplink.close()  # closing a stopped uplink keeps the reason visible
    assert uplink.state.state is ConnState.STOPPED


async def test_4001_mints_fresh_tokens_and_backs_off_to_max(tmp_path: Path) -> None:
    broker = Broker(closing_with(4001))
    sleep = RecordingSleep()
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        tokens = CountingTokens()
        backoff = Backoff(base_s=1.0, cap_s=30.0, rng=lambda: 0.0)
        uplink = Uplink(broker.url, tokens, box, backoff=backoff, sleep=sleep)
        async with running(uplink):
            await sleep.calls(4)
            assert uplink.state.last_close_code == 4001
        await box.close()
    assert len(set(broker.tokens)) == len(broker.tokens) >= 4  # a new token every time
    assert sleep.delays[0] < 1.0  # first refusal: ordinary backoff
    assert all(d >= 15.0 for d in sleep.delays[1:4])  # repeated refusals: the maximum


async def test_4002_backs_off_to_max(tmp_path: Path) -> None:
    broker = Broker(closing_with(4002))
    sleep = RecordingSleep()
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        backoff = Backoff(base_s=1.0, cap_s=30.0, rng=lambda: 0.0)
        uplink = Uplink(broker.url, CountingTokens(), box, backoff=backoff, sleep=sleep)
        async with running(uplink):
            await sleep.calls(1)
        await box.close()
    assert sleep.delays[0] == pytest.approx(15.0)  # cap × (0.5 + 0.5 × rng)


async def test_1001_reconnects_with_growing_backoff_and_no_hot_loop(tmp_path: Path) -> None:
    broker = Broker(closing_with(1001))
    sleep = RecordingSleep()
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        backoff = Backoff(base_s=1.0, cap_s=8.0, rng=lambda: 1.0)
        uplink = Uplink(broker.url, CountingTokens(), box, backoff=backoff, sleep=sleep)
        async with running(uplink):
            await sleep.calls(5)
        await box.close()
    # sessions that die right after the handshake never reset the counter
    assert sleep.delays[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert broker.connections >= 5


async def test_connection_refused_backs_off(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.sqlite3")
    sleep = RecordingSleep()
    uplink = Uplink("ws://127.0.0.1:9/connect", CountingTokens(), box, sleep=sleep,
                    backoff=fast_backoff())
    async with running(uplink):
        await sleep.calls(2)
    assert "failed" in (uplink.state.last_error or "")
    await box.close()


async def test_static_token_runs_out_after_one_connection(tmp_path: Path) -> None:
    broker = Broker(closing_with(1001))
    async with running_broker(broker):
        box = await Outbox.open(tmp_path / "o.sqlite3")
        uplink = Uplink(broker.url, StaticToken("only-once"), box, sleep=RecordingSleep())
        with pytest.raises(UplinkStopped, match="single-use"):
            await uplink.run()
        await box.close()
    assert broker.connections == 1
    assert "static token" in (uplink.state.stopped_reason or "")


# ---------------------------------------------------------------------------------------------
# URLs and TLS
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_wss_verifies_certificates_and_accepts_a_custom_ca(
    tmp_path: Path, self_signed: tuple[Path, Path]
) -> None:
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    broker = Broker(serve_forever)
    async with serve(broker.handler, "127.0.0.1", 0, ssl=server_ctx) as server:
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/connect"
        box = await Outbox.open(tmp_path / "o.sqlite3")
        await box.append_durable([hr(i) for i in range(3)])
        sleep = RecordingSleep()
        untrusting = Uplink(url, CountingTokens(), box, sleep=sleep, backoff=fast_backoff())
        async with running(untrusting):
            await sleep.calls(1)
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusting.state.last_error or "")
        assert broker.connections == 0

        trusting = Uplink(url, CountingTokens(), box, ca_file=cert, barrier_spacing_s=0.01)
        async with running(trusting):
            await until(trusting, lambda: trusting.acked_id == box.last_id)
        await box.close()
    assert len(broker.submits) == 3



def test_plain_ws_only_to_loopback() -> None:
    check_url("ws://127.0.0.1:8765/connect")
    check_url("ws://localhost/connect")
    check_url("ws://[::1]:8765/connect")
    check_url("wss://ws.tryterra.co/connect")
    with pytest.raises(InsecureUrl, match="unencrypted"):
        check_url("ws://ws.tryterra.co/connect")
    with pytest.raises(InsecureUrl, match="unencrypted"):
        check_url("ws://192.168.1.10/connect")
    check_url("ws://192.168.1.10/connect", allow_insecure_ws=True)
    with pytest.raises(InsecureUrl):
        check_url("http://127.0.0.1/connect")
    with pytest.raises(InsecureUrl, match="IDENTIFY"):
        check_url("wss://ws.tryterra.co/connect?token=abc")


async def test_uplink_refuses_insecure_url(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.sqlite3")
    with pytest.raises(InsecureUrl):
        Uplink("ws://example.com/connect", CountingTokens(), box)
    await box.close()
