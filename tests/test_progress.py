"""Progress and ETA: the run-side heartbeat, the engine's estimate, and both end to end."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest

from conftest import poll_until
from engine.progress import eta
from runyard import progress


def test_eta_from_a_steady_rate():
    assert eta([(0.0, 0), (10.0, 100)], 1000) == pytest.approx(90.0)


def test_eta_ignores_the_steps_before_a_resume():
    # The second attempt resumed from step 50 and does 10 steps a second.
    points = [(0.0, 0), (10.0, 80), (20.0, 50), (22.0, 70)]
    assert eta(points, 170) == pytest.approx(10.0)


@pytest.mark.parametrize(("points", "total", "expected"), [
    ([], 100, None),
    ([(0.0, 5)], 100, None),                 # one point gives no rate
    ([(0.0, 5), (0.2, 6)], 100, None),       # too short a span to trust
    ([(0.0, 5), (10.0, 5)], 100, None),      # no progress: no promise
    ([(0.0, 5), (10.0, 100)], 100, 0.0),     # done
    ([(0.0, None), (1.0, "x")], 100, None),  # no numeric steps
])
def test_eta_when_it_cannot_be_told(points, total, expected):
    assert eta(points, total) == expected


@pytest.fixture
def beater(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.RUN_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(progress, "_beater", progress._Beater())
    return tmp_path / progress.HEARTBEAT_FILE


def test_heartbeat_writes_then_rate_limits_and_flushes_the_newest(beater):
    assert progress.heartbeat(step=1, total=10, metrics={"loss": 0.5})
    first = json.loads(beater.read_text())
    assert (first["step"], first["total"], first["metrics"], first["count"]) == (1, 10, {"loss": 0.5}, 1)
    assert not progress.heartbeat(step=2, total=10, metrics={"loss": 0.4})  # within the interval
    assert json.loads(beater.read_text())["step"] == 1
    assert progress._beater.flush()  # what the exit hook does
    assert json.loads(beater.read_text())["step"] == 2
    assert progress.heartbeat(step=10, total=10)  # the last step is always written
    assert json.loads(beater.read_text())["count"] == 3
    assert [p.name for p in beater.parent.iterdir()] == [progress.HEARTBEAT_FILE]  # no temporary left


class FakeTensor:
    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_heartbeat_writes_nan_and_tensors_as_json(beater):
    progress.heartbeat(step=3, metrics={"loss": math.nan, "grad": -math.inf, "acc": FakeTensor(0.75),
                                        "val": {"loss": math.inf}, "tag": object()}, force=True)
    metrics = json.loads(beater.read_text())["metrics"]
    assert metrics["loss"] == "nan" and metrics["grad"] == "-inf" and metrics["val"] == {"loss": "inf"}
    assert metrics["acc"] == 0.75 and metrics["tag"].startswith("<object")


def test_heartbeat_outside_runyard_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.RUN_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert progress.heartbeat(step=1, total=2) is False
    assert list(tmp_path.iterdir()) == []


TRAIN = textwrap.dedent("""
    import time, runyard
    total = 400
    for step in range(1, total + 1):
        runyard.heartbeat(step=step, total=total, metrics={"loss": LOSS}, min_interval_s=0.2)
        time.sleep(0.05)
""")


def test_progress_eta_and_metrics_reach_show_and_ls(yard):
    yard.start_daemon()
    run_id = yard.submit("--", sys.executable, "-c", TRAIN.replace("LOSS", "1.0 / step"))
    run = poll_until(lambda: (r := yard.run(run_id))["eta"] and (r["progress"] or {}).get("step", 0) > 5 and r,
                     timeout=60, message="a progress with an ETA")
    assert run["progress"]["total"] == 400 and 0 < run["metrics"]["loss"] < 1
    assert run["eta"] > run["started_at"]
    line = next(line for line in yard.cli("ls").stdout.splitlines() if line.split()[0] == str(run_id))
    assert "/400 eta " in line
    yard.cli("cancel", str(run_id))
    yard.wait_state(run_id, "cancelled")


def test_a_nan_loss_in_a_heartbeat_becomes_a_warning(yard):
    yard.start_daemon()
    run_id = yard.submit("--", sys.executable, "-c", TRAIN.replace("LOSS", "float('nan')"))
    run = poll_until(lambda: (r := yard.run(run_id))["warning"] and r, timeout=60, message="a warning")
    assert "loss is NaN" in run["warning"]
    yard.cli("cancel", str(run_id))
    yard.wait_state(run_id, "cancelled")
