"""Network failures between producer and relay: random cuts and a half-open connection.

A :class:`FaultyProxy` sits between a real Outbox + Uplink and a real relay (in-process: the
failure is the network, not a process). Heartbeats run at 300 ms so the ACK watchdog fires in
well under a second. Every reading streamed must end up in the relay's store, and each failure
must heal within a bound that follows from the configuration (heartbeat interval, backoff cap,
open timeout), measured on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.protocol import DataType
from agent.readings import Reading
from agent.relay.server import Relay
from agent.uplink import Uplink
from agent.uplink_state import ConnState
from tests.reliability.conftest import (
    API_KEY,
    DT,
    T0,
    WAIT_S,
    RecordingTokens,
    RelayTokens,
    Sensor,
    assert_no_secrets,
    check_delivery,
    fast_backoff,
    inprocess_relay,
    log_lines,
    number_of,
    numbered,
    stored_rows,
    wait_until,
)
from tests.reliability.proxy import FaultyProxy

SEED = 4242
HEARTBEAT_MS = 300
INTERVAL_S = HEARTBEAT_MS / 1000
BACKOFF_CAP_S = 0.2
OPEN_TIMEOUT_S = 1.0
MAX_IN_FLIGHT = 200
#: Scheduling slack on a loaded CI machine (two cores shared with other test processes).
SLACK_S = 0.5


@dataclass
class Rig:
    relay: Relay
    proxy: FaultyProxy
    box: Outbox
    tokens: RecordingTokens
    uplink: Uplink
    sensor: Sensor
    runner: asyncio.Task[None]


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, seed: int) -> AsyncIterator[Rig]:
    """Relay ← proxy ← uplink ← outbox ← sensor, all running; torn down in reverse."""
    async with inprocess_relay(tmp_path / "relay.sqlite3", HEARTBEAT_MS) as relay:
        proxy = await FaultyProxy("127.0.0.1", relay.port).start()
        box = await Outbox.open(tmp_path / "outbox.sqlite3")
        tokens = RecordingTokens(RelayTokens(relay))
        uplink = Uplink(
            f"ws://127.0.0.1:{proxy.port}/connect", tokens, box,
            backoff=fast_backoff(seed, BACKOFF_CAP_S), rng=random.Random(seed + 1).random,
            barrier_spacing_s=0.02, max_in_flight=MAX_IN_FLIGHT, send_batch=50,
            open_timeout_s=OPEN_TIMEOUT_S,
        )
        runner = asyncio.create_task(uplink.run())
        sensor = Sensor(box).start()
        try:
            yield Rig(relay, proxy, box, tokens, uplink, sensor, runner)
        finally:
            await sensor.stop()
            if not runner.done():
                await uplink.close(grace_s=0.5)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(runner, WAIT_S)
            await box.close()
            await proxy.close()


async def drain_and_check(r: Rig, tmp_path: Path) -> tuple[int, int]:
    """Stop the sensor, wait for every reading to be confirmed; assert zero loss.

    Returns ``(appended, duplicates)``.
    """
    appended = await r.sensor.stop()
    uplink, box = r.uplink, r.box
    await wait_until(uplink.wait_for, lambda: uplink.acked_id >= box.last_id, 60.0)
    await uplink.close(grace_s=2.0)
    await asyncio.wait_for(r.runner, WAIT_S)
    stats = await box.stats()
    assert stats.depth == 0 and stats.dropped == 0
    rows = await asyncio.to_thread(stored_rows, tmp_path / "relay.sqlite3")
    report = check_delivery(((row.t, number_of(row.t, row.d)) for row in rows), range(appended))
    assert report.missing == [] and report.unexpected == []
    reconnects = uplink.state.connections - 1
    assert report.duplicates <= MAX_IN_FLIGHT * reconnects, (report, reconnects)
    return appended, report.duplicates


def ready(uplink: Uplink) -> bool:
    return uplink.state.state is ConnState.READY


def reconnected(uplink: Uplink, connections: int) -> Callable[[], bool]:
    """READY on a connection newer than the ``connections``-th."""
    return lambda: uplink.state.connections > connections and ready(uplink)


@pytest.mark.slow
async def test_random_cuts_lose_nothing_and_recover_within_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED)
    loop = asyncio.get_running_loop()
    recoveries: list[float] = []
    async with rig(tmp_path, SEED) as r:
        uplink = r.uplink
        await wait_until(uplink.wait_for, lambda: ready(uplink))
        for _ in range(4):
            # the fault schedule: a cut every 0.5-2 s (the injected failure, not a wait)
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            await wait_until(uplink.wait_for, lambda: ready(uplink))
            connections = uplink.state.connections
            r.proxy.cut()
            cut_at = loop.time()
            await wait_until(uplink.wait_for, reconnected(uplink, connections))
            recoveries.append(loop.time() - cut_at)
        appended, duplicates = await drain_and_check(r, tmp_path)
        secrets = [API_KEY, *r.tokens.issued]
    print(f"cuts: recovery {[f'{x:.3f}' for x in recoveries]} s; "
          f"appended={appended} duplicates={duplicates}")
    assert len(recoveries) == 4
    # after a cut: notice at once (RST), back off at most the cap, reconnect and handshake
    assert max(recoveries) < BACKOFF_CAP_S + SLACK_S + 0.5, recoveries
    assert_no_secrets(log_lines(caplog), secrets)


@pytest.mark.slow
async def test_half_open_connection_detected_by_ack_watchdog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    async with rig(tmp_path, SEED + 10) as r:
        uplink = r.uplink
        await wait_until(uplink.wait_for, lambda: ready(uplink) and uplink.acked_id > 0)
        connections = uplink.state.connections
        acked_before = uplink.acked_id
        r.proxy.stall()  # silently stop forwarding: no FIN, no RST
        stalled_at = loop.time()
        await wait_until(uplink.wait_for, lambda: not ready(uplink))
        detected = loop.time() - stalled_at
        assert uplink.state.last_close_code == 1006
        assert "heartbeat" in (uplink.state.last_close_reason or "")
        # nothing was confirmed through the black hole beyond what was in flight before it
        assert r.proxy.open_connections >= 1
        r.proxy.resume()
        await wait_until(uplink.wait_for, reconnected(uplink, connections))
        recovered = loop.time() - stalled_at
        # the uplink keeps delivering on the new connection
        await wait_until(uplink.wait_for, lambda: uplink.acked_id > acked_before)
        appended, duplicates = await drain_and_check(r, tmp_path)
        secrets = [API_KEY, *r.tokens.issued]
    print(f"half-open: detected after {detected:.3f} s, ready again after {recovered:.3f} s; "
          f"appended={appended} duplicates={duplicates}")
    # the oldest un-ACKed beat dies after one interval; it is sent at most one interval late
    assert detected <= 2 * INTERVAL_S + SLACK_S, detected
    # a retry may still have gone into the black hole: it gives up after the open timeout
    assert recovered <= detected + OPEN_TIMEOUT_S + BACKOFF_CAP_S + SLACK_S + 0.5, recovered
    assert_no_secrets(log_lines(caplog), secrets)


def raw(i: int) -> Reading:
    """High-rate raw reading number ``i`` (ACCELERATION for even, GYROSCOPE for odd ``i``)."""
    kind = DataType.ACCELERATION if i % 2 == 0 else DataType.GYROSCOPE
    return Reading(kind, T0 + i * DT, vec=(float(i), 0.0, 0.0))


async def test_outage_longer_than_the_cap_drops_raw_first_and_every_gap_is_accounted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the network is down the byte cap evicts; what arrives + the gaps = what was made."""
    scalars = [numbered(i) for i in range(100)]  # ~8 kB of frames
    raws = [raw(i) for i in range(1000, 1400)]  # ~40 kB of frames
    cap = 20_000
    async with inprocess_relay(tmp_path / "relay.sqlite3", HEARTBEAT_MS) as relay:
        proxy = await FaultyProxy("127.0.0.1", relay.port).start()
        proxy.stall()  # the outage: connections open but nothing gets through
        box = await Outbox.open(tmp_path / "outbox.sqlite3", max_bytes=cap)
        uplink = Uplink(
            f"ws://127.0.0.1:{proxy.port}/connect", RelayTokens(relay), box,
            backoff=fast_backoff(SEED + 20, BACKOFF_CAP_S), barrier_spacing_s=0.02,
            open_timeout_s=0.3, rng=random.Random(SEED + 21).random,
        )
        runner = asyncio.create_task(uplink.run())
        try:
            # interleaved as a strap would produce them: raw blocks between derived values
            for k in range(0, 100, 10):
                await box.append_durable(scalars[k : k + 10] + raws[4 * k : 4 * k + 40])
            assert uplink.acked_id == 0  # nothing went through the outage
            gaps = await box.gaps()
            proxy.resume()
            await wait_until(uplink.wait_for, lambda: uplink.acked_id >= box.last_id)
            state = await uplink.refresh_state()
            await uplink.close(grace_s=1.0)
            await asyncio.wait_for(runner, WAIT_S)
        finally:
            if not runner.done():
                runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
            await box.close()
            await proxy.close()
        rows = await asyncio.to_thread(stored_rows, tmp_path / "relay.sqlite3")

    evicted = sum(g.count for g in gaps)
    assert evicted > 0 and state.dropped == evicted and state.outbox_depth == 0
    # the documented order: only raw types were evicted while raw rows remained
    assert {g.type for g in gaps} <= {"ACCELERATION", "GYROSCOPE"}
    got: dict[str, list[int]] = {}
    for r in rows:
        d = json.loads(r.d)
        got.setdefault(r.t, []).append(int(d["val"] if "val" in d else d["d"][0]))
    assert sorted(got["STEPS"] + got["HEART_RATE"]) == list(range(100))  # derived: all there
    # every missing raw reading lies inside a recorded gap of its type, and the counts match
    delivered_raw = set(got.get("ACCELERATION", []) + got.get("GYROSCOPE", []))
    missing = [x for x in raws if int(x.vec[0]) not in delivered_raw]  # type: ignore[index]
    assert len(missing) == evicted
    for x in missing:
        assert any(
            g.type == x.type and g.first_t <= x.t <= g.last_t for g in gaps
        ), f"{x.type} {x.t} missing without a gap record"
    # oldest first: everything evicted is older than everything kept, per type
    for kind in ("ACCELERATION", "GYROSCOPE"):
        lost = [int(x.vec[0]) for x in missing if x.type == kind]  # type: ignore[index]
        kept = got.get(kind, [])
        assert not lost or not kept or max(lost) < min(kept), kind
    # and the gap was reported in the log, once per eviction and type
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "dropped" in
                r.getMessage() and r.name == "agent.outbox"]
    assert len(warnings) == len(gaps)
