"""The supervisor shim: starts one run's command, waits for it, records how it ended.

The engine starts ``python -I -S engine/shim.py RUN_DIR [OPTION...] -- COMMAND [ARG...]``
in a new session with the run's cwd, environment and log file. The shim outlives the
engine, so a run survives an engine restart and its exit status is still recorded:

* ``RUN_DIR/shim.json`` ``{"shim_pid", "child_pid", "started_at", "cores", "cgroup",
  "box_oom_kills"}``, once the command runs;
* ``RUN_DIR/exit.json`` ``{"exit_code", "signal", "ended_at", "oom_kills",
  "peak_mem_bytes", "cgroup_removed", "box_oom_kills"}``, once it has ended. A death by
  signal N is ``exit_code = -N`` (Python's ``Popen`` convention) with ``signal`` its name.

Options, each applied to the shim itself before the command starts so the command and
everything it forks inherit them from their first instruction:

* ``--cores 0,1``: pin to these cores (``cores`` records what was applied, else null);
* ``--cgroup PATH``: join this cgroup (made by the engine with the run's memory limit);
  ``cgroup`` records it when joined. ``--cgroup-origin DIR`` is the group to go back to
  once the command is started: the shim then is no OOM victim, and can empty and remove
  the run's group when the run ends (``cgroup_removed``), after reading how many of its
  processes the OOM killer took (``oom_kills``) and its memory high-water mark
  (``peak_mem_bytes``; page cache included, as the kernel charges it).

In shared mode (``--user UID --gid GID --groups G,... --umask MASK``) the shim starts as
root and the run as its user. Every file the shim makes or writes (the run folder, the log
``--log PATH``, ``--mkdir DIR``, the two records) it does with the user's identity as its
effective one, so a symbolic link the user planted leads nowhere the user could not write
anyway; it takes root back only to spawn the command (which sets its own uid, gid, groups
and umask before it execs) and for the cgroup. The user cannot signal or trace it (its real
uid stays root). It enters ``--cwd DIR`` as the user, and reads the run's environment as
JSON from ``--env-fd N``: its own environment is kept clean, because an ``LD_PRELOAD`` in
a user's environment would otherwise be loaded by a root process.

``--forward TERM,USR1,...``: these signals, sent to the shim, are passed on to the command's
process group instead of being shrugged off. Under a batch scheduler (Slurm) the shim is
the job's script, and the scheduler's warning and stop signals reach the script only.

``box_oom_kills`` is the box-wide ``oom_kill`` count of ``/proc/vmstat`` at launch and at
the end: without a cgroup, a rise is the only hint that a SIGKILL came from the kernel.

The shim's own exit status is the command's, or 128 + N for a death by signal N.

Startup cost matters (it is paid on every launch), so this module imports only cheap
stdlib modules and nothing from ``engine``; it is run by path in isolated mode so a
user's ``engine.py``, ``PYTHONPATH`` or ``PYTHONHOME`` cannot change which code runs.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

SHIM_FILE = "shim.json"
EXIT_FILE = "exit.json"
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
USAGE_EXIT = 2
USAGE = (
    "usage: python -I -S engine/shim.py RUN_DIR [--cores N,...] [--cgroup PATH [--cgroup-origin DIR]]"
    " [--forward SIG,...] [--user UID --gid GID --groups G,... --umask MASK --log PATH --cwd DIR --env-fd N [--mkdir DIR]]"
    " -- COMMAND [ARG...]"
)

RECORD_RETRY_DELAYS_S = (0.25, 1.0, 3.0)
"""Waits between attempts to write ``exit.json``: a full disk may get space back."""

CGROUP_EMPTY_TIMEOUT_S = 10.0
"""How long the run's killed processes get to leave its cgroup: a process dies only once
its memory is freed, which takes a while for tens of gigabytes."""

VMSTAT_PATH = "/proc/vmstat"

_SHIELDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_DEFAULT_IN_CHILD = (*_SHIELDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ)
"""Python ignores SIGPIPE and SIGXFSZ at startup, and an ignored signal stays ignored
across exec: the command must start with every disposition at its default."""


_forward_to: list[int] = []
"""The command's process group once it runs (empty before): where forwarded signals go."""
_forward_pending: list[int] = []
"""Forwarded signals that came before the command existed: delivered once it does."""


