"""The engine's launcher for Slurm: a run is one batch job whose script is runyard's shim.

The job script is the shim (:mod:`engine.shim`) run by the same Python, with the run's
argv passed to it as arguments: Slurm hands them over as they are, no shell ever parses
them. The shim writes ``shim.json`` and ``exit.json`` into the run folder as on one box;
with runyard installed at the same path on every node and the run folder on a shared
filesystem (what Slurm sites have), the exit record survives Slurm forgetting the job. The
shim passes the signals Slurm and runyard send the job script on to the command.

The engine polls: :meth:`SlurmLauncher.refresh` asks ``squeue`` once per poll interval for
every job, and :meth:`observe` answers from that snapshot.
"""

from __future__ import annotations

import signal as signals
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine import cgroups, shim
from engine.envelope import Envelope
from engine.launcher import SHIM_PATH, LaunchError, Observation, read_record
from engine.model import SUBMITTING, Run
from engine.retry import RetryPolicy
from engine.slurm import mapping
from engine.slurm.commands import SlurmError, SlurmTools
from engine.slurm.jobs import Job, refusal_kind

FORWARDED = "TERM,INT,HUP,USR1,USR2"
POLL_INTERVAL_S = 2.0
CLUSTER_TTL_S = 5.0
REFUSAL_TTL_S = 30.0
VANISHED = "Slurm no longer knows job {job} and it left no exit record"
EXIT_SETTLE_S = 30.0
"""How long an exit record may wait for Slurm to say how the job ended (TIMEOUT,
OUT_OF_MEMORY...: more than the exit status tells) before it is taken alone."""


class SlurmUnavailable(LaunchError):
    """Not a refusal: Slurm was not reached, or said "not now" (a submit limit). The run
    stays queued and is tried again; no other run is handed over in this tick."""


