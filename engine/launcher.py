"""Where runs execute: the seam the engine talks to, and its local implementation.

The queue, the policy and the CLI only see :class:`Launcher`: start a run, observe it,
signal it, wait for it. :class:`LocalLauncher` runs each command under the supervisor
shim (:mod:`engine.shim`) on this machine; a cluster backend whose scheduler decides
where runs go (:class:`engine.slurm.launcher.SlurmLauncher`) adds the calls of
:class:`SchedulingBackend`.

Process identity: a pid alone names a process only until it is reused (pid_max may be
32768), so every pid is checked against the creation time recorded with it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import psutil

from engine import cgroups, enforce, shim
from engine.model import Run

SHIM_PATH = Path(shim.__file__).resolve().with_name("shim_start.py")
"""The shim's entry point (see its docstring for why not ``shim.py`` itself)."""

CREATE_TIME_TOLERANCE_S = 2.0
"""How far two readings of one process's creation time may differ. psutil derives it
from the integer boot time in ``/proc/stat``, which can move by a second when the clock
is adjusted; a pid cannot be reused within two seconds of its first owner's start."""

CGROUP_CLEANUP_TIMEOUT_S = 2.0
"""How long observing a run's end may wait for what is left in its cgroup to die: the
engine's tick waits meanwhile. A group still busy then is removed by a later sweep."""

ObservedState = Literal["pending", "running", "exited", "lost"]
"""``pending``: a cluster backend holds the run but has not started it."""

SHIM_DIED = "the supervisor shim died without recording an exit status"
NEVER_STARTED = "never started"
FOLLOWING_CHILD = (
    "the supervisor shim is gone; following the run's process directly (its exit status will be unknown)"
)


class LaunchError(RuntimeError):
    """A run could not be started; the one-line message becomes the run's failure reason."""


@dataclass(frozen=True)
class Launched:
    """What the engine records as soon as a run is started."""

    shim_pid: int
    shim_started_at: float
    """The shim's creation time (Unix seconds), to tell it from a later owner of its pid."""


@dataclass(frozen=True)
class Observation:
    """What a launcher can tell about a run right now."""

    state: ObservedState
    child_pid: int | None = None
    """The run's command; it leads its own process group."""
    child_started_at: float | None = None
    """The command's creation time (Unix seconds), or the time the shim started it when the
    process is already gone. Record it with ``child_pid`` to re-adopt the run later."""
    exit_code: int | None = None
    """``-N`` for a death by signal N, as with ``Popen.returncode``."""
    signal: str | None = None
    """The name of the signal that ended the run (``"SIGKILL"``), if one did."""
    ended_at: float | None = None
    detail: str = ""
    """Why the state is what it is, when that is not obvious; shown to the user."""
    shim_pid: int | None = None
    shim_started_at: float | None = None
    """The shim as found; the engine records these when it had none (adoption)."""
    cores: tuple[int, ...] | None = None
    """The cores the run is pinned to; ``None`` when it is not pinned (or not started)."""
    oom_killed: bool | None = None
    """Once exited: whether the kernel's OOM killer killed any process of the run's
    cgroup; ``None`` when the run had no cgroup (see ``box_oom_kill_rose``)."""
    peak_mem_bytes: int | None = None
    """Once exited: the high-water mark of the run's cgroup (page cache included);
    ``None`` without a cgroup."""
    box_oom_kill_rose: bool | None = None
    """Once exited: whether the box-wide OOM kill count rose while the run ran; ``None``
    when it could not be read."""
    job_id: str | None = None
    """A cluster backend's job, when it found one (by name, after an interrupted hand-over)."""
    node: str | None = None
    started_at: float | None = None
    """When a cluster backend started the run (its clock, not the hand-over's)."""
    backend_reason: str = ""
    """Why a cluster backend keeps it pending (Slurm's ``Resources``, ``Priority``...)."""
    ended_by: str | None = None
    """What a cluster backend says ended it: ``timeout``, ``oom``, ``cancelled``,
    ``node_fail`` or ``preempted`` (``engine.slurm.jobs.ENDED_BY``)."""


