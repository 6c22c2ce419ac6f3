"""Configuration: defaults < config file < ``AGENT_*`` environment < command line.

Theory of operation
-------------------
The whole schema is the frozen dataclasses below: a section's TOML keys are exactly its field
names, its types are the field annotations, its defaults the field defaults, and numeric limits sit
in the field metadata (``gt``/``ge``/``le``). One generic loader walks that schema, so the example
file, the environment mapping, ``agent check-config`` and the validation can never disagree about
which keys exist.

Loading happens in layers, each overriding the previous one key by key:

1. the field defaults;
2. the TOML file: ``path`` argument, else ``$AGENT_CONFIG``, else ``$CONFIGURATION_DIRECTORY/
   config.toml`` (systemd ``ConfigurationDirectory=``), else ``<platformdirs user_config_dir>/
   config.toml``. A missing file is an error only when it was named explicitly;
3. environment variables: ``AGENT_<SECTION>__<KEY>`` (double underscore between levels, any case),
   e.g. ``AGENT_UPLINK__SERVER=wss://…`` or ``AGENT_SENSORS__SIMULATION__SEED=7``; top-level keys
   without a section use one flat name: ``AGENT_STATE_DIR``. Other ``AGENT_*`` names without a
   ``__`` (``AGENT_CONFIG``, ``AGENT_HARDWARE_TESTS``) are not configuration keys and are ignored.
   Values are text and converted to the key's type (``true``/``false``/``1``/``0``, numbers; an
   empty value unsets an optional key). Arrays of tables (``[[sensors.ble]]``,
   ``[[relay.developers]]``) can only come from the file;
4. command-line overrides: dotted keys such as ``"uplink.server"`` mapped to values (``None`` means
   "flag not given"; strings are converted like environment text).

Token sources are exclusive, so a layer that names a token source (``token_file``,
``token_command`` or the ``token_url``/``dev_id``/``api_key_file``/``user_id`` group) replaces the
token source of the layers below it: ``--token-command`` on the command line wins over a
``token_file`` in the file instead of producing a "two token sources" error.

Paths: ``~`` is expanded; relative paths in the file are relative to the file's directory, relative
paths from the environment or command line to the working directory. Any path may be written
``cred:NAME``: the systemd credential ``NAME`` in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``).
Secrets are never values in the file, only paths to files holding them (read by
:func:`agent.secrets.read_secret`). The state directory is ``state_dir`` if set, else
``$STATE_DIRECTORY`` (systemd ``StateDirectory=``), else platformdirs ``user_state_dir``; outbox,
status file and relay database default to files inside it.

Errors: everything raises :class:`ConfigError` (``key``, ``problem``, ``source``), rendered as
``config error: uplink.server: must be a ws:// or wss:// URL (from AGENT_UPLINK__SERVER)``. The
daemon exits with :data:`EXIT_CONFIG` (78, sysexits ``EX_CONFIG``), which the systemd unit lists
in ``RestartPreventExitStatus=`` so a typo does not become a restart loop.

This module is imported by ``agent --help``'s neighbours, so it stays cheap: standard library only
(tomllib, platformdirs, urllib, zoneinfo and difflib are imported when needed).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from agent.netaddr import is_loopback_host

__all__ = [
    "APP_NAME",
    "CONFIG_FILENAME",
    "CRED_PREFIX",
    "EXIT_CONFIG",
    "RUN_FLAG_KEYS",
    "BleDeviceSection",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "OutboxConfig",
    "ProcessingSection",
    "RecordingConfig",
    "RelayConfig",
    "RelayDeveloper",
    "SensorsConfig",
    "SimulationSection",
    "StatusConfig",
    "UplinkConfig",
    "default_config",
    "find_config_file",
    "load_config",
    "overrides_from_args",
    "secret_paths",
]

#: sysexits.h ``EX_CONFIG``; the unit's ``RestartPreventExitStatus=78`` stops restarts on it.
EXIT_CONFIG: Final = 78
#: platformdirs application name and the systemd unit's directory names.
APP_NAME: Final = "wearable-agent"
CONFIG_FILENAME: Final = "config.toml"
#: ``cred:NAME`` → ``$CREDENTIALS_DIRECTORY/NAME``.
CRED_PREFIX: Final = "cred:"
ENV_PREFIX: Final = "AGENT_"
ENV_CONFIG: Final = "AGENT_CONFIG"
#: Separator between levels in environment names (a single ``_`` appears inside key names).
ENV_LEVEL_SEP: Final = "__"

_MIB: Final = 1024 * 1024


class ConfigError(Exception):
    """A configuration problem, naming the key and what is wrong with it.

    Attributes:
        key: dotted key (``uplink.server``), or the file path for file-level problems.
        problem: what is wrong and, where possible, what to do.
        source: where the value came from (file path, environment variable, command line), if known.
    """

    def __init__(self, key: str, problem: str, *, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (from {self.source})" if self.source else ""
        return f"config error: {self.key}: {self.problem}{where}"


# --------------------------------------------------------------------------------------------------
# Schema. Metadata: gt/ge/le numeric limits; state_file = default file name inside state_dir;
# toml=False for fields that are not configuration keys.


def _gt(x: float) -> dict[str, float]:
    return {"gt": x}


@dataclass(frozen=True)
class UplinkConfig:
    """Where readings go and how the agent authenticates there.

    ``server=None`` means: start the embedded relay on 127.0.0.1 and stream into it (the fresh
    machine demo). With a server, exactly one token source is required, because Terra tokens are
    single-use and every reconnect mints a new one from that source.
    """

    server: str | None = None
    token_file: Path | None = None
    token_command: str | None = None
    token_url: str | None = None
    dev_id: str | None = None
    api_key_file: Path | None = None
    user_id: str | None = None
    ca_file: Path | None = None
    allow_insecure_ws: bool = False
    barrier_spacing_s: float = field(default=1.0, metadata=_gt(0))
    backoff_cap_s: float = field(default=30.0, metadata=_gt(0))
    shutdown_grace_s: float = field(default=5.0, metadata={"ge": 0})


@dataclass(frozen=True)
class OutboxConfig:
    """The durable SQLite outbox (default ``<state_dir>/outbox.sqlite``)."""

    path: Path = field(metadata={"state_file": "outbox.sqlite"})
    # 256 MiB: about 10 days of H10 readings at the default 4 Hz ACC/GYRO submit rates.
    max_bytes: int = field(default=256 * _MIB, metadata={"ge": _MIB})
    flush_interval_s: float = field(default=0.2, metadata=_gt(0))


@dataclass(frozen=True)
class ProcessingSection:
    """On-device processing parameters."""

    height_m: float = field(default=1.75, metadata={"ge": 0.5, "le": 2.6})
    # 0.2–3: the range the step-length model accepts (agent/processing/distance.py allows 5)
    step_length_factor: float = field(default=1.0, metadata={"ge": 0.2, "le": 3.0})
    acc_submit_hz: float = field(default=4.0, metadata={"ge": 0, "le": 200.0})
    gyro_submit_hz: float = field(default=4.0, metadata={"ge": 0, "le": 200.0})
    totals_reset: Literal["daily", "never", "session"] = "daily"
    timezone: str | None = None


@dataclass(frozen=True)
class SimulationSection:
    """Simulated sources (``--simulate``)."""

    seed: int = 1
    acc_rate_hz: float = field(default=100.0, metadata={"gt": 0, "le": 1000.0})
    gyro_rate_hz: float = field(default=100.0, metadata={"gt": 0, "le": 1000.0})
    speed: float = field(default=1.0, metadata={"gt": 0, "le": 1000.0})


@dataclass(frozen=True)
class BleDeviceSection:
    """One BLE sensor (same field names as ``sensors.ble.BleDeviceConfig``; convert with asdict).

    At least one of ``address``, ``name_contains`` or ``service`` selects the device.
    """

    name: str
    address: str | None = None
    name_contains: str | None = None
    service: str | None = None
    adapter: str | None = None
    heart_rate: bool = True
    acc_rate_hz: int | None = field(default=None, metadata=_gt(0))
    acc_range_g: int | None = field(default=None, metadata=_gt(0))
    gyro_rate_hz: int | None = field(default=None, metadata=_gt(0))
    gyro_range_dps: int | None = field(default=None, metadata=_gt(0))
    rsc: bool = True
    pressure: bool = True
    battery_interval_s: float = field(default=300.0, metadata=_gt(0))
    silence_timeout_s: float = field(default=15.0, metadata=_gt(0))
    connect_timeout_s: float = field(default=20.0, metadata=_gt(0))
    backoff_cap_s: float = field(default=60.0, metadata=_gt(0))


@dataclass(frozen=True)
class SensorsConfig:
    """Which sources feed the agent."""

    simulate: bool = False
    simulation: SimulationSection = field(default_factory=SimulationSection)
    ble: tuple[BleDeviceSection, ...] = ()
    #: False: off; True: find the first IIO pressure sensor; a string: that IIO device
    #: (``iio:device0``) or sysfs directory.
    iio_barometer: bool | str = False


@dataclass(frozen=True)
class RecordingConfig:
    """Raw-sample recording for field studies (``None``: off)."""

    dir: Path | None = None


@dataclass(frozen=True)
class StatusConfig:
    """The status file ``agent status`` reads (default ``<state_dir>/status.json``)."""

    path: Path = field(metadata={"state_file": "status.json"})
    interval_s: float = field(default=2.0, metadata=_gt(0))


@dataclass(frozen=True)
class LoggingConfig:
    """Logging verbosity."""

    level: Literal["debug", "info", "warning", "error", "critical"] = "info"


@dataclass(frozen=True)
class RelayDeveloper:
    """A developer account of the self-hosted relay (the API key is read from a file)."""

    dev_id: str
    api_key_file: Path


@dataclass(frozen=True)
class RelayConfig:
    """The relay (``agent relay``, and the embedded one when ``uplink.server`` is unset)."""

    db: Path = field(metadata={"state_file": "relay.sqlite"})
    host: str = "127.0.0.1"
    port: int = field(default=8765, metadata={"ge": 0, "le": 65535})
    heartbeat_interval_ms: int = field(default=40000, metadata={"ge": 100})
    identify_timeout_s: float = field(default=15.0, metadata=_gt(0))
    token_ttl_s: float = field(default=300.0, metadata=_gt(0))
    retention_days: float = field(default=7.0, metadata={"ge": 0})
    max_frame_bytes: int = field(default=65536, metadata={"ge": 1024})
    developers: tuple[RelayDeveloper, ...] = ()


@dataclass(frozen=True)
class Config:
    """The effective configuration. ``config_file`` records which file was read (not a key)."""

    state_dir: Path
    uplink: UplinkConfig
    outbox: OutboxConfig
    processing: ProcessingSection
    sensors: SensorsConfig
    recording: RecordingConfig
    status: StatusConfig
    logging: LoggingConfig
    relay: RelayConfig
    config_file: Path | None = field(default=None, metadata={"toml": False})


#: Token-source groups; a layer naming one group drops the others set by lower layers.
_TOKEN_GROUPS: Final[tuple[frozenset[str], ...]] = (
    frozenset({"token_file"}),
    frozenset({"token_command"}),
    frozenset({"token_url", "dev_id", "api_key_file", "user_id"}),
)

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


# --------------------------------------------------------------------------------------------------
# Layer merging. Leaves are wrapped with where they came from, so errors name the source and
# relative paths resolve against the right directory.


@dataclass(frozen=True)
class _Val:
    value: object
    source: str
    base: Path | None  # directory relative paths are relative to
    text: bool  # environment/command-line text: convert to the target type


_Tree = dict[str, Any]  # nested: str -> _Tree | _Val


def _toml_keys(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)]


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _section_class(hint: Any) -> type | None:
    """The dataclass a field's type names, if it is a (nested) section table."""
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _table_class(path: tuple[str, ...]) -> type | None:
    """The section class of the table at ``path`` (``()`` is the top level), or None."""
    cls: type = Config
    for part in path:
        names = {f.name for f in _toml_keys(cls)}
        if part not in names:
            return None
        sub = _section_class(_hints(cls)[part])
        if sub is None:
            return None
        cls = sub
    return cls


