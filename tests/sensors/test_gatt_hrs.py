"""Heart Rate Measurement 0x2A37: every vector of ../shared/ble/REFERENCE.md §1.1 (Nordic and Polar
SDK tests, real H7/H10 captures) plus encoder round trips."""

from __future__ import annotations

import pytest

from sensors.gatt import (
    HEART_RATE_MEASUREMENT_UUID,
    HEART_RATE_SERVICE_UUID,
    ParseError,
    parse_heart_rate_measurement,
)
from sensors.gatt.hrs import (
    BODY_SENSOR_LOCATION_UUID,
    RR_UNIT_MS,
    HeartRateMeasurement,
    encode_heart_rate_measurement,
)

Row = tuple[str, int, bool | None, int | None, tuple[int, ...]]

VECTORS: list[Row] = [
    # hex, bpm, contact, energy kJ, RR raw
    ("00 55", 85, None, None, ()),  # Nordic _simple
    ("04 FF", 255, False, None, ()),  # Nordic _noContact
    ("1E 55 32 00 21 00", 85, True, 50, (33,)),  # Nordic _uint8
    ("1F 01 01 32 01 01 00 02 01 FF FF", 257, True, 306, (1, 258, 65535)),  # Nordic _uint16
    ("11 00 00 FF FF 7F 80", 0, None, None, (65535, 32895)),  # Polar "rr interval"
    ("09 00 00 FF FF", 0, None, 65535, ()),  # Polar "energy expended"
    ("08 00 7F 80", 0, None, 32895, ()),
    ("06 00", 0, True, None, ()),  # Polar "sensor contact supported"
    ("04 00", 0, False, None, ()),
    ("02 00", 0, None, None, ()),  # bit 1 alone means nothing
    ("00 00", 0, None, None, ()),
    ("01 80 80", 32896, None, None, ()),  # Polar "hr format uint16"
    ("01 7F 7F", 32639, None, None, ()),
    ("10 48 2C 03", 72, None, None, (812,)),  # real H10 capture
    ("10 49 5E 03 96 03", 73, None, None, (862, 918)),
    ("10 3B 53 04", 59, None, None, (1107,)),
    ("06 3C", 60, True, None, ()),  # Polar H7 captures
    ("16 3C 11 04", 60, True, None, (1041,)),
    ("16 3C F5 03", 60, True, None, (1013,)),
]


def test_uuids_are_full_lowercase_128_bit() -> None:
    assert HEART_RATE_SERVICE_UUID == "0000180d-0000-1000-8000-00805f9b34fb"
    assert HEART_RATE_MEASUREMENT_UUID == "00002a37-0000-1000-8000-00805f9b34fb"
    assert BODY_SENSOR_LOCATION_UUID == "00002a38-0000-1000-8000-00805f9b34fb"


@pytest.mark.parametrize(("hexstr", "bpm", "contact", "energy", "rr"), VECTORS)
def test_reference_vectors(
    hexstr: str, bpm: int, contact: bool | None, energy: int | None, rr: tuple[int, ...]
) -> None:
    m = parse_heart_rate_measurement(bytes.fromhex(hexstr))
    assert m == HeartRateMeasurement(
        bpm=bpm,
        sensor_contact=contact,
        energy_expended_kj=energy,
        rr_ms=tuple(v * 1000 / 1024 for v in rr),
        rr_1024=rr,
    )
    assert m.contact_supported is (contact is not None)


def test_rr_ms_matches_reference_table_and_sdk_rounding() -> None:
    m = parse_heart_rate_measurement(bytes.fromhex("1F 01 01 32 01 01 00 02 01 FF FF"))
    assert [round(v, 2) for v in m.rr_ms] == [0.98, 251.95, 63999.02]
    polar = parse_heart_rate_measurement(bytes.fromhex("11 00 00 FF FF 7F 80"))
    assert [round(v) for v in polar.rr_ms] == [63999, 32124]  # BleHrClientTest expectation
    h10 = parse_heart_rate_measurement(bytes.fromhex("10 49 5E 03 96 03"))
    assert [round(v, 2) for v in h10.rr_ms] == [841.80, 896.48]
    assert RR_UNIT_MS == 1000 / 1024


@pytest.mark.parametrize(
    "hexstr",
    [
        "",
        "00",
        "17 01 01",  # Nordic onInvalidDataReceived: uint16 + RR flagged but too short
        "01 55",  # uint16 HR with one byte
        "08 55 01",  # energy expended truncated
        "10 55",  # RR flagged, none present
        "10 55 2C 03 01",  # odd RR length
    ],
)
def test_malformed_values_raise_parse_error(hexstr: str) -> None:
    with pytest.raises(ParseError):
        parse_heart_rate_measurement(bytes.fromhex(hexstr))


def test_reserved_flag_bits_and_trailing_bytes_are_ignored() -> None:
    m = parse_heart_rate_measurement(bytes.fromhex("E0 48 AA"))
    assert m.bpm == 72 and m.rr_1024 == () and m.sensor_contact is None


def test_accepts_bytearray_and_memoryview() -> None:
    raw = bytes.fromhex("10 48 2C 03")
    assert parse_heart_rate_measurement(bytearray(raw)).rr_1024 == (812,)
    assert parse_heart_rate_measurement(memoryview(raw)).rr_1024 == (812,)


@pytest.mark.parametrize(("hexstr", "bpm", "contact", "energy", "rr"), VECTORS)
def test_encoder_reproduces_vectors_with_canonical_flags(
    hexstr: str, bpm: int, contact: bool | None, energy: int | None, rr: tuple[int, ...]
) -> None:
    raw = bytes.fromhex(hexstr)
    wide = bool(raw[0] & 0x01)
    encoded = encode_heart_rate_measurement(
        bpm, sensor_contact=contact, energy_expended_kj=energy, rr_1024=rr, uint16=wide
    )
    assert encoded == bytes([raw[0] & ~0x02 if contact is None else raw[0]]) + raw[1:]


def test_encoder_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_heart_rate_measurement(300, uint16=False)
    with pytest.raises(ValueError):
        encode_heart_rate_measurement(-1)
