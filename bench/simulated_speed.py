"""How fast the simulated wearer generates data (prints figures; never asserted in tests).

Run from the repository root: ``.venv/bin/python -m bench.simulated_speed``. Reports CPU seconds
per simulated hour for the pure :func:`sensors.simulated.simulate` at several rates, and the
throughput of the streaming core (:class:`sensors.simulated.SimulatedStream`) in multiples of real
time.
"""

from __future__ import annotations

import time

from sensors.simulated import SimulatedStream, SimulationConfig, simulate


def bench_simulate() -> None:
    cases = [
        ("acc 25 Hz only", SimulationConfig(acc_rate_hz=25.0, gyro_rate_hz=None)),
        ("acc 100 Hz, gyro off", SimulationConfig(gyro_rate_hz=None)),
        ("acc+gyro 100 Hz, HR, baro, RSC", SimulationConfig(rsc=True)),
        ("acc+gyro 200 Hz, HR, baro", SimulationConfig(acc_rate_hz=200.0, gyro_rate_hz=200.0)),
    ]
    for label, cfg in cases:
        t0 = time.process_time()
        rec = simulate(cfg, 3600.0)
        cpu = time.process_time() - t0
        print(
            f"simulate 1 h, {label:34s}: {cpu:6.3f} CPU-s "
            f"({rec.acc.shape[0]} acc samples, {rec.truth.steps} steps)"
        )


def bench_stream() -> None:
    for block_s in (0.1, 1.0):
        cfg = SimulationConfig(block_s=block_s, duration_s=1800.0, rsc=True, start_t=0.0)
        stream = SimulatedStream(cfg, 0.0)
        t0 = time.process_time()
        n = sum(len(samples) for _, samples in stream.blocks())
        cpu = time.process_time() - t0
        print(
            f"stream 30 min, 100 Hz acc+gyro, block {block_s:3.1f} s: {cpu:6.3f} CPU-s, "
            f"{1800.0 / cpu:8.0f}x real time, {n} samples emitted"
        )


if __name__ == "__main__":
    bench_simulate()
    bench_stream()
