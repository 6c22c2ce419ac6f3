"""``agent watch``: a consumer of a developer's stream (IDENTIFY type 1).

Theory of operation: mint a developer token (``POST /auth/developer`` with ``dev-id`` and
``x-api-key``, on our relay or on Terra's host), connect, heartbeat, and print every DISPATCH.
A watermark ``last_seq`` (every seq up to it has been received) is kept; after a reconnect
(always with a fresh token: tokens are single use) the gap is filled with REPLAY
``after=<watermark>``, and ``--since SEQ`` does the same on the first connection. Replayed and live
DISPATCHes interleave and the protocol has no "replay finished" marker, so the watermark only moves
once a one-frame *sentinel* REPLAY sent after the gap REPLAY comes back (REPLAYs are served in
order): a connection that dies in the middle of a REPLAY asks for the same gap again instead of
losing its unreplayed part. Frames are de-duplicated by ``seq``; ``--replay-only`` ends once the
stream has been idle for ``--idle-timeout`` seconds.
All protocol rules come from :mod:`agent.protocol`; this module only pumps frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from agent import protocol as p
from agent.backoff import Backoff
from agent.tokens import TokenError, TokenRefused

log = logging.getLogger("agent.watch")

#: ``before`` bound used when the user gave none: larger than any seq a server will reach.
OPEN_UPPER_BOUND = 2**63 - 1
#: How many recent seqs are remembered for de-duplication (replay and live frames overlap).
DEDUP_WINDOW = 100_000
#: sysexits EX_UNAVAILABLE / EX_CONFIG / EX_PROTOCOL.
EX_UNAVAILABLE = 69
EX_PROTOCOL = 76
EX_CONFIG = 78


class WatchError(Exception):
    """A failure that ends ``agent watch`` with a message and exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def endpoints(server: str) -> tuple[str, str]:
    """``server`` (http(s):// or ws(s):// base) → (REST base URL, websocket /connect URL)."""
    parts = urlsplit(server)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise WatchError(f"--server must be an http(s):// or ws(s):// URL, not {server!r}", 64)
    secure = scheme in ("https", "wss")
    path = parts.path.rstrip("/")
    if path.endswith("/connect"):
        path = path[: -len("/connect")]
    rest = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    ws = urlunsplit(("wss" if secure else "ws", parts.netloc, path + "/connect", "", ""))
    return rest, ws


def format_dispatch(dispatch: p.Dispatch) -> str:
    """One readable line for a DISPATCH."""
    d = dispatch.d
    value: object = d.get("val", d.get("d"))
    if isinstance(value, list):
        value = "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in value) + "]"
    ts = d.get("ts", "-")
    return f"#{dispatch.seq:<8} {dispatch.uid:<20} {dispatch.t:<15} {ts}  {value}"


@dataclass
class WatchOptions:
    """Everything ``agent watch`` needs, independent of argparse (used by tests too)."""

    server: str
    dev_id: str
    api_key: str
    json_output: bool = False
    since: int | None = None
    before: int | None = None
    replay_only: bool = False
    idle_timeout_s: float = 2.0
    ca_file: str | None = None
    max_messages: int | None = None


