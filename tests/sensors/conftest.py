"""Fixtures for BLE tests: a private dbus-daemon with BlueZoo, and virtual wearables on it.

Every BLE test gets a fresh daemon and BlueZoo (≈0.3 s) so no BlueZ state (known devices,
links, advertisements) leaks between tests. Tests skip, with the reason, only when
``dbus-daemon`` is not installed (CI installs it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.fakes.harness import DBUS_DAEMON, BluezooHarness, release_bleak_manager


async def _harness(monkeypatch: pytest.MonkeyPatch, n: int) -> AsyncIterator[BluezooHarness]:
    if not os.access(DBUS_DAEMON, os.X_OK):
        pytest.skip(
            f"{DBUS_DAEMON} not installed (apt-get install dbus-daemon): BlueZoo needs "
            "a private D-Bus daemon"
        )
    harness = BluezooHarness(n_adapters=n, verbose=bool(os.environ.get("BLUEZOO_VERBOSE")))
    await harness.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", harness.address)
    try:
        yield harness
    finally:
        await release_bleak_manager()
        await harness.stop()


@pytest.fixture
async def bluezoo(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BluezooHarness]:
    """BlueZoo with two adapters: hci0 (central, used by bleak) and hci1 (one wearable)."""
    async for h in _harness(monkeypatch, 2):
        yield h


@pytest.fixture
async def bluezoo3(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BluezooHarness]:
    """BlueZoo with three adapters: hci0 (central), hci1 and hci2 (two wearables)."""
    async for h in _harness(monkeypatch, 3):
        yield h


@pytest.fixture
async def bare_bus(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BluezooHarness]:
    """A private system bus with no ``org.bluez`` on it (BlueZ not installed/running)."""
    async for h in _harness(monkeypatch, 0):
        yield h
