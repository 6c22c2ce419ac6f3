"""``agent relay``: run the streaming relay from the command line.

Settings come from built-in defaults, then the ``[relay]`` table of ``--config`` (keys: ``host``,
``port``, ``db``, ``heartbeat_interval_ms``, ``identify_timeout_s``, ``token_ttl_s``,
``retention_days``, ``max_frame_bytes`` and ``[[relay.developers]]`` tables of ``dev_id`` +
``api_key_file``), then the command line. ``--dev-id ID --api-key-file PATH`` pairs add (or
replace, for the same id) developers. Relative paths in the file are relative to the file.

The database defaults to ``relay.sqlite`` in the agent's state directory (``$STATE_DIRECTORY``
under systemd, else the platform's user state dir, or ``state_dir`` from the config file), so
REPLAY works across restarts without extra flags.

API key files are read with :func:`agent.secrets.read_secret`: a file that group or others may
read or write is refused with the ``chmod`` that fixes it (the key mints tokens for every user),
and the key is registered for log redaction.

No developer configured: for development the relay then creates one developer, ``local-dev``,
with a random key in ``relay-local-dev.key`` beside the database (mode 0600, reused on the next
start) and prints where it is. Pass ``--dev-id``/``--api-key-file`` to use your own.

Output: the first line of stdout is exactly ``relay listening on http://HOST:PORT`` (flushed,
with the real port when ``--port 0``); logs go to stderr. SIGTERM or SIGINT closes every
connection with 1001 and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

#: sysexits.h: configuration error.
EX_CONFIG: Final = 78
#: sysexits.h: cannot create/open something (port in use, database unreadable).
EX_CANTCREAT: Final = 73
#: Developer generated when none is configured.
LOCAL_DEV_ID: Final = "local-dev"
APP_NAME: Final = "wearable-agent"
DB_FILENAME: Final = "relay.sqlite"

_FILE_KEYS: Final = frozenset(
    {
        "host",
        "port",
        "db",
        "heartbeat_interval_ms",
        "identify_timeout_s",
        "token_ttl_s",
        "retention_days",
        "max_frame_bytes",
        "developers",
    }
)

log = logging.getLogger("agent.relay")


class RelayCliError(Exception):
    """A setting or file that prevents the relay from starting; the message says how to fix it."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``agent relay`` arguments."""
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="TOML file with a [relay] table")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8765; 0 picks a free port)")
    parser.add_argument("--db", type=Path, metavar="PATH",
                        help="SQLite database (default: relay.sqlite in the state directory)")
    parser.add_argument("--dev-id", action="append", default=[], metavar="ID",
                        help="developer id (repeat, each with --api-key-file)")
    parser.add_argument("--api-key-file", action="append", default=[], type=Path,
                        metavar="PATH", help="file holding the API key of the --dev-id before")
    parser.add_argument("--heartbeat-interval", type=int, metavar="MS",
                        help="heartbeat interval sent in HELLO (default 40000)")
    parser.add_argument("--identify-timeout", type=float, metavar="S",
                        help="close with 4000 without IDENTIFY after this (default 15)")
    parser.add_argument("--token-ttl", type=float, metavar="S",
                        help="unused tokens expire after this (default 300)")


def read_api_key(path: Path, what: str) -> str:
    """Read an API key file through :func:`agent.secrets.read_secret`.

    It refuses files that group or others can access (with the ``chmod`` that fixes it) and
    registers the key for log redaction. ``what`` names the setting in error messages.
    """
    from agent.secrets import SecretError, read_secret

    try:
        return read_secret(path, what=what)
    except SecretError as exc:
        raise RelayCliError(str(exc)) from None


