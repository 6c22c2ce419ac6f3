"""Conformance of ``agent relay`` with the Terra Streaming Protocol, over real sockets.

Why this file exists: issue 2 is judged by "a producer and a consumer written only from the
protocol reference, not from our code". So the clients below know nothing of ``agent.*``: they are
a raw ``websockets`` client, ``json`` and ``urllib`` written from
``shared/seed/000_471d17202329a3f5.txt`` and ``shared/protocol/NOTES.md`` alone, and the relay runs
as a real ``python -m agent relay`` subprocess, exactly as a user would start it.

One relay serves the module (starting a subprocess costs ~0.3 s); tests isolate themselves by
unique user ids, and only the restart test runs its own relay. The relay is started with a short
heartbeat interval (300 ms) and identify timeout (0.5 s) so the timeout rules are observed
quickly; the clients therefore heartbeat every interval / 3 (the reference only asks for at
least one beat per interval). No test sleeps to let things happen: every wait is on a frame or a
close, bounded by :data:`WAIT_S` as a safety net.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

ROOT = Path(__file__).resolve().parents[2]
#: Safety net for every wait (never a delay that lets things happen).
WAIT_S = 10.0
HEARTBEAT_MS = 300
IDENTIFY_TIMEOUT_S = 0.5
DEV, KEY = "dev1", "conformance-key-dev1-0123456789"
DEV2, KEY2 = "dev2", "conformance-key-dev2-9876543210"
TS = "2022-05-04T10:26:11.268507+01:00"
#: Upper REPLAY bound meaning "everything" (the reference says: always send both bounds).
FAR = 2**53

# The reference's opcodes and identify types, spelled out here on purpose (no agent imports).
HEARTBEAT, HEARTBEAT_ACK, HELLO, IDENTIFY, READY, DISPATCH, SUBMIT, REPLAY = range(8)
USER, DEVELOPER = 0, 1

_uids = itertools.count(1)


def new_uid() -> str:
    """A user id no other test uses (the module shares one relay and one developer)."""
    return f"user-{os.getpid()}-{next(_uids)}"


# ------------------------------------------------------------------------------ relay process


@dataclass
class RelayProcess:
    """A running ``agent relay`` subprocess."""

    proc: subprocess.Popen[bytes]
    http: str
    log: Path

    @property
    def ws(self) -> str:
        return "ws" + self.http.removeprefix("http") + "/connect"

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def write_key(path: Path, key: str) -> Path:
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def start_relay(workdir: Path, db: Path, log_name: str = "relay.log") -> RelayProcess:
    """Start ``python -m agent relay --port 0`` and read its address from the first line."""
    k1 = write_key(workdir / "dev1.key", KEY)
    k2 = write_key(workdir / "dev2.key", KEY2)
    log = workdir / log_name
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "relay", "--port", "0", "--db", str(db),
             "--dev-id", DEV, "--api-key-file", str(k1),
             "--dev-id", DEV2, "--api-key-file", str(k2),
             "--heartbeat-interval", str(HEARTBEAT_MS),
             "--identify-timeout", str(IDENTIFY_TIMEOUT_S)],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert proc.stdout is not None
    first = proc.stdout.readline().decode()  # the relay prints it (flushed) once bound
    prefix = "relay listening on "
    if not first.startswith(prefix):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        pytest.fail(f"relay did not start: {first!r}\n{log.read_text()}")
    return RelayProcess(proc, first[len(prefix):].strip(), log)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    workdir = tmp_path_factory.mktemp("conformance")
    r = start_relay(workdir, workdir / "relay.sqlite")
    try:
        yield r
    finally:
        status = r.stop()
    log = r.log.read_text()
    assert status == 0, log
    assert "Traceback" not in log, log  # never a crash on any input


# ------------------------------------------------------------------------------ token endpoints


def _post(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


async def post(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    return await asyncio.to_thread(_post, url, headers)


async def user_token(relay: RelayProcess, uid: str, dev: str = DEV, key: str = KEY) -> str:
    status, body = await post(f"{relay.http}/auth/user?id={uid}",
                              {"dev-id": dev, "x-api-key": key})
    assert status == 200, body
    token = json.loads(body)["token"]
    assert isinstance(token, str) and token
    return token


async def developer_token(relay: RelayProcess, dev: str = DEV, key: str = KEY) -> str:
    status, body = await post(f"{relay.http}/auth/developer", {"dev-id": dev, "x-api-key": key})
    assert status == 200, body
    token = json.loads(body)["token"]
    assert isinstance(token, str) and token
    return token


# ------------------------------------------------------------------------------ the clients


@dataclass(eq=False)
class Client:
    """One connection: a reader task sorts frames (ACKs apart), an optional heartbeat task."""

    ws: ClientConnection
    name: str = "client"
    frames: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    acks: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._read()))

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                frame = json.loads(message)
                assert isinstance(frame, dict), frame
                if frame.get("op") == HEARTBEAT_ACK:
                    self.acks.put_nowait(frame)
                else:
                    self.frames.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def start_heartbeats(self, interval_ms: int) -> None:
        self.tasks.append(asyncio.create_task(self._beat(interval_ms / 1000.0 / 3)))

    async def _beat(self, period_s: float) -> None:
        with suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(period_s)  # the client's own protocol timer
                await self.ws.send(json.dumps({"op": HEARTBEAT}))

    async def send(self, obj: Any) -> None:
        await self.ws.send(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    async def frame(self) -> dict[str, Any]:
        """Next non-ACK frame (fails instead of hanging)."""
        async with asyncio.timeout(WAIT_S):
            return await self.frames.get()

    async def ack(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            return await self.acks.get()

    async def dispatches(self, n: int, uid: str | None = None) -> list[dict[str, Any]]:
        """The next ``n`` DISPATCH frames (of ``uid`` if given; others are skipped)."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            f = await self.frame()
            assert f["op"] == DISPATCH, f
            if uid is None or f["uid"] == uid:
                out.append(f)
        return out

    async def close_code(self) -> int | None:
        """Wait until the relay closed the connection; the code it sent."""
        async with asyncio.timeout(WAIT_S):
            await self.closed.wait()
        return self.ws.close_code

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with suppress(asyncio.CancelledError):
                await t


