"""Battery Service 0x180F / Battery Level 0x2A19 (uint8 percent, 0..100)."""

from __future__ import annotations

from sensors.gatt.errors import BytesLike, ParseError

BATTERY_SERVICE_UUID = "0000180f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL_UUID = "00002a19-0000-1000-8000-00805f9b34fb"


def parse_battery_level(data: BytesLike) -> int:
    """Return the battery level in percent.

    Exactly one byte is required and values 101..255 are reserved by the SIG, so both are rejected
    (as Nordic's reference parser does) instead of reporting a nonsensical percentage.
    """
    raw = bytes(data)
    if len(raw) != 1:
        raise ParseError(f"battery level must be 1 byte, got {len(raw)}")
    level = raw[0]
    if level > 100:
        raise ParseError(f"battery level {level} is outside 0..100 (reserved value)")
    return level


def encode_battery_level(percent: int) -> bytes:
    """Inverse of :func:`parse_battery_level`, for fake peripherals in tests."""
    if not 0 <= percent <= 100:
        raise ValueError(f"battery percent must be 0..100, got {percent}")
    return bytes([percent])
