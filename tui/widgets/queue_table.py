"""The queue as a table: one row per run, sortable and filterable, kept in place across
live updates.

An update touches only what changed: a row whose cells read the same as before is not
written again, so a poll that brings the same queue costs no drawing at all, and ten
thousand finished runs cost nothing once they are in the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from tui import format as fmt
from tui.colors import solid_color
from tui.filtering import RunFilter

WIDE_MIN_WIDTH = 110
"""Content width from which user, priority, GPUs, envelope and attempts get columns."""
NAME_MAX_WIDTH = {False: 16, True: 28}
WHERE_MAX_WIDTH = {False: 12, True: 28}
"""``gpu-a100-017`` when narrow; ``gpu-a100-017 · job 48213377`` when wide."""
ENVELOPE_MAX_WIDTH = 34
REASON_MIN_WIDTH = 12
STATE_WIDTH = len("succeeded")
SCROLLBAR_RESERVE = 1
"""Matches ``scrollbar-size-vertical`` in app.tcss, so a long queue never pushes columns off."""
ADD_CHUNK = 500
"""Rows added per turn of the event loop: ten thousand at once would freeze the screen
for half a second; in chunks the table fills while keys still work."""
TEXT_CHUNK = 1000
"""Runs whose texts are worked out per turn of the event loop, for the same reason."""
CHUNK_PAUSE_S = 0.01

Run = Mapping[str, Any]


@dataclass(frozen=True)
class _Column:
    key: str
    label: str
    width: int
    justify: str = "left"


@dataclass(frozen=True)
class SortOrder:
    """How the rows are ordered: a column key (``queue`` is the admission order) and a direction."""

    key: str = "queue"
    reverse: bool = False

    @property
    def label(self) -> str:
        name = SORT_LABELS.get(self.key, self.key)
        return f"{name} {'↑' if self.reverse else '↓'}" if self.key != "queue" or self.reverse else name


SORT_LABELS = {"queue": "queue order", "id": "id", "name": "name", "user": "user", "state": "state",
               "priority": "priority", "submitted": "submitted", "reason": "time / reason",
               "health": "health", "attempts": "attempts", "where": "where", "where_short": "where"}
SORT_CYCLE = ("queue", "id", "name", "user", "priority", "submitted")
_SORT_KEYS: dict[str, Callable[[Run], Any]] = {
    "queue": fmt.queue_order_key,
    "id": fmt.id_sort_key,
    "name": lambda run: (str(run.get("name") or "").lower(), fmt.id_sort_key(run)),
    "user": lambda run: (fmt.user_text(run), fmt.queue_order_key(run)),
    "state": lambda run: (str(run.get("state") or ""), fmt.queue_order_key(run)),
    "priority": lambda run: (-fmt.as_number(run.get("priority")), fmt.queue_order_key(run)),
    "submitted": lambda run: (-fmt.as_number(run.get("submitted_at")), fmt.id_sort_key(run)),
    "reason": fmt.queue_order_key,
    "health": lambda run: (fmt.health_text(run), fmt.queue_order_key(run)),
    "attempts": lambda run: (-fmt.as_number(run.get("attempts", run.get("attempt"))), fmt.queue_order_key(run)),
    "where": lambda run: (not run.get("node"), str(run.get("node") or ""), fmt.queue_order_key(run)),
}
_SORT_KEYS["where_short"] = _SORT_KEYS["where"]
"""The narrow table's where column (the node alone) sorts like the wide one."""


