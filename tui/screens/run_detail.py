"""One run in full: its live log, checkpoints, health, usage and provenance, in tabs.

The screen asks the engine for the run (``show``) every second and for its usage
(``usage``) every few seconds while that tab is open, in worker threads. The log is
read from the run's file by the log view itself, a window at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from engine.client import ClientError, DaemonUnavailable
from tui.poll import describe_failure
from tui.screens.base import RUN_BINDINGS, RunScreen
from tui.widgets.checkpoints import CheckpointsPane
from tui.widgets.health import HealthPane
from tui.widgets.log_view import LogView
from tui.widgets.provenance import ProvenancePane
from tui.widgets.run_header import RunHeader
from tui.widgets.usage import UsagePane

SHOW_EVERY_S = 1.0
USAGE_EVERY_S = 5.0
USAGE_POINTS = 120
TABS = ("log", "checkpoints", "health", "usage", "provenance")


class RunDetailScreen(RunScreen):
    """A run's detail; opened on its log tab.

    Args:
        run: The run as the dashboard last saw it, shown until the engine answers.
        tab: The tab to open on.
        log_poll_interval_s: How often the log view checks its file for new output.
    """

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("n", "next_match", "Next", show=False),
        Binding("N", "previous_match", "Previous", show=False),
        Binding("home", "log_top", "Top", show=False),
        Binding("end", "log_end", "End", show=False),
        *RUN_BINDINGS,
        *[Binding(str(number), f"show_tab('{tab}')", tab.capitalize(), show=False)
          for number, tab in enumerate(TABS, start=1)],
    ]

    DEFAULT_CSS = """
    RunDetailScreen RunHeader {
        height: auto;
        max-height: 3;
        padding: 0 1;
        background: $panel;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    RunDetailScreen TabbedContent { height: 1fr; }
    RunDetailScreen TabPane { padding: 0; }
    RunDetailScreen #log-pane { height: 1fr; }
    RunDetailScreen LogView { height: 1fr; }
    RunDetailScreen #search { display: none; }
    RunDetailScreen #search.-open { display: block; }
    RunDetailScreen #log-status {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, run: Mapping[str, Any], *, tab: str = "log", log_poll_interval_s: float = 0.5) -> None:
        super().__init__()
        self._run: Mapping[str, Any] = run
        self._tab = tab if tab in TABS else "log"
        self._log_poll_interval_s = log_poll_interval_s
        self._show_worker = None
        self._usage_at: float | None = None

    @property
    def run_id(self) -> Any:
        return self._run.get("id")

    def current_run(self) -> Mapping[str, Any] | None:
        return self._run

    def compose(self) -> ComposeResult:
        yield Header(icon="▞")
        yield RunHeader(id="run-header")
        with TabbedContent(initial=self._tab):
            with TabPane("Log", id="log"):
                with Vertical(id="log-pane"):
                    yield LogView(None, poll_interval_s=self._log_poll_interval_s, id="log-view")
                    yield Input(placeholder="search the log (smart case) · enter finds · esc closes", id="search",
                                compact=True)
                    yield Static("", id="log-status")
            with TabPane("Checkpoints", id="checkpoints"):
                yield CheckpointsPane()
            with TabPane("Health", id="health"):
                yield HealthPane()
            with TabPane("Usage", id="usage"):
                yield UsagePane()
            with TabPane("Provenance", id="provenance"):
                with VerticalScroll():
                    yield ProvenancePane()
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"run {self.run_id}"
        self._show(self._run)
        self.query_one(LogView).focus()
        self.set_interval(SHOW_EVERY_S, self._tick)
        self._tick()

    # ------------------------------------------------------------------ data

    def _tick(self) -> None:
        if self._show_worker is None or self._show_worker.is_finished:
            usage_due = self._tab == "usage" and (
                self._usage_at is None or self.app.clock() - self._usage_at >= USAGE_EVERY_S)
            if usage_due:
                self._usage_at = self.app.clock()
            self._show_worker = self._fetch(self.run_id, usage_due)

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def _fetch(self, run_id: Any, with_usage: bool) -> None:
        worker = get_current_worker()
        client = self.app.client
        try:
            run = client.call("show", id=run_id)
        except (ClientError, DaemonUnavailable, OSError, ValueError) as error:
            if not worker.is_cancelled:
                self.post_message(_Fetched(None, None, describe_failure(error)[1]))
            return
        usage, usage_error = None, None
        if with_usage:
            try:
                usage = client.call("usage", id=run_id, max_points=USAGE_POINTS)
            except (ClientError, DaemonUnavailable, OSError, ValueError) as error:
                usage_error = f"usage not available: {error}"
        if not worker.is_cancelled:
            self.post_message(_Fetched(run if isinstance(run, dict) else None, usage, usage_error))

    def on__fetched(self, message: _Fetched) -> None:
        if message.run is None:
            self.query_one("#log-status", Static).update(message.error or "")
            return
        self._run = message.run
        self._show(message.run)
        if message.usage is not None or (message.error and self._tab == "usage"):
            self.query_one(UsagePane).show_usage(message.usage, self.app.clock(), error=message.error)

    def _show(self, run: Mapping[str, Any]) -> None:
        now = self.app.clock()
        self.query_one(RunHeader).show_run(run, now)
        empty = "no output yet: the run has not started" if run.get("state") == "queued" else "no output yet"
        self.query_one(LogView).show_file(run.get("log_path"), empty_text=empty)
        self.query_one(CheckpointsPane).show_run(run, now)
        self.query_one(HealthPane).show_run(run, now)
        self.query_one(ProvenancePane).show_run(run)

    # -------------------------------------------------------------------- log

    @on(LogView.StatusChanged)
    def _log_status(self, event: LogView.StatusChanged) -> None:
        self.query_one("#log-status", Static).update(event.text)

    @on(LogView.SearchFinished)
    def _search_finished(self, event: LogView.SearchFinished) -> None:
        if not event.found:
            where = "above" if event.backwards else "below"
            self.app.notify(f"no match for “{event.needle}” {where}", severity="warning", timeout=3)

    def action_search(self) -> None:
        self.action_show_tab("log")
        field = self.query_one("#search", Input)
        field.add_class("-open")
        field.focus()

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        view = self.query_one(LogView)
        if event.value:
            view.search(event.value)
        else:
            view.clear_search()
        view.focus()

    def action_next_match(self) -> None:
        self._search_again(backwards=False)

    def action_previous_match(self) -> None:
        self._search_again(backwards=True)

    def _search_again(self, *, backwards: bool) -> None:
        needle = self.query_one("#search", Input).value
        if not needle:
            self.action_search()
            return
        self.query_one(LogView).search(needle, backwards=backwards)

    def action_toggle_follow(self) -> None:
        self.action_show_tab("log")
        self.query_one(LogView).action_toggle_follow()

    def action_log_top(self) -> None:
        self.query_one(LogView).action_top()

    def action_log_end(self) -> None:
        self.query_one(LogView).action_end()

    def action_back(self) -> None:
        field = self.query_one("#search", Input)
        if field.has_focus:
            field.remove_class("-open")
            self.query_one(LogView).focus()
            return
        self.dismiss()

    # ------------------------------------------------------------------- tabs

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._tab = event.pane.id or "log"
        if self._tab == "usage":
            self._usage_at = None
            self._tick()
        if self._tab == "log":
            self.query_one(LogView).focus()


class _Fetched(Message, bubble=False):
    def __init__(self, run: dict | None, usage: dict | None, error: str | None) -> None:
        super().__init__()
        self.run = run
        self.usage = usage
        self.error = error
