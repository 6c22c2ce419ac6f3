"""Totals: persisted atomically, rate-limited writes, reset at local midnight (injected tz)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.processing.totals import ResetPolicy, TotalsStore, system_timezone

NEW_YORK_WINTER = timezone(timedelta(hours=-5))
# 2026-01-07 04:59:00 UTC = 23:59 local in New York (UTC−5).
BEFORE_MIDNIGHT = datetime(2026, 1, 7, 4, 59, tzinfo=UTC).timestamp()


def test_reset_at_local_midnight_of_the_injected_timezone(tmp_path: Path) -> None:
    ny = TotalsStore(tmp_path / "ny.json", tz=NEW_YORK_WINTER)
    utc = TotalsStore(tmp_path / "utc.json", tz=UTC)
    for store in (ny, utc):
        store.add(BEFORE_MIDNIGHT, steps=100, distance_m=70.0, floors=2)
        assert not store.add(BEFORE_MIDNIGHT + 59.0, steps=1)
    assert ny.add(BEFORE_MIDNIGHT + 61.0, steps=5)  # 00:00:01 local: a new day
    assert (ny.totals.steps, ny.totals.distance_m, ny.totals.floors) == (5, 0.0, 0)
    assert ny.totals.day == "2026-01-07"
    assert not utc.add(BEFORE_MIDNIGHT + 61.0, steps=5)  # 05:00 UTC is not midnight there
    assert utc.totals.steps == 106


def test_totals_survive_a_restart_and_reset_if_it_spans_midnight(tmp_path: Path) -> None:
    path = tmp_path / "state" / "totals.json"
    a = TotalsStore(path, tz=NEW_YORK_WINTER)
    a.add(BEFORE_MIDNIGHT - 3600, steps=1234, distance_m=900.5, floors=3)
    a.save(BEFORE_MIDNIGHT - 3600)
    assert not list(path.parent.glob("*.tmp"))  # atomic write left no temp file
    b = TotalsStore(path, tz=NEW_YORK_WINTER)
    assert (b.totals.steps, b.totals.distance_m, b.totals.floors) == (1234, 900.5, 3)
    b.add(BEFORE_MIDNIGHT, steps=1)
    assert b.totals.steps == 1235
    c = TotalsStore(path, tz=NEW_YORK_WINTER)  # restarted after midnight: yesterday's totals
    assert c.roll(BEFORE_MIDNIGHT + 3600)
    assert c.totals.steps == 0


def test_never_and_session_policies(tmp_path: Path) -> None:
    path = tmp_path / "totals.json"
    a = TotalsStore(path, ResetPolicy.NEVER, tz=UTC)
    a.add(BEFORE_MIDNIGHT, steps=10)
    a.add(BEFORE_MIDNIGHT + 86400 * 3, steps=10)
    assert a.totals.steps == 20 and a.totals.day is None
    a.save()
    assert TotalsStore(path, "never", tz=UTC).totals.steps == 20
    assert TotalsStore(path, "session", tz=UTC).totals.steps == 0


def test_writes_are_rate_limited_in_sample_time(tmp_path: Path) -> None:
    store = TotalsStore(tmp_path / "t.json", tz=UTC, save_interval_s=10.0)
    saved = []
    for i in range(100):  # a step every 0.5 s for 50 s
        t = BEFORE_MIDNIGHT - 3600 + 0.5 * i
        store.add(t, steps=1)
        if store.maybe_save(t):
            saved.append(t)
    assert 3 <= store.saves <= 5
    assert all(b - a >= 10.0 for a, b in itertools.pairwise(saved))
    store.save(BEFORE_MIDNIGHT)  # shutdown
    assert json.loads((tmp_path / "t.json").read_text())["steps"] == 100
    assert not store.maybe_save(BEFORE_MIDNIGHT + 100)  # nothing changed since


def test_corrupt_or_missing_file_means_zero(tmp_path: Path) -> None:
    path = tmp_path / "totals.json"
    assert TotalsStore(path).totals.steps == 0
    path.write_text("{not json")
    assert TotalsStore(path).totals.steps == 0
    path.write_text(json.dumps({"steps": -5, "distance_m": 1.0, "floors": 0}))
    store = TotalsStore(path)
    assert store.totals.steps == 0
    store.add(BEFORE_MIDNIGHT, steps=3)
    store.save()
    assert TotalsStore(path).totals.steps == 3


def test_no_path_never_writes(tmp_path: Path) -> None:
    store = TotalsStore(None, tz=UTC, save_interval_s=0.0)
    store.add(BEFORE_MIDNIGHT, steps=3)
    assert not store.maybe_save(BEFORE_MIDNIGHT + 100)
    store.save()
    assert store.saves == 0


def test_daily_reset_follows_daylight_saving(tmp_path: Path) -> None:
    """Local midnight is 00:00 GMT in winter and 23:00 UTC (00:00 BST) in summer."""
    london = ZoneInfo("Europe/London")
    store = TotalsStore(tmp_path / "t.json", tz=london)
    winter = datetime(2026, 1, 15, 23, 59, tzinfo=UTC).timestamp()
    store.add(winter, steps=10)
    assert store.add(winter + 120, steps=1)  # 00:01 GMT: new day
    summer = datetime(2026, 7, 15, 22, 59, tzinfo=UTC).timestamp()  # 23:59 BST
    store.add(summer, steps=10)
    assert store.add(summer + 120, steps=1)  # 00:01 BST = 23:01 UTC: new day
    assert store.totals.day == "2026-07-16"


def test_system_timezone_keeps_daylight_saving_rules(tmp_path: Path) -> None:
    tz = system_timezone({"TZ": ":Europe/London"}, localtime=tmp_path / "missing")
    assert tz is not None
    jan, jul = datetime(2026, 1, 1, 12), datetime(2026, 7, 1, 12)
    assert jan.replace(tzinfo=tz).utcoffset() == timedelta(0)
    assert jul.replace(tzinfo=tz).utcoffset() == timedelta(hours=1)
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/America/New_York")
    ny = system_timezone({}, localtime=link)
    assert ny is not None and jul.replace(tzinfo=ny).utcoffset() == timedelta(hours=-4)
    # a POSIX rule string or no zone data at all: None (the C library's local time is used)
    assert system_timezone({"TZ": "CET-1CEST,M3.5.0,M10.5.0/3"}, localtime=link) is None
    assert system_timezone({}, localtime=tmp_path / "missing") is None


def test_switching_from_never_to_daily_does_not_call_a_multi_day_sum_today(
    tmp_path: Path,
) -> None:
    path = tmp_path / "totals.json"
    a = TotalsStore(path, "never", tz=UTC)
    a.add(BEFORE_MIDNIGHT - 5 * 86400, steps=250_000, distance_m=180_000.0)
    a.save()
    b = TotalsStore(path, "daily", tz=UTC)
    assert b.roll(BEFORE_MIDNIGHT)
    assert (b.totals.steps, b.totals.distance_m) == (0, 0.0)
    assert TotalsStore(path, "never", tz=UTC).totals.steps == 250_000  # and back: kept