@dataclass
class Watcher:
    """The consumer loop; ``out`` receives each line to print."""

    options: WatchOptions
    out: Callable[[str], None] = print
    on_dispatch: Callable[[p.Dispatch], None] | None = None
    backoff: Backoff = field(default_factory=Backoff)
    rng: Callable[[], float] = random.random
    last_seq: int | None = None  # watermark: every seq ≤ last_seq has been received
    max_seq: int | None = None  # highest seq received
    received: int = 0
    _seen: set[int] = field(default_factory=set)
    _dead: bool = False
    _sentinel: int | None = None  # the next copy of this seq ends the gap-filling REPLAY
    _sentinel_from_first: bool = False  # pick the first frame of the connection as sentinel

    @property
    def filling_gap(self) -> bool:
        """A gap-filling REPLAY is in flight: the watermark must not move yet."""
        return self._sentinel is not None or self._sentinel_from_first

    def _replay_requests(self) -> list[tuple[int, int]]:
        """(after, before) REPLAYs to send on READY: the gap, then a sentinel if one is known.

        Replayed and live DISPATCHes interleave, and the protocol has no "replay finished"
        marker. So after the gap REPLAY a second, one-frame REPLAY asks for a seq already
        received (``last_seq``); a server serves REPLAYs in order, so that frame's second copy
        proves the gap was delivered. Without a known seq the first frame of the connection is
        used (the request is sent when it arrives).
        """
        if self.last_seq is None:
            return []
        upper = OPEN_UPPER_BOUND if self.options.before is None else self.options.before
        requests = [(self.last_seq, upper)]
        if self.last_seq in self._seen:
            self._sentinel = self.last_seq
            requests.append((self.last_seq - 1, self.last_seq + 1))
        else:
            self._sentinel_from_first = True
        return requests

    def _accept(self, seq: int) -> tuple[bool, tuple[int, int] | None]:
        """Book-keeping for one DISPATCH: (print it?, sentinel REPLAY to send now)."""
        request = None
        if self._sentinel is not None and seq == self._sentinel and seq in self._seen:
            # The gap REPLAY is complete: replayed frames cover (last_seq, frontier] in order and
            # live frames arrived in order from before the frontier, so nothing is missing.
            self._sentinel = None
            self.last_seq = self.max_seq
            return False, None
        if self._sentinel_from_first:
            self._sentinel_from_first = False
            self._sentinel = seq
            request = (seq - 1, seq + 1)
        if seq in self._seen:
            return False, request
        self._seen.add(seq)
        if len(self._seen) > DEDUP_WINDOW:
            cutoff = sorted(self._seen)[len(self._seen) // 2]
            self._seen = {x for x in self._seen if x >= cutoff}
        self.max_seq = seq if self.max_seq is None else max(self.max_seq, seq)
        if not self.filling_gap:
            self.last_seq = self.max_seq
        return True, request

    def _emit(self, event: p.DispatchReceived) -> None:
        seq = event.dispatch.seq
        self.received += 1
        if self.on_dispatch is not None:
            self.on_dispatch(event.dispatch)
        elif self.options.json_output:
            obj = {
                "op": 5,
                "d": event.dispatch.d,
                "uid": event.dispatch.uid,
                "seq": seq,
                "t": event.dispatch.t,
            }
            self.out(json.dumps(obj, separators=(",", ":")))
        else:
            self.out(format_dispatch(event.dispatch))

    async def mint_token(self) -> str:
        """Developer token from ``POST /auth/developer`` (single use: one per connection)."""
        import ssl

        from agent.tokens import post_for_token

        rest, _ = endpoints(self.options.server)
        context = (ssl.create_default_context(cafile=self.options.ca_file)
                   if rest.startswith("https://") else None)
        return await asyncio.to_thread(
            post_for_token, rest + "/auth/developer", self.options.dev_id, self.options.api_key,
            ssl_context=context, key_hint=" and --api-key-file",
        )

    async def run(self) -> int:
        """Connect, reconnect and print until cancelled (or replay-only is done)."""
        if self.options.since is not None:
            self.last_seq = self.options.since
        while True:
            try:
                token = await self.mint_token()
            except TokenRefused as exc:
                raise WatchError(str(exc), EX_CONFIG) from None
            except TokenError as exc:
                delay = self.backoff.next_delay()
                log.warning("could not mint a token (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            code, reason, done = await self._session(token)
            if done:
                return 0
            policy = p.close_policy(code)
            if policy.action is p.ClientAction.STOP:
                raise WatchError(
                    f"connection closed with {code} ({reason or policy.advice}); not retrying",
                    EX_PROTOCOL,
                )
            if policy.action is p.ClientAction.BACKOFF_MAX:
                delay = self.backoff.max_delay()
            else:
                delay = self.backoff.next_delay()
            log.warning("connection closed (%s %s): %s; reconnecting in %.1f s",
                        code, reason, policy.advice, delay)
            await asyncio.sleep(delay)

    async def _session(self, token: str) -> tuple[int | None, str, bool]:
        """One connection; returns (close code, reason, finished)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        _, ws_url = endpoints(self.options.server)
        ssl_ctx = None
        if ws_url.startswith("wss://"):
            import ssl

            ssl_ctx = ssl.create_default_context(cafile=self.options.ca_file)
        session = p.ClientSession(p.IdentifyType.DEVELOPER, token, jitter_u=self.rng())
        self._dead = False
        del token
        try:
            async with connect(
                ws_url, ssl=ssl_ctx, open_timeout=10, close_timeout=2, ping_interval=None,
                max_size=2**20,
            ) as ws:
                beat_task: asyncio.Task[None] | None = None
                try:
                    while True:
                        timeout = (
                            self.options.idle_timeout_s
                            if self.options.replay_only and session.state is p.ClientState.READY
                            else None
                        )
                        try:
                            async with asyncio.timeout(timeout):
                                text = await ws.recv()
                        except TimeoutError:
                            await ws.close(1000)
                            return 1000, "replay finished", True
                        event = session.receive(text, time.monotonic())
                        if isinstance(event, p.HelloReceived):
                            await ws.send(event.reply)
                            beat_task = asyncio.create_task(self._beat(ws, session))
                        elif isinstance(event, p.ReadyReceived):
                            self.backoff.session_started(time.monotonic())
                            self._sentinel, self._sentinel_from_first = None, False
                            if self.options.replay_only and self.last_seq is None:
                                self.last_seq = 0
                            for after, before in self._replay_requests():
                                await ws.send(session.replay(after, before))
                        elif isinstance(event, p.DispatchReceived):
                            upper = self.options.before
                            if upper is not None and event.dispatch.seq >= upper:
                                continue
                            show, sentinel = self._accept(event.dispatch.seq)
                            if sentinel is not None:
                                await ws.send(session.replay(*sentinel))
                            if show:
                                self._emit(event)
                            if (
                                self.options.max_messages is not None
                                and self.received >= self.options.max_messages
                            ):
                                await ws.close(1000)
                                return 1000, "enough messages", True
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(ws.close(1000, "consumer stopping"))
                    raise
                except p.ProtocolError as exc:
                    log.error("server broke the protocol: %s", exc.message)
                    await ws.close(int(exc.close_code), exc.message[:100])
                    return int(exc.close_code), exc.message, False
                finally:
                    if beat_task is not None:
                        beat_task.cancel()
        except ConnectionClosed as exc:
            if self._dead:
                log.warning("no HEARTBEAT_ACK within the interval: connection presumed dead")
                return None, "heartbeat not acknowledged", False
            rcvd = exc.rcvd
            return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else ""), False
        except (OSError, TimeoutError) as exc:
            return None, str(exc), False
        finally:
            session.closed()
            self.backoff.session_ended(time.monotonic())

    async def _beat(self, ws: object, session: p.ClientSession) -> None:
        from websockets.asyncio.client import ClientConnection

        assert isinstance(ws, ClientConnection)
        sched = session.heartbeats
        assert sched is not None
        while True:
            now = time.monotonic()
            decision = sched.poll(now)
            if decision is p.BeatDecision.DEAD:
                # A dead peer will not answer a close handshake: drop the TCP connection.
                self._dead = True
                ws.transport.abort()
                return
            if decision is p.BeatDecision.SEND:
                await ws.send(session.heartbeat(now))
                continue
            await asyncio.sleep(max(0.0, sched.deadline() - now))


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``agent watch``."""
    parser.add_argument("--server", default="http://127.0.0.1:8765",
                        help="broker base URL (http(s):// or ws(s)://); default %(default)s")
    parser.add_argument("--dev-id", required=True, help="developer id (header dev-id)")
    parser.add_argument("--api-key-file", required=True, type=Path,
                        help="file holding the developer API key (mode 0600)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--since", type=int, help="first REPLAY everything after this seq")
    parser.add_argument("--before", type=int, help="upper bound (exclusive) for REPLAY")
    parser.add_argument("--replay-only", action="store_true",
                        help="print what REPLAY returns (needs --since) and exit")
    parser.add_argument("--idle-timeout", type=float, default=2.0,
                        help="with --replay-only: exit after this many idle seconds")
    parser.add_argument("--ca-file", help="CA bundle for wss:// (default: system store)")
    parser.add_argument("--count", type=int, help="exit after this many dispatches")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``agent watch``."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.replay_only and args.since is None:
        print("agent watch: --replay-only needs --since SEQ", file=sys.stderr)
        return 64
    try:
        from agent.secrets import read_secret

        api_key = read_secret(args.api_key_file, what="API key")
        options = WatchOptions(
            server=args.server, dev_id=args.dev_id, api_key=str(api_key),
            json_output=args.json, since=args.since, before=args.before,
            replay_only=args.replay_only, idle_timeout_s=args.idle_timeout,
            ca_file=args.ca_file, max_messages=args.count,
        )
        endpoints(options.server)

        def out(line: str) -> None:
            print(line, flush=True)

        return asyncio.run(Watcher(options, out=out).run())
    except WatchError as exc:
        print(f"agent watch: {exc}", file=sys.stderr)
        return exc.status
    except Exception as exc:  # SecretError and friends: a clear message, not a traceback
        if type(exc).__name__ in ("SecretError",):
            print(f"agent watch: {exc}", file=sys.stderr)
            return EX_CONFIG
        raise
