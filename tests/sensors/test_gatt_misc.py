"""Battery Level, RSC Measurement, ESS pressure/temperature and Body Sensor Location
(../shared/ble/REFERENCE.md §1.2, §1.4, §3)."""

from __future__ import annotations

import pytest

from sensors.gatt import (
    BATTERY_LEVEL_UUID,
    BATTERY_SERVICE_UUID,
    ESS_SERVICE_UUID,
    PRESSURE_UUID,
    RSC_MEASUREMENT_UUID,
    RSC_SERVICE_UUID,
    BodySensorLocation,
    ParseError,
    RscMeasurement,
    parse_battery_level,
    parse_body_sensor_location,
    parse_pressure,
    parse_rsc_measurement,
)
from sensors.gatt.battery import encode_battery_level
from sensors.gatt.ess import encode_pressure, parse_temperature
from sensors.gatt.rsc import encode_rsc_measurement


def test_uuids() -> None:
    assert BATTERY_SERVICE_UUID == "0000180f-0000-1000-8000-00805f9b34fb"
    assert BATTERY_LEVEL_UUID == "00002a19-0000-1000-8000-00805f9b34fb"
    assert RSC_SERVICE_UUID == "00001814-0000-1000-8000-00805f9b34fb"
    assert RSC_MEASUREMENT_UUID == "00002a53-0000-1000-8000-00805f9b34fb"
    assert ESS_SERVICE_UUID == "0000181a-0000-1000-8000-00805f9b34fb"
    assert PRESSURE_UUID == "00002a6d-0000-1000-8000-00805f9b34fb"


# ---------------------------------------------------------------- battery (Nordic tests)


@pytest.mark.parametrize(("hexstr", "level"), [("64", 100), ("0F", 15), ("00", 0)])
def test_battery_level(hexstr: str, level: int) -> None:
    assert parse_battery_level(bytes.fromhex(hexstr)) == level
    assert encode_battery_level(level) == bytes.fromhex(hexstr)


@pytest.mark.parametrize("hexstr", ["", "64 00", "65", "FF"])
def test_battery_level_invalid(hexstr: str) -> None:
    with pytest.raises(ParseError):
        parse_battery_level(bytes.fromhex(hexstr))


# ---------------------------------------------------------------- body sensor location


def test_body_sensor_location() -> None:
    assert parse_body_sensor_location(b"\x05") is BodySensorLocation.EAR_LOBE  # Nordic test
    assert parse_body_sensor_location(b"\x01") is BodySensorLocation.CHEST
    unknown = parse_body_sensor_location(b"\x09")
    assert unknown == 9 and unknown.name == "UNKNOWN_9"
    with pytest.raises(ParseError):
        parse_body_sensor_location(b"")


# ---------------------------------------------------------------- RSC


def test_rsc_nordic_vector() -> None:
    m = parse_rsc_measurement(bytes.fromhex("07 00 03 12 56 00 01 00 00 F0"))
    assert m == RscMeasurement(
        speed_mps=3.0,
        cadence_spm=18,
        stride_m=0.86,
        total_distance_m=0xF0000001 / 10,
        running=True,
        speed_raw=768,
    )


def test_rsc_polar_vectors() -> None:
    m = parse_rsc_measurement(bytes.fromhex("07 34 12 56 89 07 04 03 02 01"))
    assert m.running and m.speed_raw == 4660
    assert m.speed_mps == pytest.approx(18.203125)
    assert m.cadence_spm == 86
    assert m.stride_m == pytest.approx(19.29)
    assert m.total_distance_m == pytest.approx(1_690_906.0)
    walk = parse_rsc_measurement(bytes.fromhex("00 0A 00 14"))
    assert not walk.running and walk.speed_mps == 10 / 256 and walk.cadence_spm == 20
    assert walk.stride_m is None and walk.total_distance_m is None


@pytest.mark.parametrize(
    "hexstr",
    ["", "07 00 03", "07 00 03 12 56 00 01 00 00", "01 00 03 12 56", "02 00 03 12 01 02 03"],
)
def test_rsc_truncated(hexstr: str) -> None:
    with pytest.raises(ParseError):
        parse_rsc_measurement(bytes.fromhex(hexstr))


def test_rsc_encoder_round_trip() -> None:
    raw = encode_rsc_measurement(768, 18, stride_cm=86, total_distance_dm=0xF0000001, running=True)
    assert raw == bytes.fromhex("07 00 03 12 56 00 01 00 00 F0")
    assert encode_rsc_measurement(10, 20) == bytes.fromhex("00 0A 00 14")


# ---------------------------------------------------------------- ESS


def test_pressure_units() -> None:
    # 101325 Pa = 1013250 units of 0.1 Pa = 1013.25 hPa
    raw = (1_013_250).to_bytes(4, "little")
    assert parse_pressure(raw) == pytest.approx(1013.25)
    assert encode_pressure(1013.25) == raw
    with pytest.raises(ParseError):
        parse_pressure(raw[:3])
    with pytest.raises(ParseError):
        parse_pressure(raw + b"\x00")


def test_temperature() -> None:
    assert parse_temperature((-1234).to_bytes(2, "little", signed=True)) == pytest.approx(-12.34)
    with pytest.raises(ParseError):
        parse_temperature(b"\x01")
