"""What Slurm says about jobs and nodes, read from its own machine-readable output. Pure.

``squeue --json`` (Slurm 21.08 and later) is read where the installed Slurm has it; its
shape moved between releases (a state became a list, numbers became ``{"set", "number"}``
objects), so every field is read through a helper that takes both. Older Slurm gets the
fixed format :data:`SQUEUE_FORMAT`, which carries no exit code: the shim's ``exit.json``
in the run folder (on the shared filesystem) is the exit record there, as it is anyway
once Slurm has forgotten a job (``MinJobAge``, five minutes by default).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PENDING_STATES = frozenset({
    "PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SPECIAL_EXIT",
})
RUNNING_STATES = frozenset({"RUNNING", "SUSPENDED", "COMPLETING", "SIGNALING", "STAGE_OUT", "STOPPED"})
"""COMPLETING is kept running: the script ended but Slurm is still cleaning up its node,
and the exit record (``exit.json``) tells the end as soon as it is written."""

ENDED_BY = {
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "OUT_OF_MEMORY": "oom",
    "CANCELLED": "cancelled",
    "NODE_FAIL": "node_fail",
    "BOOT_FAIL": "node_fail",
    "PREEMPTED": "preempted",
}
"""Slurm's end states that say more than an exit code, as the engine's ``ended_by``."""

SQUEUE_FORMAT = "%i|%j|%T|%r|%N|%S|%e"
"""id, name, state, reason, nodes, start, end: for a Slurm without ``--json``."""

NO_TIME = {"N/A", "Unknown", "None", ""}


@dataclass(frozen=True)
class Job:
    job_id: str
    name: str
    state: str
    """Slurm's base state, upper case: ``PENDING``, ``RUNNING``, ``TIMEOUT``..."""
    reason: str = ""
    """Why it pends (``Resources``, ``Priority``, ``ReqNodeNotAvail``...); ``None`` is ``""``."""
    node: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    """``-N`` for a death by signal N (``Popen``'s convention), ``None`` when unknown."""
    restarts: int = 0

    @property
    def phase(self) -> str:
        """``pending``, ``running`` or ``ended``."""
        if self.state in PENDING_STATES:
            return "pending"
        if self.state in RUNNING_STATES:
            return "running"
        return "ended"

    @property
    def ended_by(self) -> str | None:
        return ENDED_BY.get(self.state)

    @property
    def signal(self) -> str | None:
        if self.exit_code is not None and self.exit_code < 0:
            try:
                return signal.Signals(-self.exit_code).name
            except ValueError:
                return f"signal {-self.exit_code}"
        return None


class SlurmSaysError(ValueError):
    """Slurm's JSON carried errors (22.05 answers exit status 0 and an empty job list when
    slurmctld cannot be reached): the answer must not be read as "no jobs"."""


def _records(text: str, tool: str, key: str) -> list[dict[str, Any]]:
    """The ``key`` list of a tool's JSON answer.

    Raises:
        SlurmSaysError: the answer carries errors.
        ValueError: the text is not that JSON.
    """
    try:
        data = json.loads(text)
        records = data[key]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{tool} --json did not answer with a list of {key}") from None
    errors = data.get("errors") or []
    if errors:
        first = errors[0]
        why = first.get("error") or first.get("description") or str(first) if isinstance(first, dict) else str(first)
        raise SlurmSaysError(f"{tool}: {why}")
    return records


