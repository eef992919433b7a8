"""Admission with a backend that schedules itself (Slurm): hand runs over, follow them.

On one box the engine packs runs onto what is free. A cluster has its own scheduler, and
runyard must not become a second one: every queued run that runyard itself lets go (not
held, not backing off, its dependencies met, its group not paused, the engine not
draining) is handed over at once, and the cluster decides where and when.

A handed-over run stays ``queued`` with its job id (``Run.backend_job``) and the
cluster's reason for waiting until the cluster starts it; then it is ``running`` and
supervised like any other run (time limit, stop requests, retries, health).

Crash safety: ``backend_job`` is set to ``SUBMITTING`` (and flushed) before ``sbatch``
runs, and to the job id after. An engine that stops in between finds the job by its name
(unique per home, run and attempt) when it starts again, or hands the run over anew if
the cluster never got it; a run is never submitted twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine import checkpoints, shim
from engine.launcher import LaunchError, Observation
from engine.model import SUBMITTING, Run, RunState

if TYPE_CHECKING:
    from engine.engine import Engine

log = logging.getLogger("runyard.engine")

def admit(engine: Engine, now: float) -> None:
    """Hand every queued run the engine lets go to the backend; follow those handed over."""
    queued = engine.store.in_state(RunState.QUEUED)
    if follow(engine, [run for run in queued if run.backend_job], now):
        queued = engine.store.in_state(RunState.QUEUED)  # runs to hand over again, this tick
    withdraw_orphans(engine)
    fresh = [run for run in queued if not run.backend_job]
    if not fresh:
        return
    own_reasons, cancelled = engine._gate(fresh, now)
    waiting: dict[int, str] = dict(own_reasons)
    ready = []
    for run in fresh:
        if run.id in cancelled or run.id in own_reasons:
            continue
        if run.not_before is not None and run.not_before > now:
            continue  # its reason says until when
        if run.held:
            continue
        if engine.draining:
            waiting[run.id] = "waiting: draining, nothing new is handed to Slurm"
            continue
        ready.append(run)
    ready.sort(key=lambda run: (-run.priority, run.submitted_at, run.id))
    for run in ready[:MAX_PER_TICK]:
        if not hand_over(engine, run, now):
            break  # Slurm not reached, or "not now": the others would only wait as long, one by one
    engine.store.set_reasons(waiting)


MAX_PER_TICK = 50
"""Hand-overs in one tick: each is an sbatch on the engine's loop; a sweep of thousands goes
over a few ticks instead of holding every request up meanwhile."""


def withdraw_orphans(engine: Engine) -> None:
    """Cancel live jobs of this home that no run wants any more (a cancel or hold that did
    not reach Slurm, a run cancelled while its hand-over was in flight)."""
    orphans = getattr(engine.launcher, "orphans", None)
    if orphans is None or engine.launcher.error is not None:
        return

    def wanted(run_id: int, attempt: int, job_id: str) -> bool:
        run = engine.store.get(run_id)
        if run is None or run.state not in (RunState.QUEUED, RunState.RUNNING):
            return False
        return run.backend_job == job_id or (run.backend_job == SUBMITTING and run.attempt == attempt)

    for job_id in orphans(wanted):
        log.warning("Slurm job %s belongs to no run any more: cancelling it", job_id)
        try:
            engine.launcher.cancel_job(job_id)
        except Exception:  # reported, and found again at the next poll
            log.exception("cannot cancel Slurm job %s", job_id)


def hand_over(engine: Engine, run: Run, now: float) -> bool:
    """Submit one run; False when Slurm was not reached (or said "not now")."""
    from engine.engine import run_environment

    launcher = engine.launcher
    resume_from = checkpoints.latest_path(run.checkpoint_dir)
    if not engine.store.update(run.id, RunState.QUEUED, backend_job=SUBMITTING, resume_from=resume_from,
                               reason="waiting: being handed to Slurm"):
        return True
    engine.store.flush()  # the marker must be on disk before the job can exist
    run = engine.store.get(run.id) or run
    try:
        job_id, notes = launcher.hand_over(run, run_environment(run, gpus_from_backend=True))
    except LaunchError as error:
        if _transient(error):
            # The marker stays: the job may exist all the same (sbatch timed out after slurmctld
            # took it). follow() adopts it by name, or hands the run over again once a poll
            # made after this attempt shows no such job.
            engine.store.update(run.id, RunState.QUEUED, reason=f"waiting: Slurm did not take it ({error}); trying again")
            return False
        engine.store.transition(run.id, RunState.QUEUED, RunState.FAILED, f"cannot start: {error}",
                                now=now, ended_at=now, backend_job=None)
        return True
    note = f"; {'; '.join(notes)}" if notes else ""
    log.info("run %s: handed to Slurm as job %s%s", run.id, job_id, note)
    engine.store.update(run.id, RunState.QUEUED, backend_job=job_id,
                        reason=f"waiting: Slurm job {job_id} submitted{note}",
                        warning=notes[0] if notes else None)
    engine.store.flush()
    return True


def _transient(error: LaunchError) -> bool:
    from engine.slurm.launcher import SlurmUnavailable

    return isinstance(error, SlurmUnavailable)


def follow(engine: Engine, handed: list[Run], now: float) -> bool:
    """Runs the backend holds but has not been seen to start; returns whether any was
    found never to have reached it (to be handed over again)."""
    reasons: dict[int, str] = {}
    freed = False
    for run in handed:
        observation = engine.launcher.observe(run)
        if run.backend_job == SUBMITTING:
            if observation.job_id is not None:
                log.info("run %s: adopted Slurm job %s (its hand-over was interrupted)", run.id, observation.job_id)
                engine.store.update(run.id, RunState.QUEUED, backend_job=observation.job_id)
                run = engine.store.get(run.id) or run
            elif observation.state == "lost":
                # Slurm never got it (the engine stopped before sbatch ran, or sbatch failed).
                engine.store.update(run.id, RunState.QUEUED, backend_job=None,
                                    reason="waiting: Slurm never got it; handing it over again")
                freed = True
                continue
            elif observation.state != "exited":
                continue  # Slurm unreadable, or asked before the attempt: too early to tell
        if observation.state == "pending":
            why = observation.backend_reason or "queued"
            # Slurm's reason first: a narrow table cuts the end, and the job id is shown beside it.
            reasons[run.id] = f"waiting in Slurm: {why} (job {run.backend_job})"
            continue
        if observation.state == "lost":
            # Never seen to start and no exit record: it did not run. Handed over again.
            log.warning("run %s: %s before it started; handing it over again", run.id, observation.detail)
            engine.store.update(run.id, RunState.QUEUED, backend_job=None,
                                reason=f"waiting: {observation.detail} before it started; handing it over again")
            freed = True
            continue
        started = start(engine, run, observation, now)
        if started is not None and observation.state == "exited":
            engine._supervise(started, now, observation)
    engine.store.set_reasons(reasons)
    return freed


def start(engine: Engine, run: Run, observation: Observation, now: float) -> Run | None:
    """The backend started it: it is running from the backend's start time."""
    started_at = observation.started_at or now
    if not engine.store.transition(
        run.id, RunState.QUEUED, RunState.RUNNING, "running",
        now=now, started_at=started_at, node=observation.node,
    ):
        return None
    return engine.store.get(run.id)