def _wrap_file(data: Mapping[str, Any], path: tuple[str, ...], source: str, base: Path) -> _Tree:
    tree: _Tree = {}
    for key, value in data.items():
        sub = (*path, key)
        if isinstance(value, dict) and _table_class(sub) is not None:
            tree[key] = _wrap_file(value, sub, source, base)
        else:
            tree[key] = _Val(value, source, base, text=False)
    return tree


def _set(tree: _Tree, path: tuple[str, ...], val: _Val) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = val


def _apply_layer(tree: _Tree, layer: list[tuple[tuple[str, ...], _Val]]) -> None:
    uplink_keys = {p[1] for p, _ in layer if len(p) == 2 and p[0] == "uplink"}
    named = [g for g in _TOKEN_GROUPS if g & uplink_keys]
    uplink = tree.get("uplink")
    if named and isinstance(uplink, dict):
        keep = frozenset().union(*named)
        for group in _TOKEN_GROUPS:
            for key in group - keep:
                uplink.pop(key, None)
    for path, val in layer:
        _set(tree, path, val)


def _env_layer(env: Mapping[str, str]) -> list[tuple[tuple[str, ...], _Val]]:
    top_scalars = {
        f.name for f in _toml_keys(Config) if _section_class(_hints(Config)[f.name]) is None
    }
    layer: list[tuple[tuple[str, ...], _Val]] = []
    cwd = Path.cwd()
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if ENV_LEVEL_SEP in rest:
            path = tuple(rest.split(ENV_LEVEL_SEP))
        elif rest in top_scalars:
            path = (rest,)
        else:
            continue  # AGENT_CONFIG, AGENT_HARDWARE_TESTS, …: not configuration keys
        if any(not part for part in path):
            raise ConfigError(".".join(path), "empty level in the variable name", source=name)
        layer.append((path, _Val(env[name], name, cwd, text=True)))
    return layer


