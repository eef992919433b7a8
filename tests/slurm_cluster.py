"""A one-node Slurm cluster on localhost for the Slurm backend's end-to-end tests.

munged, slurmctld and slurmd run in the foreground as children of the test process, so
their pids are ours and stopping them touches nothing else on a shared box. Everything
they write (state, spool, logs, the munge key and socket) lives in one temporary folder;
ports are picked free, so two suites on one machine do not meet.

The node has two CPUs' worth of cores (what the box has), nine tenths of its memory
(slurmd refuses a node that claims more than it finds) and two count-only GPUs: gres
``gpu:2`` with no device files, so ``--gres=gpu:N`` is scheduled and refused as on a real
cluster without a GPU on the machine. ``select/cons_tres``, no cgroups
(``proctrack/linuxproc``, ``task/none``), no accounting: what a small site runs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NODE_GPUS = 2

CONF = """\
ClusterName=rytest
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
{scheduler}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
KillWait=2
ReturnToService=2
GresTypes=gpu
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={folder}/plugstack.conf
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""

# slurmd drops a GPU without a device file; plain files stand in for /dev/nvidiaN (nothing opens them).
GRES_CONF = "NodeName=localhost Name=gpu File={folder}/dev/nvidia[0-{last}]\n"


class ClusterUnavailable(RuntimeError):
    """Slurm is not installed, or its daemons would not start."""


def installed() -> bool:
    return all(_which(name) for name in ("munged", "slurmctld", "slurmd", "sbatch", "squeue"))


def _which(program: str) -> str | None:
    return shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    return int(total_kb / 1024 * 0.9)


TUNED = "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0"
"""Schedule right after each submit rather than on Slurm's stock timers: tests wait less."""


class LocalSlurm:
    """Start with :meth:`start` (or ``with``), stop with :meth:`stop` (by the pids it started).

    Args:
        tuned: schedule at once after each submit (:data:`TUNED`); ``False`` is stock Slurm.
        folder: where its files go (default: a new temporary folder); removed at :meth:`stop`.
        base_env: the environment its daemons and clients start from (default: this process's).
    """

    def __init__(self, *, tuned: bool = True, folder: Path | None = None,
                 base_env: dict[str, str] | None = None) -> None:
        self.tuned = tuned
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.folder = folder or Path(tempfile.mkdtemp(prefix="runyard-slurm-"))
        self.conf = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"
        self.processes: dict[str, subprocess.Popen] = {}
        self.cpus = os.cpu_count() or 1
        self.mem_mb = _node_memory_mb()

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client needs to reach this cluster (add it to a process's environment)."""
        return {"SLURM_CONF": str(self.conf)}

    def _write_files(self) -> None:
        munge = self.folder / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for name in ("state", "spool"):
            (self.folder / name).mkdir(mode=0o755)
        (self.folder / "plugstack.conf").write_text("")
        (self.folder / "dev").mkdir()
        for index in range(NODE_GPUS):
            (self.folder / "dev" / f"nvidia{index}").touch()
        (self.folder / "gres.conf").write_text(GRES_CONF.format(folder=self.folder, last=NODE_GPUS - 1))
        self.conf.write_text(CONF.format(
            ctld_port=_free_port(), d_port=_free_port(), munge_socket=self.munge_socket, folder=self.folder,
            cpus=self.cpus, mem_mb=self.mem_mb, gpus=NODE_GPUS, scheduler=TUNED if self.tuned else "",
        ))

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.folder / f"{name}.out", "ab") as log:
            self.processes[name] = subprocess.Popen(
                command, env={**self.base_env, "SLURM_CONF": str(self.conf)}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            tail = (self.folder / f"{name}.out").read_text(errors="replace")[-800:]
            raise ClusterUnavailable(f"{name} exited with {process.returncode}: {tail.strip()}")

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.2)

    def start(self) -> LocalSlurm:
        if not installed():
            raise ClusterUnavailable("Slurm is not installed (apt-get install slurm-wlm munge)")
        try:
            self._write_files()
            munge = self.folder / "munge"
            self._spawn("munged", [
                _which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}",
            ])
            self._wait(lambda: self._alive("munged") and self.munge_socket.exists(), 30, "munged's socket")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
            self._wait(self._node_idle, 90, "the Slurm node to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self, name: str) -> bool:
        self._check_alive(name)
        return True

    def _node_idle(self) -> bool:
        self._check_alive("slurmctld")
        self._check_alive("slurmd")
        result = self.client("sinfo", "-h", "-N", "-o", "%T", check=False)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), env={**self.base_env, "SLURM_CONF": str(self.conf)}, capture_output=True, text=True, check=check, timeout=60,
        )

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def daemon_pids(self) -> list[int]:
        return [process.pid for process in self.processes.values() if process.poll() is None]

    def queue_size(self) -> int:
        """Jobs pending or running."""
        return len(self.client("squeue", "-h", "-o", "%i").stdout.split())

    def job_ids(self) -> list[int]:
        """Jobs Slurm still lists (any state), oldest first."""
        out = self.client("squeue", "-h", "-t", "all", "-o", "%i").stdout
        return sorted(int(line) for line in out.split())

    def job_state(self, job_id: int | str) -> str | None:
        out = self.client("squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T", check=False).stdout
        return out.strip() or None

    def cancel_all(self) -> None:
        """Leave an empty queue for the next test."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.client("scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}", check=False)

    def _queue_drained(self) -> bool:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = self.client("squeue", "-h", "-o", "%T", check=False).stdout
            return not out.strip()
        return True

    def stop(self) -> None:
        """Cancel every job and let slurmd end their steps, then stop the daemons; a step
        that outlives them (slurmstepd keeps a job going without slurmd) is killed."""
        if self.processes.get("slurmctld") is not None and self.processes["slurmctld"].poll() is None:
            self.cancel_all()
            deadline = time.monotonic() + 20
            while not self._queue_drained() and time.monotonic() < deadline:
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)
        self._kill_leftover_steps()
        shutil.rmtree(self.folder, ignore_errors=True)

    def step_processes(self) -> list:
        """This cluster's slurmstepd and slurmscriptd processes (each holds a file of its
        folder open) and what they run."""
        import psutil

        found = []
        for process in psutil.process_iter(["name"]):
            if not (process.info["name"] or "").startswith(("slurmstepd", "slurmscriptd")):
                continue
            with contextlib.suppress(psutil.Error, OSError):
                fd_dir = f"/proc/{process.pid}/fd"
                targets = []
                for fd in os.listdir(fd_dir):
                    with contextlib.suppress(OSError):
                        targets.append(os.readlink(os.path.join(fd_dir, fd)))
                if any(target.startswith(str(self.folder)) for target in targets):
                    found += [process, *process.children(recursive=True)]
        return found

    def _kill_leftover_steps(self) -> None:
        import psutil

        for process in self.step_processes():
            with contextlib.suppress(psutil.Error):
                process.kill()
