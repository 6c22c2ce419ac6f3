"""The relay: Terra Streaming Protocol server (websocket ``/connect`` + token HTTP, one port).

Theory of operation
-------------------
This module only pumps data. Protocol rules live in :class:`agent.protocol.ServerSession`
(one per connection), credentials and tokens in :mod:`agent.relay.auth`, storage in
:mod:`agent.relay.store`. What is decided here is scheduling:

* **One reader per connection.** Frames of a connection are handled strictly in order by its
  handler task. A SUBMIT is validated by the session and appended to the relay-wide *pending
  batch* without waiting.
* **One batch writer for the relay.** It swaps the pending batch out, stores it in one SQLite
  transaction in a worker thread (assigning per-developer ``seq`` in arrival order), then puts
  the DISPATCH texts on the consumers' send queues, then resolves the batch's future. While a
  batch is on disk the next one accumulates, so batch size adapts to load and the event loop
  never waits on disk.
* **ACK after store and dispatch.** A producer's HEARTBEAT_ACK is queued behind the future of
  the batch that holds that connection's latest SUBMIT. The future resolves once the batch is
  committed and its DISPATCHes have been written to every connected consumer's socket (or that
  consumer was cut off, see below), so the ACK proves both storage and delivery to live
  consumers. ACKs of one connection leave in order. If storing fails, the waiting ACKs are never
  sent and the producer is closed with 1011: it keeps and resends what was not acknowledged.
* **Backpressure.** A producer whose SUBMIT makes the pending batch reach
  ``max_pending_submits`` stops reading until the writer has taken that batch (at most one
  batch on disk and one filling: double buffering), so a fast producer is slowed by TCP flow
  control instead of growing the relay's memory.
* **Slow consumers** get bounded flow control, then are cut off. Each consumer has a send
  queue of at most ``consumer_queue_frames`` frames. When a batch leaves a consumer's queue
  more than half full, the batch writer waits (up to ``consumer_stall_s``) for it to drain
  below half before storing the next batch, so a consumer that is merely a little slower than
  a producer draining a backlog slows that producer down (through the pending-batch limit)
  instead of losing the stream. A consumer that does not drain in time, or whose queue would
  overflow, is closed with **1008** (policy violation, "reconnect and REPLAY"); everything is
  stored, so it reconnects and REPLAYs after the last seq it received. A stalled consumer
  therefore delays producers (of every developer: there is one writer) by at most
  ``consumer_stall_s`` once. ``max_pending_submits`` may be at most half the queue size, so
  one batch never overflows a queue that was below half. ``send_buffer_bytes`` optionally
  fixes SO_SNDBUF so the kernel does not absorb megabytes for a stalled reader first.
* **Hot path.** SUBMITs from a READY producer go through :func:`_fast_submit` (the core's
  validators without its generic dispatch); anything it does not accept goes through
  :meth:`ServerSession.receive`, which decides the close code.
* **REPLAY** streams pages of ``replay_page_rows`` from a second (read-only) SQLite connection
  in its own thread, and only tops up the consumer's queue to half its limit, so a replay of
  millions of rows holds at most a queue's worth in memory. ``before`` absent means "up to the
  last seq dispatched when the REPLAY arrived"; live DISPATCHes keep flowing meanwhile.
  Consumer HEARTBEAT_ACKs jump ahead of queued DISPATCHes (a consumer's liveness must not
  depend on how big its backlog is).
* **Timeouts.** A watchdog task per connection sleeps until ``session.deadline()`` and applies
  ``session.check()``: 4000 without IDENTIFY after ``identify_timeout_s``, 4005 without a
  heartbeat within ``heartbeat_interval + leeway``. The leeway defaults to half an interval
  (:data:`agent.protocol.DEFAULT_HEARTBEAT_LEEWAY_FRACTION`): a client's first beat may come as
  late as one whole interval after HELLO, plus network and scheduling delays.
* **Duplicates.** A second producer for the same (developer, user) or a second consumer for the
  same developer closes the *older* connection with 4002.
* **Binary frames** are treated like text frames holding UTF-8 JSON (as the core's parser does):
  valid JSON is accepted, anything else is 1007. Frames over ``max_frame_bytes`` → 1009.

HTTP (``process_request`` of the websockets server, so one port serves both):
``POST /auth/user?id=USER`` and ``POST /auth/developer`` with ``dev-id`` + ``x-api-key`` → 200
``{"token": ...}``, 403 with an empty body for bad credentials, 400 without exactly one
non-empty printable ``id`` (≤ 256 chars); ``GET /health`` → 200 JSON (connections by kind, last
seq); 404 for unknown paths, 405 (with ``Allow``) for wrong methods, 431 when the request line
plus headers exceed ``max_token_request_bytes``. Requests with a body are dropped unanswered by
the websockets HTTP parser (the endpoints take none). API keys are compared in constant time;
neither keys nor tokens are ever logged.

Time: protocol deadlines use the event loop's monotonic clock; token expiry and retention use
the injectable ``clock`` (wall-clock Unix seconds by default) so tests can drive them.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import secrets
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.protocol import (
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_IDENTIFY_TIMEOUT_S,
    CloseCode,
    CloseRequested,
    HeartbeatRequested,
    IdentifyRequested,
    IdentifyType,
    ProtocolError,
    Replay,
    ReplayRequested,
    ServerSession,
    ServerState,
    SubmitRequested,
    identify_type_name,
    parse_data_type,
    serialize_dispatch,
    validate_submit_data,
)
from agent.relay.auth import MAX_USER_ID_CHARS, Credentials, TokenRegistry
from agent.relay.store import DispatchStore, Pending, Stored

log = logging.getLogger("agent.relay")
#: Logger handed to websockets. Pinned at WARNING: at DEBUG websockets logs every request
#: header, which would put developers' ``x-api-key`` in the log whenever someone turns on debug
#: logs, and its INFO lines ("connection open/closed") would double the relay's own one line per
#: connection close.
ws_log = logging.getLogger("agent.relay.websockets")
ws_log.setLevel(logging.WARNING)

#: Close code for a consumer that fell too far behind (RFC 6455 "policy violation"); clients
#: treat it as transient (reconnect with backoff) and REPLAY the gap.
SLOW_CONSUMER_CLOSE: Final = 1008
#: Close code when the database failed and acknowledgements cannot be given (RFC 6455).
STORE_FAILED_CLOSE: Final = 1011
#: REPLAY requests a consumer may have queued; more is a flood (closed with 1008).
MAX_PENDING_REPLAYS: Final = 1000
_INT64_MAX: Final = (1 << 63) - 1
_ACK_TEXT: Final = '{"op":1}'
_READY_TEXT: Final = '{"op":4}'
_JSON_HEADERS: Final = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))
_ROUTES: Final[Mapping[str, str]] = {
    "/connect": "GET",
    "/health": "GET",
    "/auth/user": "POST",
    "/auth/developer": "POST",
}


@dataclass(frozen=True)
class RelayConfig:
    """Settings of one relay; every field has the documented default.

    ``developers`` maps dev id → API key and is excluded from ``repr`` (keys are secrets).
    ``db`` None means a temporary database deleted when the relay closes.
    ``heartbeat_leeway_s`` None means the core's default (half an interval).
    ``send_buffer_bytes`` sets SO_SNDBUF on every connection (None: kernel autotuning, which
    on Linux lets a stalled reader hold megabytes in the kernel before backpressure starts).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    db: Path | None = None
    developers: Mapping[str, str] = field(default_factory=dict, repr=False)
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    identify_timeout_s: float = DEFAULT_IDENTIFY_TIMEOUT_S
    heartbeat_leeway_s: float | None = None
    token_ttl_s: float = 300.0
    retention_s: float = 7 * 86400.0
    max_frame_bytes: int = 65536
    max_token_request_bytes: int = 8192
    consumer_queue_frames: int = 50_000
    max_pending_submits: int = 5_000
    consumer_stall_s: float = 5.0
    send_buffer_bytes: int | None = None
    replay_page_rows: int = 1000
    prune_interval_s: float = 3600.0
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ms <= 0:
            raise ValueError("heartbeat_interval_ms must be positive")
        if self.identify_timeout_s <= 0 or self.token_ttl_s <= 0 or self.retention_s <= 0:
            raise ValueError("timeouts, token ttl and retention must be positive")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range")
        if self.max_frame_bytes < 256 or self.consumer_queue_frames < 2:
            raise ValueError("max_frame_bytes ≥ 256 and consumer_queue_frames ≥ 2 required")
        if self.replay_page_rows < 1 or self.max_pending_submits < 1:
            raise ValueError("replay_page_rows and max_pending_submits must be positive")
        if 2 * self.max_pending_submits > self.consumer_queue_frames:
            raise ValueError("max_pending_submits may be at most consumer_queue_frames / 2")
        if self.consumer_stall_s <= 0:
            raise ValueError("consumer_stall_s must be positive")


