"""A producer process for the SIGKILL test: appends numbered readings and says which are durable.

Run as ``python -m tests.reliability.producer_child --outbox PATH --url WS --rest HTTP
--api-key-file PATH --token-log PATH --start N --count M``. For each number ``i`` from ``start``
it appends reading ``i`` with :meth:`Outbox.append_durable` (through
:func:`agent.uplink.run_producer`) and only then prints ``appended i`` (flushed), so every
number on stdout is on disk. After the last one it waits until the relay confirmed everything,
prints ``done`` and exits 0. Logs (DEBUG, websockets frames included) go to stderr, which the
parent scans for secrets; every token minted is written to ``--token-log`` so that scan knows
what to look for (a test-only aid: real agents never write tokens anywhere).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from agent.backoff import Backoff
from agent.readings import Reading
from agent.tokens import RestToken
from agent.uplink import run_producer
from tests.reliability.conftest import DEV_ID, USER_ID, numbered


class LoggedTokens:
    """RestToken that records each token in a file (for the parent's secret scan only)."""

    def __init__(self, inner: RestToken, log_path: Path) -> None:
        self.inner = inner
        self.log_path = log_path

    async def get(self) -> str:
        token = await self.inner.get()
        with self.log_path.open("a") as f:
            f.write(token + "\n")
        return token


async def numbers(start: int, count: int) -> AsyncIterator[Sequence[Reading]]:
    for i in range(start, start + count):
        yield [numbered(i)]


def appended(batch: Sequence[Reading]) -> None:
    for reading in batch:
        assert reading.val is not None
        sys.stdout.write(f"appended {int(reading.val)}\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> int:
    tokens = LoggedTokens(
        RestToken(args.rest, USER_ID, DEV_ID, api_key_file=args.api_key_file, timeout_s=2.0),
        args.token_log,
    )
    rng = random.Random(args.start)
    await run_producer(
        args.url, tokens, args.outbox, numbers(args.start, args.count),
        on_appended=appended, grace_s=2.0,
        backoff=Backoff(base_s=0.02, cap_s=0.2, stable_after_s=60.0, rng=rng.random),
        barrier_spacing_s=0.02, max_in_flight=args.max_in_flight, send_batch=50,
        open_timeout_s=2.0,
    )
    print("done", flush=True)
    return 0


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outbox", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rest", required=True)
    parser.add_argument("--api-key-file", type=Path, required=True)
    parser.add_argument("--token-log", type=Path, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--max-in-flight", type=int, default=200)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.DEBUG, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise SystemExit(asyncio.run(main(parse())))
