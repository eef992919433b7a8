"""Scale: the CLI, the daemon and the TUI with a big database.

A home is filled with ``runs`` runs through the store's own insert path
(:func:`engine.store.sql.insert_run`, all inside one transaction so the fill takes
seconds, not one fsync per run), then most are marked finished in one UPDATE; the rest
stay queued and held, so the daemon starts nothing. Then, with a daemon serving it:

* ``runyard ls``, ``runyard ls --json`` and ``runyard show ID`` as whole processes;
* ``runyard ls --all --json`` (every run: informative, no target);
* the daemon's resident memory after serving them;
* the TUI (``benchmarks/tui_probe.py``, the real app, headless): start to first figures,
  CPU per refresh and memory, on the default view of the big home and with every run
  listed on a home of ``tui_runs`` runs. CPU per refresh is the whole TUI process's (the
  poll thread's decoding, the update, the drawing), against a daemon in another process;
  ``benchmarks/tui_dashboard.py`` instead times the poll and the update apart, in wall
  time, drawing excluded (see BENCHMARKS.md).

No peer is measured here: filling tsp or Slurm with 100,000 jobs takes longer than the
whole suite, and neither has a view of its history to compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, RUNYARD, RunyardDaemon, rss_bytes, scratch_dir, summary, timed_process

QUEUED_SHARE = 0.002
"""Runs left queued (and held): a few hundred in 100,000, as on a busy box."""


def fill_home(home: Path, runs: int) -> dict[str, Any]:
    from engine.envelope import Envelope
    from engine.model import RunSpec
    from engine.store import sql
    from engine.store.schema import migrate

    home.mkdir(parents=True, exist_ok=True)
    (home / "runs").mkdir(exist_ok=True)
    started = time.perf_counter()
    migrate(home / "runyard.db")
    conn = sql.connect(home / "runyard.db")
    now = time.time()
    # The environment a real `runyard submit` records: the submitter's whole one.
    env = dict(os.environ)
    queued = max(1, int(runs * QUEUED_SHARE))
    try:
        with sql.write_transaction(conn):
            for index in range(runs):
                spec = RunSpec(
                    argv=("python", "train.py", f"--lr={index % 7}e-4", f"--seed={index}"), cwd=str(home), env=env,
                    envelope=Envelope(cpus=1 + index % 4, mem_bytes=(1 + index % 16) << 30, gpus=index % 3,
                                      time_limit_s=3600.0),
                    held=index >= runs - queued,
                )
                sql.insert_run(conn, spec, now=now - (runs - index) * 30, runs_dir=home / "runs", uid=os.getuid(),
                               user="bench")
            conn.execute(
                "UPDATE runs SET state = CASE WHEN id % 10 = 0 THEN 'failed' ELSE 'succeeded' END,"
                " started_at = submitted_at + 5, ended_at = submitted_at + 25,"
                " exit_code = CASE WHEN id % 10 = 0 THEN 1 ELSE 0 END, reason = 'exit code 0'"
                " WHERE id <= ?",
                (runs - queued,),
            )
    finally:
        conn.close()
    return {"runs": runs, "queued": queued, "fill_seconds": round(time.perf_counter() - started, 2),
            "db_bytes": (home / "runyard.db").stat().st_size}


def _timed_or_failure(command: list[str], env: dict[str, str], repeat: int) -> dict[str, Any]:
    """Timings, or the command's last line of error output when it fails: a failure at
    scale is a finding to report, not a reason to stop the suite."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            return {"error": f"exit {result.returncode}: {lines[-1] if lines else ''}"[:300],
                    "seconds": round(time.perf_counter() - started, 2)}
        times.append(time.perf_counter() - started)
    return summary(times, "ms", scale=1000)


def tui_probe(socket_path: Path, *, show_all: bool, ticks: int) -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "benchmarks" / "tui_probe.py"), str(socket_path), "--ticks", str(ticks),
               "--spawned-at", repr(time.time())]
    if show_all:
        command.append("--all")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=str(ROOT),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "rows": data["rows"],
        "start": summary([data["start_s"]], "ms", scale=1000),
        "fill": summary([data["fill_s"]], "ms", scale=1000),
        "refresh_cpu": summary(data["tick_cpu_ms"], "ms"),
        "rss": summary([data["rss_bytes"]], "MB", scale=1 / (1 << 20), digits=1),
    }


def run(quick: bool, peers: dict[str, Any]) -> dict[str, Any]:
    runs, tui_runs = 100_000, 10_000
    repeat, ticks = (5, 5) if quick else (15, 20)
    results: dict[str, Any] = {}
    big = scratch_dir("scale-100k")
    results["fill"] = fill_home(big, runs)
    with RunyardDaemon("scale", home=big) as daemon:
        results["daemon_rss_idle"] = summary([rss_bytes(daemon.process.pid)], "MB", scale=1 / (1 << 20), digits=1)
        some_id = str(runs // 2)
        results["ls"] = summary([timed_process([*RUNYARD, "ls"], daemon.env) for _ in range(repeat)], "ms",
                                scale=1000)
        results["ls_json"] = summary([timed_process([*RUNYARD, "ls", "--json"], daemon.env) for _ in range(repeat)],
                                     "ms", scale=1000)
        results["show"] = summary(
            [timed_process([*RUNYARD, "show", some_id], daemon.env) for _ in range(repeat)], "ms", scale=1000)
        results["ls_all_json"] = _timed_or_failure([*RUNYARD, "ls", "--all", "--json"], daemon.env,
                                                   2 if quick else 5)
        results["tui_default_view"] = tui_probe(daemon.socket_path, show_all=False, ticks=ticks)
        results["daemon_rss_after"] = summary([rss_bytes(daemon.process.pid)], "MB", scale=1 / (1 << 20), digits=1)
    results["ls_offline"] = summary(
        [timed_process([*RUNYARD, "ls"], daemon.env) for _ in range(repeat)], "ms", scale=1000)
    ten_k = scratch_dir("scale-10k")
    results["fill_10k"] = fill_home(ten_k, tui_runs)
    with RunyardDaemon("scale-10k", home=ten_k) as daemon:
        results["tui_all_10k"] = tui_probe(daemon.socket_path, show_all=True, ticks=ticks)
        results["daemon_rss_10k"] = summary([rss_bytes(daemon.process.pid)], "MB", scale=1 / (1 << 20), digits=1)
    return results
