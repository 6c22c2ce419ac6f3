"""``agent replay``: a tiny generated recording → valid SUBMIT frames in ts order, or a summary."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.protocol import DataType, Submit, parse, ts_to_unix
from tests.processing.test_pipeline import resting_acc, walking_acc

T0 = 1_767_772_800.0


def write_csv_gz(path: Path, header: str, rows: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write(header + "\n")
        f.writelines(r + "\n" for r in rows)


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """40 s: 25 s walking at 1.8 steps/s up a storey, then rest; acc+gyro 50 Hz, HR, pressure."""
    d = tmp_path / "session"
    d.mkdir()
    t1, a1 = walking_acc(T0, 25.0, 1.8, fs=50.0)
    t2, a2 = resting_acc(T0 + 25.0, 15.0, fs=50.0)
    t, a = np.concatenate([t1, t2]), np.concatenate([a1, a2])
    rows = [f"{ti:.6f},{x:.5f},{y:.5f},{z:.5f}" for ti, (x, y, z) in zip(t, a, strict=True)]
    write_csv_gz(d / "acc.csv.gz", "t,x,y,z", rows)
    write_csv_gz(d / "gyro.csv.gz", "t,x,y,z",
                 [f"{ti:.6f},0.01,-0.02,0.03" for ti in t])
    hr = [f"{T0 + s + 0.3:.6f},{72 + s % 3},{800 + s % 7} {810 - s % 5}" for s in range(40)]
    write_csv_gz(d / "hr.csv.gz", "t,bpm,rr", hr)
    tp = T0 + np.arange(0, 40.0, 0.1)
    hpa = 1000.0 - np.clip((tp - T0 - 4.0) / 15.0, 0, 1) * 3.2 / 8.4
    write_csv_gz(d / "pressure.csv.gz", "t,hpa", [f"{a:.6f},{b:.4f}" for a, b in zip(tp, hpa,
                                                                                    strict=True)])
    meta = {"format": "agent-recording/1", "streams": ["acc.csv.gz", "gyro.csv.gz", "hr.csv.gz",
                                                        "pressure.csv.gz"],
            "source": "test", "placement": "chest", "device": "synthetic",
            "subject": {"height_m": 1.80}}
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def frames(text: str) -> list[Submit]:
    out = []
    for line in text.splitlines():
        payload = parse(line)
        assert isinstance(payload, Submit)
        out.append(payload)
    return out


def test_jsonl_prints_valid_submit_frames_in_ts_order(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(recording), "--jsonl"]) == 0
    subs = frames(capsys.readouterr().out)
    ts = [ts_to_unix(s.ts or "") for s in subs]
    assert ts == sorted(ts)
    assert ts[0] >= T0 and ts[-1] <= T0 + 41.0
    last = {s.type: s for s in subs}
    assert set(last) == set(DataType)
    assert last[DataType.STEPS].val == pytest.approx(45, abs=2)
    assert last[DataType.FLOORS_CLIMBED].val == 1.0
    assert last[DataType.STEPS_CADENCE].val == 0.0
    assert last[DataType.ACCELERATION].vec is not None
    # meta.json's height (1.80 m) sets the step length: ~0.415 × 1.80 per step.
    assert last[DataType.DISTANCE].val == pytest.approx(45 * 0.415 * 1.80, rel=0.06)
    steps = [s.val or 0.0 for s in subs if s.type is DataType.STEPS]
    assert steps == sorted(steps)  # totals accumulate over the recording


def test_height_option_overrides_meta(recording: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["replay", str(recording), "--jsonl", "--height", "1.50"])
    dist = [s.val for s in frames(capsys.readouterr().out) if s.type is DataType.DISTANCE]
    assert dist[-1] == pytest.approx(45 * 0.415 * 1.50, rel=0.06)


def test_replay_is_deterministic(recording: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["replay", str(recording), "--jsonl"])
    first = capsys.readouterr().out
    main(["replay", str(recording), "--jsonl"])
    assert capsys.readouterr().out == first


def test_summary(recording: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(recording)]) == 0
    out = capsys.readouterr().out
    assert "steps" in out and "floors      1" in out and "acc 50.0 Hz" in out
    assert "real time" in out


@pytest.mark.parametrize(
    ("case", "status"),
    [("missing", 66), ("file", 66), ("no-meta", 65), ("bad-csv", 65), ("bad-height", 64)],
)
def test_bad_input_exits_with_sysexits_status_and_a_clear_message(
    case: str, status: int, recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replay", str(recording)]
    if case == "missing":
        args = ["replay", str(tmp_path / "nope")]
    elif case == "file":
        (tmp_path / "f.txt").write_text("x")
        args = ["replay", str(tmp_path / "f.txt")]
    elif case == "no-meta":
        (recording / "meta.json").unlink()
    elif case == "bad-csv":
        write_csv_gz(recording / "acc.csv.gz", "t,x,y,z", [f"{T0},1,2,3", f"{T0 + 1},oops,2,3"])
    else:
        args += ["--height", "17"]
    assert main(args) == status
    err = capsys.readouterr().err
    assert err.startswith("agent replay: error:") and "Traceback" not in err


def test_server_without_a_token_source_is_a_usage_error(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(recording), "--server", "ws://127.0.0.1:9/connect"]) == 64
    assert "--token-file" in capsys.readouterr().err


async def test_server_streams_every_frame_through_outbox_and_uplink(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.processing.pipeline import ProcessingConfig
    from agent.relay.server import Relay, RelayConfig
    from agent.replay import load, replay_readings, stream_to_server

    expected = [r.submit_text() for r in replay_readings(
        load(recording), ProcessingConfig(height_m=1.8, totals_reset="never"))]
    async with Relay(RelayConfig(port=0, db=tmp_path / "relay.sqlite")) as relay:
        token_file = tmp_path / "token"
        token_file.write_text(await relay.mint_token(user_id="walker"))
        token_file.chmod(0o600)  # secrets readable by others are refused
        args = argparse.Namespace(
            server=relay.ws_url, token_file=str(token_file), token_command=None,
            allow_insecure_ws=False,
        )
        rec = load(recording)
        cfg = ProcessingConfig(height_m=1.8, totals_reset="never")
        assert await stream_to_server(replay_readings(rec, cfg), args) == 0
        stored = await relay.dispatches()
    got = [json.dumps({"op": 6, "d": json.loads(s.d), "t": s.t}, separators=(",", ":"))
           for s in stored]
    assert got == expected  # every frame, in order, exactly as --jsonl prints it
    assert all(s.uid == "walker" for s in stored)
    assert "delivered" in capsys.readouterr().err


def test_realtime_paces_by_recorded_time(recording: Path) -> None:
    from agent.processing.pipeline import ProcessingConfig
    from agent.replay import load, replay_readings

    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s  # a fake clock: sleeping advances it exactly

    count = sum(1 for _ in replay_readings(
        load(recording), ProcessingConfig(totals_reset="never"), realtime=True,
        sleep=sleep, clock=lambda: now[0]))
    assert count > 0
    assert now[0] == pytest.approx(40.0, abs=0.1)  # the recording spans 40 s


def test_realtime_output_trails_the_recording_by_the_reorder_window_only(
    recording: Path,
) -> None:
    """Paced output must come out about as live output does, not half a minute late."""
    from agent.processing.pipeline import ProcessingConfig
    from agent.replay import load, reorder_window, replay_readings

    config = ProcessingConfig(totals_reset="never")
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    # (seconds since the start when the reading came out, its recorded time since the start)
    out = [(now[0], r.t - T0) for r in replay_readings(
        load(recording), config, realtime=True, sleep=sleep, clock=lambda: now[0])]
    window = reorder_window(config)
    assert window == pytest.approx(12.0)
    # until the recording ends (then everything left is flushed), no reading waits longer
    before_end = [at - t for at, t in out if at < 39.0]
    assert before_end and max(before_end) <= window + 1.5
    assert sum(1 for at, _ in out if at < 39.0) > len(out) / 2  # most came out on the way


def test_config_processing_settings_apply_to_replay(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A calibrated step_length_factor (and submit rates) change a replay as they change live."""
    assert main(["replay", str(recording), "--jsonl"]) == 0
    base = frames(capsys.readouterr().out)
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[processing]\nstep_length_factor = 2.0\nacc_submit_hz = 1.0\n")
    assert main(["replay", str(recording), "--jsonl", "--config", str(cfg)]) == 0
    scaled = frames(capsys.readouterr().out)

    def last(fs: list[Submit], dt: DataType) -> float:
        vals = [f.val for f in fs if f.type is dt]
        assert vals and vals[-1] is not None
        return float(vals[-1])

    assert last(scaled, DataType.DISTANCE) == pytest.approx(
        2.0 * last(base, DataType.DISTANCE), rel=0.01)
    n_acc = sum(1 for f in scaled if f.type is DataType.ACCELERATION)
    assert 35 <= n_acc <= 42  # 1 Hz over 40 s (default 4 Hz gives ~160)
    # the environment works too, like for agent run
    monkeypatch.setenv("AGENT_PROCESSING__STEP_LENGTH_FACTOR", "2.0")
    assert main(["replay", str(recording)]) == 0
    assert "step_length_factor 2" in capsys.readouterr().out


