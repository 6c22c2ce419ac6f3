"""Running Speed and Cadence 0x1814 / RSC Measurement 0x2A53 (foot pods).

Layout (all little-endian): ``flags(1) | speed u16 (1/256 m/s) | cadence u8 (steps/min) |
[stride u16 (1/100 m)] | [total distance u32 (1/10 m)]``. Flags: bit0 stride present, bit1 total
distance present, bit2 running (else walking); bits 3-7 reserved and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from sensors.gatt.errors import BytesLike, ParseError

RSC_SERVICE_UUID = "00001814-0000-1000-8000-00805f9b34fb"
RSC_MEASUREMENT_UUID = "00002a53-0000-1000-8000-00805f9b34fb"
RSC_FEATURE_UUID = "00002a54-0000-1000-8000-00805f9b34fb"

_STRIDE_PRESENT = 0x01
_DISTANCE_PRESENT = 0x02
_RUNNING = 0x04


@dataclass(frozen=True, slots=True)
class RscMeasurement:
    """One decoded RSC Measurement notification, in SI units."""

    speed_mps: float
    cadence_spm: int
    stride_m: float | None
    total_distance_m: float | None
    running: bool
    speed_raw: int = 0


def parse_rsc_measurement(data: BytesLike) -> RscMeasurement:
    """Decode an RSC Measurement value; :class:`ParseError` if shorter than its flags announce.

    Trailing bytes beyond the fields announced by the flags are ignored (forward compatibility).
    """
    raw = bytes(data)
    if len(raw) < 4:
        raise ParseError(f"RSC measurement needs at least 4 bytes, got {len(raw)}")
    flags = raw[0]
    need = 4 + (2 if flags & _STRIDE_PRESENT else 0) + (4 if flags & _DISTANCE_PRESENT else 0)
    if len(raw) < need:
        raise ParseError(f"RSC measurement flags 0x{flags:02x} need {need} bytes, got {len(raw)}")
    speed_raw = int.from_bytes(raw[1:3], "little")
    cadence = raw[3]
    offset = 4
    stride: float | None = None
    if flags & _STRIDE_PRESENT:
        stride = int.from_bytes(raw[offset : offset + 2], "little") / 100.0
        offset += 2
    distance: float | None = None
    if flags & _DISTANCE_PRESENT:
        distance = int.from_bytes(raw[offset : offset + 4], "little") / 10.0
    return RscMeasurement(
        speed_mps=speed_raw / 256.0,
        cadence_spm=cadence,
        stride_m=stride,
        total_distance_m=distance,
        running=bool(flags & _RUNNING),
        speed_raw=speed_raw,
    )


def encode_rsc_measurement(
    speed_raw: int,
    cadence_spm: int,
    *,
    stride_cm: int | None = None,
    total_distance_dm: int | None = None,
    running: bool = False,
) -> bytes:
    """Build an RSC Measurement value from raw field values (for fake peripherals and tests)."""
    flags = (
        (_STRIDE_PRESENT if stride_cm is not None else 0)
        | (_DISTANCE_PRESENT if total_distance_dm is not None else 0)
        | (_RUNNING if running else 0)
    )
    out = bytearray([flags])
    out += speed_raw.to_bytes(2, "little")
    out.append(cadence_spm)
    if stride_cm is not None:
        out += stride_cm.to_bytes(2, "little")
    if total_distance_dm is not None:
        out += total_distance_dm.to_bytes(4, "little")
    return bytes(out)