def _number(value: Any) -> float | None:
    """A number as 22.05 writes it (plain) or as 23.02+ does (``{"set": .., "number": ..}``)."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _time(value: Any) -> float | None:
    number = _number(value)
    return float(number) if number else None


def _state(value: Any) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "").split()[0].upper() if value else ""


def _exit_code(value: Any) -> int | None:
    """22.05: a wait status (``7 << 8``; a signal in the low bits). 23.02+: an object."""
    if isinstance(value, dict):
        status = value.get("status") or []
        sig = _number((value.get("signal") or {}).get("id"))
        if "SIGNALED" in status and sig:
            return -int(sig)
        code = _number(value.get("return_code"))
        return int(code) if code is not None else None
    number = _number(value)
    if number is None:
        return None
    number = int(number)
    if number & 0x7F:
        return -(number & 0x7F)
    return number >> 8


def jobs_from_json(text: str) -> dict[str, Job]:
    """``squeue --json`` as ``job id -> Job``.

    Raises:
        ValueError: the text is not squeue's JSON.
    """
    jobs = {}
    records = _records(text, "squeue", "jobs")
    for record in records:
        state = _state(record.get("job_state"))
        job = Job(
            job_id=str(record.get("job_id")),
            name=str(record.get("name") or ""),
            state=state,
            reason="" if record.get("state_reason") in (None, "None") else str(record.get("state_reason")),
            node=record.get("nodes") or record.get("batch_host") or None,
            started_at=_time(record.get("start_time")) if state not in PENDING_STATES else None,
            ended_at=_time(record.get("end_time")) if state not in PENDING_STATES | RUNNING_STATES else None,
            exit_code=_exit_code(record.get("exit_code")) if state not in PENDING_STATES | RUNNING_STATES else None,
            restarts=int(_number(record.get("restart_cnt")) or 0),
        )
        jobs[job.job_id] = job
    return jobs


def _parse_clock(text: str) -> float | None:
    """Slurm's ``2026-12-03T07:00:59`` (local time) as Unix seconds."""
    text = text.strip()
    if text in NO_TIME:
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _rows(text: str) -> Iterator[tuple[str, str, list[str]]]:
    """``id|name|five more`` lines as ``(id, name, the five)``: a job name may hold ``|``."""
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) >= 7:
            yield fields[0].strip(), "|".join(fields[1:-5]), fields[-5:]


def jobs_from_table(text: str) -> dict[str, Job]:
    """``squeue -h -o SQUEUE_FORMAT`` as ``job id -> Job``."""
    jobs = {}
    for job_id, name, (state, reason, node, start, end) in _rows(text):
        state = _state(state)
        jobs[job_id] = Job(
            job_id=job_id, name=name, state=state,
            reason="" if reason in ("None", "") else reason,
            node=node or None,
            started_at=_parse_clock(start) if state not in PENDING_STATES else None,
            ended_at=_parse_clock(end) if state not in PENDING_STATES | RUNNING_STATES else None,
        )
    return jobs


SACCT_FIELDS = "JobID,JobName,State,ExitCode,Start,End,NodeList"
"""``sacct -X -n -P -o SACCT_FIELDS``: a format Slurm has kept for many releases."""


def jobs_from_sacct(text: str) -> dict[str, Job]:
    """``sacct -X -n -P -o SACCT_FIELDS`` as ``job id -> Job``; ``ExitCode`` is ``code:signal``."""
    jobs = {}
    for job_id, name, (state, exit_code, start, end, node) in _rows(text):
        code, _, sig = exit_code.partition(":")
        number = -int(sig) if sig.isdigit() and int(sig) else (int(code) if code.isdigit() else None)
        state = _state(state)
        jobs[job_id] = Job(
            job_id=job_id, name=name, state=state, node=None if node in ("", "None assigned") else node,
            started_at=_parse_clock(start), ended_at=_parse_clock(end),
            exit_code=number if state not in PENDING_STATES | RUNNING_STATES else None,
        )
    return jobs


EXPECTED_START = re.compile(r" to start at (\S+) using .* on nodes (\S+)")


def expected_start(text: str) -> tuple[float, str] | None:
    """``sbatch --test-only``'s estimate as ``(Unix time, nodes)``."""
    found = EXPECTED_START.search(text)
    if found is None:
        return None
    at = _parse_clock(found.group(1))
    return (at, found.group(2)) if at is not None else None


NEVER = (
    "requested node configuration is not available", "invalid partition", "invalid account", "invalid qos",
    "invalid generic resource", "memory specification can not be satisfied", "invalid feature specification",
    "more processors requested than permitted", "requested time limit is invalid", "node count specification invalid",
    "invalid license", "requested partition configuration not available", "invalid node name specified",
)
"""Slurm's words for a job no node of the cluster could ever run, whatever else runs."""
LIMIT = ("submit limit", "maxsubmit", "reached the limit", "job violates accounting/qos policy")
"""Slurm's words for "not now": the user or account has as many jobs queued as it may."""


def refusal_kind(message: str) -> str:
    """``never`` (no node could ever run it), ``limit`` (not now: a submit limit) or
    ``other`` (Slurm not reached, or a reason not known to be final: tried again later)."""
    lowered = message.lower()
    if any(words in lowered for words in LIMIT):
        return "limit"
    if any(words in lowered for words in NEVER):
        return "never"
    return "other"


