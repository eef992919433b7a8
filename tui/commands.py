"""The command palette's run commands: act on the run in focus, or jump to any run.

Everything a key does on a run is here too, so a person who forgot the key finds it by
typing what they want ("cancel", "priority"), and "open bert" opens the run named so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui import format as fmt
from tui.screens.base import RunScreen
from tui.screens.group import open_group

MAX_RUNS_LISTED = 500
""""Open run …" hits; past this the palette would only be slower, never more useful."""

Command = tuple[str, str, Callable[[], object]]


class RunCommands(Provider):
    """Commands for the run in focus, then one "Open run" per listed run."""

    def _commands(self) -> Iterator[Command]:
        screen = self.screen
        app = self.app
        if isinstance(screen, RunScreen):
            run = screen.current_run()
            if run is not None:
                label = f"run {run.get('id')} ({run.get('name') or 'unnamed'})"
                state = run.get("state")
                if state not in fmt.TERMINAL_STATES:
                    yield f"Cancel {label}", "Stop it (asks first)", screen.action_cancel_run
                else:
                    yield f"Retry {label}", "Queue it again as a new attempt", screen.action_retry_run
                if state == "queued":
                    verb = "Release" if run.get("held") else "Hold"
                    yield f"{verb} {label}", "Let it start / keep it from starting", screen.action_hold_release
                    yield f"Change priority of {label}", "Higher starts first", screen.action_change_priority
                yield f"Open log of {label} in $PAGER", "Suspend the interface and page the log", \
                    screen.action_open_pager
                yield f"Copy id of {label}", "To the clipboard", screen.action_copy_id
        yield "New run…", "Open the submit form", app.open_submit
        view = getattr(app, "last_view", None)
        if view is not None:
            for name in dict.fromkeys(str(run["group"]) for run in view.runs if run.get("group")):
                yield f"Open group {name}", "Its runs with parameters and metrics, sortable", \
                    partial(open_group, app, name)
            for run in view.runs[:MAX_RUNS_LISTED]:
                name = f"Open run {run.get('id')} {run.get('name') or ''}".rstrip()
                yield name, f"{fmt.state_label(str(run.get('state')))} · {run.get('reason') or ''}", \
                    partial(app.open_run, run)

    async def discover(self) -> Hits:
        for name, help_text, callback in list(self._commands())[:12]:
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
