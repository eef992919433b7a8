"""Sweeps: parameters, grids and seeded random draws, placeholders, and whole sweeps
queued through the real daemon (all of them in one group, or nothing at all)."""

from __future__ import annotations

import json
import sys

import pytest

from runyard.sweep import MAX_RUNS, SweepError, check_placeholders, combinations, fill, parse_params

PY = sys.executable


def test_values_lists_and_ranges():
    assert parse_params(["lr=1e-3,1e-4", "seed=1..3", "opt=adam"]) == {
        "lr": ["1e-3", "1e-4"], "seed": ["1", "2", "3"], "opt": ["adam"],
    }
    assert parse_params(["k=-1..1,5"]) == {"k": ["-1", "0", "1", "5"]}


@pytest.mark.parametrize(("items", "message"), [
    (["lr="], "--param lr= has no values; write e.g. lr=1,2,3 or lr=1..3"),
    (["seed=3..1"], "--param seed=3..1 is empty; write 1..3 (ranges count up and include both ends)"),
    (["lr=1,,2"], "--param lr=1,,2: an empty value between commas; remove the extra comma"),
    (["lr"], "--param 'lr': write NAME=VALUES, e.g. lr=1e-3,1e-4 or seed=1..3"),
    (["1x=2"], "--param '1x=2': write NAME=VALUES, e.g. lr=1e-3,1e-4 or seed=1..3"),
    (["lr=1", "lr=2"], "--param lr is given twice; list all its values in one: lr=a,b,c"),
    (["lr=1,2,1"], "--param lr repeats 1; give each value once"),
    (["n=a..b"], "--param n=a..b: a range is two whole numbers, e.g. 1..5"),
    (["n=1..5000"], f"--param n=1..5000 has 5000 values; a sweep queues at most {MAX_RUNS} runs"),
    ([], "no --param given; e.g. --param lr=1e-3,1e-4, then {lr} in the command"),
])
def test_bad_parameters_say_what_to_write(items, message):
    with pytest.raises(SweepError) as caught:
        parse_params(items)
    assert str(caught.value) == message


def test_placeholders_are_checked_and_filled_per_element():
    params = {"lr": ["1"], "seed": ["1"]}
    with pytest.raises(SweepError, match=r"^placeholder \{lrr\} in argv has no --param \(known: lr, seed\)$"):
        check_placeholders(["python", "train.py", "--lr={lrr}"], params)
    with pytest.raises(SweepError, match=r"^--param lr is used nowhere; put \{lr\} in the command$"):
        check_placeholders(["python", "train.py"], params)
    with pytest.raises(SweepError, match=r"in --name has no --param"):
        check_placeholders(["x", "{lr}"], params, also={"--name": "run-{bs}"})
    check_placeholders(["x", "--lr={lr}", "{{literal}}", "{'a': {'b': 1}}"], params)  # seed may stay unused
    values = {"lr": "1e-3", "seed": "2"}
    assert fill("--lr={lr}", values) == "--lr=1e-3"
    assert fill("a {lr} b; rm -rf {{lr}}", values) == "a 1e-3 b; rm -rf {lr}"  # text, never a shell
    assert fill("{'a': {'b': 1}}", values) == "{'a': {'b': 1}}"


def test_grid_is_every_combination_first_parameter_slowest():
    assert combinations({"lr": ["a", "b"], "seed": ["1", "2", "3"]}) == [
        {"lr": lr, "seed": seed} for lr in "ab" for seed in "123"
    ]


def test_seeded_random_draws_are_reproducible_and_distinct():
    params = {"lr": ["1", "2", "3", "4"], "seed": [str(i) for i in range(10)], "bs": ["8", "16"]}
    first = combinations(params, random_k=12, sample_seed=7)
    assert first == combinations(params, random_k=12, sample_seed=7)
    assert first != combinations(params, random_k=12, sample_seed=8)
    assert len({tuple(c.items()) for c in first}) == 12
    grid = combinations(params)
    assert all(c in grid for c in first)
    with pytest.raises(SweepError, match="only 80 combinations; ask for at most 80"):
        combinations(params, random_k=81, sample_seed=1)


