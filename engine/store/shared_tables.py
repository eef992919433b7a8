"""The tables of the shared box (issue 9), as their own sqlite-utils migration set.

Like the usage history (:mod:`engine.store.history`), they are a set apart from the
runs' schema: only the engine reads and writes them, so clients that check
``PRAGMA user_version`` are unaffected, and the set grows without renumbering the runs'.

* ``run_owners``: what the socket and the request said about a run's submitter (its gid
  and umask), for its launch as that user (:mod:`engine.access`). A run without a row
  starts with its user's primary group and the most private umask.
* ``run_options``: a run's ``--pool`` and ``--preemptible``; no row: neither.
* ``reservations``: GPUs held for a user over a window (:mod:`engine.reservations`).
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from engine.store.history import _file_of, _migration_lock
from engine.store.sql import connect

MIGRATION_SET = "runyard-shared"


def m001_run_owners(db) -> None:
    db["run_owners"].create(
        {"run_id": int, "gid": int, "umask": int}, pk="run_id", foreign_keys=[("run_id", "runs", "id")],
    )


def m002_pools_reservations(db) -> None:
    db["run_options"].create(
        {"run_id": int, "pool": str, "preemptible": int}, pk="run_id", foreign_keys=[("run_id", "runs", "id")],
    )
    db.execute(
        """
        CREATE TABLE reservations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            gpus TEXT NOT NULL,
            start REAL NOT NULL,
            end REAL NOT NULL,
            created_by TEXT,
            created_at REAL NOT NULL,
            cancelled INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute("CREATE INDEX idx_reservations_end ON reservations (end)")


@functools.cache
def shared_migrations():
    """The ``runyard-shared`` set (built on first use: it needs sqlite-utils)."""
    from sqlite_utils import Migrations

    migrations = Migrations(MIGRATION_SET)
    migrations()(m001_run_owners)
    migrations()(m002_pools_reservations)
    return migrations


def apply_shared_migrations(db_path_or_conn: Path | str | sqlite3.Connection) -> None:
    """Create or update the shared box's tables; applying twice changes nothing. Takes the
    migration lock of the other sets, so no two processes race."""
    from sqlite_utils import Database

    if isinstance(db_path_or_conn, sqlite3.Connection):
        with _migration_lock(_file_of(db_path_or_conn)):
            shared_migrations().apply(
                Database(db_path_or_conn, recursive_triggers=False, execute_plugins=False)
            )
        return
    path = Path(db_path_or_conn)
    with _migration_lock(path):
        conn = connect(path)
        try:
            shared_migrations().apply(Database(conn))
        finally:
            conn.close()
