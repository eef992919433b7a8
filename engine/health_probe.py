"""Running a ``--health-cmd`` probe without ever blocking the engine's loop.

The probe runs as ``sh -c CMD`` (Docker's ``CMD-SHELL``) in a session of its own, with
the run's environment and folder. At its timeout the whole process group is killed, so
a probe that hangs (or forks something that hangs) neither stalls the engine nor leaves
a process behind. Whatever goes wrong, the answer is a :class:`ProbeResult`, never an
exception: a probe that cannot even start is a failed probe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass

OUTPUT_KEEP_CHARS = 2000
_OUTPUT_KEEP_BYTES = 4 * OUTPUT_KEEP_CHARS  # room for multi-byte characters
_DRAIN_AFTER_EXIT_S = 0.5
"""How long output may keep arriving after the shell exited (from something it left in
the background) before the leftovers are killed."""
_REAP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    """Exited 0 within its timeout."""
    exit_code: int | None
    """The shell's exit status (``-N`` for signal N); ``None`` if it never ran."""
    output: str
    """The last ~2000 characters of stdout and stderr together."""
    duration_s: float
    timed_out: bool

    def describe(self) -> str:
        """One line for a reason or a log: ``exit 1: disk not mounted``."""
        if self.timed_out:
            head = f"timed out after {self.duration_s:.1f}s"
        elif self.exit_code is None:
            head = "could not run"
        else:
            head = f"exit {self.exit_code}"
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return f"{head}: {lines[-1][:160]}" if lines else head


class _TailCollector(asyncio.Protocol):
    """Keeps the last bytes written to the pipe and says when it reached end of file."""

    def __init__(self, finished: asyncio.Future[None]) -> None:
        self.tail = bytearray()
        self.finished = finished

    def data_received(self, data: bytes) -> None:
        self.tail += data
        if len(self.tail) > _OUTPUT_KEEP_BYTES:
            del self.tail[:-_OUTPUT_KEEP_BYTES]

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def run_probe(
    cmd: str, *, env: dict[str, str], cwd: str, timeout_s: float, as_user: dict | None = None
) -> ProbeResult:
    """Run ``sh -c cmd`` and report how it went; never raises (bar cancellation).

    Args:
        cmd: the probe, as the user wrote it (shell syntax allowed).
        env: the complete environment of the probe: pass the run's, RUNYARD_* included.
        cwd: the folder to run in (the run's ``cwd``).
        timeout_s: after this long the probe's whole process group gets SIGKILL and
            the result says ``timed_out``.
        as_user: ``user``, ``group``, ``extra_groups`` and ``umask`` for the spawn, on a
            shared daemon: the probe runs as the run's user, never as root.

    Must be awaited on a running event loop; the loop stays free while the probe runs.
    """
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    # Our own pipe rather than asyncio's PIPE: we can close our end when we choose,
    # even while some escaped descendant still holds the other.
    read_fd, write_fd = os.pipe()
    spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
        "sh", "-c", cmd, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=subprocess.STDOUT,
        env=env, cwd=cwd, start_new_session=True, **(as_user or {}),
    ))
    try:
        # Shielded: cancelled halfway, asyncio would kill the shell but not what it had
        # already forked. Let the spawn finish, then kill the whole group.
        process = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        os.close(read_fd)
        await _kill_spawned(spawn)
        raise
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        os.close(read_fd)
        return ProbeResult(False, None, f"cannot run the health command: {_error_text(error, cwd)}",
                           time.monotonic() - started, False)
    finally:
        os.close(write_fd)

    finished: asyncio.Future[None] = loop.create_future()
    collector = _TailCollector(finished)
    reader = os.fdopen(read_fd, "rb", buffering=0)
    transport: asyncio.BaseTransport | None = None
    timed_out = False
    # Everything after the spawn sits in this try: a cancellation at any await (the
    # engine stopping) must still kill the probe's group and release the pipe.
    try:
        transport, _ = await loop.connect_read_pipe(lambda: collector, reader)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            timed_out = True
            # The shell is not reaped yet, so its pid (the group's id) cannot have been reused.
            _kill_group(process.pid)
            await _reap(process)
        try:
            await asyncio.wait_for(asyncio.shield(finished), _DRAIN_AFTER_EXIT_S)
        except TimeoutError:
            # Something the probe left in the background still holds the pipe: it dies
            # with the probe. (Its group id stays taken while it lives, so this hits it.)
            _kill_group(process.pid)
    finally:
        if not finished.done():  # cancelled while the probe or its leftovers still write
            _kill_group(process.pid)
        if transport is not None:
            transport.close()
        else:
            reader.close()
        if process.returncode is None:  # cancelled while running
            _kill_group(process.pid)
            await _reap(process)
    output = bytes(collector.tail).decode("utf-8", errors="replace")[-OUTPUT_KEEP_CHARS:]
    exit_code = process.returncode
    return ProbeResult(
        ok=exit_code == 0 and not timed_out,
        exit_code=exit_code,
        output=output,
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
    )


async def _kill_spawned(spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
    try:
        process = await spawn
    except Exception:
        return  # it never started
    _kill_group(process.pid)
    await _reap(process)


async def _reap(process: asyncio.subprocess.Process) -> None:
    try:
        await asyncio.wait_for(process.wait(), _REAP_TIMEOUT_S)
    except TimeoutError:
        pass  # SIGKILL cannot be ignored; only an uninterruptible sleep gets here


def _kill_group(group_id: int) -> None:
    try:
        os.killpg(group_id, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _error_text(error: BaseException, cwd: str) -> str:
    if isinstance(error, FileNotFoundError) and not os.path.isdir(cwd):
        return f"no such folder {cwd}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
