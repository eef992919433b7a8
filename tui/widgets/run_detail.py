"""One line about the highlighted run: what the table has no room for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.content import Content
from textual.widgets import Static

from tui import format as fmt

EMPTY_HINT = "no runs here — submit one: runyard submit --gpus 1 -- python train.py"


class RunDetail(Static):
    """Feed it with :meth:`show_run`; shows a hint when there is no run to describe."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)

    def show_note(self, text: str) -> None:
        self.update(Content.assemble((text, "$text-muted")))

    def show_run(self, run: Mapping[str, Any] | None, now: float, *, show_all: bool = False) -> None:
        if run is None:
            hint = EMPTY_HINT if show_all else EMPTY_HINT + "  (a: show finished runs)"
            self.update(Content.assemble((hint, "$text-muted")))
            return
        separator = (" · ", "$text-muted")
        parts: list[str | tuple[str, str]] = [
            (f"#{run.get('id')} ", "bold $text-primary"),
            (str(run.get("name") or ""), "bold"),
        ]
        reason = str(run.get("reason") or "")
        if reason and reason != run.get("state"):
            # The table cuts long reasons; this is the one place a waiting run's whole reason shows.
            parts += [separator, (reason, "$text-warning" if run.get("state") == "queued" else "")]
        parts += [separator, (fmt.envelope_text(run), "$text-accent")]
        when = fmt.when_text(run, now)
        if when:
            parts += [separator, (when, "$text-muted")]
        if run.get("state") == "running" and run.get("pid"):
            parts += [separator, (f"pid {run['pid']}", "$text-muted")]
        command = fmt.command_text(run)
        if command:
            parts += [("  $ ", "$text-muted"), command]
        self.update(Content.assemble(*parts))