@asynccontextmanager
async def connection(relay: RelayProcess, name: str = "client") -> AsyncIterator[Client]:
    """A connection whose first frame (HELLO, checked) has been read; nothing sent yet."""
    # max_queue=None: never stop reading the socket (tests read frames at their own pace).
    async with connect(relay.ws, open_timeout=WAIT_S, close_timeout=2, ping_interval=None,
                       max_size=None, max_queue=None) as ws:
        client = Client(ws, name)
        client.start()
        try:
            hello = await client.frame()
            assert hello == {"op": HELLO, "d": {"heartbeat_interval": HEARTBEAT_MS}}
            yield client
        finally:
            await client.stop()


async def identify(client: Client, token: str, kind: int, heartbeat: bool = True) -> None:
    await client.send({"op": IDENTIFY, "d": {"token": token, "type": kind}})
    assert await client.frame() == {"op": READY}
    if heartbeat:
        client.start_heartbeats(HEARTBEAT_MS)


@asynccontextmanager
async def producer(
    relay: RelayProcess, uid: str, *, dev: str = DEV, key: str = KEY, heartbeat: bool = True
) -> AsyncIterator[Client]:
    token = await user_token(relay, uid, dev, key)
    async with connection(relay, f"producer {uid}") as c:
        await identify(c, token, USER, heartbeat)
        yield c


@asynccontextmanager
async def consumer(
    relay: RelayProcess, *, dev: str = DEV, key: str = KEY, heartbeat: bool = True
) -> AsyncIterator[Client]:
    token = await developer_token(relay, dev, key)
    async with connection(relay, f"consumer {dev}") as c:
        await identify(c, token, DEVELOPER, heartbeat)
        yield c