def _override_layer(overrides: Mapping[str, object]) -> list[tuple[tuple[str, ...], _Val]]:
    layer: list[tuple[tuple[str, ...], _Val]] = []
    cwd = Path.cwd()
    for key, value in overrides.items():
        if value is None:
            continue
        path = tuple(key.split("."))
        layer.append((path, _Val(value, "command line", cwd, text=isinstance(value, str))))
    return layer


# --------------------------------------------------------------------------------------------------
# Conversion of one value to its field type.


class _Builder:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.state_dir: Path | None = None
        self.sources: dict[str, str] = {}

    # ---- scalars -----------------------------------------------------------------------------
    def convert(self, hint: Any, val: _Val, key: str, meta: Mapping[str, Any]) -> object:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        value = val.value
        if isinstance(value, dict):
            raise ConfigError(key, "must be a value, not a table", source=val.source)
        if origin in (types.UnionType, typing.Union):
            others = [a for a in args if a is not type(None)]
            if type(None) in args and (value is None or (val.text and value == "")):
                return None
            if set(others) == {bool, str}:
                if isinstance(value, bool):
                    return value
                if val.text and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                    return value.lower() in _TRUE
                if isinstance(value, str) and value:
                    return value
                raise ConfigError(key, "must be true, false or a device name", source=val.source)
            if len(others) != 1:  # pragma: no cover - schema bug
                raise TypeError(f"unsupported type {hint!r} for {key}")
            hint = others[0]
            origin = typing.get_origin(hint)
            args = typing.get_args(hint)
        if origin is Literal:
            if not isinstance(value, str) or value.lower() not in args:
                choices = ", ".join(repr(a) for a in args)
                raise ConfigError(key, f"must be one of {choices}", source=val.source)
            return value.lower()
        if hint is bool:
            if isinstance(value, bool):
                return value
            if val.text and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ConfigError(key, "must be true or false", source=val.source)
        if hint is int:
            if val.text and isinstance(value, str):
                digits = value.strip().replace("_", "")
                try:
                    value = int(digits, 10) if digits.lstrip("+-").isdigit() else int(digits, 0)
                except ValueError:
                    raise ConfigError(key, "must be an integer", source=val.source) from None
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(key, "must be an integer", source=val.source)
            self._limits(value, key, meta, val)
            return value
        if hint is float:
            if val.text and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(key, "must be a number", source=val.source) from None
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(key, "must be a number", source=val.source)
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ConfigError(key, "must be a finite number", source=val.source)
            self._limits(number, key, meta, val)
            return number
        if hint is str:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(key, "must be a non-empty string", source=val.source)
            return value
        if hint is Path:
            return self.path(value, key, val)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return self.array(args[0], val, key)
        raise TypeError(f"unsupported type {hint!r} for {key}")  # pragma: no cover

    @staticmethod
    def _limits(number: float, key: str, meta: Mapping[str, Any], val: _Val) -> None:
        if "gt" in meta and not number > meta["gt"]:
            raise ConfigError(key, f"must be greater than {meta['gt']}", source=val.source)
        if "ge" in meta and not number >= meta["ge"]:
            raise ConfigError(key, f"must be at least {meta['ge']}", source=val.source)
        if "le" in meta and not number <= meta["le"]:
            raise ConfigError(key, f"must be at most {meta['le']}", source=val.source)

    def path(self, value: object, key: str, val: _Val) -> Path:
        if isinstance(value, Path):
            text = str(value)
        elif isinstance(value, str) and value.strip():
            text = value
        else:
            raise ConfigError(key, "must be a path (a non-empty string)", source=val.source)
        if text.startswith(CRED_PREFIX):
            return self.credential(text[len(CRED_PREFIX) :], key, val)
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = (val.base or Path.cwd()) / path
        return path

    def credential(self, name: str, key: str, val: _Val) -> Path:
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(
                key, f"{CRED_PREFIX}{name!s} is not a valid credential name", source=val.source
            )
        directory = self.env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                key,
                f"{CRED_PREFIX}{name} needs $CREDENTIALS_DIRECTORY, which systemd sets for a "
                f"service with LoadCredential={name}:…; outside systemd give a file path",
                source=val.source,
            )
        return Path(directory) / name

    def array(self, item_cls: type, val: _Val, key: str) -> tuple[object, ...]:
        if val.text or not isinstance(val.value, list):
            problem = "must be an array of tables ([[" + key + "]] in the config file)"
            raise ConfigError(key, problem, source=val.source)
        items: list[object] = []
        for i, element in enumerate(val.value):
            if not isinstance(element, dict):
                raise ConfigError(f"{key}[{i}]", "must be a table", source=val.source)
            tree = {k: _Val(v, val.source, val.base, text=False) for k, v in element.items()}
            items.append(self.build(item_cls, tree, f"{key}[{i}]"))
        return tuple(items)

    # ---- tables ------------------------------------------------------------------------------
    def build(self, cls: type, tree: _Tree, prefix: str) -> Any:
        fields = _toml_keys(cls)
        names = [f.name for f in fields]
        dot = f"{prefix}." if prefix else ""
        for key, node in tree.items():
            if key not in names:
                import difflib

                hint = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                problem = "unknown key"
                if hint:
                    problem += f" (did you mean {dot}{hint[0]}?)"
                else:
                    problem += f"; known keys here: {', '.join(names)}"
                raise ConfigError(f"{dot}{key}", problem, source=_first_source(node))
        hints = _hints(cls)
        kwargs: dict[str, object] = {}
        for f in fields:
            key = f"{dot}{f.name}"
            hint = hints[f.name]
            node = tree.get(f.name)
            sub = _section_class(hint)
            if sub is not None:
                if isinstance(node, _Val):
                    raise ConfigError(key, f"must be a table ([{key}])", source=node.source)
                kwargs[f.name] = self.build(sub, node or {}, key)
                continue
            if isinstance(node, dict):
                raise ConfigError(key, "must be a value, not a table", source=_first_source(node))
            if node is not None:
                kwargs[f.name] = self.convert(hint, node, key, f.metadata)
                self.sources[key] = node.source
            elif "state_file" in f.metadata:
                assert self.state_dir is not None
                kwargs[f.name] = self.state_dir / f.metadata["state_file"]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "is required", source=_first_source(tree))
        return cls(**kwargs)


