"""The README's two commands are the contract with a newcomer; CI must run the second verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README must open with a sh code block holding the two commands"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_run_and_test_commands() -> None:
    run_cmd, test_cmd = _commands()[:2]
    assert "agent run --simulate" in run_cmd
    assert "pytest" in test_cmd


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_cmd = _commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci
