"""The interface against a scripted engine: real widgets, real key presses, no terminal;
and the pure parts (formatting, charts, the filter, the submit form's parsing, themes)."""

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
from tui import charts
from tui import format as fmt
from tui.app import RunyardApp
from tui.colors import solid_color
from tui.filtering import RunFilter
from tui.poll import UNREACHABLE_HINT
from tui.request import FormError, SubmitForm, build_request, check_field
from tui.settings import load_settings
from tui.themes import DEFAULT_THEME, ThemeFileError, load_theme_file, load_themes
from tui.widgets.banner import Banner
from tui.widgets.queue_table import QueueTable
from tui.widgets.resources import ResourcesPanel
from tui.widgets.run_line import RunLine

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
        self.history: list | None = None
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
        if op == "history" and self.history is not None:
            return copy.deepcopy(self.history)
        raise ClientError(f"unknown request {op!r}", 2)

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
        assert cell_text(app, 1, "health") == "-"
        assert client.count("ls", all=False) >= 1

        await wait_for(pilot, lambda: len(panel_lines(app)) == 4, "the panel laid out for two GPUs")
        lines = panel_lines(app)
        gpu0 = next(line for line in lines if line.startswith("GPU0"))
        assert "A100-SXM4-8" in gpu0 and "30G/80G" in gpu0 and "util  70%" in gpu0 and "run 1" in gpu0
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
        detail = app.query_one(RunLine)
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
        await pilot.press("ctrl+r")
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
        await pilot.press("ctrl+r")
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
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: "could not be read" in banner.text, "the garbage noticed")

        # A status with missing parts and a run with odd fields still render.
        client.status = {"engine": {}, "gpus": [{"index": 0}]}
        client.active = [{"id": 9, "state": "mystery", "envelope": {"cpus": -1}}, {"id": 9, "state": "queued"}]
        await pilot.press("ctrl+r")
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


# --- the queue: change detection, sorting, filtering, the "all runs" cache --------

async def test_a_refresh_with_the_same_queue_writes_no_row_and_a_change_writes_one():
    client = FakeClient(active=[make_run(i, "queued", reason=f"waiting: {i}") for i in range(1, 31)])
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(QueueTable)
        await wait_for(pilot, lambda: table.row_count == 30, "thirty rows")
        polls = client.count("status")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: client.count("status") > polls and table.rows_written == 0, "an idle refresh")
        client.active[4]["reason"] = "waiting: something else"
        polls = client.count("status")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: cell_text(app, 5, "reason") == "waiting: something else", "the change")
        assert table.rows_written == 1


async def test_s_cycles_the_sort_and_a_header_click_sorts_by_that_column():
    runs = [make_run(1, "queued", name="zeta", submitted_at=NOW - 30),
            make_run(2, "queued", name="alpha", priority=5, submitted_at=NOW - 10),
            make_run(3, "queued", name="mid", submitted_at=NOW - 20)]
    app = make_app(FakeClient(active=runs))
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(QueueTable)
        # Queue order is admission order: priority first, then first come, first served.
        await wait_for(pilot, lambda: row_ids(app) == ["2", "1", "3"], "queue order")
        await pilot.press("s")
        assert row_ids(app) == ["1", "2", "3"] and table.sorting.key == "id"
        await pilot.press("s")
        assert row_ids(app) == ["2", "3", "1"] and "sort: name" in str(table.border_subtitle)
        await pilot.click(QueueTable, offset=(8, 1))  # the NAME header: same column again reverses
        await wait_for(pilot, lambda: row_ids(app) == ["1", "3", "2"], "name, reversed")


async def test_slash_filters_as_you_type_and_escape_clears():
    runs = [make_run(1, "running", name="bert-large", started_at=NOW - 5, user="alice"),
            make_run(2, "queued", name="resnet", user="bob"),
            make_run(3, "queued", name="bert-small", user="bob", held=True)]
    app = make_app(FakeClient(active=runs))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(row_ids(app)) == 3, "rows")
        await pilot.press("slash")
        await pilot.press(*"bert")
        await wait_for(pilot, lambda: row_ids(app) == ["1", "3"], "the bert runs")
        assert "filter “bert”: 2 of 3" in str(app.query_one(QueueTable).border_subtitle)
        await pilot.press(" ", *"user:bob")
        await wait_for(pilot, lambda: row_ids(app) == ["3"], "bob's bert run")
        await pilot.press("enter")
        assert app.focused is app.query_one(QueueTable)
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(row_ids(app)) == 3, "every run again")
        assert not app.screen.query_one("#filter").display


