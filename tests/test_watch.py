"""``agent watch`` against a real relay on loopback (in process, and the CLI as a subprocess).

What is checked is what a developer sees: every DISPATCH printed once and in order (readable or
JSON), ``--since`` filling the gap with REPLAY before live data, ``--replay-only`` exiting once
REPLAY is done, reconnection with a fresh token and the maximum backoff after 4002, heartbeats
(a server that stops ACKing is detected), and a clear exit status 78 for refused credentials.
Waits are on events (the watcher's READY through its Backoff, printed lines, closes), bounded by
:data:`WAIT_S`; backoff delays are injected tiny. The only idle wait is ``--replay-only``'s own
idle timeout (the protocol has no end-of-replay marker), set to 0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import urllib.error
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agent import protocol as p
from agent import watch
from agent.backoff import Backoff
from agent.relay.server import Relay, RelayConfig
from agent.watch import Watcher, WatchError, WatchOptions, endpoints, format_dispatch
from tests.relay.conftest import consumer as raw_consumer
from tests.relay.conftest import expect_close, heartbeat_roundtrip, producer
from tests.relay.conftest import submit as submit_text

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 10.0
DEV, KEY = "dev-w", "watch-key-0123456789abcdef"
TS = "2022-05-04T10:26:11.268507+01:00"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    config = RelayConfig(port=0, db=tmp_path / "relay.sqlite", developers={DEV: KEY},
                         heartbeat_interval_ms=2000, identify_timeout_s=2.0, token_ttl_s=60.0)
    async with Relay(config) as r:
        yield r


@dataclass
class SignalBackoff(Backoff):
    """Tiny delays, and events for what the watcher did (READY, which delay it chose)."""

    base_s: float = 0.001
    cap_s: float = 0.01
    readies: int = 0
    max_delays: int = 0
    next_delays: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def session_started(self, now: float) -> None:
        super().session_started(now)
        self.readies += 1
        self.ready.set()

    def next_delay(self) -> float:
        self.next_delays += 1
        return super().next_delay()

    def max_delay(self) -> float:
        self.max_delays += 1
        return super().max_delay()

    async def wait_ready(self, count: int = 1) -> None:
        async with asyncio.timeout(WAIT_S):
            while self.readies < count:
                self.ready.clear()
                await self.ready.wait()


class Lines:
    """The watcher's output; ``wait(n)`` returns once ``n`` lines were printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    async def wait(self, n: int) -> list[str]:
        async with asyncio.timeout(WAIT_S):
            while len(self.lines) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.lines

    def seqs(self) -> list[int]:
        return [json.loads(line)["seq"] for line in self.lines]


@dataclass
class RecordingWatcher(Watcher):
    """A watcher that remembers the tokens it minted (to check each connection got a fresh one)."""

    tokens: list[str] = field(default_factory=list)

    async def mint_token(self) -> str:
        token = await super().mint_token()
        self.tokens.append(token)
        return token


def options(relay: Relay, **kw: Any) -> WatchOptions:
    return WatchOptions(server=relay.url, dev_id=DEV, api_key=KEY, **kw)


def make_watcher(
    relay: Relay, out: Callable[[str], None], **kw: Any
) -> tuple[RecordingWatcher, SignalBackoff]:
    backoff = SignalBackoff(rng=lambda: 0.0)
    w = RecordingWatcher(options(relay, **kw), out=out, backoff=backoff, rng=lambda: 0.5)
    return w, backoff


async def finish(task: asyncio.Task[int]) -> int:
    async with asyncio.timeout(WAIT_S):
        return await task


async def stop(task: asyncio.Task[int]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def submit_all(relay: Relay, uid: str, texts: list[str]) -> None:
    """Submit and wait for the ACK, which proves every reading was stored and dispatched."""
    async with producer(relay, uid, DEV) as ws:
        for text in texts:
            await ws.send(text)
        await heartbeat_roundtrip(ws)


def hr(val: int) -> str:
    return submit_text(val, "HEART_RATE")


def write_key(path: Path, key: str = KEY) -> Path:
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("server", "rest", "ws"),
    [
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765", "ws://127.0.0.1:8765/connect"),
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765", "ws://127.0.0.1:8765/connect"),
        ("https://relay.example/base/", "https://relay.example/base",
         "wss://relay.example/base/connect"),
        ("wss://ws.tryterra.co/connect", "https://ws.tryterra.co", "wss://ws.tryterra.co/connect"),
        ("ws://[::1]:9/connect/", "http://[::1]:9", "ws://[::1]:9/connect"),
    ],
)
def test_endpoints(server: str, rest: str, ws: str) -> None:
    assert endpoints(server) == (rest, ws)


