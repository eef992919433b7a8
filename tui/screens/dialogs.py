"""Small modal dialogs: confirm an action, change a priority, hand runs over at quit.

Each dismisses with its answer; the caller decides what the answer does.
"""

from __future__ import annotations

from typing import Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Integer
from textual.widgets import Button, Input, Label, Static

_DIALOG_CSS = """
ModalScreen {
    align: center middle;
    background: $background 60%;
}
ModalScreen > Vertical {
    width: 64;
    max-width: 95%;
    height: auto;
    padding: 1 2;
    border: round $primary;
    border-title-color: $text-primary;
    border-title-style: bold;
    background: $panel;
}
ModalScreen .question {
    width: 1fr;
    margin-bottom: 1;
}
ModalScreen .detail {
    width: 1fr;
    color: $text-muted;
    margin-bottom: 1;
}
ModalScreen .error {
    color: $text-error;
    height: auto;
}
ModalScreen Horizontal {
    height: auto;
    align-horizontal: right;
}
ModalScreen Button {
    margin-left: 1;
    min-width: 10;
}
"""


def dialog_css(name: str) -> str:
    """The dialogs' look, for the screen class ``name``: a screen's DEFAULT_CSS applies
    only to selectors that start with its own type."""
    return _DIALOG_CSS.replace("ModalScreen", name)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; ``y`` / enter confirm, ``n`` / escape decline."""

    DEFAULT_CSS = dialog_css("ConfirmScreen")
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", show=False),
        Binding("n,escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, title: str, question: str, detail: str = "", *, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self._title = title
        self._question = question
        self._detail = detail
        self._yes = yes
        self._no = no

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = self._title
            yield Label(self._question, classes="question")
            if self._detail:
                yield Label(self._detail, classes="detail")
            with Horizontal():
                yield Button(f"{self._yes} (y)", variant="error", id="yes")
                yield Button(f"{self._no} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class PriorityScreen(ModalScreen[int | None]):
    """Asks for a run's new priority: a whole number, higher starts first."""

    DEFAULT_CSS = dialog_css("PriorityScreen")
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", show=False)]

    def __init__(self, run_id: object, name: str, current: int) -> None:
        super().__init__()
        self._run_id = run_id
        self._run_name = name
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"Priority of run {self._run_id}"
            yield Label(f"{self._run_name}: now {self._current}. Higher starts first.", classes="question")
            yield Input(str(self._current), id="priority", validators=[Integer()], validate_on=["changed", "submitted"],
                        restrict=r"-?[0-9]*")
            yield Static("", classes="error", id="error")
            with Horizontal():
                yield Button("Set (enter)", variant="primary", id="set")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        field = self.query_one(Input)
        field.focus()
        field.select_all()

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        result = event.validation_result
        self.query_one("#error", Static).update("" if result is None or result.is_valid else "a whole number, e.g. 5 or -1")

    @on(Input.Submitted)
    def _submitted(self, _event: Input.Submitted) -> None:
        self._set()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "set":
            self._set()
        else:
            self.dismiss(None)

    def _set(self) -> None:
        value = self.query_one(Input).value.strip()
        try:
            self.dismiss(int(value))
        except ValueError:
            self.query_one("#error", Static).update("a whole number, e.g. 5 or -1")


HandoverAnswer = Literal["handover", "leave", "cancel"]


class HandoverScreen(ModalScreen[HandoverAnswer]):
    """At quit with an embedded engine: hand the queue to a background daemon, or not."""

    DEFAULT_CSS = dialog_css("HandoverScreen")
    BINDINGS = [
        Binding("y", "answer('handover')", "Yes", show=False),
        Binding("n", "answer('leave')", "No", show=False),
        Binding("escape,c", "answer('cancel')", "Cancel", show=False),
    ]

    def __init__(self, queued: int, running: int) -> None:
        super().__init__()
        self._queued_count = queued
        self._running_count = running

    def compose(self) -> ComposeResult:
        total = self._queued_count + self._running_count
        runs = "run" if total == 1 else "runs"
        with Vertical() as box:
            box.border_title = "Quit"
            yield Label(f"Hand {total} {runs} over to a background daemon?", classes="question")
            yield Label(
                f"{self._running_count} running, {self._queued_count} queued. Yes: a daemon takes over the queue "
                "(runyard --daemon, detached). No: queued runs wait in the database for the next "
                "engine; running runs go on either way.",
                classes="detail",
            )
            with Horizontal():
                yield Button("Yes (y)", variant="primary", id="handover")
                yield Button("No (n)", id="leave")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#handover", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)  # type: ignore[arg-type]

    def action_answer(self, answer: HandoverAnswer) -> None:
        self.dismiss(answer)
