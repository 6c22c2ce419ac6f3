"""Soak: the whole daemon with simulated H10-rate sensors streaming into ``agent relay``.

What runs (three processes on loopback, nothing mocked):

* ``python -m agent relay --port 0`` with a fresh SQLite database and one developer key;
* ``python -m agent run --simulate --quiet`` minting user tokens from that relay
  (``--token-url``), with the simulated sensors set to H10 rates through ``AGENT_*``
  environment overrides: ACC 200 Hz, HR 1 Hz;
* in this process, a consumer (:class:`agent.watch.Watcher`, a developer connection) that stamps
  every DISPATCH with ``time.time()`` on arrival.

The **H10 variant** (default): the Polar H10 has no gyroscope, but ``sensors.simulation.
gyro_rate_hz`` must be > 0 (the simulation itself accepts ``None``; the configuration schema does
not expose that), so the lowest honest setting is used: the simulated gyro runs at 1 Hz and
``processing.gyro_submit_hz = 0`` turns GYROSCOPE readings off, as a strap without a gyro would
have none. The simulated barometer (1 Hz) cannot be switched off through the configuration
either; it adds PRESSURE/FLOORS readings an H10 would not produce. ``--gyro-hz 200`` is the
**ACC+GYRO variant** (a Verity Sense–like load, GYROSCOPE readings at their default rate).

What is measured:

* **CPU fraction** of the daemon process: ``utime + stime`` from ``/proc/<pid>/stat`` divided by
  wall time, over the whole run and after ``--warmup`` seconds (start-up imports numpy/scipy and
  opens SQLite, which is not steady state). The relay's CPU is shown for context.
* **RSS** (``VmRSS`` from ``/proc/<pid>/status``) every ``--interval`` seconds, with the slope
  of a least-squares line over the post-warm-up samples ("flat" means the slope is noise).
* **Latency, sample time → DISPATCH at the consumer**: receive time minus the reading's ``ts``.
  This includes, by design, time the reading spent *before it existed*: a simulated sensor block
  (like a real PMD notification) is delivered only when its last sample is due (0.1 s blocks in
  the simulation, ~0.18 s in an H10 ACC notification), and the decimator's output time stamps
  are grid times inside such a block; STEPS/CADENCE/DISTANCE/FLOORS are emitted after a
  detection delay and their ``ts`` is the event or period time. So the per-type table is the
  honest "how old is the data a consumer sees", not the transport cost.
* **Transport latency (approximate)** for ACCELERATION (and GYROSCOPE), whose ``ts`` are grid
  times emitted as soon as the block holding them is processed: the receive time minus the
  moment the simulated block that carried the sample was emitted. Block ends lie on a grid
  ``phase + k × block_s`` in session time with an unknown ``phase``; the phase is fitted as the
  latest one that keeps every reading causal (no reading received before its block was
  emitted). That over-counts by one block (100 ms) whenever a grid value could only be finished
  with the next block's samples (the decimator's bin after the grid time), so a **lower bound**
  is shown too: receive time minus the latest block end between sample time and arrival (exact
  whenever real transport is below one block; meaningless in compressed runs, where a block
  lasts only ``0.1 / speed`` s). HEART_RATE cannot be treated like that: its ``ts`` is the
  notification time, but the emission policy rate-limits it (at most one per
  ``min_interval_s``) and sends a pending value on a later tick with the time it was observed,
  so its latency includes up to ~1 s of deliberate policy delay.
* In time-compressed runs (``--speed`` > 1) sample time runs ``speed`` × faster than the wall
  clock from the simulation start; latencies are converted to wall seconds
  (``recv − start − (ts − start) / speed``) with ``start`` fitted so that the fastest reading has
  zero latency, so those figures are relative and only the real-time run's are absolute.
* **Loss**: after the run the daemon is stopped with SIGTERM and must exit 0; then the
  readings it reports it stored (``readings_total`` in its ``status.json``) must equal the
  distinct readings the consumer saw live plus a REPLAY from seq 0, and the relay store's row
  count; the daemon's outbox must be empty (depth 0, nothing dropped).

Usage::

    .venv/bin/python bench/soak.py                      # 10 min real time, H10 rates
    .venv/bin/python bench/soak.py --gyro-hz 200         # ACC+GYRO variant
    .venv/bin/python bench/soak.py --minutes 60 --speed 10   # 60 simulated min in 6 wall min
    .venv/bin/python bench/soak.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import protocol as p
from agent.relay.store import DispatchStore
from agent.watch import Watcher, WatchOptions

REPO = Path(__file__).resolve().parents[1]
#: Simulated sensor block length (``sensors.simulated.SimulationConfig.block_s`` default).
SIM_BLOCK_S = 0.1
#: Types whose ``ts`` is a sample (grid) time emitted as soon as its block is processed, so
#: transport latency can be estimated. HEART_RATE is not: the emission policy rate-limits it and
#: emits a pending value on a later tick with the time it was *observed*.
TRANSPORT_TYPES = ("ACCELERATION", "GYROSCOPE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcSample:
    """One look at a process: wall time since start, CPU seconds, RSS bytes."""

    t: float
    cpu_s: float
    rss: int


@dataclass
class Collected:
    """Everything the consumer saw: (type, receive time, ts text, seq) per distinct DISPATCH."""

    arrivals: list[tuple[str, float, str, int]] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)

    def on_dispatch(self, d: p.Dispatch) -> None:
        now = time.time()
        if d.seq in self.seqs:
            return
        self.seqs.add(d.seq)
        self.arrivals.append((d.t, now, str(d.d.get("ts", "")), d.seq))


def proc_sample(pid: int, t0: float) -> ProcSample | None:
    """CPU (utime+stime) and VmRSS of ``pid``; None once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return ProcSample(time.monotonic() - t0, cpu, rss)