async def test_all_runs_reads_the_finished_runs_once_then_keeps_them():
    finished = [make_run(100 + i, "succeeded", exit_code=0, ended_at=NOW - 1000 + i) for i in range(50)]
    status = make_status()
    status["counts"] = {"running": 1, "queued": 1, "succeeded": 50}
    client = FakeClient(status=status, finished=finished)
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(row_ids(app)) == 2, "active runs")
        await pilot.press("a")
        await wait_for(pilot, lambda: len(row_ids(app)) == 52, "every run")
        assert client.count("ls", all=True) == 1
        for _ in range(3):
            polls = client.count("status")
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: client.count("status") > polls, "a poll")
        await pilot.pause()
        assert client.count("ls", all=True) == 1, "an unchanged count must not re-read every run"
        # A run ends and the counts move: it arrives with the short list (the 20 most
        # recently ended), and the cache still agrees with the counts.
        client.active = [client.active[1]]
        client.finished.append(make_run(1, "failed", exit_code=1, ended_at=NOW))
        client.status["counts"] = {"running": 0, "queued": 1, "succeeded": 50, "failed": 1}
        original_call = client.call

        def call(op: str, **args: Any) -> Any:
            answer = original_call(op, **args)
            if op == "ls" and not args.get("all"):
                answer.append(copy.deepcopy(client.finished[-1]))
            return answer

        client.call = call  # type: ignore[method-assign]
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: cell_text(app, 1, "state") == "failed", "the run that ended")
        assert client.count("ls", all=True) == 1


async def test_gpu_held_by_another_user_and_history_sparklines():
    status = make_status()
    status["gpus"][0]["processes"] = [{"pid": 1, "used_mem": GIB, "run_id": 1, "user": "alice"},
                                      {"pid": 2, "used_mem": GIB, "run_id": None, "user": "bob"}]
    client = FakeClient(status=status)
    client.history = [
        {"at": NOW - 60 + i, "cpu_percent": 10.0 * i, "mem_used_bytes": GIB, "mem_total_bytes": 64 * GIB,
         "disk_free_bytes": 200 * GIB, "gpus": [{"index": 0, "util_percent": 100.0 if i % 2 else 0.0}]}
        for i in range(6)
    ]
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: any("▁█▁█" in line for line in panel_lines(app)), "GPU0's sparkline")
        gpu0 = next(line for line in panel_lines(app) if line.startswith("GPU0"))
        assert "run 1 +bob" in gpu0


# --- themes, settings ----------------------------------------------------------------

def test_repository_ships_a_dark_a_light_and_a_high_contrast_theme():
    loaded = load_themes()
    assert not loaded.problems
    by_name = {theme.name: theme for theme in loaded.themes}
    assert {"runyard-dark", "runyard-light", "runyard-contrast"} <= set(by_name)
    assert by_name["runyard-dark"].dark and not by_name["runyard-light"].dark
    assert by_name["runyard-contrast"].background.lower() == "#000000"


async def test_theme_from_the_settings_file_and_a_flag_that_overrides_it(tmp_path: Path):
    settings = tmp_path / "tui.toml"
    settings.write_text('theme = "runyard-light"\n')
    app = make_app(FakeClient(), settings_path=settings)
    async with app.run_test(size=(80, 24)):
        assert app.theme == "runyard-light"
    app = make_app(FakeClient(), settings_path=settings, theme_name="runyard-contrast")
    async with app.run_test(size=(80, 24)):
        assert app.theme == "runyard-contrast"


def test_a_broken_settings_file_is_reported_not_fatal(tmp_path: Path):
    path = tmp_path / "tui.toml"
    path.write_text("theme = 3\n")
    settings, problem = load_settings(path)
    assert settings.theme is None and "theme must be a name" in problem
    path.write_text('colour = "x"\n')
    assert "unknown key 'colour'" in load_settings(path)[1]
    assert load_settings(tmp_path / "missing.toml") == (load_settings(tmp_path / "missing.toml")[0], None)


# --- pure parts ----------------------------------------------------------------------

def test_sparkline_scales_to_the_ceiling_not_to_the_data():
    assert charts.sparkline([97.0, 97.0, 97.0], 3, 100.0) == "███"
    assert charts.sparkline([2.0, 2.0], 2, 100.0) == "▁▁"
    assert charts.sparkline([None, 50.0], 4, 100.0) == "   ▄"
    # More samples than cells: each cell shows its bucket's peak.
    assert charts.sparkline([0.0, 100.0, 0.0, 0.0], 2, 100.0) == "█▁"


