"""CPU fraction of live processing at ACC 200 Hz + GYRO 200 Hz + HR 1 Hz.

Blocks arrive as a Polar strap delivers them (PMD notifications of 36 samples ≈ 0.18 s at 200 Hz,
ACC and GYRO interleaved), one heart-rate notification per second with its RR intervals, and
:meth:`Processor.tick` once a second, exactly as the daemon drives the
:class:`~agent.processing.pipeline.Processor`. Input blocks are generated before timing starts;
the figure is ``time.process_time()`` spent in ``feed``/``tick`` divided by the simulated duration
(median of ``--runs``), i.e. the share of one core that processing needs. Queueing, outbox and
network are not included (see their own benchmarks).

Usage: ``python bench/live_cpu.py [--minutes 20] [--runs 5] [--block 36]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.processing.pipeline import ProcessingConfig, Processor
from sensors.base import AccBlock, GyroBlock, HeartRateSample, SensorSample

T0 = 1_767_772_800.0
FS = 200.0


def build(minutes: float, block: int, seed: int = 0) -> list[SensorSample | float]:
    """Samples (and tick times as floats) in arrival order; walking half of the time."""
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * FS)
    t = T0 + np.arange(n) / FS
    walking = ((t - T0) % 240.0) < 120.0
    ph = 2 * np.pi * 1.8 * (t - T0)
    acc = np.empty((n, 3))
    acc[:, 0] = walking * 0.8 * np.sin(ph / 2) + rng.normal(0, 0.1, n)
    acc[:, 1] = walking * 0.5 * np.sin(ph + 1) + rng.normal(0, 0.1, n)
    acc[:, 2] = 9.81 + walking * (2.5 * np.sin(ph) + 0.8 * np.sin(2 * ph)) + rng.normal(0, 0.1, n)
    gyro = rng.normal(0, 0.05, (n, 3)) + walking[:, None] * 0.3 * np.sin(ph)[:, None]
    events: list[SensorSample | float] = []
    next_s = T0 + 1.0
    for i in range(0, n, block):
        end = float(t[min(i + block, n) - 1])
        while next_s <= end:
            events.append(HeartRateSample(next_s, 75.0, (790.0, 805.0)))
            events.append(next_s)  # tick
            next_s += 1.0
        events.append(AccBlock(t[i : i + block], acc[i : i + block]))
        events.append(GyroBlock(t[i : i + block], gyro[i : i + block]))
    return events


def run_once(events: list[SensorSample | float], duration_s: float) -> tuple[float, int]:
    proc = Processor(ProcessingConfig(totals_reset="never"))
    readings = 0
    c0 = time.process_time()
    for e in events:
        readings += len(proc.tick(e) if isinstance(e, float) else proc.feed(e))
    cpu = time.process_time() - c0
    return cpu / duration_s, readings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--block", type=int, default=36, help="samples per PMD notification")
    args = ap.parse_args()
    events = build(args.minutes, args.block)
    duration = args.minutes * 60.0
    fractions = []
    for run in range(args.runs):
        frac, readings = run_once(events, duration)
        fractions.append(frac)
        print(f"run {run + 1}: {frac * 100:.3f} % of one core ({readings} readings)")
    med = statistics.median(fractions)
    print(f"median: {med * 100:.3f} % of one core for ACC 200 Hz + GYRO 200 Hz + HR 1 Hz "
          f"in {args.block}-sample blocks ({FS / args.block * 2:.1f} blocks/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
