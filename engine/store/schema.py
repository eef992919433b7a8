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