@dataclass(eq=False)
class _Conn:
    """Relay-side state of one websocket connection."""

    ws: ServerConnection
    session: ServerSession
    peer: str
    kind: IdentifyType | None = None
    dev_id: str | None = None
    uid: str | None = None
    # producers: (barrier future or None, text) in order; consumers: dispatch texts
    outbox: deque[tuple[asyncio.Future[bool] | None, str]] = field(default_factory=deque)
    priority_acks: int = 0  # consumer ACKs, sent ahead of queued DISPATCHes once READY is out
    ready_sent: bool = False
    queued_total: int = 0  # frames ever queued / written to the socket (delivery barrier)
    sent_total: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    last_batch: asyncio.Future[bool] | None = None
    replays: deque[Replay] = field(default_factory=deque)
    replayer: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    close_code: int | None = None
    close_reason: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def enqueue(self, text: str, barrier: asyncio.Future[bool] | None = None) -> None:
        """Queue a frame for the sender (after ``barrier`` resolves, if given)."""
        self.outbox.append((barrier, text))
        self.queued_total += 1
        self.wake.set()

    def gone(self) -> bool:
        """Closing or closed: nothing more will be written."""
        return self.close_code is not None or self.finished

    def who(self) -> str:
        """Identity for logs (never a token)."""
        name = identify_type_name(self.kind)
        if self.kind is IdentifyType.USER:
            return f"{name} user={self.uid!r} dev={self.dev_id!r}"
        if self.kind is IdentifyType.DEVELOPER:
            return f"{name} dev={self.dev_id!r}"
        return f"{name} peer={self.peer}"


