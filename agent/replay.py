"""``agent replay DIR``: run a recording through exactly the live processing pipeline.

Theory of operation
-------------------
A recording (``agent-recording/1``, see ``sensors.recording``) is turned back into the sample
objects a live source emits: accelerometer and gyroscope rows are cut into blocks of
:data:`BLOCK_S` seconds (a live strap delivers ~0.2 s blocks; totals do not depend on the block
size because every stage carries its state, only the exact emission instants may); heart-rate,
pressure and foot-pod rows become one sample each. All streams are merged by the time each
sample becomes available (the last time in it) and fed to the same
:class:`~agent.processing.pipeline.Processor` the daemon uses, with
:meth:`~agent.processing.pipeline.Processor.tick` called on every whole second of *recorded* time
(the daemon ticks once a second of wall time). Nothing reads the wall clock, so a replay is
deterministic and runs as fast as the machine allows; ``--realtime`` only adds sleeps.

Totals accumulate over the whole recording (``totals_reset="never"``, nothing persisted), so a
replay never depends on the replaying machine's timezone or state directory.

The ``[processing]`` settings come from the same configuration ``agent run`` reads (``--config``,
``$AGENT_CONFIG``, the default file, ``AGENT_PROCESSING__*``), so a calibrated
``step_length_factor`` or changed submit rates apply to a replay exactly as to live data; only the
height has its own precedence (``--height``, then the recording's ``meta.json``, then the config).

Readings of different stages leave the pipeline slightly out of time order (steps are confirmed
up to a few seconds after they happen, rate-limited values are sent with the time they were
observed); a small heap re-orders them within :func:`reorder_window` (12 s with the default
emission policies) so the ``--jsonl`` output is in ``ts`` order. That window is also how far the
output of ``--realtime`` trails the recording, like a live agent's own processing delay.

Output: ``--jsonl`` prints every SUBMIT frame, one JSON object per line; otherwise a summary
(totals, duration, stream rates, readings per type, replay speed). ``--server URL`` streams the
readings to a broker through the outbox and uplink (:func:`stream_to_server`).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

import numpy as np

if TYPE_CHECKING:
    from agent.processing.pipeline import ProcessingConfig, Processor
    from agent.readings import Reading
    from agent.tokens import TokenProvider
    from sensors.base import SensorSample
    from sensors.recording import Recording

#: Seconds of accelerometer/gyroscope data per replayed block. Live blocks are ~0.2 s; 1 s keeps
#: per-block overhead low while staying within the cadence estimator's latency allowance.
BLOCK_S: Final = 1.0
#: Processor.tick spacing in recorded time (the daemon ticks every second).
TICK_S: Final = 1.0
#: Upper bound of how long after a step its STEPS/DISTANCE value leaves the step detector:
#: ``settle_s`` (0.8 s) + the refractory window + a weak step held for up to two more step
#: intervals of at most 2 s. Measured maximum over both datasets and a simulated day: 3.2 s.
STEP_CONFIRM_LAG_S: Final = 7.0
#: sysexits: bad command line, malformed recording, missing recording, bad configuration.
EX_USAGE: Final = 64
EX_DATAERR: Final = 65
EX_NOINPUT: Final = 66
EX_CONFIG: Final = 78


class ReplayError(Exception):
    """The recording or the arguments cannot be replayed; the message says why.

    ``status`` is the sysexits code the command exits with.
    """

    def __init__(self, message: str, status: int = EX_DATAERR) -> None:
        super().__init__(message)
        self.status = status


def reorder_window(config: ProcessingConfig) -> float:
    """Seconds of output held back to restore ``ts`` order (see the module docstring).

    A value can be sent up to its type's ``min_interval_s`` after it was observed (rate limit),
    and a step's value is observed up to :data:`STEP_CONFIRM_LAG_S` after the step.
    """
    limits = [p.min_interval_s for p in config.emission.values()]
    return STEP_CONFIRM_LAG_S + max(limits, default=0.0)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``agent replay``."""
    parser.add_argument("dir", metavar="DIR", type=Path, help="recording directory (meta.json …)")
    parser.add_argument(
        "--config", type=Path, metavar="PATH",
        help="config file whose [processing] settings to use (default: the one 'agent run' "
        "reads)",
    )
    parser.add_argument(
        "--jsonl", action="store_true", help="print every SUBMIT frame, one JSON object per line"
    )
    parser.add_argument(
        "--height",
        type=float,
        metavar="M",
        help="wearer's height in metres (default: meta.json subject.height_m, else "
        "processing.height_m of the config)",
    )
    parser.add_argument(
        "--realtime", action="store_true", help="pace the replay at the recording's own speed"
    )
    parser.add_argument(
        "--calibrate", type=float, metavar="METRES",
        help="the recording is a walk of this known distance: print the step_length_factor "
        "to put in [processing] and exit",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="stream the readings to this broker through the outbox (wss://…/connect)",
    )
    parser.add_argument("--token-file", metavar="PATH",
                        help="with --server: file holding a fresh producer token")
    parser.add_argument("--token-command", metavar="CMD",
                        help="with --server: command printing a fresh producer token")
    parser.add_argument("--token-url", metavar="URL",
                        help="with --server: mint tokens at URL/auth/user?id= (needs --dev-id, "
                        "--api-key-file, --user-id)")
    parser.add_argument("--dev-id", metavar="ID", help="developer id for --token-url")
    parser.add_argument("--api-key-file", metavar="PATH", help="API key file for --token-url")
    parser.add_argument("--user-id", metavar="ID", help="user id for --token-url")
    parser.add_argument("--allow-insecure-ws", action="store_true",
                        help="with --server: allow ws:// to a non-loopback host")


