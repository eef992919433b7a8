"""A run's envelope and retry policy as ``sbatch`` options. Pure.

One vocabulary for the user, Slurm's on the wire:

==================  ==========================================================
``--cpus 2.5``      ``--cpus-per-task=3`` (Slurm allocates whole CPUs)
``--mem 16G``       ``--mem=16384M``
``--gpus 2``        ``--gres=gpu:2``
``--gpu-mem 40G``   a gres type or a node feature the site maps to GPU memory
                    (``[slurm] gpu_types``); without one it cannot be honoured
                    and the run gets whole GPUs (said in a note)
``--disk 10G``      ``--tmp=10240M`` (the node's scratch space)
``--time 90s``      ``--time=N``: the limit, the grace and a minute, in whole
                    minutes (runyard stops the run at the exact limit itself;
                    Slurm's is the backstop for when runyard's daemon is down)
``--res lic=1``     ``--licenses=lic:1``
warning signal      ``--signal=B:USR1@N``, timed against Slurm's limit (the job
                    script, runyard's shim, passes it on to the command)
``--requeue``       ``--no-requeue`` always: runyard requeues a run as a new job
                    that resumes from its latest checkpoint; a job Slurm requeued
                    would restart with its first start's environment. A failed
                    node reaches runyard, whose retry policy decides.
==================  ==========================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from engine.envelope import Envelope
from engine.retry import RetryPolicy
from engine.units import format_size

MIB = 1 << 20


@dataclass(frozen=True)
class GpuTypes:
    """The site's GPU kinds by memory per GPU: ``name -> bytes``. ``as_feature`` asks for
    the kind as a node feature (``--constraint``), else as a gres type (``gpu:a100:2``)."""

    memory: Mapping[str, int]
    as_feature: bool = False

    def smallest_fitting(self, gpu_mem_bytes: int) -> str | None:
        fitting = [(size, name) for name, size in self.memory.items() if size >= gpu_mem_bytes]
        return min(fitting)[1] if fitting else None


NO_GPU_TYPES = GpuTypes({})


@dataclass(frozen=True)
class JobRequest:
    options: list[str]
    notes: list[str]
    """What could not be said to Slurm exactly, one line each, for the run's reason/log."""


def job_name(run_id: int, attempt: int, home_tag: str) -> str:
    """Unique per runyard home, run and attempt: how a restarted engine finds a job it
    submitted but did not get to record."""
    return f"runyard-{run_id}.{attempt}-{home_tag}"


def job_owner(name: str, home_tag: str) -> tuple[int, int] | None:
    """``(run id, attempt)`` of a job named by :func:`job_name` for this home, else ``None``."""
    prefix, suffix = "runyard-", f"-{home_tag}"
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    run_id, _, attempt = name[len(prefix):-len(suffix)].partition(".")
    return (int(run_id), int(attempt)) if run_id.isdigit() and attempt.isdigit() else None


def minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))


BACKSTOP_MARGIN_S = 60.0
"""Slurm's limit runs this much past runyard's limit and grace: runyard stops the run at its
exact limit (TERM, grace, KILL), Slurm only when runyard could not (its daemon down)."""


def sbatch_options(
    envelope: Envelope,
    retry: RetryPolicy,
    *,
    name: str,
    log_path: str,
    cwd: str,
    partition: str | None = None,
    gpu_types: GpuTypes = NO_GPU_TYPES,
    grace_s: float = 0.0,
) -> JobRequest:
    options = [
        f"--job-name={name}",
        f"--output={log_path}",
        "--open-mode=append",
        f"--chdir={cwd}",
        "--export=ALL",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={math.ceil(envelope.cpus)}",
    ]
    if envelope.mem_bytes:  # 0: no memory asked; Slurm's default per CPU applies
        options.append(f"--mem={math.ceil(envelope.mem_bytes / MIB)}M")
    notes: list[str] = []
    if partition:
        options.append(f"--partition={partition}")
    if envelope.cpus != math.ceil(envelope.cpus):
        notes.append(f"--cpus {envelope.cpus:g} asks Slurm for {math.ceil(envelope.cpus)} (whole CPUs only)")
    if envelope.gpus:
        gres = f"gpu:{envelope.gpus}"
        if envelope.gpu_mem_bytes is not None:
            kind = gpu_types.smallest_fitting(envelope.gpu_mem_bytes)
            if kind is None:
                notes.append(
                    f"--gpu-mem {format_size(envelope.gpu_mem_bytes)}: "
                    + ("no GPU kind in [slurm] gpu_types has that much memory"
                       if gpu_types.memory else "this cluster maps no GPU kinds to memory ([slurm] gpu_types)")
                    + "; Slurm gives whole GPUs of any kind"
                )
            elif gpu_types.as_feature:
                options.append(f"--constraint={kind}")
            else:
                gres = f"gpu:{kind}:{envelope.gpus}"
        options.append(f"--gres={gres}")
    if envelope.disk_bytes:
        options.append(f"--tmp={math.ceil(envelope.disk_bytes / MIB)}M")
    backstop_s = None
    if envelope.time_limit_s is not None:
        backstop_s = minutes(envelope.time_limit_s + grace_s + BACKSTOP_MARGIN_S) * 60
        options.append(f"--time={backstop_s // 60}")
    if envelope.resources:
        options.append("--licenses=" + ",".join(f"{res}:{count}" for res, count in envelope.resources))
    if retry.warn_signal and retry.warn_before_s:
        # Timed against Slurm's later limit, so it lands about when runyard's own warning
        # does: the one a run gets when runyard's daemon is down.
        before = retry.warn_before_s + (backstop_s - envelope.time_limit_s if backstop_s else 0)
        signame = retry.warn_signal.removeprefix("SIG")
        options.append(f"--signal=B:{signame}@{min(65535, math.ceil(before))}")
    # runyard's --requeue (and every retry) is a new job that resumes from the latest
    # checkpoint; a job Slurm requeues would rerun with the environment of its first start.
    options.append("--no-requeue")
    return JobRequest(options, notes)