def _first_source(node: object) -> str | None:
    if isinstance(node, _Val):
        return node.source
    if isinstance(node, dict):
        for child in node.values():
            source = _first_source(child)
            if source:
                return source
    return None


# --------------------------------------------------------------------------------------------------
# Cross-field validation (what a type cannot say).


def _check_url(
    url: str, key: str, schemes: tuple[str, str], allow_insecure: bool, source: str | None
) -> None:
    from urllib.parse import urlsplit

    plain, secure = schemes
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(key, f"is not a valid URL: {exc}", source=source) from None
    if parts.scheme not in schemes or not host:
        raise ConfigError(key, f"must be a {plain}:// or {secure}:// URL", source=source)
    if parts.username or parts.password:
        raise ConfigError(
            key, "must not contain credentials; use a token source instead", source=source
        )
    if parts.scheme == plain and not allow_insecure and not is_loopback_host(host):
        raise ConfigError(
            key,
            f"plain {plain}:// to a non-loopback host would send tokens unencrypted; use "
            f"{secure}:// or set uplink.allow_insecure_ws = true",
            source=source,
        )


_MAC_HEX = frozenset("0123456789abcdefABCDEF")


def _is_address(text: str) -> bool:
    parts = text.split(":")
    if len(parts) == 6 and all(len(p) == 2 and set(p) <= _MAC_HEX for p in parts):
        return True
    return _is_uuid(text)  # macOS CoreBluetooth identifies peripherals by UUID


