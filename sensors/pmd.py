"""Polar Measurement Data (PMD): control point messages and data-frame decoding, sans I/O.

Theory of operation
-------------------
The PMD service has a control point (CP, write + indicate) and a data characteristic (notify).
The client writes a request built here (:func:`build_get_settings`, :func:`build_start`,
:func:`build_stop`), the device answers with an indication ``F0 <op> <type> <status> <more>
<params>`` (:func:`parse_control_response`); when ``more`` is set, further indications follow whose
bytes from index 5 extend the parameters (:meth:`ControlPointResponse.continued_with`). The START
reply may carry a ``FACTOR`` setting (float32) that *must* be applied when decoding samples.

Data notifications are frames ``type(1) | timestamp u64 ns (device clock, last sample) |
frame type(1) | content``; bit 7 of the frame type means delta-compressed content.
:func:`decode_data_frame` turns one frame into a ``(n, channels)`` numpy array in Polar's units and
per-sample device timestamps, reproducing Polar's Android SDK (``BlePMDClient``, ``AccData``,
``GyrData``, ``MagData``, ``PmdTimeStampUtils``) bit for bit, including its float32 arithmetic and
its truncation of compressed ACC values to whole mG. :class:`PmdDecoder` adds the SDK's per-stream
bookkeeping (previous frame timestamp per measurement and frame type, factor, sample rate).

:class:`DeviceClock` maps the device clock (ns since 2000-01-01, or whatever the strap was set to)
to host Unix seconds.

Deliberate differences from the SDK (each is a case where the SDK throws or produces garbage):

* a delta block of width 1 is sign-extended (``1`` means ``-1``); the SDK's mask turns it into
  ``Int.MAX_VALUE``;
* delta widths above 32 bits are rejected with :class:`ParseError` (the SDK's 32-bit shifts wrap);
* a truncated reference sample is rejected (the SDK zero-pads it silently);
* an invalid previous timestamp (not strictly before this frame's) falls back to the sample rate
  when one is known, instead of throwing and losing the frame;
* a raw frame with no content yields zero samples instead of an exception.
"""

from __future__ import annotations

import enum
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, TypeAlias

import numpy as np
from numpy.typing import NDArray

from sensors.gatt.enums import OpenIntEnum
from sensors.gatt.errors import BytesLike, ParseError, UnsupportedFrameError

__all__ = [
    "DPS_TO_RADS",
    "MG_TO_MS2",
    "PMD_CONTROL_UUID",
    "PMD_DATA_UUID",
    "PMD_SERVICE_UUID",
    "POLAR_EPOCH_UNIX_NS",
    "ControlPointOpcode",
    "ControlPointResponse",
    "DeviceClock",
    "MeasurementStopped",
    "MeasurementType",
    "ParseError",
    "PmdDecoder",
    "PmdFrame",
    "ResponseStatus",
    "SettingType",
    "StreamConfig",
    "UnsupportedFrameError",
    "build_get_measurement_status",
    "build_get_settings",
    "build_start",
    "build_stop",
    "decode_data_frame",
    "device_ns_to_unix_s",
    "encode_delta_content",
    "parse_control_point_notification",
    "parse_control_response",
    "parse_features",
    "parse_settings",
    "sample_timestamps",
]

PMD_SERVICE_UUID: Final = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL_UUID: Final = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA_UUID: Final = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"

#: milli-g -> m/s² (standard gravity / 1000).
MG_TO_MS2: Final = 9.80665e-3
#: deg/s -> rad/s.
DPS_TO_RADS: Final = math.pi / 180.0
#: Polar's epoch (2000-01-01T00:00:00Z) in Unix ns.
POLAR_EPOCH_UNIX_NS: Final = 946_684_800_000_000_000

_RESPONSE_CODE: Final = 0xF0
_FEATURE_READ_CODE: Final = 0x0F
_HEADER_LEN: Final = 10
_COMPRESSED: Final = 0x80
_OFFLINE_BIT: Final = 0x80
_INT64_MAX: Final = (1 << 63) - 1

IntArray: TypeAlias = NDArray[np.int64]
FloatArray: TypeAlias = NDArray[np.float64]
SettingValue: TypeAlias = float | int
Settings: TypeAlias = dict["SettingType", tuple[SettingValue, ...]]


class MeasurementType(enum.IntEnum):
    """PMD measurement types (SDK ``PmdMeasurementType``); the wire byte is masked with 0x3F."""

    ECG = 0
    PPG = 1
    ACC = 2
    PPI = 3
    GYRO = 5
    MAGNETOMETER = 6
    SKIN_TEMP = 7
    SDK_MODE = 9
    LOCATION = 10
    PRESSURE = 11
    TEMPERATURE = 12
    OFFLINE_RECORDING = 13
    OFFLINE_HR = 14
    OFFLINE_TEMP = 15
    UNKNOWN_TYPE = 0x3F


