"""``agent relay`` command line: settings, key-file checks, and a real subprocess."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from agent.relay import cli
from tests.relay.conftest import WAIT_S, expect_close, identify_text, recv_json

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return parser.parse_args(list(argv))


def key_file(path: Path, key: str = "k-0123456789", mode: int = 0o600) -> Path:
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def test_command_line_settings(tmp_path: Path) -> None:
    key = key_file(tmp_path / "a.key")
    args = parse("--host", "127.0.0.1", "--port", "0", "--db", str(tmp_path / "r.db"),
                 "--dev-id", "a", "--api-key-file", str(key),
                 "--heartbeat-interval", "1234", "--identify-timeout", "2.5", "--token-ttl", "9")
    config, notes = cli.build_config(args)
    assert (config.port, config.heartbeat_interval_ms) == (0, 1234)
    assert (config.identify_timeout_s, config.token_ttl_s) == (2.5, 9.0)
    assert config.db == tmp_path / "r.db"
    assert dict(config.developers) == {"a": "k-0123456789"}
    assert notes == [f"relay database: {tmp_path / 'r.db'}"]


def test_config_file_then_command_line_override(tmp_path: Path) -> None:
    key_file(tmp_path / "a.key", "from-file")
    key_file(tmp_path / "b.key", "from-cli")
    conf = tmp_path / "agent.toml"
    conf.write_text(
        '[relay]\nhost = "127.0.0.2"\nport = 9999\ndb = "data/relay.sqlite"\n'
        "heartbeat_interval_ms = 5000\nidentify_timeout_s = 3\ntoken_ttl_s = 30.5\n"
        "retention_days = 2\nmax_frame_bytes = 4096\n"
        '[[relay.developers]]\ndev_id = "a"\napi_key_file = "a.key"\n'
    )
    config, _ = cli.build_config(parse("--config", str(conf), "--port", "0",
                                       "--dev-id", "b", "--api-key-file",
                                       str(tmp_path / "b.key")))
    assert config.host == "127.0.0.2" and config.port == 0
    assert config.db == tmp_path / "data" / "relay.sqlite"  # relative to the file
    assert config.heartbeat_interval_ms == 5000 and config.identify_timeout_s == 3.0
    assert config.token_ttl_s == 30.5 and config.retention_s == 2 * 86400.0
    assert config.max_frame_bytes == 4096
    assert dict(config.developers) == {"a": "from-file", "b": "from-cli"}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[relay]\nprot = 1\n", "unknown key"),
        ('[relay]\nport = "80"\n', "relay.port must be an integer"),
        ("[relay]\nport = 70000\n", "out of range"),
        ("[relay\n", "not valid TOML"),
        ('[[relay.developers]]\ndev_id = "a"\n', "needs exactly dev_id and api_key_file"),
    ],
)
def test_config_file_errors_are_clear(tmp_path: Path, toml: str, message: str) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(toml)
    with pytest.raises(cli.RelayCliError, match=message):
        cli.build_config(parse("--config", str(conf), "--db", str(tmp_path / "r.db")))


def test_group_readable_key_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = key_file(tmp_path / "a.key", mode=0o640)
    args = parse("--db", str(tmp_path / "r.db"), "--dev-id", "a", "--api-key-file", str(key))
    assert cli.run(args) == cli.EX_CONFIG
    err = capsys.readouterr().err
    assert "chmod 600" in err and "k-0123456789" not in err


def test_unpaired_dev_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(cli.RelayCliError, match="pairs"):
        cli.build_config(parse("--db", str(tmp_path / "r.db"), "--dev-id", "a"))


def test_without_developers_a_local_one_is_generated_once(tmp_path: Path) -> None:
    config, notes = cli.build_config(parse("--db", str(tmp_path / "r.db")))
    key_path = tmp_path / f"relay-{cli.LOCAL_DEV_ID}.key"
    assert list(config.developers) == [cli.LOCAL_DEV_ID]
    assert (key_path.stat().st_mode & 0o077) == 0
    assert "generated" in notes[1] and str(key_path) in notes[1]
    again, notes2 = cli.build_config(parse("--db", str(tmp_path / "r.db")))
    assert dict(again.developers) == dict(config.developers)  # reused, not replaced
    assert "using" in notes2[1]


def _mint(url: str, key: str) -> str:
    request = urllib.request.Request(
        url + "/auth/developer", data=b"", method="POST",
        headers={"dev-id": "a", "x-api-key": key},
    )
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        token: str = json.loads(response.read())["token"]
    return token


async def test_subprocess_prints_address_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    key = key_file(tmp_path / "a.key")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "relay", "--port", "0", "--db", str(tmp_path / "r.db"),
        "--dev-id", "a", "--api-key-file", str(key), "--heartbeat-interval", "60000",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(WAIT_S):
            first = (await proc.stdout.readline()).decode()
        assert first.startswith("relay listening on http://127.0.0.1:")
        url = first.strip().removeprefix("relay listening on ")
        port = int(url.rsplit(":", 1)[1])
        assert port != 0
        token = await asyncio.to_thread(_mint, url, "k-0123456789")
        async with connect(f"ws://127.0.0.1:{port}/connect") as ws:
            assert (await recv_json(ws))["d"]["heartbeat_interval"] == 60000
            await ws.send(identify_text(token, 1))
            assert await recv_json(ws) == {"op": 4}
            proc.send_signal(signal.SIGTERM)
            await expect_close(ws, 1001)
        async with asyncio.timeout(WAIT_S):
            assert await proc.wait() == 0
        stderr = (await proc.stderr.read()).decode()
        assert "code=1001" in stderr
        assert "k-0123456789" not in stderr and token not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_subprocess_port_in_use_fails_clearly(tmp_path: Path) -> None:
    key = key_file(tmp_path / "a.key")
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "relay", "--port", str(port),
            "--db", str(tmp_path / "r.db"), "--dev-id", "a", "--api-key-file", str(key),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        )
        async with asyncio.timeout(WAIT_S):
            out, err = await proc.communicate()
        assert proc.returncode == cli.EX_CANTCREAT
        assert out == b""
        assert b"cannot start" in err
    finally:
        blocker.close()
        await blocker.wait_closed()