#: Service names ``sensors.ble.service_uuid`` understands (kept here so config stays cheap).
BLE_SERVICE_NAMES: Final = ("heart_rate", "pmd", "rsc", "pressure")


def _is_uuid(text: str) -> bool:
    import uuid

    if len(text) in (4, 8) and set(text) <= _MAC_HEX:  # 16/32-bit Bluetooth SIG short forms
        return True
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _validate(config: Config, sources: Mapping[str, str]) -> None:
    up = config.uplink

    def src(key: str) -> str | None:
        return sources.get(key)

    if up.server is not None:
        _check_url(
            up.server, "uplink.server", ("ws", "wss"), up.allow_insecure_ws, src("uplink.server")
        )
    if up.token_url is not None:
        _check_url(
            up.token_url,
            "uplink.token_url",
            ("http", "https"),
            up.allow_insecure_ws,
            src("uplink.token_url"),
        )
    if up.token_command is not None:
        try:
            argv = shlex.split(up.token_command)
        except ValueError as exc:
            raise ConfigError(
                "uplink.token_command",
                f"cannot be split into words: {exc}",
                source=src("uplink.token_command"),
            ) from None
        if not argv:
            raise ConfigError(
                "uplink.token_command", "is empty", source=src("uplink.token_command")
            )
    rest = ("dev_id", "api_key_file", "user_id")
    rest_set = [k for k in rest if getattr(up, k) is not None]
    if up.token_url is None and rest_set:
        key = f"uplink.{rest_set[0]}"
        raise ConfigError(key, "only applies together with uplink.token_url", source=src(key))
    if up.token_url is not None:
        missing = [k for k in rest if getattr(up, k) is None]
        if missing:
            raise ConfigError(
                "uplink.token_url",
                "also needs " + ", ".join(f"uplink.{k}" for k in missing),
                source=src("uplink.token_url"),
            )
    chosen = [
        name
        for name, on in (
            ("token_file", up.token_file is not None),
            ("token_command", up.token_command is not None),
            ("token_url", up.token_url is not None),
        )
        if on
    ]
    if len(chosen) > 1:
        raise ConfigError(
            "uplink",
            "exactly one token source may be set, got " + " and ".join(chosen),
            source=src(f"uplink.{chosen[-1]}"),
        )
    if up.server is not None and not chosen:
        raise ConfigError(
            "uplink",
            "uplink.server is set, so a token source is needed: token_file, token_command, or "
            "token_url + dev_id + api_key_file + user_id (tokens are single-use; each connection "
            "needs a fresh one)",
            source=src("uplink.server"),
        )

    tz = config.processing.timezone
    if tz is not None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                "processing.timezone",
                f"unknown IANA time zone {tz!r}",
                source=src("processing.timezone"),
            ) from None

    seen: set[str] = set()
    for i, dev in enumerate(config.sensors.ble):
        key = f"sensors.ble[{i}]"
        if dev.name in seen:
            raise ConfigError(f"{key}.name", f"duplicate sensor name {dev.name!r}")
        seen.add(dev.name)
        if dev.address is None and dev.name_contains is None and dev.service is None:
            raise ConfigError(key, "needs address, name_contains or service to find the device")
        if dev.address is not None and not _is_address(dev.address):
            raise ConfigError(
                f"{key}.address", "must be a Bluetooth address like A0:9E:1A:12:34:56 (or a UUID)"
            )
        if (dev.service is not None and dev.service not in BLE_SERVICE_NAMES
                and not _is_uuid(dev.service)):
            raise ConfigError(
                f"{key}.service",
                f"must be one of {', '.join(BLE_SERVICE_NAMES)}, a UUID or a 16-bit short form "
                "like 180d",
            )
        if dev.adapter is not None and "/" in dev.adapter:
            raise ConfigError(f"{key}.adapter", "must be an adapter name like hci0")

    seen_dev: set[str] = set()
    for i, developer in enumerate(config.relay.developers):
        if developer.dev_id in seen_dev:
            raise ConfigError(
                f"relay.developers[{i}].dev_id", f"duplicate dev_id {developer.dev_id!r}"
            )
        seen_dev.add(developer.dev_id)


