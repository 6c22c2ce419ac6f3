"""Linux IIO barometer (BMP280, BME280, LPS22HB, DPS310, MS5611 …) as a pressure source.

Theory of operation: the kernel's IIO subsystem exposes each sensor as
``/sys/bus/iio/devices/iio:deviceN``. Per the IIO sysfs ABI
(Documentation/ABI/testing/sysfs-bus-iio) the processed pressure ``in_pressure_input`` is in
**kilopascal**; drivers that only expose raw counts provide ``in_pressure_raw`` with
``in_pressure_scale`` (and optionally ``in_pressure_offset``) such that
``kPa = (raw + offset) × scale``. We poll every ``interval_s`` (reads go through a worker thread
because a sysfs read may block for a few ms on an I²C/SPI transfer) and emit hPa
(1 kPa = 10 hPa).

Failure policy: an unreadable file (sensor unplugged, driver unbound) sets ``status.error`` and
the source keeps polling with backoff; an unparsable value is counted in ``status.malformed``
and skipped. Neither ever stops the source.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.backoff import Backoff
from sensors.base import Emit, PressureSample, SourceState, SourceStatus

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/bus/iio/devices"
KPA_TO_HPA = 10.0
#: Plausible atmospheric range (Dead Sea to Everest summit and beyond, plus margin); a value
#: outside it means a wrong channel or a broken sensor, not weather.
MIN_HPA, MAX_HPA = 200.0, 1200.0


class IioError(Exception):
    """No usable IIO pressure channel was found or it could not be read."""


@dataclass(frozen=True, slots=True)
class _Channel:
    """Where and how to read pressure for one IIO device."""

    directory: Path
    processed: bool

    def read_kpa(self) -> float:
        if self.processed:
            return _read_float(self.directory / "in_pressure_input")
        raw = _read_float(self.directory / "in_pressure_raw")
        scale_file = self.directory / "in_pressure_scale"
        offset_file = self.directory / "in_pressure_offset"
        scale = _read_float(scale_file) if scale_file.exists() else 1.0
        offset = _read_float(offset_file) if offset_file.exists() else 0.0
        return (raw + offset) * scale


def _read_float(path: Path) -> float:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: not a number: {text[:32]!r}") from None


def find_barometers(root: str | Path = DEFAULT_ROOT) -> list[Path]:
    """IIO device directories under ``root`` that expose a pressure channel, sorted by name."""
    base = Path(root)
    if not base.is_dir():
        return []
    found = []
    for d in sorted(base.iterdir()):
        if (d / "in_pressure_input").exists() or (d / "in_pressure_raw").exists():
            found.append(d)
    return found


def _resolve(path: str | None, root: str | Path) -> _Channel:
    if path is None:
        devices = find_barometers(root)
        if not devices:
            raise IioError(f"no IIO pressure sensor under {root} (is the driver loaded?)")
        directory = devices[0]
    else:
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = Path(root) / p  # e.g. "iio:device0"
        directory = p.parent if p.name.startswith("in_pressure_") else p
    if (directory / "in_pressure_input").exists():
        return _Channel(directory, processed=True)
    if (directory / "in_pressure_raw").exists():
        return _Channel(directory, processed=False)
    raise IioError(f"{directory} has no in_pressure_input or in_pressure_raw")


class IioBarometer:
    """A :class:`sensors.base.Source` polling one IIO pressure channel.

    ``path`` may be a device directory (``/sys/bus/iio/devices/iio:device0``), a name under
    ``root`` (``iio:device0``), the ``in_pressure_input`` file itself, or None for the first
    device under ``root`` that has a pressure channel.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        interval_s: float = 1.0,
        root: str = DEFAULT_ROOT,
        name: str = "iio-barometer",
        clock: Callable[[], float] = time.time,
        backoff_cap_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.path = path
        self.root = root
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._status = SourceStatus(name=name)
        self._backoff = Backoff(base_s=interval_s, cap_s=max(backoff_cap_s, interval_s))
        self._logged: set[str] = set()

    @property
    def status(self) -> SourceStatus:
        return self._status

    async def run(self, emit: Emit) -> None:
        """Poll until cancelled; never raises for a missing or misbehaving sensor."""
        channel: _Channel | None = None
        try:
            while True:
                try:
                    if channel is None:
                        channel = await asyncio.to_thread(_resolve, self.path, self.root)
                        self._status.extra["iio_device"] = str(channel.directory)
                    kpa = await asyncio.to_thread(channel.read_kpa)
                except ValueError as exc:
                    self._bad_value(str(exc))
                except (OSError, IioError) as exc:
                    channel = None
                    self._status.state = SourceState.BACKOFF
                    self._status.error = str(exc)
                    self._log_once("io", "%s: %s", self._status.name, exc)
                    await self._sleep(self._backoff.next_delay())
                    continue
                else:
                    self._backoff.reset()
                    hpa = kpa * KPA_TO_HPA
                    if not math.isfinite(hpa) or not MIN_HPA <= hpa <= MAX_HPA:
                        self._bad_value(f"implausible pressure {hpa!r} hPa")
                    else:
                        t = self._clock()
                        self._status.state = SourceState.STREAMING
                        self._status.error = None
                        self._status.last_sample_t = t
                        emit(PressureSample(t=t, hpa=hpa, source=self._status.name))
                await self._sleep(self.interval_s)
        finally:
            self._status.state = SourceState.STOPPED

    def _bad_value(self, why: str) -> None:
        self._status.malformed += 1
        self._log_once(
            "value",
            "%s: skipping bad reading (%s); further ones are only counted",
            self._status.name,
            why,
        )

    def _log_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(msg, *args)