class Launcher(Protocol):
    """Starts and follows runs; the engine never cares where a run executes."""

    def launch(self, run: Run, env: Mapping[str, str], *, cores: Sequence[int] | None = None) -> Launched:
        """Start ``run`` with exactly the environment ``env``, pinned to ``cores`` if given
        (:func:`engine.enforce.assign_cores` picks them).

        Raises:
            LaunchError: the run cannot start (missing cwd, log not writable, ...).
        """
        ...

    def observe(self, run: Run) -> Observation:
        """How ``run`` is doing, from what was recorded at launch and on disk."""
        ...

    def signal(self, run: Run, sig: int) -> bool:
        """Send ``sig`` to the run's command and all its descendants.

        Returns:
            False when there is no live process of the run to signal.
        """
        ...

    def exit_fd(self, run: Run) -> int | None:
        """A file descriptor that becomes readable when the run ends, for an event loop's
        ``add_reader``; the caller closes it. ``None`` when the launcher cannot provide one
        or nothing of the run is alive (observe it instead)."""
        ...


class SchedulingBackend(Launcher, Protocol):
    """A launcher whose cluster decides when and where runs start (Slurm): the engine hands
    runs over instead of admitting them (:mod:`engine.handover`). ``observe`` may then
    answer ``pending``, with the cluster's reason, and carries its job, node and start."""

    schedules_itself: bool  # True

    def hand_over(self, run: Run, env: Mapping[str, str]) -> tuple[str, list[str]]:
        """Submit the run; returns its job id and what the cluster could not be told exactly.

        Raises:
            LaunchError: refused (the run fails); a subclass marks an unreachable cluster.
        """
        ...

    def withdraw(self, run: Run) -> None:
        """Take a handed-over run's job back (cancel, hold)."""
        ...

    def refresh(self, *, force: bool = False) -> None:
        """Ask the cluster about every job at once, at most once per poll interval."""
        ...

    def refusal(self, envelope, retry, cwd: str) -> str | None:
        """Why no node could ever run such a run, or ``None``."""
        ...

    def expected_start(self, envelope, retry, cwd: str) -> str | None: ...

    def cluster(self) -> dict:
        """Partitions and nodes, for ``status``."""
        ...


def shim_command(
    run_dir: str | os.PathLike,
    argv: tuple[str, ...] | list[str],
    *,
    cores: Sequence[int] | None = None,
    cgroup: str | os.PathLike | None = None,
    cgroup_origin: str | os.PathLike | None = None,
) -> list[str]:
    """The command line that runs ``argv`` under the shim, recording into ``run_dir``,
    pinned to ``cores`` and inside ``cgroup`` when given (see :mod:`engine.shim`)."""
    options: list[str] = []
    if cores:
        options += ["--cores", ",".join(str(core) for core in cores)]
    if cgroup is not None:
        options += ["--cgroup", str(cgroup)]
        if cgroup_origin is not None:
            options += ["--cgroup-origin", str(cgroup_origin)]
    # -I: the run's PYTHONPATH/PYTHONHOME and its cwd must not pick the shim's code;
    # -S: site (and the editable-install finder) costs more than the shim itself.
    return [sys.executable, "-I", "-S", str(SHIM_PATH), str(run_dir), *options, "--", *argv]


def is_shim_cmdline(cmdline: list[str], run_dir: str | os.PathLike) -> bool:
    """Whether ``cmdline`` is a shim recording into ``run_dir``."""
    try:
        separator = cmdline.index("--")
    except ValueError:
        return False
    for position, program in enumerate(cmdline[: separator - 1]):
        # shim.py: how shims started by an engine of an earlier version were run.
        if program == "engine.shim" or program.endswith(
            (os.path.join("engine", "shim_start.py"), os.path.join("engine", "shim.py"))
        ):
            return cmdline[position + 1] == str(run_dir)
    return False


