"""Polar PMD: vectors from ../shared/ble/REFERENCE.md §2 and behaviours ported from Polar's SDK
tests (AccDataTest, GyrDataTest, BlePmdClientParsersTest, PmdSettingTest, PmdTimeStampUtilsTest,
BlePmdClientControlPointResponseTest, BlePmdClientTest)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from sensors.gatt import ParseError
from sensors.pmd import (
    DPS_TO_RADS,
    MG_TO_MS2,
    PMD_CONTROL_UUID,
    PMD_DATA_UUID,
    PMD_SERVICE_UUID,
    POLAR_EPOCH_UNIX_NS,
    ControlPointOpcode,
    ControlPointResponse,
    DeviceClock,
    MeasurementStopped,
    MeasurementType,
    PmdDecoder,
    ResponseStatus,
    SettingType,
    UnsupportedFrameError,
    build_get_measurement_status,
    build_get_settings,
    build_start,
    build_stop,
    decode_data_frame,
    decode_delta_content,
    device_ns_to_unix_s,
    encode_delta_content,
    parse_control_point_notification,
    parse_control_response,
    parse_features,
    parse_settings,
    sample_timestamps,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("\n", " "))


def header(mtype: int, ts: int, ftype: int) -> bytes:
    return bytes([mtype]) + ts.to_bytes(8, "little") + bytes([ftype])


# V1: SDK AccDataTest "process acc raw data frame type 1" (H10-style raw int16 mG)
V1 = h(
    """02 00 94 35 77 00 00 00 00 01
    F7 FF FF FF E7 03 F8 FF FE FF E5 03 F9 FF FF FF E5 03 FA FF FF FF E6 03 FA FF FE FF E6 03
    F9 FF FF FF E5 03 F8 FF FF FF E6 03 F8 FF FE FF E6 03 FA FF FF FF E5 03 FA FF FF FF E7 03
    FA FF FF FF E5 03 F8 FF FF FF E6 03 F7 FF FF FF E6 03 F8 FF FE FF E6 03 F9 FF FE FF E7 03
    F9 FF 00 00 E6 03 F9 FF FF FF E6 03 F7 FF FE FF E5 03 F9 FF FF FF E5 03 F9 FF FF FF E5 03
    FA FF 00 00 E6 03 F9 FF FE FF E6 03 F8 FF FF FF E6 03 F8 FF FF FF E5 03 F9 FF FF FF E6 03
    F9 FF FF FF E5 03 FA FF FF FF E6 03 F9 FF FF FF E5 03 F9 FF FF FF E5 03 F8 FF FE FF E6 03
    F9 FF FF FF E6 03 F9 FF FF FF E6 03 F9 FF 00 00 E5 03 F9 FF FE FF E6 03 F8 FF FE FF E6 03
    F7 FF FE FF E6 03"""
)

# SDK AccDataTest "process acc compressed data type 0" content (10-bit deltas, 56 samples)
ACC_C0_CONTENT = h(
    """71 07 F0 6A 9E 8D 0A 38 BE 5C BE BA 2F 96 B3 EE 4B E5 AD FB 42 B9 EB BE 4C FE BA 2F 92 BF
    EE 4B E4 B1 FB 12 B9 EC BD 3C 3E BB 2F 8F D3 DE 4B E3 B5 F7 D2 B8 ED BD 30 7E 7B 2F 8B E3
    CE 8B E2 BA F7 A2 B8 EE BC 20 BE 7B 2F 88 F3 CE CB E1 BD EF 52 F8 EF BC 18 FE 3B 2F 84 03
    BF CB E0 C2 EF 32 B8 F0 BB 04 4E BC 2E 81 13 AF 0B E0 C6 EF F2 F7 F1 B9 FC 7D BC 2E 7D 27
    9F 4B DF CA EB C2 F7 F2 B8 EC CD 7C 2E 7B 37 8F 4B DE CE E3 92 F7 F3 B8 E0 0D FD 2D 77 4B
    7F CB DD D2 DF 62 37 F5 B7 D4 4D BD 2D 74 5B 6F CB DC D7 D7 32 37 F6 B5 C8 8D 7D 2D 71 6B
    4F 4B DC DC D3 F2 36 F7 B4 BC DD FD 2C 6F 7B 3F 4B DB E0 CF D2 36 F8 B2 B0 2D BE 2C 6C 8F
    1F CB DA E3 C7 A2 76 F9"""
)

# SDK BlePmdClientParsersTest multipleDeltas (3/4-bit blocks, 140 samples)
MULTI_DELTA = h(
    """C9 FF 12 00 11 00 03 09 41 FE 2B 0F 9C 0B BF 15 00 4F 00 04 1E F1 EF 00 F0 C1 23 E4 ED F4
    D1 F1 F1 F5 FF 22 DE 31 00 F1 FE 21 02 1F 0E 2B 1F 00 E2 20 00 0E 02 E1 1E 20 FF F1 F1 02
    C5 D0 02 E0 E1 02 03 0A 31 2E FB BA 90 2B AA 0E 23 40 9E 03 04 14 E3 EF F3 0F 02 1F 01 E0
    0F 04 9E 13 E2 D0 04 E2 22 E2 C2 0E 20 0F 20 02 FE 00 0F 1C 32 EE 03 0A 89 00 07 08 7C 00
    CE 2F E8 3A 9E 03 04 1E 01 00 11 19 4F 00 2F 12 FD 13 FF 0E 10 00 00 F1 C0 12 E4 EF 21 00
    00 01 F1 FF FF 02 10 10 2B 51 0B 4E 31 FC 2E BF 31 14 EC 0E 2F 52 EF 03 0A 06 9E 04 0E 02
    A8 88 EE E0 07 9A 00 04 0A 1F 21 1E 4E 2E FE C6 C0 02 EF 03 01 02 EE 11 03 0A F8 13 00 00
    F0 40 BF A5 E7 00 76 00"""
)

# SDK GyrDataTest type 1 content (float32 bit patterns, 28-bit deltas)
GYRO_C1_CONTENT = h("00 00 80 3F 00 00 20 41 00 00 A0 41 1C 01 00 00 A0 01 00 00 08 CD CC EC 0D")


def f32(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0])


def sext(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def slow_decode_delta(content: bytes, ch: int, res: int) -> list[list[int]]:
    """The REFERENCE.md §2.6 decoder, bit by bit, as an independent oracle."""
    n = -(-res // 8)
    off = ch * n
    ref = [sext(int.from_bytes(content[i * n : (i + 1) * n], "little"), res) for i in range(ch)]
    out = [ref]
    while off < len(content):
        w, cnt = content[off], content[off + 1]
        off += 2
        nbytes = -(-(w * cnt * ch) // 8)
        bits = int.from_bytes(content[off : off + nbytes], "little")
        off += nbytes
        pos = 0
        for _ in range(cnt if w else 0):
            row = []
            for c in range(ch):
                d = sext((bits >> pos) & ((1 << w) - 1), w)
                pos += w
                row.append(out[-1][c] + d)
            out.append(row)
    return out


# ---------------------------------------------------------------- constants


def test_uuids_and_unit_helpers() -> None:
    assert PMD_SERVICE_UUID == "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
    assert PMD_CONTROL_UUID == "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
    assert PMD_DATA_UUID == "fb005c82-02e7-f387-1cad-8acd2d8df0c8"
    assert math.isclose(MG_TO_MS2 * 1000, 9.80665)
    assert math.isclose(DPS_TO_RADS * 180, math.pi)
    assert int(MeasurementType.ACC) == 2 and int(MeasurementType.GYRO) == 5
    assert int(MeasurementType.MAGNETOMETER) == 6
    assert int(SettingType.RANGE_MILLIUNIT) == 3 and int(SettingType.FACTOR) == 5


# ---------------------------------------------------------------- data frames: vectors


def test_v1_raw_acc_type1_h10() -> None:
    frame = decode_data_frame(V1, sample_rate=52)
    assert frame.measurement_type == MeasurementType.ACC
    assert frame.frame_type == 0x01 and not frame.compressed
    assert frame.timestamp_ns == 2_000_000_000
    assert frame.samples.shape == (36, 3)
    assert frame.samples[0].tolist() == [-9, -1, 999]
    assert frame.samples[1].tolist() == [-8, -2, 997]
    assert frame.samples[2].tolist() == [-7, -1, 997]
    assert frame.samples[35].tolist() == [-9, -2, 998]
    ts = frame.sample_timestamps_ns
    assert ts.dtype == np.int64
    assert ts[0] == 1_326_923_077 and ts[-1] == 2_000_000_000
    assert np.all(np.diff(ts) > 0)


def test_v2_real_h10_frame_prefix() -> None:
    raw = h("02 EA 54 A2 42 8B 45 52 08 01 45 FF E4 FF B5 03 45 FF E4 FF B8 03")
    frame = decode_data_frame(raw, sample_rate=200)
    assert frame.timestamp_ns == 599_618_164_814_402_794
    assert frame.samples.tolist() == [[-187, -28, 949], [-187, -28, 952]]
    unix = device_ns_to_unix_s(frame.timestamp_ns)
    assert unix == pytest.approx(1_546_302_964.814402794)
    assert POLAR_EPOCH_UNIX_NS == 946_684_800_000_000_000


def test_v3_verity_delta_8bit_with_factor() -> None:
    factor = struct.unpack("<f", h("40 DA 7F 39"))[0]
    content = h("D0 FF 65 01 E4 0F 08 02 FC 07 FF 0C 13 F2")
    assert decode_delta_content(content, 3, 16).tolist() == [
        [-48, 357, 4068],
        [-52, 364, 4067],
        [-40, 383, 4053],
    ]
    raw = h("02 64 6C 76 C4 3C C6 7F 07 80") + content
    frame = decode_data_frame(raw, factor=factor, sample_rate=52)
    assert frame.timestamp_ns == 540_368_444_604_181_604
    assert frame.frame_type == 0x80 and frame.compressed and frame.frame_subtype == 0
    assert frame.samples[:2].tolist() == [[-11, 87, 992], [-12, 88, 992]]


def test_v5_acc_compressed_type1_6bit() -> None:
    raw = h("02 65 00 00 00 00 00 00 00 81 F1 FF 14 00 F0 03 06 01 7B 0F 08")
    frame = decode_data_frame(raw, factor=1.0, previous_timestamp_ns=100)
    assert frame.samples.tolist() == [[-15, 20, 1008], [-20, 17, 1008]]
    # delta 0.5 ns: rint(100.5) is 100 with half-to-even rounding, as Kotlin's round()
    assert frame.sample_timestamps_ns.tolist() == [100, 101]


def test_v6_gyro_compressed_type0_3bit() -> None:
    raw = h("05 FF FF FF FF FF FF FF 7F 80 EA FF 08 00 0D 00 03 01 DF 00")
    frame = decode_data_frame(raw, previous_timestamp_ns=100)
    assert frame.measurement_type == MeasurementType.GYRO
    assert frame.timestamp_ns == 0x7FFF_FFFF_FFFF_FFFF
    assert frame.samples.tolist() == [[-22, 8, 13], [-23, 11, 16]]
    assert frame.sample_timestamps_ns[-1] == 0x7FFF_FFFF_FFFF_FFFF


def test_acc_compressed_type0_sdk_vector_truncates_factor_times_1000() -> None:
    raw = header(2, 2_000_000_000, 0x80) + ACC_C0_CONTENT
    factor = 2.44e-4
    frame = decode_data_frame(raw, factor=factor, previous_timestamp_ns=100)
    assert frame.n_samples == 57
    fac = np.float32(factor)

    def sdk(count: int) -> int:  # the test's own expression: (factor * count * 1000f).toInt()
        return int(fac * np.float32(count) * np.float32(1000))

    s0 = [1905, 27376, -29282]
    s1 = [1905 + 190, 27376 - 105, -29282 - 85]
    assert frame.samples[0].tolist() == [sdk(v) for v in s0]
    assert frame.samples[1].tolist() == [sdk(v) for v in s1]
    assert np.all(np.abs(frame.samples) <= 8 * 1000)  # ±8 G range
    delta = (2_000_000_000 - 100) / 57
    assert frame.sample_timestamps_ns[0] == round(100 + delta)
    assert frame.sample_timestamps_ns[-1] == 2_000_000_000


def test_gyro_compressed_type1_float_bit_pattern_deltas() -> None:
    raw = header(5, 2_000_000_000, 0x81) + GYRO_C1_CONTENT
    frame = decode_data_frame(raw, previous_timestamp_ns=100)
    expect0 = [f32(0x3F800000), f32(0x41200000), f32(0x41A00000)]
    expect1 = [
        f32(0x3F800000 + 0x1A00000),
        f32(0x41200000 + 0x0800000),
        f32(0x41A00000 + 0xFDECCCCD),
    ]
    assert frame.samples.tolist() == [expect0, expect1]
    half = decode_data_frame(raw, factor=0.5, previous_timestamp_ns=100)
    f = np.float32(0.5)
    assert half.samples.tolist() == [
        [float(np.float32(v) * f) for v in expect0],
        [float(np.float32(v) * f) for v in expect1],
    ]
    assert half.sample_timestamps_ns[-1] == 2_000_000_000


def test_gyro_type0_factor_is_float32_product() -> None:
    content = encode_delta_content([[100, -200, 300], [101, -199, 301]], 16, 4)
    factor = 2000 / 32768
    frame = decode_data_frame(header(5, 10**12, 0x80) + content, factor=factor, sample_rate=52)
    fac = np.float32(factor)
    assert frame.samples[0].tolist() == [float(np.float32(v) * fac) for v in (100, -200, 300)]


def test_sdk_reference_sample_parsing_and_wraparound() -> None:
    # BlePmdClientParsersTest: 4 channels, 16 bit -> -1, 0, 32767, -32768
    out = decode_delta_content(h("FF FF 00 00 FF 7F 00 80"), 4, 16)
    assert out.tolist() == [[-1, 0, 32767, -32768]]
    # 32-bit float encoding keeps raw bit patterns (as Kotlin Ints)
    bits = decode_delta_content(h("00 00 00 00 FF FF FF FF 00 00 00 80"), 3, 32, as_float=True)
    assert bits.tolist() == [[0, -1, -(2**31)]]


def test_sdk_32bit_delta_blocks_wrap_like_kotlin_int() -> None:
    content = h("""02 00 00 00 19 32 99 E9 00 DA FE FF 20 01 17 32 99 E9 E7 A7 65 16 38 DB 06 46""")
    out = decode_delta_content(content, 3, 32, as_float=True)

    def wrap(v: int) -> int:
        return sext(v, 32)

    assert out.tolist() == [
        [2, wrap(0xE9993219), wrap(0xFFFEDA00)],
        [wrap(2 + 0xE9993217), wrap(0xE9993219 + 0x1665A7E7), wrap(0xFFFEDA00 + 0x4606DB38)],
    ]


def test_sdk_multiple_delta_blocks() -> None:
    out = decode_delta_content(MULTI_DELTA, 3, 16)
    assert out.shape == (1 + 9 + 30 + 10 + 20 + 10 + 30 + 10 + 10 + 10, 3)
    assert out[0].tolist() == [-55, 18, 17]
    assert out[1].tolist() == [-54, 18, 18]
    assert out.tolist() == slow_decode_delta(MULTI_DELTA, 3, 16)


def test_sdk_28bit_multi_block_float_vector() -> None:
    # BlePmdClientParsersTest realVector1: 28-bit and 32-bit blocks, 1 + 6 + 3 + 6 + 3 samples
    blocks = h(
        """1C 06 00 00 A0 01 00 00 08 CD CC EC 0D 00 00 08 CD CC EC 3D 33 33 1A CD CC EC 3D 33 33
        1A 00 00 C0 30 33 33 1A 00 00 C0 A0 99 99 DA 00 00 C0 A0 99 99 DA 66 66 A6 A1 99 99 DA 66
        66 A6 01 00 00 0E 20 03 66 66 A6 01 00 00 E0 00 42 6C 45 0E 00 00 E0 00 42 6C 45 0E 2B F8
        ED 21 00 00 60 FD BE 93 BA F0 93 9B 4C CF"""
    )
    content = h("00 00 80 3F 00 00 20 41 00 00 A0 41") + blocks + blocks
    out = decode_delta_content(content, 3, 32, as_float=True)
    assert out.shape == (19, 3)
    assert out[0].tolist() == [0x3F800000, 0x41200000, 0x41A00000]
    assert out[1].tolist() == [0x3F800000 + 0x1A00000, 0x41200000 + 0x0800000, 0x3F8CCCCD]


def test_zero_width_block_yields_no_samples_like_the_sdk() -> None:
    content = h("01 00 02 00 03 00") + bytes([0, 5])
    assert decode_delta_content(content, 3, 16).tolist() == [[1, 2, 3]]


def test_width_one_is_twos_complement() -> None:
    # SDK quirk: its mask turns a 1-bit "1" into Int.MAX_VALUE; we sign-extend to -1 instead.
    content = h("0A 00 0A 00 0A 00") + bytes([1, 1, 0b101])
    assert decode_delta_content(content, 3, 16).tolist() == [[10, 10, 10], [9, 10, 9]]


def test_raw_acc_type0_and_type2() -> None:
    t0 = decode_data_frame(header(2, 10**12, 0x00) + bytes([0xFF, 0x01, 0x80]), sample_rate=52)
    assert t0.samples.tolist() == [[-1, 1, -128]]
    t2 = decode_data_frame(
        header(2, 10**12, 0x02) + h("FF FF FF 00 00 80 E8 03 00"), sample_rate=52
    )
    assert t2.samples.tolist() == [[-1, -(2**23), 1000]]


def test_ecg_raw_type0_int24_microvolts() -> None:
    raw = header(0, 10**12, 0x00) + h("00 12 03 11 10 04 FF FF FF")
    frame = decode_data_frame(raw, sample_rate=130)
    assert frame.samples.shape == (3, 1)
    assert frame.samples[:, 0].tolist() == [0x031200, 0x041011, -1]


def test_magnetometer_types() -> None:
    c0 = encode_delta_content([[1000, -500, 250], [1001, -501, 251]], 16, 3)
    frame = decode_data_frame(header(6, 10**12, 0x80) + c0, factor=0.01, sample_rate=20)
    fac = np.float32(0.01)
    assert frame.samples[0].tolist() == [float(np.float32(v) * fac) for v in (1000, -500, 250)]
    c1 = encode_delta_content([[1500, -300, 20, 3], [1502, -301, 21, 3]], 16, 3)
    frame1 = decode_data_frame(header(6, 10**12, 0x81) + c1, sample_rate=20)
    assert frame1.samples.shape == (2, 4)
    assert frame1.samples[0, :3].tolist() == [
        float(np.float32(v) / np.float32(1000)) for v in (1500, -300, 20)
    ]
    assert frame1.samples[:, 3].tolist() == [3, 3]


def test_overrides_for_channels_and_resolution() -> None:
    content = encode_delta_content([[5, 6], [7, 8]], 16, 3)
    frame = decode_data_frame(header(2, 10**12, 0x81) + content, channels=2, sample_rate=52)
    assert frame.samples.tolist() == [[5, 6], [7, 8]]


def test_arrays_are_read_only() -> None:
    frame = decode_data_frame(V1, sample_rate=52)
    with pytest.raises(ValueError):
        frame.samples[0, 0] = 1
    with pytest.raises(ValueError):
        frame.sample_timestamps_ns[0] = 1


def test_empty_raw_frame_yields_zero_samples() -> None:
    frame = decode_data_frame(header(2, 10**12, 0x01), sample_rate=52)
    assert frame.samples.shape == (0, 3) and frame.sample_timestamps_ns.shape == (0,)


# ---------------------------------------------------------------- data frames: errors


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        h("02 00 00 00 00 00 00 00 00"),  # 9 bytes: header incomplete
        V1[:-1],  # raw content not a whole number of samples
        header(2, 10**12, 0x80),  # compressed without reference sample
        header(2, 10**12, 0x80) + h("01 00 02 00 03"),  # truncated reference sample
        header(2, 10**12, 0x80) + h("01 00 02 00 03 00 08"),  # block header truncated
        header(2, 10**12, 0x80) + h("01 00 02 00 03 00 08 02 FC 07 FF 0C 13"),  # block short
        header(5, 10**12, 0x80) + h("01 00 02 00 03 00 21 01") + bytes(13),  # width 33
    ],
)
def test_malformed_frames_raise_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        decode_data_frame(raw, sample_rate=52)


@pytest.mark.parametrize(
    "ftype_mtype", [(0x03, 2), (0x82, 2), (0x00, 5), (0x82, 5), (0x00, 6), (0x80, 1), (0x7F, 1)]
)
def test_unsupported_types_raise_unsupported_frame_error(ftype_mtype: tuple[int, int]) -> None:
    ftype, mtype = ftype_mtype
    with pytest.raises(UnsupportedFrameError) as err:
        decode_data_frame(header(mtype, 10**12, ftype) + bytes(12), sample_rate=52)
    assert isinstance(err.value, ParseError)


def test_missing_rate_and_previous_timestamp_is_actionable() -> None:
    with pytest.raises(ParseError, match="sample_rate"):
        decode_data_frame(V1)


def test_measurement_type_byte_is_masked() -> None:
    frame = decode_data_frame(bytes([0x82]) + V1[1:], sample_rate=52)
    assert frame.measurement_type == MeasurementType.ACC


# ---------------------------------------------------------------- timestamps (PmdTimeStampUtils)


def test_timestamps_from_frequency() -> None:
    ts = sample_timestamps(10_000_000_000, 10, previous_timestamp_ns=0, sample_rate=1)
    assert ts.tolist() == [i * 1_000_000_000 for i in range(1, 11)]
    assert sample_timestamps(1_000_000_000, 1, sample_rate=1).tolist() == [1_000_000_000]


def test_timestamps_from_previous_frame() -> None:
    ts = sample_timestamps(11_000_000_000, 10, previous_timestamp_ns=1_000_000_000, sample_rate=1)
    assert ts.tolist() == [i * 1_000_000_000 for i in range(2, 12)]
    ts2 = sample_timestamps(2_000_000_000, 3, previous_timestamp_ns=100, sample_rate=1)
    assert ts2.tolist() == [round(666666733.33), round(1333333366.66), 2_000_000_000]
    one = sample_timestamps(2_000_000_000, 1, previous_timestamp_ns=1_000_000_000)
    assert one.tolist() == [2_000_000_000]


def test_timestamps_errors_and_fallback() -> None:
    with pytest.raises(ParseError):  # both unknown (SDK: TimeStampAndFrequencyZeroError)
        sample_timestamps(100_000, 100, previous_timestamp_ns=0, sample_rate=0)
    with pytest.raises(ParseError):  # would be negative (SDK: NegativeTimeStampError)
        sample_timestamps(100_000, 100, sample_rate=52)
    # previous not before this frame: the SDK throws; we fall back to the sample rate
    ts = sample_timestamps(10_000_000_000, 10, previous_timestamp_ns=10_000_000_000, sample_rate=1)
    assert ts[0] == 1_000_000_000
    with pytest.raises(ParseError):
        sample_timestamps(10_000_000_000, 10, previous_timestamp_ns=20_000_000_000)


# ---------------------------------------------------------------- decoder bookkeeping


def test_decoder_tracks_previous_timestamp_per_measurement_and_frame_type() -> None:
    dec = PmdDecoder()
    dec.configure(MeasurementType.ACC, sample_rate=52)
    second = header(2, 2_000_000_000 + 36 * 19_230_769, 0x01) + V1[10:]
    other_type = header(2, 5_000_000_000_000, 0x80) + h("F1 FF 14 00 F0 03")
    other_measurement = header(3, 6_000_000_000_000, 0x01)  # PPI: unsupported, still tracked
    a = dec.decode(V1)
    dec.decode(other_type)  # different frame type: must not disturb type 1 bookkeeping
    with pytest.raises(UnsupportedFrameError):
        dec.decode(other_measurement)
    b = dec.decode(second)
    assert a.sample_timestamps_ns[0] == 1_326_923_077
    assert b.sample_timestamps_ns[0] == 2_000_000_000 + 19_230_769
    assert dec.previous_timestamp(2, 0x01) == second_ts(second)
    assert dec.previous_timestamp(2, 0x80) == 5_000_000_000_000
    assert dec.previous_timestamp(3, 0x01) == 6_000_000_000_000
    # the SDK keys on the frame type *without* the compression bit: 0x81 shares 0x01's slot
    assert dec.previous_timestamp(2, 0x81) == second_ts(second)
    dec.reset()
    assert dec.previous_timestamp(2, 0x01) is None


def second_ts(frame: bytes) -> int:
    return int.from_bytes(frame[1:9], "little")


def test_decoder_applies_factor_and_updates_previous_even_on_failure() -> None:
    dec = PmdDecoder()
    dec.configure(MeasurementType.ACC, sample_rate=52, factor=0.000244)
    with pytest.raises(ParseError):
        dec.decode(header(2, 3_000_000_000, 0x80) + h("01"))
    assert dec.previous_timestamp(2, 0x80) == 3_000_000_000
    frame = dec.decode(h("02 64 6C 76 C4 3C C6 7F 07 80 D0 FF 65 01 E4 0F 08 02 FC 07 FF 0C 13 F2"))
    assert frame.samples[0].tolist() == [-11, 87, 992]


# ---------------------------------------------------------------- control point


def test_request_builders_match_reference_exchanges() -> None:
    assert build_get_settings(MeasurementType.ACC) == h("01 02")
    assert build_get_settings(MeasurementType.ACC, offline=True) == h("01 82")
    assert build_stop(MeasurementType.ACC) == h("03 02")
    assert build_stop(MeasurementType.SDK_MODE) == h("03 09")
    assert build_get_measurement_status() == h("05")
    h10 = {SettingType.RANGE: 8, SettingType.SAMPLE_RATE: 200, SettingType.RESOLUTION: 16}
    assert build_start(MeasurementType.ACC, h10) == h("02 02 02 01 08 00 00 01 C8 00 01 01 10 00")
    verity = {
        SettingType.SAMPLE_RATE: 52,
        SettingType.RESOLUTION: 16,
        SettingType.RANGE: 8,
        SettingType.CHANNELS: 3,
        SettingType.FACTOR: 15,  # never sent
    }
    assert build_start(MeasurementType.ACC, verity) == h(
        "02 02 00 01 34 00 01 01 10 00 02 01 08 00 04 01 03"
    )
    ecg = {SettingType.SAMPLE_RATE: 130, SettingType.RESOLUTION: 14}
    assert build_start(MeasurementType.ECG, ecg) == h("02 00 00 01 82 00 01 01 0E 00")
    with pytest.raises(ValueError):
        build_start(MeasurementType.ACC, {SettingType.CHANNELS: 256})


def test_get_settings_response_h10_acc() -> None:
    resp = parse_control_response(
        h("F0 01 02 00 00 00 04 19 00 32 00 64 00 C8 00 01 01 10 00 02 03 02 00 04 00 08 00")
    )
    assert resp.ok and resp.opcode == ControlPointOpcode.GET_MEASUREMENT_SETTINGS
    assert resp.measurement_type == MeasurementType.ACC and not resp.more
    assert resp.settings == {
        SettingType.SAMPLE_RATE: (25, 50, 100, 200),
        SettingType.RESOLUTION: (16,),
        SettingType.RANGE: (2, 4, 8),
    }


def test_other_reference_settings_responses() -> None:
    verity = parse_control_response(
        h("F0 01 02 00 00 00 01 34 00 01 01 10 00 02 01 08 00 04 01 03")
    )
    assert verity.settings == {
        SettingType.SAMPLE_RATE: (52,),
        SettingType.RESOLUTION: (16,),
        SettingType.RANGE: (8,),
        SettingType.CHANNELS: (3,),
    }
    ecg = parse_control_response(h("F0 01 00 00 00 00 01 82 00 01 01 0E 00"))
    assert ecg.settings == {SettingType.SAMPLE_RATE: (130,), SettingType.RESOLUTION: (14,)}
    ppg = parse_control_response(h("F0 01 01 00 00 00 01 82 00 01 01 16 00"))
    assert ppg.settings[SettingType.RESOLUTION] == (22,)


def test_start_responses_factor_and_reserved_byte() -> None:
    h10 = parse_control_response(h("F0 02 02 00 00 01"))
    assert h10.ok and h10.parameters == b"\x01" and h10.settings == {} and h10.factor is None
    verity = parse_control_response(h("F0 02 02 00 00 05 01 40 DA 7F 39"))
    assert verity.factor == pytest.approx(0.000244, rel=1e-6)
    assert verity.factor == struct.unpack("<f", h("40 DA 7F 39"))[0]
    stop = parse_control_response(h("F0 03 00 00 00"))
    assert stop.ok and stop.opcode == ControlPointOpcode.STOP_MEASUREMENT and stop.parameters == b""


def test_sdk_control_point_response_tests() -> None:
    ok = parse_control_response(h("F0 01 02 00 00 FF FF FF"))
    assert ok.status is ResponseStatus.SUCCESS and not ok.more and ok.parameters == h("FF FF FF")
    bad = parse_control_response(h("F0 01 06 07 00"))
    assert bad.status is ResponseStatus.ERROR_INVALID_RESOLUTION and not bad.ok
    assert bad.measurement_type == MeasurementType.MAGNETOMETER
    assert bad.parameters == b"" and not bad.more
    assert "resolution" in bad.status.message
    # an error status drops "more" and parameters, as the SDK does
    err = parse_control_response(h("F0 02 02 0A 01 AA BB"))
    assert err.status is ResponseStatus.ERROR_INVALID_MTU and not err.more and err.parameters == b""
    assert "MTU" in err.status.message


def test_unknown_status_is_kept_not_crashing() -> None:
    resp = parse_control_response(h("F0 02 02 20 00"))
    assert int(resp.status) == 0x20 and not resp.ok
    assert "unknown" in resp.status.message


def test_continuation_more_flag_appends_from_index_5() -> None:
    first = parse_control_response(h("F0 01 02 00 01 00 04 19 00 32 00"))
    assert first.more
    merged = first.continued_with(h("F0 01 02 00 00 64 00 C8 00 01 01 10 00"))
    assert not merged.more
    assert merged.settings == {
        SettingType.SAMPLE_RATE: (25, 50, 100, 200),
        SettingType.RESOLUTION: (16,),
    }
    with pytest.raises(ParseError):
        first.continued_with(h("F0 02 02 00 00 00"))


@pytest.mark.parametrize("raw", ["", "F0 01 02", "01 01 02", "0F 05 00"])
def test_bad_control_responses(raw: str) -> None:
    with pytest.raises(ParseError):
        parse_control_response(h(raw))


def test_control_point_notification_dispatch() -> None:
    stopped = parse_control_point_notification(h("01 01 02"))
    assert stopped == MeasurementStopped((MeasurementType.PPG, MeasurementType.ACC))
    assert parse_control_point_notification(h("01")) == MeasurementStopped(())
    assert isinstance(parse_control_point_notification(h("F0 03 02 00 00")), ControlPointResponse)
    with pytest.raises(ParseError):
        parse_control_point_notification(h("07 00"))


def test_features() -> None:
    assert parse_features(h("0F 6E 00")) == {
        MeasurementType.PPG,
        MeasurementType.ACC,
        MeasurementType.PPI,
        MeasurementType.GYRO,
        MeasurementType.MAGNETOMETER,
    }
    assert parse_features(h("0F 05 00 00")) == {MeasurementType.ECG, MeasurementType.ACC}
    assert MeasurementType.SDK_MODE in parse_features(h("0F 00 02"))
    with pytest.raises(ParseError):
        parse_features(h("F0 05"))


# ---------------------------------------------------------------- settings TLV (PmdSettingTest)


def test_settings_with_several_ranges() -> None:
    s = parse_settings(h("00 01 34 00 01 01 10 00 02 04 F5 00 F4 01 E8 03 D0 07 04 01 03"))
    assert s == {
        SettingType.SAMPLE_RATE: (52,),
        SettingType.RESOLUTION: (16,),
        SettingType.RANGE: (245, 500, 1000, 2000),
        SettingType.CHANNELS: (3,),
    }
    assert SettingType.FACTOR not in s and SettingType.RANGE_MILLIUNIT not in s


def test_settings_range_milliunit_is_signed_u32_field() -> None:
    s = parse_settings(h("03 02 FF FF FF FF FF 00 00 00 01 01 0E 00"))
    assert s == {SettingType.RANGE_MILLIUNIT: (-1, 0xFF), SettingType.RESOLUTION: (14,)}


def test_settings_round_trip_through_start_serialisation() -> None:
    selected = {
        SettingType.SAMPLE_RATE: 0x7FFF,
        SettingType.RESOLUTION: 0,
        SettingType.RANGE: 15,
        SettingType.RANGE_MILLIUNIT: 2**31 - 1,
        SettingType.CHANNELS: 4,
        SettingType.FACTOR: 15,
    }
    payload = build_start(MeasurementType.ACC, selected)[2:]
    parsed = parse_settings(payload)
    assert len(parsed) == 5 and SettingType.FACTOR not in parsed
    assert all(parsed[k] == (v,) for k, v in selected.items() if k is not SettingType.FACTOR)


def test_settings_short_blob_is_empty_and_errors() -> None:
    assert parse_settings(b"") == {} and parse_settings(b"\x01") == {}
    for bad in ("00 02 34 00", "09 01 00 00", "00"[:0] + "05 01 00 00 80", "00 01 34"):
        with pytest.raises(ParseError):
            parse_settings(h(bad))


# ---------------------------------------------------------------- device clock


def test_device_clock_first_frame_and_latency_minimum() -> None:
    clock = DeviceClock(window_s=10.0)
    assert not clock.synced
    with pytest.raises(RuntimeError):
        clock.to_host_scalar(0)
    dev0 = 599_616_000_000_000_000  # H10 default 2019-01-01 clock
    clock.observe(dev0, host_receive_s=1_700_000_000.050)  # 50 ms latency
    assert clock.to_host_scalar(dev0) == pytest.approx(1_700_000_000.050)
    clock.observe(dev0 + 1_000_000_000, host_receive_s=1_700_000_001.010)  # 10 ms latency
    assert clock.to_host_scalar(dev0) == pytest.approx(1_700_000_000.010, abs=1e-6)
    clock.observe(dev0 + 2_000_000_000, host_receive_s=1_700_000_002.080)  # slower: ignored
    assert clock.to_host_scalar(dev0) == pytest.approx(1_700_000_000.010, abs=1e-6)
    arr = clock.to_host_s(np.array([dev0, dev0 + 500_000_000], dtype=np.int64))
    assert arr.tolist() == pytest.approx([1_700_000_000.010, 1_700_000_000.510], abs=1e-6)


def test_device_clock_follows_drift_as_window_slides() -> None:
    clock = DeviceClock(window_s=5.0)
    dev = 10**18
    # device clock runs 100 ppm slow: the offset grows by 100 µs per second; latency 20 ms fixed
    for k in range(60):
        clock.observe(dev + k * 999_900_000, host_receive_s=1_000.0 + k + 0.020)
    expect = (1_000.0 + 59 + 0.020) * 1e9 - (dev + 59 * 999_900_000)
    assert clock.offset_ns is not None
    assert abs(clock.offset_ns - expect) < 1e6  # within the window's drift (<= 0.5 ms)


def test_device_clock_resets_on_jump() -> None:
    clock = DeviceClock(window_s=60.0, jump_threshold_s=5.0)
    clock.observe(10**18, host_receive_s=100.0)
    clock.observe(10**18 - 3_600 * 10**9, host_receive_s=101.0)  # device clock set back 1 h
    assert clock.resets == 1
    assert clock.to_host_scalar(10**18 - 3_600 * 10**9) == pytest.approx(101.0)


def test_device_clock_uses_injected_now() -> None:
    clock = DeviceClock(now=lambda: 42.0)
    clock.observe(0)
    assert clock.to_host_scalar(1_000_000_000) == pytest.approx(43.0)


def test_decoder_settings_resolution_does_not_change_frame_layout() -> None:
    # a negotiated 16-bit RESOLUTION must not break float32 (type 1) gyro frames, as in the SDK
    dec = PmdDecoder()
    dec.configure(MeasurementType.GYRO, sample_rate=52, resolution=16, channels=3)
    frame = dec.decode(header(5, 2_000_000_000, 0x81) + GYRO_C1_CONTENT)
    assert frame.samples[0].tolist() == [1.0, 10.0, 20.0]
    assert dec.config(MeasurementType.GYRO).resolution == 16
    dec.configure(MeasurementType.ACC, sample_rate=52, channels=2, override_layout=True)
    forced = dec.decode(header(2, 10**12, 0x81) + encode_delta_content([[5, 6], [7, 8]], 16, 3))
    assert forced.samples.tolist() == [[5, 6], [7, 8]]