def test_random_draw_from_a_huge_grid_never_builds_it():
    params = {f"p{i}": [str(v) for v in range(10)] for i in range(12)}  # 10^12 combinations
    drawn = combinations(params, random_k=5, sample_seed=1)
    assert len(drawn) == 5 and all(len(c) == 12 for c in drawn)
    with pytest.raises(SweepError, match="use --random K"):
        combinations(params)


# -------------------------------------------------------------------- end to end


REPORT = "import sys, runyard; runyard.report(score=float(sys.argv[1]) * int(sys.argv[2]))"


def test_grid_sweep_queues_one_group_and_ranks_it(yard):
    yard.start_daemon()
    out = yard.cli("sweep", "--cpus", "0.1", "--mem", "64M", "--param", "lr=0.5,2", "--param", "seed=1..3",
                   "--name", "lr{lr}-s{seed}", "--json", "--", PY, "-c", REPORT, "{lr}", "{seed}")
    sweep = json.loads(out.stdout)
    group = sweep["group"]
    assert group == "sweep-1" and len(sweep["runs"]) == 6
    assert [run["params"] for run in sweep["runs"]] == [{"lr": lr, "seed": s} for lr in ("0.5", "2") for s in "123"]
    assert [run["argv"][-2:] for run in sweep["runs"]] == [[lr, s] for lr in ("0.5", "2") for s in "123"]
    assert [run["seed"] for run in sweep["runs"]] == [1, 2, 3, 1, 2, 3]
    assert sweep["runs"][4]["name"] == "lr2-s2" and {run["group"] for run in sweep["runs"]} == {group}
    for run in sweep["runs"]:
        yard.wait_state(run["id"], "succeeded")
    ranked = yard.json("ls", "--group", group, "--sort=-score")
    assert [row["metrics"]["score"] for row in ranked] == [6.0, 4.0, 2.0, 1.5, 1.0, 0.5]
    assert ranked[0]["params"] == {"lr": "2", "seed": "3"} and all(row["metrics_final"] for row in ranked)
    table = yard.cli("ls", "--group", group, "--sort", "score").stdout.splitlines()
    assert table[0].startswith("sweep-1: grid over lr (2) x seed (3); 6 runs (6 succeeded)")
    assert table[1].split()[:5] == ["ID", "STATE", "LR", "SEED", "SCORE"]
    assert table[2].split()[2:5] == ["0.5", "1", "0.5"]
    assert "lr=2 seed=2" in yard.cli("show", str(sweep["runs"][4]["id"])).stdout


def test_seeded_random_sweep_is_reproducible_and_a_typo_queues_nothing(yard):
    yard.start_daemon()
    args = ("sweep", "--hold", "--cpus", "0.1", "--mem", "64M", "--param", "lr=1,2,3,4", "--param", "wd=0..9",
            "--random", "5", "--sample-seed", "11", "--json", "--", "true", "{lr}", "{wd}")
    first, second = (json.loads(yard.cli(*args).stdout) for _ in range(2))
    assert first["group"] != second["group"] and first["sample_seed"] == 11
    assert [r["params"] for r in first["runs"]] == [r["params"] for r in second["runs"]]
    assert len({json.dumps(r["params"]) for r in first["runs"]}) == 5
    before = yard.json("ls", "--all")

    typo = yard.cli("sweep", "--param", "lr=1,2", "--param", "seed=1..3", "--", "true", "--lr", "{lrr}",
                    check=False)
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr == "runyard sweep: placeholder {lrr} in argv has no --param (known: lr, seed)\n"
    for bad in (["--param", "lr="], ["--param", "seed=3..1"]):
        refused = yard.cli("sweep", *bad, "--", "true", "{lr}", check=False)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    # Refused by the engine (no such program) after the client's checks: still all or nothing.
    missing = yard.cli("sweep", "--param", "x=1,2", "--", "no-such-program-xyz", "{x}", check=False)
    assert missing.returncode == 2 and "command not found" in missing.stderr
    taken = yard.cli("sweep", "--group", first["group"], "--param", "x=1", "--", "true", "{x}", check=False)
    assert taken.returncode == 2 and "already exists" in taken.stderr
    assert yard.json("ls", "--all") == before


