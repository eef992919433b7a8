"""Throughput: N trivial runs (``true``), two at a time, from the first submit to the last exit.

runyard is measured on every path a user has, each on a fresh daemon with every safety on
(the defaults: fsync'd database, a shim per run, process-tree sampling):

* ``cli``: ``runyard submit`` processes one after another (a shell loop);
* ``cli_parallel``: the same with 4 submit processes in flight (as ``xargs -P 4`` would);
* ``socket``: one process calling the daemon's ``submit`` N times (what a sweep does);
* ``submit_many``: one ``submit_many`` request with all N (a batch), when the daemon has it.

The peers use their normal path: ``tsp true`` N times with 2 slots, then ``tsp -w``;
``sbatch --wrap true`` N times, then until ``squeue`` is empty. Slurm gets fewer runs
(it manages about one a second stock): the rate is what is compared. Each is repeated
``rounds`` times (median, min, max of the rates).
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.common import RUNYARD, RunyardDaemon, read_runs, summary, wait_for
from benchmarks.peers import Slurm, TaskSpooler

ENVELOPE = {"cpus": 1, "mem_bytes": 64 << 20}
ENVELOPE_ARGS = ["--cpus", "1", "--mem", "64M"]
TERMINAL = "('succeeded','failed','cancelled','timed_out')"


def _runyard_round(path: str, count: int) -> dict[str, Any]:
    daemon = RunyardDaemon(f"throughput-{path}")
    with daemon:
        request = {"argv": ["true"], "cwd": str(daemon.home), "env": daemon.env, "envelope": ENVELOPE}
        client = daemon.client()
        first_submit = time.time()
        if path == "cli":
            for _ in range(count):
                subprocess.run([*RUNYARD, "submit", *ENVELOPE_ARGS, "--", "true"], env=daemon.env, check=True,
                               stdout=subprocess.DEVNULL)
        elif path == "cli_parallel":
            def submit_one(_: int) -> None:
                subprocess.run([*RUNYARD, "submit", *ENVELOPE_ARGS, "--", "true"], env=daemon.env, check=True,
                               stdout=subprocess.DEVNULL)

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(submit_one, range(count)))
        elif path == "socket":
            for _ in range(count):
                client.call("submit", **request)
        elif path == "submit_many":
            client.call("submit_many", runs=[request] * count)
        submitted = time.time()

        def all_ended() -> bool:
            return read_runs(daemon.home, f"SELECT COUNT(*) FROM runs WHERE state IN {TERMINAL}")[0][0] >= count

        wait_for(all_ended, 600, f"{count} runyard runs to end", interval=0.05)
        (last_exit, succeeded), = read_runs(
            daemon.home, "SELECT MAX(ended_at), SUM(state = 'succeeded') FROM runs")
    elapsed = last_exit - first_submit
    return {"runs": count, "succeeded": succeeded, "seconds": elapsed, "submit_seconds": submitted - first_submit}


def _daemon_has_submit_many() -> bool:
    from engine import protocol

    return "submit_many" in protocol.OPS


def rates(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' rates (runs per second) summarised, and what each round did."""
    return {
        "rate": summary([r["runs"] / r["seconds"] for r in rounds], "runs/s"),
        "submit_rate": summary([r["runs"] / r["submit_seconds"] for r in rounds], "runs/s"),
        "rounds": [{key: round(value, 3) for key, value in r.items()} for r in rounds],
    }


def bench_runyard(count: int, rounds: int) -> dict[str, Any]:
    paths = ["cli", "cli_parallel", "socket"] + (["submit_many"] if _daemon_has_submit_many() else [])
    return {path: rates([_runyard_round(path, count) for _ in range(rounds)]) for path in paths}


def _tsp_round(count: int) -> dict[str, Any]:
    with TaskSpooler(slots=2) as tsp:
        first_submit = time.time()
        for _ in range(count):
            subprocess.run(["tsp", "true"], env=tsp.env, check=True, stdout=subprocess.DEVNULL)
        submitted = time.time()
        tsp.run("-w", check=False)
        last_exit = time.time()
        listing = tsp.run().stdout
    finished = sum(1 for line in listing.splitlines()[1:] if " finished " in line)
    elapsed = last_exit - first_submit
    return {"runs": count, "succeeded": finished, "seconds": elapsed, "submit_seconds": submitted - first_submit}


def _slurm_round(count: int) -> dict[str, Any]:
    with Slurm() as slurm:
        first_submit = time.time()
        for _ in range(count):
            subprocess.run(slurm.sbatch("true"), env=slurm.env, check=True, stdout=subprocess.DEVNULL)
        submitted = time.time()
        wait_for(lambda: slurm.queue_size() == 0, 900, "Slurm's queue to drain", interval=0.1)
        last_exit = time.time()
    elapsed = last_exit - first_submit
    return {"runs": count, "seconds": elapsed, "submit_seconds": submitted - first_submit}


def run(quick: bool, peers: dict[str, Any]) -> dict[str, Any]:
    count, slurm_count, rounds = (100, 10, 1) if quick else (500, 60, 3)
    results: dict[str, Any] = {"runs": count, "slurm_runs": slurm_count, "cpus": os.cpu_count(),
                               "runyard": bench_runyard(count, rounds)}
    if peers.get("tsp"):
        results["tsp"] = rates([_tsp_round(count) for _ in range(rounds)])
    if peers.get("slurm"):
        results["slurm"] = rates([_slurm_round(slurm_count)])
    return results
