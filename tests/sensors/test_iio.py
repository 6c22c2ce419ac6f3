"""IIO barometer against a fake sysfs tree in tmp_path (the kernel ABI is just files)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sensors.base import PressureSample, SensorSample, SourceState
from sensors.iio import IioBarometer, IioError, _resolve, find_barometers

INTERVAL = 0.01


def make_device(root: Path, name: str, files: dict[str, str]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text("bmp280\n")
    for k, v in files.items():
        (d / k).write_text(v)
    return d


class Ticker:
    """Injected ``sleep``: no wall-clock waiting; every poll cycle wakes the test."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.changed = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.changed.set()
        await asyncio.sleep(0)

    async def until(self, pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not pred():
                self.changed.clear()
                await self.changed.wait()


class Sink:
    def __init__(self) -> None:
        self.samples: list[SensorSample] = []
        self.changed = asyncio.Event()

    def __call__(self, s: SensorSample) -> None:
        self.samples.append(s)
        self.changed.set()

    async def until_count(self, n: int) -> None:
        async with asyncio.timeout(5):
            while len(self.samples) < n:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def running(src: IioBarometer, sink: Sink) -> AsyncIterator[None]:
    task = asyncio.create_task(src.run(sink))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert src.status.state is SourceState.STOPPED


async def test_processed_kpa_becomes_hpa(tmp_path: Path) -> None:
    make_device(tmp_path, "iio:device0", {"in_temp_input": "21000\n"})  # no pressure channel
    make_device(tmp_path, "iio:device1", {"in_pressure_input": "101.325000\n"})
    sink = Sink()
    src = IioBarometer(interval_s=INTERVAL, root=str(tmp_path), clock=lambda: 42.0)
    async with running(src, sink):
        await sink.until_count(2)
        assert src.status.state is SourceState.STREAMING
    s = sink.samples[0]
    assert isinstance(s, PressureSample)
    assert (s.t, s.source) == (42.0, "iio-barometer")
    assert s.hpa == pytest.approx(1013.25)
    assert src.status.extra["iio_device"] == str(tmp_path / "iio:device1")


async def test_raw_scale_offset_channel(tmp_path: Path) -> None:
    make_device(
        tmp_path,
        "iio:device0",
        {
            "in_pressure_raw": "4000\n",
            "in_pressure_scale": "0.025\n",
            "in_pressure_offset": "50\n",
        },
    )
    sink = Sink()
    async with running(IioBarometer("iio:device0", interval_s=INTERVAL, root=str(tmp_path)), sink):
        await sink.until_count(1)
    s = sink.samples[0]
    assert isinstance(s, PressureSample)
    assert s.hpa == pytest.approx((4000 + 50) * 0.025 * 10)


async def test_bad_values_are_counted_and_skipped(tmp_path: Path) -> None:
    d = make_device(tmp_path, "iio:device0", {"in_pressure_input": "garbage\n"})
    sink = Sink()
    tick = Ticker()
    src = IioBarometer(
        str(d / "in_pressure_input"), interval_s=INTERVAL, root=str(tmp_path), sleep=tick
    )
    async with running(src, sink):
        await tick.until(lambda: src.status.malformed >= 2)
        (d / "in_pressure_input").write_text("5000.0\n")  # 50000 hPa: implausible
        await tick.until(lambda: src.status.malformed >= 3)
        (d / "in_pressure_input").write_text("99.5\n")
        await sink.until_count(1)
    assert not any(isinstance(s, PressureSample) and s.hpa > 1200 for s in sink.samples)
    s = sink.samples[0]
    assert isinstance(s, PressureSample) and s.hpa == pytest.approx(995.0)


async def test_missing_sensor_reports_error_then_recovers(tmp_path: Path) -> None:
    sink = Sink()
    tick = Ticker()
    src = IioBarometer(interval_s=INTERVAL, root=str(tmp_path), backoff_cap_s=30, sleep=tick)
    async with running(src, sink):
        await tick.until(lambda: len(tick.delays) >= 4)
        assert src.status.error is not None and "no IIO pressure sensor" in src.status.error
        assert src.status.state is SourceState.BACKOFF
        make_device(tmp_path, "iio:device3", {"in_pressure_input": "100.0\n"})  # hot-plugged
        await sink.until_count(1)
        assert src.status.error is None


def test_resolve_and_find(tmp_path: Path) -> None:
    assert find_barometers(tmp_path / "absent") == []
    d = make_device(tmp_path, "iio:device0", {"in_pressure_input": "100\n"})
    assert find_barometers(tmp_path) == [d]
    assert _resolve(str(d), tmp_path).processed
    with pytest.raises(IioError):
        _resolve(str(tmp_path / "iio:device9"), tmp_path)
    with pytest.raises(ValueError):
        IioBarometer(interval_s=0)
