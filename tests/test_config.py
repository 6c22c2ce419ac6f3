"""Configuration loading, precedence, validation, the example file and ``agent check-config``."""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import platformdirs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import check_config
from agent.config import (
    APP_NAME,
    EXIT_CONFIG,
    BleDeviceSection,
    Config,
    ConfigError,
    default_config,
    load_config,
    overrides_from_args,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"

TOKEN_URL_SOURCE = """
[uplink]
server = "wss://broker.example/connect"
token_url = "https://broker.example/auth/user"
dev_id = "dev"
api_key_file = "api-key"
user_id = "u1"
"""


def load(
    tmp_path: Path,
    text: str = "",
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, object] | None = None,
) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, env=env or {}, overrides=overrides)


def error(tmp_path: Path, text: str = "", **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, **kwargs)
    return caught.value


# --------------------------------------------------------------------------------------------------
# Defaults and paths


def test_defaults(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    assert config.state_dir == tmp_path
    assert config.uplink.server is None  # embedded relay
    assert config.outbox.path == tmp_path / "outbox.sqlite"
    assert config.outbox.max_bytes == 256 * 1024 * 1024
    assert config.status.path == tmp_path / "status.json"
    assert config.relay.db == tmp_path / "relay.sqlite"
    assert config.relay.port == 8765 and config.relay.host == "127.0.0.1"
    assert config.processing.totals_reset == "daily"
    assert config.sensors.ble == () and config.sensors.simulation.seed == 1
    assert config.logging.level == "info"
    assert config.config_file is None


def test_state_dir_precedence(tmp_path: Path) -> None:
    assert load(tmp_path).state_dir == Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))
    env = {"STATE_DIRECTORY": "/var/lib/wearable-agent:/var/lib/other"}
    assert load(tmp_path, env=env).state_dir == Path("/var/lib/wearable-agent")
    configured = load(tmp_path, 'state_dir = "data"', env=env)
    assert configured.state_dir == tmp_path / "data"  # relative to the config file
    assert configured.outbox.path == tmp_path / "data" / "outbox.sqlite"
    flat = load(tmp_path, 'state_dir = "data"', env={**env, "AGENT_STATE_DIR": "/srv/a"})
    assert flat.state_dir == Path("/srv/a")
    cli = load(tmp_path, env={"AGENT_STATE_DIR": "/srv/a"}, overrides={"state_dir": Path("/b")})
    assert cli.state_dir == Path("/b")
    assert cli.status.path == Path("/b/status.json")


def test_config_file_discovery(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "config.toml").write_text("[logging]\nlevel = 'debug'\n")
    systemd_env = {"CONFIGURATION_DIRECTORY": str(conf_dir)}
    config = load_config(env=systemd_env)
    assert config.logging.level == "debug"
    assert config.config_file == conf_dir / "config.toml"
    # $AGENT_CONFIG wins over the systemd directory; an explicit path over both.
    other = tmp_path / "other.toml"
    other.write_text("[logging]\nlevel = 'error'\n")
    assert load_config(env={**systemd_env, "AGENT_CONFIG": str(other)}).logging.level == "error"
    assert load_config(other, env=systemd_env).logging.level == "error"
    # A missing default file means built-in defaults; a missing named file is an error.
    empty_env = {"CONFIGURATION_DIRECTORY": str(tmp_path / "nothing")}
    assert load_config(env=empty_env).config_file is None
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(env={"AGENT_CONFIG": str(tmp_path / "missing.toml")})


def test_relative_paths_in_file_env_and_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = load(
        tmp_path,
        '[recording]\ndir = "rec"\n[outbox]\npath = "~/o.sqlite"\n',
        env={"AGENT_STATUS__PATH": "s.json"},
        overrides={"uplink.ca_file": "ca.pem"},
    )
    assert config.recording.dir == tmp_path / "rec"
    assert config.outbox.path == Path.home() / "o.sqlite"
    assert config.status.path == work / "s.json"
    assert config.uplink.ca_file == work / "ca.pem"


