"""Logs: the last screen of a 1 GB log, and searching it.

The log is training-style output (a step line with loss and throughput, now and then a
warning), written as a 1 MiB block repeated until it is 1 GiB, with one line that
matters at the very end (``NaN detected at step ...``): finding it is the worst case, a
search through the whole file. The file is written once and read warm from the page
cache (dropping the cache would slow every other engineer's tests on this box).

runyard's side is the TUI log viewer's reader (:class:`tui.logfile.LogFile`, no Textual
import): ``tail(60)`` for the last screen, ``find(needle, 0)`` for the first match. If
that module is not importable the measurement is skipped with the error. Also timed:
``runyard logs ID`` (it prints the whole log: there is no tail option yet).

The peers' side is what their users run on a job's output file: ``tail -n 60`` and
``grep -m1 -b`` (first match and its byte offset, the same answer as ``find``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RUNYARD, scratch_dir, summary, tagged_env, timed_process

SCREEN_LINES = 60
NEEDLE = "NaN detected at step"
NEEDLE_ANY_CASE = "nan detected at step"


def write_log(path: Path, size: int) -> float:
    lines = []
    for step in range(12_000):
        if step % 997 == 0:
            lines.append(f"[W] step {step}: grad norm {step % 13 + 0.5:.3f} clipped to 1.0\n")
        lines.append(f"step {step:>7} | loss {1 / (1 + step % 500):.6f} | lr 3.0e-04 | {900 + step % 77} samples/s\n")
    block = "".join(lines).encode()[: 1 << 20]
    block = block[: block.rfind(b"\n") + 1]
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while written < size:
            written += os.write(fd, block)
        os.write(fd, f"{NEEDLE} 123456: loss is nan\nstep  123457 | loss nan\n".encode())
    finally:
        os.close(fd)
    return time.perf_counter() - started


def _timed(function, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def _logs_home(log: Path) -> dict[str, str]:
    """A home with one finished run whose log is ``log``, for ``runyard logs``."""
    from engine.model import RunSpec
    from engine.store import sql
    from engine.store.schema import migrate

    home = scratch_dir("logs-home")
    (home / "runs").mkdir()
    migrate(home / "runyard.db")
    conn = sql.connect(home / "runyard.db")
    try:
        run_id = sql.insert_run(conn, RunSpec(argv=("python", "train.py"), cwd=str(home)), now=time.time(),
                                runs_dir=home / "runs", uid=os.getuid(), user="bench")
        with sql.write_transaction(conn):
            conn.execute("UPDATE runs SET state = 'succeeded', log_path = ?, started_at = submitted_at,"
                         " ended_at = submitted_at + 1, exit_code = 0 WHERE id = ?", (str(log), run_id))
    finally:
        conn.close()
    config = home.parent / f"{home.name}.toml"
    config.write_text("")
    return tagged_env(RUNYARD_HOME=str(home), RUNYARD_CONFIG=str(config))


def run(quick: bool, peers: dict[str, Any]) -> dict[str, Any]:
    repeat, search_repeat = (5, 2) if quick else (15, 5)
    log = scratch_dir("logs") / "output.log"
    results: dict[str, Any] = {"write_seconds": round(write_log(log, 1 << 30), 2)}
    results["bytes"] = log.stat().st_size
    env = dict(os.environ)
    results["tail_n"] = summary(
        [timed_process(["tail", "-n", str(SCREEN_LINES), str(log)], env) for _ in range(repeat)], "ms", scale=1000)
    results["grep_first"] = summary(
        [timed_process(["grep", "-m1", "-b", NEEDLE, str(log)], env) for _ in range(search_repeat)], "ms",
        scale=1000)
    results["grep_first_any_case"] = summary(
        [timed_process(["grep", "-i", "-m1", "-b", NEEDLE_ANY_CASE, str(log)], env) for _ in range(search_repeat)],
        "ms", scale=1000)
    try:
        from tui.logfile import LogFile
    except Exception as error:  # the viewer is being written: report, do not fail the suite
        results["viewer"] = {"skipped": f"tui.logfile not importable: {error}"}
    else:
        viewer = LogFile(log)
        last = viewer.tail(SCREEN_LINES)
        found = viewer.find(NEEDLE, 0)
        results["viewer"] = {
            "last_screen_ok": bool(last) and last[-1].text.startswith("step  123457"),
            "find_ok": found is not None and found > (1 << 30) - 1,
        }
        results["viewer_tail"] = summary(_timed(lambda: viewer.tail(SCREEN_LINES), repeat), "ms", scale=1000)
        results["viewer_find"] = summary(_timed(lambda: viewer.find(NEEDLE, 0), search_repeat), "ms", scale=1000)
        results["viewer_find_any_case"] = summary(
            _timed(lambda: viewer.find(NEEDLE_ANY_CASE, 0), search_repeat), "ms", scale=1000)
    logs_env = _logs_home(log)
    results["runyard_logs_whole"] = summary(
        [timed_process([*RUNYARD, "logs", "1"], logs_env) for _ in range(min(repeat, 3))], "ms", scale=1000)
    log.unlink()
    return results