class SettingType(enum.IntEnum):
    """Setting TLV types (SDK ``PmdSetting.PmdSettingType`` plus SECURITY from the PDF)."""

    SAMPLE_RATE = 0
    RESOLUTION = 1
    RANGE = 2
    RANGE_MILLIUNIT = 3
    CHANNELS = 4
    FACTOR = 5
    SECURITY = 6


#: Bytes per value of each setting type.
SETTING_FIELD_SIZE: Final[Mapping[SettingType, int]] = {
    SettingType.SAMPLE_RATE: 2,
    SettingType.RESOLUTION: 2,
    SettingType.RANGE: 2,
    SettingType.RANGE_MILLIUNIT: 4,
    SettingType.CHANNELS: 1,
    SettingType.FACTOR: 4,
    SettingType.SECURITY: 16,
}


class ControlPointOpcode(enum.IntEnum):
    """Client -> device CP commands (SDK ``PmdControlPointCommandClientToService``)."""

    NULL_ITEM = 0
    GET_MEASUREMENT_SETTINGS = 1
    REQUEST_MEASUREMENT_START = 2
    STOP_MEASUREMENT = 3
    GET_SDK_MODE_MEASUREMENT_SETTINGS = 4
    GET_MEASUREMENT_STATUS = 5
    GET_SDK_MODE_STATUS = 6
    GET_OFFLINE_RECORDING_TRIGGER_STATUS = 7
    SET_OFFLINE_RECORDING_TRIGGER_MODE = 8
    SET_OFFLINE_RECORDING_TRIGGER_SETTINGS = 9


_STATUS_MESSAGES: Final[Mapping[int, str]] = {
    0: "success",
    1: "invalid op code",
    2: "invalid measurement type (not supported by this device)",
    3: "not supported",
    4: "invalid length",
    5: "invalid parameter",
    6: "already in state (stream already started/stopped)",
    7: "invalid resolution",
    8: "invalid sample rate",
    9: "invalid range",
    10: "invalid MTU (exchange an ATT MTU of at least 232 first)",
    11: "invalid number of channels",
    12: "invalid state",
    13: "device is in its charger",
    14: "disk full",
}


class ResponseStatus(OpenIntEnum):
    """CP response status (SDK ``PmdControlPointResponseCode``). Unknown codes become
    ``UNKNOWN_<n>`` members instead of crashing, so the caller still sees the number."""

    SUCCESS = 0
    ERROR_INVALID_OP_CODE = 1
    ERROR_INVALID_MEASUREMENT_TYPE = 2
    ERROR_NOT_SUPPORTED = 3
    ERROR_INVALID_LENGTH = 4
    ERROR_INVALID_PARAMETER = 5
    ERROR_ALREADY_IN_STATE = 6
    ERROR_INVALID_RESOLUTION = 7
    ERROR_INVALID_SAMPLE_RATE = 8
    ERROR_INVALID_RANGE = 9
    ERROR_INVALID_MTU = 10
    ERROR_INVALID_NUMBER_OF_CHANNELS = 11
    ERROR_INVALID_STATE = 12
    ERROR_DEVICE_IN_CHARGER = 13
    ERROR_DISK_FULL = 14


    @property
    def message(self) -> str:
        """Human-readable explanation, suitable for an operator log."""
        return _STATUS_MESSAGES.get(int(self), f"unknown PMD status code {int(self)}")

    @property
    def ok(self) -> bool:
        return self is ResponseStatus.SUCCESS


def _enum_or_int(kind: type[enum.IntEnum], value: int) -> int:
    try:
        return kind(value)
    except ValueError:
        return value


# --------------------------------------------------------------------------------------------
# Settings TLV
# --------------------------------------------------------------------------------------------