def test_bad_config_is_exit_78(recording: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.toml"
    for bad in ("-1", "0.1"):  # 0.1: once accepted by the config, refused by the model
        cfg.write_text(f"[processing]\nstep_length_factor = {bad}\n")
        assert main(["replay", str(recording), "--config", str(cfg)]) == 78
        assert "step_length_factor" in capsys.readouterr().err


def test_summary_duration_spans_the_whole_recording(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(recording)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("duration"))
    assert float(line.split()[1]) == pytest.approx(40.0, abs=0.1)


async def test_server_with_token_url_mints_tokens_over_rest(
    recording: Path, tmp_path: Path
) -> None:
    from agent.relay.server import Relay, RelayConfig

    key = tmp_path / "dev.key"
    key.write_text("replay-test-key-123")
    key.chmod(0o600)
    async with Relay(RelayConfig(port=0, db=tmp_path / "relay.sqlite",
                                 developers={"dev1": "replay-test-key-123"})) as relay:
        status = await asyncio.to_thread(main, [
            "replay", str(recording), "--server", relay.ws_url, "--token-url", relay.url,
            "--dev-id", "dev1", "--api-key-file", str(key), "--user-id", "walker",
        ])
        stored = await relay.dispatches()
    assert status == 0
    assert stored and all(s.uid == "walker" for s in stored)


def test_token_url_without_its_companions_is_a_usage_error(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replay", str(recording), "--server", "ws://127.0.0.1:9/connect",
            "--token-url", "http://127.0.0.1:9", "--dev-id", "d"]
    assert main(args) == 64
    assert "--api-key-file, --user-id" in capsys.readouterr().err


def test_calibrate_prints_the_step_length_factor(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.processing.distance import calibrate_from_recording

    assert main(["replay", str(recording), "--calibrate", "30", "--height", "1.8"]) == 0
    out = capsys.readouterr().out
    expected = calibrate_from_recording(recording, 30.0, height_m=1.8)
    assert out.startswith(f"step_length_factor = {expected:.4f}")


def test_production_config_with_systemd_credentials_works_outside_the_service(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's board config names secrets as cred:NAME; replay needs only [processing]."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[uplink]\nserver = "wss://ws.tryterra.co/connect"\ntoken_file = "cred:token"\n'
                   "[processing]\nstep_length_factor = 1.1\n")
    assert main(["replay", str(recording), "--config", str(cfg)]) == 0
    assert "step_length_factor 1.1" in capsys.readouterr().out
