"""Heart Rate Service 0x180D: Heart Rate Measurement 0x2A37 and Body Sensor Location 0x2A38.

Measurement layout (little-endian): ``flags(1) | HR u8 or u16 | [energy expended u16 kJ] |
[RR u16 (1/1024 s)]*``. Flags: bit0 HR is u16; bits 1-2 sensor contact (bit2 = feature supported,
bit1 = contact detected, meaningful only with bit2); bit3 energy expended present; bit4 RR present;
bits 5-7 reserved and ignored. RR values are oldest first.

Polar straps send flags ``0x10`` (no contact feature, RR present): ``sensor_contact`` is then
``None``, not ``False`` -- "unknown" must not be read as "strap off".
"""

from __future__ import annotations

from dataclasses import dataclass

from sensors.gatt.enums import OpenIntEnum
from sensors.gatt.errors import BytesLike, ParseError

HEART_RATE_SERVICE_UUID = "0000180d-0000-1000-8000-00805f9b34fb"
HEART_RATE_MEASUREMENT_UUID = "00002a37-0000-1000-8000-00805f9b34fb"
BODY_SENSOR_LOCATION_UUID = "00002a38-0000-1000-8000-00805f9b34fb"
HEART_RATE_CONTROL_POINT_UUID = "00002a39-0000-1000-8000-00805f9b34fb"

_HR_UINT16 = 0x01
_CONTACT_DETECTED = 0x02
_CONTACT_SUPPORTED = 0x04
_EE_PRESENT = 0x08
_RR_PRESENT = 0x10

#: Milliseconds per RR unit (RR is transmitted in 1/1024 s).
RR_UNIT_MS = 1000.0 / 1024.0


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """One decoded Heart Rate Measurement notification.

    ``rr_ms`` is the exact conversion ``raw * 1000 / 1024`` (no rounding: Polar's SDK rounds to
    whole ms, which throws away up to 0.5 ms of HRV resolution); ``rr_1024`` keeps the raw values.
    """

    bpm: int
    sensor_contact: bool | None
    energy_expended_kj: int | None
    rr_ms: tuple[float, ...]
    rr_1024: tuple[int, ...]

    @property
    def contact_supported(self) -> bool:
        """Whether the sensor reports skin contact at all in this connection."""
        return self.sensor_contact is not None


def parse_heart_rate_measurement(data: BytesLike) -> HeartRateMeasurement:
    """Decode a Heart Rate Measurement value.

    Raises :class:`ParseError` when the value is shorter than its flags announce (as Nordic's
    reference parser does: with the RR flag set at least one RR value must be present) or when the
    RR field has an odd number of bytes. Bytes after the last announced field are ignored only when
    no RR list is announced (RR consumes the rest of the value).
    """
    raw = bytes(data)
    if len(raw) < 2:
        raise ParseError(f"heart rate measurement needs at least 2 bytes, got {len(raw)}")
    flags = raw[0]
    hr_size = 2 if flags & _HR_UINT16 else 1
    need = 1 + hr_size + (2 if flags & _EE_PRESENT else 0) + (2 if flags & _RR_PRESENT else 0)
    if len(raw) < need:
        raise ParseError(
            f"heart rate measurement flags 0x{flags:02x} need at least {need} bytes, got {len(raw)}"
        )
    bpm = int.from_bytes(raw[1 : 1 + hr_size], "little")
    offset = 1 + hr_size
    contact: bool | None = None
    if flags & _CONTACT_SUPPORTED:
        contact = bool(flags & _CONTACT_DETECTED)
    energy: int | None = None
    if flags & _EE_PRESENT:
        energy = int.from_bytes(raw[offset : offset + 2], "little")
        offset += 2
    rr_raw: tuple[int, ...] = ()
    if flags & _RR_PRESENT:
        rest = raw[offset:]
        if len(rest) % 2:
            raise ParseError(f"RR interval field has an odd length ({len(rest)} bytes)")
        rr_raw = tuple(int.from_bytes(rest[i : i + 2], "little") for i in range(0, len(rest), 2))
    return HeartRateMeasurement(
        bpm=bpm,
        sensor_contact=contact,
        energy_expended_kj=energy,
        rr_ms=tuple(v * RR_UNIT_MS for v in rr_raw),
        rr_1024=rr_raw,
    )


def encode_heart_rate_measurement(
    bpm: int,
    *,
    sensor_contact: bool | None = None,
    energy_expended_kj: int | None = None,
    rr_1024: tuple[int, ...] | list[int] = (),
    uint16: bool | None = None,
) -> bytes:
    """Build a Heart Rate Measurement value (for fake peripherals and round-trip tests).

    ``uint16=None`` picks the smallest HR format that fits ``bpm``.
    """
    wide = bpm > 0xFF if uint16 is None else uint16
    if not 0 <= bpm <= (0xFFFF if wide else 0xFF):
        raise ValueError(f"bpm {bpm} does not fit the chosen HR format")
    flags = _HR_UINT16 if wide else 0
    if sensor_contact is not None:
        flags |= _CONTACT_SUPPORTED | (_CONTACT_DETECTED if sensor_contact else 0)
    if energy_expended_kj is not None:
        flags |= _EE_PRESENT
    if rr_1024:
        flags |= _RR_PRESENT
    out = bytearray([flags])
    out += bpm.to_bytes(2 if wide else 1, "little")
    if energy_expended_kj is not None:
        out += energy_expended_kj.to_bytes(2, "little")
    for rr in rr_1024:
        out += int(rr).to_bytes(2, "little")
    return bytes(out)


class BodySensorLocation(OpenIntEnum):
    """Body Sensor Location 0x2A38. Reserved values (7..255) are kept as ``UNKNOWN_<n>`` members."""

    OTHER = 0
    CHEST = 1
    WRIST = 2
    FINGER = 3
    HAND = 4
    EAR_LOBE = 5
    FOOT = 6



def parse_body_sensor_location(data: BytesLike) -> BodySensorLocation:
    """Decode Body Sensor Location (one byte; reserved values are kept, not rejected)."""
    raw = bytes(data)
    if len(raw) < 1:
        raise ParseError("body sensor location is empty")
    return BodySensorLocation(raw[0])
