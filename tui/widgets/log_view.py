"""A log viewer that reads only the lines around what is on screen.

The view holds a window of a few hundred lines around the visible ones, read by byte
offset in a worker thread (:mod:`tui.logfile`); scrolling moves within the window and
asks for a new one as it nears an edge. So a 5 GB log opens as fast as a 5 KB one, and
memory stays flat however long a run prints.

There are no line numbers (they would need a scan of the whole file): the scrollbar
stands on an estimate, the window's bytes per line times the file's size, which is
exact once the whole file fits in the window. Steps of a few lines or pages move by
exact lines; only a long jump (dragging the scrollbar) lands by estimate.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.control import strip_control_codes
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.worker import get_current_worker

from engine.units import format_size
from tui.logfile import FileState, Line, LogFile

MARGIN_LINES = 200
"""Lines kept above and below the visible ones."""
REFILL_AT = MARGIN_LINES // 2
"""A new window is read when fewer lines than this are left beyond the screen."""
MAX_VIRTUAL_WIDTH = 4000
POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class _Window:
    lines: list[Line]
    top: int
    """Index of the line to show at the top."""
    state: FileState
    generation: int
    keep_position: bool
    """Re-anchor on the line now at the top (a refill) rather than move to ``top``."""
    follow: bool
    """Read as the file's tail: show the end."""


