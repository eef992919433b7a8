"""One poll of the engine, and the messages that carry its outcome to the interface.

The calls block on a socket, so they run in a worker thread; the outcome travels back
as a message (``post_message`` is thread-safe) and the widgets only ever see data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from textual.message import Message

from engine.client import ClientError, DaemonUnavailable

UNREACHABLE_HINT = "engine not reachable — start it with `runyard --daemon`"


class EngineClient(Protocol):
    """What the interface needs of :class:`engine.client.Client` (or an embedded engine)."""

    def call(self, op: str, **args: Any) -> Any: ...


@dataclass(frozen=True)
class EngineView:
    """The engine as one poll saw it."""

    status: dict[str, Any]
    runs: list[dict[str, Any]]
    show_all: bool


def fetch_view(client: EngineClient, *, show_all: bool) -> EngineView:
    """Ask for the status and the queue; raises what the client raises, or ``ValueError``
    when an answer does not have the shape of the protocol."""
    status = client.call("status")
    runs = client.call("ls", all=show_all)
    if not isinstance(status, dict):
        raise ValueError(f"status answer is a {type(status).__name__}, expected an object")
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise ValueError("ls answer is not a list of runs")
    return EngineView(status=status, runs=runs, show_all=show_all)


def describe_failure(error: BaseException) -> tuple[bool, str]:
    """(engine unreachable?, one line for the banner) for an error raised by a poll."""
    if isinstance(error, DaemonUnavailable):
        return True, UNREACHABLE_HINT
    if isinstance(error, ClientError):
        return False, f"engine refused the request: {error}"
    return False, f"engine answer could not be read: {error or type(error).__name__}"


class ViewPolled(Message):
    """A poll succeeded."""

    def __init__(self, view: EngineView) -> None:
        super().__init__()
        self.view = view


class PollFailed(Message):
    """A poll failed; the interface keeps its last data and keeps polling."""

    def __init__(self, unreachable: bool, text: str, show_all: bool) -> None:
        super().__init__()
        self.unreachable = unreachable
        self.text = text
        self.show_all = show_all
