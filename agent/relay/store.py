"""SQLite store of dispatched payloads: sequence numbers, durability, retention and replay.

Why SQLite in WAL mode: one file, transactional batches, and readers (REPLAY) that never block
the writer. Every method is synchronous and meant to run in a worker thread owned by the relay
(:class:`agent.relay.server.Relay` keeps one writer thread and one reader thread), so the event
loop never waits on disk.

Schema
------
``dispatches(dev_id, seq, uid, t, d, received)`` with a unique ``(dev_id, seq)`` index, and
``counters(dev_id, last_seq)``; rowid order is insertion order. ``seq`` is per developer,
strictly increasing and dense while nothing is pruned; the counter lives in its own table so
retention pruning every row of a developer never makes ``seq`` restart. ``d`` is the
submitted payload as compact JSON text, dispatched unchanged. ``received`` is the relay's wall
clock (Unix seconds) at storage and drives retention.

Durability: ``synchronous=FULL`` — a batch is on disk before the relay acknowledges any
heartbeat that follows it, because producers delete readings once acknowledged.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Rows fetched per REPLAY page: bounds memory for replays of millions of rows.
DEFAULT_PAGE_ROWS: Final = 1000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dispatches (
    dev_id   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    uid      TEXT    NOT NULL,
    t        TEXT    NOT NULL,
    d        TEXT    NOT NULL,
    received REAL    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS dispatches_dev_seq ON dispatches (dev_id, seq);
CREATE TABLE IF NOT EXISTS counters (
    dev_id   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """One validated SUBMIT waiting to be stored: ``d`` is compact JSON text."""

    dev_id: str
    uid: str
    t: str
    d: str


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored dispatch with its assigned ``seq``."""

    dev_id: str
    seq: int
    uid: str
    t: str
    d: str


class StoreError(Exception):
    """The database cannot be opened or written (disk full, permissions, corruption)."""


class DispatchStore:
    """Synchronous SQLite store; one instance per thread (see module docstring)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """Open (and create unless ``readonly``) the database at ``path``.

        A ``readonly`` instance is the REPLAY reader: a second connection that sees every
        committed batch (WAL) and cannot write by mistake.
        """
        self.path = path
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
                # the readings are personal data: create the file private (WAL files follow)
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            if readonly:
                self._db.execute("PRAGMA query_only=ON")
            else:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open relay database {path}: {exc}") from exc
        self._last: dict[str, int] = {} if readonly else self._load_counters()

    def _load_counters(self) -> dict[str, int]:
        last = dict(self._db.execute("SELECT dev_id, last_seq FROM counters").fetchall())
        # a database written by an older layout without counters still never reuses a seq
        for dev_id, seq in self._db.execute(
            "SELECT dev_id, MAX(seq) FROM dispatches GROUP BY dev_id"
        ):
            last[dev_id] = max(last.get(dev_id, 0), seq)
        return last

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._db.close()

    def last_seq(self, dev_id: str | None = None) -> int:
        """Last assigned seq of ``dev_id`` (0 if none), or the largest over all developers."""
        if dev_id is None:
            return max(self._last.values(), default=0)
        return self._last.get(dev_id, 0)

    def last_seqs(self) -> dict[str, int]:
        """Copy of every developer's last assigned seq."""
        return dict(self._last)

    def append(self, batch: Sequence[Pending], now: float) -> list[Stored]:
        """Assign seqs and store ``batch`` in one transaction; returns it in order.

        Counters advance only once the transaction has committed, so a failed batch reuses no
        and skips no seq.
        """
        last = dict(self._last)
        out: list[Stored] = []
        for p in batch:
            seq = last.get(p.dev_id, 0) + 1
            last[p.dev_id] = seq
            out.append(Stored(p.dev_id, seq, p.uid, p.t, p.d))
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO dispatches (dev_id, seq, uid, t, d, received)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(s.dev_id, s.seq, s.uid, s.t, s.d, now) for s in out],
                )
                self._db.executemany(
                    "INSERT INTO counters (dev_id, last_seq) VALUES (?, ?)"
                    " ON CONFLICT (dev_id) DO UPDATE SET last_seq = excluded.last_seq",
                    [(dev, last[dev]) for dev in {s.dev_id for s in out}],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store {len(batch)} dispatches: {exc}") from exc
        self._last = last
        return out

    def page(self, dev_id: str, after: int, before: int | None, limit: int) -> list[Stored]:
        """Up to ``limit`` dispatches of ``dev_id`` with ``after < seq < before``, by seq."""
        hi = before if before is not None else (1 << 63) - 1
        rows = self._db.execute(
            "SELECT seq, uid, t, d FROM dispatches WHERE dev_id = ? AND seq > ? AND seq < ?"
            " ORDER BY seq LIMIT ?",
            (dev_id, after, hi, limit),
        ).fetchall()
        return [Stored(dev_id, seq, uid, t, d) for seq, uid, t, d in rows]

    def replay(
        self, dev_id: str, after: int, before: int | None, page_rows: int = DEFAULT_PAGE_ROWS
    ) -> Iterator[list[Stored]]:
        """Pages of :meth:`page` until the range is exhausted (each page a fresh query)."""
        while True:
            rows = self.page(dev_id, after, before, page_rows)
            if not rows:
                return
            yield rows
            after = rows[-1].seq
            if len(rows) < page_rows:
                return

    def prune(self, older_than: float) -> int:
        """Delete rows received before ``older_than`` (Unix seconds); returns how many."""
        # Rows are appended in time order, so the expired rows are a rowid prefix: find its end
        # by scanning from the oldest row (stops at the first young row; no extra index to
        # maintain on every insert), then delete the prefix by rowid range.
        try:
            row = self._db.execute(
                "SELECT rowid FROM dispatches WHERE received >= ? ORDER BY rowid LIMIT 1",
                (older_than,),
            ).fetchone()
            if row is None:
                cur = self._db.execute("DELETE FROM dispatches")
            else:
                cur = self._db.execute("DELETE FROM dispatches WHERE rowid < ?", (row[0],))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prune dispatches: {exc}") from exc
        return cur.rowcount

    def count(self, dev_id: str | None = None) -> int:
        """Rows stored (for ``dev_id`` or in total)."""
        if dev_id is None:
            row = self._db.execute("SELECT COUNT(*) FROM dispatches").fetchone()
        else:
            row = self._db.execute(
                "SELECT COUNT(*) FROM dispatches WHERE dev_id = ?", (dev_id,)
            ).fetchone()
        return int(row[0])
