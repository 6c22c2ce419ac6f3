"""Relay throughput: how fast a producer's backlog drains through ``agent relay``.

A producer sends N SUBMITs as fast as the websocket allows, then one HEARTBEAT; the figure is
readings per second until its ACK (which the relay sends only once every reading is stored in
SQLite and dispatched). The same producer against a bare websocket server that reads frames and
ACKs heartbeats without parsing or storing gives the ceiling of the client and the socket.
With ``--consumer``, a consumer reads every DISPATCH concurrently and must receive them all.
Both servers run as subprocesses (the relay through ``python -m agent relay``), so the producer
and the server do not share one interpreter.

Usage: ``python bench/relay_throughput.py [-n 200000] [--consumer] [--db PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from agent.protocol import DataType, format_ts, submit_text

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789"


def frames(n: int) -> list[str]:
    t0 = 1_700_000_000.0
    out = []
    for i in range(n):
        ts = format_ts(t0 + i * 0.04)
        if i % 3 == 0:
            out.append(submit_text(DataType.HEART_RATE, ts, val=60 + i % 40))
        else:
            out.append(submit_text(DataType.ACCELERATION, ts, vec=(0.1 * i, -9.81, 0.25)))
    return out


async def produce(url: str, token: str | None, texts: list[str]) -> float:
    async with connect(url, ping_interval=None, compression=None, max_size=None) as ws:
        await ws.recv()  # HELLO
        if token is not None:
            await ws.send(json.dumps({"op": 3, "d": {"token": token, "type": 0}}))
            assert json.loads(await ws.recv()) == {"op": 4}
        start = time.perf_counter()
        for text in texts:
            await ws.send(text)
        await ws.send('{"op":0}')
        assert json.loads(await ws.recv()) == {"op": 1}
        return time.perf_counter() - start


async def serve_bare() -> None:
    """The ceiling: a websocket server that reads frames and ACKs heartbeats, nothing else."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"op":2,"d":{"heartbeat_interval":40000}}')
        async for message in ws:
            if message == '{"op":0}':
                await ws.send('{"op":1}')

    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        print(f"relay listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
              flush=True)
        await asyncio.Future()


async def start(argv: list[str]) -> tuple[asyncio.subprocess.Process, str]:
    """Start a server subprocess; return it and its base URL (from its first line)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().strip()
    prefix = "relay listening on "
    if not line.startswith(prefix):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line[len(prefix):]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0.0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stop(proc: asyncio.subprocess.Process) -> float:
    """SIGTERM the server; returns the CPU seconds it used (load-independent cost figure)."""
    cpu = cpu_seconds(proc.pid)
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    return cpu


def mint(base: str, path: str) -> str:
    request = urllib.request.Request(
        base + path, data=b"", method="POST", headers={"dev-id": "bench", "x-api-key": KEY}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token: str = json.loads(response.read())["token"]
    return token


async def bare(texts: list[str]) -> tuple[float, float]:
    proc, base = await start([__file__, "--serve-bare"])
    elapsed = await produce(base.replace("http", "ws") + "/connect", None, texts)
    return elapsed, await stop(proc)


async def relay_run(
    texts: list[str], db: Path, with_consumer: bool
) -> tuple[float, int, float]:
    key_file = db.parent / "bench.key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    # RELAY_PROFILE=out.prof profiles the relay process with cProfile
    profile = os.environ.get("RELAY_PROFILE")
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    proc, base = await start([*prof, "-m", "agent", "relay", "--port", "0", "--db", str(db),
                              "--dev-id", "bench", "--api-key-file", str(key_file)])
    ws_url = base.replace("http", "ws") + "/connect"
    received = 0
    try:
        done = asyncio.Event()
        ready = asyncio.Event()

        async def consume() -> None:
            nonlocal received
            token = await asyncio.to_thread(mint, base, "/auth/developer")
            async with connect(ws_url, ping_interval=None, max_size=None) as ws:
                await ws.recv()
                await ws.send(json.dumps({"op": 3, "d": {"token": token, "type": 1}}))
                await ws.recv()
                ready.set()
                async for _ in ws:
                    received += 1
                    if received == len(texts):
                        done.set()
                        return

        task = None
        if with_consumer:
            task = asyncio.create_task(consume())
            await ready.wait()
        token = await asyncio.to_thread(mint, base, "/auth/user?id=bench-user")
        start_t = time.perf_counter()
        acked = await produce(ws_url, token, texts)
        if task is not None:
            await asyncio.wait_for(done.wait(), 600)
            await task
        total = time.perf_counter() - start_t
    except BaseException:
        await stop(proc)
        raise
    cpu = await stop(proc)
    return (total if with_consumer else acked), received, cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--consumer", action="store_true")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        await serve_bare()
        return
    texts = frames(args.n)
    t_bare, cpu_bare = await bare(texts)
    print(f"bare websocket server : {args.n / t_bare:10.0f} readings/s ({t_bare:.2f} s, "
          f"server CPU {cpu_bare / args.n * 1e6:.1f} us/reading)")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "bench.sqlite3"
        t_relay, received, cpu = await relay_run(texts, db, args.consumer)
    what = f"relay + consumer ({received} received)" if args.consumer else "relay (stored, ACKed)"
    print(f"{what:22s}: {args.n / t_relay:10.0f} readings/s ({t_relay:.2f} s, "
          f"server CPU {cpu / args.n * 1e6:.1f} us/reading)")
    print(f"relay / bare          : {t_bare / t_relay:10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