def _forward(signum: int, frame: object) -> None:
    if not _forward_to:
        _forward_pending.append(signum)
        return
    try:
        os.killpg(_forward_to[0], signum)
    except OSError:
        pass


def _start_forwarding(child_pid: int) -> None:
    _forward_to.append(child_pid)
    while _forward_pending:
        _forward(_forward_pending.pop(0), None)


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


_JSON_ESCAPES = {
    **{code: f"\\u{code:04x}" for code in (*range(0x20), 0x7F)},
    **{ord(char): "\\" + short for char, short in zip("\\\"\b\f\n\r\t", "\\\"bfnrt")},
}


def to_json(value: object) -> str:
    """``json.dumps(value)`` for what the shim records (None, bools, numbers, text, lists,
    dicts). The json module would import ``re`` and ``enum``: two thirds of the shim's
    start-up, which every run waits for before its first instruction."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value) if value - value == 0 else "null"  # inf and nan are not JSON
    if isinstance(value, str):
        if value.isascii():
            return '"' + value.translate(_JSON_ESCAPES) + '"'
        # As json.dumps: non-ASCII escaped (lone surrogates from odd paths too), so the
        # record is plain ASCII.
        return '"' + "".join(_json_char(char) for char in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_json(str(key))}: {to_json(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot record a {type(value).__name__}")


def _json_char(char: str) -> str:
    code = ord(char)
    if code < 0x80:
        return char.translate(_JSON_ESCAPES)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def write_json_atomically(path: str, data: dict, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the whole new one,
    and, if ``durable``, the new one survives a power cut. Raises :class:`OSError`."""
    directory = os.path.dirname(path) or "."
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    payload = to_json(data).encode()
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            written = 0
            while written < len(payload):
                written += os.write(fd, payload[written:])
            if durable:
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
    if not durable:
        return
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def record_exit(
    run_dir: str, exit_code: int | None, signal_text: str | None, ended_at: float, facts: dict | None = None
) -> bool:
    """Write ``exit.json`` (with ``facts`` added), retrying; on failure the log keeps the
    status. Returns success."""
    path = os.path.join(run_dir, EXIT_FILE)
    record = {"exit_code": exit_code, "signal": signal_text, "ended_at": ended_at, **(facts or {})}
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


def record_start(run_dir: str, child_pid: int | None, started_at: float, facts: dict | None = None) -> None:
    path = os.path.join(run_dir, SHIM_FILE)
    try:
        record = {"shim_pid": os.getpid(), "child_pid": child_pid, "started_at": started_at, **(facts or {})}
        # Not fsync'd: it describes live processes, which a power cut ends anyway, and an
        # engine that crashed reads it from the page cache. Two fsyncs were most of a
        # short run's cost. exit.json, which outlives the processes, stays durable.
        write_json_atomically(path, record, durable=False)
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


# -- pinning and the box's OOM count ---------------------------------------------------


def pin_to(cores: tuple[int, ...]) -> tuple[int, ...] | None:
    """Pin the shim, and so the command it starts, to ``cores``; ``None`` if refused."""
    try:
        os.sched_setaffinity(0, cores)
    except OSError as error:
        say(f"cannot pin the run to cores {','.join(map(str, cores))} ({error.strerror}); it runs unpinned")
        return None
    return cores


def parse_oom_kill(data: bytes) -> int | None:
    """The ``oom_kill N`` count in ``/proc/vmstat``, ``memory.events`` (cgroup v2) or
    ``memory.oom_control`` (cgroup v1); ``None`` when absent."""
    for line in data.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == b"oom_kill":
            try:
                return int(fields[1])
            except ValueError:
                return None
    return None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


def read_box_oom_kills(path: str = VMSTAT_PATH) -> int | None:
    data = _read_bytes(path)
    return None if data is None else parse_oom_kill(data)


