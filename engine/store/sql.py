"""Stdlib-only access to the runyard database: connect, submit, read.

This is the one insert path for runs (the daemon and the CLI's offline submit both
use :func:`insert_run`), and the one read path (:func:`get_run`, :func:`list_runs`).
It must not import sqlite-utils: ``runyard submit`` and ``runyard ls`` load it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from engine.model import Run, RunSpec, RunState

SCHEMA_VERSION = 7
BUSY_TIMEOUT_S = 60.0
"""How long a writer waits for the lock. Generous: a submit must never fail with
"database is locked" because many submitters arrived at once."""


class StoreError(RuntimeError):
    """The database cannot be used; the message is one line that says what to do."""


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database with a busy timeout and full fsync on commit.

    ``synchronous=FULL``: an acknowledged submit survives a power cut, not just a crash.
    WAL is switched on once, by :func:`engine.store.schema.migrate` (it is persistent, and
    switching needs an exclusive lock that a crowd of new clients would fight over).
    """
    if readonly:
        uri = f"file:{Path(path).as_posix()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as error:
        conn.close()
        raise store_error(path, error) from None
    return conn


def store_error(path: Path | str, error: sqlite3.DatabaseError) -> StoreError:
    if isinstance(error, sqlite3.OperationalError):
        return StoreError(f"cannot use {path} ({error}); check the disk and permissions, then try again")
    return StoreError(f"{path} is not a usable runyard database ({error}); move it aside and run again")


def schema_version(conn: sqlite3.Connection) -> int:
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as error:
        raise store_error("the runyard database", error) from None


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE``: take the write lock up front, so the busy timeout applies.

    A deferred transaction that reads first and writes later fails at once with
    SQLITE_BUSY when another writer committed in between; an immediate one waits.
    Inside an open transaction it joins it: the outer one commits (a batch of submits
    lands whole or not at all).
    """
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    else:
        conn.commit()


def record_transition(
    conn: sqlite3.Connection, run_id: int, at: float, from_state: str | None, to_state: str, reason: str
) -> None:
    conn.execute(
        "INSERT INTO transitions (run_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
        (run_id, at, from_state, to_state, reason),
    )


def insert_run(
    conn: sqlite3.Connection,
    spec: RunSpec,
    *,
    now: float,
    runs_dir: Path,
    uid: int | None,
    user: str | None,
    reason: str | None = None,
) -> int:
    """Queue a run; returns its id. One transaction: the run exists fully or not at all."""
    if reason is None:
        reason = "waiting: not yet considered by the engine"
        if spec.start_at is not None:
            reason = "waiting: scheduled for " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(spec.start_at))
    with write_transaction(conn):
        cursor = conn.execute(
            """
            INSERT INTO runs (name, state, reason, priority, held, argv, cwd, env, envelope,
                              grace_s, gpus, submitted_at, uid, user, on_overrun, retry_policy,
                              depends_on, not_before, run_group, health_policy, schedule_id, seed, params)
            VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, '[]', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                spec.name or "",
                reason,
                spec.priority,
                int(spec.held),
                json.dumps(list(spec.argv)),
                spec.cwd,
                json.dumps(spec.env),
                json.dumps(spec.envelope.to_dict()),
                spec.grace_s,
                now,
                uid,
                user,
                spec.on_overrun,
                json.dumps(spec.retry.to_dict()),
                json.dumps([list(dep) for dep in spec.depends_on]) if spec.depends_on else None,
                spec.start_at,
                spec.group,
                json.dumps(spec.health) if spec.health else None,
                spec.schedule_id,
                spec.seed,
                json.dumps(spec.params) if spec.params else None,
            ),
        )
        run_id = cursor.lastrowid
        run_dir = runs_dir / str(run_id)
        name = spec.name or _default_name(spec.argv, run_id)
        # The same folder for every attempt: that is what a retry resumes from.
        checkpoint_dir = spec.checkpoint_dir or str(run_dir / "checkpoints")
        conn.execute(
            "UPDATE runs SET name = ?, run_dir = ?, log_path = ?, checkpoint_dir = ? WHERE id = ?",
            (name, str(run_dir), str(run_dir / "output.log"), checkpoint_dir, run_id),
        )
        if spec.provenance is not None:
            conn.execute(
                "INSERT INTO provenance (run_id, record, sha256, created_at) VALUES (?, ?, ?, ?)",
                (run_id, json.dumps(spec.provenance, sort_keys=True), spec.provenance.get("sha256"), now),
            )
        record_transition(conn, run_id, now, None, RunState.QUEUED.value, "submitted")
    return run_id


def get_provenance(conn: sqlite3.Connection, run_id: int) -> dict | None:
    row = conn.execute("SELECT record FROM provenance WHERE run_id = ?", (run_id,)).fetchone()
    return json.loads(row[0]) if row else None


def _default_name(argv: tuple[str, ...], run_id: int) -> str:
    program = Path(argv[0]).name if argv else "run"
    # "python train.py" says less than "train.py": name a script run by its script.
    if program.startswith("python") and len(argv) > 1 and not argv[1].startswith("-"):
        program = Path(argv[1]).name
    return f"{program}-{run_id}"


def get_run(conn: sqlite3.Connection, run_id: int) -> Run | None:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return Run.from_row(dict(row)) if row else None


ACTIVE_STATES = (RunState.QUEUED.value, RunState.RUNNING.value)


def list_runs(
    conn: sqlite3.Connection,
    *,
    include_finished: bool = True,
    recent_finished: int | None = None,
    after_id: int = 0,
    limit: int | None = None,
) -> list[Run]:
    """Runs ordered by id. ``include_finished=False`` keeps queued and running runs,
    plus the ``recent_finished`` most recently ended ones when that is given.

    With every run, ``after_id`` and ``limit`` read one page (ids above ``after_id``,
    at most ``limit``): a client reads ten thousand runs in pages, and the engine
    answers other requests between them."""
    if include_finished:
        if limit is not None:
            rows = conn.execute("SELECT * FROM runs WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        else:
            rows = conn.execute("SELECT * FROM runs WHERE id > ? ORDER BY id", (after_id,)).fetchall()
        return [Run.from_row(dict(row)) for row in rows]
    rows = conn.execute(
        "SELECT * FROM runs WHERE state IN (?, ?) ORDER BY id", ACTIVE_STATES
    ).fetchall()
    runs = [Run.from_row(dict(row)) for row in rows]
    if recent_finished:
        ended = conn.execute(
            "SELECT * FROM runs WHERE state NOT IN (?, ?) ORDER BY ended_at DESC, id DESC LIMIT ?",
            (*ACTIVE_STATES, recent_finished),
        ).fetchall()
        runs.extend(Run.from_row(dict(row)) for row in ended)
        runs.sort(key=lambda run: run.id)
    return runs


def count_runs(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None
