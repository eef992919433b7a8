"""Screenshots of the interface with fixed data and a fixed clock (pytest-textual-snapshot).

Regenerate after an intended visual change with
``python -m pytest tests/test_tui_snapshots.py --snapshot-update`` and look at the SVGs
(``snapshot_report.html`` shows differences when a test fails).
"""

from __future__ import annotations

import copy
from pathlib import Path
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
             power_w=188.0, holders=[4, 7],
             processes=[{"pid": 7001, "used_mem": 9 * GIB, "run_id": 4, "user": "alice"},
                        {"pid": 7002, "used_mem": 3 * GIB, "run_id": None, "user": "bob"}]),
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
         health="healthy", attempts=2, retries=3, eta=NOW + 7 * 3600 + 20 * 60,
         envelope={"cpus": 8.0, "mem_bytes": 64 * GIB, "gpus": 1, "time_limit_s": 12 * 3600.0}),
    _run(4, "resnet50-sweep-lr3e-4", "running", gpus=[1], started_at=NOW - 25 * 60, pid=5002,
         warning="GPU 1 idle (under 5%) for 15m", attempts=1,
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


LOG_LINES = [
    "loading dataset shards from /data/wiki (128 files)",
    "model: bert-large, 335M parameters, bf16",
] + [f"step {step:>5}/20000  loss {4.0 / (1 + step / 500):.4f}  lr 1.0e-04  tok/s {9800 + step % 173}"
     for step in range(100, 4100, 100)] + ["\x1b[33mwarning:\x1b[0m grad norm 12.3 clipped to 1.0", "saved checkpoint step 4000"]

DETAIL = {
    "checkpoint_dir": "/home/alice/.local/state/runyard/runs/3/checkpoints",
    "checkpoints": [
        {"path": f"/home/alice/.local/state/runyard/runs/3/checkpoints/step-{step:08d}.pt", "step": step,
         "epoch": None, "metrics": {"loss": round(4.0 / (1 + step / 500), 4)}, "size_bytes": int(1.3 * GIB),
         "saved_at": NOW - (4000 - step) * 2, "is_best": step == 4000, "newest": step == 4000}
        for step in (2000, 3000, 4000)
    ],
    "attempts": 2, "attempt": 2, "retries": 3,
    "health": "healthy", "health_detail": "last check passed 12s ago",
    "health_policy": {"cmd": "curl -sf localhost:8080/health", "interval_s": 30.0, "retries": 3, "timeout_s": 10.0,
                      "stall_timeout_s": 600.0, "on_stall": "warn", "start_period_s": 0.0},
    "health_checks": [
        {"attempt": 2, "at": NOW - 12 - 30 * index, "check_name": "cmd", "ok": index != 3,
         "health": "healthy" if index != 3 else "starting", "output": "" if index != 3 else "curl: (7) refused"}
        for index in range(4, -1, -1)
    ],
    "progress": {"step": 4000, "total": 20000, "metrics": {"loss": 0.4444}, "at": NOW - 3},
    "eta": NOW + 7 * 3600 + 20 * 60,
    "provenance": {"git": {"commit": "3f9c2e1d", "branch": "main", "dirty": False},
                   "python": "3.11.7", "packages": {"torch": "2.13.0", "transformers": "4.52.0"},
                   "host": "gpubox", "argv_sha256": "9b1c…e04"},
}

USAGE = {
    "summary": {"samples": 400, "first_at": NOW - 8000, "last_at": NOW,
                "cpu_percent": {"mean": 610.0, "max": 790.0}, "rss_bytes": {"mean": 41 * GIB, "max": 58 * GIB},
                "gpu_mem_bytes": {"mean": 55 * GIB, "max": 61 * GIB},
                "gpu_util_percent": {"mean": 91.0, "max": 99.0}, "disk_bytes": {"mean": 3 * GIB, "max": 4 * GIB},
                "processes": {"max": 9}},
    "series": [
        {"at": NOW - 8000 + 100 * index, "cpu_percent": 500.0 + (index * 37) % 300,
         "rss_bytes": (30 + index % 29) * GIB, "rss_bytes_max": (31 + index % 29) * GIB,
         "gpu_mem_bytes": min(61, 40 + index // 4) * GIB, "gpu_util_percent": 80.0 + (index * 7) % 20,
         "disk_bytes": (index // 20 + 1) * GIB}
        for index in range(80)
    ],
}

HISTORY = [
    {"at": NOW - 600 + 10 * index, "cpu_percent": 30.0 + (index * 13) % 40, "mem_used_bytes": (90 + index % 20) * GIB,
     "mem_total_bytes": 256 * GIB, "disk_free_bytes": int(1.2 * TIB),
     "gpus": [{"index": 0, "util_percent": 90.0 + index % 10}, {"index": 1, "util_percent": (index * 9) % 100},
              {"index": 2, "util_percent": 12.0 if index > 40 else 0.0}, {"index": 3, "util_percent": None}]}
    for index in range(60)
]


class FakeClient:
    """Answers from fixed data, as the daemon would."""

    def __init__(self, status: dict | None = None, *, unavailable: bool = False, log_path: str | None = None) -> None:
        self.status = copy.deepcopy(status or STATUS)
        self.unavailable = unavailable
        self.log_path = log_path

    def call(self, op: str, **args: Any) -> Any:
        if self.unavailable:
            raise DaemonUnavailable("[Errno 2] No such file or directory")
        if op == "status":
            return copy.deepcopy(self.status)
        if op == "ls":
            runs = ACTIVE_RUNS + (FINISHED_RUNS if args.get("all") else [])
            return copy.deepcopy(runs)
        if op == "history":
            return copy.deepcopy(HISTORY)
        if op == "show":
            run = copy.deepcopy(next(run for run in ACTIVE_RUNS + FINISHED_RUNS if run["id"] == args["id"]))
            if run["id"] == 3:
                run.update(copy.deepcopy(DETAIL), log_path=self.log_path)
            return run
        if op == "usage":
            run = next(run for run in ACTIVE_RUNS if run["id"] == args["id"])
            return {"run": copy.deepcopy(run), **copy.deepcopy(USAGE)}
        if op == "preview":
            return {"verdict": "waits", "reason": "waiting: needs 2 GPUs with 40G free each; 1 has room",
                    "describe": "8 CPU, 64G, 2 GPUs x 40G, 12h"}
        raise AssertionError(f"unexpected op {op!r}")


def make_app(client: FakeClient | None = None, **kwargs: Any) -> RunyardApp:
    app = RunyardApp(client or FakeClient(), clock=lambda: NOW, hostname="gpubox", poll_interval_s=3600,
                     settings_path=Path("/nonexistent/tui.toml"), **kwargs)
    # Nothing may move between two screenshots: no animations, no blinking cursors.
    app.animation_level = "none"
    return app


async def _settle(pilot) -> None:
    """Let the polls land and their data render."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


@pytest.fixture(autouse=True)
def _colour_terminal(monkeypatch):
    # The screenshots must not depend on the terminal that runs the tests.
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture
def log_file(tmp_path: Path) -> str:
    path = tmp_path / "output.log"
    path.write_text("\n".join(LOG_LINES) + "\n")
    return str(path)


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


@pytest.mark.parametrize("theme", ["runyard-light", "runyard-contrast"])
def test_overview_in_other_themes(snap_compare, theme):
    assert snap_compare(make_app(theme_name=theme), terminal_size=(80, 24), run_before=_settle)


def _open_detail(tab: str | None = None):
    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("enter")  # the cursor starts on run 3
        if tab:
            await pilot.press(tab)
        for _ in range(3):
            await _settle(pilot)
            await pilot.pause(0.05)
    return run_before


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_run_detail_log(snap_compare, log_file, size):
    app = make_app(FakeClient(log_path=log_file))
    assert snap_compare(app, terminal_size=size, run_before=_open_detail())


@pytest.mark.parametrize(("tab", "size"), [("2", (80, 24)), ("3", (80, 24)), ("4", (160, 48)), ("5", (80, 24))],
                         ids=["checkpoints", "health", "usage", "provenance"])
def test_run_detail_tabs(snap_compare, log_file, tab, size):
    app = make_app(FakeClient(log_path=log_file))
    assert snap_compare(app, terminal_size=size, run_before=_open_detail(tab))


def test_submit_form_with_a_mistake(snap_compare, tmp_path: Path):
    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("n")
        await pilot.pause()
        form = pilot.app.screen
        for field in form.query("Input"):
            field.cursor_blink = False
        form.query_one("#cwd").value = "/home/alice/exp"
        form.query_one("#command").value = "python train.py --lr 3e-4"
        form.query_one("#gpus").value = "2"
        form.query_one("#gpu_mem").value = "40G"
        form.query_one("#mem").value = "64"
        await pilot.pause(0.6)
        await _settle(pilot)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)