# -- the run's cgroup --------------------------------------------------------------------


def _move_self(group: str) -> str | None:
    """Move the shim into ``group``; the error text when the kernel refuses."""
    try:
        fd = os.open(os.path.join(group, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")  # 0: the writer itself
        finally:
            os.close(fd)
    except OSError as error:
        return error.strerror or str(error)
    return None


def join_cgroup(path: str) -> bool:
    problem = _move_self(path)
    if problem is not None:
        say(f"cannot join the run's cgroup {path} ({problem}); its memory envelope is enforced by sampling only")
        return False
    return True


def leave_cgroup(path: str, origin: str) -> bool:
    problem = _move_self(origin)
    if problem is not None:
        say(f"cannot leave the run's cgroup {path} for {origin} ({problem}); it is removed once the shim exits")
        return False
    return True


def cgroup_pids(path: str) -> set[int] | None:
    """The processes in the group; ``None`` when it cannot be read (gone)."""
    data = _read_bytes(os.path.join(path, "cgroup.procs"))
    if data is None:
        return None
    return {int(field) for field in data.split() if field.isdigit()}


def empty_cgroup(path: str, timeout_s: float = CGROUP_EMPTY_TIMEOUT_S) -> bool:
    """Kill every process left in the group (a daemon the run started with ``setsid``
    escapes the process group, not the cgroup) and wait for them to leave it."""
    deadline = time.monotonic() + timeout_s
    me = os.getpid()
    while True:
        pids = cgroup_pids(path)
        if pids is None:
            return True
        pids.discard(me)  # a shim that could not leave stays: the engine cleans up later
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def cgroup_oom_kills(path: str) -> int | None:
    for name in ("memory.events", "memory.oom_control"):
        data = _read_bytes(os.path.join(path, name))
        if data is not None:
            return parse_oom_kill(data)
    return None


def cgroup_peak_bytes(path: str) -> int | None:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        data = _read_bytes(os.path.join(path, name))
        if data is not None:
            try:
                return int(data.split()[0])
            except (ValueError, IndexError):
                return None
    return None


def remove_cgroup(path: str, timeout_s: float = CGROUP_EMPTY_TIMEOUT_S) -> bool:
    """Remove the (emptied) group; a group lingers busy for a moment after its last
    process is reaped, hence the retries."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
        time.sleep(0.02)


def close_cgroup(path: str, *, remove: bool) -> dict:
    """Empty the run's group, read what it recorded, and remove it if ``remove``."""
    emptied = empty_cgroup(path)
    facts = {"oom_kills": cgroup_oom_kills(path), "peak_mem_bytes": cgroup_peak_bytes(path)}
    removed = remove and emptied and remove_cgroup(path)
    if remove and not removed:
        say(f"cannot remove the run's cgroup {path}; it is retried when the engine sees the run end")
    facts["cgroup_removed"] = removed
    return facts


# -- shared mode: the run's user ----------------------------------------------------------


class Identity:
    """Who the run is (shared mode), and the switches between that and root."""

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...], umask: int) -> None:
        self.uid, self.gid, self.groups, self.umask = uid, gid, groups, umask

    def act_as_user(self) -> None:
        """The user's identity for every permission check; root stays the real and saved
        uid, so root can be taken back and the user cannot signal or trace the shim."""
        os.setgroups(list(self.groups))
        os.setegid(self.gid)
        os.seteuid(self.uid)

    def act_as_root(self) -> None:
        os.seteuid(0)
        os.setegid(0)


class _AsRoot:
    """``with _AsRoot(identity):`` root for the block, the user again after it; nothing
    without an identity (the shim is then already whoever it should be)."""

    def __init__(self, identity: Identity | None) -> None:
        self.identity = identity

    def __enter__(self) -> None:
        if self.identity is not None:
            self.identity.act_as_root()

    def __exit__(self, *exc: object) -> None:
        if self.identity is not None:
            self.identity.act_as_user()


