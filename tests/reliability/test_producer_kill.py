"""The producer is SIGKILLed at random moments and restarted on the same outbox file.

The producer is a real process (``producer_child.py``) that prints a number only after the
reading is durably in its outbox. Whatever it printed must reach the relay in the end, however
often it was killed (mid-commit, mid-send, mid-handshake); duplicates may appear only as resends
of the unconfirmed window (plus, per kill, the one reading that was durable but not yet printed,
which the restarted producer appends again).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.relay.server import Relay
from tests.reliability.conftest import (
    API_KEY,
    REPO,
    WAIT_S,
    assert_no_secrets,
    check_delivery,
    env_without_secrets,
    inprocess_relay,
    log_lines,
    number_of,
    stored_rows,
)

SEED = 777
KILLS = 5
MAX_IN_FLIGHT = 200
FINAL_COUNT = 100


class Child:
    """One run of producer_child.py; ``printed`` holds the numbers it reported durable."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.printed: list[int] = []
        self.done = False

    @classmethod
    async def start(
        cls, tmp_path: Path, relay: Relay, api_key_file: Path, start: int, count: int
    ) -> Child:
        argv = [
            sys.executable, "-m", "tests.reliability.producer_child",
            "--outbox", str(tmp_path / "outbox.sqlite3"), "--url", relay.ws_url,
            "--rest", relay.url, "--api-key-file", str(api_key_file),
            "--token-log", str(tmp_path / "tokens.log"), "--start", str(start),
            "--count", str(count), "--max-in-flight", str(MAX_IN_FLIGHT),
        ]
        with (tmp_path / "producer.log").open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, env=env_without_secrets(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )
        return cls(proc)

    async def read_until(self, lines: int | None) -> None:
        """Read stdout until ``lines`` numbers were printed (None: until ``done``/EOF)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT_S):
            while lines is None or len(self.printed) < lines:
                raw = await self.proc.stdout.readline()
                if not raw:
                    return
                text = raw.decode().strip()
                if text == "done":
                    self.done = True
                elif text.startswith("appended "):
                    self.printed.append(int(text.split()[1]))

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(WAIT_S):
            assert await self.proc.wait() == -signal.SIGKILL
        # whatever was already in the pipe was printed before the kill: it counts too
        await self.read_until(None)


@pytest.mark.slow
async def test_producer_sigkilled_at_random_loses_no_appended_reading(
    tmp_path: Path, api_key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED)
    printed: list[int] = []
    next_number = 0
    runs: list[Child] = []
    async with inprocess_relay(tmp_path / "relay.sqlite3") as relay:
        try:
            for _ in range(KILLS):
                child = await Child.start(tmp_path, relay, api_key_file, next_number, 1_000_000)
                runs.append(child)
                # a random moment: after a random number of durable appends (0: during start-up,
                # before the first reading, often mid-handshake)
                await child.read_until(rng.choice([0, rng.randint(1, 40), rng.randint(40, 300)]))
                await child.kill()
                printed += child.printed
                if child.printed:
                    next_number = child.printed[-1] + 1
            final = await Child.start(tmp_path, relay, api_key_file, next_number, FINAL_COUNT)
            runs.append(final)
            await final.read_until(None)
            async with asyncio.timeout(WAIT_S):
                assert await final.proc.wait() == 0, (tmp_path / "producer.log").read_text()
            assert final.done
            printed += final.printed
        finally:
            for child in runs:
                if child.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
                    await child.proc.wait()
        rows = await asyncio.to_thread(stored_rows, tmp_path / "relay.sqlite3")

    last = next_number + FINAL_COUNT - 1
    assert printed[-1] == last and len(final.printed) == FINAL_COUNT
    # every printed number reached the relay; nothing was invented
    report = check_delivery(((r.t, number_of(r.t, r.d)) for r in rows), set(printed))
    assert report.missing == [], f"appended but lost: {report.missing[:20]}"
    # a kill may land after a commit and before its print: the restart appends that number
    # again (and prints it), so nothing unprinted is stored, only one extra copy per kill
    assert report.unexpected == []
    assert report.duplicates <= KILLS + MAX_IN_FLIGHT * KILLS, report
    print(f"printed={len(printed)} stored={len(rows)} kills={KILLS} "
          f"kill points={[len(c.printed) for c in runs[:-1]]} {report}")

    # the outbox the producers shared is empty: everything confirmed, nothing left behind
    box = await Outbox.open(tmp_path / "outbox.sqlite3")
    try:
        stats = await box.stats()
    finally:
        await box.close()
    assert stats.depth == 0 and stats.dropped == 0 and box.recovered_from is None

    tokens = (tmp_path / "tokens.log").read_text().split()
    assert tokens, "no token was minted"
    producer_log = (tmp_path / "producer.log").read_text(errors="replace")
    assert "frame redacted" in producer_log  # the children logged their IDENTIFY frames
    assert_no_secrets([producer_log, *log_lines(caplog)], [API_KEY, *tokens])