def parse_settings(data: BytesLike) -> Settings:
    """Parse a settings TLV: repeated ``type u8 | count u8 | count × value LE``.

    Values are signed little-endian integers as in the SDK (``TypeUtils.convertArrayToSignedInt``),
    so a RANGE_MILLIUNIT of ``FF FF FF FF`` reads -1; FACTOR is a float32; SECURITY an opaque
    unsigned 128-bit integer. Values keep wire order. A blob of length <= 1 means "no settings"
    (the H10's START reply carries a single reserved byte). A repeated type replaces the earlier
    entry, as in the SDK.
    """
    raw = bytes(data)
    out: Settings = {}
    if len(raw) <= 1:
        return out
    offset = 0
    while offset < len(raw):
        if offset + 2 > len(raw):
            raise ParseError(f"settings TLV truncated in the header at offset {offset}")
        code, count = raw[offset], raw[offset + 1]
        offset += 2
        try:
            kind = SettingType(code)
        except ValueError:
            raise ParseError(f"unknown setting type {code} at offset {offset - 2}") from None
        size = SETTING_FIELD_SIZE[kind]
        end = offset + size * count
        if end > len(raw):
            raise ParseError(
                f"setting {kind.name} announces {count} values of {size} bytes "
                f"but only {len(raw) - offset} bytes remain"
            )
        values: list[SettingValue] = []
        for i in range(offset, end, size):
            chunk = raw[i : i + size]
            if kind is SettingType.FACTOR:
                values.append(struct.unpack("<f", chunk)[0])
            elif kind is SettingType.SECURITY:
                values.append(int.from_bytes(chunk, "little"))
            else:
                values.append(int.from_bytes(chunk, "little", signed=True))
        out[kind] = tuple(values)
        offset = end
    return out


def _serialize_settings(settings: Mapping[SettingType, int]) -> bytes:
    out = bytearray()
    for key, value in settings.items():
        kind = SettingType(key)
        if kind in (SettingType.FACTOR, SettingType.SECURITY):
            continue  # the SDK never sends FACTOR; SECURITY needs a secret, unsupported here
        size = SETTING_FIELD_SIZE[kind]
        if not 0 <= int(value) < (1 << (8 * size)):
            raise ValueError(f"setting {kind.name}={value} does not fit {size} unsigned bytes")
        out += bytes([kind, 1]) + int(value).to_bytes(size, "little")
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Control point requests and responses
# --------------------------------------------------------------------------------------------


def _type_byte(mtype: int, offline: bool) -> int:
    if not 0 <= int(mtype) <= 0x3F:
        raise ValueError(f"measurement type {mtype} is outside 0..63")
    return int(mtype) | (_OFFLINE_BIT if offline else 0)


def build_get_settings(mtype: int, *, offline: bool = False) -> bytes:
    """``01 <type>``: ask which sample rates/resolutions/ranges/channels the device offers."""
    return bytes([ControlPointOpcode.GET_MEASUREMENT_SETTINGS, _type_byte(mtype, offline)])


def build_get_full_settings(mtype: int, *, offline: bool = False) -> bytes:
    """``04 <type>``: the SDK-mode (full) settings query."""
    return bytes([ControlPointOpcode.GET_SDK_MODE_MEASUREMENT_SETTINGS, _type_byte(mtype, offline)])


def build_start(mtype: int, settings: Mapping[SettingType, int], *, offline: bool = False) -> bytes:
    """``02 <type> (<setting> 01 <value LE>)*``: start a stream with one value per setting.

    Settings are written in the mapping's order (the device accepts any order); FACTOR is skipped
    because it only ever travels device -> client.
    """
    return bytes(
        [ControlPointOpcode.REQUEST_MEASUREMENT_START, _type_byte(mtype, offline)]
    ) + _serialize_settings(settings)


def build_stop(mtype: int) -> bytes:
    """``03 <type>``: stop a stream."""
    return bytes([ControlPointOpcode.STOP_MEASUREMENT, _type_byte(mtype, False)])


def build_get_measurement_status() -> bytes:
    """``05``: ask which measurements are running."""
    return bytes([ControlPointOpcode.GET_MEASUREMENT_STATUS])


@dataclass(frozen=True, slots=True)
class ControlPointResponse:
    """A CP response ``F0 <op> <type> <status> <more> <params...>`` (SDK semantics: on an error
    status ``more`` is False and ``parameters`` empty)."""

    opcode: int
    measurement_type: int
    status: ResponseStatus
    more: bool
    parameters: bytes

    @property
    def ok(self) -> bool:
        return self.status is ResponseStatus.SUCCESS

    @property
    def settings(self) -> Settings:
        """The parameters parsed as a settings TLV (empty when there are none)."""
        return parse_settings(self.parameters)

    @property
    def factor(self) -> float | None:
        """FACTOR from a START response, if the device sent one."""
        values = self.settings.get(SettingType.FACTOR)
        return float(values[0]) if values else None

    def continued_with(self, packet: BytesLike) -> ControlPointResponse:
        """Merge a continuation indication (sent while ``more`` is set): its bytes from index 5
        are appended and its own ``more`` flag decides whether yet another one follows."""
        nxt = parse_control_response(packet)
        if nxt.opcode != self.opcode:
            raise ParseError(f"continuation is for opcode {nxt.opcode}, expected {self.opcode}")
        tail = bytes(packet)[5:]
        return replace(self, more=nxt.more, parameters=self.parameters + tail)