def reading(t: str, i: int) -> dict[str, Any]:
    """A SUBMIT ``d`` of type ``t`` (vector types carry the inner ``d``)."""
    ts = f"2022-05-04T10:26:{i % 60:02d}.{i:06d}+01:00"
    if t in ("ACCELERATION", "GYROSCOPE"):
        return {"ts": ts, "d": [0.5 + i, -1.25, 9.80665]}
    return {"ts": ts, "val": 60 + i if t in ("HEART_RATE", "STEPS") else 1.5 + i}


def submit(t: str, d: dict[str, Any]) -> dict[str, Any]:
    return {"op": SUBMIT, "d": d, "t": t}


async def roundtrip(c: Client) -> None:
    """HEARTBEAT and its ACK: everything sent before it has been handled."""
    await c.send({"op": HEARTBEAT})
    assert await c.ack() == {"op": HEARTBEAT_ACK}


def canonical(obj: Any) -> str:
    """JSON text that tells 95 from 95.0 (``==`` would not): "as submitted" means the same value."""
    return json.dumps(obj, sort_keys=True)


DATA_TYPES = ("HEART_RATE", "STEPS", "DISTANCE", "FLOORS_CLIMBED", "STEPS_CADENCE", "SPEED",
              "ACCELERATION", "GYROSCOPE")


# ------------------------------------------------------------------------------ HTTP


async def test_token_endpoints_mint_distinct_tokens(relay: RelayProcess) -> None:
    uid = new_uid()
    a = await user_token(relay, uid)
    b = await user_token(relay, uid)
    c = await developer_token(relay)
    assert len({a, b, c}) == 3


@pytest.mark.parametrize("path", ["/auth/user?id=someone", "/auth/developer"])
@pytest.mark.parametrize(
    "headers",
    [
        {"dev-id": DEV, "x-api-key": "wrong"},
        {"dev-id": "nobody", "x-api-key": KEY},
        {"dev-id": DEV2, "x-api-key": KEY},  # another developer's key
        {"dev-id": DEV},
        {"x-api-key": KEY},
        {},
    ],
    ids=["bad-key", "unknown-dev", "other-devs-key", "no-key", "no-dev-id", "no-headers"],
)
async def test_bad_credentials_get_403_with_empty_body(
    relay: RelayProcess, path: str, headers: dict[str, str]
) -> None:
    assert await post(relay.http + path, headers) == (403, b"")


def test_health_endpoint(relay: RelayProcess) -> None:
    with urllib.request.urlopen(relay.http + "/health", timeout=WAIT_S) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["status"] == "ok"


# ------------------------------------------------------------------------------ handshake


async def test_hello_is_sent_first_then_identify_gives_ready(relay: RelayProcess) -> None:
    token = await developer_token(relay)
    async with connection(relay) as c:  # HELLO checked before anything is sent
        await c.send({"op": IDENTIFY, "d": {"token": token, "type": DEVELOPER}})
        assert await c.frame() == {"op": READY}
        await roundtrip(c)


async def test_producer_handshake_and_heartbeat_ack(relay: RelayProcess) -> None:
    async with producer(relay, new_uid(), heartbeat=False) as c:
        for _ in range(3):
            await roundtrip(c)


async def test_token_is_single_use(relay: RelayProcess) -> None:
    token = await user_token(relay, new_uid())
    async with connection(relay) as first:
        await identify(first, token, USER)
        async with connection(relay) as second:
            await second.send({"op": IDENTIFY, "d": {"token": token, "type": USER}})
            assert await second.close_code() == 4001
        await roundtrip(first)  # the first connection is unaffected


async def test_developer_token_is_single_use(relay: RelayProcess) -> None:
    token = await developer_token(relay)
    async with connection(relay) as first:
        await identify(first, token, DEVELOPER)
    async with connection(relay) as second:
        await second.send({"op": IDENTIFY, "d": {"token": token, "type": DEVELOPER}})
        assert await second.close_code() == 4001