def quantiles(xs: list[float]) -> dict[str, float | int | None]:
    """n, p50, p99, max in milliseconds."""
    if not xs:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(xs)

    def q(f: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(f * len(s)) - 1))]

    return {
        "n": len(s),
        "p50_ms": round(q(0.50) * 1e3, 2),
        "p99_ms": round(q(0.99) * 1e3, 2),
        "max_ms": round(s[-1] * 1e3, 2),
    }


def fit_phase(ts: list[float], recv_session: list[float], block_s: float) -> float:
    """Latest block-grid phase (seconds in [0, block_s)) under which every reading is causal.

    A reading with sample time ``t`` left the sensor at the first block end ``e >= t`` on the grid
    ``phase + k * block_s``; it cannot arrive before ``e``. Among the causal phases the one
    with the smallest median transport is the latest, i.e. the closest to the truth from below.
    """
    t = np.asarray(ts, dtype=float)
    r = np.asarray(recv_session, dtype=float)
    best: tuple[float, float] | None = None
    steps = 400
    for k in range(steps):
        ph = block_s * k / steps
        trans = r - (t + np.mod(ph - t, block_s))
        if float(trans.min()) < 0:
            continue
        med = float(np.median(trans))
        if best is None or med < best[0]:
            best = (med, ph)
    return best[1] if best is not None else 0.0


