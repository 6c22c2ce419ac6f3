"""Every close code of NOTES.md makes the uplink do what ``CLOSE_POLICY`` says, over real sockets.

Two kinds of server: a tiny scripted websockets server (HELLO, read IDENTIFY, close with the
code under test) driven through the whole policy table plus an unknown code; and the real relay
for the codes it produces itself (4001 for a bad token, 4002 for a second connection of the same
user, 1001 on shutdown). Back-off delays are recorded through the uplink's ``sleep`` hook with
a seeded jitter source, so no test waits for a back-off. Readings waiting in the outbox must
survive every policy, including "stop".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agent.backoff import Backoff
from agent.outbox import Outbox
from agent.protocol import CLOSE_POLICY, ClientAction, close_policy
from agent.relay.server import Relay, RelayConfig
from agent.tokens import RestToken
from agent.uplink import Uplink, UplinkStopped
from agent.uplink_state import ConnState
from tests.reliability.conftest import (
    API_KEY,
    DEV_ID,
    USER_ID,
    WAIT_S,
    RecordingTokens,
    RelayTokens,
    assert_no_secrets,
    free_port,
    inprocess_relay,
    log_lines,
    numbered,
    stored_rows,
    wait_until,
)
from tests.test_uplink import running

CAP_S = 30.0
UNKNOWN_CODE = 4999


class CountingTokens:
    """A distinct, secret-looking token per call."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    async def get(self) -> str:
        token = f"secret-token-{len(self.issued)}-{random.Random(len(self.issued)).random()}"
        self.issued.append(token)
        return token


@dataclass
class ClosingServer:
    """HELLO, read IDENTIFY, then close with ``code``; records the tokens it was offered."""

    code: int
    tokens: list[str] = field(default_factory=list)
    url: str = ""

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"op": 2, "d": {"heartbeat_interval": 60_000}}))
        with contextlib.suppress(ConnectionClosed):
            identify = json.loads(await ws.recv())
            assert identify["op"] == 3 and identify["d"]["type"] == 0
            self.tokens.append(identify["d"]["token"])
            if self.code == 1006:  # reserved: never sent on the wire, it means "no close frame"
                ws.transport.abort()
            else:
                await ws.close(self.code, "scripted close")


@contextlib.asynccontextmanager
async def closing_server(code: int) -> AsyncIterator[ClosingServer]:
    server = ClosingServer(code)
    async with serve(server.handler, "127.0.0.1", 0, compression=None) as ws_server:
        server.url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}/connect"
        yield server


class RecordingSleep:
    """The uplink's back-off sleep: records each delay; returns at once unless held."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.released = asyncio.Event()
        self.released.set()
        self._called = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self._called.set()
        await self.released.wait()
        await asyncio.sleep(0)

    async def calls(self, n: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while len(self.delays) < n:
                self._called.clear()
                await self._called.wait()


def running_briefly(uplink: Uplink) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """The uplink tests' runner with a short close grace (these brokers never ACK)."""
    return running(uplink, grace_s=0.2)


def seeded_backoff(seed: int) -> Backoff:
    return Backoff(base_s=1.0, cap_s=CAP_S, stable_after_s=60.0, rng=random.Random(seed).random)




TABLE = [*sorted(CLOSE_POLICY), UNKNOWN_CODE]


