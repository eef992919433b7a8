"""The interface against a scripted engine: real widgets, real key presses, no terminal."""

from __future__ import annotations

import copy
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from textual.notifications import Notify

from engine.client import ClientError, DaemonUnavailable
from tui import format as fmt
from tui.app import RunyardApp
from tui.colors import solid_color
from tui.poll import UNREACHABLE_HINT
from tui.themes import DEFAULT_THEME, ThemeFileError, load_theme_file, load_themes
from tui.widgets.banner import Banner
from tui.widgets.queue_table import QueueTable
from tui.widgets.resources import ResourcesPanel
from tui.widgets.run_detail import RunDetail

NOW = 1_700_000_000.0
GIB = 1 << 30
DEADLINE_S = 20.0


def make_status(**engine: Any) -> dict[str, Any]:
    status = {
        "engine": {"pid": 10, "version": "0.1.0", "home": "/tmp/ry", "started_at": NOW - 60, "draining": False,
                   "mode": "daemon", "gpu_source": "simulated 2x80G"},
        "host": {"cpus": 8.0, "cpu_percent": 25.0, "mem_total": 64 * GIB, "mem_available": 48 * GIB,
                 "disk_total": 500 * GIB, "disk_free": 200 * GIB, "load1": 1.5},
        "gpus": [
            {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-0", "mem_total": 80 * GIB,
             "mem_used": 30 * GIB, "util_percent": 70.0, "temperature_c": 60.0, "power_w": 250.0,
             "available": True, "unavailable_reason": None, "holders": [1], "mem_reserved": 40 * GIB},
            {"index": 1, "name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-1", "mem_total": 80 * GIB,
             "mem_used": 0, "util_percent": None, "temperature_c": None, "power_w": None,
             "available": False, "unavailable_reason": "lost: Xid 79", "holders": [], "mem_reserved": 0},
        ],
        "reserved": {"cpus": 2.0, "mem_bytes": 8 * GIB, "gpus": 1},
        "counts": {"queued": 1, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0, "timed_out": 0},
        "sampled_at": NOW,
    }
    status["engine"].update(engine)
    return status


def make_run(run_id: int, state: str, **fields: Any) -> dict[str, Any]:
    run = {
        "id": run_id, "name": f"run-{run_id}", "state": state, "reason": "", "priority": 0, "held": False,
        "argv": ["python", "train.py"], "cwd": "/tmp", "exit_code": None, "signal": None, "pid": None,
        "gpus": [], "grace_s": 30.0, "submitted_at": NOW - 600, "started_at": None, "ended_at": None,
        "deadline": None, "log_path": None, "user": "alice", "uid": 1000,
        "envelope": {"cpus": 2.0, "mem_bytes": 8 * GIB, "gpus": 1, "gpu_mem_bytes": 40 * GIB, "disk_bytes": 0,
                     "time_limit_s": 3600.0},
    }
    run.update(fields)
    return run


ACTIVE = [
    make_run(1, "running", gpus=[0], started_at=NOW - 125, pid=4321),
    make_run(2, "queued", reason="waiting: needs 1 GPU with 40G free, none has room"),
]
FINISHED = [make_run(3, "succeeded", exit_code=0, started_at=NOW - 500, ended_at=NOW - 400)]


class FakeClient:
    """Scripted ``status`` and ``ls`` answers; records every call (from the worker thread)."""

    def __init__(self, status: dict | None = None, active: list | None = None, finished: list | None = None):
        self.status = status if status is not None else make_status()
        self.active = active if active is not None else copy.deepcopy(ACTIVE)
        self.finished = finished if finished is not None else copy.deepcopy(FINISHED)
        self.error: Exception | None = None
        self.calls: list[tuple[str, dict]] = []
        self._lock = threading.Lock()

    def call(self, op: str, **args: Any) -> Any:
        with self._lock:
            self.calls.append((op, args))
            error = self.error
        if error is not None:
            raise error
        if op == "status":
            return copy.deepcopy(self.status)
        if op == "ls":
            return copy.deepcopy(self.active + (self.finished if args.get("all") else []))
        raise ClientError(f"unknown op {op}", 2)

    def count(self, op: str, **args: Any) -> int:
        with self._lock:
            return sum(1 for name, given in self.calls if name == op and all(given.get(k) == v for k, v in args.items()))


