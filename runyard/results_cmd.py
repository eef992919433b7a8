"""``runyard ls --group``, ``runyard export`` and ``runyard show --provenance``: results
and where they came from, as tables, JSON and CSV."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
from collections.abc import Iterable
from typing import Any

from engine.client import DaemonUnavailable
from engine.envelope import Envelope
from engine.paths import Home
from engine.protocol import EXIT_BAD_INPUT, EXIT_NO_SUCH_RUN
from engine.units import format_duration
from runyard import cli

FIXED_COLUMNS = (
    "id", "name", "group", "state", "seed", "exit_code", "attempts", "submitted_at", "started_at", "ended_at",
    "wait_s", "run_s", "provenance_sha256",
)
MAX_METRIC_COLUMNS = 8
"""In the group table; the export has every metric."""


def fetch(home: Home, group: str | None) -> dict[str, Any]:
    """The group table's rows (every run's when ``group`` is None), from the engine, or
    from the database when no engine runs."""
    try:
        return cli._client(home).call("results", group=group)
    except DaemonUnavailable:
        from engine import groups

        def read(conn):
            try:
                return groups.table(conn, group)
            except groups.NoSuchGroup as error:
                raise cli.CliError(str(error), EXIT_NO_SUCH_RUN) from None

        found = cli._read_offline(home, read)
        if found is None and group is not None:
            raise cli.CliError(f"no group {group!r}; no run was ever queued in {home.root}", EXIT_NO_SUCH_RUN)
        return found or {"group": None, "runs": []}


# -------------------------------------------------------------------- export


def cmd_export(home: Home, args: argparse.Namespace) -> int:
    rows = fetch(home, args.group)["runs"]
    text = json.dumps(rows, indent=2) + "\n" if args.format == "json" else to_csv(rows)
    if args.out:
        with open(args.out, "w", newline="") as out:
            out.write(text)
        print(f"{len(rows)} runs written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    params = _names(row["params"] for row in rows)
    metrics = _names(row["metrics"] for row in rows)
    return [*FIXED_COLUMNS, *(f"param.{name}" for name in params), *(f"metric.{name}" for name in metrics),
            "metrics_final", "drift"]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One row per run; parameters and metrics as ``param.NAME`` / ``metric.NAME`` columns."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=csv_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(flat_row(row))
    return out.getvalue()


def flat_row(row: dict[str, Any]) -> dict[str, str]:
    """A result row as CSV cells: empty for none, JSON's spelling for numbers and booleans."""
    flat = {column: _cell(row.get(column)) for column in FIXED_COLUMNS}
    flat.update({f"param.{name}": _cell(value) for name, value in row["params"].items()})
    flat.update({f"metric.{name}": _cell(value) for name, value in row["metrics"].items()})
    flat["metrics_final"] = _cell(row["metrics_final"])
    flat["drift"] = "; ".join(row["drift"])
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _names(mappings: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(name for mapping in mappings for name in mapping))


# ----------------------------------------------------------------- ls --group


def cmd_group(home: Home, args: argparse.Namespace) -> int:
    table = fetch(home, args.group)
    rows = table["runs"]
    if args.sort:
        rows = sort_rows(rows, args.sort)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(_headline(table["group"], rows))
    print(format_group(rows))
    if any(row["metrics"] and not row["metrics_final"] for row in rows):
        print("* from the last heartbeat: the run has not reported final metrics (runyard.report)")
    return 0


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """``--sort KEY`` (``-KEY``: largest first); see :func:`engine.groups.sort_rows`."""
    from engine import groups

    name = key.lstrip("-")
    try:
        return groups.sort_rows(rows, name, descending=key.startswith("-"))
    except KeyError:
        known = ", ".join(groups.sort_keys(rows))
        raise cli.CliError(f"--sort {key}: no such column; sort by one of {known}", EXIT_BAD_INPUT) from None


def _headline(group: dict[str, Any] | None, rows: list[dict[str, Any]]) -> str:
    if group is None:
        return f"{len(rows)} runs"
    definition = group.get("definition") or {}
    params = definition.get("params") or {}
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    counts = ", ".join(f"{count} {state}" for state, count in states.items())
    if not params:
        return f"{group['name']}: {len(rows)} runs ({counts})"
    grid = " x ".join(f"{name} ({len(values)})" for name, values in params.items())
    how = f"grid over {grid}"
    if definition.get("random"):
        how = f"{definition['random']} drawn at random (--sample-seed {definition['sample_seed']}) from {grid}"
    return f"{group['name']}: {how}; {len(rows)} runs ({counts})"


