"""``sensors.scan`` and ``agent scan`` through real bleak on BlueZoo, and without BlueZ at all."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from agent import scan as scan_cmd
from agent.config import load_config
from sensors.ble import BleDeviceConfig
from sensors.scan import BluetoothUnavailable, ScannedDevice, config_lines, scan, services_of
from tests.fakes.harness import BluezooHarness, peripheral_address
from tests.fakes.wearables import FootPod, H10Strap

SCAN_S = 0.3


def _args(**kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    scan_cmd.configure(parser)
    ns = parser.parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


async def test_scan_lists_supported_devices_with_services(bluezoo3: BluezooHarness) -> None:
    strap = H10Strap(bluezoo3.address, "/org/bluez/hci1")
    pod = FootPod(bluezoo3.address, "/org/bluez/hci2")
    await strap.start()
    await pod.start()
    try:
        found = await scan(SCAN_S, "hci0")
        again = await scan(SCAN_S, "hci0")  # a second scan still sees them (re-announce patch)
    finally:
        await strap.stop()
        await pod.stop()
    by_addr = {d.address: d for d in found}
    assert set(by_addr) == {peripheral_address(1), peripheral_address(2)}
    h10 = by_addr[peripheral_address(1)]
    assert h10.name == "Polar H10 0A1B2C3D"
    assert h10.services == ("heart_rate", "pmd")
    assert by_addr[peripheral_address(2)].services == ("rsc",)
    assert {d.address for d in again} == set(by_addr)


async def test_scan_without_bluez_raises_unavailable(bare_bus: BluezooHarness) -> None:
    with pytest.raises(BluetoothUnavailable, match="BlueZ is not running"):
        await scan(SCAN_S, None)


async def test_scan_with_unknown_adapter_raises_unavailable(bluezoo: BluezooHarness) -> None:
    with pytest.raises(BluetoothUnavailable, match="adapter"):
        await scan(SCAN_S, "hci7")


async def test_agent_scan_exit_69_without_bluez(
    bare_bus: BluezooHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    # run() owns its event loop (asyncio.run), so call it from a worker thread.
    rc = await asyncio.to_thread(scan_cmd.run, _args(timeout=SCAN_S))
    assert rc == scan_cmd.EX_UNAVAILABLE == 69
    err = capsys.readouterr().err
    assert "Bluetooth is not available" in err and "systemctl" in err
    assert "Traceback" not in err


async def test_agent_scan_prints_table_config_and_json(
    bluezoo: BluezooHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    strap = H10Strap(bluezoo.address, "/org/bluez/hci1")
    await strap.start()
    try:
        rc = await asyncio.to_thread(scan_cmd.run, _args(timeout=SCAN_S, adapter="hci0"))
        out = capsys.readouterr().out
        rc_json = await asyncio.to_thread(
            scan_cmd.run, _args(timeout=SCAN_S, adapter="hci0", json=True)
        )
        data = json.loads(capsys.readouterr().out)
    finally:
        await strap.stop()
    assert rc == 0 and rc_json == 0
    assert "Polar H10 0A1B2C3D" in out and "heart_rate, pmd" in out
    snippet = out[out.index("[[sensors.ble]]") :]
    table = tomllib.loads(snippet)["sensors"]["ble"][0]
    assert table["address"] == peripheral_address(1) and table["acc_rate_hz"] == 50
    assert table["service"] == "180d"
    assert data == [
        {
            "name": "Polar H10 0A1B2C3D",
            "address": peripheral_address(1),
            "rssi": data[0]["rssi"],
            "services": ["heart_rate", "pmd"],
        }
    ]


def test_config_lines_are_valid_config() -> None:
    fields = {f.name for f in dataclasses.fields(BleDeviceConfig)}
    for dev in (
        ScannedDevice("Polar Sense 1A2B3C4D", "A0:9E:1A:00:00:01", -60, ("heart_rate", "pmd")),
        ScannedDevice(None, "C0:FF:EE:00:00:02", None, ("rsc", "battery")),
        ScannedDevice('We"ird \\ name', "C0:FF:EE:00:00:03", -90, ("pressure",)),
    ):
        table = tomllib.loads(config_lines(dev))["sensors"]["ble"][0]
        assert set(table) <= fields
        cfg = BleDeviceConfig(**table)
        assert cfg.address == dev.address
        # Never select by the PMD UUID: Polar sensors do not advertise it.
        assert cfg.service in ("180d", "1814", "181a")


def test_config_lines_pass_the_agent_config_loader(tmp_path: Path) -> None:
    devs = [
        ScannedDevice("Polar H10 ABCDEF12", "A0:9E:1A:00:00:01", -60, ("heart_rate", "pmd")),
        ScannedDevice("Stryd", "C0:FF:EE:00:00:02", -70, ("rsc",)),
    ]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(config_lines(d) for d in devs))
    sections = load_config(path, env={}).sensors.ble
    configs = [BleDeviceConfig(**dataclasses.asdict(s)) for s in sections]
    assert [(c.name, c.service, c.acc_rate_hz) for c in configs] == [
        ("polar-h10-abcdef12", "180d", 50),
        ("stryd", "1814", None),
    ]


def test_services_of_infers_pmd_only_for_polar_models_with_it() -> None:
    hrs = ["0000180d-0000-1000-8000-00805f9b34fb"]
    assert services_of("Polar H10 12345678", hrs) == ("heart_rate", "pmd")
    assert services_of("Polar H9 12345678", hrs) == ("heart_rate",)
    assert services_of("Garmin HRM", ["0000180F-0000-1000-8000-00805F9B34FB"]) == ("battery",)
    assert services_of(None, ["00001234-0000-1000-8000-00805f9b34fb"]) == ()