def _default_state_dir() -> Path:
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state)
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def _load_file(path: Path) -> tuple[dict[str, Any], Path | None]:
    """The ``[relay]`` table of ``path`` and the file's ``state_dir`` (if any)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise RelayCliError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RelayCliError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("relay", {})
    if not isinstance(table, dict):
        raise RelayCliError(f"{path}: [relay] must be a table")
    unknown = sorted(set(table) - _FILE_KEYS)
    if unknown:
        raise RelayCliError(
            f"{path}: unknown key(s) in [relay]: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_FILE_KEYS))})"
        )
    state_dir = data.get("state_dir")
    return table, _resolve(path, state_dir, "state_dir") if state_dir is not None else None


def _resolve(config_path: Path, value: object, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise RelayCliError(f"{config_path}: {key} must be a path string")
    p = Path(value).expanduser()
    return p if p.is_absolute() else config_path.parent / p


def _typed(table: Mapping[str, Any], key: str, kind: type, source: Path) -> Any:
    value = table[key]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        name = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise RelayCliError(f"{source}: relay.{key} must be {name}, got {value!r}")
    return float(value) if kind is float else value


def build_config(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """RelayConfig from defaults < config file < command line, and notes to print.

    Returns ``(RelayConfig, notes)``; raises :class:`RelayCliError` with an actionable message.
    """
    from agent.relay.server import RelayConfig

    settings: dict[str, Any] = {}
    key_files: dict[str, tuple[Path, str]] = {}  # dev id → (key file, setting it came from)
    state_dir: Path | None = None
    if args.config is not None:
        source: Path = args.config
        table, state_dir = _load_file(source)
        for key, kind in (("host", str), ("port", int), ("heartbeat_interval_ms", int),
                          ("identify_timeout_s", float), ("token_ttl_s", float),
                          ("max_frame_bytes", int)):
            if key in table:
                settings[key] = _typed(table, key, kind, source)
        if "retention_days" in table:
            settings["retention_s"] = _typed(table, "retention_days", float, source) * 86400.0
        if "db" in table:
            settings["db"] = _resolve(source, table["db"], "relay.db")
        devs = table.get("developers", [])
        if not isinstance(devs, list):
            raise RelayCliError(f"{source}: relay.developers must be [[relay.developers]] tables")
        for i, dev in enumerate(devs):
            if not isinstance(dev, dict) or set(dev) != {"dev_id", "api_key_file"}:
                raise RelayCliError(
                    f"{source}: relay.developers[{i}] needs exactly dev_id and api_key_file"
                )
            dev_id = dev["dev_id"]
            if not isinstance(dev_id, str) or not dev_id:
                raise RelayCliError(f"{source}: relay.developers[{i}].dev_id must be a string")
            if dev_id in key_files:
                raise RelayCliError(f"{source}: duplicate dev_id {dev_id!r}")
            key_files[dev_id] = (
                _resolve(source, dev["api_key_file"], "api_key_file"),
                f"relay.developers[{i}].api_key_file in {source}",
            )

    if args.host is not None:
        settings["host"] = args.host
    if args.port is not None:
        settings["port"] = args.port
    if args.db is not None:
        settings["db"] = args.db
    if args.heartbeat_interval is not None:
        settings["heartbeat_interval_ms"] = args.heartbeat_interval
    if args.identify_timeout is not None:
        settings["identify_timeout_s"] = args.identify_timeout
    if args.token_ttl is not None:
        settings["token_ttl_s"] = args.token_ttl
    if len(args.dev_id) != len(args.api_key_file):
        raise RelayCliError(
            "--dev-id and --api-key-file come in pairs: "
            f"got {len(args.dev_id)} --dev-id and {len(args.api_key_file)} --api-key-file"
        )
    for dev_id, path in zip(args.dev_id, args.api_key_file, strict=True):
        if not dev_id:
            raise RelayCliError("--dev-id must not be empty")
        key_files[dev_id] = (path, f"--api-key-file of --dev-id {dev_id}")

    if "db" not in settings:
        settings["db"] = (state_dir or _default_state_dir()) / DB_FILENAME
    db: Path = settings["db"]

    notes: list[str] = [f"relay database: {db}"]
    if not key_files:
        key_path = db.parent / f"relay-{LOCAL_DEV_ID}.key"
        if not key_path.exists():
            from agent.relay.server import random_api_key

            key_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(random_api_key() + "\n")
            notes.append(f"no developer configured: generated dev id {LOCAL_DEV_ID!r} "
                         f"with its API key in {key_path}")
        else:
            notes.append(f"no developer configured: using dev id {LOCAL_DEV_ID!r} "
                         f"with its API key in {key_path}")
        key_files[LOCAL_DEV_ID] = (key_path, "generated development key")
    developers = {dev_id: read_api_key(path, what) for dev_id, (path, what) in key_files.items()}
    try:
        config = RelayConfig(developers=developers, **settings)
    except (ValueError, TypeError) as exc:
        raise RelayCliError(f"invalid relay setting: {exc}") from None
    return config, notes


def run(args: argparse.Namespace) -> int:
    """Run the relay until SIGTERM/SIGINT; 0 on a clean stop."""
    try:
        config, notes = build_config(args)
    except RelayCliError as exc:
        print(f"agent relay: {exc}", file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        print(f"agent relay: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    from agent.logs import setup_logging

    setup_logging("info")  # stderr, secrets redacted, journald-aware
    return asyncio.run(_serve(config, notes))


async def _serve(config: Any, notes: list[str]) -> int:
    from agent.relay.server import Relay
    from agent.relay.store import StoreError

    relay = Relay(config)
    try:
        await relay.start()
    except (OSError, StoreError) as exc:
        print(f"agent relay: cannot start on {config.host}:{config.port}: {exc}",
              file=sys.stderr)
        await relay.close()
        return EX_CANTCREAT
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"relay listening on {relay.url}", flush=True)
        for note in notes:
            print(note, flush=True)
        await stop.wait()
        log.info("relay: stop signal received, closing connections with 1001")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await relay.close()
    return 0
