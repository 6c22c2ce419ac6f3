"""The producer connection: drains the outbox into the broker and proves every delivery.

Theory of operation
-------------------
One :class:`Uplink` owns a loop of connections. Each connection runs the handshake of
``NOTES.md`` (HELLO → IDENTIFY type 0 → READY) through the sans-I/O
:class:`agent.protocol.ClientSession`, then three tasks pump data:

* the **reader** feeds every server frame to the session; a HEARTBEAT_ACK pops the tag of the
  heartbeat it answers;
* the **beater** sends regular heartbeats on the :class:`~agent.protocol.HeartbeatScheduler`
  schedule (and closes a connection whose beat stays un-ACKed for a whole interval), plus
  *barrier* heartbeats while sent readings are unconfirmed, never more often than
  ``barrier_spacing_s``;
* the **sender** pages committed frames from the outbox (oldest first) and writes them,
  keeping at most ``max_in_flight`` rows unconfirmed so a drain is paced by the broker's ACKs
  and never starves heartbeats or fresh readings.

Delivery rule (why it is sound): SUBMIT has no acknowledgement, but a websocket connection is an
ordered stream and the broker answers heartbeats in order after handling what came before them.
Every heartbeat is tagged with the highest outbox id written *before* it on the same connection
(``sent_hw``). When its ACK arrives, every row up to the tag has provably been read, and only
then is it confirmed (deleted from the outbox). A new connection restarts from the highest
confirmed id, so whatever was unconfirmed is sent again: at-least-once, duplicates only inside
the unconfirmed window (at most ``max_in_flight`` rows).

Reconnecting: the close code drives :data:`agent.protocol.CLOSE_POLICY` (stop and report,
fresh token, back off to the maximum, or reconnect with full-jitter capped exponential backoff).
A session counts as recovered only after ``Backoff.stable_after_s``, so a broker that accepts
and immediately drops us never causes a hot loop. Every connection gets a fresh token from the
:class:`agent.tokens.TokenProvider`; tokens only travel inside IDENTIFY, never in URLs or logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from agent.backoff import Backoff
from agent.netaddr import is_loopback_host
from agent.outbox import Outbox
from agent.protocol import (
    AckReceived,
    BeatDecision,
    ClientAction,
    ClientSession,
    HelloReceived,
    IdentifyType,
    ProtocolError,
    ReadyReceived,
    close_policy,
)
from agent.readings import Reading
from agent.tokens import TokenError, TokenExhausted, TokenProvider, TokenRefused
from agent.uplink_state import ConnState, UplinkState

log = logging.getLogger(__name__)

#: Unconfirmed rows allowed on the wire. At Terra's 40 s HELLO interval and 1 s barriers this
#: bounds the resend window after a failure while leaving room for a fast loopback drain.
DEFAULT_MAX_IN_FLIGHT: Final = 50_000
#: Rows fetched from the outbox per page (one worker-thread hop per page).
DEFAULT_SEND_BATCH: Final = 1_000
DEFAULT_BARRIER_SPACING_S: Final = 1.0
DEFAULT_OPEN_TIMEOUT_S: Final = 20.0
#: Frames we accept from the server (HELLO/READY/ACK are tiny; anything big is not ours).
MAX_SERVER_FRAME: Final = 64 * 1024
#: Consecutive 4001 closes after which we stop trusting quick retries.
BAD_TOKEN_STREAK_FOR_MAX: Final = 2


class UplinkError(Exception):
    """Base class of uplink errors."""


class InsecureUrl(UplinkError, ValueError):
    """Plain ``ws://`` to a host that is not loopback, without ``allow_insecure_ws``."""