class UnreachableClient(FakeClient):
    def __init__(self) -> None:
        super().__init__()
        self.error = DaemonUnavailable("[Errno 2] No such file or directory")


def make_app(client: FakeClient, **kwargs: Any) -> RunyardApp:
    kwargs.setdefault("poll_interval_s", 3600)  # tests drive polls with "r" unless they want ticks
    return RunyardApp(client, clock=lambda: NOW, hostname="testbox", **kwargs)


async def wait_for(pilot, predicate, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await pilot.pause(0.02)


def row_ids(app: RunyardApp) -> list[str]:
    table = app.query_one(QueueTable)
    return [str(row.key.value) for row in table.ordered_rows]


def cell_text(app: RunyardApp, run_id: int, column: str) -> str:
    return app.query_one(QueueTable).get_cell(str(run_id), column).plain


def panel_lines(app: RunyardApp) -> list[str]:
    """The panel's text as it is drawn at its current size."""
    return app.query_one(ResourcesPanel).render().plain.splitlines()


async def test_first_poll_fills_table_panel_and_header():
    client = FakeClient()
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: row_ids(app) == ["1", "2"], "the two active runs")
        assert cell_text(app, 1, "state") == "running"
        assert cell_text(app, 1, "reason") == "2m5s of 1h"
        assert cell_text(app, 2, "reason") == "waiting: needs 1 GPU with 40G free, none has room"
        assert cell_text(app, 1, "gpus") == "0"
        assert client.count("ls", all=False) >= 1

        await wait_for(pilot, lambda: len(panel_lines(app)) == 4, "the panel laid out for two GPUs")
        lines = panel_lines(app)
        gpu0 = next(line for line in lines if line.startswith("GPU0"))
        assert "A100-SXM4-80GB" in gpu0 and "30G/80G" in gpu0 and "util  70%" in gpu0 and "run 1" in gpu0
        gpu1 = next(line for line in lines if line.startswith("GPU1"))
        assert "unavailable: lost: Xid 79" in gpu1
        assert "16G/64G" in lines[0] and "200G free" in lines[0] and "25% of 8" in lines[0]
        assert "2 CPU, 8G, 1 GPU" in lines[1]

        assert app.sub_title == "testbox · daemon · GPUs: simulated 2x80G"
        assert not app.query_one(Banner).display
        assert "1 running · 1 queued · 1 finished" in str(app.query_one(QueueTable).border_title)


@pytest.mark.parametrize(
    ("suffix", "title"),
    [("", "runyard"), ("embedded engine", "runyard · embedded engine"), (" (attached)", "runyard (attached)")],
)
def test_title_suffix(suffix: str, title: str):
    assert make_app(FakeClient(), title_suffix=suffix).title == title


async def test_narrow_screen_keeps_id_name_state_and_reason_visible():
    app = make_app(FakeClient())
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(QueueTable)
        await wait_for(pilot, lambda: table.row_count == 2, "rows")
        labels = [column.label.plain for column in table.columns.values()]
        assert labels[:3] == ["ID", "NAME", "STATE"] and "TIME / REASON" in labels
        used = sum(column.get_render_width(table) for column in table.columns.values())
        assert used <= table.content_region.width
        assert table.columns["reason"].width >= 20


async def test_gpus_beyond_the_panel_height_are_counted_then_shown_when_taller():
    status = make_status()
    gpu = status["gpus"][0]
    status["gpus"] = [dict(gpu, index=index, holders=[]) for index in range(10)]
    app = make_app(FakeClient(status=status))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: any(line.startswith("GPU0") for line in panel_lines(app)), "GPU lines")
        lines = panel_lines(app)
        shown = [line for line in lines if line.startswith("GPU")]
        assert lines[-1].startswith(f"+{10 - len(shown)} more GPUs")
        assert len(lines) == app.query_one(ResourcesPanel).content_region.height
        await pilot.resize_terminal(120, 50)
        await wait_for(pilot, lambda: sum(line.startswith("GPU") for line in panel_lines(app)) == 10,
                       "all ten GPUs once the window is taller")


async def test_wide_screen_adds_envelope_and_exit_columns():
    app = make_app(FakeClient())
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(QueueTable)
        await wait_for(pilot, lambda: table.row_count == 2, "rows")
        assert "envelope" in table.columns and "exit" in table.columns
        assert cell_text(app, 1, "envelope") == "2 CPU, 8G, 1 GPU x 40G, 1h"


