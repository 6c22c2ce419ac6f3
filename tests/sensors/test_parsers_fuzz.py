"""Property tests: random bytes never make any parser raise anything but ParseError, and encoders
round-trip through their parsers. The numpy delta decoder is checked against a bit-by-bit oracle."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensors.gatt import (
    ParseError,
    parse_battery_level,
    parse_body_sensor_location,
    parse_heart_rate_measurement,
    parse_pressure,
    parse_rsc_measurement,
)
from sensors.gatt.ess import parse_temperature
from sensors.gatt.hrs import encode_heart_rate_measurement
from sensors.gatt.rsc import encode_rsc_measurement
from sensors.pmd import (
    PmdDecoder,
    decode_data_frame,
    decode_delta_content,
    encode_delta_content,
    parse_control_point_notification,
    parse_control_response,
    parse_features,
    parse_settings,
)
from tests.sensors.test_pmd import slow_decode_delta

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PARSERS: list[Callable[[bytes], object]] = [
    parse_heart_rate_measurement,
    parse_body_sensor_location,
    parse_battery_level,
    parse_rsc_measurement,
    parse_pressure,
    parse_temperature,
    parse_settings,
    parse_control_response,
    parse_control_point_notification,
    parse_features,
]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@FUZZ
@given(data=st.binary(max_size=64))
def test_gatt_and_cp_parsers_only_raise_parse_error(
    parser: Callable[[bytes], object], data: bytes
) -> None:
    with contextlib.suppress(ParseError):
        parser(data)


@st.composite
def pmd_frames(draw: st.DrawFn) -> bytes:
    """Frames with a plausible header (so the fuzzer reaches the decoders) and random content."""
    mtype = draw(st.sampled_from([0, 1, 2, 3, 5, 6, 0x42, 0x3F]))
    ftype = draw(st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x80, 0x81, 0x82, 0xFF]))
    ts = draw(st.integers(0, 2**64 - 1) | st.just(599_618_164_814_402_794))
    content = draw(st.binary(max_size=240))
    return bytes([mtype]) + ts.to_bytes(8, "little") + bytes([ftype]) + content


@FUZZ
@given(
    frame=pmd_frames() | st.binary(max_size=40),
    factor=st.sampled_from([1.0, 0.000244, 0.5, 1e30, 1e300, float("nan"), 0.0]),
    prev=st.none() | st.integers(0, 2**64 - 1),
    rate=st.none() | st.sampled_from([0.0, 1.0, 52.0, 200.0, 1e12, -5.0, float("inf")]),
    resolution=st.none() | st.integers(-2, 40),
    channels=st.none() | st.integers(-1, 5),
)
def test_decode_data_frame_only_raises_parse_error(
    frame: bytes,
    factor: float,
    prev: int | None,
    rate: float | None,
    resolution: int | None,
    channels: int | None,
) -> None:
    try:
        out = decode_data_frame(
            frame,
            factor=factor,
            resolution=resolution,
            channels=channels,
            previous_timestamp_ns=prev,
            sample_rate=rate,
        )
    except ParseError:
        return
    assert out.samples.ndim == 2
    assert out.sample_timestamps_ns.shape == (out.samples.shape[0],)
    if out.samples.shape[0]:
        assert out.sample_timestamps_ns[-1] == out.timestamp_ns


@FUZZ
@given(frames=st.lists(pmd_frames(), max_size=6))
def test_decoder_only_raises_parse_error(frames: list[bytes]) -> None:
    dec = PmdDecoder()
    dec.configure(2, sample_rate=52, factor=0.000244)
    dec.configure(5, sample_rate=52)
    for frame in frames:
        with contextlib.suppress(ParseError):
            dec.decode(frame)


@st.composite
def delta_contents(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """Well-formed delta content: a reference sample and blocks of random widths and bits."""
    channels = draw(st.integers(1, 4))
    resolution = draw(st.sampled_from([8, 12, 14, 16, 22, 24, 32]))
    nbytes = -(-resolution // 8)
    out = bytearray()
    for _ in range(channels):
        out += draw(st.integers(0, (1 << resolution) - 1)).to_bytes(nbytes, "little")
    for _ in range(draw(st.integers(0, 4))):
        width, count = draw(st.integers(0, 32)), draw(st.integers(0, 12))
        out += bytes([width, count])
        size = -(-(width * count * channels) // 8)
        out += draw(st.binary(min_size=size, max_size=size))
    return channels, resolution, bytes(out)


@FUZZ
@given(case=delta_contents())
def test_numpy_delta_decoder_matches_bitwise_oracle(case: tuple[int, int, bytes]) -> None:
    channels, resolution, content = case
    fast = decode_delta_content(content, channels, resolution)
    slow = slow_decode_delta(content, channels, resolution)
    wrapped = [[(x + 2**31) % 2**32 - 2**31 for x in row] for row in slow]  # Kotlin Int wrap
    assert fast.tolist() == wrapped


@FUZZ
@given(
    seed=st.integers(0, 2**32 - 1),
    channels=st.integers(1, 4),
    width=st.integers(1, 16),
    n=st.integers(1, 600),
    block=st.integers(1, 255),
)
def test_delta_encoding_round_trips(
    seed: int, channels: int, width: int, n: int, block: int
) -> None:
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    ref = rng.integers(-20000, 20001, size=(1, channels))
    deltas = rng.integers(lo, hi + 1, size=(n - 1, channels))
    samples = np.cumsum(np.concatenate([ref, deltas]), axis=0).astype(np.int64)
    resolution = 16 if np.abs(samples).max() < 2**15 else 24
    content = encode_delta_content(samples, resolution, width, block)
    assert decode_delta_content(content, channels, resolution).tolist() == samples.tolist()
    frame = bytes([2]) + (10**15).to_bytes(8, "little") + b"\x81" + content
    if channels == 3 and resolution == 16:
        out = decode_data_frame(frame, previous_timestamp_ns=10**15 - 10**9)
        assert out.samples.tolist() == samples.tolist()
        assert np.all(np.diff(out.sample_timestamps_ns) > 0)


@FUZZ
@given(
    bpm=st.integers(0, 0xFFFF),
    contact=st.none() | st.booleans(),
    energy=st.none() | st.integers(0, 0xFFFF),
    rr=st.lists(st.integers(0, 0xFFFF), max_size=9),
    force_wide=st.booleans(),
)
def test_heart_rate_round_trip(
    bpm: int, contact: bool | None, energy: int | None, rr: list[int], force_wide: bool
) -> None:
    wide = True if force_wide or bpm > 0xFF else None
    raw = encode_heart_rate_measurement(
        bpm, sensor_contact=contact, energy_expended_kj=energy, rr_1024=rr, uint16=wide
    )
    m = parse_heart_rate_measurement(raw)
    assert (m.bpm, m.sensor_contact, m.energy_expended_kj, m.rr_1024) == (
        bpm,
        contact,
        energy,
        tuple(rr),
    )
    assert m.rr_ms == tuple(v * 1000 / 1024 for v in rr)
    # any strict prefix that cuts a mandatory field is rejected, never mis-parsed silently
    for cut in range(len(raw)):
        try:
            parse_heart_rate_measurement(raw[:cut])
        except ParseError:
            continue
        # a prefix may only parse if it drops whole trailing RR values
        assert rr and (len(raw) - cut) % 2 == 0


@FUZZ
@given(
    speed=st.integers(0, 0xFFFF),
    cadence=st.integers(0, 0xFF),
    stride=st.none() | st.integers(0, 0xFFFF),
    distance=st.none() | st.integers(0, 0xFFFFFFFF),
    running=st.booleans(),
)
def test_rsc_round_trip(
    speed: int, cadence: int, stride: int | None, distance: int | None, running: bool
) -> None:
    raw = encode_rsc_measurement(
        speed, cadence, stride_cm=stride, total_distance_dm=distance, running=running
    )
    m = parse_rsc_measurement(raw)
    assert m.speed_raw == speed and m.speed_mps == speed / 256
    assert m.cadence_spm == cadence and m.running is running
    assert m.stride_m == (None if stride is None else stride / 100)
    assert m.total_distance_m == (None if distance is None else distance / 10)
