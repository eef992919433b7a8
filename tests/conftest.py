"""Fixtures that run the real daemon and the real CLI as processes against a throwaway home."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

DEADLINE_S = 30.0


def poll_until(predicate, timeout: float = DEADLINE_S, interval: float = 0.05, message: str = "condition"):
    """Return the predicate's first truthy value; fail the test with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def kill_processes_of_home(home: Path) -> None:
    """Kill every process that runs with this RUNYARD_HOME in its environment: the daemon,
    shims and runs (they all inherit it), whatever state a test left them in."""
    victims = []
    for process in psutil.process_iter(["pid"]):
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get("RUNYARD_HOME") == str(home):
                victims.append(process)
        except (psutil.Error, OSError):
            continue
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)


@dataclass
class Yard:
    """A runyard home with helpers to run the CLI and the daemon against it."""

    home: Path
    daemon: subprocess.Popen | None = None
    daemon_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RUNYARD_HOME"] = str(self.home)
        env.pop("RUNYARD_SIMULATE_GPUS", None)
        env.pop("RUNYARD_SOCKET", None)
        # A developer's own config must not change what the tests see.
        env["RUNYARD_CONFIG"] = str(self.home / "empty-config.toml")
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, check: bool = True, cwd: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "runyard.cli", *args], env=self.env, capture_output=True, text=True,
            cwd=cwd or str(self.home), timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"runyard {' '.join(args)} -> {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    def submit(self, *args: str) -> int:
        return int(self.cli("submit", *args).stdout.strip().splitlines()[-1])

    def run(self, run_id: int) -> dict:
        return self.json("show", str(run_id))

    def wait_state(self, run_id: int, *states: str, timeout: float = DEADLINE_S) -> dict:
        seen: dict = {}

        def reached():
            seen.update(self.run(run_id))
            return seen["state"] in states and dict(seen)

        try:
            return poll_until(reached, timeout=timeout, interval=0.1, message=f"run {run_id} to reach {states}")
        except AssertionError as error:
            raise AssertionError(f"{error}; last seen {seen}; daemon log tail: {self.daemon_log()[-2000:]}") from None

    def start_daemon(self, *args: str) -> subprocess.Popen:
        self.daemon_args = list(args)
        log = open(self.home / "daemon.log", "ab")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "runyard.cli", "--daemon", *args], env=self.env, stdout=log, stderr=log,
            cwd=str(self.home),
        )
        log.close()
        poll_until(self._daemon_ready, message="the daemon to answer on its socket")
        return self.daemon

    def _daemon_ready(self) -> bool:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise AssertionError(f"daemon exited with {self.daemon.returncode}: {self.daemon_log()}")
        return self.cli("status", check=False).returncode == 0

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        self.daemon.wait(timeout=DEADLINE_S)
        self.daemon = None

    def daemon_log(self) -> str:
        path = self.home / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def yard() -> Iterator[Yard]:
    # A short path: a Unix socket's path must stay under about 100 bytes.
    home = Path(tempfile.mkdtemp(prefix="ry-", dir="/tmp"))
    (home / "empty-config.toml").write_text("")
    yard = Yard(home)
    try:
        yield yard
    finally:
        if yard.daemon is not None and yard.daemon.poll() is None:
            yard.daemon.terminate()
            try:
                yard.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                yard.daemon.kill()
        kill_processes_of_home(home)
        shutil.rmtree(home, ignore_errors=True)
