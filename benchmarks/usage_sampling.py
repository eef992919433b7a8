"""What resource truth costs: one usage sample, and the usage history's size after days.

    python benchmarks/usage_sampling.py [--runs 20] [--days 3] [--out benchmarks/results/usage_sampling.json]

- sample: the engine's per-interval work for ``--runs`` real runs (each a process with one
  forked child): scanning the process table into run trees, reading PSS, and the
  UsageSampler's CPU, GPU and disk readings (median of 20 calls);
- history: ``--days`` of samples every 2 s of the box (8 GPUs) and 10 runs, written in
  10-minute batches and thinned every 10 minutes as the daemon does; reports rows per table
  and the database's size at the end, which must not grow with more days past retention.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.probes.attribution import run_process_trees, run_rss_bytes
from engine.probes.gpu import GpuSample
from engine.probes.host import HostSample
from engine.store import sql
from engine.store.history import History, apply_history_migrations
from engine.store.schema import migrate
from engine.usage import RunUsage, UsageSampler

G = 1 << 30
INTERVAL_S = 2.0
BATCH_S = 600.0

FORKING_RUN = "import os, time\nos.fork()\ntime.sleep(600)\n"


def bench_sample(run_count: int, repeat: int = 20) -> dict:
    processes = [
        subprocess.Popen([sys.executable, "-c", FORKING_RUN], start_new_session=True) for _ in range(run_count)
    ]
    try:
        roots = {index + 1: process.pid for index, process in enumerate(processes)}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(len(pids) >= 2 for pids in run_process_trees(roots).values()):
                break
            time.sleep(0.05)
        sampler = UsageSampler()
        runs = {run_id: (pid, []) for run_id, pid in roots.items()}
        timings = []
        for _ in range(repeat):
            start = time.perf_counter()
            trees = run_process_trees(roots)
            rss = run_rss_bytes(trees)
            sampler.sample(runs, [], {}, time.time(), trees=trees, rss_bytes=rss)
            timings.append(time.perf_counter() - start)
            time.sleep(0.05)
        return {
            "runs": run_count,
            "processes": sum(len(pids) for pids in trees.values()),
            "box_processes": len(os.listdir("/proc")),
            "median_ms": round(statistics.median(timings) * 1000, 2),
            "max_ms": round(max(timings) * 1000, 2),
        }
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def bench_history(days: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="runyard-bench-"))
    db_path = folder / "runyard.db"
    migrate(db_path)
    apply_history_migrations(db_path)
    conn = sql.connect(db_path)
    conn.execute("PRAGMA synchronous=NORMAL")
    history = History(conn)
    host = HostSample(cpus=64, cpu_percent=40.0, mem_total=512 * G, mem_available=300 * G,
                      disk_total=4000 * G, disk_free=2000 * G, load1=20.0)
    gpus = [
        GpuSample(index=i, name="sim", uuid=None, mem_total=80 * G, mem_used=40 * G, util_percent=70.0,
                  temperature_c=None, power_w=None, processes=())
        for i in range(8)
    ]
    start_at = 1_700_000_000.0
    end_at = start_at + days * 86400
    at = start_at
    write_s = compact_s = 0.0
    batches = 0
    while at < end_at:
        batch_end = min(end_at, at + BATCH_S)
        stamps = []
        while at < batch_end:
            stamps.append(at)
            at += INTERVAL_S
        begin = time.perf_counter()
        history.record_box_batch((stamp, host, gpus) for stamp in stamps)
        history.record_runs_batch(
            (stamp, {run_id: RunUsage(run_id, stamp, 95.0, 2 * G, G, 70.0, 10 * G, 3) for run_id in range(1, 11)})
            for stamp in stamps
        )
        write_s += time.perf_counter() - begin
        begin = time.perf_counter()
        history.compact(at)
        compact_s += time.perf_counter() - begin
        batches += 1
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    result = {
        "days": days,
        "samples": int(days * 86400 / INTERVAL_S),
        "rows": history.row_counts(),
        "db_bytes": db_path.stat().st_size,
        "write_ms_per_sample": round(write_s / max(1, days * 86400 / INTERVAL_S) * 1000, 3),
        "compact_ms_per_run": round(compact_s / max(1, batches) * 1000, 2),
    }
    conn.close()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "usage_sampling.json"))
    args = parser.parse_args()
    results = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "sample": bench_sample(args.runs),
        "history": [bench_history(args.days), bench_history(args.days * 2)],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
