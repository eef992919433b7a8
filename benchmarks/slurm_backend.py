"""What runyard in front of Slurm costs, beside plain ``sbatch`` on the same cluster.

    python benchmarks/slurm_backend.py [--runs 20] [--rounds 3] [--out benchmarks/results/slurm_backend.json]

On a one-node Slurm started here (``benchmarks.peers.Slurm``, tuned so that its scheduler
runs at once after each submit), for ``--runs`` trivial jobs (``true``), ``--rounds`` times:

- ``sbatch``: ``sbatch --wrap true`` N times from one process, then until ``squeue`` is
  empty; the rate is N over that time;
- ``runyard``: a daemon with ``--backend slurm``, N ``submit`` requests on its socket (what a
  sweep does), then until every run has ended in runyard's database; the rate likewise, and
  each run's wait from submit to Slurm's start (runyard records Slurm's start time);
- ``poll``: one ``squeue --json`` call, which the engine makes once per poll interval for all
  its jobs (median of 20), with the N jobs still listed.

Needs Slurm and munge installed (``apt-get install slurm-wlm munge``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RunyardDaemon, kill_tagged, read_runs, summary, wait_for  # noqa: E402
from benchmarks.peers import Slurm  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "slurm_backend.json"
TERMINAL = "('succeeded','failed','cancelled','timed_out')"


def sbatch_round(slurm: Slurm, count: int) -> float:
    began = time.monotonic()
    for _ in range(count):
        subprocess.run(slurm.sbatch("true"), env=slurm.env, check=True, stdout=subprocess.DEVNULL)
    wait_for(lambda: slurm.queue_size() == 0, 600, "Slurm's queue to drain", interval=0.05)
    return count / (time.monotonic() - began)


def runyard_round(slurm: Slurm, count: int) -> tuple[float, list[float]]:
    daemon = RunyardDaemon("slurm-backend", daemon_args=["--backend", "slurm"],
                           env={"SLURM_CONF": slurm.env["SLURM_CONF"]})
    with daemon:
        client = daemon.client()
        request = {"argv": ["true"], "cwd": str(daemon.home), "env": daemon.env,
                   "envelope": {"cpus": 1, "mem_bytes": 64 << 20}}
        began = time.monotonic()
        for _ in range(count):
            client.call("submit", **request)

        def all_ended() -> bool:
            return read_runs(daemon.home, f"SELECT COUNT(*) FROM runs WHERE state IN {TERMINAL}")[0][0] >= count

        wait_for(all_ended, 600, f"{count} runyard runs to end", interval=0.05)
        rate = count / (time.monotonic() - began)
        rows = read_runs(daemon.home, "SELECT state, started_at - submitted_at FROM runs")
    failed = [state for state, _ in rows if state != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} runs did not succeed: {failed[:3]}")
    return rate, [wait for _, wait in rows]


def poll_cost(slurm: Slurm, count: int, repeat: int = 20) -> list[float]:
    for _ in range(count):
        subprocess.run(["sbatch", "--parsable", "--hold", "--wrap", "true"], env=slurm.env, check=True,
                       stdout=subprocess.DEVNULL)
    timings = []
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run(["squeue", "--json"], env=slurm.env, check=True, stdout=subprocess.DEVNULL)
        timings.append(time.perf_counter() - began)
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], env=slurm.env, check=False)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sbatch_rates, runyard_rates, waits = [], [], []
    try:
        with Slurm(tuned=True) as slurm:
            for _ in range(args.rounds):
                sbatch_rates.append(sbatch_round(slurm, args.runs))
                rate, run_waits = runyard_round(slurm, args.runs)
                runyard_rates.append(rate)
                waits.extend(run_waits)
            polls = poll_cost(slurm, args.runs)
    finally:
        kill_tagged()
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/slurm_backend.py", *sys.argv[1:]]),
        "runs": args.runs,
        "rounds": args.rounds,
        "sbatch_rate": summary(sbatch_rates, "runs/s"),
        "runyard_rate": summary(runyard_rates, "runs/s"),
        "runyard_over_sbatch": round(statistics.median(runyard_rates) / statistics.median(sbatch_rates), 2),
        "runyard_submit_to_start": summary(waits, "s"),
        "squeue_json_call": summary(polls, "ms", scale=1000),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
