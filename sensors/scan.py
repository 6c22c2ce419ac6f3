"""Discover nearby BLE sensors and suggest the config lines that use them (``agent scan``).

Theory of operation: one active BlueZ discovery of ``timeout_s`` seconds through bleak; every
advertisement updates the latest name/RSSI/service list of its address. A device is reported when
it advertises at least one service we can read (heart rate, Polar PMD, RSC, pressure, battery)
or is recognisably a Polar sensor (H10/H9/Verity Sense/OH1 advertise only the Heart Rate service,
never PMD, so PMD is inferred from the name for the models that have it).

"No Bluetooth" (no ``org.bluez`` on the system bus, no system bus, no adapter, adapter name
unknown) raises :class:`BluetoothUnavailable` with advice instead of a bleak/D-Bus traceback.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from sensors.bluez_errors import classify
from sensors.gatt import (
    BATTERY_SERVICE_UUID,
    ESS_SERVICE_UUID,
    HEART_RATE_SERVICE_UUID,
    RSC_SERVICE_UUID,
)
from sensors.pmd import PMD_SERVICE_UUID

#: Advertised service UUID → the name used in ``services`` and in the config's ``service`` key.
KNOWN_SERVICES: dict[str, str] = {
    HEART_RATE_SERVICE_UUID: "heart_rate",
    PMD_SERVICE_UUID: "pmd",
    RSC_SERVICE_UUID: "rsc",
    ESS_SERVICE_UUID: "pressure",
    BATTERY_SERVICE_UUID: "battery",
}
#: Order of ``ScannedDevice.services``; the config ``service`` key is the first of them that a
#: device *advertises* -- never "pmd", which Polar sensors do not advertise (matching on it would
#: never find them), so PMD devices are selected by address and their heart-rate service.
SERVICE_PRIORITY = ("heart_rate", "pmd", "rsc", "pressure")
_CONFIG_SERVICE_PRIORITY = ("heart_rate", "rsc", "pressure")
_SHORT_UUID = {"heart_rate": "180d", "rsc": "1814", "pressure": "181a"}
#: Polar models with a PMD accelerometer (the H9 and H7 have none).
_POLAR_PMD = re.compile(r"^Polar (H10|Sense|Verity|OH1)\b", re.IGNORECASE)
#: Bound on starting/stopping discovery (BlueZ calls), on top of the scan itself.
_BLUEZ_CALL_TIMEOUT_S = 10.0


class BluetoothUnavailable(Exception):
    """No usable Bluetooth stack or adapter; ``str()`` says what to do."""


@dataclass(frozen=True, slots=True)
class ScannedDevice:
    """One device seen during a scan."""

    name: str | None
    address: str
    rssi: int | None
    services: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "rssi": self.rssi,
            "services": list(self.services),
        }


def services_of(name: str | None, service_uuids: list[str]) -> tuple[str, ...]:
    """Supported services advertised (or implied by the model name), in priority order."""
    found = {KNOWN_SERVICES[u.lower()] for u in service_uuids if u.lower() in KNOWN_SERVICES}
    if name and _POLAR_PMD.match(name):
        found.add("pmd")
    order = (*SERVICE_PRIORITY, "battery")
    return tuple(s for s in order if s in found)


async def scan(timeout_s: float, adapter: str | None = None) -> list[ScannedDevice]:
    """Scan for ``timeout_s`` seconds; supported devices sorted by RSSI (strongest first)."""
    seen: dict[str, tuple[BLEDevice, AdvertisementData]] = {}

    def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[device.address] = (device, adv)

    scanner = BleakScanner(on_adv, bluez={"adapter": adapter} if adapter else {})
    try:
        async with asyncio.timeout(_BLUEZ_CALL_TIMEOUT_S):
            await scanner.start()
        try:
            await asyncio.sleep(timeout_s)
        finally:
            async with asyncio.timeout(_BLUEZ_CALL_TIMEOUT_S):
                await scanner.stop()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        verdict = classify(exc)
        if verdict.unavailable:
            raise BluetoothUnavailable(verdict.message()) from exc
        raise
    out = []
    for device, adv in seen.values():
        name = adv.local_name or device.name
        services = services_of(name, adv.service_uuids)
        if services:
            out.append(
                ScannedDevice(name=name, address=device.address, rssi=adv.rssi, services=services)
            )
    out.sort(key=lambda d: (-(d.rssi if d.rssi is not None else -999), d.address))
    return out


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "sensor"


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_lines(dev: ScannedDevice) -> str:
    """A ``[[sensors.ble]]`` table (keys are ``BleDeviceConfig`` fields) for this device."""
    label = _slug(dev.name or dev.address.replace(":", ""))
    lines = ["[[sensors.ble]]", f"name = {_toml_str(label)}", f"address = {_toml_str(dev.address)}"]
    primary = next((s for s in _CONFIG_SERVICE_PRIORITY if s in dev.services), None)
    if primary is not None:
        # The 16-bit UUID form: accepted by both the config validator and BleDeviceConfig.
        short = _SHORT_UUID[primary]
        lines.append(f"service = {_toml_str(short)}    # {primary}")
    if "pmd" in dev.services:
        if dev.name and re.match(r"^Polar H10\b", dev.name, re.IGNORECASE):
            lines.append("acc_rate_hz = 50    # Polar H10: 25/50/100/200 Hz")
        else:
            lines.append("acc_rate_hz = 52    # Polar Verity Sense/OH1: 52 Hz (more in SDK mode)")
            lines.append("# gyro_rate_hz = 52")
    return "\n".join(lines) + "\n"
