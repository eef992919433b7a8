"""Launching runs as their users, for the shared daemon (which runs as root).

:class:`SharedLauncher` is :class:`~engine.launcher.LocalLauncher` with three changes:

* Root never touches the filesystem below a run's folder. It makes ``runs/ID`` (in
  ``runs/``, which only root can write), hands it to the user with mode 0700, and leaves
  the rest to the shim acting as the user: the attempt's folder, the log, the checkpoint
  folder, the records. A link the user planted there cannot make root write elsewhere.
* The shim starts with a clean environment and gets the run's by a pipe: an
  ``LD_PRELOAD`` in a user's environment must not reach a root process.
* What the shim wrote is the user's to forge, so it is read defensively: no link
  followed, only files of the run's user (or root), a cgroup only if it is the run's own,
  and a process signalled or followed only if the run's user owns it.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from engine import cgroups, shim
from engine.access import Credentials
from engine.launcher import Launched, LaunchError, LocalLauncher, _create_time, shim_command
from engine.model import Run
from engine.protocol import RequestError

log = logging.getLogger("runyard.launcher")

SHIM_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
"""The shim's own environment: nothing of the user's (the run gets its environment by pipe)."""

MAX_RECORD_BYTES = 1 << 20


class SharedLauncher(LocalLauncher):
    """Runs each command as its submitting user; see the module docstring.

    Args:
        credentials: who a run runs as (:func:`engine.access.credentials`); raises
            :class:`RequestError` when it cannot run at all (its user is gone).
    """

    shared = True

    def __init__(
        self,
        runs_dir: str | os.PathLike,
        *,
        credentials: Callable[[Run], Credentials],
        cgroup_root: cgroups.CgroupRoot | None = None,
    ) -> None:
        super().__init__(runs_dir, cgroup_root=cgroup_root)
        self.credentials = credentials

    def launch(self, run: Run, env: Mapping[str, str], *, cores: Sequence[int] | None = None) -> Launched:
        if not run.argv:
            raise LaunchError("the run has no command to start")
        try:
            who = self.credentials(run)
        except RequestError as error:
            raise LaunchError(str(error)) from None
        if not os.path.isdir(run.cwd):
            what = "is not a directory" if os.path.exists(run.cwd) else "does not exist"
            raise LaunchError(f"cwd {run.cwd} {what}")
        self._hand_over(self.runs_dir / str(run.id), who)
        run_dir = self.run_dir(run)
        log_path = Path(run.log_path) if run.log_path else run_dir / "output.log"
        group = self._make_group(run, -1)
        options = [
            "--user", str(who.uid), "--gid", str(who.gid), "--groups", ",".join(map(str, who.groups)),
            "--umask", f"{who.umask:o}", "--log", str(log_path), "--cwd", run.cwd, "--env-fd", "0",
        ]
        if run.checkpoint_dir:
            options += ["--mkdir", run.checkpoint_dir]
        command = shim_command(
            run_dir, run.argv, cores=cores, cgroup=group,
            cgroup_origin=self.cgroup_root.origin if group is not None and self.cgroup_root else None,
        )
        separator = command.index("--")
        command[separator:separator] = options
        try:
            payload = json.dumps(dict(env)).encode()
        except (TypeError, ValueError) as error:
            self._drop_group(group)
            raise LaunchError(f"cannot pass the run's environment: {error}") from None
        read_fd, write_fd = os.pipe()
        try:
            popen = subprocess.Popen(
                command, cwd="/", env=SHIM_ENV, stdin=read_fd, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
            )
        except (OSError, ValueError) as error:
            os.close(write_fd)
            self._drop_group(group)
            raise LaunchError(f"cannot start the supervisor: {error}") from None
        finally:
            os.close(read_fd)
        try:
            _write_all(write_fd, payload)
        except OSError as error:  # the shim died at once: observing the run says how
            log.warning("run %s: cannot hand its environment to the shim: %s", run.id, error)
        finally:
            os.close(write_fd)
        self._shims[run.id] = popen
        return Launched(shim_pid=popen.pid, shim_started_at=_create_time(popen.pid))

    def _hand_over(self, top: Path, who: Credentials) -> None:
        """``runs/ID`` made by root (only root writes ``runs/``) and given to the user, 0700."""
        try:
            top.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(top)
            if not stat.S_ISDIR(info.st_mode):
                raise LaunchError(f"{top} is not a folder")
            fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchown(fd, who.uid, who.gid)
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
        except OSError as error:
            raise LaunchError(f"cannot prepare the run folder {top}: {error.strerror}") from None

    def _record(self, run: Run, name: str) -> dict | None:
        record = read_user_json(self.run_dir(run) / name, run.uid)
        if record is None:
            return None
        group = record.get("cgroup")
        if group is not None and group != self._expected_group(run):
            log.warning("run %s: %s names a cgroup that is not the run's (%r); ignored", run.id, name, group)
            record["cgroup"] = None
        for key in ("child_pid", "shim_pid"):
            if key in record and (isinstance(record[key], bool) or not isinstance(record[key], (int, type(None)))):
                record[key] = None
        return record

    def _expected_group(self, run: Run) -> str | None:
        if self.cgroup_root is None:
            return None
        return str(self.cgroup_root.base / cgroups.group_name(self.cgroup_tag, run.id))

    def _verified_child(self, run: Run, started: dict | None, *, allow_zombie: bool = False) -> psutil.Process | None:
        child = super()._verified_child(run, started, allow_zombie=allow_zombie)
        if child is None:
            return None
        try:
            owner = child.uids().real
        except psutil.Error:
            return None
        if owner != run.uid:
            log.warning("run %s: pid %s belongs to uid %s, not the run's user; not followed", run.id, child.pid, owner)
            return None
        return child


def read_user_json(path: Path, uid: int | None) -> dict | None:
    """A JSON object from a file the user ``uid`` (or root) owns, read without following a
    link; ``None`` when absent, not theirs, too big or not an object."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in (uid, 0) or info.st_size > MAX_RECORD_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = json.loads(file.read(MAX_RECORD_BYTES))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]