# --------------------------------------------------------------------------------------------------
# Public entry points.


def _first_dir(value: str | None) -> Path | None:
    """systemd passes colon-separated lists when several directories are configured."""
    if not value:
        return None
    first = value.split(":")[0]
    return Path(first) if first else None


def find_config_file(
    path: Path | None = None, *, env: Mapping[str, str] = os.environ
) -> tuple[Path, bool]:
    """The config file to read and whether it was named explicitly (then it must exist)."""
    if path is not None:
        return Path(path).expanduser().absolute(), True
    named = env.get(ENV_CONFIG)
    if named:
        return Path(named).expanduser().absolute(), True
    conf_dir = _first_dir(env.get("CONFIGURATION_DIRECTORY"))
    if conf_dir is not None:
        return conf_dir / CONFIG_FILENAME, False
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / CONFIG_FILENAME, False


def _read_file(path: Path, explicit: bool) -> dict[str, Any] | None:
    import tomllib

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(str(path), "config file not found") from None
        return None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), "config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None


def _default_state_dir(env: Mapping[str, str]) -> Path:
    state = _first_dir(env.get("STATE_DIRECTORY"))
    if state is not None:
        return state
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def _load(
    file_data: Mapping[str, Any] | None,
    file_path: Path | None,
    env: Mapping[str, str],
    overrides: Mapping[str, object],
) -> Config:
    tree: _Tree = {}
    if file_data is not None and file_path is not None:
        tree = _wrap_file(file_data, (), str(file_path), file_path.parent)
    _apply_layer(tree, _env_layer(env))
    _apply_layer(tree, _override_layer(overrides))

    builder = _Builder(env)
    state_node = tree.get("state_dir")
    if isinstance(state_node, _Val):
        builder.state_dir = builder.path(state_node.value, "state_dir", state_node)
    else:
        builder.state_dir = _default_state_dir(env)
    tree["state_dir"] = _Val(builder.state_dir, "", None, text=False)
    config: Config = builder.build(Config, tree, "")
    config = dataclasses.replace(config, config_file=file_path)
    _validate(config, builder.sources)
    return config


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Load, merge and validate the configuration (see the module docstring for precedence).

    Args:
        path: config file named on the command line; ``None`` finds the default one.
        env: environment (``AGENT_*`` keys, ``STATE_DIRECTORY``, ``CONFIGURATION_DIRECTORY``,
            ``CREDENTIALS_DIRECTORY``, ``AGENT_CONFIG``).
        overrides: command-line values by dotted key (``{"uplink.server": url}``); ``None`` values
            are ignored.

    Raises:
        ConfigError: the first problem found, naming the key.
    """
    file_path, explicit = find_config_file(path, env=env)
    data = _read_file(file_path, explicit)
    return _load(data, file_path if data is not None else None, env, overrides or {})


def default_config(state_dir: Path) -> Config:
    """The built-in defaults with ``state_dir`` (no file, no environment): handy in tests."""
    return _load(None, None, {}, {"state_dir": Path(state_dir)})


def secret_paths(config: Config) -> dict[str, Path]:
    """Every configured file that holds a secret, by dotted key (for checks and display)."""
    found: dict[str, Path] = {}
    if config.uplink.token_file is not None:
        found["uplink.token_file"] = config.uplink.token_file
    if config.uplink.api_key_file is not None:
        found["uplink.api_key_file"] = config.uplink.api_key_file
    for i, developer in enumerate(config.relay.developers):
        found[f"relay.developers[{i}].api_key_file"] = developer.api_key_file
    return found


#: ``agent run`` command-line flags (argparse ``dest``) → the dotted keys they override.
RUN_FLAG_KEYS: Final[Mapping[str, str]] = {
    "server": "uplink.server",
    "token_file": "uplink.token_file",
    "token_command": "uplink.token_command",
    "token_url": "uplink.token_url",
    "dev_id": "uplink.dev_id",
    "api_key_file": "uplink.api_key_file",
    "user_id": "uplink.user_id",
    "state_dir": "state_dir",
    "record": "recording.dir",
    "simulate": "sensors.simulate",
    "log_level": "logging.level",
}


def overrides_from_args(args: object) -> dict[str, object]:
    """Overrides for :func:`load_config` from parsed ``agent run`` arguments.

    Attributes named in :data:`RUN_FLAG_KEYS` that are ``None`` (option not given) or ``False``
    (a ``store_true`` flag not given) are left out, so they do not mask the file or environment.
    """
    overrides: dict[str, object] = {}
    for dest, key in RUN_FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        overrides[key] = value
    return overrides
