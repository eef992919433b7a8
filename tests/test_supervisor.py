"""Process supervision with real processes: the shim, the local launcher, adoption."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from engine import shim
from engine.launcher import (
    FOLLOWING_CHILD,
    NEVER_STARTED,
    SHIM_DIED,
    SHIM_PATH,
    Launched,
    LaunchError,
    LocalLauncher,
    Observation,
    is_shim_cmdline,
    shim_command,
)
from engine.model import Run, RunState
from helpers import make_run, process_alive, wait_until

RUN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}

WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.05; done"
"""Shell that runs until the test creates ``go`` in the run's cwd: its end is in the test's hands."""

PYTHON_IGNORING_TERM = textwrap.dedent(
    """
    import signal, time
    signal.signal(signal.SIGTERM, lambda *_: print("ignored TERM", flush=True))
    print("ready", flush=True)
    while True:
        time.sleep(1)
    """
)


class Sessions:
    """Every session a test started (each shim leads one): all are killed at teardown."""

    def __init__(self) -> None:
        self.ids: set[int] = set()

    def add(self, session_id: int) -> None:
        self.ids.add(session_id)

    def members(self) -> list[int]:
        found = []
        for pid in psutil.pids():
            try:
                if os.getsid(pid) in self.ids:
                    found.append(pid)
            except OSError:
                continue
        return found

    def kill_all(self) -> None:
        for pid in self.members():
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not any(process_alive(pid) for pid in self.members()),
            message="test processes survived SIGKILL",
        )


@pytest.fixture
def sessions():
    tracked = Sessions()
    yield tracked
    tracked.kill_all()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


class TrackedLauncher(LocalLauncher):
    """A launcher whose every launch is cleaned up after the test."""

    def __init__(self, runs_dir: Path, sessions: Sessions) -> None:
        super().__init__(runs_dir)
        self.sessions = sessions

    def launch(self, run: Run, env, **options) -> Launched:
        launched = super().launch(run, env, **options)
        self.sessions.add(launched.shim_pid)
        return launched


@pytest.fixture
def launcher(home: Path, sessions: Sessions) -> TrackedLauncher:
    return TrackedLauncher(home / "runs", sessions)


def started(run: Run, launched: Launched) -> Run:
    """The run as the engine records it once launched."""
    return dataclasses.replace(
        run, state=RunState.RUNNING, shim_pid=launched.shim_pid, shim_started_at=launched.shim_started_at
    )


def start(launcher: LocalLauncher, home: Path, argv: list[str]) -> Run:
    run = make_run(home, argv)
    return started(run, launcher.launch(run, RUN_ENV))


def log_text(run: Run) -> str:
    path = Path(run.log_path)
    return path.read_text() if path.exists() else ""


def wait_for_state(launcher: LocalLauncher, run: Run, state: str) -> Observation:
    last: list[Observation] = []

    def reached() -> Observation | None:
        last[:] = [launcher.observe(run)]
        return last[0] if last[0].state == state else None

    return wait_until(reached, message=lambda: f"run never became {state}; last seen {last}")


def wait_for_child(launcher: LocalLauncher, run: Run) -> Observation:
    """The running observation once the shim has started the command."""
    return wait_until(
        lambda: (seen := launcher.observe(run)).state == "running" and seen.child_pid is not None and seen,
        message="the shim never recorded its child",
    )


def read_record(run_dir: str | Path, name: str) -> dict:
    return json.loads((Path(run_dir) / name).read_text())


# -- how runs end ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_recorded_and_output_lands_in_the_log(launcher, home, code):
    run = start(launcher, home, ["sh", "-c", f"echo to-stdout; echo to-stderr >&2; exit {code}"])

    seen = wait_for_state(launcher, run, "exited")

    assert (seen.exit_code, seen.signal) == (code, None)
    assert seen.ended_at is not None and seen.child_pid is not None
    record = read_record(run.run_dir, shim.EXIT_FILE)
    assert (record["exit_code"], record["signal"]) == (code, None)
    assert read_record(run.run_dir, shim.SHIM_FILE)["shim_pid"] == run.shim_pid
    assert "to-stdout" in log_text(run) and "to-stderr" in log_text(run)


def test_command_not_found_exits_127_with_one_line_in_the_log(launcher, home):
    run = start(launcher, home, ["runyard-no-such-command-xyz", "--flag"])

    seen = wait_for_state(launcher, run, "exited")

    assert seen.exit_code == shim.EXIT_NOT_FOUND
    assert log_text(run).splitlines() == [
        "runyard: cannot start runyard-no-such-command-xyz: No such file or directory"
    ]


def test_command_not_executable_exits_126(launcher, home):
    script = home / "train.sh"
    home.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    run = start(launcher, home, [str(script)])

    seen = wait_for_state(launcher, run, "exited")

    assert seen.exit_code == shim.EXIT_NOT_EXECUTABLE
    assert log_text(run).splitlines() == [f"runyard: cannot start {script}: Permission denied"]


def test_the_runs_python_settings_and_cwd_cannot_replace_the_shim(launcher, home):
    # Training repos often have an engine.py at the top (DETR, DeiT, MAE do); with
    # PYTHONPATH=. it would shadow runyard's engine package in the shim.
    home.mkdir(parents=True)
    (home / "engine.py").write_text("raise SystemExit('the shim imported the run\\'s engine.py')\n")
    env = {**RUN_ENV, "PYTHONPATH": str(home), "PYTHONHOME": str(home / "no-such-python")}
    run = make_run(home, ["sh", "-c", "echo ran"])
    run = started(run, launcher.launch(run, env))

    seen = wait_for_state(launcher, run, "exited")

    assert (seen.exit_code, log_text(run)) == (0, "ran\n")


def test_command_gets_its_env_no_stdin_default_signals_and_its_own_group(launcher, home):
    script = textwrap.dedent(
        """
        echo "mark=$RUNYARD_TEST_MARK"
        echo "stdin=$(readlink /proc/$$/fd/0)"
        grep SigIgn /proc/$$/status
        echo "pgid=$(cut -d' ' -f5 /proc/$$/stat)"
        """
    )
    run = make_run(home, ["sh", "-c", script])
    run = started(run, launcher.launch(run, {**RUN_ENV, "RUNYARD_TEST_MARK": "x42"}))

    seen = wait_for_state(launcher, run, "exited")

    assert seen.exit_code == 0, log_text(run)
    lines = dict(line.replace(":", "=", 1).split("=", 1) for line in log_text(run).splitlines())
    assert lines["mark"] == "x42"
    assert lines["stdin"] == "/dev/null"
    ignored = int(lines["SigIgn"].strip(), 16)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), f"{signum!r} is ignored in the run"
    assert int(lines["pgid"]) == seen.child_pid


# -- launch failures --------------------------------------------------------------------


def test_missing_cwd_is_a_launch_error(launcher, home, tmp_path):
    run = make_run(home, ["true"], cwd=tmp_path / "gone")

    with pytest.raises(LaunchError) as caught:
        launcher.launch(run, RUN_ENV)

    assert str(caught.value) == f"cwd {tmp_path / 'gone'} does not exist"
    assert not (Path(run.run_dir) / shim.SHIM_FILE).exists()


def test_unwritable_log_is_a_launch_error(launcher, home):
    run = make_run(home, ["true"])
    blocker = home / "not-a-dir"
    blocker.write_text("")
    run = dataclasses.replace(run, log_path=str(blocker / "output.log"))

    with pytest.raises(LaunchError) as caught:
        launcher.launch(run, RUN_ENV)

    assert str(caught.value).startswith(f"cannot open the log {blocker / 'output.log'}: ")
    assert "\n" not in str(caught.value)


# -- signals ----------------------------------------------------------------------------


def test_sigterm_ends_a_sleeping_run(launcher, home):
    run = start(launcher, home, ["sleep", "600"])
    wait_for_child(launcher, run)

    assert launcher.signal(run, signal.SIGTERM)
    seen = wait_for_state(launcher, run, "exited")

    assert (seen.exit_code, seen.signal) == (-signal.SIGTERM, "SIGTERM")
    assert read_record(run.run_dir, shim.EXIT_FILE)["signal"] == "SIGTERM"
    assert not launcher.signal(run, signal.SIGTERM), "signalled a run that has ended"


def test_sigkill_ends_a_run_that_ignores_sigterm_and_the_shim_records_it(launcher, home):
    run = start(launcher, home, [sys.executable, "-c", PYTHON_IGNORING_TERM])
    wait_until(lambda: "ready" in log_text(run))

    assert launcher.signal(run, signal.SIGTERM)
    wait_until(lambda: "ignored TERM" in log_text(run))
    assert launcher.observe(run).state == "running"

    assert launcher.signal(run, signal.SIGKILL)
    seen = wait_for_state(launcher, run, "exited")

    assert (seen.exit_code, seen.signal) == (-signal.SIGKILL, "SIGKILL")
    assert read_record(run.run_dir, shim.EXIT_FILE)["exit_code"] == -signal.SIGKILL


def test_grandchildren_share_the_run_group_and_die_with_it(launcher, home):
    run = start(launcher, home, ["sh", "-c", "sleep 600 & echo grandchild=$!; wait"])
    child_pid = wait_for_child(launcher, run).child_pid
    grandchild = int(wait_until(lambda: re.search(r"grandchild=(\d+)", log_text(run)))[1])

    assert os.getpgid(grandchild) == child_pid
    assert launcher.signal(run, signal.SIGTERM)

    wait_until(lambda: not process_alive(grandchild), message="the grandchild outlived a group signal")
    assert wait_for_state(launcher, run, "exited").signal == "SIGTERM"


def test_signal_uses_the_recorded_child_pid(launcher, home):
    run = start(launcher, home, ["sleep", "600"])
    seen = wait_for_child(launcher, run)
    recorded = dataclasses.replace(run, pid=seen.child_pid, pid_started_at=seen.child_started_at)

    assert launcher.signal(recorded, signal.SIGTERM)

    assert wait_for_state(launcher, recorded, "exited").signal == "SIGTERM"


# -- surviving the engine ---------------------------------------------------------------

LAUNCH_AND_EXIT = """
import dataclasses, json, os, sys
from engine.launcher import LocalLauncher
from engine.store import sql

