"""The queue as a table: one row per run, kept in place across live updates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from tui import format as fmt
from tui.colors import solid_color

WIDE_MIN_WIDTH = 110
"""Content width from which the envelope gets its own column (it is in the detail line below)."""
NAME_MAX_WIDTH = {False: 16, True: 28}
ENVELOPE_MAX_WIDTH = 36
REASON_MIN_WIDTH = 12
STATE_WIDTH = len("succeeded")
SCROLLBAR_RESERVE = 1
"""Matches ``scrollbar-size-vertical`` in app.tcss, so a long queue never pushes columns off."""


@dataclass(frozen=True)
class _Column:
    key: str
    label: str
    width: int
    justify: str = "left"


Run = Mapping[str, Any]


class QueueTable(DataTable):
    """Runs with state, GPUs, exit code, time or waiting reason (and envelope when wide).

    Feed it with :meth:`update_runs`; the cursor stays on the same run across updates.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._runs: list[Run] = []
        self._by_key: dict[str, Run] = {}
        self._now = 0.0
        self._columns: tuple[_Column, ...] = ()
        self._row_keys: list[str] = []

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, self._on_theme_changed)

    def update_runs(self, runs: list[Run], now: float) -> None:
        """Show ``runs`` (as ``ls`` answers them), with times measured at ``now``."""
        # Row keys must be unique; a confused engine sending an id twice shows it once.
        unique = {str(run.get("id")): run for run in reversed(runs)}
        self._runs = fmt.sort_runs([run for run in runs if unique.get(str(run.get("id"))) is run])
        self._by_key = {str(run.get("id")): run for run in self._runs}
        self._now = now
        self._sync()

    def highlighted_run(self) -> Run | None:
        if not self.row_count:
            return None
        row_key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key
        return self._by_key.get(str(row_key.value))

    def on_resize(self) -> None:
        self._sync()

    def _on_theme_changed(self, _theme: object) -> None:
        self._sync(force=True)

    def _sync(self, *, force: bool = False) -> None:
        columns = self._layout()
        keys = [str(run.get("id")) for run in self._runs]
        if force or columns != self._columns:
            self._rebuild(columns, with_columns=True)
        elif keys != self._row_keys:
            self._rebuild(columns, with_columns=False)
        else:
            for key, run in zip(keys, self._runs):
                for column, cell in zip(columns, self._cells(run)):
                    self.update_cell(key, column.key, cell)

    def _rebuild(self, columns: tuple[_Column, ...], *, with_columns: bool) -> None:
        current = self.highlighted_run()
        current_key = str(current.get("id")) if current is not None else None
        self.clear(columns=with_columns)
        if with_columns:
            for column in columns:
                self.add_column(column.label, width=column.width, key=column.key)
            self._columns = columns
        for run in self._runs:
            self.add_row(*self._cells(run), key=str(run.get("id")))
        self._row_keys = [str(run.get("id")) for run in self._runs]
        if current_key in self._by_key:
            self.move_cursor(row=self._row_keys.index(current_key), animate=False)

    def _layout(self) -> tuple[_Column, ...]:
        width = max(0, self.content_region.width - SCROLLBAR_RESERVE)
        wide = width >= WIDE_MIN_WIDTH
        runs = self._runs

        def widest(texts: list[str], floor: int, cap: int) -> int:
            return max(floor, min(cap, max((len(text) for text in texts), default=0)))

        id_column = _Column("id", "ID", widest([str(run.get("id")) for run in runs], 2, 8), "right")
        name = _Column("name", "NAME", widest([str(run.get("name") or "") for run in runs], 4, NAME_MAX_WIDTH[wide]))
        state = _Column("state", "STATE", STATE_WIDTH)
        gpus = _Column("gpus", "GPUS", widest([fmt.gpus_text(run) for run in runs], 4, 7))
        fixed = [id_column, name, state, gpus]
        if wide:
            fixed.append(_Column("envelope", "ENVELOPE",
                                 widest([fmt.envelope_text(run) for run in runs], 8, ENVELOPE_MAX_WIDTH)))
        exit_texts = [fmt.exit_text(run) for run in runs]
        # Active runs have no exit status: on a narrow screen the column would only waste room.
        if wide or any(exit_texts):
            fixed.append(_Column("exit", "EXIT", widest(exit_texts, 4, 7), "right"))
        padding = 2 * self.cell_padding * (len(fixed) + 1)
        reason_width = max(REASON_MIN_WIDTH, width - padding - sum(column.width for column in fixed))
        return (*fixed, _Column("reason", "TIME / REASON", reason_width))

    def _cells(self, run: Run) -> list[Text]:
        variables = self.app.theme_variables
        state = str(run.get("state") or "?")
        state_style = Style(color=solid_color(variables, fmt.state_color_variable(run)), bold=state == "running")
        reason_variable = "text-warning" if run.get("held") and state == "queued" else None
        values = {
            "id": (str(run.get("id")), None),
            "name": (str(run.get("name") or ""), None),
            "state": (fmt.state_label(state), state_style),
            "gpus": (fmt.gpus_text(run), None),
            "envelope": (fmt.envelope_text(run), None),
            "reason": (fmt.time_or_reason(run, self._now),
                       Style(color=solid_color(variables, reason_variable)) if reason_variable else None),
            "exit": (fmt.exit_text(run), Style(color=solid_color(variables, "text-error"))
                     if run.get("exit_code") not in (None, 0) or run.get("signal") else None),
        }
        cells = []
        for column in self._columns:
            text, style = values[column.key]
            cells.append(Text(text, style=style or "", no_wrap=True, overflow="ellipsis", justify=column.justify))
        return cells
