"""End-to-end BLE sessions through real bleak on BlueZoo, plus the sans-radio parts of sensors.ble.

Each BlueZoo test starts a private dbus-daemon + BlueZoo (fixtures in conftest.py), serves a
virtual wearable from tests/fakes on hci1 (hci2), and runs a real :class:`BleSource` on hci0.
Waits are event driven: every emitted sample wakes the waiter, which re-checks its condition
under a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.base import (
    STANDARD_GRAVITY,
    AccBlock,
    BatterySample,
    GyroBlock,
    HeartRateSample,
    PressureSample,
    RscSample,
    SensorSample,
    SourceState,
    SourceStatus,
)
from sensors.ble import (
    BleDeviceConfig,
    BleSource,
    NotificationHandlers,
    _PmdExchange,
    choose_settings,
    service_uuid,
)
from sensors.pmd import ControlPointResponse, MeasurementStopped, MeasurementType, SettingType
from tests.fakes.harness import BluezooHarness, device_path, peripheral_address
from tests.fakes.wearables import (
    VERITY_ACC_FACTOR,
    FootPod,
    H10Strap,
    PressureSensor,
    VeritySensor,
    Wearable,
    acc_pattern,
)

WAIT_S = 10.0


class Collector:
    """``emit`` target that lets a test await a condition over everything emitted so far."""

    def __init__(self) -> None:
        self.samples: list[SensorSample] = []
        self._changed = asyncio.Event()

    def __call__(self, sample: SensorSample) -> None:
        self.samples.append(sample)
        self._changed.set()

    def of(self, kind: type) -> list[SensorSample]:
        return [s for s in self.samples if isinstance(s, kind)]

    async def until(self, pred: Callable[[], bool], within: float = WAIT_S) -> None:
        async with asyncio.timeout(within):
            while not pred():
                self._changed.clear()
                await self._changed.wait()


class LogEvent(logging.Handler):
    """Sets ``event`` when a log record containing ``needle`` is emitted (status is plain data,
    so log records are the events to await)."""

    def __init__(self, needle: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.needle = needle
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


@contextlib.asynccontextmanager
async def running(source: BleSource, emit: Collector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(emit))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def serving(wearable: Wearable) -> AsyncIterator[Wearable]:
    await wearable.start()
    try:
        yield wearable
    finally:
        await wearable.stop()


def fast_config(**kw: object) -> BleDeviceConfig:
    base: dict[str, object] = dict(
        name="dev",
        adapter="hci0",
        scan_timeout_s=5.0,
        connect_timeout_s=5.0,
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
        silence_timeout_s=5.0,
    )
    base.update(kw)
    return BleDeviceConfig(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# End to end on BlueZoo
# --------------------------------------------------------------------------------------------


async def test_h10_heart_rate_battery_and_acc(bluezoo: BluezooHarness) -> None:
    strap = H10Strap(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    cfg = fast_config(name="chest", name_contains="H10", acc_rate_hz=190, acc_range_g=None)
    async with serving(strap), running(BleSource(cfg), out):
        await out.until(lambda: len(out.of(AccBlock)) >= 3 and len(out.of(HeartRateSample)) >= 3)
        # Settings negotiation: 190 Hz is not offered → nearest 200 Hz; no range → largest (8 G).
        start = next(w for w in strap.pmd_cp.writes if w[0] == 0x02)
        assert start[:2] == bytes([0x02, 0x02])
        assert strap.acc_rate == 200
        assert bytes([0x00, 0x01, 0xC8, 0x00]) in start  # SAMPLE_RATE 200
        assert bytes([0x02, 0x01, 0x08, 0x00]) in start  # RANGE 8
        assert strap.pmd_cp.writes[0] == bytes([0x01, 0x02])  # GET settings first

    hr = out.of(HeartRateSample)[0]
    assert isinstance(hr, HeartRateSample)
    assert hr.bpm == 72 and hr.source == "chest"
    assert hr.rr_ms == pytest.approx((812 / 1024 * 1000,), abs=0.5)
    battery = out.of(BatterySample)
    assert battery and isinstance(battery[0], BatterySample) and battery[0].percent == 87

    blocks = [b for b in out.of(AccBlock) if isinstance(b, AccBlock)]
    xyz = np.concatenate([b.xyz for b in blocks])
    t = np.concatenate([b.t for b in blocks])
    expected = acc_pattern(0, len(xyz)) * STANDARD_GRAVITY / 1000
    np.testing.assert_allclose(xyz, expected, rtol=1e-9)
    assert np.all(np.diff(t) > 0), "host timestamps must increase"
    assert abs(t[-1] - blocks[-1].t[-1]) < 1e-9
    # PMD streams are stopped when the source is cancelled.
    await asyncio.wait_for(strap.acc_stopped.wait(), WAIT_S)


async def test_verity_compressed_acc_and_gyro_with_factor(bluezoo: BluezooHarness) -> None:
    sensor = VeritySensor(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    cfg = fast_config(
        name="arm",
        address=peripheral_address(1),
        heart_rate=False,
        acc_rate_hz=52,
        gyro_rate_hz=52,
        gyro_range_dps=2000,
    )
    async with serving(sensor), running(BleSource(cfg), out):
        await out.until(lambda: len(out.of(AccBlock)) >= 2 and len(out.of(GyroBlock)) >= 2)
    assert not out.of(HeartRateSample)  # heart_rate=False: not subscribed
    acc = out.of(AccBlock)[0]
    gyro = out.of(GyroBlock)[0]
    assert isinstance(acc, AccBlock) and isinstance(gyro, GyroBlock)
    acc_counts = sensor.sent_counts[0x02][0]
    gyro_counts = sensor.sent_counts[0x05][0]
    # Compressed ACC type 0: mG = trunc(count × factor × 1000) (SDK behaviour).
    acc_mg = np.trunc(acc_counts * VERITY_ACC_FACTOR * 1000).astype(float)
    np.testing.assert_allclose(acc.xyz[:3] / (STANDARD_GRAVITY / 1000), acc_mg, atol=1.01)
    gyro_dps = gyro_counts * (2000 / 32768)
    np.testing.assert_allclose(gyro.xyz[:3], np.radians(gyro_dps), rtol=1e-5)


async def test_foot_pod_and_pressure_sensor_run_independently(
    bluezoo3: BluezooHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Three sources on one adapter: they share one discovery (BlueZ refuses a second one from
    the same D-Bus client with InProgress), and a missing device disturbs nobody."""
    pod = FootPod(bluezoo3.address, "/org/bluez/hci1")
    baro = PressureSensor(bluezoo3.address, "/org/bluez/hci2")
    out = Collector()
    pod_src = BleSource(fast_config(name="pod", service="1814"))  # UUID form works too
    baro_src = BleSource(fast_config(name="baro", service="pressure"))
    ghost = BleSource(fast_config(name="ghost", address="00:00:00:99:99:99", scan_timeout_s=0.3))
    async with (
        serving(pod),
        serving(baro),
        running(pod_src, out),
        running(baro_src, out),
        running(ghost, out),
    ):
        await out.until(lambda: len(out.of(RscSample)) >= 2 and len(out.of(PressureSample)) >= 2)
        await out.until(lambda: ghost.status.error is not None)
    rsc = out.of(RscSample)[0]
    assert isinstance(rsc, RscSample)
    assert (rsc.speed_mps, rsc.cadence_spm, rsc.stride_m, rsc.running) == (3.0, 180.0, 1.0, True)
    assert rsc.total_m == pytest.approx(123.4)
    p = out.of(PressureSample)[0]
    assert isinstance(p, PressureSample) and p.hpa == pytest.approx(1013.25)
    assert {s.source for s in out.samples} == {"pod", "baro"}
    assert pod_src.status.battery_percent == 55
    # The missing device fails on its own without disturbing the others.
    assert ghost.status.error is not None and "not found" in ghost.status.error
    assert not [r for r in caplog.records if "in progress" in r.getMessage()]