def read_env(fd: int) -> dict:
    """The run's environment, sent by the engine as one JSON object on ``fd``."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    import json  # only in shared mode: the shim keeps its start-up light otherwise

    env = json.loads(b"".join(chunks))
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("the environment must map names to strings")
    return env


def prepare_as_user(run_dir: str, log: str | None, cwd: str | None, make_dirs: tuple[str, ...]) -> str | None:
    """As the user: the run folder, the log on stdout and stderr, the checkpoint folder and
    the working directory. Returns what went wrong, or ``None``."""
    try:
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        for name in (SHIM_FILE, EXIT_FILE):  # left over from an earlier attempt
            try:
                os.unlink(os.path.join(run_dir, name))
            except FileNotFoundError:
                pass
    except OSError as error:
        return f"cannot prepare the run folder {run_dir}: {error.strerror}"
    if log is not None:
        try:
            os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            return f"cannot open the log {log}: {error.strerror}"
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    for folder in make_dirs:
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        except OSError as error:  # the run's own business: it may not even use checkpoints
            say(f"cannot make {folder}: {error.strerror}")
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as error:
            return f"cannot enter the working directory {cwd} as its user: {error.strerror}"
    return None


def spawn_as(command: list[str], identity: Identity, env: dict) -> int:
    """Start ``command`` as the user, in a process group of its own; raises OSError."""
    import subprocess  # imported by run() already, while root could read it

    with _AsRoot(identity):
        child = subprocess.Popen(
            command, env=env, user=identity.uid, group=identity.gid, extra_groups=list(identity.groups),
            umask=identity.umask, process_group=0, restore_signals=True,
        )
    return child.pid  # waited for with waitpid, like a posix_spawn child; no other Popen ever reaps it


# -- the run -------------------------------------------------------------------------------


def run(
    run_dir: str,
    command: list[str],
    *,
    cores: tuple[int, ...] | None = None,
    cgroup: str | None = None,
    cgroup_origin: str | None = None,
    identity: Identity | None = None,
    log: str | None = None,
    cwd: str | None = None,
    make_dirs: tuple[str, ...] = (),
    env_fd: int | None = None,
    forward: tuple[int, ...] = (),
) -> int:
    """Start ``command``, wait for it, record the outcome; returns the shim's exit status."""
    for signum in _SHIELDED_SIGNALS:
        signal.signal(signum, _ignore)
    for signum in forward:
        signal.signal(signum, _forward)
    started_at = time.time()
    env = os.environ
    if env_fd is not None:
        try:
            env = read_env(env_fd)
        except (OSError, ValueError) as error:
            say(f"cannot read the run's environment: {error}")
            return USAGE_EXIT
        _stdin_from_devnull()
    pinned = pin_to(cores) if cores else None
    joined = join_cgroup(cgroup) if cgroup else False
    start_facts = {
        "cores": list(pinned) if pinned else None,
        "cgroup": cgroup if joined else None,
        "box_oom_kills": read_box_oom_kills(),
    }
    problem = None
    if identity is not None:
        # Only in shared mode: it costs more than the rest of the shim. Imported now, as
        # root: the user may not be able to read the interpreter's library.
        import subprocess  # noqa: F401

        identity.act_as_user()
        problem = prepare_as_user(run_dir, log, cwd, make_dirs)
    try:
        if problem is not None:
            raise PermissionError(errno.EACCES, problem)
        if identity is not None:
            child_pid = spawn_as(command, identity, env)
        else:
            # Its own process group (pgid = its pid): the engine signals the command and all
            # its descendants with one killpg, and the shim stays out of the blast.
            child_pid = os.posix_spawnp(
                command[0], command, env, setpgroup=0, setsigdef=_DEFAULT_IN_CHILD, setsigmask=()
            )
    except OSError as error:
        say(problem or f"cannot start {command[0]}: {error.strerror}")
        exit_code = EXIT_NOT_FOUND if error.errno in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE
        with _AsRoot(identity):
            left = joined and cgroup_origin is not None and leave_cgroup(cgroup, cgroup_origin)
        record_start(run_dir, None, started_at, start_facts)
        with _AsRoot(identity):
            end_facts = close_cgroup(cgroup, remove=left) if joined else {}
        record_exit(run_dir, exit_code, None, time.time(), {**end_facts, "box_oom_kills": read_box_oom_kills()})
        return exit_code
    with _AsRoot(identity):
        left = joined and cgroup_origin is not None and leave_cgroup(cgroup, cgroup_origin)
    record_start(run_dir, child_pid, started_at, start_facts)
    if forward:
        _start_forwarding(child_pid)
    exit_code = os.waitstatus_to_exitcode(wait_for(child_pid))
    ended_at = time.time()
    kill_stragglers(child_pid)
    with _AsRoot(identity):
        end_facts = close_cgroup(cgroup, remove=left) if joined else {}
    end_facts["box_oom_kills"] = read_box_oom_kills()
    signal_text = signal_name(-exit_code) if exit_code < 0 else None
    record_exit(run_dir, exit_code, signal_text, ended_at, end_facts)
    return 128 - exit_code if exit_code < 0 else exit_code


