"""How long ``agent --help`` takes (target ≤ 0.3 s): median of repeated runs in fresh processes.

Usage: ``python bench/cli_startup.py [--runs N]``. Prints every run and the median; no assertion.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    agent = Path(sys.executable).with_name("agent")
    cmd = [str(agent), "--help"] if agent.exists() else [sys.executable, "-m", "agent", "--help"]
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    print("runs (s):", " ".join(f"{t:.3f}" for t in times))
    print(f"agent --help: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
          f"over {args.runs} runs")


if __name__ == "__main__":
    main()