async def test_link_drop_reconnects_and_resumes(bluezoo: BluezooHarness) -> None:
    strap = H10Strap(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    src = BleSource(fast_config(name="chest", service="heart_rate", acc_rate_hz=50))
    async with serving(strap), running(src, out):
        await out.until(lambda: len(out.of(HeartRateSample)) >= 2)
        assert src.status.state is SourceState.STREAMING and src.status.reconnects == 0
        before_hr = len(out.of(HeartRateSample))
        before_acc = len(out.of(AccBlock))
        await bluezoo.disconnect_central(peripheral_address(1))
        await out.until(
            lambda: (
                src.status.reconnects == 1
                and len(out.of(HeartRateSample)) > before_hr + 2
                and len(out.of(AccBlock)) > before_acc + 2
            )
        )
        assert src.status.state is SourceState.STREAMING
        # The PMD stream was negotiated again on the new link.
        assert sum(1 for w in strap.pmd_cp.writes if w[0] == 0x02) == 2
        assert strap.hrm.start_count == 2


async def test_zombie_link_watchdog_reconnects(bluezoo: BluezooHarness) -> None:
    strap = H10Strap(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    src = BleSource(fast_config(name="chest", name_contains="Polar", silence_timeout_s=0.5))
    async with serving(strap), running(src, out):
        await out.until(lambda: len(out.of(HeartRateSample)) >= 2)
        strap.go_silent()  # connected, but nothing arrives any more
        await out.until(lambda: src.status.reconnects >= 1 and not strap.silent)
        n = len(out.of(HeartRateSample))
        await out.until(lambda: len(out.of(HeartRateSample)) > n + 2)
    assert strap.hrm.start_count >= 2


async def test_malformed_notifications_counted_logged_once_and_skipped(
    bluezoo: BluezooHarness, caplog: pytest.LogCaptureFixture
) -> None:
    strap = H10Strap(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    src = BleSource(fast_config(name="chest", name_contains="H10", acc_rate_hz=25))
    caplog.set_level(logging.WARNING, logger="sensors.ble")
    async with serving(strap), running(src, out):
        await out.until(lambda: len(out.of(AccBlock)) >= 1)
        for _ in range(3):
            assert strap.inject(strap.hrm, bytes.fromhex("170101"))  # uint16 + RR, too short
            assert strap.inject(strap.pmd_data, bytes.fromhex("02 0102"))  # truncated header
        await out.until(lambda: src.status.malformed >= 6)
        n = len(out.of(HeartRateSample))
        await out.until(lambda: len(out.of(HeartRateSample)) > n + 2)  # still streaming
    assert src.status.malformed == 6
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert {("heart_rate" in r.getMessage()) for r in warnings} == {True, False}


async def test_device_stopping_pmd_forces_a_fresh_session(bluezoo: BluezooHarness) -> None:
    strap = H10Strap(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    src = BleSource(fast_config(name="chest", name_contains="H10", acc_rate_hz=100))
    async with serving(strap), running(src, out):
        await out.until(lambda: len(out.of(AccBlock)) >= 2)
        strap.pmd_cp.notify(bytes([0x01, 0x02]))  # unsolicited "ACC measurement stopped"
        await out.until(lambda: src.status.reconnects == 1)
        n = len(out.of(AccBlock))
        await out.until(lambda: len(out.of(AccBlock)) > n + 2)
    assert sum(1 for w in strap.pmd_cp.writes if w[0] == 0x02) == 2


async def test_bluez_dying_mid_session_is_reported_not_raised(bluezoo: BluezooHarness) -> None:
    strap = H10Strap(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    src = BleSource(fast_config(name="chest", name_contains="H10", silence_timeout_s=0.5))
    seen = LogEvent("BlueZ is not running")
    logging.getLogger("sensors.ble").addHandler(seen)
    try:
        async with serving(strap), running(src, out) as task:
            await out.until(lambda: len(out.of(HeartRateSample)) >= 2)
            await bluezoo.kill_bluez()
            await asyncio.wait_for(seen.event.wait(), WAIT_S)
            assert not task.done()
    finally:
        logging.getLogger("sensors.ble").removeHandler(seen)
    assert src.status.error is not None and "systemctl" in src.status.error


async def test_stale_link_left_in_bluez_is_reused(
    bluezoo: BluezooHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A previous process crashed while connected: the strap no longer advertises, but BlueZ
    still holds the link. Scanning alone would never find it again."""
    strap = H10Strap(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    address = peripheral_address(1)
    async with serving(strap):
        await bluezoo.call("/org/bluez/hci0", "org.bluez.Adapter1", "StartDiscovery")
        await bluezoo.call(device_path("hci0", address), "org.bluez.Device1", "Connect")
        await bluezoo.call("/org/bluez/hci0", "org.bluez.Adapter1", "StopDiscovery")
        src = BleSource(fast_config(name="chest", address=address, scan_timeout_s=0.5))
        caplog.set_level(logging.INFO, logger="sensors.ble")
        reused = LogEvent("reusing the link")
        logging.getLogger("sensors.ble").addHandler(reused)
        try:
            async with running(src, out):
                await out.until(lambda: len(out.of(HeartRateSample)) >= 2)
        finally:
            logging.getLogger("sensors.ble").removeHandler(reused)
        assert reused.event.is_set()
        assert src.status.reconnects == 0


async def test_device_without_enabled_measurements_fails_with_advice(
    bluezoo: BluezooHarness,
) -> None:
    baro = PressureSensor(bluezoo.address, "/org/bluez/hci1")
    out = Collector()
    src = BleSource(fast_config(name="baro", service="pressure", pressure=False))
    seen = LogEvent("none of the enabled measurements")
    logging.getLogger("sensors.ble").addHandler(seen)
    try:
        async with serving(baro), running(src, out):
            await asyncio.wait_for(seen.event.wait(), WAIT_S)
            assert src.status.state is SourceState.FAILED
    finally:
        logging.getLogger("sensors.ble").removeHandler(seen)
    assert src.status.error is not None and "none of the enabled measurements" in src.status.error
    assert "heart_rate/rsc/pressure" in src.status.error
    assert not out.samples


@pytest.mark.hardware
@pytest.mark.skipif(
    os.environ.get("AGENT_HARDWARE_TESTS") != "1",
    reason="needs a real strap: set AGENT_HARDWARE_TESTS=1 (and optionally "
    "AGENT_HARDWARE_ADDRESS / AGENT_HARDWARE_ADAPTER)",
)
async def test_real_polar_strap() -> None:
    """Opt-in: a worn Polar H10 nearby streams heart rate and 50 Hz ACC for a few seconds."""
    address = os.environ.get("AGENT_HARDWARE_ADDRESS")
    cfg = BleDeviceConfig(
        name="h10",
        address=address,
        name_contains=None if address else "H10",
        adapter=os.environ.get("AGENT_HARDWARE_ADAPTER"),
        acc_rate_hz=50,
    )
    out = Collector()
    async with running(BleSource(cfg), out):
        await out.until(
            lambda: len(out.of(HeartRateSample)) >= 3 and len(out.of(AccBlock)) >= 3, within=60
        )
    blocks = [b for b in out.of(AccBlock) if isinstance(b, AccBlock)]
    norm = np.linalg.norm(np.concatenate([b.xyz for b in blocks]), axis=1)
    assert 5.0 < float(np.median(norm)) < 15.0  # gravity is in there somewhere


# --------------------------------------------------------------------------------------------
# Sans-radio parts
# --------------------------------------------------------------------------------------------


def test_choose_settings_nearest_and_defaults() -> None:
    offered = {
        SettingType.SAMPLE_RATE: (25, 50, 100, 200),
        SettingType.RESOLUTION: (16,),
        SettingType.RANGE: (2, 4, 8),
    }
    assert choose_settings(offered, 60, 3) == {
        SettingType.SAMPLE_RATE: 50,
        SettingType.RANGE: 4,
        SettingType.RESOLUTION: 16,
    }
    assert choose_settings(offered, 75, None)[SettingType.SAMPLE_RATE] == 100  # tie → higher
    assert choose_settings(offered, 1000, None)[SettingType.RANGE] == 8


def test_config_requires_a_way_to_find_the_device() -> None:
    with pytest.raises(ValueError, match="address, name_contains, service"):
        BleDeviceConfig(name="x")
    with pytest.raises(ValueError, match="service must be one of"):
        BleDeviceConfig(name="x", service="ecg")
    assert (
        service_uuid("180D")
        == service_uuid("heart_rate")
        == service_uuid("0000180d-0000-1000-8000-00805f9b34fb")
    )
    assert service_uuid("pmd") == "fb005c80-02e7-f387-1cad-8acd2d8df0c8"


def test_handlers_convert_units_and_count_bad_input() -> None:
    status = SourceStatus(name="s")
    out: list[SensorSample] = []
    h = NotificationHandlers(status, out.append, clock=lambda: 1000.0)
    h.on_heart_rate(bytes.fromhex("1E553200 2100".replace(" ", "")))
    h.on_pressure((1_013_250).to_bytes(4, "little"))
    h.on_battery(b"\x65")  # 101 % is invalid
    h.on_pmd_data(b"")
    h.on_pmd_control(b"\xf0")
    assert status.malformed == 3
    hr = out[0]
    assert isinstance(hr, HeartRateSample) and (hr.t, hr.bpm, hr.contact) == (1000.0, 85, True)
    p = out[1]
    assert isinstance(p, PressureSample) and math.isclose(p.hpa, 1013.25)
    assert status.last_sample_t == 1000.0


async def test_multi_part_control_point_answer_is_reassembled() -> None:
    """``more`` set: the following indications' bytes from index 5 extend the parameters."""
    src = BleSource(fast_config(name="x", address=peripheral_address(1)))
    h = NotificationHandlers(src.status, lambda _s: None)
    h.pmd_response = src._on_pmd_response
    fut: asyncio.Future[ControlPointResponse] = asyncio.get_running_loop().create_future()
    configured: list[ControlPointResponse] = []
    src._pmd_pending = _PmdExchange(opcode=0x01, future=fut, on_ok=configured.append)
    h.on_pmd_control(bytes.fromhex("F0 01 02 00 01 00 02 19 00"))  # rates..., more follows
    assert not fut.done()
    h.on_pmd_control(bytes.fromhex("F0 03 02 00 00"))  # another op: ignored
    h.on_pmd_control(bytes.fromhex("F0 01 02 00 00 32 00 01 01 10 00"))
    reply = await asyncio.wait_for(fut, 1)
    assert reply.settings[SettingType.SAMPLE_RATE] == (25, 50)
    assert reply.settings[SettingType.RESOLUTION] == (16,)
    assert configured == [reply] and src.status.malformed == 0


def test_handlers_survive_a_failing_emit() -> None:
    def boom(_s: SensorSample) -> None:
        raise asyncio.QueueFull

    status = SourceStatus(name="s")
    h = NotificationHandlers(status, boom)
    h.on_heart_rate(bytes.fromhex("0055"))
    assert status.malformed == 0 and status.last_sample_t is None
    assert h.dropped == 1 and status.extra["dropped"] == 1


# --------------------------------------------------------------------------------------------
# Fuzzing the notification handlers (hypothesis): no input escapes, bad input is counted.
# The handlers run inside bleak's D-Bus callback; an exception there loses the sample and a
# crash in the PMD path could wedge a control-point exchange. PMD data is fed both as pure
# noise and as a valid header with random content under random stream configurations.
# --------------------------------------------------------------------------------------------

HANDLERS = ("on_heart_rate", "on_rsc", "on_pressure", "on_battery", "on_pmd_data", "on_pmd_control")


def _handlers() -> tuple[NotificationHandlers, list[SensorSample], list[object]]:
    out: list[SensorSample] = []
    cp: list[object] = []
    h = NotificationHandlers(SourceStatus(name="fuzz"), out.append, clock=lambda: 1.0e9)
    h.pmd_response = cp.append
    h.pmd_stopped = cp.append
    return h, out, cp


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(HANDLERS), st.binary(max_size=64)), max_size=20))
def test_random_notifications_never_raise(calls: list[tuple[str, bytes]]) -> None:
    h, out, cp = _handlers()
    for name, payload in calls:
        getattr(h, name)(payload)
    # Every notification is accounted for exactly once: a sample, a CP message, malformed, or
    # (PMD only) ignored as an unsupported / empty frame.
    assert h.status.malformed + len(out) + len(cp) + h.ignored == len(calls)
    assert h.dropped == 0
    for s in out:
        if isinstance(s, AccBlock | GyroBlock):
            assert s.xyz.shape[1] == 3 and len(s.t) == len(s.xyz)


@settings(max_examples=200, deadline=None)
@given(
    mtype=st.sampled_from([MeasurementType.ACC, MeasurementType.GYRO, MeasurementType.ECG, 0x3F]),
    frame_type=st.integers(0, 255),
    ts=st.integers(0, 2**64 - 1),
    content=st.binary(max_size=200),
    factor=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    rate=st.one_of(st.none(), st.sampled_from([0.0, 25.0, 52.0, 200.0])),
    resolution=st.one_of(st.none(), st.integers(0, 40)),
    channels=st.one_of(st.none(), st.integers(0, 5)),
    repeat=st.integers(1, 3),
)
def test_pmd_frames_with_valid_header_never_raise(
    mtype: int,
    frame_type: int,
    ts: int,
    content: bytes,
    factor: float | None,
    rate: float | None,
    resolution: int | None,
    channels: int | None,
    repeat: int,
) -> None:
    h, out, _ = _handlers()
    h.decoder.configure(
        mtype, sample_rate=rate, factor=factor, resolution=resolution, channels=channels
    )
    frame = bytes([mtype]) + struct.pack("<Q", ts) + bytes([frame_type]) + content
    for _ in range(repeat):
        h.on_pmd_data(frame)
    assert h.status.malformed + len(out) + h.ignored == repeat
    assert h.notifications == repeat


@given(st.binary(max_size=40))
def test_control_point_garbage_is_counted_not_dispatched(payload: bytes) -> None:
    h, _, cp = _handlers()
    h.on_pmd_control(payload)
    if cp:
        assert isinstance(cp[0], ControlPointResponse | MeasurementStopped)
        assert h.status.malformed == 0
    else:
        assert h.status.malformed == 1


def test_malformed_counts_grow_per_bad_notification() -> None:
    h, out, _ = _handlers()
    for _ in range(5):
        h.on_heart_rate(b"")
        h.on_rsc(b"\x07\x00")
        h.on_pressure(b"\x01")
    assert h.status.malformed == 15 and out == []