def first_error_line(stderr: str, fallback: str) -> str:
    """The line of a Slurm tool's error output worth showing, without its ``sbatch: error:`` prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # sbatch says "Batch job submission failed: <why>" last; --test-only says "allocation failure: <why>".
    for index in range(len(lines) - 1, -1, -1):
        for marker in ("submission failed:", "allocation failure:"):
            if marker in lines[index]:
                why = lines[index].split(marker, 1)[1].strip()
                if why.lower().startswith("unspecified error") and index > 0:
                    # A site's job_submit plugin says why on the line before.
                    return re.sub(r"^\w+: (error|fatal): ", "", lines[index - 1])
                return why
    for line in lines:
        cleaned = re.sub(r"^\w+: (error|fatal): ", "", line)
        if cleaned:
            return cleaned
    return fallback


# ------------------------------------------------------------------------- sinfo

GRES_GPUS = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


def gpu_count(gres: Any) -> int:
    """GPUs in a gres string: ``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:1(IDX:0),shard:2``."""
    if not isinstance(gres, str):
        return 0
    return sum(int(count) for count in GRES_GPUS.findall(gres))


def nodes_from_json(text: str) -> list[dict[str, Any]]:
    """``sinfo --json`` as the node rows of the ``status`` op's ``cluster``.

    Raises:
        ValueError: not sinfo's JSON.
    """
    nodes = []
    records = _records(text, "sinfo", "nodes")
    for record in records:
        state = record.get("state")
        if isinstance(state, list):
            state = " ".join(state)
        nodes.append({
            "name": record.get("name") or record.get("hostname") or "?",
            "state": str(state or "unknown").lower(),
            "partitions": list(record.get("partitions") or []),
            "cpus_total": int(_number(record.get("cpus")) or 0),
            "cpus_alloc": int(_number(record.get("alloc_cpus")) or 0),
            "mem_total_bytes": int(_number(record.get("real_memory")) or 0) << 20,
            "mem_alloc_bytes": int(_number(record.get("alloc_memory")) or 0) << 20,
            "gpus_total": gpu_count(record.get("gres")),
            "gpus_used": gpu_count(record.get("gres_used")),
            "reason": record.get("reason") or "",
        })
    return nodes


SINFO_NODE_FORMAT = "%N|%T|%C|%m|%G|%P|%E"
"""node, state, CPUs (allocated/idle/other/total), memory (MB), gres, partition, reason."""

SINFO_PARTITION_FORMAT = "%P|%a|%l|%D|%C|%G"
"""partition (``*``: the default), availability, time limit, nodes, CPUs, gres."""


def _cpu_counts(text: str) -> tuple[int, int]:
    """``A/I/O/T`` as ``(allocated, total)``."""
    parts = text.split("/")
    try:
        return int(parts[0]), int(parts[3])
    except (IndexError, ValueError):
        return 0, 0


def nodes_from_table(text: str) -> list[dict[str, Any]]:
    """``sinfo -h -N -o SINFO_NODE_FORMAT``: one line per node and partition, merged."""
    nodes: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 7:
            continue
        name, state, cpus, memory, gres, partition = fields[:6]
        reason = "|".join(fields[6:])
        alloc, total = _cpu_counts(cpus)
        node = nodes.setdefault(name, {
            "name": name, "state": state.lower(), "partitions": [], "cpus_total": total, "cpus_alloc": alloc,
            "mem_total_bytes": int(memory) << 20 if memory.isdigit() else 0, "mem_alloc_bytes": None,
            "gpus_total": gpu_count(gres), "gpus_used": None, "reason": "" if reason == "none" else reason,
        })
        node["partitions"].append(partition.rstrip("*"))
    return list(nodes.values())


def partitions_from_table(text: str, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``sinfo -h -o SINFO_PARTITION_FORMAT`` (lines of one partition merged), with GPU use
    summed from ``nodes``."""
    partitions: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 6:
            continue
        raw_name, availability, limit, count, cpus, gres = fields[:6]
        name = raw_name.rstrip("*")
        alloc, total = _cpu_counts(cpus)
        partition = partitions.setdefault(name, {
            "name": name, "state": availability.lower(), "default": raw_name.endswith("*"),
            "nodes": 0, "time_limit": limit.lower(), "cpus_alloc": 0, "cpus_idle": 0, "cpus_total": 0,
            "gpus_total": 0, "gpus_used": 0,
        })
        partition["nodes"] += int(count) if count.isdigit() else 0
        partition["cpus_alloc"] += alloc
        partition["cpus_total"] += total
        partition["cpus_idle"] = partition["cpus_total"] - partition["cpus_alloc"]
    for partition in partitions.values():
        members = [node for node in nodes if partition["name"] in node["partitions"]]
        partition["gpus_total"] = sum(node["gpus_total"] for node in members)
        partition["gpus_used"] = sum(node["gpus_used"] or 0 for node in members)
    return list(partitions.values())