def test_sweep_with_no_engine_running_queues_in_the_database(yard, tmp_path):
    out = yard.cli("sweep", "--param", "n=1..3", "--group", "offline", "--", "true", "{n}")
    assert out.stdout.startswith("offline: 3 runs queued") and "no engine is running" in out.stderr
    rows = yard.json("ls", "--group", "offline")
    assert [r["params"] for r in rows] == [{"n": "1"}, {"n": "2"}, {"n": "3"}]
    assert all(r["provenance_sha256"] and r["state"] == "queued" for r in rows)
    assert yard.run(rows[0]["id"])["provenance"]["argv"] == ["true", "1"]
    assert len(json.loads(yard.cli("export").stdout)) == 3


# ----------------------------------------------------------------------- the TUI


def result_row(run_id, lr, score, *, final=True, drift=()):
    return {"id": run_id, "name": f"train-{run_id}", "group": "sweep-1", "state": "succeeded",
            "params": {"lr": lr}, "metrics": {"score": score}, "metrics_final": final, "seed": None,
            "exit_code": 0, "attempts": 1, "submitted_at": 0.0, "started_at": 1.0, "ended_at": 61.0,
            "wait_s": 1.0, "run_s": 60.0, "provenance_sha256": "ab", "drift": list(drift)}


async def test_group_view_sorts_runs_by_a_metric_and_opens_one():
    from test_tui import FakeClient, make_app, make_run, wait_for
    from textual.widgets import DataTable

    from tui.screens.group import GroupScreen
    from tui.screens.run_detail import RunDetailScreen

    class SweepClient(FakeClient):
        def call(self, op, **args):
            if op == "results":
                self.calls.append((op, args))
                return {"group": {"name": args["group"]}, "runs": [
                    result_row(1, "1e-3", 0.5), result_row(2, "1e-4", 0.9, drift=["installed packages changed"]),
                    result_row(3, "1e-2", 0.7, final=False)]}
            return super().call(op, **args)

    client = SweepClient(active=[make_run(1, "running", group="sweep-1"), make_run(2, "queued")], finished=[])
    app = make_app(client)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        await wait_for(pilot, lambda: app.last_view is not None, "the first poll")
        await pilot.press("g")  # on run 1, a member of sweep-1
        await wait_for(pilot, lambda: isinstance(app.screen, GroupScreen) and app.screen.rows, "the group's rows")
        screen = app.screen
        table = screen.query_one(DataTable)

        def ids():
            return [str(row.key.value) for row in table.ordered_rows]

        assert [str(key.value) for key in table.columns] == ["id", "state", "lr", "score", "time", "drift"]
        assert ids() == ["1", "2", "3"]
        assert str(table.get_cell("3", "score")) == "0.7*"  # not final: from the heartbeat
        assert str(table.get_cell("2", "drift")) == "installed packages changed"
        for _ in range(5):  # id -> state -> time -> wait -> lr -> score
            await pilot.press("s")
        assert screen.sort_key == "score" and ids() == ["1", "3", "2"]
        await pilot.press("S")  # best score first
        assert ids() == ["2", "3", "1"] and "by score (largest first)" in str(screen.query_one("#group-title").render())
        assert screen.current_run_id() == 1  # the cursor stays on its run as the rows move
        await pilot.press("up", "up", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunDetailScreen), "the run's detail")
        assert app.screen.run_id == 2
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, "back on the group")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, GroupScreen), "back on the dashboard")
