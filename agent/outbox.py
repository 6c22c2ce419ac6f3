"""Durable, capped store-and-forward queue of SUBMIT frames (SQLite, WAL, ``synchronous=FULL``).

Why it exists: the core promise of the agent is that no reading is lost. A reading is written to
disk before it is sent, and it leaves the disk only once the broker has provably read it (the
uplink calls :meth:`Outbox.confirm` when a HEARTBEAT_ACK answers a heartbeat sent after the
reading; see :mod:`agent.uplink`).

Durability guarantee (exact)
----------------------------
* :meth:`Outbox.append_durable` returns only after the transaction holding the readings has
  committed with ``synchronous=FULL`` in WAL mode. From then on the readings survive a process
  crash (SIGKILL, OOM kill) and, as far as the disk honours ``fsync``, a power cut. Concurrent
  callers share one commit (group commit), so awaiting durability costs latency (one fsync,
  typically milliseconds), not throughput. **This is the daemon's path.**
* :meth:`Outbox.append` only buffers in memory and returns at once; the flusher commits the
  buffer within ``flush_interval_s`` (or as soon as ``flush_rows`` readings are buffered). A
  process crash loses at most the readings appended since the last commit, i.e. at most
  ``flush_interval_s`` worth and never more than ``flush_rows`` plus one call's readings.
  :meth:`Outbox.flush` forces a commit. Use it where the caller cannot await.
* A power cut can additionally lose whatever the storage device acknowledged but had not
  written (SD cards and disks with volatile write caches lie about ``fsync``); SQLite in WAL
  mode keeps the file consistent either way.

Threading: every SQLite call runs on one dedicated worker thread with its own connection, so
the event loop never blocks on disk I/O or on serialising readings (heartbeats keep their
schedule while a large append commits). Frames are serialised once, on that thread, and stored
as text so that draining a backlog never re-serialises.

Byte cap and drop order: when the stored frame bytes exceed ``max_bytes`` the outbox evicts,
oldest first, ACCELERATION and GYROSCOPE rows (high rate, raw) down to ``LOW_WATER`` of the cap;
only if nothing of those is left does it evict everything else, oldest first (derived totals,
heart rate, …). Every eviction increments a persistent drop counter (``meta`` table), appends
one row per data type to the ``gaps`` table (type, first and last sample time, count) and logs
a WARNING. The cap counts each row as its frame bytes plus :data:`ROW_OVERHEAD_BYTES` (SQLite's
per-row, index and page overhead, measured at about 50 bytes for ~90-byte frames), so it
approximates the size of the database file; the WAL file adds at most a checkpoint's worth.

Corruption: ``PRAGMA quick_check`` runs at open; a file that fails it (or is not SQLite at all)
is renamed aside with a UTC timestamp suffix, reported in :attr:`Outbox.recovered_from` and the
log at ERROR, and a fresh outbox is created: never a crash loop.

Memory: rows are paged (:meth:`Outbox.next_batch`); nothing loads the whole table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Final, TypeVar

from agent.protocol import VECTOR_TYPES
from agent.readings import Reading

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Default byte cap of stored frames (256 MiB: about 2.5 M frames, days of a chest strap).
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
#: Eviction frees down to this fraction of the cap so a full outbox does not evict on every
#: commit (one gap record per few percent of the cap, not one per append).
LOW_WATER: Final = 0.95
#: Default flusher linger for :meth:`Outbox.append`.
DEFAULT_FLUSH_INTERVAL_S: Final = 0.2
#: Buffered readings that trigger a commit without waiting for the linger.
DEFAULT_FLUSH_ROWS: Final = 5000
#: Estimated on-disk bytes per row beyond its frame (row header, type, t, index entry, page
#: slack): 100k rows of ~93-byte frames made a 1.55× larger file.
ROW_OVERHEAD_BYTES: Final = 50
#: Priority classes: lower evicts first.
PRIO_RAW: Final = 0
PRIO_OTHER: Final = 1
_EVICT_PAGE: Final = 4096

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS readings (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    type  TEXT    NOT NULL,
    t     REAL    NOT NULL,
    frame TEXT    NOT NULL,
    size  INTEGER NOT NULL,
    prio  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_prio ON readings (prio, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gaps (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL    NOT NULL,
    type    TEXT    NOT NULL,
    first_t REAL    NOT NULL,
    last_t  REAL    NOT NULL,
    count   INTEGER NOT NULL
);
"""