class UplinkStopped(UplinkError):
    """Retrying cannot help (a client-bug close code or no more tokens); see ``reason``."""

    def __init__(self, reason: str, close_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


class _RedactTokens(logging.Filter):
    """websockets logs frame contents at DEBUG; IDENTIFY frames carry the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # pragma: no cover - malformed record
            return True
        if "token" in text:
            record.msg = "<frame redacted: may contain a token>"
            record.args = ()
        return True


_ws_log = logging.getLogger("agent.uplink.websockets")
_ws_log.addFilter(_RedactTokens())


def check_url(url: str, *, allow_insecure_ws: bool = False) -> urllib.parse.SplitResult:
    """Validate a broker URL: ``wss://`` anywhere, ``ws://`` only to loopback unless allowed."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("ws", "wss"):
        raise InsecureUrl(f"broker URL must start with ws:// or wss://, got {parsed.scheme!r}")
    if parsed.username or parsed.password or "token" in parsed.query.lower():
        raise InsecureUrl("broker URL must not carry credentials; tokens go in IDENTIFY")
    if parsed.scheme == "ws" and not allow_insecure_ws and not is_loopback_host(parsed.hostname):
        raise InsecureUrl(
            f"refusing plain ws:// to {parsed.hostname}: readings and tokens would travel "
            "unencrypted; use wss:// or set allow_insecure_ws"
        )
    return parsed


class _Conn:
    """Per-connection delivery bookkeeping."""

    def __init__(self, ws: ClientConnection, session: ClientSession, start_id: int) -> None:
        self.ws = ws
        self.session = session
        self.sent_hw = start_id  # highest outbox id written on this connection
        self.covered_hw = start_id  # highest tag of any heartbeat sent on this connection
        self.sent_count = 0  # frames written on this connection
        self.acked_count = 0  # of which a HEARTBEAT_ACK proved receipt
        self.last_beat_at: float | None = None
        self.hello = asyncio.Event()
        self.ready = asyncio.Event()
        self.window = asyncio.Event()  # set when the in-flight window has room
        self.window.set()
        self.beat_wake = asyncio.Event()
        self.dead = False
        self.protocol_error: str | None = None

    @property
    def inflight_rows(self) -> int:
        """Frames written but not yet proven read."""
        return self.sent_count - self.acked_count


class Uplink:
    """Producer uplink: ``await uplink.run()`` until cancelled, ``await uplink.close()`` to stop.

    ``sleep`` (tests) replaces the back-off wait; ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        url: str,
        tokens: TokenProvider,
        outbox: Outbox,
        *,
        ca_file: str | Path | None = None,
        allow_insecure_ws: bool = False,
        barrier_spacing_s: float = DEFAULT_BARRIER_SPACING_S,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        send_batch: int = DEFAULT_SEND_BATCH,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        on_state: Callable[[UplinkState], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        parsed = check_url(url, allow_insecure_ws=allow_insecure_ws)
        get = getattr(tokens, "get", None)
        if get is None or not callable(get):
            raise TypeError("tokens must be a TokenProvider (an object with async get())")
        if max_in_flight < 1 or send_batch < 1:
            raise ValueError("max_in_flight and send_batch must be positive")
        self.url = url
        self.tokens = tokens
        self.outbox = outbox
        self._ssl: ssl.SSLContext | None = None
        if parsed.scheme == "wss":
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.barrier_spacing_s = barrier_spacing_s
        self.backoff = backoff if backoff is not None else Backoff(rng=rng)
        self.clock = clock
        self.rng = rng
        self.max_in_flight = max_in_flight
        self.send_batch = min(send_batch, max_in_flight)
        self.open_timeout_s = open_timeout_s
        self.on_state = on_state
        self._sleep = sleep
        self.state = UplinkState()
        self._acked_id = 0  # highest outbox id proven read by the broker
        self._persisted_id = 0  # highest id whose confirmation reached the outbox
        self._progress = asyncio.Event()  # set on every ACK that confirms something
        self._confirm_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._conn: _Conn | None = None
        self._bad_token_streak = 0
        self._running = False
        self._done = asyncio.Event()
        self._changed = asyncio.Event()

    # -- public ---------------------------------------------------------------------------------

    @property
    def acked_id(self) -> int:
        """Highest outbox id the broker has provably read."""
        return self._acked_id

    def _notify(self) -> None:
        """Wake everything waiting in :meth:`wait_for` (state, ACKs, outbox figures)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; re-checked on every state change, page sent and ACK.

        For supervisors, scripts and tests: e.g. ``await uplink.wait_for(lambda:
        uplink.acked_id >= outbox.last_id)``. Bound it with ``asyncio.timeout``.
        """
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    async def run(self) -> None:
        """Connect, serve and reconnect until :meth:`close` (returns) or a stop (raises).

        Raises :class:`UplinkStopped` when a close code or the token provider says retrying
        cannot help; ``state.stopped_reason`` says the same.
        """
        if self._running:
            raise RuntimeError("Uplink.run() is already running")
        self._running = True
        self._done.clear()
        confirmer = asyncio.create_task(self._confirm_loop(), name="uplink-confirmer")
        try:
            await self.refresh_state()
            first = await self.outbox.next_batch(0, 1)
            if first:
                self._acked_id = max(self._acked_id, first[0][0] - 1)
                self._persisted_id = max(self._persisted_id, self._acked_id)
            while not self._stop.is_set():
                delay = await self._attempt()
                if self._stop.is_set():
                    break
                self._set_state(ConnState.BACKOFF, next_retry_in_s=delay)
                log.info("uplink: reconnecting in %.1f s", delay)
                await self._wait(delay)
            self._set_state(ConnState.CLOSED)
        finally:
            confirmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await confirmer
            with contextlib.suppress(Exception):
                await self._persist_confirmations()
            self._running = False
            self._done.set()

    async def close(self, grace_s: float = 5.0) -> None:
        """Deliver what is pending within ``grace_s``, then close with 1000 and stop ``run()``."""
        if self.state.state is not ConnState.STOPPED:
            self._set_state(ConnState.CLOSING)
        with contextlib.suppress(Exception):
            await self.outbox.flush()
        target = self.outbox.last_id
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                while self._acked_id < target:
                    conn = self._conn
                    if conn is not None and conn.ready.is_set():
                        conn.beat_wake.set()
                    pending = await self.outbox.next_batch(self._acked_id, 1)
                    if not pending or pending[0][0] > target:
                        break
                    self._progress.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await self._progress.wait()
        self._stop.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.ws.close(1000, "agent shutting down")
        if self._running:
            await self._done.wait()
        elif self.state.state is ConnState.CLOSING:
            self._set_state(ConnState.CLOSED)

    async def refresh_state(self) -> UplinkState:
        """Refresh outbox figures in :attr:`state` and return it."""
        with contextlib.suppress(Exception):
            stats = await self.outbox.stats()
            self.state.outbox_depth = stats.depth
            self.state.outbox_bytes = stats.bytes
            self.state.oldest_undelivered_t = stats.oldest_t
            self.state.dropped = stats.dropped
        self._notify()
        return self.state

    # -- connection cycle -----------------------------------------------------------------------

    def _set_state(self, state: ConnState, **fields: object) -> None:
        self.state.state = state
        for key, value in fields.items():
            setattr(self.state, key, value)
        if state is not ConnState.BACKOFF:
            self.state.next_retry_in_s = None
        self._notify()
        if self.on_state is not None:
            try:
                self.on_state(self.state)
            except Exception:
                log.exception("uplink on_state callback failed")

    async def _wait(self, delay: float) -> None:
        if self._sleep is not None:
            await self._sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    def _stop_now(self, reason: str, code: int | None) -> UplinkStopped:
        log.error("uplink stopped: %s", reason)
        self._set_state(ConnState.STOPPED, stopped_reason=reason)
        return UplinkStopped(reason, code)

    async def _attempt(self) -> float:
        """One connection attempt; returns the delay before the next one."""
        self._set_state(ConnState.CONNECTING)
        try:
            token = await self.tokens.get()
        except TokenExhausted as exc:
            raise self._stop_now(str(exc), None) from None
        except TokenRefused as exc:
            self.state.last_error = str(exc)
            log.error("uplink: %s", exc)
            return self.backoff.max_delay()
        except TokenError as exc:
            self.state.last_error = str(exc)
            log.warning("uplink: no token: %s", exc)
            return self.backoff.next_delay()
        if not isinstance(token, str) or not token:
            self.state.last_error = "token provider returned no token"
            return self.backoff.next_delay()
        try:
            ws = await connect(
                self.url,
                ssl=self._ssl,
                open_timeout=self.open_timeout_s,
                ping_interval=None,  # liveness is the protocol's heartbeat watchdog
                close_timeout=5.0,
                max_size=MAX_SERVER_FRAME,
                compression=None,
                logger=_ws_log,
            )
        except InvalidURI as exc:
            raise self._stop_now(f"invalid broker URL: {exc}", None) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.state.last_error = f"connect to {self.url} failed: {type(exc).__name__}: {exc}"
            log.warning("uplink: %s", self.state.last_error)
            return self.backoff.next_delay()
        self.state.connections += 1
        session = ClientSession(IdentifyType.USER, token, jitter_u=self.rng())
        del token
        conn = _Conn(ws, session, self._acked_id)
        self._conn = conn
        try:
            await self._serve(conn)
        finally:
            self._conn = None
            session.closed()
            self.backoff.session_ended(self.clock())
            await self.refresh_state()
        return self._after_close(conn)

    def _after_close(self, conn: _Conn) -> float:
        """Apply the close-code policy; returns the delay or raises :class:`UplinkStopped`."""
        ws = conn.ws
        code = ws.close_code
        reason = ws.close_reason or ""
        if conn.dead:
            code, reason = 1006, "heartbeat not acknowledged within the interval"
        elif conn.protocol_error is not None:
            code, reason = 1002, conn.protocol_error
        elif code is None:
            code = 1006
        self.state.last_close_code = code
        self.state.last_close_reason = reason
        if self._stop.is_set():
            return 0.0
        policy = close_policy(code)
        level = logging.WARNING if policy.report else logging.INFO
        log.log(level, "uplink closed with %s (%s): %s", code, reason or "-", policy.advice)
        if policy.action is ClientAction.STOP:
            raise self._stop_now(f"closed with {code} ({reason or '-'}): {policy.advice}", code)
        if policy.action is ClientAction.NEW_TOKEN:
            self._bad_token_streak += 1
            if self._bad_token_streak >= BAD_TOKEN_STREAK_FOR_MAX:
                return self.backoff.max_delay()
            return self.backoff.next_delay()
        if policy.action is ClientAction.BACKOFF_MAX:
            return self.backoff.max_delay()
        return self.backoff.next_delay()

    async def _serve(self, conn: _Conn) -> None:
        """Run reader, beater and sender until the connection ends."""
        self._set_state(ConnState.IDENTIFYING)
        tasks = [
            asyncio.create_task(self._reader(conn), name="uplink-reader"),
            asyncio.create_task(self._beater(conn), name="uplink-beater"),
            asyncio.create_task(self._sender(conn), name="uplink-sender"),
        ]
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, ConnectionClosed):
                    log.error("uplink %s failed: %r", task.get_name(), exc)
                    self.state.last_error = f"{task.get_name()}: {exc!r}"
        finally:
            if conn.dead:
                conn.ws.transport.abort()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if conn.ws.state is not State.CLOSED:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5.0):
                        await conn.ws.close(1000)
                conn.ws.transport.abort()
            with contextlib.suppress(Exception):
                await conn.ws.wait_closed()

    async def _reader(self, conn: _Conn) -> None:
        async for message in conn.ws:
            try:
                event = conn.session.receive(message, self.clock())
            except ProtocolError as exc:
                conn.protocol_error = f"server broke the protocol: {exc.message}"
                log.warning("uplink: %s", conn.protocol_error)
                await conn.ws.close(1002, "protocol error")
                return
            if isinstance(event, AckReceived):
                self._on_ack(conn, event.tag)
            elif isinstance(event, HelloReceived):
                await conn.ws.send(event.reply)
                conn.hello.set()
                conn.beat_wake.set()
            elif isinstance(event, ReadyReceived):
                self._bad_token_streak = 0
                self.backoff.session_started(self.clock())
                conn.ready.set()
                log.info("uplink ready (%s)", self.url)
                self._set_state(ConnState.READY, last_ready_at=time.time())

    def _on_ack(self, conn: _Conn, tag: object) -> None:
        """A beat tagged ``(sent_hw, sent_count)`` was answered: all of that was read."""
        if not isinstance(tag, tuple):
            return
        hw, count = tag
        if count > conn.acked_count:
            self.state.confirmed += count - conn.acked_count
            conn.acked_count = count
            conn.window.set()
        if hw > self._acked_id:
            self._acked_id = hw
            self._confirm_wake.set()
            self._progress.set()
        self._notify()

    async def _beater(self, conn: _Conn) -> None:
        await conn.hello.wait()
        sched = conn.session.heartbeats
        assert sched is not None
        while True:
            now = self.clock()
            decision = sched.poll(now)
            if decision is BeatDecision.DEAD:
                conn.dead = True
                log.warning("uplink: heartbeat not acknowledged in time; dropping the connection")
                conn.ws.transport.abort()
                return
            if decision is BeatDecision.SEND:
                await self._beat(conn, now, regular=True)
                continue
            wake_at = sched.deadline()
            if conn.ready.is_set() and conn.sent_hw > conn.covered_hw:
                earliest = (
                    now if conn.last_beat_at is None else conn.last_beat_at + self.barrier_spacing_s
                )
                if now >= earliest:
                    await self._beat(conn, now, regular=False)
                    continue
                wake_at = min(wake_at, earliest)
            conn.beat_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    await conn.beat_wake.wait()

    async def _beat(self, conn: _Conn, now: float, *, regular: bool) -> None:
        tag = (conn.sent_hw, conn.sent_count)
        text = conn.session.heartbeat(now, tag, regular=regular)
        conn.covered_hw = conn.sent_hw
        conn.last_beat_at = now
        await conn.ws.send(text)

    async def _sender(self, conn: _Conn) -> None:
        await conn.ready.wait()
        outbox = self.outbox
        while True:
            room = self.max_in_flight - conn.inflight_rows
            if room <= 0:
                conn.window.clear()
                await conn.window.wait()
                continue
            known = outbox.last_id
            batch = await outbox.next_batch(conn.sent_hw, min(room, self.send_batch))
            if not batch:
                # Rows up to `known` were committed before the query: absent ones are gone
                # (confirmed or evicted), so wait for something newer than `known`.
                await outbox.wait_new(max(conn.sent_hw, known))
                continue
            ws = conn.ws
            for rid, frame in batch:
                await ws.send(frame)
                # only after the frame is in the transport buffer, ahead of any later beat
                conn.sent_hw = rid
                conn.sent_count += 1
            self.state.sent += len(batch)
            self._notify()
            conn.beat_wake.set()
            await asyncio.sleep(0)  # let the reader and beater run between pages

    async def _confirm_loop(self) -> None:
        while True:
            await self._confirm_wake.wait()
            self._confirm_wake.clear()
            try:
                await self._persist_confirmations()
            except Exception as exc:
                log.error("uplink: confirming delivered rows failed: %s", exc)
                await asyncio.sleep(1.0)
                self._confirm_wake.set()

    async def _persist_confirmations(self) -> None:
        target = self._acked_id
        if target > self._persisted_id:
            await self.outbox.confirm(target)
            self._persisted_id = target
            await self.refresh_state()


async def run_producer(
    url: str,
    tokens: TokenProvider,
    outbox_path: str | Path,
    source: AsyncIterable[Sequence[Reading]] | None = None,
    *,
    on_appended: Callable[[Sequence[Reading]], None] | None = None,
    drain: bool = True,
    grace_s: float = 30.0,
    outbox_options: Mapping[str, Any] | None = None,
    **uplink_options: Any,
) -> UplinkState:
    """A whole producer in one call: outbox + uplink + a source of reading batches.

    Meant for small scripts and subprocess-based failure tests (SIGKILL, killed relays,
    cutting proxies): every batch from ``source`` is appended durably, then ``on_appended`` is
    called (so a parent process learns exactly what survived a crash). When the source ends,
    and ``drain`` is true, it waits until the broker has confirmed everything (no timeout: bound
    it from outside), then closes with ``grace_s``. Returns the final :class:`UplinkState`;
    raises :class:`UplinkStopped` like :meth:`Uplink.run`.
    """
    outbox = await Outbox.open(outbox_path, **dict(outbox_options or {}))
    uplink = Uplink(url, tokens, outbox, **uplink_options)
    runner = asyncio.create_task(uplink.run(), name="uplink")
    try:
        if source is not None:
            async for batch in source:
                if runner.done():
                    break
                await outbox.append_durable(batch)
                if on_appended is not None:
                    on_appended(batch)
        if drain and not runner.done():
            waiter = asyncio.create_task(
                uplink.wait_for(lambda: uplink.acked_id >= outbox.last_id)
            )
            await asyncio.wait({waiter, runner}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if runner.done():
            runner.result()  # raises UplinkStopped
        await uplink.close(grace_s)
        await runner
        return await uplink.refresh_state()
    finally:
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, UplinkStopped):
                await runner
        await outbox.close()