def test_credentials(tmp_path: Path) -> None:
    text = '[uplink]\nserver = "wss://b.example/connect"\ntoken_file = "cred:token"\n'
    config = load(tmp_path, text, env={"CREDENTIALS_DIRECTORY": "/run/credentials/x.service"})
    assert config.uplink.token_file == Path("/run/credentials/x.service/token")
    err = error(tmp_path, text)
    assert err.key == "uplink.token_file"
    assert "CREDENTIALS_DIRECTORY" in err.problem and "LoadCredential=token" in err.problem
    bad = text.replace("cred:token", "cred:../etc/shadow")
    assert "not a valid credential name" in str(
        error(tmp_path, bad, env={"CREDENTIALS_DIRECTORY": "/run/c"})
    )


# --------------------------------------------------------------------------------------------------
# Precedence and the environment mapping


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    text = "[processing]\nheight_m = 1.6\nacc_submit_hz = 2.0\ngyro_submit_hz = 3.0\n"
    env = {"AGENT_PROCESSING__ACC_SUBMIT_HZ": "5", "AGENT_PROCESSING__GYRO_SUBMIT_HZ": "6"}
    config = load(tmp_path, text, env=env, overrides={"processing.gyro_submit_hz": 7.5})
    assert config.processing.height_m == 1.6  # file
    assert config.processing.acc_submit_hz == 5.0  # environment over file
    assert config.processing.gyro_submit_hz == 7.5  # command line over environment
    assert config.processing.step_length_factor == 1.0  # default


def test_environment_conversion(tmp_path: Path) -> None:
    env = {
        "AGENT_SENSORS__SIMULATE": "yes",
        "agent_sensors__simulation__seed": "0x10",
        "AGENT_SENSORS__SIMULATION__SPEED": "2.5",
        "AGENT_SENSORS__IIO_BAROMETER": "iio:device1",
        "AGENT_LOGGING__LEVEL": "DEBUG",
        "AGENT_OUTBOX__MAX_BYTES": "10_000_000",
        "AGENT_HARDWARE_TESTS": "1",  # not a configuration key: ignored
        "AGENT_CONFIG_UNUSED": "x",  # no "__": ignored
    }
    config = load(tmp_path, env=env)
    assert config.sensors.simulate is True
    assert config.sensors.simulation.seed == 16
    assert config.sensors.simulation.speed == 2.5
    assert config.sensors.iio_barometer == "iio:device1"
    assert config.logging.level == "debug"
    assert config.outbox.max_bytes == 10_000_000
    assert load(tmp_path, env={"AGENT_SENSORS__IIO_BAROMETER": "on"}).sensors.iio_barometer is True
    assert load(tmp_path, env={"AGENT_RELAY__PORT": "08765"}).relay.port == 8765


def test_empty_environment_value_unsets_an_optional_key(tmp_path: Path) -> None:
    text = '[processing]\ntimezone = "Europe/Paris"\n'
    assert load(tmp_path, text).processing.timezone == "Europe/Paris"
    assert load(tmp_path, text, env={"AGENT_PROCESSING__TIMEZONE": ""}).processing.timezone is None


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    err = error(tmp_path, env={"AGENT_UPLINK__SERVR": "wss://x"})
    assert str(err) == (
        "config error: uplink.servr: unknown key (did you mean uplink.server?) "
        "(from AGENT_UPLINK__SERVR)"
    )
    err = error(tmp_path, env={"AGENT_SENSORS__SIMULATE": "maybe"})
    assert (err.key, err.problem, err.source) == (
        "sensors.simulate",
        "must be true or false",
        "AGENT_SENSORS__SIMULATE",
    )
    err = error(tmp_path, env={"AGENT_SENSORS__BLE": "chest"})
    assert err.key == "sensors.ble" and "[[sensors.ble]]" in err.problem
    assert "float" not in str(error(tmp_path, env={"AGENT_OUTBOX__FLUSH_INTERVAL_S": "soon"}))


