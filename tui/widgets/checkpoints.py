"""A run's checkpoints: path, step, age, size; the newest and the best marked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from engine.units import format_duration, format_size

NO_CHECKPOINTS = "no checkpoints yet — a run saves them with runyard.checkpoint.save(state, step)"
UNKNOWN = "this engine does not report checkpoints"


class CheckpointsPane(Vertical):
    """Feed it with :meth:`show_run` (a ``show`` answer)."""

    DEFAULT_CSS = """
    CheckpointsPane > Static { height: auto; padding: 0 1; color: $text-muted; }
    CheckpointsPane > DataTable { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static(NO_CHECKPOINTS, id="checkpoints-note")
        yield DataTable(id="checkpoints-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in (("mark", ""), ("step", "STEP"), ("age", "AGE"), ("size", "SIZE"), ("metrics", "METRICS"),
                           ("path", "PATH")):
            table.add_column(label, key=key)
        table.display = False
        self._signature: object = None

    def show_run(self, run: Mapping[str, Any], now: float) -> None:
        checkpoints = run.get("checkpoints")
        signature = (repr(checkpoints), round(now / 10))
        if signature == self._signature:
            return
        self._signature = signature
        note = self.query_one("#checkpoints-note", Static)
        table = self.query_one(DataTable)
        if not isinstance(checkpoints, list) or not checkpoints:
            note.update(UNKNOWN if checkpoints is None and "checkpoints" not in run else NO_CHECKPOINTS)
            table.display = False
            return
        folder = str(run.get("checkpoint_dir") or "")
        note.update(f"{len(checkpoints)} in {folder}" if folder else f"{len(checkpoints)} checkpoints")
        table.display = True
        table.clear()
        ordered = sorted(checkpoints, key=lambda item: (item.get("saved_at") or 0, item.get("step") or 0), reverse=True)
        for item in ordered:
            table.add_row(*_cells(item, folder, now))


def _cells(item: Mapping[str, Any], folder: str, now: float) -> list[Text]:
    marks = []
    if item.get("newest"):
        marks.append("newest")
    if item.get("is_best"):
        marks.append("best")
    saved_at = item.get("saved_at")
    age = f"{format_duration(max(0.0, now - saved_at))} ago" if isinstance(saved_at, (int, float)) else "-"
    metrics = item.get("metrics") or {}
    metrics_text = "  ".join(f"{name} {_number(value)}" for name, value in list(metrics.items())[:3])
    path = str(item.get("path") or "")
    if folder and path.startswith(folder.rstrip(os.sep) + os.sep):
        path = path[len(folder.rstrip(os.sep)) + 1:]
    step = item.get("step")
    return [
        Text(" ".join(marks), style="bold" if item.get("newest") else ""),
        Text("-" if step is None else str(step), justify="right"),
        Text(age),
        Text(format_size(item.get("size_bytes")) if item.get("size_bytes") is not None else "-", justify="right"),
        Text(metrics_text),
        Text(path),
    ]


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