class Cell:
    """A table cell that DataTable will not measure.

    DataTable measures every new cell to size auto-width columns; ours have fixed
    widths, and measuring ten thousand rows took about a second. A renderable without
    ``__rich_measure__`` is taken at its column's width.
    """

    __slots__ = ("text",)

    def __init__(self, text: Text) -> None:
        self.text = text

    @property
    def plain(self) -> str:
        return self.text.plain

    @property
    def style(self):
        return self.text.style

    def __rich_console__(self, console, options):
        return self.text.__rich_console__(console, options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and self.text.plain == other.text.plain and self.text.style == other.text.style

    __hash__ = None  # type: ignore[assignment]


class _Row:
    """One run and what it shows, computed once per change of the run."""

    __slots__ = ("run", "key", "now", "texts", "sort_keys")

    def __init__(self, run: Run, now: float, texts: dict[str, tuple[str, Style | None]]) -> None:
        self.run = run
        self.key = str(run.get("id"))
        self.now = now
        self.texts = texts
        self.sort_keys: dict[str, Any] = {}

    def sort_key(self, name: str) -> Any:
        key = self.sort_keys.get(name)
        if key is None:
            key = self.sort_keys[name] = _SORT_KEYS.get(name, fmt.queue_order_key)(self.run)
        return key


class QueueTable(DataTable):
    """Runs with state, time or waiting reason, health (and user, envelope, attempts when
    wide; where, once runs go to Slurm). Feed it with :meth:`update_runs`; the cursor
    stays on the same run.

    Each run's texts are computed when the run changes (and, for a running run, when
    the clock moves), not on every poll; a row is written to the table only when its
    cells differ from what the table shows.
    """

    BINDINGS = [Binding("enter", "select_cursor", "Open")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._rows: dict[str, _Row] = {}
        self._row_of: dict[int, _Row] = {}
        """The same rows by ``id()`` of their run: ten thousand finished runs come back as
        the very same objects every poll, and are matched without looking inside."""
        self._columns: tuple[_Column, ...] = ()
        self._shown_rows: dict[str, _Row] = {}
        """The rows in the table, as they were when last drawn."""
        self._order: list[str] = []
        """Row keys in the table's order."""
        self._filter = RunFilter("")
        self._sort = SortOrder()
        self._styles: dict[str | None, Style | None] = {}
        self._shown = 0
        self._latest: tuple[list[Run], float] = ([], 0.0)
        self._synced = False
        """Whether the table shows what the rows, columns, filter and sort say."""
        self.rows_written = 0
        """Rows added or rewritten for the last answer of the engine (0 when nothing changed)."""

    # ------------------------------------------------------------------ public

    @property
    def sorting(self) -> SortOrder:
        return self._sort

    @property
    def filter_text(self) -> str:
        return self._filter.text

    @property
    def shown_count(self) -> int:
        """Runs that pass the filter (the table may still be filling up)."""
        return self._shown

    @property
    def total_count(self) -> int:
        return len(self._rows)

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, self._on_theme_changed)

    def update_runs(self, runs: list[Run], now: float) -> None:
        """Show ``runs`` (as ``ls`` answers them), with times measured at ``now``."""
        if runs is not self._latest[0]:
            self.rows_written = 0  # a new answer (not the next chunk of the last one)
        self._latest = (runs, now)
        rows: dict[str, _Row] = {}
        computed = 0
        deferred = False
        ordered = runs
        if len(runs) - len(self._rows) > TEXT_CHUNK:
            # A big fill comes in chunks: work them out in display order, so each chunk
            # lands below the last and the table never has to be re-sorted.
            sort_key = _SORT_KEYS.get(self._sort.key, fmt.queue_order_key)
            ordered = sorted(runs, key=sort_key, reverse=self._sort.reverse)
        same_object = self._row_of
        for run in ordered:
            old = same_object.get(id(run))
            if old is not None and old.run is run and (old.now == now or run.get("state") != "running"):
                if old.key not in rows:
                    rows[old.key] = old
                continue
            key = str(run.get("id"))
            if key in rows:
                continue  # row keys must be unique; a confused engine sending an id twice shows it once
            old = self._rows.get(key)
            # Only a running run's texts move with the clock (elapsed time, ETA).
            if old is not None and (old.run is run or old.run == run) and (
                    old.now == now or run.get("state") != "running"):
                rows[key] = old
            elif computed >= TEXT_CHUNK:
                deferred = True
                if old is not None:
                    rows[key] = old  # shown as it was until its turn comes
            else:
                rows[key] = _Row(run, now, self._texts(run, now))
                computed += 1
        unchanged = not computed and rows.keys() == self._rows.keys()
        self._rows = rows
        self._row_of = {id(row.run): row for row in rows.values()}
        if deferred:
            self.set_timer(CHUNK_PAUSE_S, lambda: self._continue_update(runs))
        if unchanged and self._synced:
            return  # the same runs, the same texts: nothing to redraw
        self._sync()

    def _continue_update(self, runs: list[Run]) -> None:
        if self._latest[0] is runs:
            self.update_runs(*self._latest)

    def set_filter(self, text: str) -> None:
        self._filter = RunFilter(text)
        self._sync()

    def set_sort(self, key: str, reverse: bool | None = None) -> None:
        """Order by column ``key``; the same key again flips the direction."""
        if reverse is None:
            reverse = not self._sort.reverse if key == self._sort.key else False
        self._sort = SortOrder(key if key in _SORT_KEYS else "queue", reverse)
        self._sync()

    def cycle_sort(self) -> None:
        keys = SORT_CYCLE
        next_key = keys[(keys.index(self._sort.key) + 1) % len(keys)] if self._sort.key in keys else keys[0]
        self.set_sort(next_key, reverse=False)

    def highlighted_run(self) -> Run | None:
        if not self.row_count:
            return None
        row_key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key
        row = self._rows.get(str(row_key.value))
        return row.run if row is not None else None

    def select_run(self, run_id: Any) -> bool:
        """Put the cursor on run ``run_id``; False when it is not shown."""
        key = str(run_id)
        if key not in self._shown_rows:
            return False
        self.move_cursor(row=self.get_row_index(key), animate=False)
        return True

    def run_keys(self) -> list[str]:
        """Row keys in the order shown."""
        return [str(row.key.value) for row in self.ordered_rows]

    def cell_text(self, run_id: Any, column: str) -> str:
        return self.get_cell(str(run_id), column).plain

    # ---------------------------------------------------------------- updating

    def on_resize(self) -> None:
        self._sync()

    def _sync(self, *, force: bool = False) -> None:
        self._synced = False
        self._apply(force=force)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.set_sort(str(event.column_key.value))

    def _on_theme_changed(self, _theme: object) -> None:
        self._styles = {}
        self._rows = {key: _Row(row.run, row.now, self._texts(row.run, row.now)) for key, row in self._rows.items()}
        self._row_of = {id(row.run): row for row in self._rows.values()}
        self._sync(force=True)

    def _apply(self, *, force: bool = False) -> None:
        if not self.is_mounted:
            return
        columns = self._layout()
        sort_name = self._sort.key
        matching = [row for row in self._rows.values() if self._filter.matches(row.run)] if self._filter \
            else list(self._rows.values())
        matching.sort(key=lambda row: row.sort_key(sort_name), reverse=self._sort.reverse)
        self._shown = len(matching)
        current = self.highlighted_run()
        current_key = str(current.get("id")) if current is not None else None

        if not force and columns != self._columns and _same_keys(columns, self._columns):
            self._resize_columns(columns)
        elif force or columns != self._columns:
            self.clear(columns=True)
            for column in columns:
                self.add_column(column.label, width=column.width, key=column.key)
            self._columns = columns
            self._shown_rows = {}
            self._order = []
        wanted = {str(row.run.get("id")) for row in matching}
        gone = [key for key in self._shown_rows if key not in wanted]
        for key in gone:
            self.remove_row(key)
            del self._shown_rows[key]
        if gone:
            self._order = [key for key in self._order if key in self._shown_rows]

        added = 0
        pending = False
        keys = []
        shown = self._shown_rows
        for row in matching:
            key = str(row.run.get("id"))
            previous_row = shown.get(key)
            if previous_row is row:
                keys.append(key)  # the very row drawn last time: nothing to look at
                continue
            cells = tuple(row.texts[column.key] for column in columns)
            if previous_row is None:
                if added >= ADD_CHUNK:
                    pending = True
                    continue
                self.add_row(*[_cell(text, style, column) for (text, style), column in zip(cells, columns)], key=key)
                self._order.append(key)
                added += 1
                self.rows_written += 1
            else:
                old = tuple(previous_row.texts[column.key] for column in columns)
                if old != cells:
                    for (text, style), before, column in zip(cells, old, columns):
                        if (text, style) != before:
                            self.update_cell(key, column.key, _cell(text, style, column))
                    self.rows_written += 1
            shown[key] = row
            keys.append(key)
        if self._order != keys:
            self._reorder(keys)
            self._order = keys
        if current_key is not None and current_key in shown:
            self.select_run(current_key)
        if pending:
            # A timer, not call_later: the table must go idle between chunks so that it
            # measures each chunk's rows then, not all ten thousand at the end.
            self.set_timer(CHUNK_PAUSE_S, self._sync)
        else:
            self._synced = True

    def _resize_columns(self, columns: tuple[_Column, ...]) -> None:
        """New widths for the same columns (a longer name arrived), without clearing the
        table: re-adding ten thousand rows for it would take seconds."""
        for column in columns:
            self.columns[ColumnKey(column.key)].width = column.width
        self._columns = columns
        # DataTable keeps rendered rows keyed by its change counter; widths are not
        # part of that key, so its caches must go (textual is pinned: private API).
        self._clear_caches()
        self._require_update_dimensions = True
        self.refresh()

    def _reorder(self, keys: list[str]) -> None:
        position = {key: index for index, key in enumerate(keys)}
        # DataTable sorts by cell values; the id cell's text is the row key.
        self.sort("id", key=lambda cell: position.get(cell.plain, len(position)))

    def _layout(self) -> tuple[_Column, ...]:
        width = max(0, self.content_region.width - SCROLLBAR_RESERVE)
        wide = width >= WIDE_MIN_WIDTH
        rows = self._rows.values()

        def widest(column: str, floor: int, cap: int) -> int:
            return max(floor, min(cap, max((len(row.texts[column][0]) for row in rows), default=0)))

        fixed = [_Column("id", "ID", widest("id", 2, 8), "right"),
                 _Column("name", "NAME", widest("name", 4, NAME_MAX_WIDTH[wide]))]
        if wide:
            fixed.append(_Column("user", "USER", widest("user", 4, 10)))
        fixed.append(_Column("state", "STATE", STATE_WIDTH))
        if wide:
            fixed.append(_Column("priority", "PRI", 3, "right"))
        # Only runs handed to Slurm have a node and a job: a local queue keeps its room.
        on_slurm = any(row.run.get("backend_job") for row in rows)
        if on_slurm:
            key = "where" if wide else "where_short"
            fixed.append(_Column(key, "WHERE", widest(key, 5, WHERE_MAX_WIDTH[wide])))
        # Slurm places a run's GPUs on its node: the box's GPU indices would be blank.
        if wide and (not on_slurm or any(row.texts["gpus"][0] for row in rows)):
            fixed.append(_Column("gpus", "GPUS", widest("gpus", 4, 7)))
        if wide:
            fixed.append(_Column("envelope", "ENVELOPE", widest("envelope", 8, ENVELOPE_MAX_WIDTH)))
        tail = [_Column("health", "HEALTH", len("unhealthy") if wide else len("starting"))]
        if wide:
            tail.append(_Column("attempts", "ATT", 3, "right"))
        # Active runs have no exit status: on a narrow screen the column would only waste room.
        if wide or any(row.texts["exit"][0] for row in rows):
            tail.append(_Column("exit", "EXIT", widest("exit", 4, 7), "right"))
        all_fixed = fixed + tail
        padding = 2 * self.cell_padding * (len(all_fixed) + 1)
        reason_width = max(REASON_MIN_WIDTH, width - padding - sum(column.width for column in all_fixed))
        return (*fixed, _Column("reason", "TIME / REASON", reason_width), *tail)

    def _style(self, variable: str | None, bold: bool = False) -> Style | None:
        """The theme's colour as a Rich style, parsed once per theme."""
        key = f"{variable}|{bold}"
        if key not in self._styles:
            color = solid_color(self.app.theme_variables, variable) if variable else None
            self._styles[key] = Style(color=color, bold=bold or None) if color or bold else None
        return self._styles[key]

    def _texts(self, run: Run, now: float) -> dict[str, tuple[str, Style | None]]:
        """Every column's text and style for ``run``, whichever columns are shown."""
        state = str(run.get("state") or "?")
        held = bool(run.get("held")) and state == "queued"
        health = fmt.health_text(run)
        failed = run.get("exit_code") not in (None, 0) or bool(run.get("signal"))
        priority = run.get("priority")
        return {
            "id": (str(run.get("id")), None),
            "name": (str(run.get("name") or ""), None),
            "user": (fmt.user_text(run), self._style("text-muted")),
            "state": (fmt.state_label(state) if not held else "held",
                      self._style(fmt.state_color_variable(run), bold=state == "running")),
            "priority": ("" if priority is None else str(priority), None),
            "gpus": (fmt.gpus_text(run), None),
            "where": (fmt.where_text(run), self._style("text-muted") if state == "queued" else None),
            "where_short": (fmt.where_text(run, short=True), self._style("text-muted") if state == "queued" else None),
            "envelope": (fmt.envelope_text(run), self._style("text-muted")),
            "reason": (fmt.time_or_reason(run, now), self._style("text-warning") if held else None),
            "health": (health, self._style(fmt.health_variable(health))),
            "attempts": (fmt.attempts_text(run), None),
            "exit": (fmt.exit_text(run), self._style("text-error") if failed else None),
        }


def _same_keys(first: tuple[_Column, ...], second: tuple[_Column, ...]) -> bool:
    return [(column.key, column.label, column.justify) for column in first] == [
        (column.key, column.label, column.justify) for column in second]


def _cell(text: str, style: Style | None, column: _Column) -> Cell:
    return Cell(Text(text, style=style or "", no_wrap=True, overflow="ellipsis", justify=column.justify))
