"""The ``agent`` command line.

Subcommands live in their own modules and are imported only when chosen, so ``agent --help``
starts in well under 0.3 s on a small board (numpy, bleak and websockets are never imported for
it). Each command module exposes ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol

#: name → (module, one-line help). Order is the order shown by ``agent --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("agent.daemon", "run the agent: sensors → processing → outbox → broker"),
    "status": ("agent.status", "show the running daemon's state"),
    "check-config": ("agent.check_config", "validate the configuration and print it"),
    "scan": ("agent.scan", "list nearby BLE sensors and the config lines to use them"),
    "relay": ("agent.relay.cli", "run the streaming relay (the server side)"),
    "watch": ("agent.watch", "consume: print what a developer's stream receives"),
    "replay": ("agent.replay", "run a recording through processing; print or stream the readings"),
}

#: sysexits.h EX_USAGE: wrong command line.
EX_USAGE = 64


class _Parser(argparse.ArgumentParser):
    """argparse with the sysexits usage status (64) instead of argparse's 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


class CommandModule(Protocol):
    """What a subcommand module provides."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments."""
        ...

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; return the exit status."""
        ...


def _top_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="agent",
        description="Wearable producer agent for the Terra Streaming Protocol.",
        epilog="Run 'agent COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agent`` console script and ``python -m agent``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in COMMANDS:
        parser = _top_parser()
        ns = parser.parse_args(args_list)
        if ns.version:
            from agent import __version__

            print(f"agent {__version__}")
            return 0
        parser.print_help()
        return EX_USAGE if not args_list else 0
    name = args_list[0]
    module_name, help_text = COMMANDS[name]
    module: CommandModule = importlib.import_module(module_name)
    parser = _Parser(prog=f"agent {name}", description=help_text)
    module.configure(parser)
    ns = parser.parse_args(args_list[1:])
    try:
        return module.run(ns)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
