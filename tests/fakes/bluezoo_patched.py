"""Run BlueZoo (the BlueZ D-Bus mock) with two fixes that make it behave like bluetoothd.

Why a wrapper: bluezoo 1.0.2 has two gaps that real BlueZ does not have (REFERENCE.md 5.1):

1. On disconnect it never unexports the per-link GATT objects, so the second ``Connect`` to the
   same device fails with ``EEXIST`` and stale objects confuse bleak ("Multiple Characteristics
   with this UUID"). Real bluetoothd drops the remote GATT database objects and calls
   ``StopNotify`` on the server's characteristics when the last subscriber leaves. We do both.
2. ``StartDiscovery`` from a D-Bus client that is already discovering succeeds in bluezoo;
   bluetoothd answers ``org.bluez.Error.InProgress`` ("Every client can only start one
   discovery", ``src/adapter.c``). Several bleak scanners in one process share one D-Bus
   connection, so this matters; we reproduce BlueZ's answer.
3. A device already known to the scanning adapter is never re-announced, so a second scan finds
   nothing. Real bluetoothd updates ``RSSI`` (a ``PropertiesChanged`` signal) for every
   advertisement it receives while discovering. We emit such an update on every rediscovery.

Run as ``python bluezoo_patched.py --auto-enable --scan-interval 1 -a ADDR -a ADDR`` with
``DBUS_SYSTEM_BUS_ADDRESS`` pointing at a private ``dbus-daemon``. It runs in its own process
so bluezoo's global state (default sd-bus, event subscriptions) never leaks between tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
from typing import Any

import bluezoo.bluezoo
import sdbus
from bluezoo.adapter import Adapter
from bluezoo.device import Device
from bluezoo.exceptions import DBusBluezInProgressError
from bluezoo.gatt import GattCharacteristicClientLink
from bluezoo.utils import BluetoothAddress

_orig_disconnect = Device.disconnect
_orig_add_device = Adapter.add_device
_rssi = itertools.cycle(range(-40, -80, -3))


async def _disconnect(self: Any, uuid: str | None = None) -> None:
    await _orig_disconnect(self, uuid)
    for link in list(self.services.values()):
        if isinstance(link, GattCharacteristicClientLink):
            link.client_props_changed_subscription.unsubscribe()
            if link.client.Notifying.get(False) and link.client.NotifyAcquired.get() is None:
                with contextlib.suppress(Exception):  # the server may already be gone
                    await link.client.StopNotify()
        with contextlib.suppress(KeyError):
            self.peer_adapter.mock.remove_object(link)
    self.services.clear()
    if self.services_resolved:
        await self.ServicesResolved.set_async(False)


async def _add_device(self: Any, device: Any) -> None:
    device.attach_to_adapter(self)
    known = self.devices.get(device.get_object_path())
    await _orig_add_device(self, device)
    if known is not None and not known.connected:
        known.rssi = next(_rssi)
        known.properties_changed.emit(("org.bluez.Device1", {"RSSI": ("n", known.rssi)}, []))


class _Adapter(Adapter):  # type: ignore[misc]
    @sdbus.dbus_method_async_override()
    async def StartDiscovery(self) -> None:
        sender = sdbus.get_current_message().sender
        if sender in self.scan_subscribers:
            raise DBusBluezInProgressError("Operation already in progress")
        await super().StartDiscovery()


Device.disconnect = _disconnect
Adapter.add_device = _add_device
bluezoo.bluezoo.Adapter = _Adapter


def main() -> None:
    """Like ``bluezoo.bluezoo.main`` but prints ``READY`` once every adapter is exported."""
    parser = argparse.ArgumentParser(description="patched BlueZoo for tests")
    parser.add_argument("--scan-interval", type=int, default=1)
    parser.add_argument("-a", "--adapter", dest="adapters", action="append", default=[])
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(
        bluezoo.bluezoo.startup(
            adapters=[BluetoothAddress(a) for a in args.adapters],
            auto_enable=True,
            scan_interval=args.scan_interval,
        )
    )
    print("READY", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_forever()


if __name__ == "__main__":
    main()