def run(args: argparse.Namespace) -> int:
    """Run ``agent replay``; returns the exit status (sysexits: 64 usage, 65 bad recording,
    66 no recording, 78 bad configuration)."""
    from agent.config import ConfigError, load_config

    try:
        section = load_config(args.config, env=_config_env()).processing
    except ConfigError as exc:
        print(f"agent replay: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        rec = load(args.dir)
        height = resolve_height(rec, args.height, section.height_m)
    except ReplayError as exc:
        print(f"agent replay: error: {exc}", file=sys.stderr)
        return exc.status
    for warning in rec.warnings:
        print(f"agent replay: warning: {warning}", file=sys.stderr)
    if args.calibrate is not None:
        from agent.processing.distance import calibrate_from_recording

        try:
            factor = calibrate_from_recording(args.dir, args.calibrate, height_m=height)
        except ValueError as exc:
            print(f"agent replay: error: {exc}", file=sys.stderr)
            return EX_USAGE
        print(f"step_length_factor = {factor:.4f}   # [processing], height_m = {height:g}")
        return 0
    from agent.processing.pipeline import ProcessingConfig

    try:
        config = ProcessingConfig(
            height_m=height,
            step_length_factor=section.step_length_factor,
            acc_submit_hz=section.acc_submit_hz,
            gyro_submit_hz=section.gyro_submit_hz,
            totals_reset="never",
        )
    except ValueError as exc:  # (the config's own ranges should already exclude this)
        print(f"agent replay: config error: processing: {exc}", file=sys.stderr)
        return EX_CONFIG
    stats = ReplayStats()
    readings = replay_readings(rec, config, realtime=args.realtime, stats=stats)
    if args.server:
        return asyncio.run(stream_to_server(readings, args))
    if args.jsonl:
        return write_jsonl(readings, sys.stdout)
    for _ in readings:
        pass
    print(summary(rec, stats, height, config))
    return 0


# -- loading ---------------------------------------------------------------------------------


def _config_env() -> dict[str, str]:
    """The environment for loading the config outside the service.

    Replay needs only ``[processing]``, but the loader validates the whole file, and the README's
    production config names secrets as ``cred:NAME`` (systemd credentials), which only resolve
    with ``$CREDENTIALS_DIRECTORY`` set. As ``agent check-config`` does, point it at the service's
    credentials directory; replay never reads those files.
    """
    from agent.check_config import with_service_credentials

    return with_service_credentials(os.environ)



def load(directory: Path) -> Recording:
    """Read a recording, turning every failure into a :class:`ReplayError`."""
    from sensors.recording import RecordingError, read_recording

    if not directory.exists():
        raise ReplayError(f"{directory}: no such directory", EX_NOINPUT)
    if not directory.is_dir():
        raise ReplayError(f"{directory}: not a directory", EX_NOINPUT)
    try:
        rec = read_recording(directory)
    except RecordingError as exc:
        raise ReplayError(str(exc)) from None
    except OSError as exc:
        raise ReplayError(f"{directory}: {exc}") from None
    if all(
        x is None or len(x) == 0
        for x in (rec.acc_t, rec.gyro_t, rec.hr, rec.pressure_t, rec.rsc and rec.rsc.get("t"))
    ):
        raise ReplayError(f"{directory}: recording holds no samples")
    return rec


def resolve_height(rec: Recording, height: float | None, default: float = 1.75) -> float:
    """--height, else meta.json ``subject.height_m``, else ``default`` (the config's); validated.

    The recording's own subject wins over the config: the config describes whoever wears this
    agent's sensors, the recording whoever was recorded.
    """
    source, status = "--height", EX_USAGE
    if height is None:
        subject = rec.meta.get("subject")
        h = subject.get("height_m") if isinstance(subject, dict) else None
        if isinstance(h, int | float) and not isinstance(h, bool):
            height, source, status = float(h), "meta.json subject.height_m", EX_DATAERR
        else:
            return default
    if not (math.isfinite(height) and 0.5 <= height <= 2.6):
        raise ReplayError(f"{source} must be between 0.5 and 2.6 m, got {height}", status)
    return height


# -- samples ---------------------------------------------------------------------------------


def _blocks(
    t: np.ndarray, xyz: np.ndarray, make: Callable[[np.ndarray, np.ndarray], SensorSample]
) -> Iterator[tuple[float, SensorSample]]:
    if t.size == 0:
        return
    start = math.floor(float(t[0]) / BLOCK_S) * BLOCK_S
    n_edges = math.ceil((float(t[-1]) - start) / BLOCK_S) + 1
    edges = start + BLOCK_S * np.arange(1, n_edges + 1)
    cuts = np.searchsorted(t, edges, side="left")
    lo = 0
    for hi in cuts.tolist():
        if hi > lo:
            yield float(t[hi - 1]), make(t[lo:hi], xyz[lo:hi])
            lo = hi
    if lo < t.size:
        yield float(t[-1]), make(t[lo:], xyz[lo:])


def iter_samples(rec: Recording) -> Iterator[SensorSample]:
    """The recording's samples, merged in the order a live agent would have received them."""
    from sensors.base import AccBlock, GyroBlock, HeartRateSample, PressureSample, RscSample

    streams: list[Iterable[tuple[float, SensorSample]]] = []
    if rec.acc_t is not None and rec.acc is not None:
        streams.append(_blocks(rec.acc_t, rec.acc, lambda t, x: AccBlock(t, x, "replay")))
    if rec.gyro_t is not None and rec.gyro is not None:
        streams.append(_blocks(rec.gyro_t, rec.gyro, lambda t, x: GyroBlock(t, x, "replay")))
    if rec.hr:
        streams.append(
            (t, HeartRateSample(t, bpm, rr, None, "replay")) for t, bpm, rr in rec.hr
        )
    if rec.pressure_t is not None and rec.pressure_hpa is not None:
        streams.append(
            (t, PressureSample(t, p, "replay"))
            for t, p in zip(rec.pressure_t.tolist(), rec.pressure_hpa.tolist(), strict=True)
        )
    if rec.rsc:
        cols = [rec.rsc[k].tolist() for k in ("t", "speed_mps", "cadence_spm", "stride_m",
                                              "total_m")]
        streams.append(
            (
                t,
                RscSample(
                    t, speed, cad,
                    None if math.isnan(stride) else stride,
                    None if math.isnan(total) else total,
                    None, "replay",
                ),
            )
            for t, speed, cad, stride, total in zip(*cols, strict=True)
        )
    for _t, sample in heapq.merge(*streams, key=lambda e: e[0]):
        yield sample


def _span(sample: SensorSample) -> tuple[float, float]:
    """First and last sample time of a block (the same time twice for a single sample)."""
    t = sample.t
    if isinstance(t, np.ndarray):
        return float(t[0]), float(t[-1])
    return float(t), float(t)


# -- processing ------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayStats:
    """Filled in while a replay runs (for the summary)."""

    first_t: float | None = None
    last_t: float | None = None
    samples: Counter[str] = field(default_factory=Counter)
    readings: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    snapshot: dict[str, object] = field(default_factory=dict)


def replay_readings(
    rec: Recording,
    config: ProcessingConfig,
    *,
    realtime: bool = False,
    stats: ReplayStats | None = None,
    processor: Processor | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Reading]:
    """Every reading the live pipeline would produce for ``rec``, in ``ts`` order."""
    from agent.processing.pipeline import Processor

    proc = processor if processor is not None else Processor(config)
    stats = stats if stats is not None else ReplayStats()
    window = reorder_window(config)
    heap: list[tuple[float, int, Reading]] = []
    seq = itertools.count()
    next_tick: float | None = None
    cpu0, wall0 = time.process_time(), clock()
    t0 = 0.0

    def push(readings: list[Reading]) -> None:
        for r in readings:
            heapq.heappush(heap, (r.t, next(seq), r))
            stats.readings[str(r.type)] += 1

    def pop_until(limit: float) -> Iterator[Reading]:
        while heap and heap[0][0] <= limit:
            yield heapq.heappop(heap)[2]

    for sample in iter_samples(rec):
        t_start, t_end = _span(sample)
        stats.first_t = t_start if stats.first_t is None else min(stats.first_t, t_start)
        if next_tick is None:
            t0 = t_end
            next_tick = math.floor(t_end / TICK_S) * TICK_S + TICK_S
        assert next_tick is not None
        if realtime:
            delay = (t_end - t0) - (clock() - wall0)
            if delay > 0:
                sleep(delay)
        while next_tick <= t_end:
            push(proc.tick(next_tick))
            next_tick += TICK_S
        stats.samples[type(sample).__name__] += 1
        stats.last_t = t_end if stats.last_t is None else max(stats.last_t, t_end)
        push(proc.feed(sample))
        yield from pop_until(t_end - window)
    end = stats.last_t if stats.last_t is not None else 0.0
    push(proc.flush(end))
    stats.snapshot = proc.snapshot()
    stats.cpu_s = time.process_time() - cpu0
    stats.wall_s = clock() - wall0
    yield from pop_until(math.inf)


def write_jsonl(readings: Iterable[Reading], out: TextIO) -> int:
    """Print one SUBMIT frame per line; a closed pipe (``| head``) ends quietly."""
    try:
        for r in readings:
            out.write(r.submit_text())
            out.write("\n")
        out.flush()
    except BrokenPipeError:
        return 0
    return 0


def summary(
    rec: Recording, stats: ReplayStats, height_m: float, config: ProcessingConfig | None = None
) -> str:
    """Human-readable summary of a finished replay."""
    duration = (
        0.0 if stats.first_t is None or stats.last_t is None else stats.last_t - stats.first_t
    )
    snap = stats.snapshot
    lines = [
        f"recording   {rec.path}",
        f"duration    {duration:.1f} s ({duration / 3600:.2f} h), height {height_m:.2f} m"
        + ("" if config is None else f", step_length_factor {config.step_length_factor:g}"),
        f"steps       {snap.get('steps', 0)}",
        f"distance    {snap.get('distance_m', 0.0)} m",
        f"floors      {snap.get('floors', 0)}",
    ]
    streams = []
    for name, t in (("acc", rec.acc_t), ("gyro", rec.gyro_t), ("pressure", rec.pressure_t)):
        if t is not None and t.size > 1:
            streams.append(f"{name} {(t.size - 1) / max(float(t[-1] - t[0]), 1e-9):.1f} Hz")
    if rec.hr:
        streams.append(f"hr {len(rec.hr)} rows")
    if rec.rsc:
        streams.append(f"rsc {rec.rsc['t'].size} rows")
    lines.append("streams     " + (", ".join(streams) or "none"))
    per_min = 60.0 / duration if duration > 0 else 0.0
    for name, n in sorted(stats.readings.items()):
        lines.append(f"  {name:<15} {n:>8} readings ({n * per_min:.1f}/min)")
    speed = duration / stats.cpu_s if stats.cpu_s > 0 else math.inf
    lines.append(
        f"processed in {stats.cpu_s:.2f} CPU-s ({speed:.0f}× real time), "
        f"{sum(stats.readings.values())} readings"
    )
    return "\n".join(lines)


# -- streaming -------------------------------------------------------------------------------


#: Readings pulled from the replay per worker-thread hop while streaming.
STREAM_CHUNK: Final = 2000
#: Seconds the uplink gets at the end to have the last readings acknowledged.
CLOSE_GRACE_S: Final = 10.0


def _token_provider(args: argparse.Namespace) -> TokenProvider:
    from agent.tokens import RestToken, TokenCommand, TokenFile

    if getattr(args, "token_file", None):
        return TokenFile(args.token_file)
    if getattr(args, "token_command", None):
        return TokenCommand(args.token_command)
    if getattr(args, "token_url", None):
        missing = [flag for flag, value in (("--dev-id", args.dev_id),
                                            ("--api-key-file", args.api_key_file),
                                            ("--user-id", args.user_id)) if not value]
        if missing:
            raise ReplayError(f"--token-url needs {', '.join(missing)}")
        try:
            return RestToken(args.token_url, args.user_id, args.dev_id,
                             api_key_file=args.api_key_file,
                             allow_insecure=bool(getattr(args, "allow_insecure_ws", False)))
        except ValueError as exc:
            raise ReplayError(str(exc)) from None
    raise ReplayError(
        "--server needs a producer token source: --token-file PATH (re-read for every "
        "connection), --token-command CMD (prints a fresh token) or --token-url URL with "
        "--dev-id, --api-key-file and --user-id"
    )


async def stream_to_server(readings: Iterable[Reading], args: argparse.Namespace) -> int:
    """Stream ``readings`` to ``args.server`` through a private outbox and the uplink.

    The same delivery path as ``agent run``: readings are committed to an SQLite outbox (in a
    temporary directory, so a replay never mixes with the daemon's backlog) and the
    :class:`~agent.uplink.Uplink` sends them, reconnecting with fresh tokens as needed, until the
    broker has provably read every one (HEARTBEAT_ACK after the last). Processing runs in a worker
    thread in chunks so heartbeats are never starved. Returns 0 when everything was confirmed,
    1 when the uplink stopped (close-code policy) first, 64 for bad arguments.
    """
    try:
        from agent.outbox import Outbox
        from agent.uplink import Uplink, UplinkError
    except ImportError as exc:  # pragma: no cover - a partial install
        print(f"agent replay: error: --server is not available ({exc.name} is missing)",
              file=sys.stderr)
        return EX_CONFIG
    try:
        tokens = _token_provider(args)
    except ReplayError as exc:
        print(f"agent replay: error: {exc}", file=sys.stderr)
        return EX_USAGE
    iterator = iter(readings)

    def pull() -> list[Reading]:
        return list(itertools.islice(iterator, STREAM_CHUNK))

    with tempfile.TemporaryDirectory(prefix="agent-replay-") as tmp:
        outbox = await Outbox.open(Path(tmp) / "outbox.sqlite")
        try:
            try:
                uplink = Uplink(
                    args.server, tokens, outbox,
                    allow_insecure_ws=bool(getattr(args, "allow_insecure_ws", False)),
                )
            except (UplinkError, ValueError) as exc:
                print(f"agent replay: error: {exc}", file=sys.stderr)
                return EX_USAGE
            task = asyncio.create_task(uplink.run(), name="replay-uplink")
            sent = 0
            while not task.done():
                chunk = await asyncio.to_thread(pull)
                if not chunk:
                    break
                sent += outbox.append(chunk)
            await outbox.flush()
            target = outbox.last_id
            waiter = asyncio.create_task(uplink.wait_for(lambda: uplink.acked_id >= target))
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            delivered = uplink.acked_id >= target
            if not task.done():
                await uplink.close(CLOSE_GRACE_S)
            try:
                await task
            except UplinkError as exc:
                print(f"agent replay: uplink stopped: {exc}", file=sys.stderr)
        finally:
            await outbox.close()
    if delivered:
        print(f"agent replay: {sent} readings delivered to {args.server}", file=sys.stderr)
        return 0
    print(f"agent replay: only part of {sent} readings was confirmed by {args.server}",
          file=sys.stderr)
    return 1