async def test_detail_line_describes_highlighted_run_in_full():
    app = make_app(FakeClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.query_one(QueueTable).row_count == 2, "rows")
        detail = app.query_one(RunDetail)
        assert "#1 run-1" in str(detail.render()) and "started 2m5s ago" in str(detail.render())
        await pilot.press("down")
        await wait_for(pilot, lambda: "#2" in str(detail.render()), "detail of run 2")
        assert "waiting: needs 1 GPU with 40G free, none has room" in str(detail.render())


async def test_a_toggles_finished_runs():
    client = FakeClient()
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: row_ids(app) == ["1", "2"], "active runs")
        await pilot.press("a")
        await wait_for(pilot, lambda: row_ids(app) == ["1", "2", "3"], "finished run listed")
        assert app.show_all
        assert client.count("ls", all=True) >= 1
        assert cell_text(app, 3, "state") == "succeeded"
        assert cell_text(app, 3, "exit") == "0"
        assert str(app.query_one(QueueTable).border_subtitle).startswith("all runs")
        await pilot.press("a")
        await wait_for(pilot, lambda: row_ids(app) == ["1", "2"], "finished run hidden again")
        assert not app.show_all


async def test_r_polls_now_and_table_updates_in_place_keeping_cursor():
    client = FakeClient()
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(QueueTable)
        await wait_for(pilot, lambda: table.row_count == 2, "rows")
        await pilot.press("down")
        assert app.query_one(QueueTable).highlighted_run()["id"] == 2
        polls = client.count("status")
        # Run 2 starts and a new run 4 arrives ahead of it.
        client.active = [
            client.active[0],
            make_run(4, "running", gpus=[0], started_at=NOW - 5),
            make_run(2, "running", gpus=[0], started_at=NOW - 1),
        ]
        await pilot.press("r")
        await wait_for(pilot, lambda: row_ids(app) == ["1", "4", "2"], "the new queue")
        assert client.count("status") > polls
        assert cell_text(app, 2, "state") == "running"
        assert table.highlighted_run()["id"] == 2


async def test_unreachable_engine_shows_banner_and_recovers():
    client = UnreachableClient()
    app = make_app(client, poll_interval_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.query_one(Banner)
        await wait_for(pilot, lambda: banner.display, "the banner")
        assert banner.text.startswith(UNREACHABLE_HINT)
        assert "start it with `runyard --daemon`" in banner.text
        assert "engine not reachable" in app.sub_title
        await wait_for(pilot, lambda: client.count("status") >= 3, "retries")
        assert app.is_running

        client.error = None
        await wait_for(pilot, lambda: not banner.display, "the banner to go once the engine answers")
        await wait_for(pilot, lambda: row_ids(app) == ["1", "2"], "rows after recovery")


async def test_engine_gone_after_data_keeps_last_figures():
    client = FakeClient()
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: row_ids(app) == ["1", "2"], "rows")
        client.error = DaemonUnavailable("daemon closed the connection without answering")
        await pilot.press("r")
        banner = app.query_one(Banner)
        await wait_for(pilot, lambda: banner.display, "the banner")
        assert row_ids(app) == ["1", "2"]
        assert any(line.startswith("GPU0") for line in panel_lines(app))


async def test_refused_request_and_garbage_answers_do_not_crash():
    client = FakeClient()
    client.error = ClientError("protocol version 2 not understood", 2)
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.query_one(Banner)
        await wait_for(pilot, lambda: banner.display, "the banner")
        assert "engine refused the request: protocol version 2 not understood" in banner.text

        client.error = None
        client.status = ["not", "a", "status"]
        await pilot.press("r")
        await wait_for(pilot, lambda: "could not be read" in banner.text, "the garbage noticed")

        # A status with missing parts and a run with odd fields still render.
        client.status = {"engine": {}, "gpus": [{"index": 0}]}
        client.active = [{"id": 9, "state": "mystery", "envelope": {"cpus": -1}}, {"id": 9, "state": "queued"}]
        await pilot.press("r")
        await wait_for(pilot, lambda: row_ids(app) == ["9"], "the odd run")
        assert cell_text(app, 9, "state") == "mystery"
        assert not banner.display
        assert app.is_running


