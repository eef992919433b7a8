"""Run states and the run record as clients see it. Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from engine.envelope import DEFAULT_GRACE_S, Envelope
from engine.retry import RetryPolicy


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


SUBMITTING = "submitting"
"""``Run.backend_job`` while the run is being handed to the cluster backend."""

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
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    checkpoint_dir: str | None = None
    """Where the run keeps checkpoints; default: ``checkpoints`` in its run folder."""
    depends_on: tuple[tuple[int, str], ...] = ()
    """``(run id, "ok" | "any")``: start only after these ended (successfully, for ``ok``)."""
    start_at: float | None = None
    """``--at``: not before this Unix time."""
    group: str | None = None
    health: dict[str, Any] | None = None
    """``engine.health.HealthPolicy.to_dict()``, when any check was asked for."""
    schedule_id: int | None = None
    seed: int | None = None
    params: dict[str, str] | None = None
    """A sweep run's parameter values."""
    provenance: dict[str, Any] | None = None
    """``engine.provenance.capture()``; written once with the run, never changed."""


ON_OVERRUN_CHOICES = ("default", "warn", "kill")


class JsonObject(Mapping):
    """A JSON object column, decoded the first time it is read.

    A run's environment is most of its row (the submitter's whole environment, kilobytes
    of JSON), and the engine reads every queued row each tick and ``ls`` reads hundreds of
    runs, almost always without looking at it: only a launch, a health probe and ``show``
    do.
    """

    __slots__ = ("_text", "_data")

    def __init__(self, text: str | None) -> None:
        self._text = text
        self._data: dict[str, Any] | None = None if text else {}

    def _decoded(self) -> dict[str, Any]:
        data = self._data
        if data is None:
            # The text is kept: two threads decoding at once then both succeed.
            data = self._data = json.loads(self._text)
        return data

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return repr(self._decoded())


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
    env: Mapping[str, str]
    """Decoded on first use (:class:`JsonObject`); ``dict(run.env)`` for a copy."""
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
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    attempt: int = 1
    retries_used: int = 0
    not_before: float | None = None
    """While queued in a retry backoff: not admitted before this Unix time."""
    failure_class: str | None = None
    """How the last attempt ended (``engine.retry``'s classes); ``None`` if it succeeded."""
    checkpoint_dir: str | None = None
    warn_sent_at: float | None = None
    resume_from: str | None = None
    """The checkpoint the current attempt was started from."""
    depends_on: tuple[tuple[int, str], ...] = ()
    group: str | None = None
    health: str | None = None
    """``starting``, ``healthy``, ``unhealthy`` or ``stalled``; ``None`` when nothing checks it."""
    health_detail: str | None = None
    health_policy: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    """The last heartbeat: step, total, metrics, at; and the ETA the engine derived."""
    schedule_id: int | None = None
    seed: int | None = None
    params: dict[str, str] | None = None
    metrics: dict[str, Any] | None = None
    """Final metrics the run reported (``runyard.report``)."""
    backend_job: str | None = None
    """Its job in a cluster backend (Slurm's job id); ``SUBMITTING`` while being handed over."""
    node: str | None = None
    """Where the cluster backend runs (or ran) it."""

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
            env=JsonObject(row["env"]),
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
            retry=RetryPolicy.from_dict(json.loads(row["retry_policy"]) if row.get("retry_policy") else None),
            attempt=row.get("attempt") or 1,
            retries_used=row.get("retries_used") or 0,
            not_before=row.get("not_before"),
            failure_class=row.get("failure_class"),
            checkpoint_dir=row.get("checkpoint_dir"),
            warn_sent_at=row.get("warn_sent_at"),
            resume_from=row.get("resume_from"),
            depends_on=tuple((int(dep[0]), str(dep[1])) for dep in json.loads(row["depends_on"]))
            if row.get("depends_on") else (),
            group=row.get("run_group"),
            health=row.get("health"),
            health_detail=row.get("health_detail"),
            health_policy=json.loads(row["health_policy"]) if row.get("health_policy") else None,
            progress=json.loads(row["progress"]) if row.get("progress") else None,
            schedule_id=row.get("schedule_id"),
            seed=row.get("seed"),
            params=json.loads(row["params"]) if row.get("params") else None,
            metrics=json.loads(row["metrics"]) if row.get("metrics") else None,
            backend_job=row.get("backend_job"),
            node=row.get("node"),
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
            "attempt": self.attempt,
            "attempts": self.attempt,
            "retries": self.retry.retries,
            "retries_used": self.retries_used,
            "retry_policy": self.retry.to_dict(),
            "not_before": self.not_before,
            "failure_class": self.failure_class,
            "checkpoint_dir": self.checkpoint_dir,
            "resume_from": self.resume_from,
            "depends_on": [list(dep) for dep in self.depends_on],
            "group": self.group,
            "health": self.health,
            "health_detail": self.health_detail,
            "progress": self.progress,
            "eta": (self.progress or {}).get("eta"),
            "metrics": self.metrics or (self.progress or {}).get("metrics"),
            "schedule_id": self.schedule_id,
            "seed": self.seed,
            "params": self.params,
            "backend_job": None if self.backend_job == SUBMITTING else self.backend_job,
            "node": self.node,
        }
        if with_env:
            data["env"] = dict(self.env)
        return data
