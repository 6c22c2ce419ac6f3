"""``agent status``: reads the daemon's status document, never the daemon itself."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent import status
from agent.cli import main


def _doc(**extra: object) -> dict[str, object]:
    now = time.time()
    doc: dict[str, object] = {
        "pid": os.getpid(),
        "updated": now,
        "uplink": {"state": "ready", "last_ready_at": now - 30, "last_close_code": 1006,
                   "last_close_reason": "network loss"},
        "outbox": {"depth": 12, "oldest_age_s": 1.5, "dropped": 3},
        "sensors": [{"name": "strap", "state": "streaming", "battery_percent": 87,
                     "last_sample_t": now - 0.2, "error": None}],
        "last_reading_t": now - 0.5,
    }
    doc.update(extra)
    return doc


def test_format_shows_everything_an_operator_needs() -> None:
    text = "\n".join(status.format_status(_doc(), time.time(), 2.0))
    for needle in ("running", "ready", "1006", "12 readings", "dropped:         3",
                   "strap: streaming, battery 87%", "last READY", "last reading"):
        assert needle in text


def test_assess_running_stale_dead_stopped() -> None:
    now = time.time()
    assert status.assess(_doc(), now, 2.0) == "running"
    assert status.assess(_doc(updated=now - 60), now, 2.0) == "stale"
    assert status.assess(_doc(pid=2**22 + 12345), now, 2.0) == "dead"
    assert status.assess(_doc(stopped=True), now, 2.0) == "stopped"


def _env_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("AGENT_"):
            monkeypatch.delenv(key)
    cfg = tmp_path / "empty.toml"
    cfg.touch()
    monkeypatch.setenv("AGENT_CONFIG", str(cfg))
    return tmp_path / "state"


def test_cli_json_and_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    state = _env_state(tmp_path, monkeypatch)
    state.mkdir()
    (state / "status.json").write_text(json.dumps(_doc()))
    assert main(["status", "--state-dir", str(state), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["daemon"] == "running" and data["outbox"]["depth"] == 12
    assert main(["status", "--state-dir", str(state)]) == 0
    assert "connection:      ready" in capsys.readouterr().out


def test_cli_without_status_file_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    state = _env_state(tmp_path, monkeypatch)
    assert main(["status", "--state-dir", str(state)]) == 69
    assert "no status file" in capsys.readouterr().err


def test_cli_stopped_daemon_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _env_state(tmp_path, monkeypatch)
    state.mkdir()
    (state / "status.json").write_text(json.dumps(_doc(stopped=True)))
    assert main(["status", "--state-dir", str(state)]) == 3