class SlurmLauncher:
    schedules_itself = True
    """Slurm decides when and where runs start: the engine hands every eligible run over."""
    shared = False

    def __init__(
        self,
        runs_dir: str | Path,
        *,
        partition: str | None = None,
        gpu_types: mapping.GpuTypes = mapping.NO_GPU_TYPES,
        tools: SlurmTools | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.partition = partition
        self.gpu_types = gpu_types
        self.tools = tools or SlurmTools()
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.home_tag = cgroups.home_tag(self.runs_dir)
        self.script = self._write_script()
        self.jobs: dict[str, Job] = {}
        self.polled_at: float | None = None
        """When Slurm last answered a poll."""
        self._asked_at: float | None = None
        self.error: str | None = None
        """Why the last poll failed; while set, nothing is concluded about any job."""
        self._handed_at: dict[str, float] = {}
        self._cluster: dict[str, Any] | None = None
        self._refusals: dict[tuple[str, ...], tuple[float, str | None]] = {}
        self._cluster_asked_at = 0.0

    def _write_script(self) -> Path:
        # sbatch wants a file that starts with "#!"; it sends its text to the node, so
        # the interpreter and the shim must be at these paths there too.
        script = self.runs_dir.parent / "slurm" / "job.py"
        text = (
            f"#!{sys.executable} -IS\n"
            "# runyard's Slurm job: the shim starts the run's command, passes signals on, records its exit.\n"
            "import sys\n"
            f"sys.path.append({str(SHIM_PATH.parent)!r})\n"
            "from shim import main\n"
            "sys.exit(main())\n"
        )
        script.parent.mkdir(parents=True, exist_ok=True)
        if not script.exists() or script.read_text() != text:
            script.write_text(text)
        return script

    # -- what a run asks of Slurm ----------------------------------------------------

    def request(self, run: Run) -> mapping.JobRequest:
        return self._request(run.envelope, run.retry, mapping.job_name(run.id, run.attempt, self.home_tag),
                             str(self._log_path(run)), run.cwd, run.grace_s)

    def _request(self, envelope: Envelope, retry: RetryPolicy, name: str, log: str, cwd: str,
                 grace_s: float = 0.0) -> mapping.JobRequest:
        return mapping.sbatch_options(envelope, retry, name=name, log_path=log, cwd=cwd,
                                      partition=self.partition, gpu_types=self.gpu_types, grace_s=grace_s)

    def refusal(self, envelope: Envelope, retry: RetryPolicy, cwd: str) -> str | None:
        """Why Slurm would never run such a run (no node could ever hold it), or ``None``.

        A sweep's runs mostly ask alike: one answer serves the same options for a while."""
        request = self._request(envelope, retry, "runyard-check", "/dev/null", cwd)
        key, now = tuple(request.options), self.clock()
        known = self._refusals.get(key)
        if known is not None and now - known[0] < REFUSAL_TTL_S:
            return known[1]
        try:
            answer = self.tools.refusal(request.options, str(self.script))
        except SlurmError:
            return None  # unreachable now is not "never": the run waits for Slurm instead
        if answer is not None and refusal_kind(answer) != "never":
            return None  # "cannot reach slurmctld", a submit limit: not about this run, and not cached
        if len(self._refusals) > 256:
            self._refusals.clear()
        self._refusals[key] = (now, answer)
        return answer

    def expected_start(self, envelope: Envelope, retry: RetryPolicy, cwd: str) -> tuple[float, str] | None:
        request = self._request(envelope, retry, "runyard-check", "/dev/null", cwd)
        try:
            return self.tools.expected_start(request.options, str(self.script))
        except SlurmError:
            return None

    # -- hand-over -------------------------------------------------------------------

    def run_dir(self, run: Run) -> Path:
        return Path(run.run_dir) if run.run_dir else self.runs_dir / str(run.id)

    def _log_path(self, run: Run) -> Path:
        return Path(run.log_path) if run.log_path else self.run_dir(run) / "output.log"

    def hand_over(self, run: Run, env: Mapping[str, str]) -> tuple[str, list[str]]:
        """``sbatch`` the run; returns its job id and what Slurm could not be told exactly.

        Raises:
            LaunchError: Slurm refused the job (the run fails with the reason).
            SlurmUnavailable: Slurm could not be reached (the run stays queued).
        """
        if not run.argv:
            raise LaunchError("the run has no command to start")
        run_dir = self.run_dir(run)
        try:
            run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            for name in (shim.SHIM_FILE, shim.EXIT_FILE):
                (run_dir / name).unlink(missing_ok=True)
            self._log_path(run).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise LaunchError(f"cannot prepare the run directory {run_dir}: {error.strerror}") from None
        request = self.request(run)
        args = [str(run_dir), "--forward", FORWARDED, "--", *run.argv]
        # Until a poll after this instant, not finding the job proves nothing: sbatch may
        # have got it to slurmctld even if it failed to say so (a timeout).
        self._handed_at[_submitting_key(run)] = self.clock()
        try:
            job_id = self.tools.submit(request.options, str(self.script), args, env)
        except SlurmError as error:
            text = str(error).removeprefix("sbatch: ")
            if refusal_kind(text) == "never":
                raise LaunchError(f"refused by Slurm: {text}") from None
            raise SlurmUnavailable(text) from None
        self._handed_at[job_id] = self.clock()
        return job_id, request.notes

    def withdraw(self, run: Run) -> None:
        """Take a job out of Slurm (cancel, hold).

        Raises:
            SlurmError: not reached; :meth:`orphans` finds the job again later."""
        if run.backend_job and run.backend_job != SUBMITTING:
            self.tools.cancel(run.backend_job)

    def orphans(self, wanted: Callable[[int, int, str], bool]) -> list[str]:
        """Live jobs of this home that ``wanted(run_id, attempt, job_id)`` disowns: a cancel
        that did not reach Slurm, a job of a run cancelled or held while being handed over."""
        found = []
        for job in self.jobs.values():
            owner = mapping.job_owner(job.name, self.home_tag)
            if owner is not None and job.phase != "ended" and not wanted(*owner, job.job_id):
                found.append(job.job_id)
        return found

    def cancel_job(self, job_id: str) -> None:
        self.tools.cancel(job_id)

    # -- observing -------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Poll Slurm once per interval (every tick would hammer slurmctld on a busy site)."""
        now = self.clock()
        if not force and self._asked_at is not None and now - self._asked_at < self.poll_interval_s:
            return
        self._asked_at = now
        try:
            self.jobs = self.tools.queue()
            self.error = None
        except SlurmError as error:
            self.error = str(error)
            return
        self.polled_at = now
        for key in [key for key, at in self._handed_at.items() if at < now - 3600]:
            del self._handed_at[key]  # long since seen (or not) by a poll

    def find(self, run: Run) -> Job | None:
        if run.backend_job and run.backend_job != SUBMITTING:
            return self.jobs.get(run.backend_job)
        name = mapping.job_name(run.id, run.attempt, self.home_tag)
        found = [job for job in self.jobs.values() if job.name == name]
        # An ended job of that name is this hand-over's only if it left an exit record (cleared
        # before each sbatch); else it is one withdrawn earlier (held, then released).
        ran = (self.run_dir(run) / shim.EXIT_FILE).exists()
        found = [job for job in found if job.phase != "ended" or ran]
        return max(found, key=lambda job: int(job.job_id)) if found else None

    def observe(self, run: Run) -> Observation:
        if self._asked_at is None:
            self.refresh(force=True)
        ended = read_record(self.run_dir(run) / shim.EXIT_FILE)
        job = self.find(run)
        if job is None and ended is not None and self._too_new(run):
            self.refresh(force=True)  # it ended between two polls: ask once more, for its node and state
            job = self.find(run)
        if job is None and ended is None and self.error is None and not self._too_new(run):
            # squeue forgets a job minutes after it ends; accounting, where a site keeps it, does not.
            job = self._accounted(run.backend_job)
        facts: dict[str, Any] = {}
        if job is not None:
            facts = dict(job_id=job.job_id, node=job.node, started_at=job.started_at, backend_reason=job.reason)
        if ended is not None and (job is None or job.phase != "pending"):
            if (job is not None and job.phase == "running" and self.error is None
                    and self.clock() - (ended.get("ended_at") or 0) < EXIT_SETTLE_S):
                # The command ended; Slurm's end state (TIMEOUT, OUT_OF_MEMORY...) says more.
                return Observation("running", detail="ended; waiting for Slurm's end state", **facts)
            return Observation(
                "exited", exit_code=ended.get("exit_code"), signal=ended.get("signal"),
                ended_at=ended.get("ended_at"), ended_by=job.ended_by if job else None, **facts,
            )
        if job is None and (self.error is not None or self._too_new(run)):
            # Slurm unreadable, or the job is newer than the last answer: nothing changed.
            state = "running" if run.started_at is not None else "pending"
            return Observation(state, detail=self.error or "just handed to Slurm")
        if job is None:
            return Observation("lost", detail=VANISHED.format(job=run.backend_job))
        if job.phase == "pending":
            return Observation("pending", **facts)
        if job.phase == "running":
            return Observation("running", **facts)
        return Observation(
            "exited", exit_code=job.exit_code, signal=job.signal, ended_at=job.ended_at, ended_by=job.ended_by,
            detail=f"Slurm: {job.state}", **facts,
        )

    def _accounted(self, job_id: str | None) -> Job | None:
        if not job_id or job_id == SUBMITTING:
            return None
        try:
            return self.tools.accounted(job_id)
        except SlurmError:
            return None

    def _too_new(self, run: Run) -> bool:
        key = _submitting_key(run) if run.backend_job == SUBMITTING else run.backend_job or ""
        handed = self._handed_at.get(key)
        return handed is not None and self.polled_at is not None and self.polled_at <= handed

    def signal(self, run: Run, sig: int) -> bool:
        if not run.backend_job or run.backend_job == SUBMITTING:
            return False
        try:
            return self.tools.signal(run.backend_job, signals.Signals(sig).name.removeprefix("SIG"))
        except SlurmError:
            return False

    def exit_fd(self, run: Run) -> int | None:
        return None  # the poll tells

    # -- the cluster -----------------------------------------------------------------

    def cluster(self) -> dict[str, Any]:
        """Partitions and nodes for ``status``; Slurm is asked at most every few seconds."""
        now = self.clock()
        if self._cluster is None or now - self._cluster_asked_at >= CLUSTER_TTL_S:
            self._cluster_asked_at = now
            try:
                self._cluster = {**self.tools.cluster(self.partition), "at": now}
            except SlurmError as error:
                # The last figures, dated by their "at", beat none while Slurm does not answer.
                last = self._cluster or {"partition": self.partition, "partitions": [], "nodes": [], "at": None}
                self._cluster = {**last, "error": str(error)}
        # A failed poll of the jobs is news too: until one succeeds, runyard concludes nothing.
        return {**self._cluster, "error": self._cluster.get("error") or self.error}


def _submitting_key(run: Run) -> str:
    return f"run {run.id} attempt {run.attempt}"
