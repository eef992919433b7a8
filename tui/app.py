"""The runyard interface: the box's resources and the queue, updated live, and every
action on a run from the keyboard, the mouse or the command palette.

The app is handed a client (the daemon's socket client, or :class:`engine.inprocess.
InProcessClient` on an embedded engine) and talks to the engine only through its
``call``, always from worker threads: the screen never waits on the engine. It owns
the polling, the requests and quitting; the screens own what is drawn.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import HelpPanel
from textual.worker import Worker, get_current_worker

from tui import format as fmt
from tui.commands import RunCommands
from tui.news import run_news
from tui.poll import EngineClient, EngineView, PollFailed, Poller, ViewPolled, describe_failure, is_unknown_op
from tui.screens.dashboard import DashboardScreen
from tui.screens.dialogs import HandoverAnswer, HandoverScreen
from tui.screens.run_detail import RunDetailScreen
from tui.screens.submit import SubmitScreen
from tui.settings import load_settings
from tui.themes import THEMES_DIR, choose_theme, register_themes

POLL_INTERVAL_S = 1.0


class EngineSession(Protocol):
    """How the app may end an embedded engine at quit (see ``runyard.tui_launch``)."""

    embedded: bool

    def hand_over(self) -> str:
        """Stop the embedded engine and start a background daemon on the same home;
        returns one line to print after the interface closes."""

    def leave(self) -> str:
        """Stop the embedded engine; runs stay in the database. Returns one line to print."""


class RunyardApp(App[str | None]):
    """Resources, queue and runs of one runyard engine.

    Args:
        client: Anything with ``call(op, **args)`` answering like :class:`engine.client.Client`.
        title_suffix: A word or two after the title, e.g. ``"embedded engine"``.
        clock: Source of "now" for run times; injected so screenshots are reproducible.
        theme_name: Theme to start with (``--theme``); else the TUI settings file's, else
            ``runyard-dark``.
        hostname: Shown in the header when the engine does not report one.
        poll_interval_s: Seconds between polls.
        themes_dir: Where the ``*.toml`` themes are read from.
        session: The embedded engine, when there is one: quitting offers to hand its
            runs over to a background daemon.
        settings_path: The TUI settings file (``tui.toml``); ``None`` for the default.
        log_poll_interval_s: How often an open log checks its file for new output.
    """

    CSS_PATH = Path(__file__).parent / "app.tcss"
    """Absolute: a subclass in another folder (a benchmark, a test) must still find it."""
    TITLE = "runyard"
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+r,f5", "refresh_now", "Refresh", show=False),
        Binding("question_mark", "toggle_help", "Keys", key_display="?"),
    ]

    def __init__(
        self,
        client: EngineClient,
        *,
        title_suffix: str = "",
        clock: Callable[[], float] = time.time,
        theme_name: str | None = None,
        hostname: str | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        themes_dir: Path = THEMES_DIR,
        session: EngineSession | None = None,
        settings_path: Path | None = None,
        log_poll_interval_s: float = 0.5,
    ) -> None:
        super().__init__()
        self.client = client
        self.clock = clock
        self.session = session
        self._poller = Poller(client)
        self._hostname = hostname or socket.gethostname()
        self._poll_interval_s = poll_interval_s
        self._log_poll_interval_s = log_poll_interval_s
        self._show_all = False
        self._poll_worker: Worker | None = None
        self._quitting = False
        self._select_after_poll: Any = None
        self.last_view: EngineView | None = None
        self._seen_runs: dict[Any, Mapping[str, Any]] | None = None
        self.title = _title(title_suffix)
        self.sub_title = f"{self._hostname} · connecting…"
        self._notes = register_themes(self, themes_dir)
        settings, problem = load_settings(settings_path)
        if problem:
            self._notes.append(problem)
        theme, note = choose_theme(self, theme_name or settings.theme)
        self.theme = theme
        if note:
            self._notes.append(note)

    # ------------------------------------------------------------ properties

    @property
    def show_all(self) -> bool:
        """Whether finished runs are listed too."""
        return self._show_all

    @property
    def last_status(self) -> Mapping[str, Any] | None:
        return self.last_view.status if self.last_view else None

    @property
    def dashboard(self) -> DashboardScreen:
        return next(screen for screen in self.screen_stack if isinstance(screen, DashboardScreen))

    # --------------------------------------------------------------- startup

    def get_default_screen(self) -> Screen:
        return DashboardScreen()

    def on_mount(self) -> None:
        for note in self._notes:
            self.notify(note, title="settings", severity="warning", timeout=10)
        self.set_interval(self._poll_interval_s, self._tick)
        self.action_refresh_now()

    def format_title(self, title: str, sub_title: str) -> Content:
        draining = sub_title.endswith(fmt.DRAINING_FLAG)
        if draining:
            sub_title = sub_title[: -len(fmt.DRAINING_FLAG)]
        return Content.assemble(
            (title, "bold $text-primary"),
            (" — ", "$text-muted"),
            (sub_title, "$text-muted"),
            (fmt.DRAINING_FLAG if draining else "", "bold $text-warning"),
        )

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Refresh now", "Ask the engine for fresh figures (ctrl+r)", self.action_refresh_now)
        yield SystemCommand("Toggle finished runs", "Show or hide finished runs (a)", self.action_toggle_all)
        yield SystemCommand("New run", "Open the submit form (n)", self.open_submit)
        if isinstance(screen, DashboardScreen):
            for key, label in (("queue", "queue order"), ("id", "id"), ("name", "name"), ("user", "user"),
                               ("priority", "priority"), ("submitted", "newest first")):
                yield SystemCommand(f"Sort queue by {label}", "Order the table (s cycles)",
                                    lambda key=key: screen.sort_by(key))
            yield SystemCommand("Filter the queue", "Show only matching runs (/)", screen.action_filter)

    # --------------------------------------------------------------- polling

    def action_refresh_now(self) -> None:
        if not self._quitting:
            self._poll_worker = self._poll(self._show_all)

    def _tick(self) -> None:
        # A slow engine must not pile up threads: skip the tick while a poll is out.
        if self._poll_worker is None or self._poll_worker.is_finished:
            self.action_refresh_now()

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def _poll(self, show_all: bool) -> None:
        worker = get_current_worker()
        message: ViewPolled | PollFailed
        try:
            message = ViewPolled(self._poller.fetch(show_all=show_all))
        except Exception as error:  # the interface must outlive any engine answer
            unreachable, text = describe_failure(error)
            message = PollFailed(unreachable, text, show_all)
        if not worker.is_cancelled:
            self.post_message(message)

    def _stale(self, show_all: bool) -> bool:
        """Whether a poll's answer must be dropped: asked for the other list, or landing
        while the app closes and its screens are already gone."""
        return show_all != self._show_all or self._quitting or not self.screen_stack

    def on_view_polled(self, message: ViewPolled) -> None:
        view = message.view
        if self._stale(view.show_all):
            return
        self.last_view = view
        self._tell_news(view)
        status = view.status
        hostname = (status.get("host") or {}).get("hostname") or self._hostname
        self.sub_title = fmt.engine_line(status, hostname)
        dashboard = self.dashboard
        dashboard.show_view(view, self.clock())
        if self._select_after_poll is not None and dashboard.select_run(self._select_after_poll):
            self._select_after_poll = None

    def _tell_news(self, view: EngineView) -> None:
        # Only what the engine sent anew can have changed: with every run listed, that is
        # a few hundred of ten thousand.
        runs = view.runs if view.fresh is None else view.fresh
        for text, severity in run_news(self._seen_runs, runs):
            self.notify(text, severity=severity, timeout=8 if severity == "error" else 5)
        # Runs that dropped out of the list are forgotten only until they come back.
        if self._seen_runs is None:
            self._seen_runs = {}
        self._seen_runs.update((run.get("id"), run) for run in runs)

    def on_poll_failed(self, message: PollFailed) -> None:
        if self._stale(message.show_all):
            return
        if message.unreachable:
            self.sub_title = f"{self._hostname} · engine not reachable"
        self.dashboard.show_failure(message.text, self.last_view is not None)

    def action_toggle_all(self) -> None:
        self._show_all = not self._show_all
        if not self._show_all:
            # Finished runs were not watched meanwhile; re-read them when asked again.
            self._poller.finished.invalidate()
        self.action_refresh_now()

    # -------------------------------------------------------------- requests

    @work(thread=True, group="requests", exit_on_error=False)
    def send(self, op: str, args: dict[str, Any], success: str | Callable[[Any], str], *,
             unknown_op: str | None = None) -> None:
        """Ask the engine for ``op``; say how it went in a notification, then poll."""
        try:
            answer = self.client.call(op, **args)
        except Exception as error:  # an engine's refusal is news for the person, never a crash
            if unknown_op and is_unknown_op(error):
                text = unknown_op
            else:
                text = str(error) or describe_failure(error)[1]
            self.post_message(_RequestDone(text, "error"))
            return
        self.post_message(_RequestDone(success(answer) if callable(success) else success, "information"))

    def on__request_done(self, message: _RequestDone) -> None:
        self.notify(message.text, severity=message.severity, timeout=4 if message.severity != "error" else 8)
        self.action_refresh_now()

    # ----------------------------------------------------------------- screens

    def open_run(self, run: Mapping[str, Any], tab: str = "log") -> None:
        if isinstance(self.screen, RunDetailScreen) and self.screen.run_id == run.get("id"):
            return
        self.push_screen(RunDetailScreen(run, tab=tab, log_poll_interval_s=self._log_poll_interval_s))

    def open_submit(self) -> None:
        if isinstance(self.screen, SubmitScreen):
            return

        def submitted(run: dict | None) -> None:
            if run is None:
                return
            self.notify(f"queued run {run.get('id')} ({run.get('name')}): {run.get('reason') or run.get('state')}",
                        timeout=5)
            self._select_after_poll = run.get("id")
            self.action_refresh_now()

        self.push_screen(SubmitScreen(), submitted)

    def action_toggle_help(self) -> None:
        if self.screen.query(HelpPanel):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    # ------------------------------------------------------------------ quit

    async def action_quit(self) -> None:
        session = self.session
        if session is None or not session.embedded:
            self.exit()
            return
        counts = (self.last_status or {}).get("counts") or {}
        queued, running = int(counts.get("queued") or 0), int(counts.get("running") or 0)
        if not queued and not running:
            self._finish_session("leave")
            return

        def answered(answer: HandoverAnswer | None) -> None:
            if answer in ("handover", "leave"):
                self._finish_session(answer)

        self.push_screen(HandoverScreen(queued, running), answered)

    def _finish_session(self, how: str) -> None:
        self._quitting = True
        if how == "handover":
            self.notify("handing the runs over to a background daemon…", timeout=30)
        self._end_session(how)

    @work(thread=True, group="quit", exit_on_error=False)
    def _end_session(self, how: str) -> None:
        session = self.session
        assert session is not None
        try:
            text = session.hand_over() if how == "handover" else session.leave()
        except Exception as error:  # whatever happened, the runs are in the database
            text = f"runyard: {error}"
        self.call_from_thread(self.exit, text)


class _RequestDone(Message, bubble=False):
    def __init__(self, text: str, severity: str) -> None:
        super().__init__()
        self.text = text
        self.severity = severity


def _title(suffix: str) -> str:
    """``runyard · embedded engine``; a suffix that brings its own separator (``" (x)"``) keeps it."""
    suffix = suffix.strip()
    if not suffix:
        return "runyard"
    if suffix[0] in "([-—·:":
        return f"runyard {suffix}"
    return f"runyard · {suffix}"
