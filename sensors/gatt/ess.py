"""Environmental Sensing Service 0x181A: Pressure 0x2A6D and Temperature 0x2A6E."""

from __future__ import annotations

from sensors.gatt.errors import BytesLike, ParseError

ESS_SERVICE_UUID = "0000181a-0000-1000-8000-00805f9b34fb"
PRESSURE_UUID = "00002a6d-0000-1000-8000-00805f9b34fb"
TEMPERATURE_UUID = "00002a6e-0000-1000-8000-00805f9b34fb"


def parse_pressure(data: BytesLike) -> float:
    """Return pressure in hPa from a uint32 LE in units of 0.1 Pa (1 hPa = 1000 units)."""
    raw = bytes(data)
    if len(raw) != 4:
        raise ParseError(f"pressure must be 4 bytes (uint32, 0.1 Pa), got {len(raw)}")
    return int.from_bytes(raw, "little") / 1000.0


def encode_pressure(hpa: float) -> bytes:
    """Inverse of :func:`parse_pressure` (rounded to 0.1 Pa), for fake peripherals in tests."""
    units = round(hpa * 1000.0)
    if not 0 <= units <= 0xFFFFFFFF:
        raise ValueError(f"pressure {hpa} hPa does not fit a uint32 of 0.1 Pa")
    return units.to_bytes(4, "little")


def parse_temperature(data: BytesLike) -> float:
    """Return temperature in °C from a sint16 LE in units of 0.01 °C."""
    raw = bytes(data)
    if len(raw) != 2:
        raise ParseError(f"temperature must be 2 bytes (sint16, 0.01 degC), got {len(raw)}")
    return int.from_bytes(raw, "little", signed=True) / 100.0
