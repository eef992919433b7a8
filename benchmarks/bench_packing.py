"""Packing: the shared trace replayed through runyard's admission and through strict FIFO
with whole GPUs (task-spooler's discipline), by ``runyard simulate``'s own code.

Also times the command itself (``python -m runyard.simulate_cmd``: a whole process, as a
user runs it).
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.common import ROOT, summary, timed_process

TRACE = ROOT.parent / "shared" / "traces" / "box8-300.jsonl"
BOX = ("8x80G", 64, 512 << 30)


def run(quick: bool, peers: dict[str, Any]) -> dict[str, Any]:
    from engine.simulate import compare, make_box, read_trace

    if not TRACE.exists():
        return {"skipped": f"{TRACE} not found"}
    comparison = compare(read_trace(TRACE), make_box(*BOX)).to_json()
    command = [sys.executable, "-m", "runyard.simulate_cmd", str(TRACE), "--box", BOX[0], "--cpus", str(BOX[1]),
               "--mem", "512G", "--policy", "both", "--json"]
    seconds = [timed_process(command, {"PATH": "/usr/bin:/bin"}, cwd=str(ROOT)) for _ in range(2 if quick else 5)]
    return {
        "trace": str(TRACE.relative_to(ROOT.parent)),
        "box": {"gpus": BOX[0], "cpus": BOX[1], "mem": "512G"},
        "lower_bound": comparison["lower_bound"],
        "runyard": comparison["policies"]["runyard"],
        "fifo": comparison["policies"]["fifo"],
        "runyard_vs_fifo": comparison["runyard_vs_fifo"],
        "command": summary(seconds, "ms", scale=1000),
    }