@pytest.mark.parametrize("case", ["made-up", "user-token-as-consumer", "dev-token-as-producer"])
async def test_improper_token_closes_4001(relay: RelayProcess, case: str) -> None:
    if case == "made-up":
        token, kind = "not-a-token", USER
    elif case == "user-token-as-consumer":
        token, kind = await user_token(relay, new_uid()), DEVELOPER
    else:
        token, kind = await developer_token(relay), USER
    async with connection(relay) as c:
        await c.send({"op": IDENTIFY, "d": {"token": token, "type": kind}})
        assert await c.close_code() == 4001


async def test_no_identify_closes_4000(relay: RelayProcess) -> None:
    # The client keeps heartbeating (so only the IDENTIFY rule can apply) but never identifies.
    async with connection(relay) as c:
        c.start_heartbeats(HEARTBEAT_MS)
        assert await c.close_code() == 4000


async def test_silent_client_closes_4000(relay: RelayProcess) -> None:
    # Nothing sent at all. The identify timeout (0.5 s) is longer than the heartbeat window
    # (0.3 s + leeway) here: the missing IDENTIFY is still what the relay must report.
    async with connection(relay) as c:
        assert await c.close_code() == 4000


async def test_second_identify_closes_4003(relay: RelayProcess) -> None:
    token2 = await user_token(relay, new_uid())
    async with producer(relay, new_uid()) as c:
        await c.send({"op": IDENTIFY, "d": {"token": token2, "type": USER}})
        assert await c.close_code() == 4003


@pytest.mark.parametrize("kind", [USER, DEVELOPER])
async def test_missing_heartbeats_close_4005(relay: RelayProcess, kind: int) -> None:
    if kind == USER:
        ctx = producer(relay, new_uid(), heartbeat=False)
    else:
        ctx = consumer(relay, dev=DEV2, key=KEY2, heartbeat=False)
    async with ctx as c:
        assert await c.close_code() == 4005


# ------------------------------------------------------------------------------ bad frames


@pytest.mark.parametrize(
    "frame",
    [
        {"op": HEARTBEAT_ACK},
        {"op": HELLO, "d": {"heartbeat_interval": 40000}},
        {"op": READY},
        {"op": DISPATCH, "d": {"ts": TS, "val": 1}, "uid": "u", "seq": 1, "t": "HEART_RATE"},
        {"op": 8},
        {"op": 99, "d": {}},
        {"op": 12345},
    ],
    ids=["ack", "hello", "ready", "dispatch", "8", "99", "12345"],
)
async def test_unknown_or_server_opcode_closes_4004(
    relay: RelayProcess, frame: dict[str, Any]
) -> None:
    async with producer(relay, new_uid()) as c:
        await c.send(frame)
        assert await c.close_code() == 4004


async def test_submit_from_consumer_closes_4004(relay: RelayProcess) -> None:
    async with consumer(relay, dev=DEV2, key=KEY2) as c:
        await c.send(submit("HEART_RATE", {"ts": TS, "val": 70}))
        assert await c.close_code() == 4004


async def test_replay_from_producer_closes_4004(relay: RelayProcess) -> None:
    async with producer(relay, new_uid()) as c:
        await c.send({"op": REPLAY, "d": {"after": 0, "before": FAR}})
        assert await c.close_code() == 4004


async def test_submit_before_ready_closes_4004(relay: RelayProcess) -> None:
    async with connection(relay) as c:
        await c.send(submit("HEART_RATE", {"ts": TS, "val": 70}))
        assert await c.close_code() == 4004


@pytest.mark.parametrize(
    "text",
    ["not json", "{", "[1, 2]", '"op"', "42", "null", '{"op": "0"}', '{"d": {}}',
     '{"op": 3, "d": "token"}', b"\xff\xfe"],
    ids=["text", "truncated", "array", "string", "number", "null", "op-string", "no-op",
         "d-string", "binary-not-utf8"],
)
async def test_invalid_json_closes_1007(relay: RelayProcess, text: str | bytes) -> None:
    async with producer(relay, new_uid()) as c:
        await c.send(text)
        assert await c.close_code() == 1007