def test_cli_token_source_replaces_the_files(tmp_path: Path) -> None:
    text = '[uplink]\nserver = "wss://b.example/c"\ntoken_file = "/etc/token"\n'
    config = load(tmp_path, text, overrides={"uplink.token_command": "get-token --fresh"})
    assert config.uplink.token_command == "get-token --fresh"
    assert config.uplink.token_file is None
    config = load(tmp_path, TOKEN_URL_SOURCE, env={"AGENT_UPLINK__TOKEN_FILE": "/t"})
    assert config.uplink.token_file == Path("/t")
    assert config.uplink.token_url is None and config.uplink.api_key_file is None
    # Within one group, keys combine across layers.
    config = load(tmp_path, TOKEN_URL_SOURCE, overrides={"uplink.user_id": "u2"})
    assert config.uplink.user_id == "u2" and config.uplink.dev_id == "dev"


def test_none_overrides_are_flags_not_given(tmp_path: Path) -> None:
    config = load(tmp_path, "[sensors]\nsimulate = true\n", overrides={"sensors.simulate": None})
    assert config.sensors.simulate is True
    assert load(tmp_path, overrides={"sensors.simulate": True}).sensors.simulate is True


# --------------------------------------------------------------------------------------------------
# Validation


def test_unknown_keys_with_hints(tmp_path: Path) -> None:
    err = error(tmp_path, "[uplink]\ntoken_fille = 'x'\n")
    assert err.key == "uplink.token_fille"
    assert "did you mean uplink.token_file?" in err.problem
    assert err.source == str(tmp_path / "config.toml")
    assert "did you mean uplink?" in str(error(tmp_path, "[uplnk]\nserver = 'x'\n"))
    assert "known keys here" in str(error(tmp_path, "[logging]\nzzz = 1\n"))
    assert error(tmp_path, "[[sensors.ble]]\nname='a'\naddres='x'\n").key == "sensors.ble[0].addres"


def test_type_errors_name_key_and_problem(tmp_path: Path) -> None:
    cases = {
        "[sensors]\nsimulate = 'true'\n": ("sensors.simulate", "must be true or false"),
        "[relay]\nport = 80.5\n": ("relay.port", "must be an integer"),
        "[relay]\nport = 70000\n": ("relay.port", "must be at most 65535"),
        "[relay]\nport = true\n": ("relay.port", "must be an integer"),
        "[processing]\nheight_m = 'tall'\n": ("processing.height_m", "must be a number"),
        "[processing]\nheight_m = 0.1\n": ("processing.height_m", "must be at least 0.5"),
        "[outbox]\nflush_interval_s = 0\n": ("outbox.flush_interval_s", "must be greater than 0"),
        "[processing]\ntotals_reset = 'weekly'\n": (
            "processing.totals_reset",
            "must be one of 'daily', 'never', 'session'",
        ),
        "[logging]\nlevel = 'loud'\n": ("logging.level", "must be one of"),
        "uplink = 3\n": ("uplink", "must be a table"),
        "[uplink.server]\nx = 1\n": ("uplink.server", "must be a value, not a table"),
        "[recording]\ndir = ''\n": ("recording.dir", "must be a path"),
        "[sensors]\niio_barometer = 3\n": ("sensors.iio_barometer", "must be true, false"),
    }
    for text, (key, problem) in cases.items():
        err = error(tmp_path, text)
        assert err.key == key, text
        assert problem in err.problem, text
        assert str(err).startswith(f"config error: {key}: "), text


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    err = error(tmp_path, "[uplink\n")
    assert err.key == str(tmp_path / "config.toml")
    assert "invalid TOML" in err.problem


