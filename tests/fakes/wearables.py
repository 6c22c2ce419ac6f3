"""Virtual wearables served on BlueZoo: an H10-like strap, a Verity-like sensor, a foot pod and a
pressure sensor.

Each wearable is a :class:`~tests.fakes.gatt_server.GattApplication` plus a background task that
streams notifications while a central is subscribed. Byte layouts are written out here by hand
(not with the project's parsers) so the end-to-end tests check the parsers against an independent
encoder; the PMD control-point replies are the real exchanges quoted in REFERENCE.md 2.3.

Test controls: ``go_silent()`` (zombie link: stop notifying until the next subscription),
``inject(char, bytes)`` (malformed notifications), ``stream_started`` events, and the list of
control-point commands received (``pmd_cp.writes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time

import numpy as np
from numpy.typing import NDArray

from tests.fakes.gatt_server import GattApplication, GattCharacteristic

HRS = "0000180d-0000-1000-8000-00805f9b34fb"
HRM = "00002a37-0000-1000-8000-00805f9b34fb"
BAS = "0000180f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"
RSCS = "00001814-0000-1000-8000-00805f9b34fb"
RSC_MEASUREMENT = "00002a53-0000-1000-8000-00805f9b34fb"
ESS = "0000181a-0000-1000-8000-00805f9b34fb"
PRESSURE = "00002a6d-0000-1000-8000-00805f9b34fb"
PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CP = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"

#: Polar epoch 2000-01-01 in Unix ns; the device clock counts ns since then.
POLAR_EPOCH_NS = 946_684_800_000_000_000

#: GET ACC reply of a real H10 (REFERENCE 2.3): 25/50/100/200 Hz, 16 bit, ±2/4/8 G.
H10_ACC_SETTINGS = bytes.fromhex(
    "F0 01 02 00 00 00 04 19 00 32 00 64 00 C8 00 01 01 10 00 02 03 02 00 04 00 08 00"
)
#: GET ACC / GYRO replies of a Verity Sense: 52 Hz, 16 bit, ±8 G / ±250..2000 deg/s, 3 channels.
VERITY_ACC_SETTINGS = bytes.fromhex("F001020000000134000101100002010800040103")
VERITY_GYRO_SETTINGS = bytes.fromhex(
    "F0 01 05 00 00 00 01 34 00 01 01 10 00 02 04 FA 00 F4 01 E8 03 D0 07 04 01 03"
)
#: FACTOR values delivered in Verity START replies (float32 LE).
VERITY_ACC_FACTOR: float = struct.unpack("<f", bytes.fromhex("40DA7F39"))[0]
VERITY_GYRO_FACTOR = float(np.float32(2000.0 / 32768.0))

#: Fixed HR notification of a real H10 capture: 72 bpm, one RR of 812/1024 s.
H10_HR_NOTIFICATION = bytes.fromhex("10482C03")

#: 3.0 m/s, 180 /min, stride 1.00 m, total 123.4 m, running (RSC flags 0x07).
RSC_NOTIFICATION = bytes([0x07]) + struct.pack("<HBHI", 768, 180, 100, 1234)
#: 1013.25 hPa as ESS Pressure (uint32, 0.1 Pa).
PRESSURE_NOTIFICATION = struct.pack("<I", 1_013_250)


def acc_pattern(start: int, n: int) -> NDArray[np.int64]:
    """Deterministic mG samples: x ramps, y fixed, z ≈ 1 g, so tests can check decoded values."""
    k = np.arange(start, start + n, dtype=np.int64)
    return np.stack([(k % 50) - 25, np.full(n, -8), 1000 + (k % 3)], axis=1)


class Wearable:
    """Base: one GATT application, one streaming task, silence control."""

    def __init__(self, bus_address: str, adapter_path: str, name: str, period_s: float) -> None:
        self.app = GattApplication(bus_address, adapter_path, name)
        self.name = name
        self.period_s = period_s
        self.silent = False
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self._marks: dict[int, int] = {}

    @property
    def notify_chars(self) -> list[GattCharacteristic]:
        raise NotImplementedError

    async def start(self) -> None:
        await self.app.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.app.stop()

    def go_silent(self) -> None:
        """Zombie link: keep the connection but send nothing until a central re-subscribes."""
        self.silent = True
        self._marks = {id(c): c.start_count for c in self.notify_chars}

    def inject(self, char: GattCharacteristic, payload: bytes) -> bool:
        """Send one arbitrary (e.g. malformed) notification."""
        return char.notify(payload)

    def _check_silence(self) -> None:
        if self.silent and any(
            c.start_count > self._marks.get(id(c), c.start_count) for c in self.notify_chars
        ):
            self.silent = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self._check_silence()
            if not self.silent:
                self.tick()

    def tick(self) -> None:
        raise NotImplementedError


class H10Strap(Wearable):
    """Heart rate (with RR) + battery + PMD (raw ACC frame type 1, int16 mG)."""

    def __init__(
        self,
        bus_address: str,
        adapter_path: str,
        name: str = "Polar H10 0A1B2C3D",
        period_s: float = 0.05,
        battery: int = 87,
    ) -> None:
        super().__init__(bus_address, adapter_path, name, period_s)
        app = self.app
        hrs = app.add_service(HRS)
        self.hrm = app.add_characteristic(hrs, HRM, ["notify"])
        bas = app.add_service(BAS, advertise=False)
        self.battery = battery
        self.battery_char = app.add_characteristic(
            bas, BATTERY_LEVEL, ["read", "notify"], on_read=lambda: bytes([self.battery])
        )
        pmd = app.add_service(PMD_SERVICE)
        self.pmd_cp = app.add_characteristic(
            pmd, PMD_CP, ["read", "write", "indicate"], on_read=self._features, on_write=self._on_cp
        )
        self.pmd_data = app.add_characteristic(pmd, PMD_DATA, ["notify"])
        self.acc_rate: int | None = None
        self.acc_started = asyncio.Event()
        self.acc_stopped = asyncio.Event()
        self._acc_index = 0
        self._t0_ns = time.time_ns()
        self._device_t0_ns = 599_616_000_000_000_000  # H10 default clock: 2019-01-01

    @property
    def notify_chars(self) -> list[GattCharacteristic]:
        return [self.hrm, self.pmd_data]

    def _features(self) -> bytes:
        return bytes([0x0F, 0x05, 0x00])  # ECG + ACC

    def device_now_ns(self) -> int:
        return self._device_t0_ns + (time.time_ns() - self._t0_ns)

    async def _on_cp(self, cmd: bytes) -> None:
        # The reply is an indication sent after the write completes, as on the real strap.
        reply = self.cp_reply(cmd)
        asyncio.get_running_loop().call_soon(self.pmd_cp.notify, reply)

    def cp_reply(self, cmd: bytes) -> bytes:
        op = cmd[0] if cmd else 0
        mtype = cmd[1] if len(cmd) > 1 else 0
        if op == 0x01:
            if mtype == 0x02:
                return H10_ACC_SETTINGS
            return bytes([0xF0, 0x01, mtype, 0x03, 0x00])  # NOT_SUPPORTED
        if op == 0x02 and mtype == 0x02:
            rate = self._parse_rate(cmd[2:])
            if rate not in (25, 50, 100, 200):
                return bytes([0xF0, 0x02, 0x02, 0x08, 0x00])  # INVALID_SAMPLE_RATE
            # Stream only after the START reply went out, as the strap does.
            asyncio.get_running_loop().call_soon(self._acc_on, rate)
            return bytes.fromhex("F00202000001")
        if op == 0x03:
            if mtype == 0x02:
                self.acc_rate = None
                self.acc_started.clear()
                self.acc_stopped.set()
            return bytes([0xF0, 0x03, mtype, 0x00, 0x00])
        return bytes([0xF0, op, mtype, 0x01, 0x00])  # INVALID_OP_CODE

    def _acc_on(self, rate: int) -> None:
        self.acc_rate = rate
        self.acc_stopped.clear()
        self.acc_started.set()

    @staticmethod
    def _parse_rate(tlv: bytes) -> int | None:
        i = 0
        while i + 2 <= len(tlv):
            kind, count = tlv[i], tlv[i + 1]
            size = {0: 2, 1: 2, 2: 2, 3: 4, 4: 1, 5: 4}.get(kind, 2)
            if kind == 0 and count >= 1:
                return int.from_bytes(tlv[i + 2 : i + 4], "little")
            i += 2 + count * size
        return None

    def tick(self) -> None:
        self.hrm.notify(H10_HR_NOTIFICATION)
        self.sent += 1
        if self.acc_rate is not None and self.pmd_data.notifying:
            n = max(1, round(self.acc_rate * self.period_s))
            samples = acc_pattern(self._acc_index, n)
            self._acc_index += n
            frame = (
                bytes([0x02])
                + struct.pack("<Q", self.device_now_ns())
                + bytes([0x01])
                + samples.astype("<i2").tobytes()
            )
            self.pmd_data.notify(frame)


class VeritySensor(Wearable):
    """Heart rate + PMD with delta-compressed ACC (type 0, FACTOR) and GYRO (type 0, FACTOR)."""

    def __init__(
        self,
        bus_address: str,
        adapter_path: str,
        name: str = "Polar Sense 1A2B3C4D",
        period_s: float = 0.05,
    ) -> None:
        super().__init__(bus_address, adapter_path, name, period_s)
        app = self.app
        hrs = app.add_service(HRS)
        self.hrm = app.add_characteristic(hrs, HRM, ["notify"])
        pmd = app.add_service(PMD_SERVICE)
        self.pmd_cp = app.add_characteristic(
            pmd, PMD_CP, ["read", "write", "indicate"], on_write=self._on_cp
        )
        self.pmd_data = app.add_characteristic(pmd, PMD_DATA, ["notify"])
        self.streams: set[int] = set()
        #: counts sent per measurement type, frame by frame, for the tests to compare with
        self.sent_counts: dict[int, list[NDArray[np.int64]]] = {}
        self._index = 0
        self._t0_ns = time.time_ns()

    @property
    def notify_chars(self) -> list[GattCharacteristic]:
        return [self.hrm, self.pmd_data]

    async def _on_cp(self, cmd: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.pmd_cp.notify, self.cp_reply(cmd))

    def cp_reply(self, cmd: bytes) -> bytes:
        op, mtype = cmd[0], cmd[1]
        if op == 0x01:
            if mtype == 0x02:
                return VERITY_ACC_SETTINGS
            if mtype == 0x05:
                return VERITY_GYRO_SETTINGS
            return bytes([0xF0, 0x01, mtype, 0x03, 0x00])
        if op == 0x02 and mtype in (0x02, 0x05):
            asyncio.get_running_loop().call_soon(self.streams.add, mtype)
            factor = VERITY_ACC_FACTOR if mtype == 0x02 else VERITY_GYRO_FACTOR
            return bytes([0xF0, 0x02, mtype, 0x00, 0x00, 0x05, 0x01]) + struct.pack("<f", factor)
        if op == 0x03:
            self.streams.discard(mtype)
            return bytes([0xF0, 0x03, mtype, 0x00, 0x00])
        return bytes([0xF0, op, mtype, 0x01, 0x00])

    def tick(self) -> None:
        self.hrm.notify(H10_HR_NOTIFICATION)
        self.sent += 1
        if not self.pmd_data.notifying:
            return
        ts = 700_000_000_000_000_000 + (time.time_ns() - self._t0_ns)
        n = 3  # 52 Hz × 0.05 s ≈ 3 samples per tick
        counts = self.counts(self._index, n)
        self._index += n
        for mtype in sorted(self.streams):
            if self.pmd_data.notify(self.delta_frame(mtype, ts, counts)):
                self.sent_counts.setdefault(mtype, []).append(counts)

    @staticmethod
    def counts(start: int, n: int) -> NDArray[np.int64]:
        """Raw counts (before FACTOR) whose deltas fit in 8 bits."""
        k = np.arange(start, start + n, dtype=np.int64)
        return np.stack([(k % 20) * 3 - 30, np.full(n, 400), 4096 - (k % 4)], axis=1)

    @staticmethod
    def delta_frame(mtype: int, ts_ns: int, counts: NDArray[np.int64]) -> bytes:
        """Compressed frame type 0: int16 reference sample, then one 8-bit delta block."""
        ref: bytes = counts[0].astype("<i2").tobytes()
        deltas = np.diff(counts, axis=0).astype(np.int8)
        body = ref + bytes([8, len(deltas)]) + deltas.tobytes() if len(deltas) else ref
        return bytes([mtype]) + struct.pack("<Q", ts_ns) + bytes([0x80]) + body


class FootPod(Wearable):
    """Running Speed and Cadence service only."""

    def __init__(
        self, bus_address: str, adapter_path: str, name: str = "Stryd Pod", period_s: float = 0.05
    ) -> None:
        super().__init__(bus_address, adapter_path, name, period_s)
        svc = self.app.add_service(RSCS)
        self.rsc = self.app.add_characteristic(svc, RSC_MEASUREMENT, ["notify"])
        bas = self.app.add_service(BAS, advertise=False)
        self.app.add_characteristic(bas, BATTERY_LEVEL, ["read"], on_read=lambda: bytes([55]))

    @property
    def notify_chars(self) -> list[GattCharacteristic]:
        return [self.rsc]

    def tick(self) -> None:
        if self.rsc.notify(RSC_NOTIFICATION):
            self.sent += 1


class PressureSensor(Wearable):
    """Environmental Sensing service with a notifying Pressure characteristic."""

    def __init__(
        self, bus_address: str, adapter_path: str, name: str = "Baro Tag", period_s: float = 0.05
    ) -> None:
        super().__init__(bus_address, adapter_path, name, period_s)
        svc = self.app.add_service(ESS)
        self.pressure = self.app.add_characteristic(
            svc, PRESSURE, ["read", "notify"], on_read=lambda: PRESSURE_NOTIFICATION
        )

    @property
    def notify_chars(self) -> list[GattCharacteristic]:
        return [self.pressure]

    def tick(self) -> None:
        if self.pressure.notify(PRESSURE_NOTIFICATION):
            self.sent += 1
