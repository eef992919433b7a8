"""Run states and the run record as clients see it. Pure: no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from engine.envelope import DEFAULT_GRACE_S, Envelope


class RunState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT})


@dataclass(frozen=True)
class RunSpec:
    """What a submitter asks for; everything else about a run is decided by the engine."""

    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    """The run's environment: the submitter's, with its overrides applied."""
    name: str | None = None
    priority: int = 0
    envelope: Envelope = field(default_factory=Envelope)
    grace_s: float = DEFAULT_GRACE_S
    held: bool = False
    on_overrun: str = "default"
    """What to do when the run uses more than its envelope: ``default`` (memory: stop;
    GPU memory: warn), ``warn`` (never stop) or ``kill`` (stop on either)."""


ON_OVERRUN_CHOICES = ("default", "warn", "kill")


@dataclass(frozen=True)
class Run:
    """One row of the ``runs`` table, decoded."""

    id: int
    name: str
    state: RunState
    reason: str
    priority: int
    held: bool
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    envelope: Envelope
    grace_s: float
    gpus: tuple[int, ...]
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    signal: str | None
    pid: int | None
    pid_started_at: float | None
    shim_pid: int | None
    shim_started_at: float | None
    log_path: str | None
    run_dir: str | None
    stop_request: str | None
    stop_requested_at: float | None
    kill_sent_at: float | None
    uid: int | None
    user: str | None
    on_overrun: str = "default"
    stop_detail: str | None = None
    cores: tuple[int, ...] = ()
    warning: str | None = None

    @property
    def deadline(self) -> float | None:
        """Unix time at which the time limit is reached, once started."""
        if self.started_at is None or self.envelope.time_limit_s is None:
            return None
        return self.started_at + self.envelope.time_limit_s

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Run:
        return cls(
            id=row["id"],
            name=row["name"],
            state=RunState(row["state"]),
            reason=row["reason"] or "",
            priority=row["priority"],
            held=bool(row["held"]),
            argv=tuple(json.loads(row["argv"])),
            cwd=row["cwd"],
            env=json.loads(row["env"]) if row["env"] else {},
            envelope=Envelope.from_dict(json.loads(row["envelope"])),
            grace_s=row["grace_s"],
            gpus=tuple(json.loads(row["gpus"])) if row["gpus"] else (),
            submitted_at=row["submitted_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            exit_code=row["exit_code"],
            signal=row["signal"],
            pid=row["pid"],
            pid_started_at=row["pid_started_at"],
            shim_pid=row["shim_pid"],
            shim_started_at=row["shim_started_at"],
            log_path=row["log_path"],
            run_dir=row["run_dir"],
            stop_request=row["stop_request"],
            stop_requested_at=row["stop_requested_at"],
            kill_sent_at=row["kill_sent_at"],
            uid=row["uid"],
            user=row["user"],
            on_overrun=row.get("on_overrun") or "default",
            stop_detail=row.get("stop_detail"),
            cores=tuple(json.loads(row["cores"])) if row.get("cores") else (),
            warning=row.get("warning"),
        )

    def to_json(self, *, with_env: bool = False) -> dict[str, Any]:
        """The CLI's ``--json`` contract: scripts rely on these keys."""
        data = {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "priority": self.priority,
            "held": self.held,
            "argv": list(self.argv),
            "cwd": self.cwd,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "pid": self.pid,
            "gpus": list(self.gpus),
            "envelope": self.envelope.to_dict(),
            "grace_s": self.grace_s,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "deadline": self.deadline,
            "log_path": self.log_path,
            "user": self.user,
            "uid": self.uid,
            "on_overrun": self.on_overrun,
            "cores": list(self.cores),
            "warning": self.warning,
        }
        if with_env:
            data["env"] = dict(self.env)
        return data
