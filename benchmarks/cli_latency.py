"""Submit, ls and start latency of runyard on this machine, beside Python's own start-up.

    python benchmarks/cli_latency.py [--repeat 15] [--out benchmarks/results/cli_latency.json]

Starts a daemon on a throwaway RUNYARD_HOME, then measures (median, min, max of --repeat):
- ``python3 -c pass``: the floor every Python CLI pays;
- ``runyard submit -- true`` and ``runyard ls`` as whole processes;
- start latency: from just before ``runyard submit`` to the run's first instruction (the run
  writes ``time.time()`` to a file; the run is ``python3 -c``, so this includes its start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNYARD = [sys.executable, "-m", "runyard.cli"]


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 2),
            "min_ms": round(min(values) * 1000, 2), "max_ms": round(max(values) * 1000, 2)}


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("benchmark: timed out waiting")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli_latency.json"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ry-bench-", dir="/tmp"))
    env = {**os.environ, "RUNYARD_HOME": str(home)}
    daemon = subprocess.Popen([*RUNYARD, "--daemon"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run([*RUNYARD, "status"], env=env, capture_output=True).returncode == 0)
        results: dict[str, object] = {}
        results["python_c_pass"] = summary([timed([sys.executable, "-c", "pass"], env) for _ in range(args.repeat)])
        submits = [timed([*RUNYARD, "submit", "--cpus", "0.1", "--mem", "1M", "--", "true"], env)
                   for _ in range(args.repeat)]
        results["runyard_submit"] = summary(submits)
        results["runyard_ls"] = summary([timed([*RUNYARD, "ls"], env) for _ in range(args.repeat)])
        latencies = []
        for index in range(args.repeat):
            marker = home / f"started-{index}"
            code = f"import time; open({str(marker)!r}, 'w').write(repr(time.time()))"
            before = time.time()
            subprocess.run([*RUNYARD, "submit", "--cpus", "0.1", "--mem", "1M", "--", sys.executable, "-c", code],
                           env=env, check=True, stdout=subprocess.DEVNULL)
            wait_for(lambda: marker.exists() and marker.read_text())
            latencies.append(float(marker.read_text()) - before)
        results["start_latency_submit_to_first_instruction"] = summary(latencies)
        results["python_c_pass_for_comparison_of_run_startup"] = results["python_c_pass"]
        report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "platform": platform.platform()},
                  "repeat": args.repeat, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "results": results}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        subprocess.run(["pkill", "-f", str(home)], check=False)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
