"""Pieces of the resources panel's one-line rows: bars, and cutting text to its room.

Shared by the box's view (:mod:`tui.widgets.resources`) and the Slurm cluster's
(:mod:`tui.widgets.cluster`), so a bar reads the same in both.
"""

from __future__ import annotations

from textual.content import Content

from tui import format as fmt


def bar(width: int, used: float, reserved: float = 0.0) -> Content:
    used_cells, reserved_cells, free_cells = fmt.bar_cells(width, used, reserved)
    return Content.assemble(
        ("█" * used_cells, f"${fmt.level_variable(used)}"),
        ("▒" * reserved_cells, "$secondary"),
        ("░" * free_cells, "$surface-lighten-3"),
    )


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def fit(content: Content, width: int) -> Content:
    """Never wrap a line of the panel: cut it with an ellipsis instead."""
    return content.truncate(width, ellipsis=True)
