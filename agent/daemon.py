"""``agent run``: sensors → processing → outbox → uplink (and recorder), in one process.

Task structure (one :class:`asyncio.TaskGroup`, all owned by :class:`Daemon`)::

    source tasks (BLE / simulated / IIO) --emit--> sample queue
    processing task: queue → Processor.feed → readings → outbox (durable group commit)
                     + recorder (raw samples, when --record)
    tick task:       Processor.tick (cadence decay, keep-alive emissions) once a second
    uplink task:     outbox → broker (HELLO/IDENTIFY/READY/SUBMIT, heartbeats, reconnects)
    status task:     status.json for ``agent status`` + systemd STATUS/WATCHDOG
    [embedded relay + consumer + live view, when no broker is configured]

Shutdown (SIGTERM/SIGINT) in this order, each step bounded: systemd STOPPING; stop the sources
(BLE sources stop their PMD streams when cancelled); drain the sample queue through processing;
flush processing (final totals) into the outbox and commit; give the uplink
``uplink.shutdown_grace_s`` to deliver and close with 1000; stop the embedded relay; exit 0.
Whatever reached the outbox stays on disk until a broker has provably read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from agent.config import Config
    from agent.outbox import Outbox
    from agent.processing.pipeline import Processor
    from agent.relay.server import Relay
    from agent.tokens import TokenProvider
    from sensors.base import SensorSample, Source
    from sensors.recording import RecordingWriter

log = logging.getLogger("agent.daemon")

#: sysexits EX_CONFIG: bad configuration (systemd unit: RestartPreventExitStatus=78).
EX_CONFIG = 78
#: Processing emits time-driven values (cadence decay, keep-alives) at this period.
TICK_S = 1.0
#: Embedded relay identity (local only; the key never leaves this process).
EMBEDDED_DEV_ID = "local"
EMBEDDED_USER_ID = "wearer"
#: Sample blocks queued for processing before the oldest are dropped (~30 min of an H10's
#: ACC + HR notifications, ~10 MB): only reached if processing or the outbox is stuck.
MAX_QUEUED_SAMPLES = 10_000
#: A one-line state summary goes to the log this often (the journal shows health over weeks).
SUMMARY_LOG_S = 600.0


class RelayTokens:
    """Token provider backed by the embedded relay (in-process minting)."""

    def __init__(self, relay: Relay, user_id: str) -> None:
        self._relay = relay
        self._user_id = user_id

    async def get(self) -> str:
        """A fresh single-use producer token."""
        return await self._relay.mint_token(user_id=self._user_id, developer=EMBEDDED_DEV_ID)


def _new_session_dir(root: Path, name: str) -> Path:
    """Create ``root/name`` (or ``name-2``, ``name-3``, … if taken): never reuse a session."""
    root.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        directory = root / (name if n == 1 else f"{name}-{n}")
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        return directory
    raise AssertionError("unreachable")


class Daemon:
    """Owns every task of ``agent run`` and the shutdown order."""

    def __init__(
        self,
        config: Config,
        *,
        quiet: bool = False,
        duration_s: float | None = None,
        clock: Callable[[], float] = time.time,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.quiet = quiet
        self.duration_s = duration_s
        self.clock = clock
        self.out = out or (lambda line: print(line, flush=True))
        self.started = clock()
        self.stop_event = asyncio.Event()
        self.sources: list[Source] = []
        self.queue: asyncio.Queue[SensorSample] = asyncio.Queue()
        self.last_reading_t: float | None = None
        self.readings_total = 0
        self.samples_dropped = 0
        self.relay: Relay | None = None
        self.outbox: Outbox | None = None
        self.processor: Processor | None = None
        self.uplink: Any = None
        self.recorder: RecordingWriter | None = None
        self.live: Any = None
        self._outbox_stats: dict[str, Any] = {}
        self._source_tasks: list[asyncio.Task[None]] = []
        self._embedded_key = ""
        self._last_sample_t = 0.0
        from agent.systemd import Notifier

        self.notifier = Notifier.from_env()

    # -- construction ---------------------------------------------------------------------------

    def _tz(self) -> tzinfo | None:
        name = self.config.processing.timezone
        if not name:
            from agent.processing.totals import system_timezone

            return system_timezone()
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)

    def _build_sources(self) -> list[Source]:
        cfg = self.config.sensors
        sources: list[Source] = []
        if cfg.simulate:
            from sensors.simulated import SimulatedSource, SimulationConfig

            sim = cfg.simulation
            sources.append(
                SimulatedSource(
                    SimulationConfig(
                        seed=sim.seed,
                        acc_rate_hz=float(sim.acc_rate_hz),
                        gyro_rate_hz=float(sim.gyro_rate_hz),
                        height_m=self.config.processing.height_m,
                        speed=float(sim.speed),
                    ),
                    clock=self.clock,
                )
            )
            return sources
        if cfg.ble:
            from sensors.ble import BleDeviceConfig, BleSource

            for section in cfg.ble:
                sources.append(BleSource(BleDeviceConfig(**asdict(section)), clock=self.clock))
        if cfg.iio_barometer:
            from sensors.iio import IioBarometer

            path = cfg.iio_barometer if isinstance(cfg.iio_barometer, str) else None
            sources.append(IioBarometer(path))
        return sources

    def _build_tokens(self) -> TokenProvider:
        from agent import tokens

        up = self.config.uplink
        if up.token_file is not None:
            return tokens.TokenFile(up.token_file)
        if up.token_command is not None:
            return tokens.TokenCommand(up.token_command)
        assert up.token_url and up.dev_id and up.api_key_file and up.user_id
        return tokens.RestToken(
            up.token_url, up.user_id, up.dev_id, api_key_file=up.api_key_file,
            ca_file=up.ca_file, allow_insecure=up.allow_insecure_ws,
        )

    # -- tasks ----------------------------------------------------------------------------------

    async def _run_source(self, source: Source) -> None:
        try:
            await source.run(self._emit)
        except asyncio.CancelledError:
            raise
        except Exception:  # a failing source never stops the others
            log.exception("sensor source %s failed", source.status.name)

    def _emit(self, sample: SensorSample) -> None:
        """Sources hand samples over here; never blocks, never grows without bound.

        Processing normally keeps the queue near empty. If it cannot (the outbox's disk is full
        and commits keep failing, say), the oldest raw samples are dropped and counted rather
        than letting memory grow until the kernel kills the daemon.
        """
        if self.queue.qsize() >= MAX_QUEUED_SAMPLES:
            self.queue.get_nowait()
            self.samples_dropped += 1
            if self.samples_dropped in (1, 10, 100) or self.samples_dropped % 1000 == 0:
                log.warning("processing is stalled: %d raw sample block(s) dropped so far",
                            self.samples_dropped)
        self.queue.put_nowait(sample)

    def _process(self, samples: list[SensorSample]) -> list[Any]:
        assert self.processor is not None
        readings: list[Any] = []
        for sample in samples:
            t = sample.t
            end = float(t[-1]) if isinstance(t, np.ndarray) and t.size else t
            if isinstance(end, float) and end > self._last_sample_t:
                self._last_sample_t = end
            if self.recorder is not None:
                try:
                    self.recorder.write(sample)
                except OSError as exc:
                    log.error("recording failed, recording stopped: %s", exc)
                    self.recorder = None
            readings.extend(self.processor.feed(sample))
        return readings

    async def _store(self, readings: list[Any]) -> None:
        if not readings:
            return
        assert self.outbox is not None
        await self.outbox.append_durable(readings)
        self.readings_total += len(readings)
        self.last_reading_t = max(r.t for r in readings)

    async def _processing_task(self) -> None:
        while True:
            first = await self.queue.get()
            batch = [first]
            while not self.queue.empty() and len(batch) < 512:
                batch.append(self.queue.get_nowait())
            await self._store(self._process(batch))

    async def _tick_task(self) -> None:
        assert self.processor is not None
        while True:
            await asyncio.sleep(TICK_S)
            # Processing runs on sample time: a simulation faster than real time (--speed)
            # is ahead of the wall clock, and a tick must never stamp readings in its past.
            now = max(self.clock(), self._last_sample_t)
            await self._store(self.processor.tick(now))

    def state(self) -> dict[str, Any]:
        """Everything ``agent status`` shows (also written to status.json)."""
        uplink_state: dict[str, Any] = {}
        if self.uplink is not None:
            uplink_state = self.uplink.state.as_dict()
        return {
            "pid": os.getpid(),
            "started": self.started,
            "updated": self.clock(),
            "uplink": uplink_state,
            "outbox": self._outbox_stats,
            "sensors": [s.status.as_dict() for s in self.sources],
            "last_reading_t": self.last_reading_t,
            "readings_total": self.readings_total,
            "samples_dropped": self.samples_dropped,
            "processing": self.processor.snapshot() if self.processor is not None else {},
            "embedded_relay": self.relay.url if self.relay is not None else None,
        }

    async def _status_task(self) -> None:
        path = self.config.status.path
        interval = self.config.status.interval_s
        watchdog = self.notifier.watchdog_interval_s()
        period = min(interval, watchdog / 2) if watchdog else interval
        last_write = 0.0
        last_log = time.monotonic()
        while True:
            if self.outbox is not None:
                stats = await self.outbox.stats()
                self._outbox_stats = stats.as_dict()
                oldest = self._outbox_stats.get("oldest_t")
                self._outbox_stats["oldest_age_s"] = (
                    None if oldest is None else max(0.0, self.clock() - oldest)
                )
            state = self.state()
            now = time.monotonic()
            if now - last_write >= interval:
                last_write = now
                await asyncio.to_thread(_write_json_atomic, path, state)
                self.notifier.status(_status_line(state))
            if now - last_log >= SUMMARY_LOG_S:
                last_log = now
                log.info("status: %s", _status_line(state))
            self.notifier.watchdog()
            await asyncio.sleep(period)

    async def _live_task(self) -> None:
        """Embedded consumer on the embedded relay, feeding the live view."""
        from agent.live_view import LiveView, render, summary
        from agent.watch import Watcher, WatchOptions

        assert self.relay is not None
        view = LiveView()
        self.live = view
        options = WatchOptions(server=self.relay.url, dev_id=EMBEDDED_DEV_ID,
                               api_key=self._embedded_key)
        watcher = Watcher(options, on_dispatch=lambda d: view.add(d, time.monotonic()))
        consumer = asyncio.create_task(watcher.run(), name="live-consumer")
        tty = sys.stdout.isatty()
        try:
            while True:
                await asyncio.sleep(1.0 if tty else 5.0)
                state = self.state()
                if tty:
                    lines = render(view, state, time.monotonic())
                    self.out("\x1b[H\x1b[2J" + "\n".join(lines))
                else:
                    self.out(summary(view, state))
        finally:
            consumer.cancel()
            with contextlib.suppress(BaseException):
                await consumer

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``duration_s``); returns the exit status."""
        from agent.outbox import Outbox
        from agent.processing.pipeline import ProcessingConfig, Processor

        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop_event.set)

        tz = self._tz()
        self.outbox = await Outbox.open(
            cfg.outbox.path,
            max_bytes=cfg.outbox.max_bytes,
            flush_interval_s=cfg.outbox.flush_interval_s,
            tz=tz,
        )
        if self.outbox.recovered_from is not None:
            log.error("the outbox was corrupt and was moved to %s", self.outbox.recovered_from)
        proc = cfg.processing
        self.processor = Processor(
            ProcessingConfig(
                height_m=proc.height_m,
                step_length_factor=proc.step_length_factor,
                acc_submit_hz=proc.acc_submit_hz,
                gyro_submit_hz=proc.gyro_submit_hz,
                totals_reset=proc.totals_reset,
            ),
            totals_path=cfg.state_dir / "totals.json",
            tz=tz,
        )
        self.sources = self._build_sources()
        if not self.sources:
            log.warning("no sensors configured: add [[sensors.ble]] entries (see 'agent scan') "
                        "or run with --simulate")
        if cfg.recording.dir is not None:
            self._open_recorder(cfg.recording.dir)

        try:
            if cfg.uplink.server is None:
                url, tokens = await self._start_embedded_relay()
            else:
                url, tokens = cfg.uplink.server, self._build_tokens()
            from agent.backoff import Backoff
            from agent.uplink import Uplink

            self.uplink = Uplink(
                url, tokens, self.outbox,
                backoff=Backoff(cap_s=cfg.uplink.backoff_cap_s),
                ca_file=cfg.uplink.ca_file,
                allow_insecure_ws=cfg.uplink.allow_insecure_ws or cfg.uplink.server is None,
                barrier_spacing_s=cfg.uplink.barrier_spacing_s,
            )
            return await self._supervise()
        finally:
            await self._shutdown()

    async def _start_embedded_relay(self) -> tuple[str, TokenProvider]:
        from agent.relay.server import Relay, RelayConfig

        self._embedded_key = secrets.token_urlsafe(24)
        self.relay = Relay(RelayConfig(
            host="127.0.0.1", port=0, db=self.config.relay.db,
            developers={EMBEDDED_DEV_ID: self._embedded_key},
        ))
        await self.relay.__aenter__()
        log.info("no broker configured: streaming into the embedded relay at %s", self.relay.url)
        return self.relay.ws_url, RelayTokens(self.relay, EMBEDDED_USER_ID)

    def _open_recorder(self, root: Path) -> None:
        from sensors.recording import RecordingWriter

        try:
            directory = _new_session_dir(Path(root), datetime.now().strftime("%Y%m%dT%H%M%S"))
        except OSError as exc:
            from agent.config import ConfigError

            # a study that asked for a recording must not run without one: stop (exit 78)
            raise ConfigError(
                "recording.dir",
                f"cannot create a session directory in {root}: {exc.strerror or exc}; under "
                "systemd keep it inside /var/lib/wearable-agent or add ReadWritePaths=",
            ) from None
        meta = {
            "format": "agent-recording/1",
            "source": "agent run" + (" --simulate" if self.config.sensors.simulate else ""),
            "placement": "chest" if self.config.sensors.ble else "simulated",
            "device": ",".join(s.status.name for s in self.sources) or "none",
            "subject": {"height_m": self.config.processing.height_m},
        }
        self.recorder = RecordingWriter(directory, meta)
        log.info("recording raw samples to %s", directory)

    async def _supervise(self) -> int:
        assert self.uplink is not None
        status = 0
        async with asyncio.TaskGroup() as group:
            tasks: list[asyncio.Task[Any]] = []
            self._source_tasks = [
                group.create_task(self._run_source(s), name=f"source-{s.status.name}")
                for s in self.sources
            ]
            tasks.append(group.create_task(self._processing_task(), name="processing"))
            tasks.append(group.create_task(self._tick_task(), name="tick"))
            uplink_task = group.create_task(self.uplink.run(), name="uplink")
            tasks.append(group.create_task(self._status_task(), name="status"))
            if self.relay is not None and not self.quiet:
                tasks.append(group.create_task(self._live_task(), name="live-view"))
            self.notifier.ready()
            log.info("agent running: %d sensor source(s)", len(self.sources))
            stop = asyncio.create_task(self.stop_event.wait())
            waiters: set[asyncio.Future[Any]] = {stop, uplink_task}
            timeout = self.duration_s
            done, _ = await asyncio.wait(waiters, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if uplink_task in done and not uplink_task.cancelled():
                # The uplink only returns on a close code that retrying cannot fix (a bug on
                # one side, or credentials): exit non-zero so systemd shows the failure.
                exc = uplink_task.exception()
                log.error("uplink stopped: %s", exc or self.uplink.state.stopped_reason)
                status = 1
            self.notifier.stopping()
            log.info("stopping: sensors first, then processing, then delivery")
            await self._stop_sources()
            await self._drain_processing()
            for task in tasks:
                task.cancel()
            await self._deliver_and_close(uplink_task)
        return status

    async def _stop_sources(self) -> None:
        for task in self._source_tasks:
            task.cancel()
        if self._source_tasks:
            await asyncio.wait(self._source_tasks, timeout=10.0)

    async def _drain_processing(self) -> None:
        assert self.processor is not None
        pending: list[SensorSample] = []
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        readings = self._process(pending)
        readings.extend(self.processor.flush(max(self.clock(), self._last_sample_t)))
        await self._store(readings)

    async def _deliver_and_close(self, uplink_task: asyncio.Task[Any]) -> None:
        grace = self.config.uplink.shutdown_grace_s
        if not uplink_task.done():
            try:
                await asyncio.wait_for(self.uplink.close(grace), timeout=grace + 5.0)
            except Exception as exc:  # shutdown must go on whatever the uplink did
                log.warning("uplink did not close cleanly: %s", exc)
            uplink_task.cancel()

    async def _shutdown(self) -> None:
        if self.recorder is not None:
            with contextlib.suppress(Exception):
                self.recorder.close()
        if self.outbox is not None:
            stats = await self.outbox.stats()
            self._outbox_stats = {**stats.as_dict(), "oldest_age_s": None}
            if stats.depth:
                log.info("%d reading(s) stay in the outbox for the next run", stats.depth)
            await self.outbox.close()
        if self.relay is not None:
            await self.relay.close()
        path = self.config.status.path
        with contextlib.suppress(OSError):
            state = self.state()
            state["stopped"] = True
            _write_json_atomic(path, state)


def check_secrets(config: Config) -> str | None:
    """Refuse to start with an uplink secret readable by others (exit 78), before any work.

    A token file that does not exist yet is allowed: something else may fill it later (it is
    re-read, and checked again, for every connection).
    """
    from agent.config import secret_paths
    from agent.secrets import SecretError, read_secret

    if config.uplink.server is None:
        return None
    for key, path in secret_paths(config).items():
        if not key.startswith("uplink."):
            continue
        if key == "uplink.token_file" and not path.exists():
            log.warning("token file %s does not exist yet", path)
            continue
        try:
            read_secret(path, what=key)
        except SecretError as exc:
            return str(exc)
    return None


def _status_line(state: dict[str, Any]) -> str:
    up = state.get("uplink", {})
    ob = state.get("outbox", {})
    age = ob.get("oldest_age_s")
    sensors = ", ".join(f"{s.get('name')} {s.get('state')}" for s in state.get("sensors", []))
    return (f"uplink {up.get('state', '?')}; outbox {ob.get('depth', '?')} rows"
            + ("" if age is None else f" (oldest {age:.0f} s)")
            + f"; dropped {ob.get('dropped', 0)}; {state.get('readings_total', 0)} readings"
            + (f"; sensors: {sensors}" if sensors else ""))


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str, indent=1))
    os.replace(tmp, path)


