"""What every benchmark module shares: statistics, timing, a throwaway runyard daemon,
and cleanup of every process a benchmark started.

Cleanup works by tag, not by name: every process the suite starts gets
``RUNYARD_BENCH_TAG=<this run's id>`` in its environment, which its children (runs, shims,
slurmstepd, tsp's job runners) inherit. At exit, every process still carrying this run's
tag is killed, and nothing else: other engineers' daemons and tests on the same box are
left alone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
TAG_VAR = "RUNYARD_BENCH_TAG"
TAG = uuid.uuid4().hex[:12]
SCRATCH = Path(tempfile.mkdtemp(prefix=f"ry-bench-{TAG}-", dir="/tmp"))

T = TypeVar("T")


def runyard_command() -> list[str]:
    """The console script users run, from the same environment as this Python."""
    script = Path(sys.executable).parent / "runyard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runyard.cli"]


RUNYARD = runyard_command()


# ------------------------------------------------------------------ statistics


def summary(values: Sequence[float], unit: str, *, scale: float = 1.0, digits: int = 2) -> dict[str, Any]:
    """Median, min and max of ``values`` times ``scale``, in ``unit``."""
    scaled = [value * scale for value in values]
    return {
        "median": round(statistics.median(scaled), digits),
        "min": round(min(scaled), digits),
        "max": round(max(scaled), digits),
        "n": len(scaled),
        "unit": unit,
    }


def single(value: float, unit: str, *, digits: int = 2) -> dict[str, Any]:
    return summary([value], unit, digits=digits)


def timed_process(command: Sequence[str], env: dict[str, str], **kwargs: Any) -> float:
    """Wall seconds of one process, from fork to reap."""
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - start


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def read_float(path: Path) -> float | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return float(text)
    except ValueError:
        return None  # half-written


# ------------------------------------------------------------------ processes


def tagged_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, TAG_VAR: TAG, **extra}
    # The suite's own Python first on PATH, so runs and peers find the same python3.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', os.defpath)}"
    return env


def tagged_pids() -> list[int]:
    """Processes whose environment carries this run's tag (not this process)."""
    marker = f"{TAG_VAR}={TAG}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry))
    return found


def kill_tagged() -> int:
    """SIGKILL every process this run started that is still alive; how many there were."""
    pids = tagged_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _cleanup() -> None:
    kill_tagged()
    shutil.rmtree(SCRATCH, ignore_errors=True)


atexit.register(_cleanup)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks and atexit still clean up."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def scratch_dir(name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=SCRATCH))
    return path


# ------------------------------------------------------------------ runyard


class RunyardDaemon:
    """A daemon on a throwaway home with an empty config (the defaults) and simulated GPUs."""

    def __init__(self, name: str, *, gpus: str = "8x80G", home: Path | None = None,
                 daemon_args: Sequence[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.home = home or scratch_dir(name)
        self.config = self.home.parent / f"{self.home.name}.toml"
        self.config.write_text("")
        self.env = tagged_env(RUNYARD_HOME=str(self.home), RUNYARD_CONFIG=str(self.config), **(env or {}))
        self.gpus = gpus
        self.daemon_args = list(daemon_args) if daemon_args is not None else ["--simulate-gpus", gpus]
        self.process: subprocess.Popen | None = None
        self.log_path = self.home.parent / f"{self.home.name}.daemon.log"

    @property
    def socket_path(self) -> Path:
        return self.home / "runyard.sock"

    def start(self, timeout: float = 60.0) -> RunyardDaemon:
        from engine.client import Client

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*RUNYARD, "--daemon", *self.daemon_args], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        client = Client(self.socket_path, timeout_s=5.0)

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"runyard daemon exited with {self.process.returncode}; see {self.log_path}")
            return client.is_alive()

        wait_for(ready, timeout, "the runyard daemon to answer", interval=0.02)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)

    def client(self, timeout_s: float = 60.0):
        from engine.client import Client

        return Client(self.socket_path, timeout_s=timeout_s)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*RUNYARD, *args], env=self.env, capture_output=True, text=True, check=check,
                              cwd=str(self.home))

    def __enter__(self) -> RunyardDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def runyard_daemon(name: str, **kwargs: Any) -> Iterator[RunyardDaemon]:
    daemon = RunyardDaemon(name, **kwargs)
    try:
        yield daemon.start()
    finally:
        daemon.stop()


def read_runs(home: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Read the runyard database directly (read-only), e.g. to wait for runs to end
    without loading the daemon with requests."""
    import sqlite3

    conn = sqlite3.connect(f"file:{home / 'runyard.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes and their reaped children, now."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def rss_bytes(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss
