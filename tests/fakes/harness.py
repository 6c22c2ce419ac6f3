"""Private ``dbus-daemon`` + patched BlueZoo, as a test harness for real bleak.

Theory of operation: every harness owns a throw-away D-Bus daemon and points
``DBUS_SYSTEM_BUS_ADDRESS`` at it, so bleak (which talks to the *system* bus) finds BlueZoo's
``org.bluez`` instead of the host's. BlueZoo runs in a subprocess (see ``bluezoo_patched``) with
adapter ``hci0`` as the central and ``hci1…`` for the virtual wearables. Readiness and teardown
are event driven: BlueZoo prints ``READY``; the daemon prints its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from tests.fakes.gatt_server import bluez_call

DBUS_DAEMON = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
CENTRAL_ADDRESS = "00:00:00:11:11:11"
START_TIMEOUT_S = 15.0


def peripheral_address(index: int) -> str:
    """Address of the emulated adapter ``hci<index>`` (index ≥ 1)."""
    return f"00:00:00:22:22:{index:02X}"


def device_path(adapter: str, address: str) -> str:
    """BlueZ object path of ``address`` as seen by ``adapter`` (e.g. ``hci0``)."""
    return f"/org/bluez/{adapter}/dev_{address.replace(':', '_')}"


class BluezooHarness:
    """A private bus with BlueZoo and ``n_adapters`` emulated adapters."""

    def __init__(self, n_adapters: int = 2, *, verbose: bool = False) -> None:
        """``n_adapters=0``: only the private bus, no BlueZ at all (for "no BlueZ" tests)."""
        self.n_adapters = n_adapters
        self.verbose = verbose
        self.address = ""
        self._daemon: asyncio.subprocess.Process | None = None
        self._bluezoo: asyncio.subprocess.Process | None = None
        self._bus: MessageBus | None = None

    async def start(self) -> None:
        self._daemon = await asyncio.create_subprocess_exec(
            DBUS_DAEMON,
            "--session",
            "--nofork",
            "--print-address",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self._daemon.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            self.address = (await self._daemon.stdout.readline()).decode().strip()
        if self.n_adapters == 0:
            return
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        args = [
            sys.executable,
            str(Path(__file__).with_name("bluezoo_patched.py")),
            "--scan-interval",
            "1",
            "-a",
            CENTRAL_ADDRESS,
        ]
        for i in range(1, self.n_adapters):
            args += ["-a", peripheral_address(i)]
        if self.verbose:
            args.append("-v")
        self._bluezoo = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=asyncio.subprocess.PIPE
        )
        assert self._bluezoo.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = await self._bluezoo.stdout.readline()
        if line.strip() != b"READY":
            raise RuntimeError(f"bluezoo did not start: {line!r}")
        self._bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> list[Any]:
        assert self._bus is not None
        return await bluez_call(self._bus, path, interface, member, signature, body)

    async def disconnect_central(self, address: str, adapter: str = "hci0") -> None:
        """Simulate a link drop: ``Device1.Disconnect`` on the central's device object."""
        await self.call(device_path(adapter, address), "org.bluez.Device1", "Disconnect")

    async def kill_bluez(self) -> None:
        """bluetoothd dies (crash or restart): ``org.bluez`` leaves the bus, no signals sent."""
        if self._bluezoo is not None and self._bluezoo.returncode is None:
            self._bluezoo.kill()
            await self._bluezoo.wait()

    async def stop(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            self._bus = None
        for proc in (self._bluezoo, self._daemon):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(5):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        self._bluezoo = self._daemon = None


async def release_bleak_manager() -> None:
    """Close bleak's per-loop BlueZ manager before its bus's daemon goes away.

    bleak caches one ``BlueZManager`` per event loop; with a private daemon per test the socket
    would otherwise outlive the daemon and surface as an unraisable ``ResourceWarning``.
    """
    from bleak.backends.bluezdbus import manager as bluez_manager

    loop = asyncio.get_running_loop()
    mgr = bluez_manager._global_instances.pop(loop, None)
    if mgr is None:
        return
    bus = mgr._bus
    task = mgr._bus_watcher_task
    if bus is not None:
        bus.disconnect()
    if task is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