@pytest.mark.parametrize(
    ("server", "insecure", "problem"),
    [
        ("http://broker.example", False, "must be a ws:// or wss:// URL"),
        ("broker.example:443", False, "must be a ws:// or wss:// URL"),
        ("ws://broker.example/connect", False, "would send tokens unencrypted"),
        ("wss://user:pw@broker.example/", False, "must not contain credentials"),
        ("wss://broker.example:99999/", False, "is not a valid URL"),
    ],
)
def test_bad_servers(tmp_path: Path, server: str, insecure: bool, problem: str) -> None:
    flag = str(insecure).lower()
    text = f'[uplink]\nserver = "{server}"\ntoken_file = "/t"\nallow_insecure_ws = {flag}\n'
    err = error(tmp_path, text)
    assert err.key == "uplink.server"
    assert problem in err.problem


@pytest.mark.parametrize(
    "server",
    [
        "wss://ws.tryterra.co/connect",
        "ws://127.0.0.1:8765/connect",
        "ws://[::1]:1/c",
        "ws://localhost:8765/connect",
        "ws://127.1.2.3/",
    ],
)
def test_good_servers(tmp_path: Path, server: str) -> None:
    config = load(tmp_path, f'[uplink]\nserver = "{server}"\ntoken_file = "/t"\n')
    assert config.uplink.server == server


def test_insecure_ws_allowed_when_asked(tmp_path: Path) -> None:
    text = '[uplink]\nserver = "ws://10.0.0.5/c"\ntoken_file = "/t"\nallow_insecure_ws = true\n'
    assert load(tmp_path, text).uplink.server == "ws://10.0.0.5/c"


def test_token_sources(tmp_path: Path) -> None:
    server = '[uplink]\nserver = "wss://b.example/c"\n'
    err = error(tmp_path, server)
    assert err.key == "uplink" and "token source is needed" in err.problem
    err = error(tmp_path, server + 'token_file = "/t"\ntoken_command = "x"\n')
    assert (
        "exactly one token source" in err.problem and "token_file and token_command" in err.problem
    )
    err = error(tmp_path, server + 'token_url = "https://b.example/auth/user"\ndev_id = "d"\n')
    assert err.key == "uplink.token_url"
    assert "uplink.api_key_file, uplink.user_id" in err.problem
    err = error(tmp_path, server + 'token_file = "/t"\ndev_id = "d"\n')
    assert err.key == "uplink.dev_id" and "token_url" in err.problem
    err = error(tmp_path, server + 'token_command = "unterminated \'quote"\n')
    assert err.key == "uplink.token_command"
    err = error(tmp_path, TOKEN_URL_SOURCE.replace("https://", "http://"))
    assert err.key == "uplink.token_url" and "unencrypted" in err.problem
    config = load(tmp_path, TOKEN_URL_SOURCE)
    assert config.uplink.api_key_file == tmp_path / "api-key"
    # No server: the embedded relay needs no token source.
    assert load(tmp_path, "[uplink]\n").uplink.token_file is None


def test_ble_devices(tmp_path: Path) -> None:
    text = """
[[sensors.ble]]
name = "chest"
address = "A0:9E:1A:12:34:56"
acc_rate_hz = 200
acc_range_g = 8

[[sensors.ble]]
name = "foot"
service = "1814"
heart_rate = false
battery_interval_s = 60
"""
    config = load(tmp_path, text)
    chest, foot = config.sensors.ble
    assert chest == BleDeviceSection(
        name="chest", address="A0:9E:1A:12:34:56", acc_rate_hz=200, acc_range_g=8
    )
    assert foot.service == "1814" and foot.heart_rate is False
    assert foot.battery_interval_s == 60.0 and isinstance(foot.battery_interval_s, float)
    # The BLE helper's BleDeviceConfig takes the same names: asdict() maps across.
    assert set(dataclasses.asdict(chest)) == {f.name for f in dataclasses.fields(BleDeviceSection)}