class OutboxClosed(RuntimeError):
    """The outbox was used after :meth:`Outbox.close`."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Readings of one type dropped by the byte cap in one eviction."""

    type: str
    first_t: float
    last_t: float
    count: int
    at: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Operator-facing numbers (committed rows only).

    ``bytes`` is the capped estimate of on-disk size (frames plus per-row overhead);
    ``oldest_t`` is the sample time of the oldest row in send order.
    """

    depth: int
    bytes: int
    oldest_t: float | None
    dropped: int
    last_id: int
    buffered: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for ``agent status`` and logs."""
        return asdict(self)


def _prio(type_: str) -> int:
    return PRIO_RAW if type_ in VECTOR_TYPES else PRIO_OTHER


class _Store:
    """The synchronous SQLite side; used only from the outbox worker thread."""

    def __init__(self, path: Path, max_bytes: int, tz: tzinfo | None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.tz = tz
        self.recovered_from: Path | None = None
        self.rejected = 0  # readings that could not be serialised (this process)
        try:
            self.db = self._open_checked()
        except sqlite3.DatabaseError as exc:
            self.recovered_from = self._move_aside(str(exc))
            self.db = self._open_checked()
        self.depth, self.bytes = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM readings"
        ).fetchone()
        self.last_id = self._scalar("SELECT COALESCE(MAX(id), 0) FROM readings")
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='readings'").fetchone()
        if seq is not None:
            self.last_id = max(self.last_id, int(seq[0]))
        self.dropped = self._scalar("SELECT COALESCE(MAX(value), 0) FROM meta WHERE key='dropped'")

    # -- opening --------------------------------------------------------------------------------

    def _open_checked(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            rows = db.execute("PRAGMA quick_check").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                detail = "; ".join(str(r[0]) for r in rows[:3])
                raise sqlite3.DatabaseError(f"quick_check failed: {detail}")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, reason: str) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        self.path.rename(aside)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(aside.with_name(aside.name + suffix))
        log.error(
            "outbox %s failed its integrity check (%s); moved it aside to %s and started a "
            "fresh outbox. Readings in the old file were not sent; inspect it with sqlite3.",
            self.path, reason, aside,
        )
        return aside

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.db.execute(sql, params).fetchone()[0])

    # -- writes ---------------------------------------------------------------------------------

    def insert(self, readings: Sequence[Reading]) -> None:
        """Serialise and commit ``readings`` in one transaction; evict above the cap."""
        tz = self.tz
        rows = []
        added = 0
        bad: list[str] = []
        for r in readings:
            try:
                frame = r.submit_text(tz)
            except (ValueError, OverflowError, OSError, TypeError, AttributeError) as exc:
                # unrepresentable (NaN, inf, absurd time): it can never be sent, and one bad
                # reading must not block the batch it came with
                bad.append(f"{getattr(r, 'type', '?')}: {exc}")
                continue
            size = len(frame) + ROW_OVERHEAD_BYTES
            added += size
            rows.append((str(r.type), r.t, frame, size, _prio(r.type)))
        if bad:
            self.rejected += len(bad)
            log.error(
                "outbox rejected %d unrepresentable reading(s), e.g. %s", len(bad), bad[0]
            )
        if not rows:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                "INSERT INTO readings (type, t, frame, size, prio) VALUES (?, ?, ?, ?, ?)", rows
            )
            new_last = self._scalar("SELECT seq FROM sqlite_sequence WHERE name='readings'")
            gaps: list[Gap] = []
            if self.bytes + added > self.max_bytes:
                gaps = self._evict(self.bytes + added)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.last_id = new_last
        self.depth += len(rows)
        self.bytes += added
        for gap in gaps:
            self.depth -= gap.count
            self.dropped += gap.count
        if gaps:
            self.bytes = self._scalar("SELECT COALESCE(SUM(size), 0) FROM readings")
            for gap in gaps:
                log.warning(
                    "outbox over its %d-byte cap: dropped %d %s readings from %s to %s "
                    "(gap recorded; %d dropped in total)",
                    self.max_bytes, gap.count, gap.type, _iso(gap.first_t), _iso(gap.last_t),
                    self.dropped,
                )

    def _evict(self, total: int) -> list[Gap]:
        """Delete oldest rows by priority class until ``total`` ≤ LOW_WATER × cap (in a txn)."""
        need = total - int(self.max_bytes * LOW_WATER)
        per_type: dict[str, list[float]] = {}  # type -> [first_t, last_t, count]
        for prio in (PRIO_RAW, PRIO_OTHER):
            after = 0
            while need > 0:
                page = self.db.execute(
                    "SELECT id, type, t, size FROM readings WHERE prio = ? AND id > ? "
                    "ORDER BY id LIMIT ?",
                    (prio, after, _EVICT_PAGE),
                ).fetchall()
                if not page:
                    break
                cut = page[-1][0]
                for rid, type_, t, size in page:
                    entry = per_type.setdefault(type_, [t, t, 0.0])
                    entry[0] = min(entry[0], t)
                    entry[1] = max(entry[1], t)
                    entry[2] += 1
                    need -= size
                    if need <= 0:
                        cut = rid
                        break
                self.db.execute("DELETE FROM readings WHERE prio = ? AND id <= ?", (prio, cut))
                after = cut
        now = time.time()
        gaps = [Gap(k, v[0], v[1], int(v[2]), now) for k, v in per_type.items()]
        dropped = sum(g.count for g in gaps)
        self.db.executemany(
            "INSERT INTO gaps (at, type, first_t, last_t, count) VALUES (?, ?, ?, ?, ?)",
            [(g.at, g.type, g.first_t, g.last_t, g.count) for g in gaps],
        )
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (dropped,),
        )
        return gaps

    def confirm(self, up_to_id: int) -> int:
        """Delete every row with ``id ≤ up_to_id``; returns how many were deleted."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            n, size = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM readings WHERE id <= ?",
                (up_to_id,),
            ).fetchone()
            if n:
                self.db.execute("DELETE FROM readings WHERE id <= ?", (up_to_id,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.depth -= int(n)
        self.bytes -= int(size)
        return int(n)

    # -- reads ----------------------------------------------------------------------------------

    def next_batch(self, after_id: int, limit: int) -> list[tuple[int, str]]:
        return self.db.execute(
            "SELECT id, frame FROM readings WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()

    def oldest_t(self) -> float | None:
        row = self.db.execute("SELECT t FROM readings ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def gaps(self) -> list[Gap]:
        return [
            Gap(type_, first_t, last_t, count, at)
            for at, type_, first_t, last_t, count in self.db.execute(
                "SELECT at, type, first_t, last_t, count FROM gaps ORDER BY id"
            )
        ]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class Outbox:
    """Async facade over the SQLite outbox; create with ``await Outbox.open(path)``.

    Ids are assigned in append order and never reused (AUTOINCREMENT), so ``after_id``
    watermarks held by the uplink stay valid across confirmations, evictions and restarts.
    """

    def __init__(
        self,
        store: _Store,
        executor: ThreadPoolExecutor,
        *,
        flush_interval_s: float,
        flush_rows: int,
    ) -> None:
        self._store = store
        self._executor = executor
        self.flush_interval_s = flush_interval_s
        self.flush_rows = flush_rows
        self._buffer: list[Reading] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._committed = asyncio.Condition()
        self._closed = False
        self._committing = False
        self.last_id = store.last_id
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_loop(), name="outbox-flusher"
        )

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        flush_rows: int = DEFAULT_FLUSH_ROWS,
        tz: tzinfo | None = None,
    ) -> Outbox:
        """Open (or create) the outbox at ``path``; a corrupt file is moved aside first."""
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, _Store, path, max_bytes, tz)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor, flush_interval_s=flush_interval_s, flush_rows=flush_rows)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._store.path

    @property
    def recovered_from(self) -> Path | None:
        """Where a corrupt file found at open was moved to (``None`` if the file was fine)."""
        return self._store.recovered_from

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- appending ------------------------------------------------------------------------------

    def append(self, readings: Iterable[Reading]) -> int:
        """Buffer readings for the next group commit; returns how many were buffered.

        Not yet durable: see the module docstring for the loss window. Never blocks.
        """
        if self._closed:
            raise OutboxClosed("outbox is closed")
        before = len(self._buffer)
        self._buffer.extend(readings)
        added = len(self._buffer) - before
        if added:
            self._wake.set()
        return added

    async def append_durable(self, readings: Iterable[Reading]) -> int:
        """Append and return once the readings are committed (survive a process crash).

        If the commit fails (disk full, I/O error) this raises that error, but the readings stay
        buffered and the flusher keeps retrying them: do not append them again.
        """
        n = self.append(readings)
        await self.flush()
        return n

    async def flush(self) -> None:
        """Commit everything buffered so far; returns once it is on disk."""
        if not self._buffer and not self._committing:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake.set()
        await fut

    async def _flush_loop(self) -> None:
        """Group commit: one transaction per wake-up, lingering only when nobody awaits."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._waiters and len(self._buffer) < self.flush_rows:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval_s):
                        while not self._waiters and len(self._buffer) < self.flush_rows:
                            await self._wake.wait()
                            self._wake.clear()
            batch, self._buffer = self._buffer, []
            waiters, self._waiters = self._waiters, []
            self._committing = True
            try:
                if batch:
                    await self._run(self._store.insert, batch)
            except Exception as exc:  # disk full, I/O error: keep the readings, report
                self._committing = False
                log.error("outbox commit failed (%s); will retry", exc)
                self._buffer[:0] = batch
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                await asyncio.sleep(self.flush_interval_s)
                self._wake.set()
                continue
            self._committing = False
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            if batch:
                self.last_id = self._store.last_id
                async with self._committed:
                    self._committed.notify_all()
            if self._buffer:
                self._wake.set()

    async def wait_new(self, after_id: int) -> int:
        """Wait until a committed row with ``id > after_id`` may exist; returns ``last_id``."""
        async with self._committed:
            await self._committed.wait_for(lambda: self.last_id > after_id or self._closed)
        return self.last_id

    # -- draining -------------------------------------------------------------------------------

    async def next_batch(self, after_id: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` committed ``(id, frame)`` rows with ``id > after_id``, oldest first."""
        self._check_open()
        result: list[tuple[int, str]] = await self._run(self._store.next_batch, after_id, limit)
        return result

    async def confirm(self, up_to_id: int) -> int:
        """The broker provably read every row with ``id ≤ up_to_id``: delete them."""
        self._check_open()
        n: int = await self._run(self._store.confirm, up_to_id)
        return n

    # -- status ---------------------------------------------------------------------------------

    async def stats(self) -> OutboxStats:
        """Depth, bytes, oldest undelivered sample time, dropped count."""
        self._check_open()
        s = self._store
        oldest = await self._run(s.oldest_t)
        return OutboxStats(s.depth, s.bytes, oldest, s.dropped, self.last_id, len(self._buffer))

    async def gaps(self) -> list[Gap]:
        """Every gap the byte cap has caused, oldest first."""
        self._check_open()
        result: list[Gap] = await self._run(self._store.gaps)
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxClosed("outbox is closed")

    async def close(self) -> None:
        """Commit what is buffered, stop the flusher and close the database."""
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            async with self._committed:
                self._committed.notify_all()
            await self._run(self._store.close)
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