def test_column_chart_and_limit_row():
    assert charts.columns([100.0, 50.0, None], 3, 2, 100.0) == ["█  ", "██ "]
    assert charts.level_row(50.0, 4, 100.0) == 2
    assert charts.level_row(150.0, 4, 100.0) is None


@pytest.mark.parametrize(
    ("text", "matching"),
    [("bert", [1, 3]), ("state:queued", [2, 3]), ("-state:queued", [1]), ("user:bob", [2, 3]),
     ("state:held", [3]), ("gpu:0", [1]), ("id:2", [2]), ("bert user:bob", [3]), ("", [1, 2, 3]),
     ("train.py", [1, 2, 3])],
)
def test_filter_words(text: str, matching: list[int]):
    runs = [make_run(1, "running", name="bert-large", gpus=[0], user="alice"),
            make_run(2, "queued", name="resnet", user="bob"),
            make_run(3, "queued", name="bert-small", user="bob", held=True)]
    assert [run["id"] for run in runs if RunFilter(text).matches(run)] == matching


def test_form_is_read_by_the_cli_parsers(tmp_path: Path):
    form = SubmitForm(command="python train.py --lr '1e-3'", cwd=str(tmp_path), mem="16G", gpus="1",
                      gpu_mem="10G", time="1h30m", priority="5", env={"A": "1"})
    request = build_request(form)
    assert request["argv"] == ["python", "train.py", "--lr", "1e-3"]
    assert request["envelope"] == {"mem_bytes": 16 * GIB, "gpus": 1, "gpu_mem_bytes": 10 * GIB, "time_limit_s": 5400.0}
    assert request["priority"] == 5 and request["cwd"] == str(tmp_path) and request["env"] == {"A": "1"}
    # Same words as `runyard submit --mem 512`.
    assert check_field("mem", "512") == "size '512' has no unit: write e.g. 512M or 512G"
    assert check_field("time", "90") .startswith("duration '90' has no unit")
    assert check_field("gpu_mem", "10G") is None  # needs --gpus, judged with the whole form
    with pytest.raises(FormError) as raised:
        build_request(SubmitForm(command="x", cwd=str(tmp_path), gpu_mem="10G"))
    assert raised.value.field == "gpu_mem" and "needs --gpus" in str(raised.value)
    assert check_field("command", "python 'oops") == "cannot read the command: No closing quotation"
    assert check_field("cwd", str(tmp_path / "nope")).endswith("is not a directory")


def test_health_attempts_eta_and_command_texts():
    assert fmt.health_text(make_run(1, "running", health="healthy")) == "ok"
    assert fmt.health_text(make_run(1, "running", health="healthy", warning="GPU idle 15m")) == "warning"
    assert fmt.health_text(make_run(1, "running", health="stalled", warning="x")) == "stalled"
    assert fmt.health_text(make_run(1, "running")) == "-"
    assert fmt.health_text(make_run(1, "failed", health="unhealthy")) == ""
    assert fmt.attempts_text(make_run(1, "queued", attempts=2, retries=3)) == "2/4"
    assert fmt.attempts_text(make_run(1, "queued")) == "-"
    assert fmt.time_or_reason(make_run(1, "running", started_at=NOW - 60, eta=NOW + 2700), NOW) == "1m of 1h · eta 45m"
    assert fmt.command_text(make_run(1, "queued", argv=["python", "-c", "a\nb"])) == "python -c 'a↵b'"
    assert fmt.holders_text([3], 10, ["bob", "bob"]) == "run 3 +bob"
    assert fmt.holders_text([], 10, ["carol"]) == "carol"
    assert fmt.holders_text([1, 2, 3], 10, ["bob", "eve"]) == "3 runs +2 users"


def test_every_key_of_the_screens_is_in_the_readme():
    from tui.screens.dashboard import DashboardScreen
    from tui.screens.run_detail import RunDetailScreen

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### The TUI"):readme.index("### Configuration")]
    names = {"slash": "/", "question_mark": "?"}
    bindings = [*DashboardScreen.BINDINGS, *RunDetailScreen.BINDINGS, *RunyardApp.BINDINGS]
    for binding in bindings:
        key = binding.key.split(",")[0]
        if key.isdigit():
            continue  # the tabs, "1…5"
        shown = names.get(key, key)
        assert f"`{shown}`" in section, f"key {shown!r} ({binding.description}) is not in the README's TUI keys"