@pytest.mark.parametrize("service", ["heart_rate", "pmd", "rsc", "pressure", "180d"])
def test_ble_service_names_load_and_map_onto_the_ble_config(tmp_path: Path, service: str) -> None:
    from sensors.ble import BleDeviceConfig, service_uuid

    config = load(tmp_path, f'[[sensors.ble]]\nname = "x"\nservice = "{service}"\n')
    section = config.sensors.ble[0]
    ble = BleDeviceConfig(**dataclasses.asdict(section))
    assert service_uuid(ble.service or "").endswith("-0000-1000-8000-00805f9b34fb") or (
        service == "pmd"
    )


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ('address = "A0:9E"', "sensors.ble[0].name", "is required"),
        ('name = "a"', "sensors.ble[0]", "needs address, name_contains or service"),
        ('name = "a"\naddress = "A0:9E"', "sensors.ble[0].address", "Bluetooth address"),
        ('name = "a"\nservice = "heart"', "sensors.ble[0].service", "UUID"),
        (
            'name = "a"\nname_contains = "H10"\nacc_rate_hz = 0',
            "sensors.ble[0].acc_rate_hz",
            "greater than 0",
        ),
        (
            'name = "a"\nname_contains = "H10"\nacc_rate_hz = 52.5',
            "sensors.ble[0].acc_rate_hz",
            "integer",
        ),
        ('name = "a"\nname_contains = "H10"\nrsc = 1', "sensors.ble[0].rsc", "true or false"),
        (
            'name = "a"\nname_contains = "H10"\nadapter = "/dev/hci0"',
            "sensors.ble[0].adapter",
            "hci0",
        ),
        ('name = ""\nname_contains = "H10"', "sensors.ble[0].name", "non-empty"),
    ],
)
def test_ble_device_validation(tmp_path: Path, table: str, key: str, problem: str) -> None:
    err = error(tmp_path, f"[[sensors.ble]]\n{table}\n")
    assert err.key == key
    assert problem in err.problem


def test_ble_duplicate_names_and_macos_uuid(tmp_path: Path) -> None:
    dup = '[[sensors.ble]]\nname = "a"\nservice = "180d"\n' * 2
    assert "duplicate" in error(tmp_path, dup).problem
    uuid_addr = '[[sensors.ble]]\nname = "a"\naddress = "0B0A6B3C-8F3E-4D4A-9A2E-1C2D3E4F5A6B"\n'
    assert load(tmp_path, uuid_addr).sensors.ble[0].address is not None


def test_timezone_is_checked(tmp_path: Path) -> None:
    assert load(tmp_path, "[processing]\ntimezone = 'UTC'\n").processing.timezone == "UTC"
    err = error(tmp_path, "[processing]\ntimezone = 'Mars/Olympus'\n")
    assert err.key == "processing.timezone"


def test_relay_section(tmp_path: Path) -> None:
    text = """
[relay]
port = 0
db = "relay.db"
retention_days = 1

[[relay.developers]]
dev_id = "alice"
api_key_file = "/etc/wa/alice"

[[relay.developers]]
dev_id = "bob"
api_key_file = "bob.key"
"""
    relay = load(tmp_path, text).relay
    assert relay.port == 0 and relay.db == tmp_path / "relay.db" and relay.retention_days == 1.0
    assert [(d.dev_id, d.api_key_file) for d in relay.developers] == [
        ("alice", Path("/etc/wa/alice")),
        ("bob", tmp_path / "bob.key"),
    ]
    dup = text.replace('"bob"', '"alice"')
    assert error(tmp_path, dup).key == "relay.developers[1].dev_id"
    missing = "[[relay.developers]]\ndev_id = 'x'\n"
    assert error(tmp_path, missing).key == "relay.developers[0].api_key_file"


def test_secret_values_have_no_key_in_the_schema() -> None:
    """Only paths to secrets are configurable: no text option can hold a token or key itself."""
    import typing

    allowed_text = {"token_command", "token_url"}  # a command line and an endpoint, not secrets
    checked = []
    for cls in _schema_tables().values():
        for name, hint in typing.get_type_hints(cls).items():
            if re.search(r"token|key|secret|password", name):
                checked.append(name)
                if name not in allowed_text:
                    assert str not in (hint, *typing.get_args(hint)), name
    assert {"token_file", "api_key_file", "token_ttl_s"} <= set(checked)


