"""A run's provenance record: where its code, environment and data came from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.content import Content
from textual.widgets import Static

NOT_RECORDED = "provenance not recorded — this engine keeps no provenance record for the run"
MAX_VALUE = 400


class ProvenancePane(Static):
    """Feed it with :meth:`show_run` (a ``show`` answer); nested records are flattened
    to dotted keys, one per line."""

    DEFAULT_CSS = """
    ProvenancePane { height: auto; padding: 0 1; }
    """

    def show_run(self, run: Mapping[str, Any]) -> None:
        record = run.get("provenance")
        if not isinstance(record, Mapping) or not record:
            self.update(Content.assemble((NOT_RECORDED, "$text-muted")))
            return
        rows = list(flatten(record))
        width = min(32, max(len(key) for key, _ in rows))
        lines = [Content.assemble((key.ljust(width), "$text-muted"), "  ", value) for key, value in rows]
        self.update(Content("\n").join(lines))


def flatten(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``{"git": {"commit": "ab12"}}`` -> ``[("git.commit", "ab12")]``; lists of plain
    values are joined, lists of records numbered."""
    rows: list[tuple[str, str]] = []
    for key in sorted(record):
        value = record[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flatten(value, f"{name}.") if value else [(name, "{}")])
        elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
            for index, item in enumerate(value):
                rows.extend(flatten(item, f"{name}[{index}]."))
        elif isinstance(value, list):
            rows.append((name, ", ".join(str(item) for item in value) or "[]"))
        else:
            text = "-" if value is None else str(value)
            rows.append((name, text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "…"))
    return rows
