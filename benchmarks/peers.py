"""The peers runyard is measured against, set up and torn down by the suite itself.

* task-spooler (``tsp``), two slots, its own socket and output folder, so a user's own
  tsp queue is never touched.
* Slurm as a one-node cluster on localhost, the one the tests use (``tests/slurm_cluster.py``):
  munged, slurmctld and slurmd started here in the foreground (so their pids are ours),
  with a generated ``slurm.conf`` whose state, spool, logs and ports are private to the run.
  ``select/cons_tres`` with ``DefMemPerCPU`` (without it every job asks for the whole node's
  memory and jobs run one at a time), ``proctrack/linuxproc`` and ``task/none`` (no
  cgroups: a container rarely grants them, and runyard is measured without them too).

Both come from Debian's packages; :func:`ensure_installed` installs what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

from benchmarks.common import ROOT, scratch_dir, tagged_env, tagged_pids, wait_for

sys.path.insert(0, str(ROOT / "tests"))
from slurm_cluster import ClusterUnavailable, LocalSlurm, installed  # noqa: E402

PACKAGES = {"tsp": "task-spooler", "slurmctld": "slurm-wlm", "munged": "munge"}
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


class PeerUnavailable(RuntimeError):
    """A peer cannot be set up here; the suite records why and goes on without it."""


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path=":".join(SBIN))


def ensure_installed() -> list[str]:
    """Install the peers' Debian packages if any is missing; returns what was installed."""
    missing = sorted({package for program, package in PACKAGES.items() if _which(program) is None})
    if not missing:
        return []
    if os.geteuid() != 0:
        raise PeerUnavailable(f"missing {', '.join(missing)} and not root: apt-get install -y {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)
    return missing


def versions() -> dict[str, str]:
    found = {}
    for package in sorted(set(PACKAGES.values())):
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        found[package] = result.stdout.strip() if result.returncode == 0 else "not installed"
    return found


# ------------------------------------------------------------------ task-spooler


class TaskSpooler:
    """A private tsp server with ``slots`` slots; ``command()`` runs tsp against it."""

    def __init__(self, slots: int = 2) -> None:
        if _which("tsp") is None:
            raise PeerUnavailable("tsp is not installed")
        self.folder = scratch_dir("tsp")
        self.env = tagged_env(
            TS_SOCKET=str(self.folder / "socket"), TS_TMPDIR=str(self.folder), TMPDIR=str(self.folder),
            TS_MAXFINISHED="100000",
        )
        self.slots = slots

    def command(self, *args: str) -> list[str]:
        return ["tsp", *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tsp", *args], env=self.env, capture_output=True, text=True, check=check)

    def start(self) -> TaskSpooler:
        # Any tsp call starts the server; -S sets the slots for this socket's server.
        self.run("-S", str(self.slots))
        return self

    def server_pids(self) -> list[int]:
        """The server: the tsp process carrying our tag that listens on our socket."""
        socket_path = str(self.folder / "socket")
        pids = []
        for pid in tagged_pids():
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            if not exe.endswith("/tsp"):
                continue
            # The server is the tsp process with the listening socket open; job runners
            # and clients are tsp too.
            if _has_unix_socket(pid, fds, socket_path):
                pids.append(pid)
        return pids

    def kill_server(self) -> None:
        for pid in self.server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(["tsp", "-K"], env=self.env, capture_output=True, timeout=10)
        self.kill_server()

    def __enter__(self) -> TaskSpooler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _has_unix_socket(pid: int, fds: list[str], socket_path: str) -> bool:
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    if not inodes:
        return False
    with open("/proc/net/unix") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes and fields[7] == socket_path:
                return True
    return False


# ------------------------------------------------------------------ Slurm


class Slurm(LocalSlurm):
    """The tests' one-node cluster (``tests/slurm_cluster.py``), private to this benchmark
    run: its folder is a scratch folder and its processes carry the run's tag, so cleanup
    by tag finds them. Stock Slurm unless ``tuned``."""

    def __init__(self, *, tuned: bool = False) -> None:
        if not installed():
            raise PeerUnavailable("Slurm is not installed")
        super().__init__(tuned=tuned, folder=scratch_dir("slurm"), base_env=tagged_env())

    @property
    def env(self) -> dict[str, str]:
        """The whole environment for ``sbatch`` and friends (the tests' ``env`` is only what to add)."""
        return {**self.base_env, "SLURM_CONF": str(self.conf)}

    def start(self) -> Slurm:
        try:
            super().start()
        except ClusterUnavailable as error:
            raise PeerUnavailable(str(error)) from None
        return self

    def sbatch(self, wrap: str, output: str = "/dev/null") -> list[str]:
        return ["sbatch", "--parsable", "-o", output, "--wrap", wrap]

    def kill_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=15)


def slurm_settle(slurm: Slurm, timeout: float = 120.0) -> None:
    """Wait until Slurm's queue is empty."""
    wait_for(lambda: slurm.queue_size() == 0, timeout, "Slurm's queue to drain", interval=0.1)
