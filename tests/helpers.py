"""Helpers shared by the tests. Plain functions, no fixtures: import what you need."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

from engine.model import Run, RunSpec
from engine.store import sql
from engine.store.schema import migrate

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 20.0
"""Generous: the test machines are small, shared and noisy."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.05,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises:
        AssertionError: ``timeout`` seconds passed first; says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            name = getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(text or f"timed out after {timeout:g}s waiting for {name}")
        time.sleep(interval)


def make_run(
    home: Path,
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> Run:
    """Queue a run in the database under ``home`` (created and migrated on first use)
    and return it as the engine would read it. ``cwd`` defaults to ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    db_path = home / "runyard.db"
    migrate(db_path)
    conn = sql.connect(db_path)
    try:
        spec = RunSpec(argv=tuple(argv), cwd=str(cwd if cwd is not None else home), env=dict(env or {}))
        run_id = sql.insert_run(
            conn, spec, now=time.time(), runs_dir=home / "runs", uid=os.getuid(), user="tester"
        )
        run = sql.get_run(conn, run_id)
    finally:
        conn.close()
    assert run is not None
    return run


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie has ended: it only awaits a reap)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
