"""What every screen that shows runs can do to the run in focus.

The dashboard (the highlighted row) and a run's detail (its run) share these keys and
flows: cancel (after a confirmation), retry, hold or release, change the priority,
open the log in ``$PAGER``, copy the run's id. The engine is asked in a worker thread
(:meth:`tui.app.RunyardApp.send`); the answer comes back as a notification.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from textual.app import SuspendNotSupported
from textual.binding import Binding
from textual.screen import Screen

from tui import format as fmt
from tui.screens.dialogs import ConfirmScreen, PriorityScreen

if TYPE_CHECKING:
    from tui.app import RunyardApp

Run = Mapping[str, Any]

RUN_BINDINGS = [
    Binding("c", "cancel_run", "Cancel"),
    Binding("r", "retry_run", "Retry", show=False),
    Binding("h", "hold_release", "Hold"),
    Binding("p", "change_priority", "Priority", show=False),
    Binding("l", "open_pager", "Pager", show=False),
    Binding("y", "copy_id", "Copy id", show=False),
]
RUN_ACTIONS = {
    "cancel_run": "Cancel the run (asks first)",
    "retry_run": "Queue a run that ended again, as a new attempt",
    "hold_release": "Hold a queued run, or release a held one",
    "change_priority": "Change a queued run's priority",
    "open_pager": "Open the run's log in $PAGER",
    "copy_id": "Copy the run's id to the clipboard",
}


def pager_command(path: str) -> list[str]:
    """``$PAGER`` on the log; ``less`` at the end of the file when no pager is set."""
    pager = os.environ.get("PAGER", "").strip()
    return [*shlex.split(pager), path] if pager else ["less", "-R", "+G", path]


class RunScreen(Screen):
    """A screen with a run in focus; subclasses say which in :meth:`current_run`."""

    app: RunyardApp  # type: ignore[assignment]

    def current_run(self) -> Run | None:
        raise NotImplementedError

    def _focused_run(self) -> Run | None:
        run = self.current_run()
        if run is None:
            self.app.notify("no run selected", severity="warning", timeout=3)
        return run

    # ---------------------------------------------------------------- actions

    def action_cancel_run(self) -> None:
        run = self._focused_run()
        if run is None:
            return
        run_id, state = run.get("id"), run.get("state")
        if state in fmt.TERMINAL_STATES:
            self.app.notify(f"run {run_id} has already ended ({fmt.state_label(str(state))})", timeout=4)
            return
        if state == "running":
            grace = run.get("grace_s")
            detail = (f"It is running: SIGTERM to its process group, then SIGKILL after "
                      f"{fmt.format_duration(grace) if grace is not None else 'its grace period'}.")
        else:
            detail = "It has not started: it leaves the queue."
        question = f"Cancel run {run_id} ({run.get('name') or 'unnamed'})?"

        def answered(yes: bool | None) -> None:
            if yes:
                done = f"run {run_id}: stopping" if state == "running" else f"run {run_id} cancelled"
                self.app.send("cancel", {"id": run_id}, done)

        self.app.push_screen(ConfirmScreen("Cancel run", question, detail, yes="Cancel run", no="Keep it"), answered)

    def action_retry_run(self) -> None:
        run = self._focused_run()
        if run is None:
            return
        run_id = run.get("id")
        if run.get("state") not in fmt.TERMINAL_STATES:
            self.app.notify(f"run {run_id} is {run.get('state')}; only a run that ended can be retried",
                            severity="warning", timeout=4)
            return

        def done(answer: Any) -> str:
            attempt = answer.get("attempts", answer.get("attempt")) if isinstance(answer, dict) else None
            return f"run {run_id} queued again" + (f" as attempt {attempt}" if attempt else "")

        self.app.send("retry", {"id": run_id}, done,
                      unknown_op="this engine cannot retry runs yet: update runyard and restart the engine")

    def action_hold_release(self) -> None:
        run = self._focused_run()
        if run is None:
            return
        run_id = run.get("id")
        if run.get("state") != "queued":
            self.app.notify(f"run {run_id} is {run.get('state')}; only queued runs can be held or released",
                            severity="warning", timeout=4)
            return
        if run.get("held"):
            self.app.send("release", {"id": run_id}, f"run {run_id} released")
        else:
            self.app.send("hold", {"id": run_id}, f"run {run_id} held: it will not start until released")

    def action_change_priority(self) -> None:
        run = self._focused_run()
        if run is None:
            return
        run_id = run.get("id")
        if run.get("state") != "queued":
            self.app.notify(f"run {run_id} is {run.get('state')}; only a queued run's priority can change",
                            severity="warning", timeout=4)
            return

        def answered(priority: int | None) -> None:
            if priority is not None:
                self.app.send("priority", {"id": run_id, "priority": priority},
                              f"run {run_id}: priority {priority}")

        current = run.get("priority") if isinstance(run.get("priority"), int) else 0
        self.app.push_screen(PriorityScreen(run_id, str(run.get("name") or ""), current), answered)

    def action_open_pager(self) -> None:
        run = self._focused_run()
        if run is None:
            return
        path = run.get("log_path")
        if not path or not os.path.exists(path):
            self.app.notify(f"run {run.get('id')} has no output yet", timeout=4)
            return
        command = pager_command(str(path))
        try:
            with self.app.suspend():
                subprocess.run(command, check=False)
        except SuspendNotSupported:
            self.app.notify("this terminal cannot hand the screen to a pager", severity="warning")
        except OSError as error:
            self.app.notify(f"cannot run {command[0]}: {error.strerror}; set $PAGER", severity="error")

    def action_copy_id(self) -> None:
        run = self._focused_run()
        if run is None:
            return
        self.app.copy_to_clipboard(str(run.get("id")))
        self.app.notify(f"copied run id {run.get('id')}", timeout=3)
