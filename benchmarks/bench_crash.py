"""Crash safety: queue 20 jobs, SIGKILL the scheduler, restart it, count what ran.

Each job appends its number to a file and sleeps 0.3 s, two at a time. Right after the
20th submit is acknowledged the scheduler is killed with SIGKILL (runyard's daemon; tsp's
server), then started again on the same state. Once everything has settled, each job
counts as ran once, lost (never ran) or ran more than once.

Slurm is not measured here (issue 8 reports it by hand: 18-19 of 20 lost with all its
daemons killed); killing and restarting its three daemons reliably is a suite of its own.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RunyardDaemon, read_runs, scratch_dir, wait_for
from benchmarks.peers import TaskSpooler

JOBS = 20
TERMINAL = "('succeeded','failed','cancelled','timed_out')"


def job_command(ledger: Path, number: int) -> str:
    return f"echo {number} >> {ledger}; sleep 0.3"


def tally(ledger: Path) -> dict[str, Any]:
    counts = collections.Counter(line.strip() for line in ledger.read_text().splitlines()) if ledger.exists() else {}
    runs = [counts.get(str(number), 0) for number in range(1, JOBS + 1)]
    return {"jobs": JOBS, "ran_once": sum(n == 1 for n in runs), "lost": sum(n == 0 for n in runs),
            "ran_twice_or_more": sum(n > 1 for n in runs)}


def bench_runyard() -> dict[str, Any]:
    ledger = scratch_dir("crash-runyard") / "ledger"
    daemon = RunyardDaemon("crash")
    daemon.start()
    try:
        client = daemon.client()
        for number in range(1, JOBS + 1):
            client.call("submit", argv=["sh", "-c", job_command(ledger, number)], cwd=str(daemon.home),
                        env=daemon.env, envelope={"cpus": 1, "mem_bytes": 64 << 20})
        daemon.kill()
        killed_at = time.monotonic()
        daemon.start()
        wait_for(lambda: read_runs(daemon.home, f"SELECT COUNT(*) FROM runs WHERE state IN {TERMINAL}")[0][0] >= JOBS,
                 180, "runyard's 20 runs to end", interval=0.1)
        settled_s = time.monotonic() - killed_at
        states = dict(read_runs(daemon.home, "SELECT state, COUNT(*) FROM runs GROUP BY state"))
    finally:
        daemon.stop()
    return {**tally(ledger), "states": states, "settled_s": round(settled_s, 2)}


def bench_tsp() -> dict[str, Any]:
    ledger = scratch_dir("crash-tsp") / "ledger"
    with TaskSpooler(slots=2) as tsp:
        for number in range(1, JOBS + 1):
            tsp.run("sh", "-c", job_command(ledger, number))
        tsp.kill_server()
        killed_at = time.monotonic()
        tsp.start()
        tsp.run("-w", check=False)
        # Jobs already running when the server died go on in their own runner processes.
        time.sleep(JOBS * 0.3)
        settled_s = time.monotonic() - killed_at
        queue_after = len(tsp.run().stdout.splitlines()) - 1
    return {**tally(ledger), "queue_after_restart": queue_after, "settled_s": round(settled_s, 2)}


def run(quick: bool, peers: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {"runyard": bench_runyard()}
    if peers.get("tsp"):
        results["tsp"] = bench_tsp()
    return results
