"""A group (a sweep) as a table: each run's parameters and last metrics, sortable, so the
best configuration is found at a glance; runs whose environment drifted say so.

The rows are the engine's ``results`` answer (what ``runyard ls --group`` prints), asked
for every few seconds in a worker thread.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from engine import groups
from tui import format as fmt
from tui.poll import describe_failure

FETCH_EVERY_S = 2.0


class GroupScreen(Screen):
    """The runs of group ``name``; ``s`` sorts by the next column, ``S`` reverses, a click
    on a header sorts by it, enter opens the run."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("enter", "open_run", "Open"),
        Binding("s", "next_sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse", show=False),
    ]

    DEFAULT_CSS = """
    GroupScreen #group-title { height: auto; padding: 0 1; }
    GroupScreen DataTable { height: 1fr; }
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.group = name
        self.rows: list[dict[str, Any]] = []
        self.sort_key = "id"
        self.descending = False
        self._worker = None

    def compose(self) -> ComposeResult:
        yield Header(icon="▞")
        yield Static(f"group {self.group}: loading…", id="group-title")
        yield DataTable(id="group-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"group {self.group}"
        self.query_one(DataTable).focus()
        self.set_interval(FETCH_EVERY_S, self._tick)
        self._tick()

    # ------------------------------------------------------------------ data

    def _tick(self) -> None:
        if self._worker is None or self._worker.is_finished:
            self._worker = self._fetch()

    @work(thread=True, exclusive=True, group="group-table", exit_on_error=False)
    def _fetch(self) -> None:
        worker = get_current_worker()
        try:
            answer = self.app.client.call("results", group=self.group)
        except Exception as error:  # a refusal or a lost engine is shown, never a crash
            if not worker.is_cancelled:
                self.post_message(_Fetched(None, describe_failure(error)[1]))
            return
        if not worker.is_cancelled:
            self.post_message(_Fetched(answer, None))

    def on__fetched(self, message: _Fetched) -> None:
        title = self.query_one("#group-title", Static)
        if message.answer is None:
            title.update(f"group {self.group}: {message.error}")
            return
        self.rows = list(message.answer.get("runs") or [])
        if self.sort_key not in groups.sort_keys(self.rows):
            self.sort_key, self.descending = "id", False
        self._draw()

    # ------------------------------------------------------------------ table

    def _draw(self) -> None:
        table = self.query_one(DataTable)
        params = list(dict.fromkeys(name for row in self.rows for name in row["params"]))
        metrics = list(dict.fromkeys(name for row in self.rows for name in row["metrics"]))
        columns = ["id", "state", *params, *metrics, "time", "drift"]
        selected = self.current_run_id()
        if [str(column.key.value) for column in table.columns.values()] != columns:
            table.clear(columns=True)
            for column in columns:
                table.add_column(column.upper(), key=column)
        else:
            table.clear()
        for row in groups.sort_rows(self.rows, self.sort_key, descending=self.descending):
            table.add_row(
                str(row["id"]), fmt.state_label(row["state"]),
                *(row["params"].get(name, "-") for name in params),
                *(_metric(row["metrics"].get(name), row["metrics_final"]) for name in metrics),
                fmt.format_duration(row["run_s"]) if row["run_s"] is not None else "-",
                "; ".join(row["drift"]) or "-",
                key=str(row["id"]),
            )
        if selected is not None and str(selected) in table.rows:
            table.move_cursor(row=table.get_row_index(str(selected)))
        order = "largest first" if self.descending else "smallest first"
        drifted = sum(1 for row in self.rows if row["drift"])
        note = f"; {drifted} drifted from the first run" if drifted else ""
        self.query_one("#group-title", Static).update(
            f"group {self.group}: {len(self.rows)} runs, by {self.sort_key} ({order}){note}"
        )

    def current_run_id(self) -> int | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return int(key) if key is not None else None

    def sort_by(self, key: str, descending: bool = False) -> None:
        self.sort_key, self.descending = key, descending
        self._draw()

    # ---------------------------------------------------------------- actions

    def action_next_sort(self) -> None:
        keys = groups.sort_keys(self.rows)
        self.sort_by(keys[(keys.index(self.sort_key) + 1) % len(keys)] if self.sort_key in keys else "id")

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_key, not self.descending)

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key in groups.sort_keys(self.rows):
            self.sort_by(key, not self.descending if key == self.sort_key else False)

    @on(DataTable.RowSelected)
    def _row(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        run_id = self.current_run_id()
        row = next((row for row in self.rows if row["id"] == run_id), None)
        if row is not None:
            self.app.open_run({"id": row["id"], "name": row["name"], "state": row["state"]})

    def action_back(self) -> None:
        self.app.pop_screen()


def open_group(app: Any, name: str) -> None:
    if not (isinstance(app.screen, GroupScreen) and app.screen.group == name):
        app.push_screen(GroupScreen(name))


def _metric(value: Any, final: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if final else f"{text}*"


class _Fetched(Message, bubble=False):
    def __init__(self, answer: dict[str, Any] | None, error: str | None) -> None:
        super().__init__()
        self.answer = answer
        self.error = error
