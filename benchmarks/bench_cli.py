"""Submit latency and start latency, for runyard and its peers, beside Python's start-up.

* submit: wall time of one submit process (``runyard submit -- true``, ``tsp true``,
  ``sbatch --wrap true``); ``python3 -c pass`` is the floor any Python CLI pays.
* start latency on an idle box: from just before the submit process is spawned to the
  run's first instruction. The run is ``sh -c 'date +%s.%N > FILE'`` for all three, so
  the payload's own start-up is the same small constant everywhere. Each run ends before
  the next is submitted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from benchmarks.common import RUNYARD, RunyardDaemon, read_float, read_runs, scratch_dir, summary, \
    timed_process, wait_for
from benchmarks.peers import Slurm, TaskSpooler, slurm_settle

ENVELOPE = ["--cpus", "1", "--mem", "64M"]


def marker_command(marker) -> str:
    return f"date +%s.%N > {marker}.tmp && mv {marker}.tmp {marker}"


def start_latencies(submit, marker_dir, repeat: int, settle) -> list[float]:
    latencies = []
    for index in range(repeat):
        marker = marker_dir / f"started-{index}"
        before = time.time()
        submit(marker_command(marker))
        latencies.append(wait_for(lambda: read_float(marker), 60, "the run's first instruction") - before)
        settle()
    return latencies


def python_floor(repeat: int) -> dict[str, Any]:
    return summary([timed_process([sys.executable, "-c", "pass"], {}) for _ in range(repeat)], "ms", scale=1000)


def bench_runyard(repeat: int, start_repeat: int) -> dict[str, Any]:
    with RunyardDaemon("cli") as daemon:
        submit_times = [timed_process([*RUNYARD, "submit", *ENVELOPE, "--", "true"], daemon.env)
                        for _ in range(repeat)]
        markers = scratch_dir("runyard-markers")

        def submit(command: str) -> None:
            subprocess.run([*RUNYARD, "submit", *ENVELOPE, "--", "sh", "-c", command], env=daemon.env, check=True,
                           stdout=subprocess.DEVNULL)

        def settle() -> None:
            wait_for(lambda: not read_runs(daemon.home, "SELECT 1 FROM runs WHERE state IN ('queued','running')"),
                     60, "runyard's runs to end")

        settle()
        latencies = start_latencies(submit, markers, start_repeat, settle)
    return {"submit": summary(submit_times, "ms", scale=1000), "start": summary(latencies, "ms", scale=1000)}


def bench_tsp(repeat: int, start_repeat: int) -> dict[str, Any]:
    with TaskSpooler(slots=2) as tsp:
        submit_times = [timed_process(["tsp", "true"], tsp.env) for _ in range(repeat)]
        tsp.run("-w", check=False)
        markers = scratch_dir("tsp-markers")

        def submit(command: str) -> None:
            subprocess.run(["tsp", "sh", "-c", command], env=tsp.env, check=True, stdout=subprocess.DEVNULL)

        latencies = start_latencies(submit, markers, start_repeat, lambda: tsp.run("-w", check=False))
    return {"submit": summary(submit_times, "ms", scale=1000), "start": summary(latencies, "ms", scale=1000)}


def bench_slurm(repeat: int, start_repeat: int) -> dict[str, Any]:
    with Slurm() as slurm:
        submit_times = [timed_process(slurm.sbatch("true"), slurm.env) for _ in range(repeat)]
        slurm_settle(slurm)
        markers = scratch_dir("slurm-markers")

        def submit(command: str) -> None:
            subprocess.run(slurm.sbatch(command), env=slurm.env, check=True, stdout=subprocess.DEVNULL)

        latencies = start_latencies(submit, markers, start_repeat, lambda: slurm_settle(slurm))
    return {"submit": summary(submit_times, "ms", scale=1000), "start": summary(latencies, "ms", scale=1000)}


def run(quick: bool, peers: dict[str, Any]) -> dict[str, Any]:
    repeat, start_repeat, slurm_start_repeat = (10, 5, 3) if quick else (30, 15, 8)
    results: dict[str, Any] = {"python_c_pass": python_floor(repeat), "runyard": bench_runyard(repeat, start_repeat)}
    if peers.get("tsp"):
        results["tsp"] = bench_tsp(repeat, start_repeat)
    if peers.get("slurm"):
        results["slurm"] = bench_slurm(repeat, slurm_start_repeat)
    return results
