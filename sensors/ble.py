"""BLE sensor sessions over bleak/BlueZ: heart rate, Polar PMD ACC/GYRO, RSC, ESS pressure, battery.

Theory of operation
-------------------
One :class:`BleSource` is one asyncio task for one configured device; devices never share
state, so a failing strap cannot stop a foot pod. ``run(emit)`` loops forever::

    SCANNING ─found─▶ CONNECTING ─connected, subscribed─▶ STREAMING
        ▲                                                   │ link lost / silence watchdog /
        └──────────── BACKOFF (agent.backoff.Backoff) ◀─────┘ device stopped PMD / any error

* **Scan right before every connect** (BlueZ drops unconnected devices from its cache when
  discovery stops; REFERENCE 4.5.4) and connect with the fresh ``BLEDevice``. Sources on the same
  adapter share one discovery (:class:`_SharedScanner`: BlueZ allows one per D-Bus client). A
  configured address that BlueZ still holds a link to (left by a crashed run; a connected device
  does not advertise) is reused instead of scanned for.
* **Every await on BlueZ is bounded** by ``asyncio.timeout``; a hung D-Bus call becomes a
  ``TimeoutError`` that the loop classifies (:mod:`sensors.bluez_errors`) like any other failure.
* **Silence watchdog**: BlueZ may keep ``Connected=True`` while nothing arrives (a "zombie" link,
  REFERENCE 4.4/4.5.5); no notification for ``silence_timeout_s`` forces a disconnect and a fresh
  scan + connect.
* **Always ``await client.disconnect()``** and drop the client before creating a new one
  (REFERENCE 4.5.10), and stop PMD streams first when the link is still up (so the strap does
  not keep streaming into the void and burning battery).
* Notification handlers (:class:`NotificationHandlers`) are plain synchronous functions that
  never raise: malformed payloads are counted in ``status.malformed``, logged once per kind, and
  skipped. They are separate from the session so they can be fuzzed without a radio.

Units: ACC in m/s² (Polar mG × 9.80665e-3), GYRO in rad/s, pressure in hPa, all times host Unix
seconds. PMD sample times come from the device clock mapped to host time by
:class:`sensors.pmd.DeviceClock`; other samples are stamped with the host clock on arrival.

Why not ``bleak-retry-connector``: its value is Home Assistant's connection-slot management and
ESPHome proxy error codes; it pulls ``bluetooth-adapters`` (+ aiooui, usb-devices, uart-devices)
and still leaves the link watchdog, settings negotiation and backoff to us (REFERENCE 4.4). Our
own loop (scan → connect with timeout → classify → backoff) covers what we need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
from bleak import BleakAdapter, BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.uuids import normalize_uuid_str

from agent.backoff import Backoff
from sensors.base import (
    AccBlock,
    BatterySample,
    Emit,
    GyroBlock,
    HeartRateSample,
    PressureSample,
    RscSample,
    SensorSample,
    SourceState,
    SourceStatus,
)
from sensors.bluez_errors import (
    Action,
    Classification,
    DeviceNotFound,
    SessionError,
    classify,
)
from sensors.gatt import (
    BATTERY_LEVEL_UUID,
    BATTERY_SERVICE_UUID,
    ESS_SERVICE_UUID,
    HEART_RATE_MEASUREMENT_UUID,
    HEART_RATE_SERVICE_UUID,
    PRESSURE_UUID,
    RSC_MEASUREMENT_UUID,
    RSC_SERVICE_UUID,
    ParseError,
    UnsupportedFrameError,
    parse_battery_level,
    parse_heart_rate_measurement,
    parse_pressure,
    parse_rsc_measurement,
)
from sensors.pmd import (
    DPS_TO_RADS,
    MG_TO_MS2,
    PMD_CONTROL_UUID,
    PMD_DATA_UUID,
    PMD_SERVICE_UUID,
    ControlPointResponse,
    DeviceClock,
    MeasurementStopped,
    MeasurementType,
    PmdDecoder,
    ResponseStatus,
    SettingType,
    build_get_settings,
    build_start,
    build_stop,
    parse_control_point_notification,
)

log = logging.getLogger(__name__)

#: Advertised service UUID for each ``service`` value of the configuration.
SERVICE_UUIDS: Final[dict[str, str]] = {
    "heart_rate": HEART_RATE_SERVICE_UUID,
    "pmd": PMD_SERVICE_UUID,
    "rsc": RSC_SERVICE_UUID,
    "pressure": ESS_SERVICE_UUID,
}

#: Any of these in a connected device's service list makes it a reuse candidate (GATT 0x1801 is
#: bleak's default and present on nearly every device; the rest cover peripherals without it).
_ANY_SERVICE: Final = (
    "00001801-0000-1000-8000-00805f9b34fb",
    *SERVICE_UUIDS.values(),
    BATTERY_SERVICE_UUID,
)

#: Polar's SDK waits up to 30 s for a control-point answer; a healthy strap answers in < 100 ms,
#: so 5 s only protects us from a wedged link while leaving room for a slow first exchange.
PMD_RESPONSE_TIMEOUT_S: Final = 5.0
#: Bound for single GATT operations (read, write, start/stop notify) and for scanner start/stop.
GATT_TIMEOUT_S: Final = 10.0
#: A shared discovery older than this is restarted when the next consumer joins (see
#: ``_SharedScanner.add``); long enough not to disturb normal scans of ``scan_timeout_s``.
MAX_SCAN_AGE_S: Final = 120.0
#: Bound for the best-effort cleanup on the way out (stop PMD streams, disconnect).
CLEANUP_TIMEOUT_S: Final = 5.0


def service_uuid(service: str) -> str:
    """Full lowercase UUID for a ``service`` setting: a name from :data:`SERVICE_UUIDS` or a
    16/32/128-bit UUID (``180d``, ``0000180d-0000-1000-8000-00805f9b34fb``); ValueError else."""
    if service in SERVICE_UUIDS:
        return SERVICE_UUIDS[service]
    text = service.strip().lower().removeprefix("0x")
    if len(text) not in (4, 8, 36):
        raise ValueError(f"not a service name or UUID: {service!r}")
    return normalize_uuid_str(text)


@dataclass(frozen=True, slots=True)
class BleDeviceConfig:
    """One configured BLE device (one ``[[sensors.ble]]`` table in the config file).

    The device is found by ``address`` and/or ``name_contains`` and/or the advertised
    ``service`` (a name -- heart_rate, pmd, rsc, pressure -- or a service UUID such as ``180d``);
    every criterion that is set must match. At least one is required.
    """

    name: str
    address: str | None = None
    name_contains: str | None = None
    service: str | None = None
    adapter: str | None = None
    heart_rate: bool = True
    acc_rate_hz: int | None = None
    acc_range_g: int | None = None
    gyro_rate_hz: int | None = None
    gyro_range_dps: int | None = None
    rsc: bool = True
    pressure: bool = True
    battery_interval_s: float = 300.0
    silence_timeout_s: float = 15.0
    connect_timeout_s: float = 20.0
    backoff_cap_s: float = 60.0
    #: How long each scan before a connect may take before "device not found".
    scan_timeout_s: float = 10.0
    #: First reconnect delay scale (full jitter, doubling up to ``backoff_cap_s``).
    backoff_base_s: float = 1.0

    def __post_init__(self) -> None:
        if self.address is None and self.name_contains is None and self.service is None:
            raise ValueError(
                f"BLE device {self.name!r}: set at least one of address, name_contains, service"
            )
        if self.service is not None:
            try:
                service_uuid(self.service)
            except ValueError:
                raise ValueError(
                    f"BLE device {self.name!r}: service must be one of {sorted(SERVICE_UUIDS)} "
                    f"or a service UUID (e.g. 180d), got {self.service!r}"
                ) from None
        for key in (
            "silence_timeout_s",
            "connect_timeout_s",
            "scan_timeout_s",
            "battery_interval_s",
            "backoff_cap_s",
            "backoff_base_s",
        ):
            if not getattr(self, key) > 0:
                raise ValueError(f"BLE device {self.name!r}: {key} must be positive")

    def matches(self, device: BLEDevice, adv: AdvertisementData) -> bool:
        """True when an advertisement is this configured device."""
        if self.address is not None and device.address.upper() != self.address.upper():
            return False
        if self.name_contains is not None:
            name = adv.local_name or device.name or ""
            if self.name_contains.lower() not in name.lower():
                return False
        if self.service is not None:
            wanted = service_uuid(self.service)
            if wanted not in (u.lower() for u in adv.service_uuids):
                return False
        return True


def choose_settings(
    available: Mapping[SettingType, tuple[float | int, ...]], rate_hz: int, range_: int | None
) -> dict[SettingType, int]:
    """Pick one value per setting from a GET_MEASUREMENT_SETTINGS answer.

    Rate: the configured one or the nearest supported (ties → the higher rate, so we never
    under-sample what was asked). Range: nearest to the configured one, or the largest when none
    is configured (gait peaks exceed ±2 g; clipping loses steps, resolution is plenty at 16 bit).
    Resolution: the highest offered. Channels: the largest offered.
    """
    chosen: dict[SettingType, int] = {}
    rates = [int(v) for v in available.get(SettingType.SAMPLE_RATE, ())]
    if rates:
        chosen[SettingType.SAMPLE_RATE] = min(rates, key=lambda r: (abs(r - rate_hz), -r))
    ranges = [int(v) for v in available.get(SettingType.RANGE, ())]
    if ranges:
        if range_ is None:
            chosen[SettingType.RANGE] = max(ranges)
        else:
            chosen[SettingType.RANGE] = min(ranges, key=lambda r: (abs(r - range_), -r))
    resolutions = [int(v) for v in available.get(SettingType.RESOLUTION, ())]
    if resolutions:
        chosen[SettingType.RESOLUTION] = max(resolutions)
    channels = [int(v) for v in available.get(SettingType.CHANNELS, ())]
    if channels:
        chosen[SettingType.CHANNELS] = max(channels)
    return chosen


class NotificationHandlers:
    """Turn raw notifications into samples; count and skip malformed ones; never raise.

    Sans-radio: tests and the fuzzer call the ``on_*`` methods with arbitrary bytes. Every
    notification ends up exactly once as an emitted sample, a dispatched control-point message,
    ``status.malformed``, ``ignored`` or ``dropped`` -- nothing disappears unaccounted.
    ``last_notification`` (monotonic seconds) feeds the silence watchdog; ``pmd_response`` is
    called with every PMD control-point answer so the session can await it.
    """

    def __init__(
        self,
        status: SourceStatus,
        emit: Emit,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.status = status
        self.emit = emit
        self.clock = clock
        self.monotonic = monotonic
        self.decoder = PmdDecoder()
        self.device_clock = DeviceClock(now=clock)
        self.last_notification = monotonic()
        self.notifications = 0
        #: Well-formed notifications deliberately not turned into samples (PMD frame types we do
        #: not decode, empty frames) and samples lost because ``emit`` raised. With
        #: ``status.malformed`` these account for every notification that produced no sample.
        self.ignored = 0
        self.dropped = 0
        self.pmd_response: Callable[[ControlPointResponse], None] | None = None
        self.pmd_stopped: Callable[[MeasurementStopped], None] | None = None
        self._logged: set[str] = set()

    @property
    def source(self) -> str:
        return self.status.name

    # -- bookkeeping ------------------------------------------------------------------------

    def _seen(self) -> None:
        self.last_notification = self.monotonic()
        self.notifications += 1

    def _malformed(self, kind: str, data: bytes, exc: BaseException) -> None:
        self.status.malformed += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(
                "%s: malformed %s notification skipped (%s; %d bytes: %s); further ones are "
                "only counted",
                self.source,
                kind,
                exc,
                len(data),
                bytes(data[:24]).hex(" "),
            )

    def _once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.info(msg, *args)

    def _emit(self, sample: SensorSample, t: float) -> None:
        try:
            self.emit(sample)
        except Exception as exc:  # a full queue must not kill the BLE callback
            self.dropped += 1
            self.status.extra["dropped"] = self.dropped
            self._once("emit", "%s: emit failed (%r); samples are being dropped", self.source, exc)
            return
        self.status.last_sample_t = t

    # -- handlers -----------------------------------------------------------------------------

    def on_heart_rate(self, data: bytes) -> None:
        self._seen()
        try:
            m = parse_heart_rate_measurement(bytes(data))
        except Exception as exc:
            self._malformed("heart_rate", data, exc)
            return
        t = self.clock()
        self._emit(
            HeartRateSample(
                t=t,
                bpm=float(m.bpm),
                rr_ms=tuple(m.rr_ms),
                contact=m.sensor_contact,
                source=self.source,
            ),
            t,
        )

    def on_rsc(self, data: bytes) -> None:
        self._seen()
        try:
            m = parse_rsc_measurement(bytes(data))
        except Exception as exc:
            self._malformed("rsc", data, exc)
            return
        t = self.clock()
        self._emit(
            RscSample(
                t=t,
                speed_mps=float(m.speed_mps),
                cadence_spm=float(m.cadence_spm),
                stride_m=m.stride_m,
                total_m=m.total_distance_m,
                running=m.running,
                source=self.source,
            ),
            t,
        )

    def on_pressure(self, data: bytes) -> None:
        self._seen()
        try:
            hpa = parse_pressure(bytes(data))
        except Exception as exc:
            self._malformed("pressure", data, exc)
            return
        t = self.clock()
        self._emit(PressureSample(t=t, hpa=float(hpa), source=self.source), t)

    def on_battery(self, data: bytes) -> None:
        """Battery Level value (from a periodic read or a notification)."""
        try:
            percent = parse_battery_level(bytes(data))
        except Exception as exc:
            self._malformed("battery", data, exc)
            return
        t = self.clock()
        self.status.battery_percent = int(percent)
        self._emit(BatterySample(t=t, percent=int(percent), source=self.source), t)

    def on_pmd_data(self, data: bytes) -> None:
        self._seen()
        try:
            self._pmd_data(bytes(data))
        except UnsupportedFrameError as exc:
            self.ignored += 1
            self._once(
                f"pmd-unsupported-{bytes(data[:1]).hex()}",
                "%s: ignoring PMD frames we do not decode (%s)",
                self.source,
                exc,
            )
        except Exception as exc:
            self._malformed("pmd_data", data, exc)

    def _pmd_data(self, raw: bytes) -> None:
        host_now = self.clock()
        frame = self.decoder.decode(raw)
        samples = frame.samples
        if samples.ndim != 2 or samples.shape[1] != 3:
            raise ParseError(f"expected 3 channels, got shape {samples.shape}")
        if samples.shape[0] == 0:
            self.ignored += 1
            return
        mtype = frame.measurement_type & 0x3F
        if mtype not in (MeasurementType.ACC, MeasurementType.GYRO):
            self.ignored += 1
            self._once(
                f"pmd-type-{mtype}", "%s: ignoring PMD measurement type %d", self.source, mtype
            )
            return
        self.device_clock.observe(frame.timestamp_ns, host_now)
        t = self.device_clock.to_host_s(frame.sample_timestamps_ns)
        if mtype == MeasurementType.ACC:
            xyz = np.asarray(samples, dtype=np.float64) * MG_TO_MS2
            self._emit(AccBlock(t=t, xyz=xyz, source=self.source), float(t[-1]))
        else:
            xyz = np.asarray(samples, dtype=np.float64) * DPS_TO_RADS
            self._emit(GyroBlock(t=t, xyz=xyz, source=self.source), float(t[-1]))

    def on_pmd_control(self, data: bytes) -> None:
        try:
            msg = parse_control_point_notification(bytes(data))
        except Exception as exc:
            self._malformed("pmd_control", data, exc)
            return
        try:
            if isinstance(msg, MeasurementStopped):
                if self.pmd_stopped is not None:
                    self.pmd_stopped(msg)
            elif self.pmd_response is not None:
                self.pmd_response(msg)
        except Exception as exc:  # defensive: a callback bug must not escape into bleak
            self._malformed("pmd_control", data, exc)

    def reset_link_state(self) -> None:
        """Forget per-link PMD state (previous timestamps, clock offset) after a disconnect."""
        self.decoder.reset(keep_config=False)
        self.device_clock.reset()


@dataclass(slots=True)
class _PmdExchange:
    """The one outstanding control-point request (the strap answers requests in order)."""

    opcode: int
    future: asyncio.Future[ControlPointResponse]
    on_ok: Callable[[ControlPointResponse], None] | None = None
    partial: ControlPointResponse | None = None


@dataclass(slots=True)
class _Link:
    """State of one connected session, discarded with the client."""

    client: BleakClient
    lost: asyncio.Event
    reason: str = "link lost"
    pmd_started: list[int] = field(default_factory=list)
    battery: bool = False


AdvCallback = Callable[[BLEDevice, AdvertisementData], None]


class _SharedScanner:
    """One BlueZ discovery per adapter, shared by every :class:`BleSource` of this process.

    Why: bluetoothd allows one discovery session per D-Bus client ("Every client can only start
    one discovery", ``src/adapter.c``: a second ``StartDiscovery`` gets
    ``org.bluez.Error.InProgress``) and bleak talks over one connection per event loop, so two
    sources scanning on the same adapter at once would fail, and the first ``StopDiscovery``
    would end the other's scan. Consumers join and leave; the scan runs while anyone listens.
    A late joiner is first given what the running scan has already seen.
    """

    def __init__(self, adapter: str | None) -> None:
        self._adapter = adapter
        self._callbacks: list[AdvCallback] = []
        self._scanner: BleakScanner | None = None
        self._started = 0.0
        self._lock = asyncio.Lock()

    async def add(self, callback: AdvCallback) -> None:
        async with self._lock:
            self._callbacks.append(callback)
            if self._scanner is not None and time.monotonic() - self._started > MAX_SCAN_AGE_S:
                # Consumers may keep a scan alive forever (two absent devices taking turns); a
                # discovery session lost with a bluetoothd restart would then never come back.
                old, self._scanner = self._scanner, None
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(GATT_TIMEOUT_S):
                        await old.stop()
            if self._scanner is not None:
                seen = self._scanner.discovered_devices_and_advertisement_data
                for device, adv in list(seen.values()):
                    callback(device, adv)
                return
            bluez: Any = {"adapter": self._adapter} if self._adapter else {}
            scanner = BleakScanner(self._dispatch, bluez=bluez)
            try:
                async with asyncio.timeout(GATT_TIMEOUT_S):
                    await scanner.start()
            except BaseException:
                self._callbacks.remove(callback)
                raise
            self._scanner = scanner
            self._started = time.monotonic()

    async def remove(self, callback: AdvCallback) -> None:
        async with self._lock:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)
            if self._callbacks or self._scanner is None:
                return
            scanner, self._scanner = self._scanner, None
            async with asyncio.timeout(GATT_TIMEOUT_S):
                await scanner.stop()

    def _dispatch(self, device: BLEDevice, adv: AdvertisementData) -> None:
        for callback in list(self._callbacks):
            callback(device, adv)


_SCANNERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _SharedScanner]] = (
    weakref.WeakKeyDictionary()
)


def _shared_scanner(adapter: str | None) -> _SharedScanner:
    """The shared scanner of ``adapter`` (None: BlueZ's default) in the running event loop."""
    per_loop = _SCANNERS.setdefault(asyncio.get_running_loop(), {})
    key = adapter or ""
    if key not in per_loop:
        per_loop[key] = _SharedScanner(adapter)
    return per_loop[key]


class BleSource:
    """A reconnecting BLE sensor source implementing :class:`sensors.base.Source`."""

    def __init__(
        self,
        config: BleDeviceConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._status = SourceStatus(name=config.name)
        self._backoff = Backoff(base_s=config.backoff_base_s, cap_s=config.backoff_cap_s)
        if rng is not None:
            self._backoff.rng = rng
        self._handlers: NotificationHandlers | None = None
        self._pmd_lock = asyncio.Lock()
        self._pmd_pending: _PmdExchange | None = None
        self._connected_once = False
        self._logged_advice: set[str] = set()

    @property
    def status(self) -> SourceStatus:
        return self._status

    @property
    def handlers(self) -> NotificationHandlers | None:
        """The notification handlers of the running source (None before ``run``)."""
        return self._handlers

    # -- main loop ----------------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        """Scan, connect, stream; reconnect after every drop, forever (until cancelled)."""
        handlers = NotificationHandlers(self._status, emit, clock=self._clock)
        handlers.pmd_response = self._on_pmd_response
        self._handlers = handlers
        try:
            while True:
                delay = await self._attempt(handlers)
                if self._status.state is not SourceState.FAILED:
                    self._status.state = SourceState.BACKOFF
                await asyncio.sleep(delay)
        finally:
            self._status.state = SourceState.STOPPED

    async def _attempt(self, handlers: NotificationHandlers) -> float:
        """One scan + session; returns the delay before the next attempt."""
        try:
            self._status.state = SourceState.SCANNING
            device = await self._find_device()
            self._status.state = SourceState.CONNECTING
            reason = await self._session(device, handlers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            verdict = classify(exc)
            return self._after_failure(verdict, exc)
        log.info("%s: %s; reconnecting", self.config.name, reason)
        self._status.error = reason
        return self._backoff.next_delay()

    def _after_failure(self, verdict: Classification, exc: BaseException) -> float:
        """Record and log one failure; RETRY/WAIT back off normally, GIVE_UP waits at the cap.

        RETRY is logged at INFO (expected on any radio link); WAIT and GIVE_UP carry operator
        advice, logged as a WARNING the first time each reason occurs and at DEBUG afterwards, so
        a strap left in a drawer does not flood the journal.
        """
        msg = verdict.message()
        self._status.error = msg
        if verdict.action is Action.RETRY:
            log.info("%s: %s (will retry)", self.config.name, msg)
            return self._backoff.next_delay()
        key = verdict.reason
        level = logging.WARNING if key not in self._logged_advice else logging.DEBUG
        self._logged_advice.add(key)
        log.log(level, "%s: %s", self.config.name, msg, exc_info=log.isEnabledFor(logging.DEBUG))
        if verdict.action is Action.GIVE_UP:
            self._status.state = SourceState.FAILED
            return self._backoff.max_delay()
        return self._backoff.next_delay()

    async def _find_device(self) -> BLEDevice:
        """An already-connected instance of the configured address, else a fresh scan."""
        if self.config.address is not None:
            stale = await self._connected_instance(self.config.address)
            if stale is not None:
                log.info(
                    "%s: %s is already connected in BlueZ (left by a previous run?); "
                    "reusing the link",
                    self.config.name,
                    stale.address,
                )
                return stale
        return await self._scan_for_device()

    async def _connected_instance(self, address: str) -> BLEDevice | None:
        """The device if BlueZ already holds a link to it (a connected device does not advertise,
        so scanning would never find it; bleak reuses such a link instead of calling Connect)."""
        try:
            async with asyncio.timeout(GATT_TIMEOUT_S):
                adapter = await BleakAdapter.get(bluez=self._bluez_args())
                connected = await adapter.get_connected_devices(list(_ANY_SERVICE))
        except (NotImplementedError, ValueError):
            return None
        for dev in connected:
            if dev.address.upper() == address.upper():
                return dev
        return None

    async def _scan_for_device(self) -> BLEDevice:
        """Scan until the configured device advertises (bounded by ``scan_timeout_s``)."""
        found: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()

        def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
            if not found.done() and self.config.matches(device, adv):
                found.set_result(device)

        scanner = _shared_scanner(self.config.adapter)
        await scanner.add(on_adv)
        try:
            async with asyncio.timeout(self.config.scan_timeout_s):
                return await found
        except TimeoutError:
            raise DeviceNotFound(self._describe()) from None
        finally:
            with contextlib.suppress(Exception):
                await scanner.remove(on_adv)

    def _describe(self) -> str:
        parts = [
            f"{k}={v}"
            for k, v in (
                ("address", self.config.address),
                ("name_contains", self.config.name_contains),
                ("service", self.config.service),
            )
            if v
        ]
        return ", ".join(parts)

    def _bluez_args(self) -> Any:
        return {"adapter": self.config.adapter} if self.config.adapter else {}

    # -- one connected session ----------------------------------------------------------------

    async def _session(self, device: BLEDevice, handlers: NotificationHandlers) -> str:
        lost = asyncio.Event()
        client = BleakClient(
            device,
            disconnected_callback=lambda _c: lost.set(),
            timeout=self.config.connect_timeout_s,
            bluez=self._bluez_args(),
        )
        link = _Link(client=client, lost=lost)
        try:
            async with asyncio.timeout(self.config.connect_timeout_s + GATT_TIMEOUT_S):
                await client.connect()
            if self._connected_once:
                self._status.reconnects += 1
            self._connected_once = True
            self._backoff.session_started(self._clock())
            handlers.reset_link_state()
            handlers.pmd_stopped = lambda msg: self._on_pmd_stopped(link, msg)
            await self._subscribe(link, handlers)
            self._status.state = SourceState.STREAMING
            self._status.error = None
            log.info("%s: streaming from %s", self.config.name, device.address)
            return await self._supervise(link, handlers)
        finally:
            handlers.pmd_stopped = None
            await self._close(link)
            handlers.reset_link_state()
            self._backoff.session_ended(self._clock())

    async def _subscribe(self, link: _Link, h: NotificationHandlers) -> None:
        client, cfg = link.client, self.config
        services = client.services
        subscribed = 0

        def has(uuid: str) -> bool:
            return services.get_characteristic(uuid) is not None

        async def notify(uuid: str, handler: Callable[[bytes], None]) -> None:
            def callback(_char: BleakGATTCharacteristic, data: bytearray) -> None:
                handler(bytes(data))

            async with asyncio.timeout(GATT_TIMEOUT_S):
                await client.start_notify(uuid, callback)

        if cfg.heart_rate and has(HEART_RATE_MEASUREMENT_UUID):
            await notify(HEART_RATE_MEASUREMENT_UUID, h.on_heart_rate)
            subscribed += 1
        if cfg.rsc and has(RSC_MEASUREMENT_UUID):
            await notify(RSC_MEASUREMENT_UUID, h.on_rsc)
            subscribed += 1
        if cfg.pressure and has(PRESSURE_UUID):
            await notify(PRESSURE_UUID, h.on_pressure)
            subscribed += 1
        wants_pmd = cfg.acc_rate_hz is not None or cfg.gyro_rate_hz is not None
        if wants_pmd and has(PMD_CONTROL_UUID) and has(PMD_DATA_UUID):
            # Both must be enabled before the first CP command (REFERENCE 2.1).
            await notify(PMD_CONTROL_UUID, h.on_pmd_control)
            await notify(PMD_DATA_UUID, h.on_pmd_data)
            if cfg.acc_rate_hz is not None:
                subscribed += await self._start_pmd(
                    link, h, MeasurementType.ACC, cfg.acc_rate_hz, cfg.acc_range_g
                )
            if cfg.gyro_rate_hz is not None:
                subscribed += await self._start_pmd(
                    link, h, MeasurementType.GYRO, cfg.gyro_rate_hz, cfg.gyro_range_dps
                )
        elif wants_pmd:
            log.warning("%s: ACC/GYRO configured but the device has no Polar PMD service", cfg.name)
        link.battery = has(BATTERY_LEVEL_UUID)
        if link.battery:
            await self._read_battery(link, h)
        if subscribed == 0:
            raise SessionError(
                Classification(
                    Action.GIVE_UP,
                    "the device offers none of the enabled measurements",
                    "check heart_rate/rsc/pressure/acc_rate_hz/gyro_rate_hz and the device type",
                )
            )

    async def _read_battery(self, link: _Link, h: NotificationHandlers) -> None:
        """Best effort: a failed battery read is logged, never a reason to drop the link (the
        silence watchdog decides whether the link is dead)."""
        try:
            async with asyncio.timeout(GATT_TIMEOUT_S):
                data = await link.client.read_gatt_char(BATTERY_LEVEL_UUID)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("%s: battery read failed: %s", self.config.name, classify(exc).message())
            return
        h.on_battery(bytes(data))

    async def _supervise(self, link: _Link, h: NotificationHandlers) -> str:
        """Wait for link loss while running the silence watchdog and battery reads."""
        silence = self.config.silence_timeout_s
        h.last_notification = h.monotonic()
        next_battery = h.monotonic() + self.config.battery_interval_s
        while True:
            now = h.monotonic()
            quiet_for = now - h.last_notification
            if quiet_for >= silence:
                log.warning(
                    "%s: no notification for %.1f s; forcing a reconnect",
                    self.config.name,
                    quiet_for,
                )
                return f"silent for {quiet_for:.1f} s (watchdog)"
            if link.battery and now >= next_battery:
                await self._read_battery(link, h)
                next_battery = h.monotonic() + self.config.battery_interval_s
                continue
            wake = silence - quiet_for
            if link.battery:
                wake = min(wake, next_battery - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wake, 0.0)):
                    await link.lost.wait()
            if link.lost.is_set():
                return link.reason

    # -- PMD ------------------------------------------------------------------------------------

    async def _start_pmd(
        self,
        link: _Link,
        h: NotificationHandlers,
        mtype: MeasurementType,
        rate: int,
        range_: int | None,
    ) -> int:
        """Query settings, choose, start one PMD stream; returns 1 if it streams, else 0."""
        name = mtype.name
        reply = await self._pmd_request(link, build_get_settings(mtype))
        if not reply.ok:
            log.warning(
                "%s: device refused %s settings query: %s",
                self.config.name,
                name,
                reply.status.message,
            )
            return 0
        chosen = choose_settings(reply.settings, rate, range_)
        if SettingType.SAMPLE_RATE not in chosen:
            log.warning("%s: device offers no %s sample rate", self.config.name, name)
            return 0
        start = build_start(mtype, chosen)

        def configure(response: ControlPointResponse) -> None:
            # Runs inside the CP indication callback, before any later data notification is
            # dispatched: the first frames after START must already decode with the new FACTOR.
            factor = response.factor
            h.decoder.configure(
                mtype,
                sample_rate=float(chosen[SettingType.SAMPLE_RATE]),
                factor=factor if factor is not None else 1.0,
                resolution=chosen.get(SettingType.RESOLUTION),
                channels=chosen.get(SettingType.CHANNELS),
            )

        reply = await self._pmd_request(link, start, on_ok=configure)
        if reply.status is ResponseStatus.ERROR_ALREADY_IN_STATE:
            # Left running by a previous session (e.g. we crashed): restart with our settings.
            await self._pmd_request(link, build_stop(mtype))
            reply = await self._pmd_request(link, start, on_ok=configure)
        if not reply.ok:
            log.warning(
                "%s: device refused to start %s with %s: %s",
                self.config.name,
                name,
                {k.name: v for k, v in chosen.items()},
                reply.status.message,
            )
            self._status.error = f"{name} start refused: {reply.status.message}"
            return 0
        link.pmd_started.append(int(mtype))
        self._status.extra[f"{name.lower()}_settings"] = {
            k.name.lower(): v for k, v in chosen.items()
        }
        if chosen[SettingType.SAMPLE_RATE] != rate:
            log.info(
                "%s: %s at %d Hz (nearest supported to %d Hz)",
                self.config.name,
                name,
                chosen[SettingType.SAMPLE_RATE],
                rate,
            )
        return 1

    async def _pmd_request(
        self,
        link: _Link,
        command: bytes,
        *,
        on_ok: Callable[[ControlPointResponse], None] | None = None,
    ) -> ControlPointResponse:
        """Write one CP command and await its (possibly multi-part) indication.

        ``on_ok`` runs synchronously when a successful answer arrives (see ``_start_pmd``).
        """
        async with self._pmd_lock:
            loop = asyncio.get_running_loop()
            exchange = _PmdExchange(opcode=command[0], future=loop.create_future(), on_ok=on_ok)
            self._pmd_pending = exchange
            try:
                async with asyncio.timeout(PMD_RESPONSE_TIMEOUT_S):
                    await link.client.write_gatt_char(PMD_CONTROL_UUID, command, response=True)
                    return await exchange.future
            finally:
                self._pmd_pending = None

    def _on_pmd_response(self, response: ControlPointResponse) -> None:
        exchange = self._pmd_pending
        if exchange is None or exchange.future.done() or response.opcode != exchange.opcode:
            log.debug("%s: unexpected PMD response %s", self.config.name, response)
            return
        if exchange.partial is not None:
            response = replace(
                exchange.partial,
                more=response.more,
                parameters=exchange.partial.parameters + response.parameters,
            )
        if response.more:
            exchange.partial = response
            return
        if response.ok and exchange.on_ok is not None:
            exchange.on_ok(response)
        exchange.future.set_result(response)

    def _on_pmd_stopped(self, link: _Link, msg: MeasurementStopped) -> None:
        stopped = [t for t in msg.measurement_types if t in link.pmd_started]
        if stopped:
            link.reason = f"device stopped PMD streams {stopped}"
            link.pmd_started.clear()
            link.lost.set()

    # -- cleanup --------------------------------------------------------------------------------

    async def _close(self, link: _Link) -> None:
        """Stop PMD streams if the link is still up, then always disconnect and drop the client."""
        client = link.client
        if link.pmd_started and client.is_connected and not link.lost.is_set():
            for mtype in list(link.pmd_started):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                        await self._pmd_request(link, build_stop(mtype))
            link.pmd_started.clear()
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await client.disconnect()
        except Exception as exc:
            log.debug("%s: disconnect failed: %r", self.config.name, exc)
