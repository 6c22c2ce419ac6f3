"""Append throughput of the outbox with full durability (WAL, synchronous=FULL, awaited commit).

Prints readings/s (median of ``--runs``) for three shapes of load:

* ``bulk``: one ``append_durable`` of ``--n`` readings (serialisation + one transaction);
* ``blocks``: sequential ``append_durable`` calls of ``--block`` readings (a sensor delivering a
  PMD frame's worth at a time and waiting for each commit: one fsync per call);
* ``group``: ``--writers`` concurrent writers doing the same (group commit shares fsyncs).

Readings are 80 % ACCELERATION, 20 % HEART_RATE. Serialising SUBMIT text is part of the cost
(:meth:`agent.readings.Reading.submit_text`).

Run: ``PYTHONPATH=. .venv/bin/python bench/outbox_append.py [--n 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from agent.outbox import Outbox
from agent.protocol import DataType
from agent.readings import Reading


def make_readings(n: int, start: int = 0) -> list[Reading]:
    out = []
    for i in range(start, start + n):
        t = 1_700_000_000.0 + i * 0.005
        if i % 5 == 4:
            out.append(Reading(DataType.HEART_RATE, t, val=60 + i % 40))
        else:
            out.append(Reading(DataType.ACCELERATION, t, vec=(0.01 * (i % 300), -9.81, 0.25)))
    return out


async def bulk(path: Path, n: int) -> float:
    readings = make_readings(n)
    box = await Outbox.open(path)
    t0 = time.perf_counter()
    await box.append_durable(readings)
    dt = time.perf_counter() - t0
    await box.close()
    return n / dt


async def blocks(path: Path, n: int, block: int, writers: int) -> float:
    per_writer = n // writers
    chunks = [
        [make_readings(block, w * per_writer + k) for k in range(0, per_writer, block)]
        for w in range(writers)
    ]
    box = await Outbox.open(path)

    async def writer(mine: list[list[Reading]]) -> None:
        for chunk in mine:
            await box.append_durable(chunk)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(c) for c in chunks))
    dt = time.perf_counter() - t0
    total = sum(len(c) for w in chunks for c in w)
    await box.close()
    return total / dt


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="readings per run (default 100000)")
    ap.add_argument("--block", type=int, default=50, help="readings per append (default 50)")
    ap.add_argument("--writers", type=int, default=8, help="concurrent writers for 'group'")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to put the database")
    args = ap.parse_args()
    results: dict[str, list[float]] = {"bulk": [], "blocks": [], "group": []}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            d = Path(tmp)
            results["bulk"].append(await bulk(d / f"bulk{run}.sqlite3", args.n))
            results["blocks"].append(
                await blocks(d / f"blocks{run}.sqlite3", args.n // 5, args.block, 1)
            )
            results["group"].append(
                await blocks(d / f"group{run}.sqlite3", args.n // 5, args.block, args.writers)
            )
    print(f"outbox append, durable (synchronous=FULL), median of {args.runs} runs:")
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"  bulk   ({args.n} in one call):       {med['bulk']:>10,.0f} readings/s")
    print(f"  blocks ({args.block}/call, 1 writer):      {med['blocks']:>10,.0f} readings/s")
    group = f"group  ({args.block}/call, {args.writers} writers):"
    print(f"  {group:36s}{med['group']:>10,.0f} readings/s")


if __name__ == "__main__":
    asyncio.run(main())
