"""The TUI's dashboard with 10,000 runs in the database and 8 simulated GPUs.

    python benchmarks/tui_dashboard.py [--refreshes 20] [--out benchmarks/results/tui_dashboard.json]

Builds a throwaway RUNYARD_HOME holding 10,000 runs: 9,700 finished (written straight
into the database, as months of use would leave them), 20 running real processes packed
on 8 simulated 80G GPUs, and 280 queued that cannot start (they want 4 whole GPUs; a
tenth are held). The engine runs embedded; the real app (``tui.app.RunyardApp``) runs in
Textual's headless mode, talking to it through the in-process client and then through
the socket, and measures:

- ``first_render_s``: from starting the app to the first poll's figures being drawn
  (the resources panel and every row of the default queue view);
- per refresh with unchanged data, ``poll_ms`` (the worker thread: asking the engine,
  decoding the answer) and ``apply_ms`` (the UI thread: deciding what changed and
  updating widgets), median and p95, and ``rows_rewritten`` (must be 0: a row whose cells
  read the same is never written again; the table's own change counter confirms it);
- the same for the "all runs" view (``a``), whose first fill adds 10,000 rows in chunks
  and whose later refreshes must not re-read the finished runs;
- ``logs_opened``: files under ``runs/`` opened by the app while on the dashboard (must
  be 0: the dashboard never reads a log).

The app's clock is frozen so that elapsed times do not change between refreshes: what
is measured is the cost of a refresh that finds nothing new.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.daemon import start_embedded  # noqa: E402
from engine.envelope import Envelope  # noqa: E402
from engine.model import RunSpec  # noqa: E402
from engine.paths import Home  # noqa: E402
from engine.store import sql  # noqa: E402
from engine.store.schema import migrate  # noqa: E402

TOTAL_RUNS = 10_000
QUEUED = 280
RUNNING = 20
GPUS = "8x80G"
GIB = 1 << 30
SLEEPER = "import time; time.sleep(3600)"


def _spec(home: Home, rng: random.Random, index: int, *, queued: bool) -> RunSpec:
    names = ["bert", "resnet50", "llama-7b", "vit-b16", "t5-small", "gpt2-medium", "whisper", "clip"]
    return RunSpec(
        argv=("python", "train.py", f"--seed={index}"), cwd=str(home.root), env={"RUNYARD_HOME": str(home.root)},
        name=f"{rng.choice(names)}-sweep-{index}", priority=rng.choice((0, 0, 0, 5)),
        # Queued runs want 4 whole GPUs: with the live runs spread over all 8, they wait.
        envelope=Envelope(cpus=2.0, mem_bytes=16 * GIB, gpus=4 if queued else rng.choice((0, 1, 1, 2, 4)),
                          time_limit_s=rng.choice((3600.0, 7200.0))),
        held=queued and index % 10 == 0,
    )


def populate_finished(home: Home) -> None:
    """9,700 finished runs, written straight into the database, as months of use leave them."""
    home.ensure()
    migrate(home.db_path)
    conn = sql.connect(home.db_path)
    rng = random.Random(7)
    now = time.time()
    finished = TOTAL_RUNS - QUEUED - RUNNING
    with sql.write_transaction(conn):
        for index in range(finished):
            submitted = now - (finished - index) * 120
            run_id = sql.insert_run(conn, _spec(home, rng, index, queued=False), now=submitted, runs_dir=home.runs_dir,
                                    uid=os.getuid(), user=rng.choice(("alice", "bob", "carol")))
            state, code, reason = rng.choice((
                ("succeeded", 0, "exited with status 0"), ("succeeded", 0, "exited with status 0"),
                ("failed", 1, "exited with status 1"), ("cancelled", None, "cancelled by user"),
                ("timed_out", -15, "time limit 1h reached"),
            ))
            started = submitted + rng.uniform(1, 600)
            conn.execute(
                "UPDATE runs SET state = ?, reason = ?, exit_code = ?, started_at = ?, ended_at = ? WHERE id = ?",
                (state, reason, code, started, started + rng.uniform(60, 7200), run_id),
            )
    conn.close()


def populate_queued(home: Home) -> None:
    """280 queued runs, once the live runs hold every GPU: none of them can start."""
    conn = sql.connect(home.db_path)
    rng = random.Random(11)
    with sql.write_transaction(conn):
        for index in range(QUEUED):
            sql.insert_run(conn, _spec(home, rng, index, queued=True), now=time.time(), runs_dir=home.runs_dir,
                           uid=os.getuid(), user=rng.choice(("alice", "bob", "carol")))
    conn.close()


def submit_running(client, home: Home) -> None:
    """20 real processes, packed onto the 8 GPUs (20G of 80G each)."""
    for index in range(RUNNING):
        client.call("submit", argv=[sys.executable, "-c", SLEEPER], cwd=str(home.root),
                    env={**os.environ, "RUNYARD_HOME": str(home.root)}, name=f"live-{index}",
                    envelope={"cpus": 0.05, "mem_bytes": 128 << 20, "gpus": 1, "gpu_mem_bytes": 20 * GIB})
    deadline = time.monotonic() + 120
    while sum(run["state"] == "running" for run in client.call("ls")) < RUNNING:
        if time.monotonic() > deadline:
            raise SystemExit("benchmark: the running runs did not start")
        time.sleep(0.2)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def figures(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 2),
            "p95_ms": round(percentile(values, 0.95) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2)}


async def measure(client, refreshes: int, logs_opened: list[str]) -> dict:
    from tui.app import RunyardApp
    from tui.screens.dashboard import DashboardScreen
    from tui.widgets.queue_table import QueueTable

    frozen = time.time()
    polls: list[float] = []
    applies: list[float] = []
    handled = 0

    class MeasuredApp(RunyardApp):
        def on_view_polled(self, message) -> None:  # type: ignore[override]
            nonlocal handled
            started = time.perf_counter()
            super().on_view_polled(message)
            applies.append(time.perf_counter() - started)
            # Textual calls the handler of every class in the MRO: without this the app's
            # own handler would run again, unmeasured, after this one.
            message.prevent_default()
            handled += 1

    class TimedPoller:
        def __init__(self, poller) -> None:
            self.poller = poller
            self.finished = poller.finished

        def fetch(self, *, show_all: bool):
            started = time.perf_counter()
            view = self.poller.fetch(show_all=show_all)
            polls.append(time.perf_counter() - started)
            return view

    app = MeasuredApp(client, clock=lambda: frozen, poll_interval_s=3600, settings_path=Path("/nonexistent"))
    app._poller = TimedPoller(app._poller)
    result: dict = {}
    started = time.perf_counter()
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(QueueTable)
        while handled < 1:
            await pilot.pause(0.001)
        await pilot.pause()
        result["first_render_s"] = round(time.perf_counter() - started, 3)
        result["rows_default_view"] = table.row_count

        async def refresh_series(label: str) -> None:
            polls.clear()
            applies.clear()
            written, changes = [], []
            for _ in range(refreshes):
                seen = handled
                before = table._update_count
                app.action_refresh_now()
                while handled == seen:
                    await pilot.pause(0.001)
                await pilot.pause()
                written.append(table.rows_written)
                changes.append(table._update_count - before)
            result[label] = {
                "poll": figures(polls), "apply": figures(applies),
                "rows_rewritten_max": max(written), "table_changes_max": max(changes),
            }

        await refresh_series("refresh_default_view")
        result["logs_opened_on_dashboard"] = len(logs_opened)

        # Responsiveness while the table fills: the longest gap between ticks of a
        # 10 ms timer is the longest a key press would have waited.
        gaps: list[float] = []
        last_tick = time.perf_counter()

        def tick() -> None:
            nonlocal last_tick
            now = time.perf_counter()
            gaps.append(now - last_tick)
            last_tick = now

        timer = app.set_interval(0.01, tick)
        fill_started = time.perf_counter()
        seen = handled
        await pilot.press("a")
        while handled == seen or table.row_count < TOTAL_RUNS:
            await pilot.pause(0.001)
        await pilot.pause()
        timer.stop()
        result["all_view_first_fill_s"] = round(time.perf_counter() - fill_started, 3)
        result["all_view_fill_longest_ui_stall_ms"] = round(max(gaps) * 1000, 1)
        result["rows_all_view"] = table.row_count
        await refresh_series("refresh_all_view")
        assert isinstance(app.screen, DashboardScreen)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tui_dashboard.json"))
    args = parser.parse_args()

    from engine.client import Client
    from engine.inprocess import InProcessClient

    home = Home(Path(tempfile.mkdtemp(prefix="ry-bench-", dir="/tmp")))
    os.environ["RUNYARD_HOME"] = str(home.root)
    started = time.perf_counter()
    populate_finished(home)
    populate_s = time.perf_counter() - started
    engine = start_embedded(home, simulate_gpus=GPUS)
    logs_opened: list[str] = []
    runs_dir = str(home.runs_dir)

    def audit(event: str, audit_args: tuple) -> None:
        # The embedded engine reads log tails for its health findings, in its own thread;
        # what counts here is the interface.
        if event == "open" and isinstance(audit_args[0], str) and audit_args[0].startswith(runs_dir) \
                and audit_args[0].endswith(".log") and threading.current_thread().name != "runyard-engine":
            logs_opened.append(audit_args[0])

    try:
        in_process = InProcessClient(engine, timeout_s=120)
        submit_running(in_process, home)
        populate_queued(home)
        deadline = time.monotonic() + 60
        # Until the engine has said why each waits: the refreshes measured below must find nothing new.
        while any(run["reason"] == "waiting: not yet considered by the engine" for run in in_process.call("ls")) \
                or in_process.call("status")["counts"]["queued"] < QUEUED:
            if time.monotonic() > deadline:
                raise SystemExit("benchmark: the queued runs did not settle")
            time.sleep(0.2)
        sys.addaudithook(audit)
        results = {}
        for label, client in (("in_process", in_process), ("socket", Client(home.socket_path, timeout_s=120))):
            logs_opened.clear()
            results[label] = asyncio.run(measure(client, args.refreshes, logs_opened))
        counts = in_process.call("status")["counts"]
    finally:
        engine.stop()
        for process in psutil.process_iter(["pid"]):
            try:
                if process.pid != os.getpid() and process.environ().get("RUNYARD_HOME") == str(home.root):
                    process.kill()
            except (psutil.Error, OSError):
                continue
        shutil.rmtree(home.root, ignore_errors=True)

    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": {"runs": TOTAL_RUNS, "counts": counts, "gpus": GPUS, "terminal": "160x48",
                  "refreshes": args.refreshes, "populate_s": round(populate_s, 2)},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for label, figures_ in results.items():
        if figures_["refresh_default_view"]["rows_rewritten_max"] or figures_["refresh_all_view"]["rows_rewritten_max"]:
            raise SystemExit(f"benchmark: {label}: a refresh with unchanged data rewrote rows")
        if figures_["logs_opened_on_dashboard"]:
            raise SystemExit(f"benchmark: {label}: the dashboard opened a log")


if __name__ == "__main__":
    main()