@pytest.mark.parametrize(
    "frame",
    [
        submit("BLOOD_PRESSURE", {"ts": TS, "val": 120}),
        submit("HEART_RATE", {"ts": TS, "val": "72"}),
        submit("HEART_RATE", {"ts": "2022-05-04T10:26:11", "val": 72}),
        submit("HEART_RATE", {"ts": "yesterday", "val": 72}),
        submit("ACCELERATION", {"ts": TS, "d": [1.0, 2.0]}),
        submit("GYROSCOPE", {"ts": TS, "d": [1.0, "2", 3.0]}),
        submit("ACCELERATION", {"ts": TS, "val": 1.0}),
        {"op": SUBMIT, "d": {"ts": TS, "val": 72}},
    ],
    ids=["unknown-type", "val-string", "ts-no-offset", "ts-garbage", "vector-2",
         "vector-string", "vector-as-scalar", "no-type"],
)
async def test_invalid_submit_is_refused_and_never_dispatched(
    relay: RelayProcess, frame: dict[str, Any]
) -> None:
    uid = new_uid()
    async with (
        consumer(relay, dev=DEV2, key=KEY2) as watch,
        producer(relay, uid, dev=DEV2, key=KEY2) as c,
    ):
        await c.send(frame)
        code = await c.close_code()
        assert code == 1007, code
        # the next valid reading of another user is the first thing the consumer sees
        async with producer(relay, new_uid(), dev=DEV2, key=KEY2) as ok:
            await ok.send(submit("HEART_RATE", {"ts": TS, "val": 61}))
            (first,) = await watch.dispatches(1)
        assert first["uid"] != uid


async def test_oversized_frame_closes_1009(relay: RelayProcess) -> None:
    # Not in the reference (it documents no size limit); our relay caps frames at 64 KiB.
    async with producer(relay, new_uid()) as c:
        await c.send(submit("HEART_RATE", {"ts": TS, "val": 1, "pad": "x" * 70_000}))
        assert await c.close_code() == 1009


# ------------------------------------------------------------------------------ dispatch


async def test_dispatch_is_exactly_as_submitted_in_order(relay: RelayProcess) -> None:
    uid = new_uid()
    sent = [(t, reading(t, i)) for i, t in enumerate(DATA_TYPES * 3)]
    async with consumer(relay) as watch, producer(relay, uid) as prod:
        for t, d in sent:
            await prod.send(submit(t, d))
        got = await watch.dispatches(len(sent), uid)
    seqs = [f["seq"] for f in got]
    assert all(isinstance(s, int) for s in seqs)
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
    for f, (t, d), seq in zip(got, sent, seqs, strict=True):
        assert canonical(f) == canonical({"op": DISPATCH, "d": d, "uid": uid, "seq": seq, "t": t})


async def test_seq_increases_across_users_and_streams_are_per_developer(
    relay: RelayProcess,
) -> None:
    u1, u2, other = new_uid(), new_uid(), new_uid()
    async with (
        consumer(relay) as watch,
        consumer(relay, dev=DEV2, key=KEY2) as watch2,
        producer(relay, u1) as p1,
        producer(relay, u2) as p2,
        producer(relay, other, dev=DEV2, key=KEY2) as p3,
    ):
        order = []
        for i in range(6):
            prod, uid = (p1, u1) if i % 2 == 0 else (p2, u2)
            await prod.send(submit("HEART_RATE", reading("HEART_RATE", i)))
            await roundtrip(prod)  # orders the two connections' frames
            order.append((uid, i))
        await p3.send(submit("STEPS", reading("STEPS", 7)))
        got = await watch.dispatches(6)
        (dev2_first,) = await watch2.dispatches(1)
    assert [(f["uid"], f["d"]["val"] - 60) for f in got] == order
    assert all(a["seq"] < b["seq"] for a, b in itertools.pairwise(got))
    assert dev2_first["uid"] == other and dev2_first["t"] == "STEPS"


