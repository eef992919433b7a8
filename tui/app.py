"""The runyard interface: the box's resources and the queue, updated live.

The app is handed a client (the daemon's socket client, or an embedded engine behind
the same ``call`` interface); it polls in a worker thread and never blocks the screen.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, HelpPanel
from textual.worker import Worker, get_current_worker

from tui import format as fmt
from tui.poll import EngineClient, EngineView, PollFailed, ViewPolled, describe_failure, fetch_view
from tui.themes import THEMES_DIR, choose_theme, register_themes
from tui.widgets.banner import Banner
from tui.widgets.queue_table import QueueTable
from tui.widgets.resources import ResourcesPanel
from tui.widgets.run_detail import RunDetail

POLL_INTERVAL_S = 1.0


class RunyardApp(App[None]):
    """Resources and queue of one runyard engine.

    Args:
        client: Anything with ``call(op, **args)`` answering like :class:`engine.client.Client`.
        title_suffix: A word or two after the title, e.g. ``"embedded engine"``.
        clock: Source of "now" for run times; injected so screenshots are reproducible.
        theme_name: Theme to start with; default ``runyard-dark``.
        hostname: Shown in the header when the engine does not report one.
        poll_interval_s: Seconds between polls.
        themes_dir: Where the ``*.toml`` themes are read from.
    """

    CSS_PATH = "app.tcss"
    TITLE = "runyard"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh_now", "Refresh"),
        Binding("a", "toggle_all", "All runs"),
        Binding("question_mark", "toggle_help", "Keys", key_display="?"),
    ]

    def __init__(
        self,
        client: EngineClient,
        *,
        title_suffix: str = "",
        clock: Callable[[], float] = time.time,
        theme_name: str | None = None,
        hostname: str | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        themes_dir: Path = THEMES_DIR,
    ) -> None:
        super().__init__()
        self._client = client
        self._clock = clock
        self._hostname = hostname or socket.gethostname()
        self._poll_interval_s = poll_interval_s
        self._show_all = False
        self._poll_worker: Worker | None = None
        self._view: EngineView | None = None
        self.title = _title(title_suffix)
        self.sub_title = f"{self._hostname} · connecting…"
        self._notes = register_themes(self, themes_dir)
        theme, note = choose_theme(self, theme_name)
        self.theme = theme
        if note:
            self._notes.append(note)

    @property
    def show_all(self) -> bool:
        """Whether finished runs are listed too."""
        return self._show_all

    def compose(self) -> ComposeResult:
        yield Header(icon="▞")
        yield Banner(id="banner")
        yield ResourcesPanel(id="resources")
        yield QueueTable(id="queue")
        yield RunDetail(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        for note in self._notes:
            self.notify(note, title="theme", severity="warning", timeout=10)
        self._update_queue_title(None)
        self.query_one(QueueTable).focus()
        self.set_interval(self._poll_interval_s, self._tick)
        self.action_refresh_now()

    def format_title(self, title: str, sub_title: str) -> Content:
        draining = sub_title.endswith(fmt.DRAINING_FLAG)
        if draining:
            sub_title = sub_title[: -len(fmt.DRAINING_FLAG)]
        return Content.assemble(
            (title, "bold $text-primary"),
            (" — ", "$text-muted"),
            (sub_title, "$text-muted"),
            (fmt.DRAINING_FLAG if draining else "", "bold $text-warning"),
        )

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Refresh now", "Ask the engine for fresh figures (r)", self.action_refresh_now)
        yield SystemCommand("Toggle finished runs", "Show or hide finished runs (a)", self.action_toggle_all)

    def action_refresh_now(self) -> None:
        self._poll_worker = self._poll(self._show_all)

    def action_toggle_all(self) -> None:
        self._show_all = not self._show_all
        self._update_queue_title(self._view.status if self._view else None)
        self.action_refresh_now()

    def action_toggle_help(self) -> None:
        if self.screen.query(HelpPanel):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def _tick(self) -> None:
        # A slow engine must not pile up threads: skip the tick while a poll is out.
        if self._poll_worker is None or self._poll_worker.is_finished:
            self.action_refresh_now()

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def _poll(self, show_all: bool) -> None:
        worker = get_current_worker()
        message: ViewPolled | PollFailed
        try:
            message = ViewPolled(fetch_view(self._client, show_all=show_all))
        except Exception as error:  # the interface must outlive any engine answer
            unreachable, text = describe_failure(error)
            message = PollFailed(unreachable, text, show_all)
        if not worker.is_cancelled:
            self.post_message(message)

    def _stale(self, show_all: bool) -> bool:
        """Whether a poll's answer must be dropped: asked for the other list, or landing
        while the app closes and its widgets are already gone."""
        return show_all != self._show_all or not self.query(QueueTable)

    def on_view_polled(self, message: ViewPolled) -> None:
        view = message.view
        if self._stale(view.show_all):
            return
        self._view = view
        now = self._clock()
        status = view.status
        hostname = (status.get("host") or {}).get("hostname") or self._hostname
        self.sub_title = fmt.engine_line(status, hostname)
        banner = self.query_one(Banner)
        if (status.get("engine") or {}).get("draining"):
            banner.show("draining: no new runs will start (runyard undrain to resume)", "warning")
        else:
            banner.hide()
        self.query_one(ResourcesPanel).update_status(status)
        queue = self.query_one(QueueTable)
        queue.update_runs(view.runs, now)
        self._update_queue_title(status)
        self._show_highlighted()

    def on_poll_failed(self, message: PollFailed) -> None:
        if self._stale(message.show_all):
            return
        self.query_one(Banner).show(f"{message.text} · retrying", "error")
        if message.unreachable:
            self.sub_title = f"{self._hostname} · engine not reachable"
        if self._view is None:
            self.query_one(RunDetail).show_note("no figures yet · r retries now · q quits")

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_highlighted()

    def _show_highlighted(self) -> None:
        run = self.query_one(QueueTable).highlighted_run()
        self.query_one(RunDetail).show_run(run, self._clock(), show_all=self._show_all)

    def _update_queue_title(self, status: dict | None) -> None:
        queue = self.query_one(QueueTable)
        counts = fmt.counts_text(status.get("counts") or {}) if status else "…"
        queue.border_title = f"Queue · {counts}"
        queue.border_subtitle = "all runs · a: fewer" if self._show_all else "a: all runs"


def _title(suffix: str) -> str:
    """``runyard · embedded engine``; a suffix that brings its own separator (``" (x)"``) keeps it."""
    suffix = suffix.strip()
    if not suffix:
        return "runyard"
    if suffix[0] in "([-—·:":
        return f"runyard {suffix}"
    return f"runyard · {suffix}"
