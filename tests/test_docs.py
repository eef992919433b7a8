"""The README's promises cannot drift from what the project does."""

from __future__ import annotations

import re
from pathlib import Path

from runyard.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _first_commands() -> list[str]:
    return re.findall(r"```(?:sh|bash|console)?\n(.*?)\n```", README, flags=re.S)[:2]


def test_readme_starts_with_two_commands_and_ci_runs_the_second():
    run_command, test_command = _first_commands()
    assert "runyard" in run_command and "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.strip() in ci


def test_every_cli_command_is_documented():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name in subparsers.choices:
        assert f"runyard {name}" in README, name
