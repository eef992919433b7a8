"""Every benchmark of issue 8, runyard beside task-spooler and Slurm, in one command.

    python benchmarks/run_all.py [--quick] [--only cli,throughput,...] [--no-peers]

Installs the peers from Debian when missing (root only), runs each measurement module
(``benchmarks/bench_*.py``), writes ``benchmarks/results/latest.json`` and regenerates
``BENCHMARKS.md`` (machine, date, commands, every figure with median/min/max, runyard/peer
ratios, and each target met or missed by how much). ``--quick`` takes a few minutes;
the full run about half an hour. A module that fails is recorded with its error and the
rest still run. Every process the suite starts is killed at exit, even on failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from benchmarks.common import ROOT, exit_on_sigterm, kill_tagged  # noqa: E402

MODULES = ("packing", "cli", "throughput", "idle", "scale", "logs", "crash")
RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
MARKDOWN = ROOT / "BENCHMARKS.md"


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / (1 << 20), 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "commit": commit.stdout.strip() or None,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def set_up_peers(wanted: bool) -> dict[str, Any]:
    from benchmarks import peers

    if not wanted:
        return {"tsp": False, "slurm": False, "note": "--no-peers"}
    status: dict[str, Any] = {}
    try:
        status["installed_now"] = peers.ensure_installed()
    except Exception as error:
        status["install_error"] = str(error)
    status["versions"] = peers.versions()
    for name, check in (("tsp", _tsp_works), ("slurm", _slurm_works)):
        try:
            check()
            status[name] = True
        except Exception as error:
            status[name] = False
            status[f"{name}_error"] = str(error)[:500]
    return status


def _tsp_works() -> None:
    from benchmarks.peers import TaskSpooler

    with TaskSpooler() as tsp:
        tsp.run("true")


def _slurm_works() -> None:
    from benchmarks.peers import Slurm

    with Slurm():
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches: a few minutes")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(MODULES)}")
    parser.add_argument("--no-peers", action="store_true", help="measure runyard alone (no apt-get, no tsp, no Slurm)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    args = parser.parse_args()
    exit_on_sigterm()
    chosen = args.only.split(",") if args.only else list(MODULES)
    unknown = set(chosen) - set(MODULES)
    if unknown:
        parser.error(f"unknown module(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODULES)}")
    started = time.time()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "quick": args.quick,
        "command": " ".join(["python", "benchmarks/run_all.py", *sys.argv[1:]]),
        "machine": machine(),
    }
    try:
        results["peers"] = set_up_peers(not args.no_peers)
        results["measurements"] = {}
        for name in chosen:
            print(f"benchmark: {name} ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            try:
                module = importlib.import_module(f"benchmarks.bench_{name}")
                outcome = module.run(args.quick, results["peers"])
            except Exception as error:
                outcome = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]}
            finally:
                leftovers = kill_tagged()
            outcome["seconds"] = round(time.monotonic() - began, 1)
            if leftovers:
                outcome["killed_leftover_processes"] = leftovers
            results["measurements"][name] = outcome
            print(f"benchmark: {name} done in {outcome['seconds']}s", file=sys.stderr, flush=True)
    finally:
        kill_tagged()
    results["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.time() - started, 1)
    results["targets"] = report.targets(results["measurements"])
    results["ratios"] = report.ratios(results["measurements"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.write_text(report.markdown(results))
    print(report.summary_lines(results))
    print(f"wrote {args.out} and {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
