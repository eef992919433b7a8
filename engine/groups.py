"""Groups of runs (a sweep): their definition, and one result row per run for the group
table and ``runyard export``, with drift against the group's first run.

Stdlib only: the CLI reads this straight from the database when no engine runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from engine import provenance


class GroupExists(ValueError):
    pass


class NoSuchGroup(LookupError):
    pass


def create(conn: sqlite3.Connection, name: str | None, kind: str, definition: dict[str, Any], now: float) -> str:
    """Record a new group; returns its name (``sweep-N`` when none is given).

    Call inside the transaction that queues its runs: the group and its runs land together.
    """
    if name is not None:
        if _taken(conn, name):
            raise GroupExists(f"group {name} already exists; choose another --group, or omit it for a new one")
    else:
        number = conn.execute("SELECT COUNT(*) FROM groups WHERE kind = ?", (kind,)).fetchone()[0] + 1
        while _taken(conn, f"{kind}-{number}"):
            number += 1
        name = f"{kind}-{number}"
    conn.execute(
        "INSERT INTO groups (name, kind, definition, created_at) VALUES (?, ?, ?, ?)",
        (name, kind, json.dumps(definition, sort_keys=True), now),
    )
    return name


def _taken(conn: sqlite3.Connection, name: str) -> bool:
    return bool(
        conn.execute("SELECT 1 FROM groups WHERE name = ?", (name,)).fetchone()
        or conn.execute("SELECT 1 FROM runs WHERE run_group = ? LIMIT 1", (name,)).fetchone()
    )


def get(conn: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    """The group as recorded; a name that only runs carry (``submit --group``) is a plain group."""
    row = conn.execute("SELECT name, kind, definition, created_at FROM groups WHERE name = ?", (name,)).fetchone()
    if row is not None:
        return {"name": row[0], "kind": row[1], "definition": json.loads(row[2]), "created_at": row[3]}
    if conn.execute("SELECT 1 FROM runs WHERE run_group = ? LIMIT 1", (name,)).fetchone():
        return {"name": name, "kind": "group", "definition": None, "created_at": None}
    return None


def table(conn: sqlite3.Connection, group: str | None) -> dict[str, Any]:
    """``{"group": the group or None, "runs": result rows}``: what ``ls --group`` and
    ``export`` show."""
    info = None
    if group is not None:
        info = get(conn, group)
        if info is None:
            raise NoSuchGroup(f"no group {group!r}; `runyard ls --all --json` shows each run's group")
    return {"group": info, "runs": results(conn, group)}


_FINGERPRINT_SQL = ", ".join(
    f"json_extract(p.record, '$.{'.'.join(path)}') AS fp_{name}" for name, path in provenance.DRIFT_PATHS.items()
)


def results(conn: sqlite3.Connection, group: str | None = None, *, now: float | None = None) -> list[dict[str, Any]]:
    """One row per run (of ``group``, or every run), by id: parameters, metrics, state,
    durations, the provenance hash, and what drifted from the first run of its group."""
    now = time.time() if now is None else now
    rows = conn.execute(
        f"""
        SELECT r.id, r.name, r.run_group, r.state, r.params, r.metrics, r.progress, r.seed, r.exit_code,
               r.attempt, r.submitted_at, r.started_at, r.ended_at, p.sha256, {_FINGERPRINT_SQL}
        FROM runs r LEFT JOIN provenance p ON p.run_id = r.id
        WHERE ? IS NULL OR r.run_group = ?
        ORDER BY r.id
        """,
        (group, group),
    ).fetchall()
    baselines: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        fingerprint = {name: row[f"fp_{name}"] for name in provenance.DRIFT_PATHS} if row["sha256"] else None
        baseline = None
        if row["run_group"] is not None and fingerprint is not None:
            baseline = baselines.setdefault(row["run_group"], fingerprint)
        out.append(_row(row, fingerprint, baseline, now))
    return out


def _row(row: sqlite3.Row, fingerprint: dict | None, baseline: dict | None, now: float) -> dict[str, Any]:
    metrics = json.loads(row["metrics"]) if row["metrics"] else None
    final = metrics is not None
    if metrics is None and row["progress"]:
        metrics = json.loads(row["progress"]).get("metrics")
    started, ended = row["started_at"], row["ended_at"]
    return {
        "id": row["id"],
        "name": row["name"],
        "group": row["run_group"],
        "state": row["state"],
        "params": json.loads(row["params"]) if row["params"] else {},
        "metrics": metrics if isinstance(metrics, dict) else {},
        "metrics_final": final,
        "seed": row["seed"],
        "exit_code": row["exit_code"],
        "attempts": row["attempt"],
        "submitted_at": row["submitted_at"],
        "started_at": started,
        "ended_at": ended,
        "wait_s": None if started is None else round(started - row["submitted_at"], 3),
        "run_s": None if started is None else round((ended if ended is not None else now) - started, 3),
        "provenance_sha256": row["sha256"],
        "drift": provenance.drift(baseline, fingerprint) if baseline is not fingerprint else [],
    }


FIXED_SORT_KEYS = ("id", "state", "time", "wait")


def sort_keys(rows: list[dict[str, Any]]) -> list[str]:
    """What the rows can be sorted by: a few columns, then every parameter and metric."""
    names = dict.fromkeys(name for row in rows for part in ("params", "metrics") for name in row[part])
    return [*FIXED_SORT_KEYS, *names]


def sort_rows(rows: list[dict[str, Any]], key: str, *, descending: bool = False) -> list[dict[str, Any]]:
    """By a parameter, a metric, ``id``, ``state``, ``time`` or ``wait``. Numbers compare as
    numbers (also those written as text, like a parameter's ``1e-3``) and before text; runs
    without the value, or with NaN (never the best), come last either way.

    Raises:
        KeyError: ``key`` is none of :func:`sort_keys`.
    """
    if key not in sort_keys(rows):
        raise KeyError(key)

    def value(row: dict[str, Any]) -> Any:
        fixed = {"id": row["id"], "state": row["state"], "time": row["run_s"], "wait": row["wait_s"]}
        return fixed[key] if key in fixed else row["metrics"].get(key, row["params"].get(key))

    keyed = [(_order(value(row)), row) for row in rows]
    present = sorted((pair for pair in keyed if pair[0] is not None), key=lambda pair: pair[0], reverse=descending)
    return [row for _, row in present] + [row for order, row in keyed if order is None]


def _order(value: Any) -> tuple[int, Any] | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return (1, str(value))
    return None if number != number else (0, number)


def run_provenance(conn: sqlite3.Connection, run_id: int, group: str | None) -> tuple[dict | None, list[str]]:
    """A run's record and what drifted from the first recorded run of its group."""
    row = conn.execute("SELECT record FROM provenance WHERE run_id = ?", (run_id,)).fetchone()
    record = json.loads(row[0]) if row else None
    if record is None or group is None:
        return record, []
    first = conn.execute(
        "SELECT p.record FROM provenance p JOIN runs r ON r.id = p.run_id WHERE r.run_group = ? "
        "ORDER BY r.id LIMIT 1",
        (group,),
    ).fetchone()
    baseline = provenance.fingerprint(json.loads(first[0])) if first else None
    return record, provenance.drift(baseline, provenance.fingerprint(record))