class Relay:
    """A running relay; use as ``async with Relay(config) as relay:``.

    ``clock`` gives wall-clock Unix seconds for token expiry and retention (inject a fake one in
    tests). Protocol timeouts use the event loop's clock.
    """

    def __init__(
        self, config: RelayConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.clock = clock
        self.credentials = Credentials(config.developers)
        self.tokens = TokenRegistry(config.token_ttl_s)
        self._tmpdir: str | None = None
        self.db_path: Path = config.db if config.db is not None else Path()
        self._server: Server | None = None
        self._conns: set[_Conn] = set()
        self._producers: dict[tuple[str, str], _Conn] = {}
        self._consumers: dict[str, _Conn] = {}
        self._pending: list[Pending] = []
        self._pending_future: asyncio.Future[bool] | None = None
        self._have_pending = asyncio.Event()
        self._swapped = asyncio.Event()  # replaced (after being set) at every batch swap
        self._dispatched: dict[str, int] = {}
        self._wstore: DispatchStore | None = None
        self._rstore: DispatchStore | None = None
        self._wexec = ThreadPoolExecutor(1, thread_name_prefix="relay-db-write")
        self._rexec = ThreadPoolExecutor(1, thread_name_prefix="relay-db-read")
        self._background: list[asyncio.Task[None]] = []
        self._closers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._writer_idle = asyncio.Event()
        self._writer_idle.set()
        self.port: int = 0

    def __repr__(self) -> str:
        return f"Relay(port={self.port}, db={str(self.db_path)!r})"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Relay:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the database and start listening."""
        loop = asyncio.get_running_loop()
        if self.config.db is None:
            self._tmpdir = tempfile.mkdtemp(prefix="agent-relay-")
            self.db_path = Path(self._tmpdir) / "relay.sqlite3"
        self._wstore = await loop.run_in_executor(self._wexec, DispatchStore, self.db_path)
        self._rstore = await loop.run_in_executor(
            self._rexec, lambda: DispatchStore(self.db_path, readonly=True)
        )
        self._dispatched = self._wstore.last_seqs()
        self._pending_future = loop.create_future()
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            max_size=self.config.max_frame_bytes,
            ping_interval=None,  # the protocol has its own heartbeats
            close_timeout=self.config.close_timeout_s,
            compression=None,  # CPU per frame matters more than bytes on the wire
            server_header=None,
            logger=ws_log,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._background = [
            asyncio.create_task(self._batch_writer(), name="relay-batch-writer"),
            asyncio.create_task(self._pruner(), name="relay-pruner"),
        ]
        log.info("relay listening on %s", self.url)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the token endpoints."""
        return f"http://{self._host_for_url()}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT/connect``."""
        return f"ws://{self._host_for_url()}:{self.port}/connect"

    def _host_for_url(self) -> str:
        host = self.config.host
        return f"[{host}]" if ":" in host else host

    async def close(self) -> None:
        """Shut down: 1001 to every connection, store what was received, close the database.

        Producers are closed first so their last SUBMITs are stored and dispatched before the
        consumers get their 1001.
        """
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close(close_connections=False)
        producers = [c for c in self._conns if c.kind is not IdentifyType.DEVELOPER]
        await self._close_many(producers, CloseCode.GOING_AWAY, "server shutting down")
        await self._flush()
        consumers = list(self._conns)
        await self._close_many(consumers, CloseCode.GOING_AWAY, "server shutting down")
        if self._server is not None:
            self._server.close()  # anything that is still opening gets 503
            await self._server.wait_closed()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._closers:
            await asyncio.wait(self._closers)
        loop = asyncio.get_running_loop()
        if self._wstore is not None:
            await loop.run_in_executor(self._wexec, self._wstore.close)
        if self._rstore is not None:
            await loop.run_in_executor(self._rexec, self._rstore.close)
        self._wexec.shutdown(wait=True)
        self._rexec.shutdown(wait=True)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        log.info("relay stopped")

    async def _close_many(self, conns: list[_Conn], code: int, reason: str) -> None:
        if conns:
            await asyncio.gather(*(self._close_conn(c, code, reason) for c in conns))
            waits = [asyncio.ensure_future(c.ws.wait_closed()) for c in conns]
            await asyncio.wait(waits)

    async def wait_closed(self) -> None:
        """Wait until the websocket server has stopped (after :meth:`close`)."""
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ test helpers

    def default_developer(self) -> str:
        """The first configured developer (or ``"dev"`` if none is configured)."""
        return next(iter(self.config.developers), "dev")

    async def mint_token(
        self, *, user_id: str | None = None, developer: str | None = None
    ) -> str:
        """Mint a token without HTTP: a producer token if ``user_id`` is given, else consumer.

        ``developer`` defaults to :meth:`default_developer`; it need not be configured.
        """
        dev = developer if developer is not None else self.default_developer()
        if user_id is not None:
            return self.tokens.mint(IdentifyType.USER, dev, self.clock(), user_id)
        return self.tokens.mint(IdentifyType.DEVELOPER, dev, self.clock())

    async def dispatches(
        self, developer: str | None = None, after: int = 0, before: int | None = None
    ) -> list[Stored]:
        """Everything stored for ``developer`` with ``after < seq < before`` (tests, tools)."""
        assert self._rstore is not None
        dev = developer if developer is not None else self.default_developer()
        store = self._rstore
        loop = asyncio.get_running_loop()

        def read() -> list[Stored]:
            return [s for page in store.replay(dev, after, before) for s in page]

        return await loop.run_in_executor(self._rexec, read)

    def last_seq(self, developer: str | None = None) -> int:
        """Last seq dispatched for ``developer`` (or the largest over all developers)."""
        if developer is None:
            return max(self._dispatched.values(), default=0)
        return self._dispatched.get(developer, 0)

    @property
    def store(self) -> DispatchStore:
        """The read-only store, for tests and tools (small reads; prefer :meth:`dispatches`)."""
        assert self._rstore is not None
        return self._rstore

    def connection_counts(self) -> dict[str, int]:
        """Open connections by kind."""
        producers = sum(1 for c in self._conns if c.kind is IdentifyType.USER)
        consumers = sum(1 for c in self._conns if c.kind is IdentifyType.DEVELOPER)
        return {
            "total": len(self._conns),
            "producers": producers,
            "consumers": consumers,
            "unidentified": len(self._conns) - producers - consumers,
        }

    async def prune(self) -> int:
        """Delete rows older than the retention period now; returns how many."""
        assert self._wstore is not None
        cutoff = self.clock() - self.config.retention_s
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._wexec, self._wstore.prune, cutoff)

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        try:
            return self._http(request)
        except Exception:  # never a crash on any input
            log.exception("relay: HTTP request failed")
            return _response(http.HTTPStatus.INTERNAL_SERVER_ERROR)

    def _http(self, request: Request) -> Response | None:
        size = len(request.path) + sum(len(k) + len(v) + 4 for k, v in request.headers.raw_items())
        if size > self.config.max_token_request_bytes:
            return _response(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        url = urlsplit(request.path)
        route = _ROUTES.get(url.path)
        if route is None:
            return _response(http.HTTPStatus.NOT_FOUND)
        if request.method != route:
            resp = _response(http.HTTPStatus.METHOD_NOT_ALLOWED)
            resp.headers["Allow"] = route
            return resp
        if url.path == "/connect":
            if self._closed:
                return _response(http.HTTPStatus.SERVICE_UNAVAILABLE)
            return None  # websocket handshake
        if url.path == "/health":
            body = {
                "status": "ok",
                "connections": self.connection_counts(),
                "last_seq": self.last_seq(),
            }
            return _response(http.HTTPStatus.OK, body)
        dev_id = request.headers.get("dev-id")
        api_key = request.headers.get("x-api-key")
        if not self.credentials.check(dev_id, api_key):
            log.info("relay: refused token request %s (bad credentials)", url.path)
            return _response(http.HTTPStatus.FORBIDDEN)
        assert dev_id is not None
        now = self.clock()
        if url.path == "/auth/user":
            ids = parse_qs(url.query, keep_blank_values=True).get("id", [])
            user_id = ids[0] if len(ids) == 1 else ""
            if not user_id or len(user_id) > MAX_USER_ID_CHARS or not user_id.isprintable():
                return _response(http.HTTPStatus.BAD_REQUEST, {"error": "need one ?id=<user>"})
            token = self.tokens.mint(IdentifyType.USER, dev_id, now, user_id)
        else:
            token = self.tokens.mint(IdentifyType.DEVELOPER, dev_id, now)
        return _response(http.HTTPStatus.OK, {"token": token})

    # ------------------------------------------------------------------ websocket

    async def _handle(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        session = ServerSession(
            loop.time(),
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            identify_timeout_s=cfg.identify_timeout_s,
            heartbeat_leeway_s=cfg.heartbeat_leeway_s,
        )
        conn = _Conn(ws, session, _peer(ws))
        if cfg.send_buffer_bytes is not None:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.send_buffer_bytes)
        self._conns.add(conn)
        conn.watchdog = asyncio.create_task(self._watchdog(conn))
        conn.tasks = [asyncio.create_task(self._sender(conn))]
        try:
            await ws.send(session.hello())
            while True:
                message = await ws.recv()
                if not await self._on_frame(conn, message):
                    break
        except ConnectionClosed:
            pass
        except Exception:  # a bug of ours must not kill the server: close and log
            log.exception("relay: internal error on %s", conn.who())
            await self._close_conn(conn, CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            await self._finish(conn)

    async def _on_frame(self, conn: _Conn, message: str | bytes) -> bool:
        """Handle one frame; False once the connection is closing."""
        if conn.kind is IdentifyType.USER:
            fast = _fast_submit(conn.session, message)
            if fast is not None:
                return await self._submit(conn, *fast)
        event = conn.session.receive(message, asyncio.get_running_loop().time())
        if isinstance(event, SubmitRequested):
            return await self._submit(conn, str(event.submit.type), _compact(event.submit.d))
        if isinstance(event, HeartbeatRequested):
            if conn.kind is IdentifyType.DEVELOPER:
                conn.priority_acks += 1
            else:
                barrier = conn.last_batch
                conn.enqueue(event.reply, barrier if barrier and not barrier.done() else None)
            conn.wake.set()
            return True
        if isinstance(event, IdentifyRequested):
            return await self._identify(conn, event)
        if isinstance(event, ReplayRequested):
            if self._replay(conn, event.replay):
                return True
            await self._close_conn(conn, SLOW_CONSUMER_CLOSE, "too many pending REPLAY requests")
            return False
        assert isinstance(event, CloseRequested)
        await self._close_conn(conn, event.code, event.reason)
        return False

    async def _submit(self, conn: _Conn, t: str, d_text: str) -> bool:
        """Queue a validated SUBMIT for the next batch (waiting if the batch is full)."""
        assert conn.dev_id is not None and conn.uid is not None
        self._pending.append(Pending(conn.dev_id, conn.uid, t, d_text))
        fut = self._pending_future
        assert fut is not None
        conn.last_batch = fut
        self._have_pending.set()
        while len(self._pending) >= self.config.max_pending_submits:
            # backpressure: wait until the writer takes this batch (it is then stored while
            # the next one is parsed: double buffering, never more)
            await self._swapped.wait()
        return True

    async def _identify(self, conn: _Conn, event: IdentifyRequested) -> bool:
        grant = self.tokens.consume(event.token, event.type, self.clock())
        if grant is None:
            rejected = conn.session.reject()
            await self._close_conn(conn, rejected.code, rejected.reason)
            return False
        conn.kind, conn.dev_id, conn.uid = grant.kind, grant.dev_id, grant.user_id
        ready = conn.session.accept(asyncio.get_running_loop().time())
        # the watchdog slept towards the identify deadline: restart it on the heartbeat rule
        if conn.watchdog is not None:
            conn.watchdog.cancel()
        conn.watchdog = asyncio.create_task(self._watchdog(conn))
        older: _Conn | None
        if grant.kind is IdentifyType.USER:
            assert grant.user_id is not None
            key = (grant.dev_id, grant.user_id)
            older = self._producers.get(key)
            self._producers[key] = conn
        else:
            older = self._consumers.get(grant.dev_id)
            self._consumers[grant.dev_id] = conn
        if older is not None and older is not conn:
            task = asyncio.create_task(
                self._close_conn(older, CloseCode.DUPLICATE_CONNECTION, "duplicate connection")
            )
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
        log.info("relay: %s identified", conn.who())
        if conn.outbox:  # behind the ACK of an earlier HEARTBEAT that waits for its batch
            conn.enqueue(ready)
        else:
            await conn.ws.send(ready)
            conn.ready_sent = True
        return True

    def _replay(self, conn: _Conn, replay: Replay) -> bool:
        """Queue a REPLAY (served one after the other); False if the consumer floods them."""
        assert conn.dev_id is not None
        if len(conn.replays) >= MAX_PENDING_REPLAYS:
            return False
        before = replay.before
        if before is None:
            before = self._dispatched.get(conn.dev_id, 0) + 1
        # JSON integers are unbounded, SQLite's are 64-bit: clamp (same rows selected)
        conn.replays.append(Replay(_clamp64(replay.after), _clamp64(before)))
        if conn.replayer is None or conn.replayer.done():
            conn.replayer = asyncio.create_task(self._replayer(conn))
        return True

    async def _replayer(self, conn: _Conn) -> None:
        """Stream each queued REPLAY from the database, one page at a time."""
        try:
            await self._serve_replays(conn)
        except Exception:
            log.exception("relay: REPLAY failed for %s", conn.who())
            await self._close_conn(conn, STORE_FAILED_CLOSE, "replay failed")

    async def _serve_replays(self, conn: _Conn) -> None:
        assert self._rstore is not None and conn.dev_id is not None
        loop = asyncio.get_running_loop()
        low_water = max(1, self.config.consumer_queue_frames // 2)
        page_rows = min(self.config.replay_page_rows, low_water)
        store, dev = self._rstore, conn.dev_id
        while conn.replays:
            replay = conn.replays[0]
            after = replay.after
            while True:
                rows = await loop.run_in_executor(
                    self._rexec, store.page, dev, after, replay.before, page_rows
                )
                for s in rows:
                    while len(conn.outbox) >= low_water and conn.close_code is None:
                        conn.drained.clear()
                        await conn.drained.wait()
                    if conn.close_code is not None:
                        return
                    conn.enqueue(serialize_dispatch(s.d, s.uid, s.seq, s.t))
                if len(rows) < page_rows:
                    break
                after = rows[-1].seq
            conn.replays.popleft()

    async def _sender(self, conn: _Conn) -> None:
        """Write a connection's queued frames in order (ACKs after their batch)."""
        ws = conn.ws
        low_water = max(1, self.config.consumer_queue_frames // 2)
        while True:
            if conn.priority_acks and conn.ready_sent:
                conn.priority_acks -= 1
                await ws.send(_ACK_TEXT)
                continue
            if not conn.outbox:
                if conn.priority_acks:  # READY not sent yet: it is queued behind nothing
                    conn.ready_sent = True
                    continue
                conn.wake.clear()
                conn.drained.set()
                await conn.wake.wait()
                continue
            barrier, text = conn.outbox.popleft()
            if len(conn.outbox) < low_water:
                conn.drained.set()
            if barrier is not None and not await asyncio.shield(barrier):
                await self._close_conn(conn, STORE_FAILED_CLOSE, "relay storage failed")
                return
            await ws.send(text)
            if text == _READY_TEXT:
                conn.ready_sent = True
            conn.sent_total += 1
            conn.progress.set()

    async def _watchdog(self, conn: _Conn) -> None:
        """Apply the session's IDENTIFY and heartbeat deadlines."""
        loop = asyncio.get_running_loop()
        session = conn.session
        while True:
            if session.state is ServerState.AWAIT_IDENTIFY:
                # Before IDENTIFY only the identify deadline counts: a silent client must get
                # 4000 (its bug: stop) even when interval × 1.5 is shorter than the identify
                # timeout, not 4005 (reconnect). The core's deadline() would pick the earlier.
                delay = session.identify_deadline - loop.time()
            else:
                delay = session.deadline() - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            event = session.check(loop.time())
            if event is None:
                return  # session already closed
            await self._close_conn(conn, event.code, event.reason)
            return

    async def _close_conn(self, conn: _Conn, code: int, reason: str) -> None:
        """Close with ``code`` (the first code chosen for a connection is the one logged)."""
        if conn.close_code is None:
            conn.close_code, conn.close_reason = int(code), reason
        with contextlib.suppress(Exception):
            await conn.ws.close(code, reason)

    async def _finish(self, conn: _Conn) -> None:
        """Unregister a connection and log its one close line."""
        self._conns.discard(conn)
        conn.finished = True
        conn.progress.set()
        conn.drained.set()
        if conn.dev_id is not None:
            if conn.uid is not None and self._producers.get((conn.dev_id, conn.uid)) is conn:
                del self._producers[(conn.dev_id, conn.uid)]
            if conn.uid is None and self._consumers.get(conn.dev_id) is conn:
                del self._consumers[conn.dev_id]
        conn.tasks += [t for t in (conn.watchdog, conn.replayer) if t is not None]
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current:
                task.cancel()
        for task in conn.tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        by, code, reason = _close_info(conn)
        log.info("relay: closed %s code=%s reason=%r by=%s", conn.who(), code, reason, by)

    # ------------------------------------------------------------------ batches

    async def _batch_writer(self) -> None:
        """Store pending SUBMITs batch by batch, then dispatch them and release ACKs."""
        loop = asyncio.get_running_loop()
        assert self._wstore is not None
        store = self._wstore
        while True:
            await self._have_pending.wait()
            self._have_pending.clear()
            batch, fut = self._pending, self._pending_future
            assert fut is not None
            if not batch:
                continue
            self._pending = []
            self._pending_future = loop.create_future()
            self._swapped.set()
            self._swapped = asyncio.Event()
            self._writer_idle.clear()
            try:
                stored = await loop.run_in_executor(self._wexec, store.append, batch, self.clock())
            except Exception:
                log.exception("relay: storing %d dispatches failed", len(batch))
                fut.set_result(False)
                self._writer_idle.set()
                continue
            try:
                targets = self._dispatch(stored)
            except Exception:  # stored is stored: ACKs may go; consumers can REPLAY
                log.exception("relay: dispatching %d stored rows failed", len(stored))
                targets = []
            if targets:
                task = asyncio.create_task(self._release_when_delivered(fut, targets))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)
            else:
                fut.set_result(True)
            await self._wait_for_consumers({s.dev_id for s in stored})
            if not self._pending:
                self._writer_idle.set()

    async def _wait_for_consumers(self, dev_ids: set[str]) -> None:
        """Flow control: let consumers above half their queue drain, or cut them off."""
        high = self.config.consumer_queue_frames // 2
        for dev_id in dev_ids:
            conn = self._consumers.get(dev_id)
            if conn is None or conn.close_code is not None or len(conn.outbox) < high:
                continue
            conn.drained.clear()
            try:
                async with asyncio.timeout(self.config.consumer_stall_s):
                    while len(conn.outbox) >= high and conn.close_code is None:
                        await conn.drained.wait()
                        conn.drained.clear()
            except TimeoutError:
                self._slow_consumer(conn)

    async def _release_when_delivered(
        self, fut: asyncio.Future[bool], targets: list[tuple[_Conn, int]]
    ) -> None:
        """Resolve a batch once its DISPATCHes are written to the consumers' sockets.

        So a producer's HEARTBEAT_ACK follows the delivery of what it submitted before, not
        just its queueing. A consumer that takes longer than ``consumer_stall_s`` is cut off.
        """
        try:
            async with asyncio.timeout(self.config.consumer_stall_s):
                for conn, target in targets:
                    while conn.sent_total < target and not conn.gone():
                        conn.progress.clear()
                        await conn.progress.wait()
        except TimeoutError:
            for conn, target in targets:
                if conn.sent_total < target and not conn.gone():
                    self._slow_consumer(conn)
        finally:
            if not fut.done():
                fut.set_result(True)

    def _dispatch(self, stored: list[Stored]) -> list[tuple[_Conn, int]]:
        """Queue DISPATCHes; returns each consumer reached with its delivery target."""
        targets: dict[_Conn, int] = {}
        limit = self.config.consumer_queue_frames
        for s in stored:
            self._dispatched[s.dev_id] = s.seq
            consumer = self._consumers.get(s.dev_id)
            if consumer is None or consumer.close_code is not None:
                continue
            if len(consumer.outbox) >= limit:
                self._slow_consumer(consumer)
                continue
            consumer.enqueue(serialize_dispatch(s.d, s.uid, s.seq, s.t))
            targets[consumer] = consumer.queued_total
        return list(targets.items())

    def _slow_consumer(self, conn: _Conn) -> None:
        # everything queued for it is dropped: the consumer REPLAYs after the last seq it got
        if conn.close_code is not None:
            return
        conn.outbox.clear()
        reason = "consumer too slow: reconnect and REPLAY after your last seq"
        conn.close_code, conn.close_reason = SLOW_CONSUMER_CLOSE, reason
        conn.drained.set()
        conn.progress.set()
        task = asyncio.create_task(self._close_conn(conn, SLOW_CONSUMER_CLOSE, reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _flush(self) -> None:
        """Wait until everything received so far is stored and dispatched."""
        while self._pending or not self._writer_idle.is_set():
            fut = self._pending_future
            if self._pending and fut is not None:
                await asyncio.shield(fut)
            else:
                await self._writer_idle.wait()

    async def _pruner(self) -> None:
        while True:
            try:
                n = await self.prune()
                if n:
                    log.info("relay: pruned %d dispatches older than retention", n)
            except Exception:
                log.exception("relay: pruning failed")
            await asyncio.sleep(self.config.prune_interval_s)


# ---------------------------------------------------------------------------------------------


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _fast_submit(session: ServerSession, message: str | bytes) -> tuple[str, str] | None:
    """``(t, d_text)`` of a SUBMIT the core accepts, or None: let the core decide.

    The hot path of a producer draining a backlog: the same checks as
    :func:`agent.protocol.parse` + :meth:`ServerSession.receive` for SUBMIT (JSON object without
    NaN/Infinity, integer ``op`` 6, object ``d``, known ``t``, the core's
    :func:`validate_submit_data`), without the generic machinery. It only ever *accepts*; any
    doubt returns None and the frame goes through the core, which picks the close code. The
    fuzz test checks the relay against the core on arbitrary frames.
    """
    if session.state is not ServerState.READY or session.kind is not IdentifyType.USER:
        return None
    try:
        text = message if isinstance(message, str) else message.decode("utf-8")
        obj = _DECODER.decode(text)
        if type(obj) is not dict or type(obj.get("op")) is not int or obj["op"] != 6:
            return None
        d = obj.get("d")
        if type(d) is not dict:
            return None
        data_type = parse_data_type(obj.get("t"))
        validate_submit_data(data_type, d)
        return data_type.value, _ENCODER.encode(d)
    except (ValueError, RecursionError, ProtocolError):
        return None


def _compact(d: Mapping[str, Any]) -> str:
    """Compact JSON of a validated SUBMIT ``d`` (stored and dispatched as is)."""
    return _ENCODER.encode(d)


def _clamp64(value: int) -> int:
    return max(-_INT64_MAX, min(_INT64_MAX, value))


def _response(status: http.HTTPStatus, body: Mapping[str, Any] | None = None) -> Response:
    """A plain HTTP response; ``body`` None means empty (403 must have an empty body)."""
    data = b"" if body is None else json.dumps(body).encode()
    headers = Headers([("Content-Length", str(len(data))), ("Connection", "close")])
    if body is not None:
        for k, v in _JSON_HEADERS:
            headers[k] = v
    return Response(int(status), status.phrase, headers, data)


def _peer(ws: ServerConnection) -> str:
    try:
        addr = ws.remote_address
        return f"{addr[0]}:{addr[1]}"
    except Exception:
        return "?"


def _close_info(conn: _Conn) -> tuple[str, int, str]:
    """(who closed, code, reason) of a finished connection."""
    proto = conn.ws.protocol
    sent, rcvd = proto.close_sent, proto.close_rcvd
    if conn.close_code is not None:
        return "relay", conn.close_code, conn.close_reason
    if sent is not None and (rcvd is None or proto.close_rcvd_then_sent is False):
        return "relay", int(sent.code), sent.reason
    if rcvd is not None:
        return "peer", int(rcvd.code), rcvd.reason
    return "network", int(CloseCode.ABNORMAL), "connection lost without a close frame"


def random_api_key() -> str:
    """A fresh API key (for generated development credentials)."""
    return secrets.token_urlsafe(32)
