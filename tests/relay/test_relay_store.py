"""The SQLite dispatch store and the token registry, without sockets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.protocol import IdentifyType
from agent.relay.auth import Credentials, TokenRegistry
from agent.relay.store import DispatchStore, Pending


def batch(dev: str, n: int, start: int = 0) -> list[Pending]:
    return [Pending(dev, "u", "HEART_RATE", f'{{"val":{start + i}}}') for i in range(n)]


def test_seq_per_developer_in_batch_order(tmp_path: Path) -> None:
    store = DispatchStore(tmp_path / "r.db")
    mixed = [*batch("a", 2), *batch("b", 1), *batch("a", 1, 2)]
    stored = store.append(mixed, 100.0)
    assert [(s.dev_id, s.seq, s.d) for s in stored] == [
        ("a", 1, '{"val":0}'), ("a", 2, '{"val":1}'), ("b", 1, '{"val":0}'), ("a", 3, '{"val":2}'),
    ]
    assert store.last_seq("a") == 3 and store.last_seq("b") == 1 and store.last_seq() == 3
    store.close()


def test_counters_survive_reopen_and_pruning_everything(tmp_path: Path) -> None:
    store = DispatchStore(tmp_path / "r.db")
    store.append(batch("a", 5), 100.0)
    assert store.prune(101.0) == 5
    store.close()
    reopened = DispatchStore(tmp_path / "r.db")
    assert reopened.last_seq("a") == 5
    assert [s.seq for s in reopened.append(batch("a", 1), 200.0)] == [6]
    reopened.close()


def test_pages_and_replay_bounds(tmp_path: Path) -> None:
    store = DispatchStore(tmp_path / "r.db")
    store.append(batch("a", 25), 1.0)
    store.append(batch("b", 3), 1.0)
    assert [s.seq for s in store.page("a", 3, 7, 100)] == [4, 5, 6]
    assert [s.seq for s in store.page("a", 20, None, 100)] == [21, 22, 23, 24, 25]
    pages = list(store.replay("a", 0, None, page_rows=10))
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [s.seq for p in pages for s in p] == list(range(1, 26))
    assert list(store.replay("a", 0, None, page_rows=25)) != []
    assert len(list(store.replay("a", 0, None, page_rows=25))) == 1
    assert store.count() == 28 and store.count("b") == 3
    store.close()


def test_prune_removes_only_old_rows(tmp_path: Path) -> None:
    store = DispatchStore(tmp_path / "r.db")
    store.append(batch("a", 3), 10.0)
    store.append(batch("a", 2), 20.0)
    assert store.prune(5.0) == 0
    assert store.prune(15.0) == 3
    assert [s.seq for s in store.page("a", 0, None, 10)] == [4, 5]
    store.close()


def test_database_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.db"
    DispatchStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def test_reader_sees_committed_batches(tmp_path: Path) -> None:
    writer = DispatchStore(tmp_path / "r.db")
    reader = DispatchStore(tmp_path / "r.db", readonly=True)
    writer.append(batch("a", 2), 1.0)
    assert [s.seq for s in reader.page("a", 0, None, 10)] == [1, 2]
    with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
        reader._db.execute("DELETE FROM dispatches")
    writer.close()
    reader.close()


def test_credentials_check() -> None:
    creds = Credentials({"dev": "secret-key"})
    assert creds.check("dev", "secret-key")
    assert not creds.check("dev", "secret-kex")
    assert not creds.check("dev", "")
    assert not creds.check("other", "secret-key")
    assert not creds.check(None, "secret-key")
    assert not creds.check("dev", None)
    assert "secret" not in repr(creds)


def test_tokens_single_use_kind_and_expiry() -> None:
    reg = TokenRegistry(10.0)
    producer = reg.mint(IdentifyType.USER, "dev", 0.0, "alice")
    grant = reg.consume(producer, IdentifyType.USER, 5.0)
    assert grant is not None and (grant.dev_id, grant.user_id) == ("dev", "alice")
    assert reg.consume(producer, IdentifyType.USER, 5.0) is None  # single use
    wrong_kind = reg.mint(IdentifyType.DEVELOPER, "dev", 0.0)
    assert reg.consume(wrong_kind, IdentifyType.USER, 1.0) is None
    assert reg.consume(wrong_kind, IdentifyType.DEVELOPER, 1.0) is None  # burnt by misuse
    late = reg.mint(IdentifyType.DEVELOPER, "dev", 0.0)
    assert reg.consume(late, IdentifyType.DEVELOPER, 10.0) is None  # expired at ttl
    edge = reg.mint(IdentifyType.DEVELOPER, "dev", 0.0)
    assert reg.consume(edge, IdentifyType.DEVELOPER, 9.999) is not None
    with pytest.raises(ValueError):
        reg.mint(IdentifyType.USER, "dev", 0.0)  # a producer token needs a user


def test_token_registry_is_bounded_and_purges() -> None:
    reg = TokenRegistry(10.0, max_tokens=3)
    tokens = [reg.mint(IdentifyType.DEVELOPER, "dev", float(i)) for i in range(5)]
    assert len(reg) == 3
    assert reg.consume(tokens[0], IdentifyType.DEVELOPER, 5.0) is None  # evicted
    assert reg.consume(tokens[4], IdentifyType.DEVELOPER, 5.0) is not None
    assert reg.purge(100.0) == 2 and len(reg) == 0
    assert tokens[1] not in repr(reg)