# -- command line --------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``agent run``."""
    parser.add_argument("--config", type=Path, help="config file (TOML)")
    parser.add_argument("--simulate", action="store_true", help="simulated wearer, no BLE")
    parser.add_argument("--server", help="broker websocket URL (ws:// or wss://); "
                        "default: an embedded relay on 127.0.0.1")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", type=Path, help="file holding a fresh token (re-read "
                        "for every connection)")
    tokens.add_argument("--token-command", help="command printing a fresh token on stdout")
    tokens.add_argument("--token-url", help="token endpoint base URL (POST /auth/user?id=)")
    parser.add_argument("--dev-id", help="developer id for --token-url")
    parser.add_argument("--api-key-file", type=Path, help="API key file for --token-url")
    parser.add_argument("--user-id", help="user id for --token-url")
    parser.add_argument("--state-dir", type=Path, help="where the outbox and state live")
    parser.add_argument("--record", type=Path, metavar="DIR",
                        help="record raw samples into DIR/<session>/")
    parser.add_argument("--quiet", action="store_true", help="no live view")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--speed", type=float, help="simulation speed factor (1 = real time)")
    parser.add_argument("--log-level", help="debug, info, warning, error")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``agent run``."""
    from agent.config import ConfigError, load_config, overrides_from_args
    from agent.logs import setup_logging

    overrides = overrides_from_args(args)
    if args.speed is not None:
        overrides["sensors.simulation.speed"] = args.speed
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"agent run: {exc}", file=sys.stderr)
        return EX_CONFIG
    problem = check_secrets(config)
    if problem is not None:
        print(f"agent run: {problem}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.logging.level)
    if config.logging.level != "debug":
        # websockets logs every connection and HTTP response at INFO: noise in a journal.
        for name in ("websockets", "agent.relay.websockets"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return asyncio.run(Daemon(config, quiet=args.quiet, duration_s=args.duration).run())
    except Exception as exc:
        if type(exc).__name__ in ("SecretError", "ConfigError", "TokenConfigError"):
            print(f"agent run: {exc}", file=sys.stderr)
            return EX_CONFIG
        raise
