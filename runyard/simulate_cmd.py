"""``runyard simulate``: replay a trace of runs on a box that may not exist.

    runyard simulate TRACE.jsonl --box 8x80G --cpus 64 --mem 512G [--policy runyard|fifo|both] [--json]

Answers "would two more GPUs help?" (run it with ``--box 8x80G`` and ``--box 10x80G``) and
"how much does runyard's packing buy over a FIFO queue?" (``--policy both``). The replay
uses the engine's own admission code on a simulated clock (:mod:`engine.simulate`), so it
takes a second or two for a few hundred runs and starts nothing.

Exit statuses as the rest of the CLI: 0 ok, 2 bad input (an unreadable trace or box).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

from engine.protocol import EXIT_BAD_INPUT, EXIT_OK
from engine.units import UnitError, format_duration, format_size, parse_size


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser(prog: str = "runyard simulate") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Replay a trace of runs (JSON lines) through runyard's admission on a simulated clock.",
    )
    parser.add_argument("trace", metavar="TRACE.jsonl",
                        help="one run a line: submit_s, duration_s, time_limit_s, cpus, mem_gb, gpus, gpu_mem_gb, "
                             "priority (see shared/traces/make_trace.py); - reads standard input")
    parser.add_argument("--box", required=True, metavar="GPUS",
                        help="the GPUs, as --simulate-gpus reads them: 8x80G, 4x80G,2x24G, or 0 for none")
    parser.add_argument("--cpus", type=float, default=None, help="CPU cores (default: this machine's)")
    parser.add_argument("--mem", default=None, help="memory, e.g. 512G (default: this machine's)")
    parser.add_argument("--policy", choices=("runyard", "fifo", "both"), default="runyard",
                        help="runyard's admission, strict FIFO with whole GPUs (task-spooler), or both side by side")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (times in seconds)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (the CLI passes it to ``sys.exit``)."""
    args = build_parser().parse_args(argv)
    from engine.simulate import TraceError, compare, make_box, parse_trace, read_trace

    try:
        mem_bytes = parse_size(args.mem) if args.mem is not None else _machine_memory()
        cpus = args.cpus if args.cpus is not None else float(os.cpu_count() or 1)
        if cpus <= 0 or mem_bytes <= 0:
            raise ValueError("--cpus and --mem must be more than 0")
        box = make_box(args.box, cpus, mem_bytes)
        runs = parse_trace(sys.stdin, source="stdin") if args.trace == "-" else read_trace(args.trace)
    except (TraceError, UnitError, ValueError) as error:
        print(f"runyard simulate: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not runs:
        print(f"runyard simulate: {args.trace} holds no runs", file=sys.stderr)
        return EXIT_BAD_INPUT
    policies = ("runyard", "fifo") if args.policy == "both" else (args.policy,)
    comparison = compare(runs, box, policies).to_json()
    comparison["trace"] = {"path": args.trace, "runs": len(runs)}
    comparison["box"] = {"gpus": args.box, "cpus": cpus, "mem_bytes": mem_bytes}
    if args.json:
        print(json.dumps(comparison, indent=2))
    else:
        print(format_report(comparison))
    return EXIT_OK


def _machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def format_report(comparison: dict[str, Any]) -> str:
    """The report as a table, one column per policy."""
    reports = comparison["policies"]
    names = list(reports)
    box = comparison["box"]
    bound = comparison["lower_bound"]
    lines = [
        f"{comparison['trace']['runs']} runs from {comparison['trace']['path']} on a box with "
        f"GPUs {box['gpus']}, {box['cpus']:g} CPUs, {format_size(box['mem_bytes'])} memory",
        f"lower bound on the makespan: {_duration(bound['seconds'])} ({bound['binding']})",
        "",
    ]
    rows: list[tuple[str, ...]] = [("", *names)]

    def row(label: str, render) -> None:
        rows.append((label, *(render(reports[name]) for name in names)))

    row("makespan", lambda r: _duration(r["makespan_s"]))
    row("  / lower bound", lambda r: _fraction(r["ratio"]))
    row("mean wait", lambda r: _duration(r["wait"]["mean_s"]))
    row("p95 wait", lambda r: _duration(r["wait"]["p95_s"]))
    row("longest wait", lambda r: _duration(r["wait"]["max_s"]))
    priorities = sorted({p for r in reports.values() for p in r["wait_by_priority"]}, key=int, reverse=True)
    if len(priorities) > 1:
        for priority in priorities:
            row(f"priority {priority}: mean / p95", lambda r, p=priority: _priority_waits(r, p))
    row("GPU utilisation", lambda r: "-" if r["gpu_utilisation"] is None else f"{r['gpu_utilisation']:.0%}")
    row("never started", lambda r: str(len(r["starved"])))
    row("refused (never fit)", lambda r: str(len(r["refused"])))
    width = [max(len(cells[i]) for cells in rows) for i in range(len(rows[0]))]
    for cells in rows:
        lines.append("  ".join(cell.ljust(width[i]) if i == 0 else cell.rjust(width[i]) for i, cell in enumerate(cells)))
    versus = comparison.get("runyard_vs_fifo")
    if versus:
        lines.append("")
        lines.append(
            f"runyard / fifo: makespan {_fraction(versus['makespan'])}, mean wait {_fraction(versus['mean_wait'])}, "
            f"p95 wait {_fraction(versus['p95_wait'])}"
        )
    for name in names:
        for starved in reports[name]["starved"][:5]:
            lines.append(f"{name}: run {starved['id']} never started ({starved['reason']})")
        for run_id, reason in list(reports[name]["refused"].items())[:5]:
            lines.append(f"{name}: run {run_id} refused: {reason}")
    return "\n".join(lines)


def _fraction(value: float | None) -> str:
    # None when FIFO's figure is 0: no ratio to give.
    return "-" if value is None else f"{value:.2f}"


def _priority_waits(report: dict[str, Any], priority: str) -> str:
    waits = report["wait_by_priority"].get(priority)
    if not waits:
        return "-"
    return f"{_duration(waits['mean_s'])} / {_duration(waits['p95_s'])}"


if __name__ == "__main__":
    sys.exit(main())
