"""The submit form's fields as a ``submit`` request, read by the CLI's own parsers.

Sizes, durations, counts and ``--res`` items go through :meth:`Envelope.parse` (what
``runyard submit`` calls), and only what the person filled in is sent, as the CLI
does, so the engine fills the rest from the config's ``[defaults]``. The engine then
checks the request with the same ``spec_from_request`` for a preview as for a submit.
Pure: no Textual.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.envelope import Envelope, EnvelopeError
from engine.units import UnitError

ENVELOPE_FIELDS = {
    "cpus": "cpus", "mem": "mem_bytes", "gpus": "gpus", "gpu_mem": "gpu_mem_bytes", "disk": "disk_bytes",
    "time": "time_limit_s", "res": "resources",
}
"""Form field (the CLI's option name) -> envelope key."""


class FormError(ValueError):
    """A field that cannot be read; ``field`` names it (``""`` for the form as a whole)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class SubmitForm:
    """What the form holds, as typed."""

    command: str = ""
    name: str = ""
    cwd: str = ""
    priority: str = ""
    cpus: str = ""
    mem: str = ""
    gpus: str = ""
    gpu_mem: str = ""
    time: str = ""
    disk: str = ""
    res: str = ""
    hold: bool = False
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    """The run's environment: the submitter's, as ``runyard submit`` sends it."""


def check_field(name: str, value: str) -> str | None:
    """Why one field cannot be read (one line), or ``None``; empty optional fields pass."""
    value = value.strip()
    try:
        if name == "command":
            _argv(value)
        elif name == "priority":
            _priority(value)
        elif name == "cwd":
            _cwd(value)
        elif name in ENVELOPE_FIELDS and value:
            Envelope.parse(**{name: value})
    except FormError as error:
        return str(error)
    except (EnvelopeError, UnitError) as error:
        if "needs --gpus" in str(error):
            return None  # a cross-field rule: judged with the whole form
        return str(error)
    return None


def build_request(form: SubmitForm) -> dict:
    """The ``submit`` (and ``preview``) arguments; raises :class:`FormError`."""
    argv = _argv(form.command.strip())
    given = {name: getattr(form, name).strip() for name in ENVELOPE_FIELDS if getattr(form, name).strip()}
    for name, value in given.items():
        problem = check_field(name, value)
        if problem:
            raise FormError(name, problem)
    try:
        envelope = Envelope.parse(**given)
    except (EnvelopeError, UnitError) as error:
        field_name = next((name for name in given if f"--{name.replace('_', '-')}" in str(error)), "")
        raise FormError(field_name, str(error)) from None
    parsed = envelope.to_dict()
    return {
        "argv": argv,
        "cwd": _cwd(form.cwd.strip()),
        "env": dict(form.env),
        "name": form.name.strip() or None,
        "priority": _priority(form.priority.strip()),
        "envelope": {ENVELOPE_FIELDS[name]: parsed[ENVELOPE_FIELDS[name]] for name in given},
        "held": form.hold,
    }


def _argv(text: str) -> list[str]:
    if not text:
        raise FormError("command", "a command is needed, e.g. python train.py --lr 1e-3")
    try:
        argv = shlex.split(text)
    except ValueError as error:
        raise FormError("command", f"cannot read the command: {error}") from None
    if not argv:
        raise FormError("command", "a command is needed, e.g. python train.py --lr 1e-3")
    return argv


def _priority(text: str) -> int:
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise FormError("priority", f"priority must be a whole number such as 0, 5 or -1, got {text!r}") from None


def _cwd(text: str) -> str:
    path = os.path.abspath(os.path.expanduser(text or os.getcwd()))
    if not os.path.isdir(path):
        raise FormError("cwd", f"{path} is not a directory")
    return path
