"""The submit form: command, working directory, envelope and priority.

Every field is checked as it is typed, by the parsers ``runyard submit`` uses
(:mod:`tui.request`); once the whole form reads, the engine is asked for a preview
(would it start now, or why would it wait) a moment after the typing stops. Submitting
dismisses the form with the queued run.
"""

from __future__ import annotations

import os
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Checkbox, Input, Label, Static
from textual.worker import get_current_worker

from engine.client import ClientError, DaemonUnavailable
from tui.request import FormError, SubmitForm, build_request, check_field

PREVIEW_DELAY_S = 0.4
"""Typing pauses this long before the engine is asked: not one request per key."""

FIELDS: list[tuple[str, str, str]] = [
    ("command", "command", "python train.py --lr 1e-3"),
    ("name", "name", "optional"),
    ("cwd", "cwd", ""),
    ("priority", "priority", "0; higher starts first"),
    ("cpus", "cpus", "1 (or the config's default)"),
    ("mem", "memory", "e.g. 16G"),
    ("gpus", "gpus", "0"),
    ("gpu_mem", "gpu mem", "per GPU, e.g. 10G; empty: whole GPUs"),
    ("time", "time", "e.g. 2h, 45m, 1:30:00; empty: no limit"),
    ("disk", "disk", "e.g. 20G"),
    ("res", "resources", "e.g. nfs_io=1"),
]


class FieldValidator(Validator):
    """One form field, read by the CLI's parser for it."""

    def __init__(self, field: str) -> None:
        super().__init__()
        self.field = field

    def validate(self, value: str) -> ValidationResult:
        problem = check_field(self.field, value)
        return self.failure(problem) if problem else self.success()