async def test_draining_shows_warning_banner():
    app = make_app(FakeClient(status=make_status(draining=True)))
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.query_one(Banner)
        await wait_for(pilot, lambda: banner.display, "the banner")
        assert banner.has_class("-warning") and "draining" in banner.text
        assert app.sub_title.endswith("· DRAINING")


async def test_ticks_poll_live_but_never_pile_up_on_a_slow_engine():
    release = threading.Event()
    in_flight = 0
    most_in_flight = 0
    started = 0
    lock = threading.Lock()

    class SlowClient(FakeClient):
        def call(self, op: str, **args: Any) -> Any:
            nonlocal in_flight, most_in_flight, started
            with lock:
                started += 1
                in_flight += 1
                most_in_flight = max(most_in_flight, in_flight)
            try:
                release.wait(DEADLINE_S)
                return super().call(op, **args)
            finally:
                with lock:
                    in_flight -= 1

    client = SlowClient()
    app = make_app(client, poll_interval_s=0.02)
    ticks = 0
    original_tick = app._tick

    def counting_tick() -> None:
        nonlocal ticks
        ticks += 1
        original_tick()

    app._tick = counting_tick
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: ticks >= 10, "ten ticks")
            assert most_in_flight == 1 and started == 1
            release.set()
            await wait_for(pilot, lambda: client.count("status") >= 3, "live polls once the engine answers")
            assert most_in_flight == 1
    finally:
        release.set()


async def test_q_quits():
    app = make_app(FakeClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.query_one(QueueTable).row_count == 2, "rows")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    assert app.return_code == 0


async def test_question_mark_toggles_key_help():
    app = make_app(FakeClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: bool(app.screen.query("HelpPanel")), "the help panel")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: not app.screen.query("HelpPanel"), "the help panel to close")


async def test_default_theme_and_theme_change_recolours_states():
    app = make_app(FakeClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.query_one(QueueTable).row_count == 2, "rows")
        assert app.theme == DEFAULT_THEME
        table = app.query_one(QueueTable)
        before = table.get_cell("1", "state").style.color.name
        assert before.lower() == solid_color(app.theme_variables, "text-primary").lower()
        app.theme = "nord"
        expected = None

        def recoloured() -> bool:
            nonlocal expected
            expected = solid_color(app.theme_variables, "text-primary")
            actual = table.get_cell("1", "state").style.color.name
            return expected.lower() != before.lower() and actual.lower() == expected.lower()

        await wait_for(pilot, recoloured, "the state cell to take nord's colour")


async def test_broken_theme_file_is_skipped_with_a_notification(tmp_path: Path):
    (tmp_path / "good.toml").write_text('name = "good"\nprimary = "#336699"\n')
    (tmp_path / "broken.toml").write_text('name = "broken"\nprimary = "#33669"\n')
    notes: list[str] = []

    def hook(message) -> None:
        if isinstance(message, Notify):
            notes.append(message.notification.message)

    app = make_app(FakeClient(), themes_dir=tmp_path, theme_name="good")
    async with app.run_test(size=(80, 24), notifications=True, message_hook=hook) as pilot:
        await wait_for(pilot, lambda: notes, "a notification")
        assert app.theme == "good"
        assert "broken" not in app.available_themes
        assert any("broken.toml" in note and "not a colour" in note for note in notes)


async def test_unknown_theme_name_falls_back_to_default_with_a_note():
    notes: list[str] = []

    def hook(message) -> None:
        if isinstance(message, Notify):
            notes.append(message.notification.message)

    app = make_app(FakeClient(), theme_name="no-such-theme")
    async with app.run_test(size=(80, 24), notifications=True, message_hook=hook) as pilot:
        await wait_for(pilot, lambda: notes, "a notification")
        assert app.theme == DEFAULT_THEME
        assert "no theme named 'no-such-theme'" in notes[0]