class RawConnection:
    """A blocking, sans-I/O websocket client on a plain socket (for the ACK-ordering test).

    Why not the asyncio client: there the order in which one event loop services two sockets
    that are both readable is arbitrary, so "the consumer had every DISPATCH when the producer
    got its ACK" cannot be observed. With a plain socket it can: loopback TCP puts bytes in the
    receiver's kernel buffer during the sender's write, so every frame the relay wrote to the
    consumer before it wrote the ACK can be read from the consumer socket without waiting.
    """

    def __init__(self, url: str) -> None:
        uri = parse_uri(url)
        self.sock = socket.create_connection((uri.host, uri.port), timeout=WAIT_S)
        self.proto = ClientProtocol(uri, max_size=None)
        self.proto.send_request(self.proto.connect())
        self._flush()
        self.pending: list[dict[str, Any]] = []
        while self.proto.state is not State.OPEN:
            self._feed(self.sock.recv(65536))
            assert self.proto.handshake_exc is None, self.proto.handshake_exc

    def _flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def _feed(self, data: bytes) -> None:
        assert data, "relay closed the connection"
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.pending.append(json.loads(bytes(event.data)))
        self._flush()

    def send(self, obj: Any) -> None:
        self.proto.send_text(json.dumps(obj).encode())
        self._flush()

    def recv(self) -> dict[str, Any]:
        """Next frame, blocking (bounded by the socket timeout)."""
        while not self.pending:
            self._feed(self.sock.recv(65536))
        return self.pending.pop(0)

    def recv_buffered(self) -> list[dict[str, Any]]:
        """Every frame already in the kernel's receive buffer, without waiting for more."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except BlockingIOError:
                    break
                self._feed(data)
        finally:
            self.sock.settimeout(WAIT_S)
        frames, self.pending = self.pending, []
        return frames

    def handshake(self, token: str, kind: int) -> None:
        assert self.recv() == {"op": HELLO, "d": {"heartbeat_interval": HEARTBEAT_MS}}
        self.send({"op": IDENTIFY, "d": {"token": token, "type": kind}})
        assert self.recv() == {"op": READY}

    def close(self) -> None:
        self.sock.close()


def _mint(relay: RelayProcess, path: str) -> str:
    status, body = _post(relay.http + path, {"dev-id": DEV, "x-api-key": KEY})
    assert status == 200, body
    token = json.loads(body)["token"]
    assert isinstance(token, str)
    return token


@pytest.mark.parametrize("n", [1, 50, 300])
def test_heartbeat_ack_only_after_earlier_submits_were_dispatched(
    relay: RelayProcess, n: int
) -> None:
    uid = new_uid()
    watch = RawConnection(relay.ws)
    prod = RawConnection(relay.ws)
    try:
        watch.handshake(_mint(relay, "/auth/developer"), DEVELOPER)
        prod.handshake(_mint(relay, f"/auth/user?id={uid}"), USER)
        watch.send({"op": HEARTBEAT})  # keeps the consumer alive through the test
        for i in range(n):
            prod.send(submit("HEART_RATE", reading("HEART_RATE", i)))
        prod.send({"op": HEARTBEAT})
        assert prod.recv() == {"op": HEARTBEAT_ACK}
        arrived = watch.recv_buffered()  # read only after the ACK, and without waiting
    finally:
        watch.close()
        prod.close()
    dispatches = [f for f in arrived if f["op"] == DISPATCH and f["uid"] == uid]
    assert [f["d"]["val"] for f in dispatches] == [60 + i for i in range(n)]


# ------------------------------------------------------------------------------ REPLAY


async def replay_window(c: Client, after: int, before: int, sentinel: int) -> list[int]:
    """Seqs REPLAY returns for ``(after, before)``.

    The protocol has no end-of-replay marker, so a second REPLAY for exactly ``sentinel`` follows;
    everything before the sentinel's frame is the first REPLAY's answer.
    """
    await c.send({"op": REPLAY, "d": {"after": after, "before": before}})
    await c.send({"op": REPLAY, "d": {"after": sentinel - 1, "before": sentinel + 1}})
    seqs: list[int] = []
    while True:
        f = await c.frame()
        assert f["op"] == DISPATCH, f
        if f["seq"] == sentinel:
            return seqs
        seqs.append(f["seq"])


async def test_replay_bounds_are_exclusive_and_frames_identical(relay: RelayProcess) -> None:
    uid = new_uid()
    async with consumer(relay) as watch, producer(relay, uid) as prod:
        for i in range(8):
            await prod.send(submit("SPEED", reading("SPEED", i)))
        live = await watch.dispatches(8, uid)
    s = [f["seq"] for f in live]
    by_seq = {f["seq"]: f for f in live}
    async with consumer(relay) as c:
        assert await replay_window(c, s[1], s[5], s[7]) == s[2:5]
        assert await replay_window(c, s[6], FAR, s[0]) == s[7:]
        assert await replay_window(c, s[2], s[3], s[0]) == []  # adjacent: nothing in between
        assert await replay_window(c, s[4], s[4], s[0]) == []
        assert await replay_window(c, s[7], FAR, s[0]) == []  # nothing after the last
        # replayed frames are ordinary op 5 frames, identical to the live ones
        await c.send({"op": REPLAY, "d": {"after": s[0] - 1, "before": s[7] + 1}})
        again = await c.dispatches(8)
    assert [canonical(f) for f in again] == [canonical(by_seq[x]) for x in s]


# ------------------------------------------------------------------------------ duplicates


async def test_second_producer_for_same_user_closes_the_older_4002(relay: RelayProcess) -> None:
    uid, other = new_uid(), new_uid()
    async with (
        consumer(relay) as watch,
        producer(relay, uid) as old,
        producer(relay, other) as bystander,
        producer(relay, uid) as new,  # opened last: the newer connection for ``uid``
    ):
        assert await old.close_code() == 4002
        await new.send(submit("HEART_RATE", reading("HEART_RATE", 1)))
        (f,) = await watch.dispatches(1, uid)
        assert f["uid"] == uid
        await roundtrip(bystander)  # another user of the developer is not affected
        assert not bystander.closed.is_set()


async def test_second_consumer_for_same_developer_closes_the_older_4002(
    relay: RelayProcess,
) -> None:
    uid = new_uid()
    async with (
        consumer(relay) as old,
        consumer(relay, dev=DEV2, key=KEY2) as other_dev,
        consumer(relay) as new,  # opened last: the newer consumer of DEV
        producer(relay, uid) as prod,
    ):
        assert await old.close_code() == 4002
        await prod.send(submit("HEART_RATE", reading("HEART_RATE", 2)))
        (f,) = await new.dispatches(1, uid)
        assert f["uid"] == uid
        await roundtrip(other_dev)  # another developer's consumer is not affected
        assert not other_dev.closed.is_set()


# ------------------------------------------------------------------------------ restart


async def test_restart_closes_1001_then_seq_continues_and_replay_survives(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.sqlite"
    first = start_relay(tmp_path, db, "first.log")
    uid = new_uid()
    try:
        async with consumer(first) as watch, producer(first, uid) as prod:
            for i in range(5):
                await prod.send(submit("HEART_RATE", reading("HEART_RATE", i)))
            before = await watch.dispatches(5, uid)
            status = await asyncio.to_thread(first.stop)
            assert await prod.close_code() == 1001
            assert await watch.close_code() == 1001
        assert status == 0
    finally:
        first.stop()
    second = start_relay(tmp_path, db, "second.log")
    try:
        async with consumer(second) as watch, producer(second, uid) as prod:
            for i in range(5, 8):
                await prod.send(submit("HEART_RATE", reading("HEART_RATE", i)))
            after = await watch.dispatches(3, uid)
            old = [f["seq"] for f in before]
            new = [f["seq"] for f in after]
            assert all(a < b for a, b in itertools.pairwise(old + new)), (old, new)
            # REPLAY still returns the dispatches of the first run, unchanged
            assert await replay_window(watch, 0, old[-1] + 1, new[0]) == old
            await watch.send({"op": REPLAY, "d": {"after": 0, "before": old[-1] + 1}})
            replayed = await watch.dispatches(5)
        assert [canonical(f) for f in replayed] == [canonical(f) for f in before]
    finally:
        assert second.stop() == 0
    for name in ("first.log", "second.log"):
        assert "Traceback" not in (tmp_path / name).read_text()

