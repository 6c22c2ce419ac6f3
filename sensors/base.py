"""Raw sample values and the interface every sensor source implements.

Theory of operation: a source (BLE strap, simulated wearer, recording, IIO barometer) runs as one
asyncio task and calls ``emit(sample)`` for every block of samples it produced. ``emit`` is a plain,
non-blocking callable (usually ``queue.put_nowait``) so a source never waits on processing.

All values are in SI units and all times are host Unix time in seconds (float64):

* accelerometer: m/s², gravity included, device axes;
* gyroscope: rad/s;
* pressure: hPa;
* heart rate: beats per minute, RR intervals in milliseconds.

Samples are frozen dataclasses; arrays inside them must not be mutated after construction.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

import numpy as np
from numpy.typing import NDArray

FloatArray: TypeAlias = NDArray[np.float64]

#: Standard gravity, used to convert Polar's milli-g into m/s².
STANDARD_GRAVITY = 9.80665


@dataclass(frozen=True, slots=True, eq=False)
class AccBlock:
    """A block of accelerometer samples: ``t`` shape (n,), ``xyz`` shape (n, 3) in m/s²."""

    t: FloatArray
    xyz: FloatArray
    source: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class GyroBlock:
    """A block of gyroscope samples: ``t`` shape (n,), ``xyz`` shape (n, 3) in rad/s."""

    t: FloatArray
    xyz: FloatArray
    source: str = ""


@dataclass(frozen=True, slots=True)
class HeartRateSample:
    """One Heart Rate Measurement notification (or one recorded row)."""

    t: float
    bpm: float
    rr_ms: tuple[float, ...] = ()
    contact: bool | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class PressureSample:
    """Barometric pressure in hPa."""

    t: float
    hpa: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class RscSample:
    """Running Speed and Cadence measurement from a foot pod.

    ``cadence_spm`` is in steps per minute as the RSC characteristic reports it;
    ``total_m`` is the pod's own cumulative distance when it reports one.
    """

    t: float
    speed_mps: float
    cadence_spm: float
    stride_m: float | None = None
    total_m: float | None = None
    running: bool | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class BatterySample:
    """Battery level of a device in percent."""

    t: float
    percent: int
    source: str = ""


SensorSample: TypeAlias = (
    AccBlock | GyroBlock | HeartRateSample | PressureSample | RscSample | BatterySample
)
Emit: TypeAlias = Callable[[SensorSample], None]


class SourceState(enum.StrEnum):
    """Lifecycle of a source, as shown by ``agent status``."""

    IDLE = "idle"
    SCANNING = "scanning"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(slots=True)
class SourceStatus:
    """Mutable, operator-facing status of one source (not a wire value)."""

    name: str
    state: SourceState = SourceState.IDLE
    battery_percent: int | None = None
    last_sample_t: float | None = None
    error: str | None = None
    malformed: int = 0
    reconnects: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready view for ``agent status --json``."""
        return {
            "name": self.name,
            "state": str(self.state),
            "battery_percent": self.battery_percent,
            "last_sample_t": self.last_sample_t,
            "error": self.error,
            "malformed": self.malformed,
            "reconnects": self.reconnects,
            **self.extra,
        }


class Source(Protocol):
    """What the daemon needs from any sensor source."""

    @property
    def status(self) -> SourceStatus:
        """Current status, read by the daemon for ``agent status``."""
        ...

    async def run(self, emit: Emit) -> None:
        """Produce samples until cancelled; handle own reconnects; never raise for bad input."""
        ...