class LogView(ScrollView, can_focus=True):
    """A run's output: follows new lines, pauses, searches, jumps to either end."""

    DEFAULT_CSS = """
    LogView {
        background: $surface;
        color: $foreground;
        scrollbar-size-vertical: 1;
    }
    LogView > .logview--match {
        background: $warning 45%;
        text-style: bold;
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"logview--match"}

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "step(-1)", "Up", show=False),
        Binding("down,j", "step(1)", "Down", show=False),
        Binding("pageup,b", "page(-1)", "Page up", show=False),
        Binding("pagedown,space", "page(1)", "Page down", show=False),
        Binding("home,g", "top", "Top", show=False),
        Binding("end,G", "end", "End", show=False),
        Binding("left", "pan(-8)", "Left", show=False),
        Binding("right", "pan(8)", "Right", show=False),
        Binding("f", "toggle_follow", "Follow"),
    ]

    follow: reactive[bool] = reactive(True, init=False)
    """Keep the end of the file on screen as it grows."""

    class StatusChanged(Message, bubble=True):
        """Where the view is: for the status line under it."""

        def __init__(self, view: LogView, text: str) -> None:
            super().__init__()
            self.view = view
            self.text = text

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, LogView.StatusChanged)

    class SearchFinished(Message, bubble=True):
        """A search ended: found and shown, or not found in that direction."""

        def __init__(self, view: LogView, needle: str, found: bool, backwards: bool) -> None:
            super().__init__()
            self.view = view
            self.needle = needle
            self.found = found
            self.backwards = backwards

    def __init__(self, path: str | Path | None = None, *, poll_interval_s: float = POLL_INTERVAL_S,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self._file: LogFile | None = LogFile(path) if path else None
        self._state = FileState(0, None)
        self._lines: list[Line] = []
        self._top = 0
        self._generation = 0
        self._syncing = False
        self._loading = False
        self._pending_steps = 0
        """Lines stepped past the edge of the window while a refill was on its way."""
        self._needle = ""
        self._match_offset: int | None = None
        self._poll_interval_s = poll_interval_s
        self._strips: LRUCache[tuple, Strip] = LRUCache(512)
        self._empty_text = "no output yet"

    # ------------------------------------------------------------------ public

    @property
    def path(self) -> Path | None:
        return self._file.path if self._file else None

    def show_file(self, path: str | Path | None, *, empty_text: str = "no output yet") -> None:
        """Show another file (a run's next attempt writes a new log); ``None``: none yet."""
        self._empty_text = empty_text
        if (Path(path) if path else None) == self.path:
            self._post_status()
            return
        self._file = LogFile(path) if path else None
        self._generation += 1
        self._lines, self._top, self._state = [], 0, FileState(0, None)
        self._match_offset = None
        self._strips.clear()
        self._sync_virtual_size()
        self.refresh()
        if self._file is not None:
            self._request("tail" if self.follow else "top")
        self._post_status()

    def visible_lines(self) -> list[str]:
        """The text of the lines on screen, top first (what a test or a copy needs)."""
        height = self.scrollable_content_region.height
        return [line.text for line in self._lines[self._top:self._top + height]]

    @property
    def at_end(self) -> bool:
        """Whether the last line of the file is on screen."""
        if not self._lines:
            return True
        height = self.scrollable_content_region.height
        return self._lines[-1].end >= self._state.size and self._top + height >= len(self._lines)

    def search(self, needle: str, *, backwards: bool = False) -> None:
        """Show the next match of ``needle`` below (or above) what is shown; stops following."""
        if not needle or self._file is None:
            return
        if needle != self._needle:
            self._match_offset = None
            self._strips.clear()
        self._needle = needle
        self.follow = False
        if self._match_offset is not None:
            start = self._match_offset if backwards else self._match_offset + 1
        elif self._lines:
            start = self._lines[min(self._top, len(self._lines) - 1)].offset
        else:
            start = 0
        self._search(needle, start, backwards, self._generation)
        self.refresh()

    def clear_search(self) -> None:
        self._needle = ""
        self._match_offset = None
        self._strips.clear()
        self.refresh()

    # ----------------------------------------------------------------- actions

    def action_step(self, delta: int) -> None:
        self._step(delta)

    def action_page(self, pages: int) -> None:
        self._step(pages * max(1, self.scrollable_content_region.height - 1))

    def action_top(self) -> None:
        self.follow = False
        self._request("top")

    def action_end(self) -> None:
        self.follow = True

    def action_pan(self, cells: int) -> None:
        self.scroll_to(x=self.scroll_x + cells, animate=False)

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow

    def watch_follow(self, follow: bool) -> None:
        if follow:
            self._request("tail")
        self._post_status()

    # --------------------------------------------------------------- lifecycle

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(self._poll_interval_s, self._tick)
        if self._file is not None:
            self._request("tail" if self.follow else "top")
        self._post_status()

    def on_resize(self) -> None:
        self._strips.clear()
        if self.follow and self._file is not None:
            self._request("tail")
        else:
            self._sync_virtual_size()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def _tick(self) -> None:
        if self._file is not None and not self._loading:
            self._poll(self._file, self._generation)

    # ----------------------------------------------------------------- workers

    def _request(self, kind: str, offset: int = 0, *, keep_position: bool = False) -> None:
        if self._file is None:
            return
        self._loading = True
        height = max(1, self.scrollable_content_region.height)
        self._load(self._file, kind, offset, height, self._generation, keep_position)

    @work(thread=True, exclusive=True, group="log-load", exit_on_error=False)
    def _load(self, log: LogFile, kind: str, offset: int, height: int, generation: int,
              keep_position: bool) -> None:
        state = log.state()
        if kind == "tail":
            lines = log.tail(height + MARGIN_LINES)
            top = max(0, len(lines) - height)
        elif kind == "top":
            lines = log.lines_from(0, height + MARGIN_LINES)
            top = 0
        else:
            anchor = log.line_start(offset)
            before = log.lines_before(anchor, MARGIN_LINES)
            after = log.lines_from(anchor, height + MARGIN_LINES)
            lines = before + after
            # A match is shown a third of the way down, with what led to it above.
            top = len(before) if keep_position or kind == "around" else max(0, len(before) - height // 3)
        if not get_current_worker().is_cancelled:
            self.post_message(_WindowLoaded(_Window(lines, top, state, generation, keep_position, kind == "tail")))

    @work(thread=True, exclusive=True, group="log-poll", exit_on_error=False)
    def _poll(self, log: LogFile, generation: int) -> None:
        self.post_message(_FileChecked(log.state(), generation))

    @work(thread=True, exclusive=True, group="log-search", exit_on_error=False)
    def _search(self, needle: str, start: int, backwards: bool, generation: int) -> None:
        worker = get_current_worker()
        log = self._file
        found = log.find(needle, start, backwards=backwards, cancelled=lambda: worker.is_cancelled) if log else None
        if not worker.is_cancelled:
            self.post_message(_SearchDone(needle, found, backwards, generation))

    # ---------------------------------------------------------------- messages

    def on__window_loaded(self, message: _WindowLoaded) -> None:
        message.stop()
        window = message.window
        if window.generation != self._generation:
            return
        self._loading = False
        if window.follow and not self.follow:
            return  # paused while the tail was being read: stay where the user is
        top = window.top
        pending = 0
        if window.keep_position and self._lines:
            current = self._lines[min(self._top, len(self._lines) - 1)].offset
            offsets = [line.offset for line in window.lines]
            index = bisect_left(offsets, current)
            if index >= len(offsets) or offsets[index] != current:
                return  # the user moved far meanwhile; a newer request is on its way
            top = index
            pending, self._pending_steps = self._pending_steps, 0
        else:
            self._pending_steps = 0
        self._lines = window.lines
        self._state = window.state
        self._top = max(0, min(top, len(self._lines) - 1)) if self._lines else 0
        self._sync_virtual_size()
        self.refresh()
        if pending:
            self._step(pending)
        else:
            self._refill_if_near_edge()
        self._post_status()

    def on__file_checked(self, message: _FileChecked) -> None:
        message.stop()
        if message.generation != self._generation:
            return
        old, new = self._state, message.state
        if new == old:
            return
        replaced = new.identity != old.identity or new.size < old.size
        if replaced:
            self._strips.clear()
            self._match_offset = None
            self._request("tail" if self.follow else "top")
        elif self.follow:
            self._request("tail")
        else:
            # Paused: the file grows below; only the scrollbar needs to know.
            self._state = new
            self._sync_virtual_size()
            self._post_status()

    def on__search_done(self, message: _SearchDone) -> None:
        message.stop()
        if message.generation != self._generation or message.needle != self._needle:
            return
        if message.found is not None:
            self._match_offset = message.found
            self.follow = False
            self._request("match", message.found)
        self.post_message(self.SearchFinished(self, message.needle, message.found is not None, message.backwards))

    # ----------------------------------------------------------------- scrolling

    def _step(self, delta: int) -> None:
        if not self._lines or not delta:
            return
        height = self.scrollable_content_region.height
        last_top = max(0, len(self._lines) - height) if self._window_reaches_end() else len(self._lines) - 1
        wanted = self._top + delta
        top = max(0, min(wanted, last_top))
        if wanted > last_top and not self._window_reaches_end():
            self._pending_steps += wanted - last_top
        elif wanted < 0 and self._lines[0].offset > 0:
            self._pending_steps += wanted
        if delta < 0 and (top < self._top or self._lines[0].offset > 0):
            self.follow = False
        if top == self._top and delta > 0 and self._window_reaches_end():
            self.follow = True  # pushing past the end: back to following
            return
        self._top = top
        self._sync_virtual_size()
        self.refresh()
        self._refill_if_near_edge()
        self._post_status()

    def _window_reaches_end(self) -> bool:
        return bool(self._lines) and self._lines[-1].end >= self._state.size

    def _refill_if_near_edge(self) -> None:
        if self._loading or not self._lines:
            return
        height = self.scrollable_content_region.height
        near_top = self._top < REFILL_AT and self._lines[0].offset > 0
        near_end = len(self._lines) - (self._top + height) < REFILL_AT and not self._window_reaches_end()
        if near_top or near_end:
            self._request("around", self._lines[self._top].offset, keep_position=True)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self._syncing:
            return
        # Moved by the mouse wheel or the scrollbar, not by this class.
        delta = round(new_value) - round(old_value)
        if not delta:
            return
        height = max(1, self.scrollable_content_region.height)
        if new_value >= self.max_scroll_y and delta > 0:
            self.follow = True
        elif new_value <= 0:
            self.action_top()
        elif abs(delta) <= 3 * height:
            self._step(delta)
        else:
            self.follow = False
            total = max(1, self.virtual_size.height)
            self._request("around", int(self._state.size * new_value / total))

    def _estimate(self) -> tuple[int, int]:
        """(total lines, line number of the top line), estimated from the window."""
        lines = self._lines
        if not lines:
            return 0, 0
        size = self._state.size
        span = max(1, lines[-1].end - lines[0].offset)
        bytes_per_line = span / len(lines)
        before = round(lines[0].offset / bytes_per_line)
        after = round(max(0, size - lines[-1].end) / bytes_per_line)
        return before + len(lines) + after, before + self._top

    def _sync_virtual_size(self) -> None:
        total, top_line = self._estimate()
        width = min(MAX_VIRTUAL_WIDTH, max((len(line.text) for line in self._lines), default=0))
        self._syncing = True
        try:
            self.virtual_size = Size(width, total)
            height = self.scrollable_content_region.height
            self.scroll_to(y=min(top_line, max(0, total - height)), animate=False, immediate=True, force=True)
        finally:
            self._syncing = False

    # ----------------------------------------------------------------- drawing

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        if not self._lines:
            if y == 0:
                note = self._empty_text if self._file is None or not self._state.identity else "empty"
                return Strip([Segment(f" {note}", base + Style(dim=True))]).extend_cell_length(width, base)
            return Strip.blank(width, base)
        index = self._top + y
        if index >= len(self._lines):
            return Strip.blank(width, base)
        line = self._lines[index]
        scroll_x = int(self.scroll_x)
        key = (line.offset, line.end, self._needle, scroll_x, width)
        strip = self._strips.get(key)
        if strip is None:
            strip = self._render_text(line, scroll_x, width, base)
            self._strips[key] = strip
        return strip

    def _render_text(self, line: Line, scroll_x: int, width: int, base: Style) -> Strip:
        if "\x1b" in line.text:
            text = Text.from_ansi(line.text, no_wrap=True, end="")
        else:
            text = Text(strip_control_codes(line.text), no_wrap=True, end="")
        if self._needle:
            flags = 0 if any(char.isupper() for char in self._needle) else re.IGNORECASE
            text.highlight_regex(re.compile(re.escape(self._needle), flags),
                                 self.get_component_rich_style("logview--match"))
        segments = list(text.render(self.app.console))
        strip = Strip(segments, text.cell_len).crop(scroll_x, scroll_x + width)
        return strip.apply_style(base).extend_cell_length(width, base)

    def _post_status(self) -> None:
        self.post_message(self.StatusChanged(self, self.status_text()))

    def status_text(self) -> str:
        if self._file is None:
            return self._empty_text
        if not self._state.identity:
            return f"{self._file.path.name} · {self._empty_text}"
        parts = [self._file.path.name, format_size(self._state.size)]
        if self.follow:
            parts.append("following · f pauses")
        else:
            where = "top"
            if self._lines and self._state.size:
                share = self._lines[min(self._top, len(self._lines) - 1)].offset / self._state.size
                where = f"{share:.0%}" if self._top or self._lines[0].offset else "top"
            parts.append(f"paused at {where} · f or End follows")
        if self._needle:
            parts.append(f"/{self._needle}  n next · N previous")
        return " · ".join(parts)


class _WindowLoaded(Message, bubble=False):
    def __init__(self, window: _Window) -> None:
        super().__init__()
        self.window = window


class _FileChecked(Message, bubble=False):
    def __init__(self, state: FileState, generation: int) -> None:
        super().__init__()
        self.state = state
        self.generation = generation


class _SearchDone(Message, bubble=False):
    def __init__(self, needle: str, found: int | None, backwards: bool, generation: int) -> None:
        super().__init__()
        self.needle = needle
        self.found = found
        self.backwards = backwards
        self.generation = generation