@pytest.mark.parametrize("server", ["ftp://x", "localhost:8765", "http://", ""])
def test_endpoints_refuse_non_urls(server: str) -> None:
    with pytest.raises(WatchError) as err:
        endpoints(server)
    assert err.value.status == 64 and "--server" in str(err.value)


def test_format_dispatch_scalar_and_vector() -> None:
    line = format_dispatch(p.Dispatch({"ts": TS, "val": 72}, "alice", 7, "HEART_RATE"))
    assert line.split() == ["#7", "alice", "HEART_RATE", TS, "72"]
    line = format_dispatch(
        p.Dispatch({"ts": TS, "d": [0.123456, -9.80665, 1]}, "bob", 12, "ACCELERATION")
    )
    assert line.startswith("#12 ") and line.endswith(f"{TS}  [0.1235, -9.807, 1]")


# ------------------------------------------------------------------------------ live


async def test_live_dispatches_are_printed_readably_in_order(relay: Relay) -> None:
    out = Lines()
    w, backoff = make_watcher(relay, out, max_messages=3)
    task = asyncio.create_task(w.run())
    await backoff.wait_ready()
    await submit_all(relay, "alice", [hr(72), submit_text(1.5, "ACCELERATION"),
                                      submit_text(1234, "STEPS")])
    assert await finish(task) == 0
    stored = await relay.dispatches(DEV)
    expected = [format_dispatch(p.Dispatch(json.loads(s.d), s.uid, s.seq, s.t)) for s in stored]
    assert out.lines == expected
    assert out.lines[0].split() == ["#1", "alice", "HEART_RATE", TS, "72"]
    assert out.lines[1].endswith("[1.5, 2.5, 3.5]")
    assert w.last_seq == 3 and w.received == 3


async def test_live_dispatches_as_json_are_the_frames(relay: Relay) -> None:
    out = Lines()
    w, backoff = make_watcher(relay, out, json_output=True, max_messages=4)
    task = asyncio.create_task(w.run())
    await backoff.wait_ready()
    await submit_all(relay, "alice", [hr(70), hr(71)])
    await submit_all(relay, "bob", [submit_text(0.5, "GYROSCOPE"), submit_text(2.25, "SPEED")])
    assert await finish(task) == 0
    frames = [json.loads(line) for line in out.lines]
    assert frames == [
        {"op": 5, "d": {"ts": TS, "val": 70}, "uid": "alice", "seq": 1, "t": "HEART_RATE"},
        {"op": 5, "d": {"ts": TS, "val": 71}, "uid": "alice", "seq": 2, "t": "HEART_RATE"},
        {"op": 5, "d": {"ts": TS, "d": [0.5, 1.5, 2.5]}, "uid": "bob", "seq": 3,
         "t": "GYROSCOPE"},
        {"op": 5, "d": {"ts": TS, "val": 2.25}, "uid": "bob", "seq": 4, "t": "SPEED"},
    ]
    assert all(line == json.dumps(json.loads(line), separators=(",", ":"))
               for line in out.lines)  # one compact object per line


# ------------------------------------------------------------------------------ REPLAY


async def test_since_fills_the_gap_with_replay_before_live(relay: Relay) -> None:
    await submit_all(relay, "alice", [hr(60 + i) for i in range(5)])  # seq 1..5, nobody watching
    out = Lines()
    w, backoff = make_watcher(relay, out, json_output=True, since=2, max_messages=5)
    task = asyncio.create_task(w.run())
    await out.wait(3)  # 3, 4, 5 from REPLAY
    assert out.seqs() == [3, 4, 5]
    await submit_all(relay, "alice", [hr(70), hr(71)])  # 6, 7 live
    assert await finish(task) == 0
    assert out.seqs() == [3, 4, 5, 6, 7]
    assert [json.loads(line)["d"]["val"] for line in out.lines] == [62, 63, 64, 70, 71]
    assert backoff.readies == 1


@pytest.mark.parametrize(("since", "before", "expected"),
                         [(1, None, [2, 3, 4, 5]), (1, 4, [2, 3]), (5, None, []), (0, 2, [1])])
async def test_replay_only_prints_what_replay_returns_and_exits(
    relay: Relay, since: int, before: int | None, expected: list[int]
) -> None:
    await submit_all(relay, "alice", [hr(60 + i) for i in range(5)])
    out = Lines()
    w, _ = make_watcher(relay, out, json_output=True, since=since, before=before,
                        replay_only=True, idle_timeout_s=0.2)
    assert await finish(asyncio.create_task(w.run())) == 0
    assert out.seqs() == expected


# ------------------------------------------------------------------------------ reconnects