def analyse_latency(
    arrivals: list[tuple[str, float, str, int]], speed: float, warm_wall: float
) -> dict[str, Any]:
    """Per-type and overall latency; transport estimates for HR and ACC."""
    rows = [(typ, recv, p.ts_to_unix(ts)) for typ, recv, ts, _ in arrivals if ts]
    if not rows:
        return {"by_type": {}, "overall": quantiles([]), "transport": {}}
    if speed == 1.0:
        start = 0.0  # irrelevant: wall and sample time coincide
    else:
        # recv - start - (ts - start)/speed >= 0 for all; the fastest reading defines start
        start = min((recv - ts / speed) / (1 - 1 / speed) for _, recv, ts in rows)

    def wall_latency(recv: float, ts: float) -> float:
        if speed == 1.0:
            return recv - ts
        return recv - start - (ts - start) / speed

    by_type: dict[str, list[float]] = {}
    every: list[float] = []
    for typ, recv, ts in rows:
        if recv < warm_wall:
            continue
        lat = wall_latency(recv, ts)
        by_type.setdefault(typ, []).append(lat)
        every.append(lat)
    transport: dict[str, Any] = {}
    sel = [(typ, recv, ts) for typ, recv, ts in rows
           if typ in TRANSPORT_TYPES and recv >= warm_wall]
    if sel:
        # session-time receive stamps so the block grid is regular
        if speed == 1.0:
            rs = [recv for _, recv, _ in sel]
        else:
            rs = [start + (recv - start) * speed for _, recv, _ in sel]
        ts_ = [ts for _, _, ts in sel]
        ph = fit_phase(ts_, rs, SIM_BLOCK_S)
        per: dict[str, list[float]] = {}
        low: list[float] = []
        for (typ, _, t), r in zip(sel, rs, strict=True):
            e = t + ((ph - t) % SIM_BLOCK_S)
            per.setdefault(typ, []).append((r - e) / speed)
            # lower bound: the reading left with *some* block ending in [t, r]; the latest one
            # gives the smallest transport (a grid value the decimator can only finish with the
            # next block's samples goes out one block later than `e`, which is buffering)
            last_end = r - ((r - ph) % SIM_BLOCK_S)
            low.append((r - (last_end if last_end >= t else e)) / speed)
        transport = {typ: quantiles(v) for typ, v in sorted(per.items())}
        transport["all"] = quantiles([x for v in per.values() for x in v])
        transport["lower bound"] = quantiles(low)
    return {
        "by_type": {typ: quantiles(v) for typ, v in sorted(by_type.items())},
        "overall": quantiles(every),
        "transport": transport,
    }


async def read_first_line(proc: asyncio.subprocess.Process, limit_s: float) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), limit_s)
    return line.decode().strip()


