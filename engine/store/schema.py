"""The schema, as sqlite-utils migrations. The only place DDL lives.

Each migration ends by setting ``PRAGMA user_version`` to its number, so light clients
(:mod:`engine.store.sql`) can check the schema without importing sqlite-utils.
"""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path

from sqlite_utils import Database, Migrations

from engine.store.sql import SCHEMA_VERSION, connect

migrations = Migrations("runyard")


@migrations()
def m001_runs(db: Database) -> None:
    # AUTOINCREMENT semantics matter: a run id is never reused, even after the newest
    # run is deleted, so a log or a script never confuses two runs (Slurm did).
    db.execute(
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('queued','running','succeeded','failed','cancelled','timed_out')),
            reason TEXT NOT NULL DEFAULT '',
            priority INTEGER NOT NULL DEFAULT 0,
            held INTEGER NOT NULL DEFAULT 0,
            argv TEXT NOT NULL,
            cwd TEXT NOT NULL,
            env TEXT,
            envelope TEXT NOT NULL,
            grace_s REAL NOT NULL DEFAULT 30.0,
            gpus TEXT,
            submitted_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            exit_code INTEGER,
            signal TEXT,
            pid INTEGER,
            pid_started_at REAL,
            shim_pid INTEGER,
            shim_started_at REAL,
            log_path TEXT,
            run_dir TEXT,
            stop_request TEXT,
            stop_requested_at REAL,
            kill_sent_at REAL,
            uid INTEGER,
            user TEXT
        )
        """
    )
    db["runs"].create_index(["state", "priority", "submitted_at"])
    db["transitions"].create(
        {"id": int, "run_id": int, "at": float, "from_state": str, "to_state": str, "reason": str},
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["transitions"].create_index(["run_id"])
    db["meta"].create({"key": str, "value": str}, pk="key")
    db.execute("PRAGMA user_version = 1")


@migrations()
def m002_enforcement(db: Database) -> None:
    db.execute("ALTER TABLE runs ADD COLUMN on_overrun TEXT NOT NULL DEFAULT 'default'")
    # Why a stop was requested, in words, kept apart from ``reason`` (which changes as
    # the stop proceeds) so the final reason can say it: "exceeded memory envelope 16G".
    db.execute("ALTER TABLE runs ADD COLUMN stop_detail TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN cores TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN warning TEXT")
    db.execute("PRAGMA user_version = 2")


@migrations()
def m003_attempts(db: Database) -> None:
    # What the submitter asked about retries, as one JSON object (engine.retry.RetryPolicy).
    db.execute("ALTER TABLE runs ADD COLUMN retry_policy TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE runs ADD COLUMN retries_used INTEGER NOT NULL DEFAULT 0")
    # A queued run in its retry backoff is not admitted before this time.
    db.execute("ALTER TABLE runs ADD COLUMN not_before REAL")
    db.execute("ALTER TABLE runs ADD COLUMN failure_class TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN checkpoint_dir TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN warn_sent_at REAL")
    db.execute("ALTER TABLE runs ADD COLUMN resume_from TEXT")
    db["attempts"].create(
        {
            "run_id": int, "attempt": int, "started_at": float, "ended_at": float, "state": str,
            "reason": str, "exit_code": int, "signal": str, "failure_class": str, "log_path": str,
            "envelope": str, "gpus": str, "resumed_from": str,
        },
        pk=("run_id", "attempt"),
        foreign_keys=[("run_id", "runs", "id")],
    )
    db.execute("PRAGMA user_version = 3")


@migrations()
def m004_health_and_scheduling(db: Database) -> None:
    # [[run id, "ok" | "any"], ...]: the runs this one starts after (Slurm's afterok/afterany).
    db.execute("ALTER TABLE runs ADD COLUMN depends_on TEXT")
    # A sweep's group (issue 7) and the breaker's key; NULL outside groups.
    db.execute("ALTER TABLE runs ADD COLUMN run_group TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN health TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN health_detail TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN health_policy TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN progress TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN schedule_id INTEGER")
    db["health_checks"].create(
        {"id": int, "run_id": int, "attempt": int, "at": float, "check_name": str, "ok": int, "health": str,
         "output": str},
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["health_checks"].create_index(["run_id", "at"])
    db["schedules"].create(
        {"id": int, "name": str, "cron": str, "template": str, "created_at": float, "last_fired_at": float,
         "last_run_id": int, "enabled": int},
        pk="id",
    )
    # Groups or users whose runs the circuit breaker paused: key -> why.
    db["pauses"].create({"key": str, "reason": str, "since": float}, pk="key")
    db.execute("PRAGMA user_version = 4")


@migrations()
def m005_provenance_and_groups(db: Database) -> None:
    db["provenance"].create(
        {"run_id": int, "record": str, "sha256": str, "created_at": float},
        pk="run_id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    # Written once at submit; the database itself refuses to change it afterwards, so no
    # bug or hand-edit can make a result point at a record that is not what ran.
    db.execute(
        "CREATE TRIGGER provenance_is_immutable BEFORE UPDATE ON provenance "
        "BEGIN SELECT RAISE(ABORT, 'provenance is immutable'); END"
    )
    db.execute(
        "CREATE TRIGGER provenance_is_kept BEFORE DELETE ON provenance "
        "BEGIN SELECT RAISE(ABORT, 'provenance is immutable'); END"
    )
    db["groups"].create({"name": str, "kind": str, "definition": str, "created_at": float}, pk="name")
    db.execute("ALTER TABLE runs ADD COLUMN params TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN seed INTEGER")
    db.execute("ALTER TABLE runs ADD COLUMN metrics TEXT")
    db.execute("PRAGMA user_version = 5")


@migrations()
def m006_index_ended_at(db: Database) -> None:
    # `ls` shows the 20 most recently ended runs: without this index SQLite scans and
    # sorts every row (each carries its submitter's environment) on every `ls` and poll.
    # Index order (ended_at, rowid) also serves the "ended_at DESC, id DESC" tie-break.
    db.execute("CREATE INDEX IF NOT EXISTS idx_runs_ended_at ON runs (ended_at)")
    db.execute("PRAGMA user_version = 6")


@migrations()
def m007_backend_jobs(db: Database) -> None:
    # With a cluster backend a run is also a job there: its id ("123") and the node it ran
    # on. "submitting" marks a hand-over under way, so a restarted engine looks for the job
    # by name instead of submitting it twice.
    db.execute("ALTER TABLE runs ADD COLUMN backend_job TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN node TEXT")
    db.execute("PRAGMA user_version = 7")


def migrate(db_path: Path) -> None:
    """Bring the database at ``db_path`` to the current schema (creating it if needed).

    Safe to call from many processes at once: they take turns on a lock file beside the
    database, so a migration is never applied twice nor raced half-way.

    Raises :class:`sqlite3.DatabaseError` for a file that is not a runyard database.
    """
    lock_path = Path(f"{db_path}.migrate.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = connect(db_path)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                # Readers never block the writer, and the writer never blocks readers.
                conn.execute("PRAGMA journal_mode=WAL")
            db = Database(conn)
            migrations.apply(db)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} after migrating, expected {SCHEMA_VERSION}"
                )
        finally:
            conn.close()