conn = sql.connect(sys.argv[1])
run = sql.get_run(conn, int(sys.argv[2]))
launched = LocalLauncher(sys.argv[3]).launch(run, {"PATH": os.environ["PATH"]})
print(json.dumps(dataclasses.asdict(launched)))
"""


def test_a_run_outlives_the_process_that_launched_it(home, sessions):
    run = make_run(home, ["sh", "-c", WAIT_FOR_GO])
    done = subprocess.run(
        [sys.executable, "-c", LAUNCH_AND_EXIT, str(home / "runyard.db"), str(run.id), str(home / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    launched = Launched(**json.loads(done.stdout))
    sessions.add(launched.shim_pid)
    run = started(run, launched)
    adopter = LocalLauncher(home / "runs")

    seen = wait_for_child(adopter, run)
    assert seen.detail == ""
    (home / "go").touch()

    assert wait_for_state(adopter, run, "exited").exit_code == 0


def test_a_run_without_a_recorded_shim_pid_is_adopted_from_shim_json(launcher, home):
    run = start(launcher, home, ["sleep", "600"])
    wait_for_child(launcher, run)
    unrecorded = dataclasses.replace(run, shim_pid=None, shim_started_at=None)

    seen = LocalLauncher(home / "runs").observe(unrecorded)

    assert seen.state == "running"
    assert seen.shim_pid == run.shim_pid
    assert seen.shim_started_at == pytest.approx(run.shim_started_at, abs=2)


def test_a_shim_without_shim_json_is_found_by_scanning(home, sessions):
    run = make_run(home, ["sleep", "600"])
    run_dir = Path(run.run_dir)
    (run_dir / shim.SHIM_FILE).mkdir(parents=True)  # the shim cannot record itself
    with open(run.log_path, "ab") as log:
        shim_process = subprocess.Popen(
            shim_command(run_dir, run.argv),
            cwd=home,
            env=RUN_ENV,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    sessions.add(shim_process.pid)
    wait_until(lambda: "cannot record the run's process" in log_text(run))

    seen = LocalLauncher(home / "runs").observe(run)

    assert (seen.state, seen.shim_pid) == ("running", shim_process.pid)


def test_a_run_that_never_started_is_lost(home):
    run = make_run(home, ["true"])

    seen = LocalLauncher(home / "runs").observe(dataclasses.replace(run, state=RunState.RUNNING))

    assert (seen.state, seen.detail) == ("lost", NEVER_STARTED)


@pytest.mark.parametrize("observer", ["same launcher", "restarted engine"])
def test_killed_shim_run_is_followed_through_its_child_then_lost(launcher, home, observer):
    run = start(launcher, home, ["sleep", "600"])
    seen = wait_for_child(launcher, run)
    run = dataclasses.replace(run, pid=seen.child_pid, pid_started_at=seen.child_started_at)
    watcher = launcher if observer == "same launcher" else LocalLauncher(home / "runs")

    os.kill(run.shim_pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(run.shim_pid))

    seen = watcher.observe(run)
    assert (seen.state, seen.child_pid, seen.detail) == ("running", run.pid, FOLLOWING_CHILD)
    assert watcher.signal(run, signal.SIGTERM)

    seen = wait_for_state(watcher, run, "lost")
    assert seen.detail == SHIM_DIED
    assert not (Path(run.run_dir) / shim.EXIT_FILE).exists()


def test_a_reused_pid_is_not_mistaken_for_the_run(home, sessions):
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)
    sessions.add(stranger.pid)
    born = psutil.Process(stranger.pid).create_time()
    run = dataclasses.replace(
        make_run(home, ["sleep", "600"]),
        state=RunState.RUNNING,
        shim_pid=stranger.pid,
        shim_started_at=born - 3600,
        pid=stranger.pid,
        pid_started_at=born - 3600,
    )
    watcher = LocalLauncher(home / "runs")

    assert watcher.observe(run).state == "lost"
    assert not watcher.signal(run, signal.SIGKILL)
    assert watcher.exit_fd(run) is None
    assert process_alive(stranger.pid)
    stranger.kill()
    stranger.wait()


def test_an_unwritable_exit_record_is_logged_and_recovered_from_the_shim_status(launcher, home):
    run = start(launcher, home, ["sh", "-c", f"{WAIT_FOR_GO}; exit 3"])
    wait_for_child(launcher, run)
    (Path(run.run_dir) / shim.EXIT_FILE).mkdir()  # exit.json cannot replace a directory

    (home / "go").touch()
    seen = wait_for_state(launcher, run, "exited")

    assert seen.exit_code == 3
    assert "could not write exit.json" in seen.detail
    assert "gave up recording the exit status" in log_text(run)
    assert "run ended with exit code 3" in log_text(run)
    assert LocalLauncher(home / "runs").observe(run).state == "lost"


# -- waking the event loop --------------------------------------------------------------


def test_exit_fd_becomes_readable_when_the_run_ends(launcher, home):
    run = start(launcher, home, ["sh", "-c", WAIT_FOR_GO])
    wait_for_child(launcher, run)
    fd = launcher.exit_fd(run)
    assert fd is not None
    try:
        assert select.select([fd], [], [], 0)[0] == [], "readable before the run could end"
        (home / "go").touch()
        assert select.select([fd], [], [], 20)[0] == [fd]
    finally:
        os.close(fd)
    assert launcher.observe(run).state == "exited"
    assert launcher.exit_fd(run) is None


def test_exit_fd_follows_the_child_when_the_shim_is_gone(launcher, home):
    run = start(launcher, home, ["sh", "-c", WAIT_FOR_GO])
    wait_for_child(launcher, run)
    os.kill(run.shim_pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(run.shim_pid))
    fd = launcher.exit_fd(run)
    assert fd is not None
    try:
        assert select.select([fd], [], [], 0)[0] == [], "readable before the run could end"
        (home / "go").touch()
        assert select.select([fd], [], [], 20)[0] == [fd]
    finally:
        os.close(fd)
    assert wait_for_state(launcher, run, "lost").detail == SHIM_DIED


# -- the shim's own budget ----------------------------------------------------------------


def test_the_shim_imports_nothing_heavy(tmp_path):
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(SHIM_PATH), str(tmp_path), "--", "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    imported = {
        line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    }

    assert done.returncode == 0, done.stderr
    heavy = {"subprocess", "psutil", "threading", "asyncio", "sqlite3", "pathlib", "engine"}
    assert not imported & heavy
    assert read_record(tmp_path, shim.EXIT_FILE)["exit_code"] == 0


# -- the shim's command line ------------------------------------------------------------


def test_a_shim_command_line_with_options_is_recognised_by_its_run_dir(tmp_path):
    line = shim_command(
        tmp_path, ["python", "train.py", "--", "x"], cores=[0, 1], cgroup="/cg/run", cgroup_origin="/cg"
    )

    assert line[line.index(str(SHIM_PATH)) + 1 :] == [
        str(tmp_path), "--cores", "0,1", "--cgroup", "/cg/run", "--cgroup-origin", "/cg", "--",
        "python", "train.py", "--", "x",
    ]
    assert is_shim_cmdline(line, tmp_path)
    assert not is_shim_cmdline(line, tmp_path / "other")
    assert not is_shim_cmdline(["python", "train.py", str(tmp_path), "--"], tmp_path)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["RUN_DIR", "true"], "missing -- before the command"),
        (["--", "true"], "missing RUN_DIR"),
        (["RUN_DIR", "--"], "missing the command after --"),
        (["RUN_DIR", "--cores", "--", "true"], "option --cores needs a value"),
        (["RUN_DIR", "--cores", "a,b", "--", "true"], "--cores takes core numbers such as 0,1; got 'a,b'"),
        (["RUN_DIR", "--cores", "-1", "--", "true"], "--cores takes core numbers such as 0,1; got '-1'"),
        (["RUN_DIR", "--nice", "5", "--", "true"], "unknown option --nice"),
    ],
)
def test_a_malformed_shim_command_line_is_one_usage_line(tmp_path, args, problem):
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(SHIM_PATH), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )

    assert done.returncode == shim.USAGE_EXIT
    assert done.stderr == f"runyard: {problem}; {shim.USAGE}\n"
    assert list(tmp_path.iterdir()) == []


def test_the_shim_starts_without_json_or_re_and_from_its_cached_module(tmp_path):
    # Both cost more than the rest of the shim's start-up, which every run waits for.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(SHIM_PATH), str(tmp_path), "--", "true"],
        capture_output=True, text=True, timeout=120,
    )
    imported = {
        line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    }
    assert done.returncode == 0, done.stderr
    assert "shim" in imported and not imported & {"json", "re"}
    assert read_record(tmp_path, shim.EXIT_FILE)["exit_code"] == 0


def test_the_shims_records_read_as_json_dumps_writes_them():
    import json

    for value in [
        {"shim_pid": 12, "child_pid": None, "started_at": 1733160000.123456, "cores": [0, 1], "cgroup": "/cg/r",
         "box_oom_kills": 3},
        {"exit_code": -9, "signal": "SIGKILL", "ended_at": 1.5, "cgroup_removed": False, "peak_mem_bytes": 2**40},
        {"path": 'q"u\\o\n\t\x01\x7f', "wide": "é∂𝄞", "odd": "\udcff", "nested": [[], {}, (1,)]},
    ]:
        assert shim.to_json(value) == json.dumps(value)
    assert shim.to_json(float("inf")) == "null" and shim.to_json(float("nan")) == "null"