async def test_no_color_renders_without_hue(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(FakeClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.query_one(QueueTable).row_count == 2, "rows")
        await pilot.pause()
        svg = app.export_screenshot()
    colours = visible_colours(svg)
    assert len(colours) > 3
    hued = [c for c in colours if len({c[0:2], c[2:4], c[4:6]}) > 1]
    assert not hued, f"NO_COLOR screen has coloured cells: {sorted(hued)[:5]}"


def visible_colours(svg: str) -> set[str]:
    """Colours of the cells of an exported screen: backgrounds, and the foreground of
    every piece of visible text (the window frame around the screen is left out)."""
    fills = dict(re.findall(r"\.terminal-(r\d+) \{ fill: #([0-9a-fA-F]{6})", svg))
    used = {
        css_class
        for css_class, text in re.findall(r'<text class="terminal-(r\d+)"[^>]*>([^<]*)</text>', svg)
        if text.replace("&#160;", " ").strip()
    }
    backgrounds = set(re.findall(r'<rect fill="#([0-9a-fA-F]{6})" x=', svg))
    return {fills[css_class].lower() for css_class in used if css_class in fills} | {
        colour.lower() for colour in backgrounds
    }


# --- themes from files -------------------------------------------------------------

def test_repository_theme_loads():
    loaded = load_themes()
    assert not loaded.problems
    theme = next(theme for theme in loaded.themes if theme.name == DEFAULT_THEME)
    assert theme.dark and theme.primary.startswith("#")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\nprimary = ', "not valid TOML"),
        ('name = "x"\n', "needs primary"),
        ('name = "x"\nprimary = "#336699"\nprimry = "#fff"\n', "unknown key 'primry'"),
        ('name = "x"\nprimary = "blurple"\n', "is not a colour"),
        ('name = "x"\nprimary = "#336699"\ndark = "yes"\n', "dark must be true or false"),
        ('name = "x"\nprimary = "#336699"\nvariables = 3\n', "[variables] must map names to strings"),
    ],
)
def test_theme_file_errors_name_the_file_and_the_fix(tmp_path: Path, text: str, message: str):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(ThemeFileError) as raised:
        load_theme_file(path)
    assert str(raised.value).startswith("theme mine.toml: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


# --- formatting ----------------------------------------------------------------------

def test_time_or_reason_per_state():
    assert fmt.time_or_reason(make_run(1, "running", started_at=NOW - 125), NOW) == "2m5s of 1h"
    no_limit = make_run(1, "running", started_at=NOW - 30)
    no_limit["envelope"]["time_limit_s"] = None
    assert fmt.time_or_reason(no_limit, NOW) == "30s"
    assert fmt.time_or_reason(make_run(1, "queued", reason="waiting: x"), NOW) == "waiting: x"
    assert fmt.time_or_reason(make_run(1, "queued", held=True), NOW) == "held"
    done = make_run(1, "failed", started_at=NOW - 100, ended_at=NOW - 40, reason="exited with status 2")
    assert fmt.time_or_reason(done, NOW) == "ran 1m · exited with status 2"
    assert fmt.time_or_reason(make_run(1, "cancelled"), NOW) == "never started"


def test_sort_runs_running_then_queued_then_recent_finished():
    runs = [
        make_run(1, "succeeded", ended_at=NOW - 100), make_run(2, "queued"), make_run(3, "running"),
        make_run(4, "failed", ended_at=NOW - 10), make_run(5, "queued"),
    ]
    assert [run["id"] for run in fmt.sort_runs(runs)] == [3, 2, 5, 4, 1]


def test_bar_cells_show_small_shares_and_reservations():
    assert fmt.bar_cells(10, 0.0) == (0, 0, 10)
    assert fmt.bar_cells(10, 0.01) == (1, 0, 9)
    assert fmt.bar_cells(10, 0.5, 0.8) == (5, 3, 2)
    assert fmt.bar_cells(10, 1.0, 1.0) == (10, 0, 0)
    assert sum(fmt.bar_cells(7, 0.33, 0.9)) == 7


def test_counts_and_exit_text():
    assert fmt.counts_text({"running": 2, "queued": 0, "failed": 1, "timed_out": 1, "succeeded": 3}) == (
        "2 running · 0 queued · 5 finished (2 failed)"
    )
    assert fmt.exit_text(make_run(1, "failed", exit_code=137)) == "137"
    assert fmt.exit_text(make_run(1, "timed_out", signal="SIGKILL")) == "SIGKILL"
    assert fmt.exit_text(make_run(1, "running")) == ""
    assert fmt.short_gpu_name("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert fmt.holders_text([]) == "idle"
    assert fmt.holders_text([4, 7], max_width=10) == "runs 4,7"
    assert fmt.holders_text([100, 101, 102], max_width=10) == "3 runs"