def parse_control_response(data: BytesLike) -> ControlPointResponse:
    """Parse a CP response indication; anything not starting with ``F0`` is a :class:`ParseError`
    (device-initiated messages go through :func:`parse_control_point_notification`)."""
    raw = bytes(data)
    if len(raw) < 4:
        raise ParseError(f"PMD control point response needs at least 4 bytes, got {len(raw)}")
    if raw[0] != _RESPONSE_CODE:
        raise ParseError(f"not a PMD control point response (first byte 0x{raw[0]:02x})")
    status = ResponseStatus(raw[3])
    if status is ResponseStatus.SUCCESS:
        more = len(raw) > 4 and raw[4] != 0
        params = raw[5:]
    else:
        more, params = False, b""
    return ControlPointResponse(
        opcode=_enum_or_int(ControlPointOpcode, raw[1]),
        measurement_type=raw[2],
        status=status,
        more=more,
        parameters=params,
    )


@dataclass(frozen=True, slots=True)
class MeasurementStopped:
    """Device-initiated CP indication ``01 <type>*``: the device stopped these online streams."""

    measurement_types: tuple[int, ...]


def parse_control_point_notification(data: BytesLike) -> ControlPointResponse | MeasurementStopped:
    """Dispatch any CP indication: a response (``F0``) or an unsolicited "measurement stopped"."""
    raw = bytes(data)
    if not raw:
        raise ParseError("empty PMD control point indication")
    if raw[0] == _RESPONSE_CODE:
        return parse_control_response(raw)
    if raw[0] == 0x01:
        return MeasurementStopped(tuple(_enum_or_int(MeasurementType, b & 0x3F) for b in raw[1:]))
    raise ParseError(f"unknown PMD control point indication 0x{raw[0]:02x}")


def parse_features(data: BytesLike) -> frozenset[MeasurementType]:
    """Decode the CP feature read ``0F <mask1> [<mask2>]`` into the supported measurement types."""
    raw = bytes(data)
    if len(raw) < 2 or raw[0] != _FEATURE_READ_CODE:
        raise ParseError(f"not a PMD feature read: {raw[:4].hex(' ')}")
    mask1 = raw[1]
    mask2 = raw[2] if len(raw) > 2 else 0
    bits1 = {
        0: MeasurementType.ECG,
        1: MeasurementType.PPG,
        2: MeasurementType.ACC,
        3: MeasurementType.PPI,
        5: MeasurementType.GYRO,
        6: MeasurementType.MAGNETOMETER,
        7: MeasurementType.SKIN_TEMP,
    }
    bits2 = {
        1: MeasurementType.SDK_MODE,
        2: MeasurementType.LOCATION,
        3: MeasurementType.PRESSURE,
        4: MeasurementType.TEMPERATURE,
        5: MeasurementType.OFFLINE_RECORDING,
        6: MeasurementType.OFFLINE_HR,
    }
    found = {t for b, t in bits1.items() if mask1 >> b & 1}
    found |= {t for b, t in bits2.items() if mask2 >> b & 1}
    return frozenset(found)


# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------


def sample_timestamps(
    frame_ts_ns: int,
    n: int,
    *,
    previous_timestamp_ns: int | None = None,
    sample_rate: float | None = None,
) -> IntArray:
    """Per-sample device timestamps exactly as ``PmdTimeStampUtils.getTimeStamps`` computes them.

    The last sample is ``frame_ts_ns``. With a previous frame timestamp (``0``/``None`` mean "none",
    as in the SDK) the interval is split evenly: ``delta = (ts - prev) / n``, sample ``i`` =
    ``rint(prev + delta + delta*i)``; otherwise ``delta = 1e9 / sample_rate`` and sample ``i`` =
    ``rint(ts - delta*(n-1) + delta*i)``. Double-precision and half-to-even rounding as Kotlin's.
    A previous timestamp not strictly before ``frame_ts_ns`` is ignored (SDK: exception).
    """
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if not 0 <= frame_ts_ns <= _INT64_MAX:
        raise ParseError(f"frame timestamp {frame_ts_ns} does not fit a signed 64-bit ns count")
    prev = previous_timestamp_ns or 0
    if 0 < prev < frame_ts_ns:
        delta = float(frame_ts_ns - prev) / n
        start = float(prev) + delta
    elif sample_rate is not None and sample_rate > 0 and math.isfinite(sample_rate):
        delta = 1e9 / float(sample_rate)
        if float(frame_ts_ns) < delta * n:
            raise ParseError(
                f"frame timestamp {frame_ts_ns} ns is too small for {n} samples at "
                f"{sample_rate} Hz (first sample would be negative)"
            )
        start = float(frame_ts_ns) - delta * (n - 1)
    else:
        raise ParseError(
            "cannot time-stamp PMD samples: pass sample_rate (from the START settings) or a "
            f"previous frame timestamp earlier than {frame_ts_ns}"
        )
    out = np.empty(n, dtype=np.int64)
    if n > 1:
        stamps = np.rint(start + delta * np.arange(n - 1, dtype=np.float64))
        # only reachable within ~1 µs of 2**63 ns (year 2292): keep the int64 cast defined
        stamps = np.minimum(stamps, float(_INT64_MAX - 1023))
        out[:-1] = np.minimum(stamps.astype(np.int64), frame_ts_ns)
    out[-1] = frame_ts_ns
    return out