def parse_args(args: list[str]) -> tuple[str, dict, list[str]]:
    """``RUN_DIR [OPTION...] -- COMMAND...`` as ``(run_dir, options for run(), command)``.

    Raises:
        ValueError: the line is malformed; the message says how.
    """
    if "--" not in args:
        raise ValueError("missing -- before the command")
    separator = args.index("--")
    head, command = args[:separator], args[separator + 1 :]
    if not head or head[0].startswith("--"):
        raise ValueError("missing RUN_DIR")
    if not command:
        raise ValueError("missing the command after --")
    options: dict = {}
    identity: dict = {}
    rest = head[1:]
    if len(rest) % 2:
        raise ValueError(f"option {rest[-1]} needs a value")
    for name, value in zip(rest[::2], rest[1::2]):
        if name == "--cores":
            try:
                cores = tuple(int(core) for core in value.split(","))
            except ValueError:
                raise ValueError(f"--cores takes core numbers such as 0,1; got {value!r}") from None
            if not cores or min(cores) < 0:
                raise ValueError(f"--cores takes core numbers such as 0,1; got {value!r}")
            options["cores"] = cores
        elif name == "--cgroup":
            options["cgroup"] = value
        elif name == "--cgroup-origin":
            options["cgroup_origin"] = value
        elif name in ("--user", "--gid", "--umask", "--env-fd"):
            try:
                number = int(value, 8 if name == "--umask" else 10)
            except ValueError:
                raise ValueError(f"{name} takes a number; got {value!r}") from None
            if number < 0:
                raise ValueError(f"{name} takes a number; got {value!r}")
            identity[name] = number
        elif name == "--groups":
            try:
                identity[name] = tuple(int(group) for group in value.split(",") if group)
            except ValueError:
                raise ValueError(f"--groups takes group ids such as 100,27; got {value!r}") from None
        elif name in ("--log", "--cwd"):
            options[name[2:]] = value
        elif name == "--forward":
            try:
                options["forward"] = tuple(
                    int(getattr(signal, f"SIG{part.upper().removeprefix('SIG')}")) for part in value.split(",")
                )
            except AttributeError:
                raise ValueError(f"--forward takes signal names such as TERM,USR1; got {value!r}") from None
        elif name == "--mkdir":
            options["make_dirs"] = (*options.get("make_dirs", ()), value)
        else:
            raise ValueError(f"unknown option {name}")
    if "--env-fd" in identity:
        options["env_fd"] = identity.pop("--env-fd")
    if identity:
        missing = [name for name in ("--user", "--gid", "--groups", "--umask") if name not in identity]
        if missing:
            raise ValueError(f"--user needs {', '.join(missing)} too")
        options["identity"] = Identity(identity["--user"], identity["--gid"], identity["--groups"],
                                       identity["--umask"])
    return head[0], options, command


def _stdin_from_devnull() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        run_dir, options, command = parse_args(args)
    except ValueError as error:
        say(f"{error}; {USAGE}")
        return USAGE_EXIT
    return run(run_dir, command, **options)


if __name__ == "__main__":
    sys.exit(main())