def test_import_is_cheap() -> None:
    code = (
        "import sys, agent.config, agent.secrets, agent.logs, agent.systemd, agent.check_config\n"
        "heavy = {'numpy', 'scipy', 'bleak', 'websockets', 'platformdirs', 'asyncio'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# The example file


def _example_keys(text: str) -> dict[str, set[str]]:
    """Keys mentioned (commented or not) under each table header of the example file."""
    found: dict[str, set[str]] = {"": set()}
    table = ""
    for raw in text.splitlines():
        line = raw[2:] if raw.startswith("# ") else raw
        if header := re.fullmatch(r"\[\[?([a-z_.]+)\]\]?", line.strip()):
            table = header.group(1)
            found.setdefault(table, set())
        elif key := re.fullmatch(r"([a-z_]+) = .+", line):
            found[table].add(key.group(1))
    return found


def _schema_tables() -> dict[str, type]:
    tables: dict[str, type] = {"": Config}

    def walk(cls: type, prefix: str) -> None:
        import typing

        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = typing.get_args(hint)
            target = args[0] if typing.get_origin(hint) is tuple else hint
            if isinstance(target, type) and dataclasses.is_dataclass(target):
                name = f"{prefix}{f.name}"
                tables[name] = target
                walk(target, f"{name}.")

    walk(Config, "")
    return tables


def test_example_loads_as_shipped(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, env={"STATE_DIRECTORY": str(tmp_path)})
    assert config == dataclasses.replace(default_config(tmp_path), config_file=EXAMPLE)


def test_example_documents_every_option() -> None:
    keys = _example_keys(EXAMPLE.read_text())
    tables = _schema_tables()
    assert set(keys) == set(tables), "table headers differ from the schema"
    for table, cls in tables.items():
        options = {
            f.name
            for f in dataclasses.fields(cls)
            if f.metadata.get("toml", True) and f"{table}.{f.name}".lstrip(".") not in tables
        }
        assert keys[table] == options, f"[{table}]: example {keys[table]} != schema {options}"


def test_example_check_can_fail() -> None:
    text = EXAMPLE.read_text().replace("# acc_submit_hz = 4.0\n", "")
    assert "acc_submit_hz" not in _example_keys(text)["processing"]


def test_example_defaults_match_the_code(tmp_path: Path) -> None:
    """Each "# key = value" line for an option with a built-in default shows that default."""
    tables = _schema_tables()
    table = ""
    checked = 0
    for raw in EXAMPLE.read_text().splitlines():
        line = raw[2:] if raw.startswith("# ") else raw
        if header := re.fullmatch(r"\[\[?([a-z_.]+)\]\]?", line.strip()):
            table = header.group(1)
            continue
        if not re.fullmatch(r"[a-z_]+ = .+", line):
            continue
        key, value = next(iter(tomllib.loads(line).items()))
        field = next(f for f in dataclasses.fields(tables[table]) if f.name == key)
        if field.default is dataclasses.MISSING or field.default is None:
            continue  # required, derived from state_dir, or an example value for an unset option
        assert value == field.default, f"[{table}] {key}: example {value!r} != {field.default!r}"
        assert type(value) is type(field.default) or isinstance(field.default, float), key
        checked += 1
    assert checked >= 30


def test_example_value_lines_are_valid_when_uncommented(tmp_path: Path) -> None:
    """Uncommenting one table's example lines gives a config that loads (token sources aside)."""
    text = EXAMPLE.read_text()
    ble = text[text.index("# [[sensors.ble]]") : text.index("[recording]")]
    uncommented = "\n".join(
        line[2:]
        for line in ble.splitlines()
        if line.startswith("# ") and not line.startswith(("# address", "# service"))
    )
    (device,) = load(tmp_path, uncommented).sensors.ble
    assert device.name == "chest" and device.name_contains == "Polar H10"
    assert device.acc_rate_hz == 200 and device.gyro_range_dps == 2000


# --------------------------------------------------------------------------------------------------
# agent check-config


def _check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    code = check_config.check(
        path, env={"STATE_DIRECTORY": str(tmp_path), **(env or {})}, out=out, err=err
    )
    return code, out.getvalue(), err.getvalue()


def test_check_config_prints_a_config_that_loads_back(tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("super-secret-api-key\n")
    secret.chmod(0o600)
    text = (
        TOKEN_URL_SOURCE
        + """
[sensors]
iio_barometer = "iio:device0"
[[sensors.ble]]
name = "chest"
name_contains = "Polar H10"
acc_rate_hz = 200
[[relay.developers]]
dev_id = "alice"
api_key_file = "api-key"
"""
    )
    code, out, err = _check(tmp_path, text)
    assert code == 0, err
    assert "super-secret-api-key" not in out + err
    assert f'api_key_file = "{secret}"  # secret: path only' in out
    assert "uplink.api_key_file" in err and "ok" in err
    printed = tmp_path / "printed.toml"
    printed.write_text(out)
    original = load(tmp_path, text, env={"STATE_DIRECTORY": str(tmp_path)})
    again = load_config(printed, env={})
    assert dataclasses.replace(again, config_file=None) == dataclasses.replace(
        original, config_file=None
    )


def test_check_config_exit_78_on_bad_config(tmp_path: Path) -> None:
    code, out, err = _check(tmp_path, "[uplink]\nserver = 'ftp://x'\n")
    assert code == EXIT_CONFIG
    assert out == ""
    assert "config error: uplink.server: must be a ws:// or wss:// URL" in err


def test_check_config_exit_78_on_exposed_secret(tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("super-secret-api-key\n")
    secret.chmod(0o644)
    code, out, err = _check(tmp_path, TOKEN_URL_SOURCE)
    assert code == EXIT_CONFIG
    assert "chmod 600" in err
    assert "super-secret-api-key" not in out + err


def test_check_config_outside_the_service_accepts_credentials(tmp_path: Path) -> None:
    text = '[uplink]\nserver = "wss://b.example/c"\ntoken_file = "cred:token"\n'
    code, out, err = _check(tmp_path, text)
    assert code == 0, err
    assert 'token_file = "/run/credentials/wearable-agent.service/token"' in out
    assert "provided when the service runs" in err


def test_check_config_cli_wiring(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    check_config.configure(parser)
    path = tmp_path / "c.toml"
    path.write_text("[logging]\nlevel = 'nope'\n")
    assert check_config.run(parser.parse_args(["--config", str(path)])) == EXIT_CONFIG


@given(value=st.floats(min_value=0.5, max_value=2.6, allow_nan=False))
def test_environment_numbers_round_trip(value: float) -> None:
    env = {"AGENT_PROCESSING__HEIGHT_M": repr(value), "STATE_DIRECTORY": "/x"}
    config = load_config(env={**env, "CONFIGURATION_DIRECTORY": "/nonexistent-dir"})
    assert config.processing.height_m == value


def test_overrides_from_run_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server")
    parser.add_argument("--token-command")
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--record", type=Path)
    parser.add_argument("--simulate", action="store_true")
    args = parser.parse_args(
        ["--server", "wss://b.example/c", "--token-command", "mint", "--state-dir", "st"]
    )
    overrides = overrides_from_args(args)
    assert overrides == {
        "uplink.server": "wss://b.example/c",
        "uplink.token_command": "mint",
        "state_dir": Path("st"),
    }
    # Flags not given leave the file's values alone.
    config = load(tmp_path, "[sensors]\nsimulate = true\n", overrides=overrides)
    assert config.sensors.simulate is True
    assert config.state_dir == Path.cwd() / "st"
    assert config.uplink.server == "wss://b.example/c"
    simulate = overrides_from_args(parser.parse_args(["--simulate", "--record", "rec"]))
    assert simulate == {"sensors.simulate": True, "recording.dir": Path("rec")}
