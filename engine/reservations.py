"""Reservations (GPUs held for a user over a window), pools (GPUs set aside for runs that
ask for them) and the per-run options ``--pool`` and ``--preemptible``.

A reservation names concrete GPUs, chosen when it is made: the highest indices not in a
pool nor in another reservation that overlaps its window. From the moment it is made
until its window ends, a run of anyone else gets those GPUs only if its time limit ends
it before the window starts (a run without one never gets them); the reservation's user
may use them at any time. A run already running on them when the window opens is not
stopped, unless it is preemptible and a higher-priority run needs them.

The decisions are pure functions (:func:`forbidden`, :func:`choose_gpus`); the rest
reads and writes the tables of :mod:`engine.store.shared_tables`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from engine.shared_config import PoolConfig
from engine.store.sql import write_transaction


@dataclass(frozen=True)
class Reservation:
    id: int
    user: str
    gpus: tuple[int, ...]
    start: float
    end: float
    created_by: str | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "user": self.user, "gpus": list(self.gpus), "start": self.start, "end": self.end,
                "created_by": self.created_by}


@dataclass(frozen=True)
class RunOptions:
    pool: str | None = None
    preemptible: bool = False


def forbidden(
    *,
    user: str,
    time_limit_s: float | None,
    pool: str | None,
    now: float,
    reservations: Iterable[Reservation],
    pools: Mapping[str, PoolConfig],
    gpu_indices: Collection[int],
) -> frozenset[int]:
    """The GPUs a run may not get now: those of pools other than its own (all but its
    pool's when it has one), and those of reservations not its user's whose window it
    could reach (no time limit, or ``now + limit`` past the window's start)."""
    if pool is not None:
        own = set(pools[pool].gpus) if pool in pools else set()
        banned = {index for index in gpu_indices if index not in own}
    else:
        banned = {index for config in pools.values() for index in config.gpus}
    ends = None if time_limit_s is None else now + time_limit_s
    for reservation in reservations:
        if reservation.user == user or reservation.end <= now:
            continue
        if ends is not None and ends <= reservation.start:
            continue
        banned.update(reservation.gpus)
    return frozenset(banned)


def choose_gpus(count: int, gpu_indices: Collection[int], unusable: Collection[int]) -> tuple[int, ...] | None:
    """``count`` GPUs for a reservation, highest indices first (low ones, which users name
    by habit, stay free); ``None`` when there are not enough."""
    free = sorted((index for index in gpu_indices if index not in unusable), reverse=True)
    if count < 1 or len(free) < count:
        return None
    return tuple(sorted(free[:count]))


# ---------------------------------------------------------------------------- storage


def _table_missing(error: sqlite3.OperationalError) -> bool:
    return "no such table" in str(error)


def current(conn: sqlite3.Connection, now: float) -> list[Reservation]:
    """Reservations whose window has not ended, by start; none where the tables are not
    made yet (an engine built without the shared migrations, as in tests)."""
    try:
        rows = conn.execute(
            "SELECT id, user, gpus, start, end, created_by FROM reservations WHERE cancelled = 0 AND end > ? "
            "ORDER BY start, id", (now,),
        ).fetchall()
    except sqlite3.OperationalError as error:
        if _table_missing(error):
            return []
        raise
    return [Reservation(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5]) for row in rows]


def get(conn: sqlite3.Connection, reservation_id: int) -> Reservation | None:
    row = conn.execute(
        "SELECT id, user, gpus, start, end, created_by FROM reservations WHERE id = ? AND cancelled = 0",
        (reservation_id,),
    ).fetchone()
    return None if row is None else Reservation(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5])


def add(conn: sqlite3.Connection, *, user: str, gpus: tuple[int, ...], start: float, end: float,
        created_by: str | None, now: float) -> Reservation:
    with write_transaction(conn):
        cursor = conn.execute(
            "INSERT INTO reservations (user, gpus, start, end, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (user, json.dumps(list(gpus)), start, end, created_by, now),
        )
    return Reservation(cursor.lastrowid, user, gpus, start, end, created_by)


def cancel(conn: sqlite3.Connection, reservation_id: int) -> None:
    with write_transaction(conn):
        conn.execute("UPDATE reservations SET cancelled = 1 WHERE id = ?", (reservation_id,))


def record_options(conn: sqlite3.Connection, run_id: int, options: RunOptions) -> None:
    if options == RunOptions():
        return
    with write_transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO run_options (run_id, pool, preemptible) VALUES (?, ?, ?)",
            (run_id, options.pool, int(options.preemptible)),
        )


def options_of(conn: sqlite3.Connection, run_ids: Iterable[int]) -> dict[int, RunOptions]:
    ids = list(run_ids)
    if not ids:
        return {}
    found: dict[int, RunOptions] = {}
    try:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for run_id, pool, preemptible in conn.execute(
                f"SELECT run_id, pool, preemptible FROM run_options WHERE run_id IN ({marks})", chunk
            ):
                found[run_id] = RunOptions(pool, bool(preemptible))
    except sqlite3.OperationalError as error:
        if _table_missing(error):
            return {}
        raise
    return found
