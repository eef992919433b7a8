"""Idle cost: CPU-seconds per minute of a daemon with nothing to do.

runyard's daemon runs with 8 simulated GPUs (so it samples them as it would real ones)
and an empty queue; tsp's server with an empty queue; Slurm's three daemons (munged,
slurmctld, slurmd) summed. All three idle at the same time, after ``settle_s`` to get past
start-up, and are measured over the same window: CPU time of the daemons and their reaped
children (psutil), in several slices so the spread shows.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from benchmarks.common import RunyardDaemon, cpu_seconds, summary
from benchmarks.peers import PeerUnavailable, Slurm, TaskSpooler


def run(quick: bool, peers: dict[str, Any]) -> dict[str, Any]:
    settle_s, window_s, slices = (10.0, 20.0, 4) if quick else (10.0, 60.0, 6)
    with contextlib.ExitStack() as stack:
        watched: dict[str, list[int]] = {}
        daemon = stack.enter_context(RunyardDaemon("idle", gpus="8x80G"))
        watched["runyard"] = [daemon.process.pid]
        if peers.get("tsp"):
            tsp = stack.enter_context(TaskSpooler(slots=2))
            watched["tsp"] = tsp.server_pids()
        if peers.get("slurm"):
            with contextlib.suppress(PeerUnavailable):
                slurm = stack.enter_context(Slurm())
                watched["slurm"] = slurm.daemon_pids()
        time.sleep(settle_s)
        per_minute: dict[str, list[float]] = {name: [] for name in watched}
        slice_s = window_s / slices
        for _ in range(slices):
            before = {name: cpu_seconds(pids) for name, pids in watched.items()}
            started = time.monotonic()
            time.sleep(slice_s)
            elapsed = time.monotonic() - started
            for name, pids in watched.items():
                per_minute[name].append((cpu_seconds(pids) - before[name]) * 60 / elapsed)
    results: dict[str, Any] = {"window_s": window_s, "settle_s": settle_s, "gpus": "8x80G (simulated)"}
    for name, values in per_minute.items():
        results[name] = summary(values, "CPU-s/min", digits=3)
    return results
