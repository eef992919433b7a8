"""Trace replay (engine.simulate) and `runyard simulate`: small traces worked out by hand,
and the shared box8-300 trace against the packing targets of issue 8."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from engine import simulate
from engine.simulate import TraceError, compare, lower_bound, make_box, parse_trace, replay
from runyard import simulate_cmd

G = 1 << 30
SHARED_TRACE = Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / "box8-300.jsonl"


def trace(*rows: dict) -> list[simulate.TraceRun]:
    defaults = {"cpus": 1, "mem_gb": 1, "gpus": 1, "gpu_mem_gb": None, "priority": 0}
    return parse_trace([json.dumps({"id": i, **defaults, **row}) for i, row in enumerate(rows, 1)])


def starts(result: simulate.Replay) -> dict[int, float | None]:
    return {run_id: outcome.start_s for run_id, outcome in result.outcomes.items()}


BOX_1GPU = make_box("1x80G", 8, 64 * G)
BOX_2GPU = make_box("2x80G", 8, 64 * G)


def test_runs_queue_behind_each_other_on_one_card():
    runs = trace({"submit_s": 0, "duration_s": 100}, {"submit_s": 10, "duration_s": 50})
    report = compare(runs, BOX_1GPU, ["runyard"]).to_json()["policies"]["runyard"]
    assert report["makespan_s"] == 150
    assert report["lower_bound_s"] == 150  # GPU work: 150 card-seconds on one card
    assert report["ratio"] == 1.0
    assert report["wait"] == {"runs": 2, "mean_s": 45.0, "p95_s": 90.0, "max_s": 90.0}
    assert report["gpu_utilisation"] == 1.0


def test_shared_cards_pack_where_fifo_takes_whole_cards():
    runs = trace(*({"submit_s": 0, "duration_s": 100, "gpu_mem_gb": 20} for _ in range(4)))
    result = compare(runs, BOX_1GPU).to_json()
    ours, fifo = result["policies"]["runyard"], result["policies"]["fifo"]
    assert ours["makespan_s"] == 100 and ours["ratio"] == 1.0
    assert fifo["makespan_s"] == 400 and fifo["ratio"] == 4.0
    assert fifo["wait"]["mean_s"] == 150.0  # 0, 100, 200, 300
    assert result["runyard_vs_fifo"]["makespan"] == 0.25


def test_backfill_only_when_it_cannot_delay_the_head():
    runs = trace(
        {"submit_s": 0, "duration_s": 100, "time_limit_s": 100},
        {"submit_s": 1, "duration_s": 50, "time_limit_s": 50, "gpus": 2},  # reserves both cards at t=100
        {"submit_s": 2, "duration_s": 200, "time_limit_s": 200},  # would delay run 2: waits
        {"submit_s": 3, "duration_s": 90, "time_limit_s": 97},  # done by t=100: backfills
    )
    assert starts(replay(runs, BOX_2GPU, "runyard")) == {1: 0, 2: 100, 3: 150, 4: 3}
    assert starts(replay(runs, BOX_2GPU, "fifo")) == {1: 0, 2: 100, 3: 150, 4: 150}
    result = compare(runs, BOX_2GPU).to_json()
    assert result["lower_bound"]["seconds"] == 245  # (100 + 2*50 + 200 + 90) card-seconds / 2 cards
    assert result["policies"]["runyard"]["wait"]["mean_s"] == (0 + 99 + 148 + 0) / 4
    assert result["policies"]["fifo"]["wait"]["mean_s"] == (0 + 99 + 148 + 147) / 4
    assert result["policies"]["runyard"]["makespan_s"] == result["policies"]["fifo"]["makespan_s"] == 350


def test_priority_jumps_the_queue_but_not_under_fifo():
    runs = trace(
        {"submit_s": 0, "duration_s": 10},
        {"submit_s": 1, "duration_s": 10},
        {"submit_s": 2, "duration_s": 10, "priority": 10},
    )
    assert starts(replay(runs, BOX_1GPU, "runyard")) == {1: 0, 2: 20, 3: 10}
    assert starts(replay(runs, BOX_1GPU, "fifo")) == {1: 0, 2: 10, 3: 20}
    by_priority = compare(runs, BOX_1GPU, ["runyard"]).to_json()["policies"]["runyard"]["wait_by_priority"]
    assert list(by_priority) == ["10", "0"]
    assert by_priority["10"]["mean_s"] == 8 and by_priority["0"]["mean_s"] == 9.5


def test_a_run_that_never_fits_is_refused_and_blocks_nobody():
    runs = trace({"submit_s": 0, "duration_s": 10, "gpus": 3}, {"submit_s": 1, "duration_s": 10})
    for name in ("runyard", "fifo"):
        report = compare(runs, BOX_2GPU, [name]).to_json()["policies"][name]
        assert report["refused"] == {"1": "asks 3 GPUs; this box has 2"}
        assert report["starved"] == [] and report["started"] == 1
        assert report["wait"]["mean_s"] == 0


def test_a_run_is_stopped_at_its_time_limit():
    runs = trace({"submit_s": 0, "duration_s": 500, "time_limit_s": 100}, {"submit_s": 0, "duration_s": 10})
    report = compare(runs, BOX_1GPU, ["runyard"]).to_json()["policies"]["runyard"]
    assert report["timed_out"] == 1
    assert report["makespan_s"] == 110


def test_holdings_expire_at_the_time_limit_or_never(monkeypatch):
    # Admission sees what the engine would give it: start + limit, or no end at all.
    seen: dict[int, float | None] = {}
    decide = simulate.policy.decide

    def spy(queue, holdings, box, now, **kwargs):
        seen.update({holding.run_id: holding.expected_end for holding in holdings})
        return decide(queue, holdings, box, now, **kwargs)

    monkeypatch.setattr(simulate.policy, "decide", spy)
    runs = trace(
        {"submit_s": 0, "duration_s": 50, "time_limit_s": 60},
        {"submit_s": 0, "duration_s": 50, "gpus": 0},
        {"submit_s": 1, "duration_s": 1, "gpus": 0},
    )
    replay(runs, BOX_1GPU)
    assert seen == {1: 60.0, 2: None}


def test_lower_bound_takes_the_tightest_of_its_parts():
    late_long = trace({"submit_s": 0, "duration_s": 10}, {"submit_s": 100, "duration_s": 70, "gpus": 0})
    assert lower_bound(late_long, BOX_1GPU) == simulate.LowerBound(170, "run 2 alone")
    burst = trace({"submit_s": 0, "duration_s": 10}, *({"submit_s": 50, "duration_s": 10} for _ in range(6)))
    bound = lower_bound(burst, BOX_1GPU)
    assert bound.seconds == 110 and bound.binding == "GPU work arriving from 50s"
    cpu_bound = trace(*({"submit_s": 0, "duration_s": 10, "gpus": 0, "cpus": 8} for _ in range(3)))
    assert lower_bound(cpu_bound, BOX_1GPU).seconds == 30


def test_replay_does_not_depend_on_the_order_of_the_lines():
    rng = random.Random(3)
    rows = [{"submit_s": rng.choice([0, 5, 5, 9]), "duration_s": rng.randint(1, 40), "time_limit_s": 60,
             "gpus": rng.choice([0, 1, 2]), "priority": rng.choice([0, 10])} for _ in range(30)]
    lines = [json.dumps({"id": i, "cpus": 1, "mem_gb": 1, **row}) for i, row in enumerate(rows, 1)]
    first = compare(parse_trace(lines), BOX_2GPU).to_json()
    rng.shuffle(lines)
    again = compare(parse_trace(lines), BOX_2GPU).to_json()
    for name in ("runyard", "fifo"):
        first["policies"][name].pop("replay_s"), again["policies"][name].pop("replay_s")
    assert first == again


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "t:1: not a JSON object"),
        ('{"submit_s": 1}', "t:1: submit_s and duration_s are required"),
        ('{"submit_s": -1, "duration_s": 1}', "t:1: submit_s must be at least 0"),
        ('{"submit_s": 0, "duration_s": 1, "gpus": 1.5}', "t:1: gpus must be a whole number"),
        ('{"submit_s": 0, "duration_s": 1, "gpus": 0, "gpu_mem_gb": 10}', "t:1: --gpu-mem needs --gpus 1 or more"),
        ('{"submit_s": 0, "duration_s": 1, "time_limit_s": 0}', "t:1: time_limit_s must be more than 0"),
    ],
)
def test_a_bad_line_is_named(line, message):
    with pytest.raises(TraceError, match="^" + message.replace("(", r"\(")):
        parse_trace([line], source="t")


def test_ids_must_be_unique():
    with pytest.raises(TraceError, match="t:2: id 4 appears twice"):
        parse_trace(['{"id": 4, "submit_s": 0, "duration_s": 1}'] * 2, source="t")


# ------------------------------------------------------------------ the shared trace


@pytest.fixture(scope="module")
def box8_300() -> dict:
    if not SHARED_TRACE.exists():
        pytest.skip(f"{SHARED_TRACE} is not beside this checkout")
    runs = simulate.read_trace(SHARED_TRACE)
    return compare(runs, make_box("8x80G", 64, 512 * G)).to_json()


def test_box8_300_fifo_is_the_figure_the_issue_measured(box8_300):
    # Issue 8 gives strict FIFO with whole GPUs as 1.73 of the lower bound: this pins
    # both the FIFO model and the definition of the bound.
    assert box8_300["policies"]["fifo"]["ratio"] == pytest.approx(1.73, abs=0.005)


def test_box8_300_packing_targets(box8_300):
    ours, fifo = box8_300["policies"]["runyard"], box8_300["policies"]["fifo"]
    assert ours["starved"] == [] and ours["refused"] == {} and ours["started"] == 300
    assert ours["wait"]["mean_s"] <= 0.5 * fifo["wait"]["mean_s"]
    assert ours["ratio"] < fifo["ratio"]
    # The issue's target is 1.10; the policy reaches 1.16 on this trace (BENCHMARKS.md says
    # where the rest goes). This guards against losing more, not the target itself.
    assert ours["ratio"] <= 1.20


# ------------------------------------------------------------------ the command


def test_command_prints_json(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": 1, "submit_s": 0, "duration_s": 60, "gpus": 1}\n')
    assert simulate_cmd.main([str(path), "--box", "2x80G", "--cpus", "4", "--mem", "16G", "--policy", "both",
                              "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["policies"]) == {"runyard", "fifo"}
    assert data["policies"]["runyard"]["makespan_s"] == 60
    assert data["box"] == {"gpus": "2x80G", "cpus": 4.0, "mem_bytes": 16 * G}


def test_command_prints_a_table(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": 1, "submit_s": 0, "duration_s": 60, "gpus": 1}\n')
    assert simulate_cmd.main([str(path), "--box", "1x80G", "--cpus", "4", "--mem", "16G", "--policy", "both"]) == 0
    out = capsys.readouterr().out
    assert "makespan" in out and "runyard / fifo: makespan 1.00" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--box", "eight"], "--simulate-gpus: cannot read 'eight'"),
        (["--box", "1x80G", "--mem", "512"], "size '512' has no unit"),
        (["--box", "1x80G", "--cpus", "0"], "--cpus and --mem must be more than 0"),
    ],
)
def test_command_refuses_bad_input(tmp_path, capsys, args, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": 1, "submit_s": 0, "duration_s": 60}\n')
    assert simulate_cmd.main([str(path), *args]) == 2
    assert message in capsys.readouterr().err


def test_command_names_a_missing_trace(tmp_path, capsys):
    assert simulate_cmd.main([str(tmp_path / "nope.jsonl"), "--box", "1x80G"]) == 2
    assert "cannot read" in capsys.readouterr().err
