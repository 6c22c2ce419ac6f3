"""Accumulated totals (STEPS, DISTANCE, FLOORS_CLIMBED) that survive restarts and reset daily.

Theory of operation
-------------------
Totals are what users compare with their phone at the end of the day, so a restart (crash,
update, reboot) must not zero them, and they start again at local midnight like every other
tracker. Policies (:class:`ResetPolicy`):

* ``daily`` (default): totals belong to a local calendar day; the first sample time that falls on
  a later day starts from zero. The day comes from *sample* time in the injected timezone (the
  system's local zone by default), never from the wall clock, so replay and tests are exact.
* ``never``: one running total forever (loaded from the file at start).
* ``session``: start from zero at every start of the agent; the file is still written (for
  ``agent status``) but never read.

Persistence is a small JSON file in the state directory, written atomically (temp file in the
same directory, ``fsync``, :func:`os.replace`), so a crash leaves either the old or the new file,
never a torn one. It is written when totals changed and at least :data:`SAVE_INTERVAL_S` of sample
time passed since the last write (flash wear on small boards), and at shutdown. A crash therefore
loses at most that many seconds of counting. A missing or corrupt file means zero totals (the
corrupt file is overwritten on the next save; it is never fatal).
"""

from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

#: Minimum sample-time spacing of writes while totals change (bounded loss, little flash wear).
SAVE_INTERVAL_S: Final = 10.0
#: File format version written into the JSON.
FILE_VERSION: Final = 1


class ResetPolicy(enum.StrEnum):
    """When totals start again from zero."""

    DAILY = "daily"
    NEVER = "never"
    SESSION = "session"


@dataclass(slots=True)
class Totals:
    """Current totals and the local day they belong to (``None`` unless the policy is daily)."""

    steps: int = 0
    distance_m: float = 0.0
    floors: int = 0
    day: str | None = None


def system_timezone(
    env: Mapping[str, str] | None = None, localtime: Path = Path("/etc/localtime")
) -> tzinfo | None:
    """The machine's time zone *with its daylight-saving rules*, or ``None`` if unknown.

    ``datetime.now().astimezone().tzinfo`` looks right but is a fixed offset: a daemon started
    in summer would reset the daily totals an hour early all winter. So: ``$TZ`` if it names a
    zone (``Europe/London`` or ``:Europe/London``), else the zone file ``/etc/localtime`` points
    to. ``None`` (callers then use the C library's local time, which is DST-aware too) when
    neither can be read (a container without zone data) or ``$TZ`` is a POSIX rule string.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = (os.environ if env is None else env).get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            return None  # a POSIX rule string ("CET-1CEST,M3.5.0,M10.5.0/3"): libc handles it
    try:
        with localtime.open("rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return None


def local_day(t: float, tz: tzinfo | None) -> str:
    """ISO local date of Unix time ``t`` in ``tz`` (system local zone when ``None``)."""
    dt = datetime.fromtimestamp(t, tz) if tz is not None else datetime.fromtimestamp(t)
    return dt.date().isoformat()


class TotalsStore:
    """Holds the totals, applies the reset policy and persists them (when ``path`` is given)."""

    def __init__(
        self,
        path: Path | None,
        policy: ResetPolicy | str = ResetPolicy.DAILY,
        *,
        tz: tzinfo | None = None,
        save_interval_s: float = SAVE_INTERVAL_S,
    ) -> None:
        self.path = path
        self.policy = ResetPolicy(policy)
        self.tz = tz
        self.save_interval_s = save_interval_s
        self.totals = Totals()
        self._dirty = False
        self._last_save: float | None = None
        self.saves = 0
        if path is not None and self.policy is not ResetPolicy.SESSION:
            self.totals = self._load(path)

    @staticmethod
    def _load(path: Path) -> Totals:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Totals()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("totals file %s unreadable (%s); starting from zero", path, exc)
            return Totals()
        try:
            steps = int(raw["steps"])
            distance = float(raw["distance_m"])
            floors = int(raw["floors"])
            day = raw.get("day")
            if steps < 0 or distance < 0 or floors < 0 or not (day is None or isinstance(day, str)):
                raise ValueError("negative or malformed values")
            if day is not None:
                date.fromisoformat(day)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("totals file %s malformed (%s); starting from zero", path, exc)
            return Totals()
        return Totals(steps, distance, floors, day)

    def roll(self, t: float) -> bool:
        """Apply the daily reset for sample time ``t``; True when totals were reset to zero."""
        if self.policy is not ResetPolicy.DAILY:
            return False
        day = local_day(t, self.tz)
        if self.totals.day is None:
            if self.totals.steps or self.totals.distance_m or self.totals.floors:
                # saved under totals_reset = "never" (no day): a multi-day sum is not today's
                log.info("totals were kept without a day (totals_reset was 'never'); "
                         "today's totals start from zero")
                self.totals = Totals(day=day)
                self._dirty = True
                return True
            self.totals.day = day
            self._dirty = True
            return False
        if day > self.totals.day:  # ISO dates compare chronologically; never reset backwards
            self.totals = Totals(day=day)
            self._dirty = True
            return True
        return False

    def add(self, t: float, *, steps: int = 0, distance_m: float = 0.0, floors: int = 0) -> bool:
        """Add increments observed at sample time ``t``; True when a daily reset happened first."""
        reset = self.roll(t)
        if steps or distance_m or floors:
            self.totals.steps += steps
            self.totals.distance_m += distance_m
            self.totals.floors += floors
            self._dirty = True
        return reset

    def maybe_save(self, t: float) -> bool:
        """Save if changed and the save interval (in sample time) has passed; True if saved."""
        if self.path is None or not self._dirty:
            return False
        if self._last_save is None:
            self._last_save = t  # first change: start the interval (a restart is not a save)
            if self.save_interval_s > 0:
                return False
        if t - self._last_save < self.save_interval_s and t >= self._last_save:
            return False
        self.save(t)
        return True

    def save(self, t: float | None = None) -> None:
        """Write the file atomically now (no-op without a path). Errors are logged, not raised."""
        if self.path is None:
            return
        data = {
            "version": FILE_VERSION,
            "steps": self.totals.steps,
            "distance_m": round(self.totals.distance_m, 3),
            "floors": self.totals.floors,
            "day": self.totals.day,
            "policy": str(self.policy),
            "saved_at": t,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save totals to %s: %s", self.path, exc)
            return
        self._dirty = False
        if t is not None:
            self._last_save = t
        self.saves += 1