def requeued_by_backend(engine: Engine, run: Run, observation: Observation, now: float) -> None:
    """Slurm put a running job back in its queue (runyard submits with ``--no-requeue``, but
    an admin's ``scontrol requeue`` may still): the same job, in the same folder and attempt,
    starts again later; until then the run is queued again."""
    exit_record = Path(engine.launcher.run_dir(run)) / shim.EXIT_FILE
    with contextlib.suppress(OSError):
        exit_record.unlink()  # its first start's: the second start writes its own
    engine._term_delivered.discard(run.id)
    why = observation.backend_reason or "requeued"
    engine.store.transition(
        run.id, RunState.RUNNING, RunState.QUEUED, f"waiting: Slurm requeued job {run.backend_job} ({why})",
        now=now, started_at=None, node=None, stop_request=None, stop_requested_at=None, stop_detail=None,
        kill_sent_at=None, warn_sent_at=None, health=None, health_detail=None,
    )


def settle(engine: Engine, run: Run) -> Run:
    """Bring a handed-over queued run up to date with Slurm before acting on it (cancel,
    hold): its job may have started, or ended, since the last poll."""
    if run.state is not RunState.QUEUED or not run.backend_job or not engine.schedules_itself:
        return run
    engine.launcher.refresh(force=True)
    follow(engine, [run], engine.clock())
    return engine.store.get(run.id) or run


STARTS_NOW_S = 5.0
"""Slurm estimates in whole seconds, and a submit takes one scheduling pass."""


def preview(engine: Engine, spec) -> tuple[str, str]:
    """``submit --preview`` on Slurm: its own estimate (``sbatch --test-only``)."""
    expected = engine.launcher.expected_start(spec.envelope, spec.retry, spec.cwd)
    if expected is None:
        return "waits", "handed to Slurm at once; Slurm gave no estimate of its start"
    at, nodes = expected
    if at <= engine.clock() + STARTS_NOW_S:
        return "starts", f"Slurm would start it now on {nodes}"
    when = time.strftime("%H:%M:%S", time.localtime(at))
    return "waits", f"handed to Slurm at once; Slurm expects to start it at {when} on {nodes}"


def withdraw(engine: Engine, run: Run) -> None:
    """Take a handed-over run back from the backend (cancel, hold)."""
    withdraw_job = getattr(engine.launcher, "withdraw", None)
    if withdraw_job is None or not run.backend_job:
        return
    try:
        withdraw_job(run)
    except Exception:  # the run's record is already right; Slurm is told best-effort
        log.exception("run %s: cannot withdraw Slurm job %s", run.id, run.backend_job)