async def test_reconnects_after_4002_with_max_backoff_fresh_token_and_replay(
    relay: Relay,
) -> None:
    out = Lines()
    w, backoff = make_watcher(relay, out, json_output=True)
    task = asyncio.create_task(w.run())
    try:
        await backoff.wait_ready()
        await submit_all(relay, "alice", [hr(61)])
        await out.wait(1)
        # Another consumer of the same developer: the relay closes the watcher (older) with 4002.
        async with raw_consumer(relay, DEV) as other:
            await submit_all(relay, "alice", [hr(62)])  # seq 2: the watcher may miss it live
            # The watcher backs off (tiny cap here), reconnects, and so closes ``other``.
            await expect_close(other, 4002)
        await backoff.wait_ready(2)
        await out.wait(2)  # (a live frame could overtake a replayed one: not tested here)
        await submit_all(relay, "alice", [hr(63)])
        await out.wait(3)
    finally:
        await stop(task)
    assert out.seqs() == [1, 2, 3]  # seq 2 came by REPLAY after=1 or live, printed once
    assert backoff.max_delays >= 1 and backoff.next_delays == 0  # 4002: straight to the max
    assert backoff.attempt >= 30
    assert len(w.tokens) == backoff.readies == 2 and len(set(w.tokens)) == 2


async def test_reconnects_after_relay_restart_and_replays_what_it_missed(
    tmp_path: Path,
) -> None:
    config = RelayConfig(port=0, db=tmp_path / "relay.sqlite", developers={DEV: KEY},
                         heartbeat_interval_ms=2000, token_ttl_s=60.0)
    out = Lines()
    async with Relay(config) as first:
        w, backoff = make_watcher(first, out, json_output=True)
        task = asyncio.create_task(w.run())
        try:
            await backoff.wait_ready()
            await submit_all(first, "alice", [hr(61), hr(62)])
            await out.wait(2)
            port = first.port
        except BaseException:
            await stop(task)
            raise
    # ``first`` closed every connection with 1001; the watcher now retries with backoff.
    try:
        async with Relay(dataclasses.replace(config, port=port)) as second:
            await submit_all(second, "alice", [hr(63)])  # seq 3, stored before or after it is back
            await backoff.wait_ready(2)
            await out.wait(3)  # seq 3 by REPLAY (or live), before seq 4 is even submitted
            await submit_all(second, "alice", [hr(64)])
            await out.wait(4)
            await stop(task)
    finally:
        if not task.done():
            await stop(task)
    assert out.seqs() == [1, 2, 3, 4]
    assert [json.loads(line)["d"]["val"] for line in out.lines] == [61, 62, 63, 64]
    assert backoff.next_delays >= 1 and backoff.max_delays == 0  # 1001: ordinary backoff
    assert len(set(w.tokens)) == len(w.tokens) >= 2  # a fresh token for every connection


@dataclass
class SilentServer:
    """A broker that answers HELLO/READY but never ACKs heartbeats (a half-open connection)."""

    interval_ms: int = 60
    frames: list[list[Any]] = field(default_factory=list)  # per connection, after IDENTIFY
    identifies: list[Any] = field(default_factory=list)
    connections: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    async def handler(self, ws: ServerConnection) -> None:
        index = len(self.frames)
        self.frames.append([])
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"op": 2, "d": {"heartbeat_interval": self.interval_ms}}))
            self.identifies.append(json.loads(await ws.recv()))
            await ws.send('{"op":4}')
            self.connections.put_nowait(index)
            async for message in ws:
                self.frames[index].append(json.loads(message))


async def test_unacknowledged_heartbeat_means_dead_connection_and_reconnect() -> None:
    server = SilentServer()
    async with serve(server.handler, "127.0.0.1", 0, ping_interval=None) as srv:
        port = srv.sockets[0].getsockname()[1]

        class FixedToken(Watcher):
            async def mint_token(self) -> str:
                return f"token-{len(server.frames)}"

        backoff = SignalBackoff(rng=lambda: 0.0)
        w = FixedToken(WatchOptions(f"http://127.0.0.1:{port}", DEV, KEY), out=print,
                       backoff=backoff, rng=lambda: 0.0)
        task = asyncio.create_task(w.run())
        try:
            async with asyncio.timeout(WAIT_S):
                assert await server.connections.get() == 0
                assert await server.connections.get() == 1  # it gave up on the first one
        finally:
            await stop(task)
    beats = server.frames[0]
    assert beats and all(f == {"op": 0} for f in beats)  # it did beat; the beats went un-ACKed
    assert server.identifies[:2] == [{"op": 3, "d": {"token": "token-0", "type": 1}},
                                     {"op": 3, "d": {"token": "token-1", "type": 1}}]
    assert backoff.next_delays >= 1  # a network-style loss: ordinary backoff, not the max
    assert backoff.max_delays == 0