def format_group(rows: list[dict[str, Any]]) -> str:
    params = _names(row["params"] for row in rows)
    metrics = _names(row["metrics"] for row in rows)[:MAX_METRIC_COLUMNS]
    header = ["ID", "STATE", *(name.upper() for name in params), *(name.upper() for name in metrics), "TIME", "DRIFT"]
    table = [header]
    for row in rows:
        mark = "" if row["metrics_final"] else "*"
        table.append([
            str(row["id"]), row["state"], *(row["params"].get(name, "-") for name in params),
            *(_metric(row["metrics"].get(name), mark) for name in metrics),
            format_duration(row["run_s"]) if row["run_s"] is not None else "-",
            "; ".join(row["drift"]) or "-",
        ])
    widths = [max(len(line[column]) for line in table) for column in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
                     for line in table)


def _metric(value: Any, mark: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}{mark}"
    return f"{value}{mark}"


# ---------------------------------------------------------- show --provenance


def show_provenance(home: Home, run: dict[str, Any], *, as_json: bool) -> int:
    from engine import gitfacts, provenance

    record = run.get("provenance")
    if as_json:
        print(json.dumps({"id": run["id"], "provenance": record, "drift": run.get("drift") or []}, indent=2))
        return 0
    if not record:
        print(f"run {run['id']} has no provenance record (it was queued before runyard kept them)")
        return 0
    check = "matches its content" if provenance.verify(record) else "DOES NOT MATCH ITS CONTENT"
    git = record.get("git")
    python = record.get("python") or {}
    diff_path = home.run_dir(run["id"]) / gitfacts.DIFF_FILE
    lines = [
        ("sha256", f"{record.get('sha256')} ({check})"),
        ("command", shlex.join(record.get("argv") or [])),
        ("cwd", record.get("cwd")),
        ("git", _git_text(git, diff_path if diff_path.exists() else None)),
        ("python", f"{python.get('executable') or '-'} {python.get('version') or ''}".rstrip()
         + (f"; {python.get('packages')} packages, set sha256 {python.get('packages_sha256')}"
            if python.get("packages_sha256") else "")),
        ("gpu driver", f"{record.get('driver_version')}, CUDA {record.get('cuda_version') or '?'}"
         if record.get("driver_version") else "none recorded"),
        ("host", f"{record.get('host')}, user {record.get('user') or '?'}"),
        ("seed", "-" if record.get("seed") is None else record["seed"]),
        ("params", " ".join(f"{k}={v}" for k, v in (record.get("params") or {}).items()) or "-"),
        ("envelope", Envelope.from_dict(record["envelope"]).describe() if record.get("envelope") else "-"),
        ("runyard", record.get("runyard_version")),
    ]
    if run.get("drift"):
        lines.append(("drift", f"{'; '.join(run['drift'])} (against the first run of group {run.get('group')})"))
    env = record.get("env") or {}
    lines.append(("env", f"{len(env)} variables (values of names with TOKEN, KEY, SECRET or PASSWORD hidden)"))
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name.ljust(width)}  {value}")
    for name in sorted(env):
        print(f"  {name}={env[name]}")
    return 0


def _git_text(git: dict[str, Any] | None, diff_path: Any) -> str:
    if not git:
        return "not a git repository"
    if git.get("error"):
        return f"unknown: {git['error']}"
    text = f"{(git.get('commit') or 'no commit yet')[:12]} on {git.get('branch') or 'a detached HEAD'}"
    if git.get("dirty"):
        text += f", dirty: diff of {git.get('diff_bytes')} bytes, sha256 {git.get('diff_sha256')}"
        if diff_path is not None:
            text += f", saved in {diff_path}"
    else:
        text += ", clean"
    if git.get("untracked_count"):
        text += f"; {git['untracked_count']} untracked files"
    return text


def show_fields(run: dict[str, Any]) -> list[tuple[str, Any]]:
    """Lines ``show`` adds for a run's group, parameters, seed, metrics and provenance."""
    fields: list[tuple[str, Any]] = []
    if run.get("group"):
        fields.append(("group", run["group"]))
    if run.get("params"):
        fields.append(("params", " ".join(f"{k}={v}" for k, v in run["params"].items())))
    if run.get("seed") is not None:
        fields.append(("seed", run["seed"]))
    if run.get("metrics"):
        beat = (run.get("progress") or {}).get("metrics")
        source = " (last heartbeat)" if run["metrics"] == beat else " (reported)"
        fields.append(("metrics", " ".join(f"{k}={_metric(v, '')}" for k, v in run["metrics"].items()) + source))
    record = run.get("provenance")
    if record:
        sha = str(record.get("sha256"))[:16]
        fields.append(("provenance", f"sha256 {sha} (`runyard show {run['id']} --provenance`)"))
    if run.get("drift"):
        fields.append(("DRIFT", f"{'; '.join(run['drift'])} (against the first run of its group)"))
    return fields
