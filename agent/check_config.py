"""``agent check-config``: validate the configuration and print the effective values.

Prints the merged configuration (defaults, file, ``AGENT_*`` environment) as TOML that could be
used as a config file, then checks that every secret file is readable, non-empty and not readable
by others. Secret files are shown as paths only; their contents are read to check them but never
printed. Exit status 0 when everything is fine, 78 (``EX_CONFIG``) with the error otherwise, the
same status ``agent run`` uses, so ``agent check-config && systemctl restart wearable-agent`` is
a safe upgrade step.

Credentials (``cred:NAME``) exist only inside the running service. When ``$CREDENTIALS_DIRECTORY``
is not set, this command resolves them against systemd's location for the unit,
``/run/credentials/wearable-agent.service``, and reports them as "provided by systemd" instead of
reading them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

from agent.config import (
    APP_NAME,
    EXIT_CONFIG,
    Config,
    ConfigError,
    find_config_file,
    load_config,
    secret_paths,
)

__all__ = ["configure", "render_toml", "run"]

#: Where systemd puts the unit's credentials (``/run/credentials/<unit name>``).
SERVICE_CREDENTIALS_DIR: Final = f"/run/credentials/{APP_NAME}.service"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="config file (default: $AGENT_CONFIG, $CONFIGURATION_DIRECTORY/config.toml under "
        "systemd, else the user config directory)",
    )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # JSON strings are TOML basic strings


def _table_lines(obj: Any, header: str, out: list[str], secrets: set[str]) -> None:
    scalars: list[str] = []
    tables: list[tuple[str, Any]] = []
    arrays: list[tuple[str, tuple[Any, ...]]] = []
    for f in dataclasses.fields(obj):
        if not f.metadata.get("toml", True):
            continue
        value = getattr(obj, f.name)
        key = f"{header}.{f.name}" if header else f.name
        if dataclasses.is_dataclass(value):
            tables.append((key, value))
        elif isinstance(value, tuple):
            arrays.append((key, value))
        elif value is None:
            scalars.append(f"# {f.name} = (unset)")
        else:
            note = "  # secret: path only" if key in secrets else ""
            scalars.append(f"{f.name} = {_toml_value(value)}{note}")
    if header:
        out.append("")
        out.append(f"[{header}]")
    out.extend(scalars)
    for key, value in tables:
        _table_lines(value, key, out, secrets)
    for key, items in arrays:
        if not items:
            out.append("")
            out.append(f"# [[{key}]] (none)")
        for i, item in enumerate(items):
            out.append("")
            out.append(f"[[{key}]]")
            for f in dataclasses.fields(item):
                value = getattr(item, f.name)
                if value is None:
                    out.append(f"# {f.name} = (unset)")
                else:
                    note = "  # secret: path only" if f"{key}[{i}].{f.name}" in secrets else ""
                    out.append(f"{f.name} = {_toml_value(value)}{note}")


def render_toml(config: Config) -> str:
    """The effective configuration as TOML (secrets appear only as file paths)."""
    lines = [
        f"# config file: {config.config_file or '(none found: built-in defaults)'}",
    ]
    _table_lines(config, "", lines, set(secret_paths(config)))
    return "\n".join(lines) + "\n"


def check(
    config_path: Path | None,
    *,
    env: dict[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Load, print and check; the body of :func:`run`, with injectable environment and streams."""
    from agent.secrets import SecretError, read_secret

    environ = dict(os.environ if env is None else env)
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    outside_service = not environ.get("CREDENTIALS_DIRECTORY")
    environ = with_service_credentials(environ)
    try:
        config = load_config(config_path, env=environ)
    except ConfigError as exc:
        print(exc, file=stderr)
        if exc.key == str(find_config_file(config_path, env=environ)[0]):
            print("hint: see config.example.toml for every option", file=stderr)
        return EXIT_CONFIG
    stdout.write(render_toml(config))
    problems = 0
    for key, path in secret_paths(config).items():
        if outside_service and path.is_relative_to(SERVICE_CREDENTIALS_DIR):
            print(f"{key}: {path}: systemd credential, provided when the service runs", file=stderr)
            continue
        try:
            read_secret(path, what=key, env=environ)
        except SecretError as exc:
            print(exc, file=stderr)
            problems += 1
        else:
            print(f"{key}: {path}: ok", file=stderr)
    if problems:
        return EXIT_CONFIG
    print("configuration ok", file=stderr)
    return 0


def with_service_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``$CREDENTIALS_DIRECTORY`` pointing at the service's, unless already set.

    Outside the service, ``cred:NAME`` secrets in the config only resolve (to the paths the
    service would see) with it; commands that merely inspect the config use this.
    """
    out = dict(env)
    if not out.get("CREDENTIALS_DIRECTORY"):
        out["CREDENTIALS_DIRECTORY"] = SERVICE_CREDENTIALS_DIR
    return out


def run(args: argparse.Namespace) -> int:
    """``agent check-config [--config PATH]``."""
    return check(getattr(args, "config", None))