def http_errors(exc: BaseException | None) -> list[urllib.error.HTTPError]:
    """HTTPErrors in an exception's cause/context chain."""
    found = []
    while exc is not None:
        if isinstance(exc, urllib.error.HTTPError):
            found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


async def refused_run(relay: Relay) -> WatchError:
    w = Watcher(WatchOptions(relay.url, DEV, "wrong-key"), out=print,
                backoff=SignalBackoff(rng=lambda: 0.0))
    with pytest.raises(WatchError) as err:
        await finish(asyncio.create_task(w.run()))
    return err.value


async def test_bad_credentials_end_with_status_78(relay: Relay) -> None:
    error = await refused_run(relay)
    assert error.status == 78 == watch.EX_CONFIG
    message = str(error)
    assert "403" in message and "--api-key-file" in message and "wrong-key" not in message
    assert all(e.closed for e in http_errors(error))


async def test_refused_token_request_leaves_no_open_socket(relay: Relay) -> None:
    error = await refused_run(relay)
    leaked = [e for e in http_errors(error) if not e.closed]
    assert leaked == []


# ------------------------------------------------------------------------------ command line


async def run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "watch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )


async def test_cli_json_count_prints_replay_then_live(relay: Relay, tmp_path: Path) -> None:
    await submit_all(relay, "alice", [hr(60), hr(61)])
    proc = await run_cli("--server", relay.url, "--dev-id", DEV,
                         "--api-key-file", str(write_key(tmp_path / "dev.key")),
                         "--json", "--count", "3", "--since", "0")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(WAIT_S):
            first = [json.loads(await proc.stdout.readline()) for _ in range(2)]
            await submit_all(relay, "bob", [submit_text(3.0, "DISTANCE")])
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    frames = first + [json.loads(line) for line in rest.decode().splitlines()]
    assert [(f["seq"], f["uid"], f["t"]) for f in frames] == [
        (1, "alice", "HEART_RATE"), (2, "alice", "HEART_RATE"), (3, "bob", "DISTANCE")]
    assert frames[2] == {"op": 5, "d": {"ts": TS, "val": 3.0}, "uid": "bob", "seq": 3,
                         "t": "DISTANCE"}


async def test_cli_refused_credentials_exit_78(relay: Relay, tmp_path: Path) -> None:
    proc = await run_cli("--server", relay.url, "--dev-id", DEV,
                         "--api-key-file", str(write_key(tmp_path / "bad.key", "not-the-key")))
    async with asyncio.timeout(WAIT_S):
        out, err = await proc.communicate()
    assert proc.returncode == 78
    assert out == b""
    assert b"refused the credentials (HTTP 403)" in err and b"--api-key-file" in err
    assert b"not-the-key" not in err
    assert b"Traceback" not in err


async def test_cli_replay_only_needs_since(tmp_path: Path) -> None:
    proc = await run_cli("--dev-id", DEV, "--api-key-file", str(write_key(tmp_path / "k")),
                         "--replay-only")
    async with asyncio.timeout(WAIT_S):
        _, err = await proc.communicate()
    assert proc.returncode == 64 and b"--replay-only needs --since" in err


def test_watermark_moves_only_when_the_sentinel_proves_the_gap_replayed() -> None:
    w = watch.Watcher(watch.WatchOptions(server="http://127.0.0.1:1", dev_id="d", api_key="k"))
    for seq in (1, 2, 3):  # first connection, no gap: live frames move the watermark
        assert w._accept(seq) == (True, None)
    assert w.last_seq == 3
    # reconnect: gap REPLAY after 3, then a sentinel asking for seq 3 again
    assert w._replay_requests() == [(3, watch.OPEN_UPPER_BOUND), (2, 4)]
    assert w._accept(9) == (True, None)  # a live frame overtakes the replay
    assert w._accept(4) == (True, None)  # replayed
    assert w.last_seq == 3  # 5..8 not proven yet
    for seq in (5, 6, 7, 8):
        w._accept(seq)
    assert w._accept(3) == (False, None)  # the sentinel: the gap REPLAY is complete
    assert w.last_seq == 9 and not w.filling_gap


def test_without_a_known_seq_the_first_frame_becomes_the_sentinel() -> None:
    w = watch.Watcher(watch.WatchOptions(server="http://127.0.0.1:1", dev_id="d", api_key="k",
                                         since=10))
    w.last_seq = 10
    assert w._replay_requests() == [(10, watch.OPEN_UPPER_BOUND)]
    assert w._accept(11) == (True, (10, 12))
    assert w._accept(12) == (True, None)
    assert w.last_seq == 10
    assert w._accept(11) == (False, None)
    assert w.last_seq == 12
