"""The peers runyard is measured against, set up and torn down by the suite itself.

* task-spooler (``tsp``), two slots, its own socket and output folder, so a user's own
  tsp queue is never touched.
* Slurm as a one-node cluster on localhost: munged, slurmctld and slurmd started here in
  the foreground (so their pids are ours), with a generated ``slurm.conf`` whose state,
  spool, logs and ports are private to the run. ``select/cons_tres`` with
  ``DefMemPerCPU=1000`` (without it every job asks for the whole node's memory and jobs
  run one at a time), ``proctrack/linuxproc`` and ``task/none`` (no cgroups: a container
  rarely grants them, and runyard is measured without them too).

Both come from Debian's packages; :func:`ensure_installed` installs what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess

from benchmarks.common import scratch_dir, stop_process, tagged_env, tagged_pids, wait_for

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_memory_mb() -> int:
    total_kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
    # slurmd refuses to register a node with more memory than it finds: leave it a margin.
    return int(total_kb / 1024 * 0.9)


SLURM_CONF = """\
ClusterName=rybench
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={folder}/plugstack.conf
{extra}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=bench Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Slurm:
    """A one-node Slurm cluster on localhost, private to this benchmark run."""

    def __init__(self, *, tuned: bool = False) -> None:
        for program in ("munged", "slurmctld", "slurmd", "sbatch"):
            if _which(program) is None:
                raise PeerUnavailable(f"{program} is not installed")
        self.folder = scratch_dir("slurm")
        self.tuned = tuned
        self.munge_socket = self.folder / "munge" / "munge.socket"
        self.conf = self.folder / "slurm.conf"
        self.env = tagged_env(SLURM_CONF=str(self.conf))
        self.processes: dict[str, subprocess.Popen] = {}

    def _write_files(self) -> None:
        munge = self.folder / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for name in ("state", "spool"):
            (self.folder / name).mkdir(mode=0o755)
        (self.folder / "plugstack.conf").write_text("")
        extra = "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0" if self.tuned else ""
        self.conf.write_text(SLURM_CONF.format(
            ctld_port=_free_port(), d_port=_free_port(), munge_socket=self.munge_socket, folder=self.folder,
            cpus=os.cpu_count() or 1, mem_mb=_node_memory_mb(), extra=extra,
        ))

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.folder / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _alive(self, name: str) -> bool:
        process = self.processes[name]
        if process.poll() is not None:
            tail = (self.folder / f"{name}.out").read_text(errors="replace")[-600:]
            raise PeerUnavailable(f"{name} exited with {process.returncode}: {tail.strip()}")
        return True

    def start(self) -> Slurm:
        self._write_files()
        munge = self.folder / "munge"
        self._spawn("munged", [
            _which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}",
        ])
        wait_for(lambda: self._alive("munged") and self.munge_socket.exists(), 20, "munged's socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        wait_for(self._node_idle, 60, "the Slurm node to be idle", interval=0.2)
        return self

    def _node_idle(self) -> bool:
        self._alive("slurmctld")
        self._alive("slurmd")
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def daemon_pids(self) -> list[int]:
        return [process.pid for process in self.processes.values() if process.poll() is None]

    def queue_size(self) -> int:
        result = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True,
                                check=True)
        return len(result.stdout.split())

    def sbatch(self, wrap: str, output: str = "/dev/null") -> list[str]:
        return ["sbatch", "--parsable", "-o", output, "--wrap", wrap]

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is not None:
                stop_process(process, timeout=15)

    def kill_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=15)

    def __enter__(self) -> Slurm:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def slurm_settle(slurm: Slurm, timeout: float = 120.0) -> None:
    """Wait until Slurm's queue is empty."""
    wait_for(lambda: slurm.queue_size() == 0, timeout, "Slurm's queue to drain", interval=0.1)
