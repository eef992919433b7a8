"""The dashboard: the box's resources, the queue, and the highlighted run in one line.

Data comes down from the app (:meth:`DashboardScreen.show_view`) after each poll; the
screen only decides what changed on screen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Input

from tui import format as fmt
from tui.poll import EngineView
from tui.screens.base import RUN_BINDINGS, RunScreen
from tui.widgets.banner import Banner
from tui.widgets.queue_table import QueueTable
from tui.widgets.resources import ResourcesPanel
from tui.widgets.run_line import RunLine


class DashboardScreen(RunScreen):
    """Resources and queue of one engine."""

    BINDINGS = [
        Binding("enter", "open_run", "Open", show=True, priority=False),
        Binding("n", "new_run", "New run"),
        *RUN_BINDINGS,
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "cycle_sort", "Sort", show=False),
        Binding("a", "toggle_all", "All runs", show=False),
        Binding("g", "open_group", "Group", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header(icon="▞")
        yield Banner(id="banner")
        yield ResourcesPanel(id="resources")
        yield Input(placeholder="filter: words, state:queued, user:alice, -state:failed · enter keeps · esc clears",
                    id="filter", compact=True)
        yield QueueTable(id="queue")
        yield RunLine(id="run-line")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self._update_titles(self.app.last_status)
        self.query_one(QueueTable).focus()

    # ------------------------------------------------------------------- data

    def current_run(self) -> Mapping[str, Any] | None:
        return self.query_one(QueueTable).highlighted_run()

    def show_view(self, view: EngineView, now: float) -> None:
        """Put one poll's figures on screen; unchanged parts are not redrawn."""
        status = view.status
        banner = self.query_one(Banner)
        if (status.get("engine") or {}).get("draining"):
            banner.show("draining: no new runs will start (runyard undrain to resume)", "warning")
        else:
            banner.hide()
        self.query_one(ResourcesPanel).update_status(status, view.history, now)
        self.query_one(QueueTable).update_runs(view.runs, now)
        self._update_titles(status)
        self._show_highlighted()

    def show_failure(self, text: str, has_data: bool) -> None:
        self.query_one(Banner).show(f"{text} · retrying", "error")
        if not has_data:
            self.query_one(RunLine).show_note("no figures yet · ctrl+r retries now · q quits")

    def _update_titles(self, status: Mapping[str, Any] | None) -> None:
        queue = self.query_one(QueueTable)
        counts = fmt.counts_text(status.get("counts") or {}) if status else "…"
        parts = []
        if queue.filter_text:
            parts.append(f"filter “{queue.filter_text}”: {queue.shown_count} of {queue.total_count}")
        if queue.sorting.key != "queue" or queue.sorting.reverse:
            parts.append(f"sort: {queue.sorting.label}")
        parts.append("all runs · a: fewer" if self.app.show_all else "a: all runs")
        titles = (f"Queue · {counts}", " · ".join(parts))
        # Setting a border title redraws the whole table, even to the same text.
        if titles != (queue.border_title, queue.border_subtitle):
            queue.border_title, queue.border_subtitle = titles

    def _show_highlighted(self) -> None:
        table = self.query_one(QueueTable)
        self.query_one(RunLine).show_run(table.highlighted_run(), self.app.clock(), show_all=self.app.show_all,
                                         filtered=bool(table.filter_text))

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_highlighted()

    @on(DataTable.RowSelected)
    def _row_selected(self, _event: DataTable.RowSelected) -> None:
        # Enter on a row, or a click on the highlighted row.
        self.action_open_run()

    # ---------------------------------------------------------------- actions

    def action_open_run(self) -> None:
        run = self._focused_run()
        if run is not None:
            self.app.open_run(run)

    def action_new_run(self) -> None:
        self.app.open_submit()

    def action_open_group(self) -> None:
        from tui.screens.group import open_group

        run = self._focused_run()
        if run is not None and run.get("group"):
            open_group(self.app, str(run["group"]))
        elif run is not None:
            self.app.notify(f"run {run.get('id')} is in no group", timeout=3)

    def action_toggle_all(self) -> None:
        self.app.action_toggle_all()
        self._update_titles(self.app.last_status)

    def action_cycle_sort(self) -> None:
        self.query_one(QueueTable).cycle_sort()
        self._update_titles(self.app.last_status)

    def select_run(self, run_id: Any) -> bool:
        """Put the cursor on run ``run_id``, when it is listed."""
        return self.query_one(QueueTable).select_run(run_id)

    def sort_by(self, key: str) -> None:
        self.query_one(QueueTable).set_sort(key, reverse=False)
        self._update_titles(self.app.last_status)

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.display = True
        field.focus()

    def action_clear_filter(self) -> None:
        field = self.query_one("#filter", Input)
        if field.value or field.display:
            field.value = ""
            field.display = False
            self.query_one(QueueTable).focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_one(QueueTable).set_filter(event.value)
        self._update_titles(self.app.last_status)
        self._show_highlighted()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.display = False
        self.query_one(QueueTable).focus()

    @on(QueueTable.HeaderSelected)
    def _header_selected(self, _event: DataTable.HeaderSelected) -> None:
        self.call_after_refresh(self._update_titles, self.app.last_status)
