"""One line about the highlighted run: what the table has no room for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.content import Content
from textual.widgets import Static

from tui import format as fmt

EMPTY_HINT = "no runs here — n submits one (or: runyard submit --gpus 1 -- python train.py)"


class RunLine(Static):
    """Feed it with :meth:`show_run`; shows a hint when there is no run to describe."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._shown: object = None

    def show_note(self, text: str) -> None:
        self._shown = None
        self.update(Content.assemble((text, "$text-muted")))

    def show_run(self, run: Mapping[str, Any] | None, now: float, *, show_all: bool = False,
                 filtered: bool = False) -> None:
        content = self._content(run, now, show_all=show_all, filtered=filtered)
        # Same words as last time: nothing to redraw.
        if content.plain != getattr(self._shown, "plain", None):
            self._shown = content
            self.update(content)

    def _content(self, run: Mapping[str, Any] | None, now: float, *, show_all: bool, filtered: bool) -> Content:
        if run is None:
            if filtered:
                return Content.assemble(("no run matches the filter · / edits it · escape clears it", "$text-muted"))
            hint = EMPTY_HINT if show_all else EMPTY_HINT + "  (a: finished runs too)"
            return Content.assemble((hint, "$text-muted"))
        separator = (" · ", "$text-muted")
        parts: list[str | tuple[str, str]] = [
            (f"#{run.get('id')} ", "bold $text-primary"),
            (str(run.get("name") or ""), "bold"),
        ]
        reason = str(run.get("reason") or "")
        if reason and reason != run.get("state"):
            # The table cuts long reasons; this is the one place a waiting run's whole reason shows.
            parts += [separator, (reason, "$text-warning" if run.get("state") == "queued" else "")]
        slurm = fmt.slurm_text(run)
        # A pending job's reason already names it ("waiting in Slurm: Resources (job 123)").
        if slurm and f"job {run.get('backend_job')}" not in reason:
            parts += [separator, slurm]
        warning = run.get("warning")
        if warning:
            parts += [separator, (f"⚠ {warning}", "$text-warning")]
        progress = fmt.progress_text(run)
        if progress:
            parts += [separator, (progress, "$text-accent")]
        parts += [separator, (fmt.envelope_text(run), "$text-accent")]
        when = fmt.when_text(run, now)
        if when:
            parts += [separator, (when, "$text-muted")]
        command = fmt.command_text(run)
        if command:
            parts += [("  $ ", "$text-muted"), command]
        return Content.assemble(*parts)
