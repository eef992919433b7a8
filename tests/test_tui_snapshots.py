"""Screenshots of the interface with fixed data and a fixed clock (pytest-textual-snapshot).

Regenerate after an intended visual change with
``python -m pytest tests/test_tui_snapshots.py --snapshot-update`` and look at the SVGs
(``snapshot_report.html`` shows differences when a test fails).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from engine.client import DaemonUnavailable
from tui.app import RunyardApp

NOW = 1_760_000_000.0
GIB = 1 << 30
TIB = 1 << 40


def _gpu(index: int, **fields: Any) -> dict[str, Any]:
    gpu = {
        "index": index, "name": "NVIDIA A100-SXM4-80GB", "uuid": f"GPU-sim-{index}", "mem_total": 80 * GIB,
        "mem_used": 0, "util_percent": 0.0, "temperature_c": 34.0, "power_w": 61.0, "available": True,
        "unavailable_reason": None, "holders": [], "mem_reserved": 0,
    }
    gpu.update(fields)
    return gpu


STATUS = {
    "engine": {"pid": 4242, "version": "0.1.0", "home": "/home/alice/.local/state/runyard", "started_at": NOW - 86400,
               "draining": False, "mode": "daemon", "gpu_source": "simulated 4x80G"},
    "host": {"cpus": 32.0, "cpu_percent": 41.5, "mem_total": 256 * GIB, "mem_available": 150 * GIB,
             "disk_total": 2 * TIB, "disk_free": int(1.2 * TIB), "load1": 12.4},
    "gpus": [
        _gpu(0, mem_used=61 * GIB, mem_reserved=80 * GIB, util_percent=97.0, temperature_c=66.0, power_w=312.0,
             holders=[3]),
        _gpu(1, mem_used=int(22.5 * GIB), mem_reserved=40 * GIB, util_percent=54.0, temperature_c=52.0,
             power_w=188.0, holders=[4, 7]),
        _gpu(2, mem_used=int(9.8 * GIB), util_percent=12.0, temperature_c=41.0, power_w=90.0),
        _gpu(3, mem_used=0, util_percent=None, temperature_c=None, power_w=None, available=False,
             unavailable_reason="lost: Xid 79 (fell off the bus)"),
    ],
    "reserved": {"cpus": 14.0, "mem_bytes": 96 * GIB, "gpus": 2},
    "counts": {"queued": 3, "running": 3, "succeeded": 1, "failed": 1, "cancelled": 1, "timed_out": 1},
    "sampled_at": NOW,
}


def _run(run_id: int, name: str, state: str, **fields: Any) -> dict[str, Any]:
    envelope = {"cpus": 1.0, "mem_bytes": GIB, "gpus": 0, "gpu_mem_bytes": None, "disk_bytes": 0,
                "time_limit_s": None}
    envelope.update(fields.pop("envelope", {}))
    run = {
        "id": run_id, "name": name, "state": state, "reason": "", "priority": 0, "held": False,
        "argv": ["python", "train.py", f"--run={name}"], "cwd": "/home/alice/exp", "exit_code": None,
        "signal": None, "pid": None, "gpus": [], "envelope": envelope, "grace_s": 30.0,
        "submitted_at": NOW - 3 * 3600, "started_at": None, "ended_at": None, "deadline": None,
        "log_path": None, "user": "alice", "uid": 1000,
    }
    run.update(fields)
    return run


ACTIVE_RUNS = [
    _run(3, "bert-large-pretrain", "running", gpus=[0], started_at=NOW - (2 * 3600 + 13 * 60 + 5), pid=5001,
         envelope={"cpus": 8.0, "mem_bytes": 64 * GIB, "gpus": 1, "time_limit_s": 12 * 3600.0}),
    _run(4, "resnet50-sweep-lr3e-4", "running", gpus=[1], started_at=NOW - 25 * 60, pid=5002,
         envelope={"cpus": 2.0, "mem_bytes": 16 * GIB, "gpus": 1, "gpu_mem_bytes": 20 * GIB,
                   "time_limit_s": 4 * 3600.0}),
    _run(7, "tokenizer-eval", "running", gpus=[1], started_at=NOW - 190, pid=5003,
         envelope={"cpus": 4.0, "mem_bytes": 16 * GIB, "gpus": 1, "gpu_mem_bytes": 20 * GIB}),
    _run(8, "llama-7b-finetune", "queued", priority=5, submitted_at=NOW - 40 * 60,
         reason="waiting: needs 2 GPUs with 40G free each; 1 has room",
         envelope={"cpus": 8.0, "mem_bytes": 128 * GIB, "gpus": 2, "gpu_mem_bytes": 40 * GIB,
                   "time_limit_s": 24 * 3600.0}),
    _run(9, "ablation-no-dropout", "queued", held=True, reason="held", submitted_at=NOW - 15 * 60,
         envelope={"cpus": 4.0, "mem_bytes": 32 * GIB, "gpus": 1, "time_limit_s": 6 * 3600.0}),
    _run(10, "data-prep-shards", "queued", submitted_at=NOW - 5 * 60,
         reason="waiting: needs 120G memory, 106G free",
         envelope={"cpus": 16.0, "mem_bytes": 120 * GIB, "disk_bytes": 200 * GIB, "time_limit_s": 2 * 3600.0}),
]
FINISHED_RUNS = [
    _run(1, "smoke-test", "succeeded", exit_code=0, started_at=NOW - 3 * 3600, ended_at=NOW - 3 * 3600 + 42),
    _run(2, "vit-base-cifar", "failed", exit_code=1, started_at=NOW - 2.5 * 3600, ended_at=NOW - 2.4 * 3600,
         reason="exited with status 1", envelope={"gpus": 1}, gpus=[2]),
    _run(5, "gan-sweep-7", "cancelled", reason="cancelled by alice", ended_at=NOW - 3600),
    _run(6, "long-rl-run", "timed_out", signal="SIGTERM", started_at=NOW - 2 * 3600, ended_at=NOW - 3600,
         reason="time limit 1h reached", envelope={"cpus": 4.0, "time_limit_s": 3600.0}),
]


class FakeClient:
    """Answers ``status`` and ``ls`` from fixed data, as the daemon would."""

    def __init__(self, status: dict | None = None, *, unavailable: bool = False) -> None:
        self.status = copy.deepcopy(status or STATUS)
        self.unavailable = unavailable

    def call(self, op: str, **args: Any) -> Any:
        if self.unavailable:
            raise DaemonUnavailable("[Errno 2] No such file or directory")
        if op == "status":
            return copy.deepcopy(self.status)
        if op == "ls":
            runs = ACTIVE_RUNS + (FINISHED_RUNS if args.get("all") else [])
            return copy.deepcopy(runs)
        raise AssertionError(f"unexpected op {op!r}")


def make_app(client: FakeClient | None = None) -> RunyardApp:
    app = RunyardApp(client or FakeClient(), clock=lambda: NOW, hostname="gpubox", poll_interval_s=3600)
    # Nothing may move between two screenshots: no animations (and no blinking cursor,
    # which this screen does not have).
    app.animation_level = "none"
    return app


async def _settle(pilot) -> None:
    """Let the first poll land and its data render."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


@pytest.fixture(autouse=True)
def _colour_terminal(monkeypatch):
    # The screenshots must not depend on the terminal that runs the tests.
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_overview(snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=_settle)


def test_all_runs_wide(snap_compare):
    assert snap_compare(make_app(), terminal_size=(160, 48), run_before=_settle_after_toggle)


async def _settle_after_toggle(pilot) -> None:
    await _settle(pilot)
    await pilot.press("a")
    await _settle(pilot)


def test_engine_unreachable(snap_compare):
    assert snap_compare(make_app(FakeClient(unavailable=True)), terminal_size=(80, 24), run_before=_settle)


def test_draining(snap_compare):
    status = copy.deepcopy(STATUS)
    status["engine"]["draining"] = True
    assert snap_compare(make_app(FakeClient(status)), terminal_size=(80, 24), run_before=_settle)
