"""The daemon's writes: compare-and-set state transitions, each with its history row.

Every state change is ``UPDATE ... WHERE id = ? AND state = ?`` in an immediate
transaction together with a ``transitions`` row, so a run is never in two states, a
transition is never applied twice (two writers racing: exactly one wins), and a crash
at any instant leaves either the old state or the new one with its history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.model import Run, RunSpec, RunState
from engine.store import sql

_WRITABLE = frozenset(
    {
        "reason", "priority", "held", "gpus", "started_at", "ended_at", "exit_code", "signal",
        "pid", "pid_started_at", "shim_pid", "shim_started_at", "stop_request",
        "stop_requested_at", "kill_sent_at", "log_path", "run_dir", "stop_detail", "cores", "warning",
        "attempt", "retries_used", "not_before", "failure_class", "warn_sent_at", "resume_from", "envelope",
        "health", "health_detail", "progress", "metrics", "backend_job", "node",
    }
)


def _encode(name: str, value: object) -> object:
    if name in ("gpus", "cores"):
        return json.dumps(list(value or ()))
    if name == "envelope":
        return json.dumps(value.to_dict())
    if name in ("progress", "metrics"):
        return None if value is None else json.dumps(value)
    if name == "held":
        return int(bool(value))
    return value


class RunStore:
    """The engine's handle on the database. Single-threaded use (the daemon's loop)."""

    def __init__(self, conn: sqlite3.Connection, runs_dir: Path) -> None:
        self.conn = conn
        self.runs_dir = runs_dir
        self.listeners: list[Callable[[dict], None]] = []
        """Called after each committed state change with ``{run_id, at, from_state,
        to_state, reason}``: alerts hang here. A listener must not raise."""
        self._batched: list[dict] | None = None
        """Inside :meth:`batch`: the changes to announce once it commits."""
        self._decoded: dict[int, tuple[tuple, Run]] = {}
        """``id -> (row, Run)`` of the active runs as last read: a row that reads the same
        as last time is not decoded again (see :meth:`in_state`)."""

    # -- group commit -----------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Make every write in the block one transaction: one fsync for a whole tick's
        transitions, not one each (``synchronous=FULL`` makes each commit wait for the
        disk, ~2-5 ms). Listeners hear of the changes only once they are committed; a
        block that raises rolls back to the last :meth:`flush`. Nested: joins the outer."""
        if self._batched is not None:
            yield
            return
        self._batched = []
        try:
            with sql.write_transaction(self.conn):
                yield
        except BaseException:
            self._batched = None
            raise
        self._announce()

    def flush(self) -> None:
        """Commit the batch so far, before an effect outside the database that must find
        it durable (a launch, a signal); outside a batch, a no-op (every write commits)."""
        if self._batched is None or not self.conn.in_transaction:
            return
        self.conn.commit()
        self._announce()
        self._batched = []
        self.conn.execute("BEGIN IMMEDIATE")

    def _announce(self) -> None:
        changes, self._batched = self._batched or [], None
        for change in changes:
            self.notify(change)

    def notify(self, change: dict) -> None:
        """Hand ``change`` to the listeners: now, or when the current batch commits."""
        if self._batched is not None:
            self._batched.append(change)
            return
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:  # an alert must never undo or block a transition
                logging.getLogger("runyard.store").exception("state change listener failed")

    def _changed(self, run_id: int, at: float, from_state: str | None, to_state: str, reason: str) -> None:
        self.notify({"run_id": run_id, "at": at, "from_state": from_state, "to_state": to_state, "reason": reason})

    def submit(self, spec: RunSpec, *, now: float, uid: int | None, user: str | None) -> Run:
        run_id = sql.insert_run(self.conn, spec, now=now, runs_dir=self.runs_dir, uid=uid, user=user)
        run = self.get(run_id)
        assert run is not None
        self._changed(run_id, now, None, RunState.QUEUED.value, run.reason)
        return run

    def submit_many(
        self, specs: list[RunSpec], *, now: float, uid: int | None, user: str | None,
        group: Mapping[str, Any] | None = None,
    ) -> list[Run]:
        """Queue every spec in one transaction: all of them or none.

        ``group`` (``{"name": str | None, "kind": "sweep", "definition": {...}}``) is
        created in the same transaction and every run joins it.
        """
        with sql.write_transaction(self.conn):
            if group is not None:
                from engine import groups

                name = groups.create(self.conn, group.get("name"), group["kind"], group["definition"], now)
                specs = [replace(spec, group=name) for spec in specs]
            ids = [sql.insert_run(self.conn, spec, now=now, runs_dir=self.runs_dir, uid=uid, user=user) for spec in specs]
        runs = [self.get(run_id) for run_id in ids]
        for run in runs:
            self._changed(run.id, now, None, RunState.QUEUED.value, run.reason)
        return runs

    def get(self, run_id: int) -> Run | None:
        return sql.get_run(self.conn, run_id)

    def in_state(self, *states: RunState) -> list[Run]:
        """The runs in ``states``, by id. Read from the database every time (an offline
        submit or another engine version may have written), but a row equal to the one
        read last time gives back the same :class:`Run` instead of being decoded again:
        the engine reads every active run several times a tick, and decoding is what
        made a tick cost O(queue)."""
        marks = ", ".join("?" for _ in states)
        rows = self.conn.execute(
            f"SELECT * FROM runs WHERE state IN ({marks}) ORDER BY id", [s.value for s in states]
        ).fetchall()
        runs = []
        for row in rows:
            values = tuple(row)
            seen = self._decoded.get(row["id"])
            if seen is not None and seen[0] == values:
                runs.append(seen[1])
                continue
            run = Run.from_row(dict(row))
            self._decoded[run.id] = (values, run)
            runs.append(run)
        # A run kept as in one of these states that is no longer among them has left it:
        # forgotten, so what is kept never outgrows the active queue.
        found = {run.id for run in runs}
        for run_id in [run_id for run_id, (_, run) in self._decoded.items()
                       if run.state in states and run_id not in found]:
            del self._decoded[run_id]
        return runs

    def transition(
        self, run_id: int, from_state: RunState, to_state: RunState, reason: str, *, now: float, **fields: object
    ) -> bool:
        """Move ``run_id`` from ``from_state`` to ``to_state``; False if it was not in ``from_state``."""
        with sql.write_transaction(self.conn):
            if not self._update(run_id, from_state, {"state": to_state.value, "reason": reason, **fields}):
                return False
            sql.record_transition(self.conn, run_id, now, from_state.value, to_state.value, reason)
        self._changed(run_id, now, from_state.value, to_state.value, reason)
        return True

    def end_attempt(
        self,
        run: Run,
        to_state: RunState,
        reason: str,
        *,
        now: float,
        record: Mapping[str, object],
        **fields: object,
    ) -> bool:
        """End the running attempt of ``run``: the run moves to ``to_state`` (a final state,
        or back to queued for a retry) and the attempt gets its row, in one transaction, so
        a crash can neither lose the attempt's record nor retry it twice."""
        with sql.write_transaction(self.conn):
            if not self._update(run.id, RunState.RUNNING, {"state": to_state.value, "reason": reason, **fields}):
                return False
            self.conn.execute(
                """
                INSERT OR REPLACE INTO attempts (run_id, attempt, started_at, ended_at, state, reason, exit_code,
                                                 signal, failure_class, log_path, envelope, gpus, resumed_from)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    run.id, run.attempt, run.started_at, record["ended_at"], record["state"], record["reason"],
                    record["exit_code"], record["signal"], record["failure_class"], run.log_path,
                    json.dumps(run.envelope.to_dict()), json.dumps(list(run.gpus)), run.resume_from,
                ),
            )
            sql.record_transition(self.conn, run.id, now, RunState.RUNNING.value, to_state.value, reason)
        self._changed(run.id, now, RunState.RUNNING.value, to_state.value, reason)
        return True

    def attempts(self, run_id: int) -> list[dict]:
        rows = self.conn.execute(
            "SELECT attempt, started_at, ended_at, state, reason, exit_code, signal, failure_class, log_path,"
            " resumed_from FROM attempts WHERE run_id = ? ORDER BY attempt",
            (run_id,),
        ).fetchall()
        return [dict(row) for row in rows]

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

    def pauses(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, reason FROM pauses").fetchall())

    def pause(self, key: str, reason: str, now: float) -> None:
        with sql.write_transaction(self.conn):
            self.conn.execute(
                "INSERT INTO pauses (key, reason, since) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET reason = excluded.reason, since = excluded.since",
                (key, reason, now),
            )

    def unpause(self, key: str) -> bool:
        with sql.write_transaction(self.conn):
            return self.conn.execute("DELETE FROM pauses WHERE key = ?", (key,)).rowcount == 1

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
