"""The daemon's writes: compare-and-set state transitions, each with its history row.

Every state change is ``UPDATE ... WHERE id = ? AND state = ?`` in an immediate
transaction together with a ``transitions`` row, so a run is never in two states, a
transition is never applied twice (two writers racing: exactly one wins), and a crash
at any instant leaves either the old state or the new one with its history.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from engine.model import Run, RunSpec, RunState
from engine.store import sql

_WRITABLE = frozenset(
    {
        "reason", "priority", "held", "gpus", "started_at", "ended_at", "exit_code", "signal",
        "pid", "pid_started_at", "shim_pid", "shim_started_at", "stop_request",
        "stop_requested_at", "kill_sent_at", "log_path", "run_dir", "stop_detail", "cores", "warning",
    }
)


def _encode(name: str, value: object) -> object:
    if name in ("gpus", "cores"):
        return json.dumps(list(value or ()))
    if name == "held":
        return int(bool(value))
    return value


class RunStore:
    """The engine's handle on the database. Single-threaded use (the daemon's loop)."""

    def __init__(self, conn: sqlite3.Connection, runs_dir: Path) -> None:
        self.conn = conn
        self.runs_dir = runs_dir

    def submit(self, spec: RunSpec, *, now: float, uid: int | None, user: str | None) -> Run:
        run_id = sql.insert_run(self.conn, spec, now=now, runs_dir=self.runs_dir, uid=uid, user=user)
        run = self.get(run_id)
        assert run is not None
        return run

    def get(self, run_id: int) -> Run | None:
        return sql.get_run(self.conn, run_id)

    def in_state(self, *states: RunState) -> list[Run]:
        marks = ", ".join("?" for _ in states)
        rows = self.conn.execute(
            f"SELECT * FROM runs WHERE state IN ({marks}) ORDER BY id", [s.value for s in states]
        ).fetchall()
        return [Run.from_row(dict(row)) for row in rows]

    def transition(
        self, run_id: int, from_state: RunState, to_state: RunState, reason: str, *, now: float, **fields: object
    ) -> bool:
        """Move ``run_id`` from ``from_state`` to ``to_state``; False if it was not in ``from_state``."""
        with sql.write_transaction(self.conn):
            if not self._update(run_id, from_state, {"state": to_state.value, "reason": reason, **fields}):
                return False
            sql.record_transition(self.conn, run_id, now, from_state.value, to_state.value, reason)
        return True

    def update(self, run_id: int, expected_state: RunState, **fields: object) -> bool:
        """Change fields of a run without changing its state; False if its state differs."""
        if "state" in fields:
            raise ValueError("a state change goes through transition(), which records it")
        with sql.write_transaction(self.conn):
            return self._update(run_id, expected_state, fields)

    def set_reasons(self, reasons: Mapping[int, str]) -> None:
        """Record why queued runs wait; one transaction, only rows whose reason changed."""
        if not reasons:
            return
        with sql.write_transaction(self.conn):
            self.conn.executemany(
                "UPDATE runs SET reason = ? WHERE id = ? AND state = 'queued' AND reason != ?",
                [(reason, run_id, reason) for run_id, reason in reasons.items()],
            )

    def _update(self, run_id: int, expected_state: RunState, fields: Mapping[str, object]) -> bool:
        columns = [name for name in fields if name != "state"]
        unknown = set(columns) - _WRITABLE
        if unknown:
            raise ValueError(f"not writable: {sorted(unknown)}")
        assignments = [f"{name} = ?" for name in fields]
        values = [_encode(name, value) for name, value in fields.items()]
        cursor = self.conn.execute(
            f"UPDATE runs SET {', '.join(assignments)} WHERE id = ? AND state = ?",
            (*values, run_id, expected_state.value),
        )
        return cursor.rowcount == 1

    def transitions(self, run_id: int) -> list[dict]:
        rows = self.conn.execute(
            "SELECT at, from_state, to_state, reason FROM transitions WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()
        return [dict(row) for row in rows]

    def get_meta(self, key: str) -> str | None:
        return sql.get_meta(self.conn, key)

    def set_meta(self, key: str, value: str | None) -> None:
        with sql.write_transaction(self.conn):
            if value is None:
                self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self.conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
