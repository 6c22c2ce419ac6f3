"""A loopback TCP proxy that injects network failures between a producer and the relay.

Two failure modes, switchable while running:

* ``cut()`` aborts every open connection at once (RST), as a NAT timeout or a Wi-Fi drop does;
* ``stall()`` keeps the connections open but silently stops forwarding bytes in both directions
  (a half-open connection: no FIN, no RST, nothing); ``resume()`` forwards again, but the stalled
  connections stay dead, as they would after a real partition.

The proxy is real sockets on 127.0.0.1 only; it never sleeps on wall-clock time itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(eq=False)  # identity semantics: pipes live in a set
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stalled: bool = False


class FaultyProxy:
    """``127.0.0.1:<port>`` → ``target_host:target_port`` with injectable faults."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        self._stall_new = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultyProxy:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for the pumps to finish."""
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        """Abort every current connection (both sides see a reset)."""
        for pipe in list(self._pipes):
            self._abort(pipe)
        self.cuts += 1

    def stall(self) -> None:
        """Stop forwarding on every current connection, and on new ones until ``resume``."""
        self._stall_new = True
        for pipe in self._pipes:
            pipe.stalled = True

    def resume(self) -> None:
        """New connections forward again; stalled ones stay black holes."""
        self._stall_new = False

    @property
    def open_connections(self) -> int:
        """Connections currently held by the proxy."""
        return len(self._pipes)

    def _abort(self, pipe: _Pipe) -> None:
        for writer in (pipe.client, pipe.upstream):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        for task in pipe.tasks:
            task.cancel()
        self._pipes.discard(pipe)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pipe = _Pipe(writer, up_writer, stalled=self._stall_new)
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pipe)),
            asyncio.create_task(self._pump(up_reader, writer, pipe)),
        ]
        for task in pipe.tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: _Pipe
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if pipe.stalled:
                    continue  # swallow: the peer never learns
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not pipe.stalled:
                self._abort(pipe)