class SubmitScreen(ModalScreen[dict | None]):
    """A new run; dismisses with the engine's answer (the queued run) or ``None``."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "submit", "Submit"),
    ]

    DEFAULT_CSS = """
    SubmitScreen { align: center middle; background: $background 60%; }
    SubmitScreen > Vertical {
        width: 96;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-color: $text-primary;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        background: $panel;
        padding: 0 1;
    }
    SubmitScreen VerticalScroll { height: auto; max-height: 1fr; }
    SubmitScreen .row { height: 1; margin-bottom: 0; }
    SubmitScreen .row Label { width: 11; color: $text-muted; }
    SubmitScreen .row Input { width: 1fr; }
    SubmitScreen .row Input.-invalid { color: $text-error; }
    SubmitScreen Checkbox { margin: 0; padding: 0; border: none; height: 1; }
    SubmitScreen #problem { color: $text-error; height: auto; min-height: 1; }
    SubmitScreen #preview { height: auto; min-height: 1; }
    SubmitScreen #buttons { height: auto; align-horizontal: right; }
    SubmitScreen Button { margin-left: 1; min-width: 12; }
    """

    def __init__(self, *, cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__()
        self._cwd = cwd or os.getcwd()
        self._env = dict(os.environ if env is None else env)
        self._preview_timer: Timer | None = None
        self._request: dict | None = None
        self._submitting = False

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "New run"
            box.border_subtitle = "ctrl+s submits · esc cancels"
            with VerticalScroll():
                for field, label, placeholder in FIELDS:
                    with Horizontal(classes="row"):
                        yield Label(label)
                        yield Input(self._cwd if field == "cwd" else "", placeholder=placeholder, id=field,
                                    compact=True, validators=[FieldValidator(field)],
                                    validate_on=["changed", "submitted"], valid_empty=field not in ("command",))
                with Horizontal(classes="row"):
                    yield Label("")
                    yield Checkbox("hold: queue it, start only when released", id="hold", compact=True)
            yield Static("", id="problem")
            yield Static(Content.assemble(("type a command to see whether it would start now", "$text-muted")),
                         id="preview")
            with Horizontal(id="buttons"):
                yield Button("Submit (ctrl+s)", variant="primary", id="submit")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#command", Input).focus()

    # -------------------------------------------------------------- checking

    def form(self) -> SubmitForm:
        values = {field: self.query_one(f"#{field}", Input).value for field, _, _ in FIELDS}
        return SubmitForm(**values, hold=self.query_one("#hold", Checkbox).value, env=self._env)

    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event: Message) -> None:
        problem = None
        if isinstance(event, Input.Changed) and event.validation_result and not event.validation_result.is_valid:
            problem = _labelled(event.input.id or "", event.validation_result.failure_descriptions[0])
        self._check(problem)

    def _check(self, problem: str | None = None) -> None:
        """Read the whole form; show the first problem, or schedule a preview."""
        self._request = None
        if problem is None:
            try:
                self._request = build_request(self.form())
            except FormError as error:
                # An empty command is not a mistake yet: the form has just opened.
                empty = error.field == "command" and not self.form().command.strip()
                problem = None if empty else _labelled(error.field, str(error))
        self.query_one("#problem", Static).update(problem or "")
        if self._preview_timer is not None:
            self._preview_timer.stop()
        if self._request is None:
            self._show_preview(None if problem is None else "fix the form to see a preview")
            return
        self._preview_timer = self.set_timer(PREVIEW_DELAY_S, self._ask_preview)

    def _ask_preview(self) -> None:
        if self._request is not None:
            self._preview(dict(self._request))

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def _preview(self, request: dict) -> None:
        worker = get_current_worker()
        answer: Any = None
        text, refused = None, False
        try:
            answer = self.app.client.call("preview", **request)
        except ClientError as error:  # the engine's own words for a request it would refuse
            text, refused = str(error), True
        except (DaemonUnavailable, OSError) as error:
            text = f"no preview: {error}"
        if not worker.is_cancelled:
            self.post_message(_Previewed(request, answer, text, refused))

    def on__previewed(self, message: _Previewed) -> None:
        if message.request != self._request:
            return  # the form changed since: a newer preview is on its way
        if message.answer is None:
            if message.refused:
                self._show_preview(f"✗ refused: {message.text}", variable="text-error")
            else:
                self._show_preview(message.text or "")
            return
        verdict = message.answer.get("verdict")
        describe = message.answer.get("describe") or ""
        reason = message.answer.get("reason") or ""
        if verdict == "starts":
            self._show_preview(f"✓ would start now · {describe}", variable="text-success")
        elif verdict == "refused":
            self._show_preview(f"✗ refused: {reason}", variable="text-error")
        else:
            self._show_preview(f"⧗ would wait: {reason} · {describe}", variable="text-warning")

    def _show_preview(self, text: str | None, *, variable: str = "text-muted") -> None:
        if text is None:
            text = "type a command to see whether it would start now"
        self.query_one("#preview", Static).update(Content.assemble((text, f"${variable}")))

    # ------------------------------------------------------------- submitting

    @on(Button.Pressed, "#submit")
    def action_submit(self) -> None:
        if self._submitting:
            return
        try:
            request = build_request(self.form())
        except FormError as error:
            self.query_one("#problem", Static).update(_labelled(error.field, str(error)))
            if error.field:
                self.query_one(f"#{error.field}", Input).focus()
            return
        self._submitting = True
        self._submit(request)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _enter(self, event: Input.Submitted) -> None:
        # Enter moves on to the next field; on the last one it submits.
        if event.input.id == FIELDS[-1][0]:
            self.action_submit()
        else:
            self.focus_next()

    @work(thread=True, exclusive=True, group="submit", exit_on_error=False)
    def _submit(self, request: dict) -> None:
        try:
            run = self.app.client.call("submit", **request)
            self.post_message(_Submitted(run if isinstance(run, dict) else None, None))
        except (ClientError, DaemonUnavailable, OSError) as error:
            self.post_message(_Submitted(None, str(error)))

    def on__submitted(self, message: _Submitted) -> None:
        self._submitting = False
        if message.run is None:
            self.query_one("#problem", Static).update(f"not queued: {message.error}")
            return
        self.dismiss(message.run)


def _labelled(field: str, problem: str) -> str:
    """``memory: size '64' has no unit…``: which field, in the form's words."""
    label = next((label for name, label, _ in FIELDS if name == field), "")
    return f"{label}: {problem}" if label else problem


class _Previewed(Message, bubble=False):
    def __init__(self, request: dict, answer: dict | None, text: str | None, refused: bool) -> None:
        super().__init__()
        self.request = request
        self.answer = answer
        self.text = text
        self.refused = refused


class _Submitted(Message, bubble=False):
    def __init__(self, run: dict | None, error: str | None) -> None:
        super().__init__()
        self.run = run
        self.error = error
