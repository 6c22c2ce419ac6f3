"""Drain an outage backlog from the outbox into ``agent relay`` on loopback.

Measures, in one run and against the same relay build (a fresh ``python -m agent relay``
subprocess with its own database for every measurement, so runs do not share a CPU with the
client or a database with each other):

1. **uplink**: a child process opens an outbox pre-filled with ``--n`` readings and runs
   :class:`agent.uplink.Uplink` (REST tokens from the relay) until the broker has ACKed the
   last row; rate = readings / seconds from ``run()`` to that ACK. The child reports its peak
   RSS (``VmHWM``) and its RSS before draining.
2. **bare**: a bare websockets client that holds the same pre-serialised frames in memory
   sends them all, then one HEARTBEAT, and stops the clock at its ACK (the relay ACKs only
   after storing everything): the ceiling for this relay and socket.
3. **peak RSS** of the uplink child for each backlog in ``--rss`` (default 100k and 1M), to
   show that memory does not grow with the backlog.

Usage: ``PYTHONPATH=. .venv/bin/python bench/drain.py [--n 1000000] [--rss 100000,1000000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from agent.outbox import Outbox
from agent.protocol import DataType
from agent.readings import Reading
from agent.uplink import DEFAULT_BARRIER_SPACING_S, DEFAULT_MAX_IN_FLIGHT

ROOT = Path(__file__).resolve().parent.parent
DEV = "bench"
USER = "bench-user"
#: Uplink settings for the drain (command line; the library defaults unless changed).
UPLINK_OPTIONS: dict[str, float] = {}
#: The bare client beats this often so the relay's 4005 watchdog (40 s + leeway) stays quiet.
BARE_BEAT_EVERY = 20_000


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


async def prefill(path: Path, n: int) -> None:
    """Write ``n`` readings (80 % ACCELERATION, 20 % HEART_RATE) in chunks."""
    box = await Outbox.open(path, max_bytes=4 * 1024**3)
    chunk = 50_000
    for start in range(0, n, chunk):
        readings = []
        for i in range(start, min(n, start + chunk)):
            t = 1_700_000_000.0 + i * 0.005
            if i % 5 == 4:
                readings.append(Reading(DataType.HEART_RATE, t, val=60 + i % 40))
            else:
                readings.append(
                    Reading(DataType.ACCELERATION, t, vec=(0.01 * (i % 300), -9.81, 0.25))
                )
        await box.append_durable(readings)
    await box.close()


class RelayProc:
    """``python -m agent relay`` in a subprocess with a fresh database."""

    def __init__(self, workdir: Path, key_file: Path) -> None:
        self.workdir = workdir
        self.key_file = key_file
        self.proc: asyncio.subprocess.Process | None = None
        self.base = ""

    async def __aenter__(self) -> RelayProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "relay.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "relay", "--port", "0",
            "--db", str(self.workdir / "relay.sqlite"),
            "--dev-id", DEV, "--api-key-file", str(self.key_file),
            stdout=asyncio.subprocess.PIPE, stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        )
        log.close()
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode().strip()
        prefix = "relay listening on "
        if not line.startswith(prefix):
            self.proc.kill()
            raise RuntimeError(f"relay did not start: {line!r}")
        self.base = line[len(prefix):]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        await self.proc.wait()

    @property
    def ws_url(self) -> str:
        return self.base.replace("http", "ws", 1) + "/connect"


async def bare_client(relay: RelayProc, frames: list[str], key_file: Path) -> float:
    """Send every frame (a HEARTBEAT every ``BARE_BEAT_EVERY`` frames to stay alive), then one
    last HEARTBEAT; seconds from connect until every beat is ACKed (= all stored)."""
    from agent.tokens import RestToken

    token = await RestToken(relay.base, USER, DEV, api_key_file=key_file).get()
    t0 = time.perf_counter()
    async with connect(relay.ws_url, ping_interval=None, compression=None) as ws:
        await ws.recv()  # HELLO
        await ws.send(json.dumps({"op": 3, "d": {"token": token, "type": 0}}))
        await ws.recv()  # READY
        acks = 0
        all_acked = asyncio.Event()
        beats = 0
        sending = True

        async def reader() -> None:
            nonlocal acks
            async for message in ws:
                if message == '{"op":1}':
                    acks += 1
                    if not sending and acks == beats:
                        all_acked.set()

        task = asyncio.create_task(reader())
        for i, frame in enumerate(frames, 1):
            await ws.send(frame)
            if i % BARE_BEAT_EVERY == 0:
                beats += 1
                await ws.send('{"op":0}')
        beats += 1
        sending = False
        await ws.send('{"op":0}')
        if acks == beats:
            all_acked.set()
        await all_acked.wait()
        task.cancel()
    return time.perf_counter() - t0


async def child(outbox_path: Path, base: str, key_file: Path, options: dict[str, float]) -> None:
    """The uplink side, in its own process so its peak RSS is its own."""
    from agent.tokens import RestToken
    from agent.uplink import Uplink

    box = await Outbox.open(outbox_path, max_bytes=4 * 1024**3)
    stats = await box.stats()
    rss_before = proc_status_kb("VmRSS")
    tokens = RestToken(base, USER, DEV, api_key_file=key_file)
    ws_url = base.replace("http", "ws", 1) + "/connect"
    uplink = Uplink(
        ws_url, tokens, box,
        max_in_flight=int(options["max_in_flight"]),
        barrier_spacing_s=options["barrier_spacing_s"],
    )
    t0 = time.perf_counter()
    task = asyncio.create_task(uplink.run())
    waiter = asyncio.create_task(uplink.wait_for(lambda: uplink.acked_id >= box.last_id))
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
        raise RuntimeError("uplink ended early")
    seconds = time.perf_counter() - t0
    await uplink.close(grace_s=5.0)
    await task
    await box.close()
    print(json.dumps({
        "n": stats.depth, "seconds": seconds, "vmhwm_kb": proc_status_kb("VmHWM"),
        "rss_before_kb": rss_before, "connections": uplink.state.connections,
    }), flush=True)


async def run_child(outbox_path: Path, relay: RelayProc, key_file: Path) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", str(outbox_path), relay.base, str(key_file),
        "--max-in-flight", str(int(UPLINK_OPTIONS["max_in_flight"])),
        "--barrier-spacing", str(UPLINK_OPTIONS["barrier_spacing_s"]),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"drain child failed with {proc.returncode}")
    result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def load_frames(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT frame FROM readings ORDER BY id")]
    finally:
        db.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="backlog for the rate comparison")
    ap.add_argument("--rss", default="100000,1000000",
                    help="comma-separated backlogs for peak RSS ('' to skip)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory")
    ap.add_argument("--repeat", type=int, default=1,
                    help="uplink/bare pairs for the comparison (median; order alternates)")
    ap.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT)
    ap.add_argument("--barrier-spacing", type=float, default=DEFAULT_BARRIER_SPACING_S)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    UPLINK_OPTIONS.update(
        max_in_flight=args.max_in_flight, barrier_spacing_s=args.barrier_spacing
    )
    if args.child:
        await child(Path(args.child[0]), args.child[1], Path(args.child[2]), UPLINK_OPTIONS)
        return

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="drain-bench-") as tmp:
        d = Path(tmp)
        key_file = d / "api.key"
        key_file.write_text(secrets.token_urlsafe(24))
        key_file.chmod(0o600)
        sizes = sorted({args.n, *(int(x) for x in args.rss.split(",") if x.strip())})
        filled: dict[int, Path] = {}
        for n in sizes:
            path = d / f"outbox-{n}.sqlite3"
            t0 = time.perf_counter()
            await prefill(path, n)
            filled[n] = path
            print(f"prefilled {n:,} readings in {time.perf_counter() - t0:.1f} s")

        results: dict[int, dict[str, float]] = {}
        for n in sizes:
            if n != args.n:
                results[n] = await uplink_run(d, filled[n], key_file, f"rss-{n}")

        frames = load_frames(filled[args.n])
        up_runs: list[dict[str, float]] = []
        bare_runs: list[float] = []
        for r in range(args.repeat):
            order = ("uplink", "bare") if r % 2 == 0 else ("bare", "uplink")
            for which in order:
                if which == "uplink":
                    up_runs.append(await uplink_run(d, filled[args.n], key_file, f"up-{r}"))
                else:
                    async with RelayProc(d / f"relay-bare-{r}", key_file) as relay:
                        bare_runs.append(await bare_client(relay, frames, key_file))
                    shutil.rmtree(d / f"relay-bare-{r}", ignore_errors=True)
        del frames
        results[args.n] = max(up_runs, key=lambda x: x["vmhwm_kb"])

    n = args.n
    up_s = statistics.median(x["seconds"] for x in up_runs)
    bare_s = statistics.median(bare_runs)
    up_rate, bare_rate = n / up_s, n / bare_s
    print(f"\ndrain of {n:,} readings into agent relay on loopback "
          f"(median of {args.repeat}, alternating order)")
    up_list = ", ".join(f"{n / x['seconds']:,.0f}" for x in up_runs)
    bare_list = ", ".join(f"{n / x:,.0f}" for x in bare_runs)
    print(f"  uplink (outbox → relay, ACK-proven):  {up_rate:>10,.0f} readings/s "
          f"({up_s:.1f} s; runs: {up_list})")
    print(f"  bare websockets client (in memory):   {bare_rate:>10,.0f} readings/s "
          f"({bare_s:.1f} s; runs: {bare_list})")
    print(f"  ratio uplink / bare:                  {up_rate / bare_rate:>10.2f}  (target ≥ 0.5)")
    print("\npeak RSS of the uplink process while draining")
    for size in sizes:
        res = results[size]
        print(f"  backlog {size:>9,}: VmHWM {res['vmhwm_kb'] / 1024:7.1f} MiB "
              f"(RSS before draining {res['rss_before_kb'] / 1024:6.1f} MiB), "
              f"{size / res['seconds']:,.0f} readings/s")


async def uplink_run(d: Path, filled: Path, key_file: Path, tag: str) -> dict[str, float]:
    """Drain a fresh copy of ``filled`` through a fresh relay in a child process."""
    work = d / f"drain-{tag}.sqlite3"
    shutil.copyfile(filled, work)
    try:
        async with RelayProc(d / f"relay-{tag}", key_file) as relay:
            return await run_child(work, relay, key_file)
    finally:
        work.unlink()
        shutil.rmtree(d / f"relay-{tag}", ignore_errors=True)

if __name__ == "__main__":
    asyncio.run(main())
