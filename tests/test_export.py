"""Results: the export in JSON and CSV (which round-trips), sorting of the group table,
and drift flagged in both."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

from runyard.results_cmd import csv_columns, flat_row, sort_rows, to_csv

PY = sys.executable


def row(run_id, params=None, metrics=None, **extra):
    base = {"id": run_id, "name": f"r{run_id}", "group": "g", "state": "succeeded", "seed": None, "exit_code": 0,
            "attempts": 1, "submitted_at": 1.5, "started_at": 2.0, "ended_at": 3.25, "wait_s": 0.5, "run_s": 1.25,
            "provenance_sha256": "ab" * 32, "params": params or {}, "metrics": metrics or {}, "metrics_final": True,
            "drift": []}
    return {**base, **extra}


def test_csv_round_trips_awkward_values():
    rows = [
        row(1, {"lr": "1e-3", "note": 'a "quoted", comma\nand newline'}, {"loss": 0.25, "acc": "nan"}),
        row(2, {"lr": "1e-4"}, {"loss": 1e-9, "steps": 3}, drift=["commit aaa -> bbb", "installed packages changed"],
            state="running", ended_at=None, exit_code=None, metrics_final=False),
        row(3),
    ]
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert list(parsed[0]) == csv_columns(rows)
    assert parsed == [{**{column: "" for column in csv_columns(rows)}, **flat_row(r)} for r in rows]
    assert parsed[0]["param.note"] == 'a "quoted", comma\nand newline'
    assert float(parsed[1]["metric.loss"]) == 1e-9 and parsed[0]["metric.acc"] == "nan"
    assert parsed[1]["drift"] == "commit aaa -> bbb; installed packages changed" and parsed[1]["ended_at"] == ""
    assert (parsed[1]["metrics_final"], parsed[2]["param.lr"]) == ("false", "")


def test_sort_by_metric_parameter_or_column_missing_and_nan_last():
    rows = [row(1, {"lr": "1e-3"}, {"loss": 0.5}), row(2, {"lr": "1e-4"}, {"loss": "nan"}),
            row(3, {"lr": "1e-2"}, {"loss": 0.1}), row(4, {"lr": "3e-4"})]
    assert [r["id"] for r in sort_rows(rows, "loss")] == [3, 1, 2, 4]
    assert [r["id"] for r in sort_rows(rows, "-loss")] == [1, 3, 2, 4]
    assert [r["id"] for r in sort_rows(rows, "lr")] == [2, 4, 1, 3]  # numerically, not as text
    assert [r["id"] for r in sort_rows(rows, "-id")] == [4, 3, 2, 1]


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_export_of_a_group_with_drift_round_trips_through_csv(yard, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("import sys, runyard\nrunyard.report(loss=float(sys.argv[1]), ok=True)\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "one")
    yard.start_daemon()
    common = ("--cpus", "0.1", "--mem", "64M", "--group", "cmp", "--cwd", str(repo), "--", PY, "train.py")
    first = yard.submit(*common, "0.5")
    git(repo, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "two")
    second = yard.submit(*common, "0.25")
    untouched = yard.submit("--hold", "--", "true")  # outside the group
    for run_id in (first, second):
        yard.wait_state(run_id, "succeeded")

    as_json = json.loads(yard.cli("export", "--group", "cmp").stdout)
    assert [r["id"] for r in as_json] == [first, second]
    assert as_json[0]["drift"] == [] and as_json[1]["drift"][0].startswith("commit ")
    assert as_json[1]["metrics"] == {"loss": 0.25, "ok": True} and as_json[1]["state"] == "succeeded"
    assert as_json[1]["provenance_sha256"] == yard.run(second)["provenance"]["sha256"]
    assert as_json[1]["run_s"] >= 0 and as_json[1]["wait_s"] >= 0

    out = tmp_path / "cmp.csv"
    yard.cli("export", "--group", "cmp", "--format", "csv", "--out", str(out))
    with open(out, newline="") as handle:
        parsed = list(csv.DictReader(handle))
    assert parsed == [flat_row(r) for r in as_json]
    assert [float(r["metric.loss"]) for r in parsed] == [0.5, 0.25] and parsed[1]["drift"].startswith("commit ")

    everything = json.loads(yard.cli("export").stdout)
    assert [r["id"] for r in everything] == [first, second, untouched]
    table = yard.cli("ls", "--group", "cmp").stdout
    assert "commit " in table and table.splitlines()[0].startswith("cmp: 2 runs")
    assert "DRIFT" in yard.cli("show", str(second)).stdout
    missing = yard.cli("export", "--group", "nope", check=False)
    assert missing.returncode == 3 and "no group 'nope'" in missing.stderr
