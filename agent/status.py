"""``agent status``: the running daemon's state, read without disturbing it.

The daemon rewrites ``<state dir>/status.json`` atomically every few seconds (write to a temporary
file, then ``os.replace``), so reading it never races with a half-written file and never touches
the daemon's SQLite files or sockets. Whether the daemon is alive is decided from the recorded pid
and the file's freshness.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

#: A status file older than this many refresh intervals means the daemon is hung or gone.
STALE_AFTER_INTERVALS = 5
EX_UNAVAILABLE = 69


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (the service account)
        return True
    return True


def _when(t: object, now: float) -> str:
    if not isinstance(t, int | float):
        return "never"
    stamp = datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
    return f"{stamp} ({_age(now - t)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def assess(state: dict[str, Any], now: float, interval_s: float) -> str:
    """``running``, ``stopped``, ``stale`` (alive but not updating) or ``dead``."""
    if state.get("stopped"):
        return "stopped"
    if not _alive(state.get("pid")):
        return "dead"
    updated = state.get("updated")
    if isinstance(updated, int | float) and now - updated > STALE_AFTER_INTERVALS * interval_s:
        return "stale"
    return "running"


def _last_close(up: dict[str, Any]) -> str:
    code = up.get("last_close_code")
    if code is None and not up.get("last_error"):
        return ""
    reason = up.get("last_close_reason") or up.get("last_error") or ""
    return f" (last close: {code if code is not None else '-'} {reason})".rstrip() + ""


def format_status(state: dict[str, Any], now: float, interval_s: float) -> list[str]:
    """Readable report of a status document."""
    up = state.get("uplink") or {}
    ob = state.get("outbox") or {}
    age = ob.get("oldest_age_s")
    lines = [
        f"daemon:          {assess(state, now, interval_s)} (pid {state.get('pid')})",
        f"connection:      {up.get('state', 'unknown')}" + _last_close(up),
        f"last READY:      {_when(up.get('last_ready_at'), now)}",
        f"outbox depth:    {ob.get('depth', '?')} readings",
        f"oldest undelivered: {'-' if age is None else _age(float(age))}",
        f"dropped:         {ob.get('dropped', 0)}",
        f"last reading:    {_when(state.get('last_reading_t'), now)}",
    ]
    if up.get("stopped_reason"):
        lines.append(f"uplink stopped:  {up['stopped_reason']}")
    sensors = state.get("sensors") or []
    if not sensors:
        lines.append("sensors:         none")
    for s in sensors:
        battery = s.get("battery_percent")
        bat = "-" if battery is None else f"{battery}%"
        line = (f"sensor {s.get('name')}: {s.get('state')}, battery {bat}, last sample "
                f"{_when(s.get('last_sample_t'), now)}")
        if s.get("error"):
            line += f", error: {s['error']}"
        lines.append(line)
    return lines


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``agent status``."""
    parser.add_argument("--config", type=Path, help="config file (TOML)")
    parser.add_argument("--state-dir", type=Path, help="state directory of the daemon")
    parser.add_argument("--json", action="store_true", help="print the raw status document")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``agent status``."""
    from agent.config import ConfigError, load_config

    overrides: dict[str, object] = {}
    if args.state_dir:
        overrides["state_dir"] = str(args.state_dir)
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"agent status: {exc}", file=sys.stderr)
        return 78
    path = config.status.path or config.state_dir / "status.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"agent status: no status file at {path}: the daemon has not run with this state "
              "directory (use --state-dir or --config)", file=sys.stderr)
        return EX_UNAVAILABLE
    except (OSError, ValueError) as exc:
        print(f"agent status: cannot read {path}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    now = time.time()
    if args.json:
        state["daemon"] = assess(state, now, config.status.interval_s)
        print(json.dumps(state, indent=2, default=str))
    else:
        print("\n".join(format_status(state, now, config.status.interval_s)))
    return 0 if assess(state, now, config.status.interval_s) == "running" else 3