# --------------------------------------------------------------------------------------------
# Delta-compressed content
# --------------------------------------------------------------------------------------------

_WEIGHTS: Final = np.left_shift(np.int64(1), np.arange(32, dtype=np.int64))


def _wrap_int32(values: IntArray) -> IntArray:
    """Kotlin ``Int`` overflow semantics: reduce modulo 2**32 into the signed range."""
    return ((values + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _reference_sample(content: bytes, channels: int, resolution: int, as_float: bool) -> IntArray:
    nbytes = -(-resolution // 8)
    need = nbytes * channels
    if len(content) < need:
        raise ParseError(
            f"delta frame needs a {need}-byte reference sample, content has {len(content)} bytes"
        )
    b = np.frombuffer(content, dtype=np.uint8, count=need).astype(np.int64)
    ref = b.reshape(channels, nbytes) @ (np.int64(1) << (8 * np.arange(nbytes, dtype=np.int64)))
    if as_float:
        return _wrap_int32(ref)  # raw IEEE-754 bit pattern as a Kotlin Int
    top = 1 << (8 * nbytes - 1)
    ref = np.where(ref & top, ref - (top << 1), ref)  # convertArrayToSignedInt
    mask = -1 << (resolution - 1)
    ref = np.where(ref & mask, ref | mask, ref)  # the SDK's resolution sign fill
    return _wrap_int32(ref)


def _delta_blocks(content: bytes, offset: int, channels: int) -> IntArray:
    """All delta rows ``(m, channels)`` of the blocks after the reference sample."""
    parts: list[IntArray] = []
    buf = np.frombuffer(content, dtype=np.uint8)
    end = len(content)
    while offset < end:
        if offset + 2 > end:
            raise ParseError(f"delta block header truncated at content offset {offset}")
        width, count = content[offset], content[offset + 1]
        offset += 2
        if width > 32:
            raise ParseError(f"delta width {width} bits exceeds 32 at content offset {offset - 2}")
        nbits = width * count * channels
        nbytes = -(-nbits // 8)
        if offset + nbytes > end:
            raise ParseError(
                f"delta block of {count}x{channels}x{width} bits needs {nbytes} bytes, "
                f"{end - offset} remain"
            )
        if nbits:
            bits = np.unpackbits(buf[offset : offset + nbytes], bitorder="little")[:nbits]
            fields = bits.reshape(count * channels, width).astype(np.int64) @ _WEIGHTS[:width]
            sign = np.int64(1) << (width - 1)
            fields = np.where(fields & sign, fields - (sign << 1), fields)
            parts.append(fields.reshape(count, channels))
        offset += nbytes
    if not parts:
        return np.empty((0, channels), dtype=np.int64)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def decode_delta_content(
    content: BytesLike, channels: int, resolution: int, *, as_float: bool = False
) -> IntArray:
    """Decode delta-compressed content into ``(n, channels)`` int64 values with Kotlin ``Int``
    semantics (32-bit wrap-around). With ``as_float`` the values are IEEE-754 bit patterns
    (gyro type 1) to be reinterpreted by the caller.

    Matches ``BlePMDClient.parseDeltaFramesAll``: LSB-first bit stream, channel-major fields,
    a zero-width block yields no samples.
    """
    if channels <= 0 or not 1 <= resolution <= 32:
        raise ParseError(f"invalid delta decoding parameters: {channels} ch, {resolution} bit")
    raw = bytes(content)
    ref = _reference_sample(raw, channels, resolution, as_float)
    deltas = _delta_blocks(raw, channels * -(-resolution // 8), channels)
    out = np.empty((1 + deltas.shape[0], channels), dtype=np.int64)
    out[0] = ref
    np.cumsum(deltas, axis=0, out=out[1:])
    out[1:] += ref
    return _wrap_int32(out)


def encode_delta_content(
    samples: NDArray[np.int64] | list[list[int]], resolution: int, width: int, block: int = 255
) -> bytes:
    """Inverse of :func:`decode_delta_content` for integer samples (fake devices, round-trip tests).

    Every delta must fit ``width`` bits two's complement; blocks hold at most ``block`` samples.
    """
    arr = np.asarray(samples, dtype=np.int64)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError("samples must have shape (n >= 1, channels)")
    nbytes = -(-resolution // 8)
    out = bytearray()
    for v in arr[0]:
        out += (int(v) & ((1 << (8 * nbytes)) - 1)).to_bytes(nbytes, "little")
    deltas = np.diff(arr, axis=0)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    if deltas.size and (deltas.min() < lo or deltas.max() > hi):
        raise ValueError(f"a delta does not fit {width} bits")
    for start in range(0, deltas.shape[0], block):
        chunk = deltas[start : start + block]
        flat = (chunk.reshape(-1) & ((1 << width) - 1)).astype(np.uint64)
        bits = ((flat[:, None] >> np.arange(width, dtype=np.uint64)) & 1).astype(np.uint8)
        out += bytes([width, chunk.shape[0]])
        out += np.packbits(bits.reshape(-1), bitorder="little").tobytes()
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Data frames
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class PmdFrame:
    """One decoded PMD data frame.

    ``samples`` has shape ``(n, channels)`` (float64 holding exactly the SDK's values): mG for ACC,
    deg/s for GYRO, Gauss for MAG (type 1: 4th column = calibration status), µV for ECG.
    ``sample_timestamps_ns`` are device-clock ns (int64); the last equals ``timestamp_ns``.
    """

    measurement_type: int
    frame_type: int
    timestamp_ns: int
    samples: FloatArray
    sample_timestamps_ns: IntArray

    @property
    def compressed(self) -> bool:
        return bool(self.frame_type & _COMPRESSED)

    @property
    def frame_subtype(self) -> int:
        """Frame type without the compression bit (the SDK's ``PmdDataFrameType``)."""
        return self.frame_type & 0x7F

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])


def _raw_ints(content: bytes, size: int, channels: int) -> IntArray:
    """Raw little-endian signed integers of ``size`` bytes, ``channels`` per sample."""
    step = size * channels
    if len(content) % step:
        raise ParseError(
            f"raw frame content of {len(content)} bytes is not a whole number of "
            f"{channels}x{size}-byte samples"
        )
    n = len(content) // step
    b = np.frombuffer(content, dtype=np.uint8).reshape(n * channels, size).astype(np.int64)
    vals = b @ (np.int64(1) << (8 * np.arange(size, dtype=np.int64)))
    top = np.int64(1) << (8 * size - 1)
    vals = np.where(vals & top, vals - (top << 1), vals)
    return vals.reshape(n, channels)


_F32_1: Final = np.float32(1.0)


def _f32_scale(values: IntArray, factor: np.float32) -> NDArray[np.float32]:
    """Kotlin ``Int * Float``: the Int is converted to float32 first, product rounded to float32."""
    return values.astype(np.float32) * factor


def _decode_values(
    mtype: int,
    compressed: bool,
    sub: int,
    content: bytes,
    f32: np.float32,
    resolution: int | None,
    channels: int | None,
) -> FloatArray:
    """Dispatch on (measurement, compression, frame type) like the SDK's ``*Data`` parsers."""
    ftype = sub | (_COMPRESSED if compressed else 0)
    if mtype == MeasurementType.ACC and not compressed and sub in (0, 1, 2):
        return _raw_ints(content, sub + 1, channels or 3).astype(np.float64)
    if mtype == MeasurementType.ACC and compressed and sub == 0:
        counts = decode_delta_content(content, channels or 3, resolution or 16)
        acc_factor = f32 * np.float32(1000)  # "type 0 data arrives in G units"
        return np.trunc(_f32_scale(counts, acc_factor)).astype(np.float64)
    if mtype == MeasurementType.ACC and compressed and sub == 1:
        counts = decode_delta_content(content, channels or 3, resolution or 16)
        if f32 != _F32_1:
            return np.trunc(_f32_scale(counts, f32)).astype(np.float64)
        return counts.astype(np.float64)
    if mtype == MeasurementType.GYRO and compressed and sub == 0:
        counts = decode_delta_content(content, channels or 3, resolution or 16)
        return _f32_scale(counts, f32).astype(np.float64)
    if mtype == MeasurementType.GYRO and compressed and sub == 1:
        bits = decode_delta_content(content, channels or 3, resolution or 32, as_float=True)
        floats = bits.astype(np.int32).view(np.float32)
        if f32 != _F32_1:
            floats = floats * f32
        return floats.astype(np.float64)
    if mtype == MeasurementType.MAGNETOMETER and compressed and sub == 0:
        counts = decode_delta_content(content, channels or 3, resolution or 16)
        return _f32_scale(counts, f32).astype(np.float64)
    if mtype == MeasurementType.MAGNETOMETER and compressed and sub == 1:
        counts = decode_delta_content(content, channels or 4, resolution or 16)
        xyz = _f32_scale(counts[:, :3], f32) / np.float32(1000)  # milliGauss -> Gauss
        return np.concatenate([xyz.astype(np.float64), counts[:, 3:].astype(np.float64)], 1)
    if mtype == MeasurementType.ECG and not compressed and sub == 0:
        return _raw_ints(content, 3, channels or 1).astype(np.float64)
    raise UnsupportedFrameError(
        f"PMD measurement type {mtype} with frame type 0x{ftype:02x} is not supported"
    )


def decode_data_frame(
    frame: BytesLike,
    *,
    factor: float = 1.0,
    resolution: int | None = None,
    channels: int | None = None,
    previous_timestamp_ns: int | None = None,
    sample_rate: float | None = None,
) -> PmdFrame:
    """Decode one PMD data notification into samples and per-sample device timestamps.

    ``factor`` is the FACTOR from the START response (1.0 when none). ``resolution``/``channels``
    override what the SDK hard-codes per measurement and frame type (None = the SDK's choice).
    ``previous_timestamp_ns`` is the timestamp of the previous frame of the same measurement and
    frame type (see :class:`PmdDecoder`); ``sample_rate`` the rate from the START settings.
    Raises :class:`UnsupportedFrameError` for types not implemented and :class:`ParseError` for
    malformed frames -- never anything else.
    """
    raw = bytes(frame)
    if len(raw) < _HEADER_LEN:
        raise ParseError(f"PMD data frame too short: {len(raw)} bytes, header needs 10")
    mtype = raw[0] & 0x3F
    ts = int.from_bytes(raw[1:9], "little")
    ftype = raw[9]
    content = raw[_HEADER_LEN:]
    sub = ftype & 0x7F
    compressed = bool(ftype & _COMPRESSED)
    if channels is not None and not 1 <= channels <= 64:
        raise ParseError(f"channels override must be 1..64, got {channels}")
    try:
        with np.errstate(all="ignore"):  # float32 overflow/NaN is data, not an error
            f32 = np.float32(factor)
            values = _decode_values(mtype, compressed, sub, content, f32, resolution, channels)
    except ParseError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError) as exc:  # defensive: never leak
        raise ParseError(f"malformed PMD frame: {exc}") from exc
    stamps = sample_timestamps(
        ts, values.shape[0], previous_timestamp_ns=previous_timestamp_ns, sample_rate=sample_rate
    )
    values.setflags(write=False)
    stamps.setflags(write=False)
    return PmdFrame(
        measurement_type=_enum_or_int(MeasurementType, mtype),
        frame_type=ftype,
        timestamp_ns=ts,
        samples=values,
        sample_timestamps_ns=stamps,
    )


@dataclass(slots=True)
class StreamConfig:
    """What :class:`PmdDecoder` knows about one measurement's stream."""

    factor: float = 1.0
    sample_rate: float | None = None
    resolution: int | None = None
    channels: int | None = None
    override_layout: bool = False


@dataclass(slots=True)
class PmdDecoder:
    """Stateful wrapper reproducing ``BlePMDClient``'s bookkeeping around :func:`decode_data_frame`.

    Keeps the previous frame timestamp per ``(measurement type, frame type without the compression
    bit)`` -- updated even when a frame fails to decode, as the SDK does -- and each stream's
    factor / sample rate from its START exchange. Call :meth:`reset` after STOP or a disconnect.

    RESOLUTION / CHANNELS from the settings are recorded but, like the SDK, *not* used to decode:
    the frame layout follows the frame type (a gyro type-1 frame is float32 whatever 16-bit
    RESOLUTION was negotiated, a magnetometer type-1 frame carries a 4th calibration channel, H10
    ECG frames are int24 for a 14-bit RESOLUTION). Pass ``override_layout=True`` to force them.
    """

    _previous: dict[tuple[int, int], int] = field(default_factory=dict)
    _config: dict[int, StreamConfig] = field(default_factory=dict)

    def configure(
        self,
        mtype: int,
        *,
        sample_rate: float | None = None,
        factor: float | None = None,
        resolution: int | None = None,
        channels: int | None = None,
        override_layout: bool | None = None,
    ) -> None:
        """Record the settings a stream was started with (and the FACTOR from its reply)."""
        cfg = self._config.setdefault(int(mtype), StreamConfig())
        if override_layout is not None:
            cfg.override_layout = override_layout
        if sample_rate is not None:
            cfg.sample_rate = sample_rate
        if factor is not None:
            cfg.factor = factor
        if resolution is not None:
            cfg.resolution = resolution
        if channels is not None:
            cfg.channels = channels

    def config(self, mtype: int) -> StreamConfig:
        """The recorded stream configuration (defaults if never configured)."""
        return self._config.get(int(mtype) & 0x3F, StreamConfig())

    def previous_timestamp(self, mtype: int, frame_type: int) -> int | None:
        return self._previous.get((int(mtype) & 0x3F, frame_type & 0x7F))

    def decode(self, frame: BytesLike) -> PmdFrame:
        raw = bytes(frame)
        if len(raw) < _HEADER_LEN:
            raise ParseError(f"PMD data frame too short: {len(raw)} bytes, header needs 10")
        key = (raw[0] & 0x3F, raw[9] & 0x7F)
        prev = self._previous.get(key)
        self._previous[key] = int.from_bytes(raw[1:9], "little")
        cfg = self._config.get(key[0], StreamConfig())
        return decode_data_frame(
            raw,
            factor=cfg.factor,
            resolution=cfg.resolution if cfg.override_layout else None,
            channels=cfg.channels if cfg.override_layout else None,
            previous_timestamp_ns=prev,
            sample_rate=cfg.sample_rate,
        )

    def reset(self, *, keep_config: bool = True) -> None:
        """Forget previous timestamps (after STOP/disconnect); optionally the stream configs too."""
        self._previous.clear()
        if not keep_config:
            self._config.clear()


# --------------------------------------------------------------------------------------------
# Device clock -> host clock
# --------------------------------------------------------------------------------------------


def device_ns_to_unix_s(device_ns: int) -> float:
    """Interpret a device timestamp as true UTC since Polar's 2000 epoch (only valid if the
    strap's clock was set to UTC; H10s reset to 2019-01-01 when detached -- prefer
    :class:`DeviceClock`)."""
    return (device_ns + POLAR_EPOCH_UNIX_NS) / 1e9


class DeviceClock:
    """Map device-clock ns to host Unix seconds with a drift-tracking offset.

    Why not trust the device clock: H10s reset to 2019-01-01 when detached, and the SDK may have
    set it to *local* time. Why not a single first-frame offset (bleakheart): BLE delivery latency
    varies by tens of ms and crystals drift ~20 ppm. Each frame gives ``host_receive - device_ts``
    = true offset + latency (>= 0), so the minimum over a sliding window of host time is the best
    latency-free estimate and follows drift as old observations age out. A jump larger than
    ``jump_threshold_s`` (device clock reset or set) restarts the window immediately.
    """

    def __init__(
        self,
        *,
        window_s: float = 120.0,
        jump_threshold_s: float = 5.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._window_ns = int(window_s * 1e9)
        self._jump_ns = int(jump_threshold_s * 1e9)
        self._now = now
        # monotonic deque of (host_ns, offset_ns) with increasing offsets: front = window minimum
        self._obs: deque[tuple[int, int]] = deque()
        self.resets = 0

    @property
    def synced(self) -> bool:
        return bool(self._obs)

    @property
    def offset_ns(self) -> int | None:
        """Current estimate of ``host_unix_ns - device_ns`` (None before the first frame)."""
        return self._obs[0][1] if self._obs else None

    def observe(self, device_ns: int, host_receive_s: float | None = None) -> None:
        """Feed one frame: its device timestamp (last sample) and the host time it arrived."""
        host_s = self._now() if host_receive_s is None else host_receive_s
        host_ns = round(host_s * 1e9)
        offset = host_ns - int(device_ns)
        current = self.offset_ns
        if current is not None and abs(offset - current) > self._jump_ns:
            self._obs.clear()
            self.resets += 1
        while self._obs and self._obs[-1][1] >= offset:
            self._obs.pop()
        self._obs.append((host_ns, offset))
        horizon = host_ns - self._window_ns
        while len(self._obs) > 1 and self._obs[0][0] < horizon:
            self._obs.popleft()

    def reset(self) -> None:
        """Forget all observations (e.g. after reconnecting to a different strap)."""
        self._obs.clear()

    def to_host_s(self, device_ns: IntArray) -> FloatArray:
        """Convert device ns (int64 array) to host Unix seconds (float64); needs one observation."""
        offset = self.offset_ns
        if offset is None:
            raise RuntimeError("DeviceClock.to_host_s called before any observe()")
        unix_ns = np.asarray(device_ns, dtype=np.int64) + np.int64(offset)
        return unix_ns.astype(np.float64) / 1e9

    def to_host_scalar(self, device_ns: int) -> float:
        offset = self.offset_ns
        if offset is None:
            raise RuntimeError("DeviceClock.to_host_scalar called before any observe()")
        return (int(device_ns) + offset) / 1e9