class LocalLauncher(Launcher):
    """Runs each command on this machine under the supervisor shim.

    Args:
        runs_dir: where run directories live when a run does not name its own.
        cgroup_root: where to make each run's memory cgroup (:func:`engine.cgroups.detect`);
            ``None``: runs get none, their memory is enforced by sampling only.
    """

    def __init__(self, runs_dir: str | os.PathLike, *, cgroup_root: cgroups.CgroupRoot | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.cgroup_root = cgroup_root
        self.cgroup_tag = cgroups.home_tag(self.runs_dir)
        self._shims: dict[int, subprocess.Popen] = {}
        """Shims this instance started, by run id: polling reaps them, so an exited shim
        is never mistaken for a live one because it lingers as our zombie."""

    # -- the seam -------------------------------------------------------------------

    def launch(self, run: Run, env: Mapping[str, str], *, cores: Sequence[int] | None = None) -> Launched:
        if not run.argv:
            raise LaunchError("the run has no command to start")
        if not os.path.isdir(run.cwd):
            what = "is not a directory" if os.path.exists(run.cwd) else "does not exist"
            raise LaunchError(f"cwd {run.cwd} {what}")
        run_dir = self.run_dir(run)
        log_path = Path(run.log_path) if run.log_path else run_dir / "output.log"
        try:
            run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Left over from an earlier attempt of this run, they would describe that one.
            for name in (shim.SHIM_FILE, shim.EXIT_FILE):
                (run_dir / name).unlink(missing_ok=True)
        except OSError as error:
            raise LaunchError(f"cannot prepare the run directory {run_dir}: {error.strerror}") from None
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise LaunchError(f"cannot open the log {log_path}: {error.strerror}") from None
        group = self._make_group(run, log_fd)
        try:
            popen = subprocess.Popen(
                shim_command(
                    run_dir,
                    run.argv,
                    cores=cores,
                    cgroup=group,
                    cgroup_origin=self.cgroup_root.origin if group is not None and self.cgroup_root else None,
                ),
                cwd=run.cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as error:
            self._drop_group(group)
            raise LaunchError(_spawn_failure(error, run.cwd)) from None
        except ValueError as error:  # a NUL byte in argv or env
            self._drop_group(group)
            raise LaunchError(f"cannot start the run: {error}") from None
        finally:
            os.close(log_fd)
        self._shims[run.id] = popen
        return Launched(shim_pid=popen.pid, shim_started_at=_create_time(popen.pid))

    def observe(self, run: Run) -> Observation:
        run_dir = self.run_dir(run)
        ended = self._record(run, shim.EXIT_FILE)
        started = self._record(run, shim.SHIM_FILE)
        if ended is not None:
            return self._exited(run, ended, started)

        shim_pid, shim_started_at = run.shim_pid, run.shim_started_at
        if shim_pid is None and started is not None:
            shim_pid = started.get("shim_pid")
        if shim_pid is None:
            found = _find_shim(run_dir)
            if found is None:
                return self._finish_unseen(run, run_dir, NEVER_STARTED)
            return Observation("running", shim_pid=found.pid, shim_started_at=found.info["create_time"])
        shim_started_at = self._live_shim(run, run_dir, shim_pid, shim_started_at, started)
        if shim_started_at is not None:
            child_pid, child_started_at = self._child_facts(run, started)
            return Observation(
                "running",
                child_pid=child_pid,
                child_started_at=child_started_at,
                shim_pid=shim_pid,
                shim_started_at=shim_started_at,
                cores=_cores(started),
            )

        child = self._verified_child(run, started)
        if child is not None:
            return Observation(
                "running",
                child_pid=child.pid,
                child_started_at=child.create_time(),
                detail=FOLLOWING_CHILD,
                cores=_cores(started),
            )
        return self._finish_unseen(run, run_dir, SHIM_DIED)

    def signal(self, run: Run, sig: int) -> bool:
        child = self._verified_child(run, self._record(run, shim.SHIM_FILE), allow_zombie=True)
        if child is None:
            return False
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def exit_fd(self, run: Run) -> int | None:
        if not hasattr(os, "pidfd_open"):
            return None
        started = self._record(run, shim.SHIM_FILE)
        popen = self._shims.get(run.id)
        if popen is not None and popen.pid == run.shim_pid:
            popen.poll()  # an exited shim must not hand out an fd that is always readable
        candidates = [(run.shim_pid, run.shim_started_at), (run.pid, run.pid_started_at)]
        if started is not None:
            candidates.append((started.get("child_pid"), started.get("started_at")))
        for pid, created_at in candidates:
            if not pid or created_at is None:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError as error:
                if error.errno in (errno.ENOSYS, errno.EPERM):  # old kernel, sandbox
                    return None
                continue
            # Checked after opening, because the fd pins whichever process owns the pid now.
            if _verified(pid, created_at) is not None:
                return fd
            os.close(fd)
        return None

    # -- helpers --------------------------------------------------------------------

    def run_dir(self, run: Run) -> Path:
        return Path(run.run_dir) if run.run_dir else self.runs_dir / str(run.id)

    def _record(self, run: Run, name: str) -> dict | None:
        """One of the shim's records of ``run`` (``shim.json`` or ``exit.json``)."""
        return read_record(self.run_dir(run) / name)

    def _make_group(self, run: Run, log_fd: int) -> Path | None:
        """The run's memory cgroup, or ``None`` (no cgroups here, ``--mem 0``, or making
        it failed: said in the run's log, and the run goes on under sampling only)."""
        if self.cgroup_root is None or run.envelope.mem_bytes <= 0:
            return None
        name = cgroups.group_name(self.cgroup_tag, run.id)
        try:
            return cgroups.create_run_group(
                self.cgroup_root, name, cgroups.memory_limit_bytes(run.envelope.mem_bytes)
            )
        except cgroups.CgroupError as error:
            line = f"runyard: {error}; the memory envelope is enforced by sampling only\n"
            try:
                os.write(log_fd, line.encode(errors="replace"))
            except OSError:
                pass
            return None

    def _drop_group(self, group: Path | None) -> None:
        if group is not None:
            cgroups.remove_run_group(group, timeout_s=CGROUP_CLEANUP_TIMEOUT_S)

    def _exited(self, run: Run, ended: dict, started: dict | None) -> Observation:
        self._forget(run)
        started = started or {}
        child_pid = started.get("child_pid")
        oom_kills, peak_mem_bytes = ended.get("oom_kills"), ended.get("peak_mem_bytes")
        group = started.get("cgroup")
        if group and not ended.get("cgroup_removed"):
            left = cgroups.remove_run_group(group, timeout_s=CGROUP_CLEANUP_TIMEOUT_S)
            oom_kills = oom_kills if oom_kills is not None else left.oom_kills
            peak_mem_bytes = peak_mem_bytes if peak_mem_bytes is not None else left.peak_mem_bytes
        return Observation(
            "exited",
            child_pid=child_pid,
            child_started_at=started.get("started_at") if child_pid else None,
            exit_code=ended.get("exit_code"),
            signal=ended.get("signal"),
            ended_at=ended.get("ended_at"),
            cores=_cores(started),
            oom_killed=None if oom_kills is None else oom_kills > 0,
            peak_mem_bytes=peak_mem_bytes,
            box_oom_kill_rose=enforce.oom_count_rose(started.get("box_oom_kills"), ended.get("box_oom_kills")),
        )

    def _finish_unseen(self, run: Run, run_dir: Path, detail: str) -> Observation:
        """Nothing of the run is alive and no exit status was read."""
        # The shim writes exit.json before it exits: read again now that it is known dead.
        started = self._record(run, shim.SHIM_FILE)
        ended = self._record(run, shim.EXIT_FILE)
        if ended is not None:
            return self._exited(run, ended, started)
        popen = self._shims.get(run.id)
        returncode = popen.returncode if popen is not None and popen.pid == run.shim_pid else None
        self._forget(run)
        if returncode is not None and returncode >= 0 and started is not None:
            observation = _from_shim_status(returncode, started)
        else:
            observation = Observation("lost", child_pid=started.get("child_pid") if started else None, detail=detail)
        group = started.get("cgroup") if started else None
        if not group:
            return observation
        # The shim died before removing the run's group: what is left in it goes now.
        left = cgroups.remove_run_group(group, timeout_s=CGROUP_CLEANUP_TIMEOUT_S)
        return dataclasses.replace(
            observation,
            cores=_cores(started),
            oom_killed=None if left.oom_kills is None else left.oom_kills > 0,
            peak_mem_bytes=left.peak_mem_bytes,
        )

    def _live_shim(
        self, run: Run, run_dir: Path, shim_pid: int, shim_started_at: float | None, started: dict | None
    ) -> float | None:
        """The live shim's creation time, or ``None`` when it is gone."""
        popen = self._shims.get(run.id)
        if popen is not None and popen.pid == shim_pid:
            if popen.poll() is not None:
                return None
            return shim_started_at if shim_started_at is not None else _create_time(shim_pid)
        if shim_started_at is not None:
            process = _verified(shim_pid, shim_started_at)
        else:
            # Unrecorded (adoption): the shim started before shim.json's time, and
            # runs with our command line.
            process = _verified(shim_pid, None, not_after=started.get("started_at") if started else None)
            if process is not None and not _cmdline_matches(process, run_dir):
                process = None
        return process.create_time() if process is not None else None

    def _child_facts(self, run: Run, started: dict | None) -> tuple[int | None, float | None]:
        child = self._verified_child(run, started, allow_zombie=True)
        if child is not None:
            return child.pid, child.create_time()
        if started is not None and started.get("child_pid"):
            return started["child_pid"], started.get("started_at")
        return None, None

    def _verified_child(
        self, run: Run, started: dict | None, *, allow_zombie: bool = False
    ) -> psutil.Process | None:
        """The run's command if its pid still names it, from the engine's record or shim.json."""
        if run.pid is not None and run.pid_started_at is not None:
            return _verified(run.pid, run.pid_started_at, allow_zombie=allow_zombie)
        if started is None or not started.get("child_pid") or started.get("started_at") is None:
            return None
        return _verified(started["child_pid"], started["started_at"], allow_zombie=allow_zombie)

    def _forget(self, run: Run) -> None:
        popen = self._shims.pop(run.id, None)
        if popen is not None:
            popen.poll()


def _spawn_failure(error: OSError, cwd: str) -> str:
    if error.filename == cwd:
        if isinstance(error, FileNotFoundError):
            return f"cwd {cwd} does not exist"
        return f"cannot enter cwd {cwd}: {error.strerror}"
    return f"cannot start the supervisor {sys.executable}: {error.strerror}"


def _from_shim_status(returncode: int, started: dict) -> Observation:
    """Read the run's outcome from the shim's own exit status (it could not write
    exit.json). 128 + N reads as death by signal N, as shells report it."""
    detail = "exit status taken from the supervisor shim: it could not write exit.json (see the log)"
    child_pid = started.get("child_pid")
    signum = returncode - 128
    if returncode > 128 and signum in signal.valid_signals():
        return Observation(
            "exited", child_pid=child_pid, exit_code=-signum, signal=shim.signal_name(signum), detail=detail
        )
    return Observation("exited", child_pid=child_pid, exit_code=returncode, detail=detail)


def _cores(started: dict | None) -> tuple[int, ...] | None:
    cores = started.get("cores") if started else None
    return tuple(cores) if cores else None


def read_record(path: Path) -> dict | None:
    """A record the shim wrote, or ``None`` if absent or unreadable (treated alike:
    the shim writes atomically, so a damaged file means the record was never completed)."""
    try:
        with open(path, "rb") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        # Cannot happen for our unreaped child; the clock is within the tolerance anyway.
        return time.time()


def _verified(
    pid: int,
    created_at: float | None,
    *,
    not_after: float | None = None,
    allow_zombie: bool = False,
) -> psutil.Process | None:
    """The live process ``pid`` if it is the one created at ``created_at`` (or, failing
    that, no later than ``not_after``); ``None`` if it is gone or the pid was reused."""
    try:
        process = psutil.Process(pid)
        created = process.create_time()
        if created_at is not None and abs(created - created_at) > CREATE_TIME_TOLERANCE_S:
            return None
        if not_after is not None and created > not_after + CREATE_TIME_TOLERANCE_S:
            return None
        if not allow_zombie and process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    return process


def _cmdline_matches(process: psutil.Process, run_dir: Path) -> bool:
    try:
        return is_shim_cmdline(process.cmdline(), run_dir)
    except psutil.Error:
        return False


def _find_shim(run_dir: Path) -> psutil.Process | None:
    """Scan for a live shim recording into ``run_dir``: only for a run whose shim pid was
    never recorded (the engine stopped between starting it and saving the pid)."""
    for process in psutil.process_iter(["cmdline", "status", "create_time"]):
        cmdline = process.info.get("cmdline") or []
        if process.info.get("status") != psutil.STATUS_ZOMBIE and is_shim_cmdline(cmdline, run_dir):
            return process
    return None
