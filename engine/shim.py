"""The supervisor shim: starts one run's command, waits for it, records how it ended.

The engine starts ``python -I -S engine/shim.py RUN_DIR -- COMMAND [ARG...]`` in a new
session with the run's cwd, environment and log file. The shim outlives the engine, so
a run survives an engine restart and its exit status is still recorded:

* ``RUN_DIR/shim.json`` ``{"shim_pid", "child_pid", "started_at"}``, once the command runs;
* ``RUN_DIR/exit.json`` ``{"exit_code", "signal", "ended_at"}``, once it has ended. A death
  by signal N is ``exit_code = -N`` (Python's ``Popen`` convention) with ``signal`` its name.

The shim's own exit status is the command's, or 128 + N for a death by signal N.

Startup cost matters (it is paid on every launch), so this module imports only cheap
stdlib modules and nothing from ``engine``; it is run by path in isolated mode so a
user's ``engine.py``, ``PYTHONPATH`` or ``PYTHONHOME`` cannot change which code runs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time

SHIM_FILE = "shim.json"
EXIT_FILE = "exit.json"
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
USAGE_EXIT = 2

RECORD_RETRY_DELAYS_S = (0.25, 1.0, 3.0)
"""Waits between attempts to write ``exit.json``: a full disk may get space back."""

_SHIELDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_DEFAULT_IN_CHILD = (*_SHIELDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ)
"""Python ignores SIGPIPE and SIGXFSZ at startup, and an ignored signal stays ignored
across exec: the command must start with every disposition at its default."""


def _ignore(signum: int, frame: object) -> None:
    # A handler rather than SIG_IGN: caught signals revert to default on exec, ignored
    # ones would be inherited by the command.
    pass


def say(line: str) -> None:
    """Write one line to the run's log (the shim's stderr); never fails."""
    try:
        os.write(2, f"runyard: {line}\n".encode(errors="replace"))
    except OSError:
        pass


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def write_json_atomically(path: str, data: dict) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the whole new one,
    and the new one survives a power cut. Raises :class:`OSError`."""
    directory = os.path.dirname(path) or "."
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    payload = json.dumps(data).encode()
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            written = 0
            while written < len(payload):
                written += os.write(fd, payload[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def record_exit(run_dir: str, exit_code: int | None, signal_text: str | None, ended_at: float) -> bool:
    """Write ``exit.json``, retrying; on failure the log keeps the status. Returns success."""
    path = os.path.join(run_dir, EXIT_FILE)
    record = {"exit_code": exit_code, "signal": signal_text, "ended_at": ended_at}
    status = f"signal {signal_text}" if signal_text else f"exit code {exit_code}"
    failed = False
    for delay_s in (*RECORD_RETRY_DELAYS_S, None):
        try:
            write_json_atomically(path, record)
        except OSError as error:
            if delay_s is None:
                say(f"gave up recording the exit status in {path} ({error.strerror}); run ended with {status}")
                return False
            say(f"cannot record the exit status in {path} ({error.strerror}); retrying in {delay_s:g}s")
            failed = True
            time.sleep(delay_s)
        else:
            if failed:
                say(f"recorded the exit status in {path} after all")
            return True
    return False


def record_start(run_dir: str, child_pid: int | None, started_at: float) -> None:
    path = os.path.join(run_dir, SHIM_FILE)
    try:
        record = {"shim_pid": os.getpid(), "child_pid": child_pid, "started_at": started_at}
        write_json_atomically(path, record)
    except OSError as error:
        # The run goes on: the engine can still follow the shim by its pid.
        say(f"cannot record the run's process in {path} ({error.strerror})")


def wait_for(pid: int) -> int:
    """The wait status of ``pid``, however many signals interrupt the wait."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return status
        except InterruptedError:
            continue


def kill_stragglers(pgid: int) -> None:
    """A run ends when its command ends. Processes it left in its group (DataLoader
    workers, a forgotten ``&``) would go on holding memory and GPUs that admission has
    already handed to the next run, so they go too, before the exit is recorded."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(run_dir: str, command: list[str]) -> int:
    """Start ``command``, wait for it, record the outcome; returns the shim's exit status."""
    for signum in _SHIELDED_SIGNALS:
        signal.signal(signum, _ignore)
    started_at = time.time()
    try:
        # Its own process group (pgid = its pid): the engine signals the command and all
        # its descendants with one killpg, and the shim stays out of the blast.
        child_pid = os.posix_spawnp(
            command[0], command, os.environ, setpgroup=0, setsigdef=_DEFAULT_IN_CHILD, setsigmask=()
        )
    except OSError as error:
        say(f"cannot start {command[0]}: {error.strerror}")
        exit_code = EXIT_NOT_FOUND if error.errno in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE
        record_start(run_dir, None, started_at)
        record_exit(run_dir, exit_code, None, time.time())
        return exit_code
    record_start(run_dir, child_pid, started_at)
    exit_code = os.waitstatus_to_exitcode(wait_for(child_pid))
    ended_at = time.time()
    kill_stragglers(child_pid)
    signal_text = signal_name(-exit_code) if exit_code < 0 else None
    record_exit(run_dir, exit_code, signal_text, ended_at)
    return 128 - exit_code if exit_code < 0 else exit_code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        say("usage: python -I -S engine/shim.py RUN_DIR -- COMMAND [ARG...]")
        return USAGE_EXIT
    return run(args[0], args[2:])


if __name__ == "__main__":
    sys.exit(main())