@pytest.mark.parametrize("code", TABLE)
async def test_scripted_close_code_follows_the_policy_table(
    tmp_path: Path, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    policy = close_policy(code)
    box = await Outbox.open(tmp_path / "outbox.sqlite3")
    await box.append_durable([numbered(i) for i in range(5)])
    tokens = CountingTokens()
    sleep = RecordingSleep()
    try:
        async with closing_server(code) as server:
            uplink = Uplink(server.url, tokens, box, backoff=seeded_backoff(code), sleep=sleep,
                            rng=random.Random(code).random)
            if policy.action is ClientAction.STOP:
                with pytest.raises(UplinkStopped) as info:
                    await asyncio.wait_for(uplink.run(), WAIT_S)
                assert info.value.close_code == code
                assert uplink.state.state is ConnState.STOPPED
                assert str(code) in (uplink.state.stopped_reason or "")
                assert len(server.tokens) == 1 and sleep.delays == []  # no retry at all
                errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
                assert any(str(code) in r.getMessage() for r in errors)  # reported
            else:
                async with running_briefly(uplink):
                    await sleep.calls(4)
                    assert uplink.state.last_close_code == code
                assert len(server.tokens) >= 4
                delays = sleep.delays[:4]
                if policy.action is ClientAction.BACKOFF_MAX:
                    # straight to the maximum (half-jittered), from the very first close
                    assert all(CAP_S / 2 <= d <= CAP_S for d in delays), delays
                elif policy.action is ClientAction.NEW_TOKEN:
                    # one ordinary retry, then the maximum while the tokens keep failing
                    assert delays[0] <= 1.0 and all(d >= CAP_S / 2 for d in delays[1:]), delays
                else:
                    # ordinary capped exponential backoff: full jitter under 1, 2, 4, 8 s; a
                    # session that dies at once never resets it (no hot loop)
                    assert all(
                        0.1 * 2**k <= d <= 2**k for k, d in enumerate(delays)
                    ), delays
        # every connection used a fresh token from the provider (the last one may have been
        # fetched for an attempt that close() ended before its IDENTIFY)
        assert server.tokens == tokens.issued[: len(server.tokens)]
        assert len(tokens.issued) - len(server.tokens) <= 1
        assert len(set(server.tokens)) == len(server.tokens)
        # no policy loses a reading: nothing was confirmed, everything is still queued
        assert (await box.stats()).depth == 5
    finally:
        await box.close()
    assert_no_secrets(log_lines(caplog), tokens.issued)


class FirstTokenBad:
    """Hands out a token the relay never minted first, then real ones from the relay."""

    def __init__(self, inner: RestToken) -> None:
        self.inner = RecordingTokens(inner)
        self.calls = 0

    async def get(self) -> str:
        self.calls += 1
        if self.calls == 1:
            return "forged-token-the-relay-never-minted"
        return await self.inner.get()


async def test_real_relay_4001_then_fresh_token_delivers(
    tmp_path: Path, api_key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sleep = RecordingSleep()
    async with inprocess_relay(tmp_path / "relay.sqlite3") as relay:
        box = await Outbox.open(tmp_path / "outbox.sqlite3")
        await box.append_durable([numbered(i) for i in range(20)])
        tokens = FirstTokenBad(
            RestToken(relay.url, USER_ID, DEV_ID, api_key_file=api_key_file, timeout_s=2.0)
        )
        uplink = Uplink(relay.ws_url, tokens, box, backoff=seeded_backoff(1), sleep=sleep,
                        barrier_spacing_s=0.02)
        async with running_briefly(uplink):
            await wait_until(uplink.wait_for, lambda: uplink.acked_id >= box.last_id)
            assert uplink.state.connections == 2
        await box.close()
        rows = await asyncio.to_thread(stored_rows, tmp_path / "relay.sqlite3")
    assert tokens.calls == 2 and len(sleep.delays) == 1
    assert sleep.delays[0] <= 1.0  # a single refusal is retried at once, with a new token
    assert [json.loads(r.d)["val"] for r in rows] == list(range(20))
    assert_no_secrets(log_lines(caplog), [API_KEY, *tokens.inner.issued])


async def test_real_relay_4002_older_connection_backs_off_to_the_maximum(
    tmp_path: Path,
) -> None:
    async with inprocess_relay(tmp_path / "relay.sqlite3") as relay:
        older_box = await Outbox.open(tmp_path / "older.sqlite3")
        newer_box = await Outbox.open(tmp_path / "newer.sqlite3")
        older_sleep, newer_sleep = RecordingSleep(), RecordingSleep()
        older_sleep.released.clear()  # hold the older one in its back-off
        older = Uplink(relay.ws_url, RelayTokens(relay), older_box, backoff=seeded_backoff(2),
                       sleep=older_sleep)
        newer = Uplink(relay.ws_url, RelayTokens(relay), newer_box, backoff=seeded_backoff(3),
                       sleep=newer_sleep, barrier_spacing_s=0.02)
        async with running_briefly(older):
            await wait_until(older.wait_for, lambda: older.state.state is ConnState.READY)
            async with running_briefly(newer):
                await older_sleep.calls(1)
                assert older.state.last_close_code == 4002
                assert older.state.state is ConnState.BACKOFF
                assert CAP_S / 2 <= older_sleep.delays[0] <= CAP_S
                # the newer connection is the one that stays and delivers
                await newer_box.append_durable([numbered(i) for i in range(10)])
                await wait_until(newer.wait_for, lambda: newer.acked_id >= newer_box.last_id)
                assert newer.state.state is ConnState.READY and newer_sleep.delays == []
            closer = asyncio.create_task(older.close(grace_s=0.1))
            older_sleep.released.set()
            await asyncio.wait_for(closer, WAIT_S)
        await older_box.close()
        await newer_box.close()


async def test_real_relay_1001_on_shutdown_reconnects_to_the_restarted_relay(
    tmp_path: Path,
) -> None:
    port = free_port()
    db = tmp_path / "relay.sqlite3"
    config = RelayConfig(port=port, db=db, developers={DEV_ID: API_KEY},
                         heartbeat_interval_ms=300, identify_timeout_s=5.0)
    sleep = RecordingSleep()
    box = await Outbox.open(tmp_path / "outbox.sqlite3")
    first = Relay(config)
    await first.start()
    uplink = Uplink(first.ws_url, RelayTokens(first), box, backoff=seeded_backoff(4),
                    sleep=sleep, barrier_spacing_s=0.02)
    try:
        async with running_briefly(uplink):
            await box.append_durable([numbered(i) for i in range(10)])
            await wait_until(uplink.wait_for, lambda: uplink.acked_id >= box.last_id)
            sleep.released.clear()
            await first.close()  # graceful: every connection gets 1001
            await sleep.calls(1)
            assert uplink.state.last_close_code == 1001
            assert sleep.delays[0] <= 1.0  # ordinary backoff, not the maximum
            await box.append_durable([numbered(i) for i in range(10, 20)])
            second = Relay(config)
            await second.start()
            uplink.tokens = RelayTokens(second)
            sleep.released.set()
            try:
                await wait_until(
                    uplink.wait_for,
                    lambda: uplink.state.connections == 2 and uplink.acked_id >= box.last_id,
                )
            finally:
                await uplink.close(grace_s=0.2)
                await second.close()
    finally:
        await first.close()
        await box.close()
    rows = await asyncio.to_thread(stored_rows, db)
    assert [json.loads(r.d)["val"] for r in rows] == list(range(20))
