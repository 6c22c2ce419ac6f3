"""The ``agent`` entry points as a user types them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent import cli

ROOT = Path(__file__).resolve().parents[1]


def test_python_m_agent_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, runpy; sys.argv=['agent','--help'];\n"
        "try:\n    runpy.run_module('agent', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('numpy', 'bleak', 'websockets', 'scipy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout
    for name in cli.COMMANDS:
        assert name in out
    assert "HEAVY []" in out


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "agent", "frobnicate"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 64  # sysexits EX_USAGE, as the README says
    assert "invalid choice" in result.stderr


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "agent", "--version"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, check=True)
    assert result.stdout.startswith("agent ")


def test_bad_option_of_a_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "agent", "run", "--bogus"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 64
    assert "unrecognized arguments: --bogus" in result.stderr