async def drain(stream: asyncio.StreamReader | None, sink: Path) -> None:
    """Keep a child's pipe empty (a full pipe would stall it) and keep its output for errors."""
    if stream is None:
        return
    with sink.open("ab") as f:
        while chunk := await stream.read(65536):
            f.write(chunk)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    key_file = tmp / "api-key"
    key = secrets.token_urlsafe(24)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    db = tmp / "relay.sqlite"
    state = tmp / "state"
    state.mkdir()
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    relay = await asyncio.create_subprocess_exec(
        py, "-m", "agent", "relay", "--port", "0", "--db", str(db), "--dev-id", "soak",
        "--api-key-file", str(key_file), cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    daemon: asyncio.subprocess.Process | None = None
    drains: list[asyncio.Task[None]] = []
    try:
        first = await read_first_line(relay, 30)
        prefix = "relay listening on "
        if not first.startswith(prefix):
            raise SystemExit(f"unexpected relay output: {first!r}")
        base = first[len(prefix):]
        hostport = base.removeprefix("http://")
        drains.append(asyncio.create_task(drain(relay.stdout, tmp / "relay.out")))
        drains.append(asyncio.create_task(drain(relay.stderr, tmp / "relay.err")))

        collected = Collected()
        watcher = Watcher(WatchOptions(server=base, dev_id="soak", api_key=key),
                          out=lambda _s: None, on_dispatch=collected.on_dispatch)
        watch_task = asyncio.create_task(watcher.run())

        denv = dict(env)
        denv["AGENT_SENSORS__SIMULATION__ACC_RATE_HZ"] = str(args.acc_hz)
        if args.gyro_hz is None:
            denv["AGENT_SENSORS__SIMULATION__GYRO_RATE_HZ"] = "1"
            denv["AGENT_PROCESSING__GYRO_SUBMIT_HZ"] = "0"
        else:
            denv["AGENT_SENSORS__SIMULATION__GYRO_RATE_HZ"] = str(args.gyro_hz)
        denv["AGENT_SENSORS__SIMULATION__SPEED"] = str(args.speed)
        denv["AGENT_SENSORS__SIMULATION__SEED"] = str(args.seed)
        daemon = await asyncio.create_subprocess_exec(
            py, "-m", "agent", "run", "--simulate", "--quiet", "--state-dir", str(state),
            "--server", f"ws://{hostport}/connect", "--token-url", base, "--dev-id", "soak",
            "--api-key-file", str(key_file), "--user-id", "wearer", cwd=REPO, env=denv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        drains.append(asyncio.create_task(drain(daemon.stdout, tmp / "daemon.out")))
        drains.append(asyncio.create_task(drain(daemon.stderr, tmp / "daemon.err")))
        t0 = time.monotonic()
        wall0 = time.time()
        wall_s = args.minutes * 60.0 / args.speed
        samples: list[ProcSample] = []
        relay_samples: list[ProcSample] = []
        next_t = 0.0
        last_progress = 0.0
        while True:
            el = time.monotonic() - t0
            if el >= next_t or el >= wall_s:
                s = proc_sample(daemon.pid, t0)
                r = proc_sample(relay.pid, t0)
                if s is None or daemon.returncode is not None:
                    raise SystemExit(f"the daemon exited early; see {tmp}/daemon.err")
                samples.append(s)
                if r is not None:
                    relay_samples.append(r)
                next_t += args.interval
                if not args.json and el - last_progress >= 60:
                    last_progress = el
                    print(f"  … {el:5.0f} s  cpu {s.cpu_s:6.2f} s  rss {s.rss / 2**20:6.1f} MB  "
                          f"{len(collected.arrivals)} dispatches", file=sys.stderr, flush=True)
            if el >= wall_s:
                break
            await asyncio.sleep(min(next_t, wall_s) - el)

        # stop the daemon: SIGTERM, exit 0, outbox flushed
        t_stop = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(daemon.wait(), 60)
        except TimeoutError:
            daemon.kill()
            rc = await daemon.wait()
        stop_s = time.monotonic() - t_stop
        # let the last live DISPATCHes arrive, then stop the live consumer
        idle_since = time.monotonic()
        n_seen = len(collected.arrivals)
        while time.monotonic() - idle_since < 2.0:
            await asyncio.sleep(0.2)
            if len(collected.arrivals) != n_seen:
                n_seen = len(collected.arrivals)
                idle_since = time.monotonic()
        live_seqs = set(collected.seqs)
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        # REPLAY everything from seq 0 with a second consumer
        replayed: set[int] = set()
        rw = Watcher(WatchOptions(server=base, dev_id="soak", api_key=key, since=0,
                                  replay_only=True, idle_timeout_s=3.0),
                     out=lambda _s: None, on_dispatch=lambda d: replayed.add(d.seq))
        await rw.run()
        store = DispatchStore(db, readonly=True)
        try:
            stored = store.count()
        finally:
            with contextlib.suppress(Exception):
                store.close()
        status = json.loads((state / "status.json").read_text())
    finally:
        for proc in (daemon, relay):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        for d in drains:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(d, 5)

    # -- analysis ------------------------------------------------------------------------------
    warm = args.warmup
    total_cpu = samples[-1].cpu_s / samples[-1].t if samples[-1].t > 0 else math.nan
    post = [s for s in samples if s.t >= warm]
    if len(post) >= 2:
        warm_cpu = (post[-1].cpu_s - post[0].cpu_s) / (post[-1].t - post[0].t)
    else:
        warm_cpu = math.nan
    relay_cpu = (relay_samples[-1].cpu_s / relay_samples[-1].t
                 if relay_samples and relay_samples[-1].t > 0 else math.nan)
    slope = math.nan
    if len(post) >= 3:
        xs = [s.t for s in post]
        ys = [s.rss / 2**20 for s in post]
        slope = statistics.linear_regression(xs, ys).slope * 3600.0  # MB per wall hour
    lat = analyse_latency(collected.arrivals, args.speed, wall0 + warm)
    if args.arrivals is not None:
        with args.arrivals.open("w") as f:
            f.write("type,recv_unix,ts,seq\n")
            for typ, recv, ts, seq in collected.arrivals:
                f.write(f"{typ},{recv:.6f},{ts},{seq}\n")
    types: dict[str, int] = {}
    for typ, *_ in collected.arrivals:
        types[typ] = types.get(typ, 0) + 1
    readings_total = int(status.get("readings_total", -1))
    outbox = status.get("outbox", {})
    distinct = len(live_seqs | replayed)
    loss = {
        "daemon_readings_total": readings_total,
        "consumer_live_distinct": len(live_seqs),
        "consumer_live_plus_replay_distinct": distinct,
        "replay_distinct": len(replayed),
        "relay_store_count": stored,
        "uplink_connections": status.get("uplink", {}).get("connections"),
        "outbox_depth": outbox.get("depth"),
        "outbox_dropped": outbox.get("dropped"),
        "lost_vs_consumer": readings_total - distinct,
        "lost_vs_store": readings_total - stored,
        "missed_live": readings_total - len(live_seqs),
    }
    ok_loss = (loss["lost_vs_consumer"] == 0 and loss["lost_vs_store"] == 0
               and outbox.get("depth") == 0 and not outbox.get("dropped") and rc == 0)
    result = {
        "config": {
            "variant": "ACC+GYRO" if args.gyro_hz is not None else "H10",
            "acc_hz": args.acc_hz,
            "gyro_hz": args.gyro_hz if args.gyro_hz is not None else "1 (no GYROSCOPE readings)",
            "speed": args.speed,
            "simulated_minutes": args.minutes,
            "wall_s": round(samples[-1].t, 1),
            "warmup_s": warm,
            "interval_s": args.interval,
            "cpu_count": os.cpu_count(),
            # other work on the machine inflates latency tails: show how busy it was
            "loadavg_1m_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
            "loadavg_15m_end": round(os.getloadavg()[2], 2),
        },
        "cpu": {
            "daemon_fraction_overall": round(total_cpu, 5),
            "daemon_fraction_after_warmup": round(warm_cpu, 5),
            "daemon_cpu_s": round(samples[-1].cpu_s, 2),
            "relay_fraction_overall": round(relay_cpu, 5),
        },
        "rss": {
            "samples": [{"t_s": round(s.t, 1), "cpu_s": round(s.cpu_s, 2),
                         "rss_mb": round(s.rss / 2**20, 2)} for s in samples],
            "max_mb": round(max(s.rss for s in samples) / 2**20, 2),
            "slope_mb_per_h_after_warmup": round(slope, 3),
        },
        "latency": lat,
        "dispatches_by_type": dict(sorted(types.items())),
        "loss": loss,
        "loss_ok": ok_loss,
        "daemon_exit": rc,
        "daemon_stop_s": round(stop_s, 2),
        "workdir": str(tmp),
    }
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
        result["workdir"] = None
    return result


def fmt_ms(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def print_report(r: dict[str, Any]) -> None:
    c = r["config"]
    print(f"soak: variant {c['variant']}  ACC {c['acc_hz']} Hz  gyro {c['gyro_hz']} Hz  "
          f"speed {c['speed']}×  {c['simulated_minutes']} simulated min in {c['wall_s']} s wall "
          f"({c['cpu_count']} CPUs)")
    print(f"machine load average (1 min) at start/end {c['loadavg_1m_start_end']}, 15 min at end "
          f"{c['loadavg_15m_end']}: other processes inflate latency tails")
    cpu = r["cpu"]
    print("\nCPU (share of one core, daemon process)")
    print(f"  overall             {cpu['daemon_fraction_overall'] * 100:6.2f} %   "
          f"({cpu['daemon_cpu_s']} CPU s)")
    warm_pct = cpu["daemon_fraction_after_warmup"] * 100
    print(f"  after {c['warmup_s']:>4.0f} s warm-up {warm_pct:6.2f} %   target ≤ 3 %")
    print(f"  relay (context)     {cpu['relay_fraction_overall'] * 100:6.2f} %")
    print("\nRSS over time (daemon)")
    print("     t [s]   CPU [s]   RSS [MB]")
    for s in r["rss"]["samples"]:
        print(f"  {s['t_s']:8.1f}  {s['cpu_s']:8.2f}  {s['rss_mb']:9.2f}")
    print(f"  max {r['rss']['max_mb']} MB (target ≤ 80); slope after warm-up "
          f"{r['rss']['slope_mb_per_h_after_warmup']} MB/h")
    lat = r["latency"]
    note = "" if c["speed"] == 1.0 else "  (compressed run: wall-clock, offset fitted; relative)"
    print(f"\nLatency sample time → DISPATCH at the consumer, after warm-up [ms]{note}")
    print(f"  {'type':<16} {'n':>7} {'p50':>8} {'p99':>8} {'max':>8}")
    for typ, q in [*lat["by_type"].items(), ("(all)", lat["overall"])]:
        print(f"  {typ:<16} {q['n']:>7} {fmt_ms(q['p50_ms']):>8} {fmt_ms(q['p99_ms']):>8} "
              f"{fmt_ms(q['max_ms']):>8}")
    print("\nTransport latency (block emission → DISPATCH, approx.) [ms]: 'all' assumes each "
          "grid value\n  leaves with the first block ending after it (over-counts one block, "
          "100 ms, when the\n  decimator needs the next block); 'lower bound' uses the latest "
          "block end before arrival")
    for typ, q in lat["transport"].items():
        print(f"  {typ:<16} {q['n']:>7} {fmt_ms(q['p50_ms']):>8} {fmt_ms(q['p99_ms']):>8} "
              f"{fmt_ms(q['max_ms']):>8}")
    print("  target p99 ≤ 50 ms while connected")
    by_type = ", ".join(f"{k} {v}" for k, v in r["dispatches_by_type"].items())
    print(f"\nDISPATCHes by type: {by_type}")
    lo = r["loss"]
    print("\nLoss")
    print(f"  daemon exit {r['daemon_exit']} after SIGTERM in {r['daemon_stop_s']} s")
    print(f"  daemon stored (status.json readings_total) {lo['daemon_readings_total']}")
    print(f"  consumer distinct live {lo['consumer_live_distinct']}, + REPLAY from 0 → "
          f"{lo['consumer_live_plus_replay_distinct']} (replay alone {lo['replay_distinct']})")
    print(f"  relay store rows {lo['relay_store_count']}")
    print(f"  outbox depth {lo['outbox_depth']}, dropped {lo['outbox_dropped']}; "
          f"uplink connections {lo['uplink_connections']} (1 = connected throughout)")
    print(f"  LOSS vs consumer {lo['lost_vs_consumer']}, vs store {lo['lost_vs_store']} "
          f"(must be 0): {'OK' if r['loss_ok'] else 'FAIL'}")
    if r.get("workdir"):
        print(f"\nwork directory kept: {r['workdir']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (default 10)")
    ap.add_argument("--speed", type=float, default=1.0, help="simulation speed (1 = real time)")
    ap.add_argument("--acc-hz", type=float, default=200.0)
    ap.add_argument("--gyro-hz", type=float, default=None,
                    help="simulate a gyro at this rate (ACC+GYRO variant); default: H10, no gyro")
    ap.add_argument("--interval", type=float, default=10.0, help="CPU/RSS sampling period (s)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="wall seconds excluded as warm-up (default min(60, half the run))")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    ap.add_argument("--arrivals", type=Path, default=None,
                    help="write every DISPATCH as CSV (type, receive time, ts, seq) to this file")
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(60.0, 0.5 * args.minutes * 60.0 / args.speed)
    result = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0 if result["loss_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
