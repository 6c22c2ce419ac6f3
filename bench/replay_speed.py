"""Replay throughput: hours of 100 Hz accelerometer processed per CPU-second.

A synthetic recording (alternating 5 min walking at 1.6–2.0 steps/s and 2 min rest, trunk-like
acceleration with noise, 100 Hz, gravity included) is built in memory and run through
:func:`agent.replay.replay_readings`, i.e. the exact path of ``agent replay`` after file parsing:
1 s blocks, ticks every recorded second, the full :class:`~agent.processing.pipeline.Processor`
(step detection, cadence, distance, floors, ACC decimation to 4 Hz, emission policy) and the
re-ordering heap. CPU time is ``time.process_time``; the figure is the median of ``--runs`` runs.
With ``--dataset DIR`` a real recording (or every recording under DIR) is used instead, which
includes CSV parsing in a separate figure.

Target (issue 5): ≥ 1000× real time, i.e. ≥ 0.28 h of data per CPU-second.

Usage: ``python bench/replay_speed.py [--hours 2] [--runs 5] [--gyro] [--dataset DIR]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.processing.pipeline import ProcessingConfig
from agent.replay import replay_readings
from sensors.recording import Recording, iter_recordings, read_recording

T0 = 1_767_772_800.0


def synthetic(hours: float, fs: float = 100.0, gyro: bool = False, seed: int = 0) -> Recording:
    """In-memory recording of alternating walking and rest."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 * fs)
    t = T0 + np.arange(n) / fs
    cycle = (t - T0) % 420.0
    walking = cycle < 300.0
    step_hz = 1.6 + 0.4 * ((t - T0) // 420.0 % 3) / 2
    ph = 2 * np.pi * step_hz * (t - T0)
    amp = np.where(walking, 1.0, 0.0)
    xyz = np.empty((n, 3))
    xyz[:, 0] = amp * 0.8 * np.sin(ph / 2) + rng.normal(0, 0.1, n)
    xyz[:, 1] = amp * 0.5 * np.sin(ph + 1) + rng.normal(0, 0.1, n)
    xyz[:, 2] = 9.81 + amp * (2.5 * np.sin(ph) + 0.8 * np.sin(2 * ph + 0.5)) + rng.normal(
        0, 0.1, n
    )
    extra = {}
    if gyro:
        extra = {"gyro_t": t, "gyro": xyz[:, ::-1] * 0.05}
    return Recording(path=Path("<synthetic>"), meta={"format": "agent-recording/1"},
                     acc_t=t, acc=xyz, **extra)  # type: ignore[arg-type]


def process(rec: Recording) -> tuple[float, float, int]:
    """(data hours, CPU seconds, readings) of one replay."""
    assert rec.acc_t is not None
    hours = float(rec.acc_t[-1] - rec.acc_t[0]) / 3600.0
    cfg = ProcessingConfig(totals_reset="never")
    c0 = time.process_time()
    count = sum(1 for _ in replay_readings(rec, cfg))
    return hours, time.process_time() - c0, count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gyro", action="store_true", help="add a 100 Hz gyroscope stream")
    ap.add_argument("--dataset", type=Path, help="use real recording(s) instead")
    args = ap.parse_args()

    if args.dataset:
        recs, parse_s = [], 0.0
        for d in iter_recordings(args.dataset):
            c0 = time.process_time()
            recs.append(read_recording(d))
            parse_s += time.process_time() - c0
        recs = [r for r in recs if r.acc_t is not None and r.acc_t.size > 1]
        data_h = sum(float(r.acc_t[-1] - r.acc_t[0]) for r in recs if r.acc_t is not None) / 3600
        n = sum(r.acc_t.size for r in recs if r.acc_t is not None)
        print(f"{len(recs)} recording(s), {data_h:.2f} h, {n} acc samples "
              f"({n / (data_h * 3600):.0f} Hz mean); parsing {parse_s:.2f} CPU-s")
    else:
        recs = [synthetic(args.hours, gyro=args.gyro)]
        print(f"synthetic: {args.hours} h of 100 Hz accelerometer"
              + (" + 100 Hz gyroscope" if args.gyro else ""))

    figures = []
    for run in range(args.runs):
        hours = cpu = 0.0
        readings = 0
        for rec in recs:
            h, c, k = process(rec)
            hours, cpu, readings = hours + h, cpu + c, readings + k
        rate = hours / cpu
        figures.append(rate)
        print(f"run {run + 1}: {hours:.2f} h in {cpu:.2f} CPU-s = {rate:.2f} h/CPU-s "
              f"({rate * 3600:.0f}× real time), {readings} readings")
    med = statistics.median(figures)
    print(f"median: {med:.2f} hours of data per CPU-second = {med * 3600:.0f}× real time "
          f"(target ≥ 1000×)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
