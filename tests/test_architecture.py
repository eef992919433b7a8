"""Rules of the architecture that a test can hold us to."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("textual", "torch", "sqlite_utils", "apscheduler")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_engine_never_imports_the_tui_or_textual():
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & {"tui", "textual", "runyard"})
        for path in (ROOT / "engine").rglob("*.py")
    }
    # engine.engine reads runyard.__version__, a constant in a module that imports nothing;
    # engine.checkpoints reads checkpoint folders through runyard.checkpoint's own reader,
    # which imports only the stdlib (tests/test_checkpoint.py checks that).
    allowed = {"engine/engine.py": ["runyard"], "engine/checkpoints.py": ["runyard"]}
    assert {k: v for k, v in offenders.items() if v and allowed.get(k) != v} == {}


def test_engine_never_imports_torch():
    assert [str(p) for p in (ROOT / "engine").rglob("*.py") if "torch" in _imports(p)] == []


def _modules_loaded_by(yard, *cli_args: str) -> set[str]:
    code = (
        "import sys, json, runyard.cli\n"
        f"runyard.cli.main({list(cli_args)!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=yard.env, capture_output=True, text=True,
                         timeout=60, cwd=str(yard.home))
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_cli_commands_stay_light_with_a_daemon(yard):
    yard.start_daemon()
    for args in (["submit", "--hold", "--", "true"], ["ls"], ["ls", "--all", "--json"], ["show", "1"]):
        loaded = _modules_loaded_by(yard, *args)
        assert not loaded & set(HEAVY), (args, sorted(loaded & set(HEAVY)))


def test_cli_commands_stay_light_without_a_daemon(yard):
    # The first offline submit into a brand-new home creates the schema (sqlite-utils);
    # every later one, and every ls, must not pay for it.
    yard.cli("submit", "--hold", "--", "true")
    for args in (["submit", "--hold", "--", "true"], ["ls"], ["show", "1"]):
        loaded = _modules_loaded_by(yard, *args)
        assert not loaded & set(HEAVY), (args, sorted(loaded & set(HEAVY)))
