"""Reading a log by byte offset, so a multi-GB file opens as fast as a small one.

Nothing here indexes the whole file: every read starts at a byte offset and reads the
few blocks around it that hold the lines asked for. Positions are byte offsets of line
starts; a line number is never needed (the viewer estimates one for its scrollbar).

A line longer than :data:`MAX_LINE_BYTES` (a progress bar that never prints a newline,
a blob of binary) is shown in pieces of that size, cut from the line's start, so the
same pieces come back whether the reader arrives from above or from below.

No Textual import: the viewer calls these from worker threads. Every function opens
the file itself, so a log that is rotated, truncated or not yet created is just
another answer, never a stale handle.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BLOCK_BYTES = 64 << 10
MAX_LINE_BYTES = 16 << 10
"""Longer lines are cut into pieces of this many bytes."""
WINDOW_BYTES = 2 << 20
"""At most this much is read for one window of lines, however long its lines are."""
LINE_SCAN_BYTES = 1 << 20
"""How far back a line's start is looked for. Past it, pieces of a giant line are
cut from where the scan began, and may not line up with pieces read from above."""
SEARCH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Line:
    """One line (or piece of a long line) of a log."""

    offset: int
    """Byte offset of its first byte."""
    end: int
    """Byte offset just past it, newline included."""
    text: str
    """As a terminal would leave it: decoded, tabs expanded, overwritten by ``\\r``
    updates, trailing newline dropped. ANSI colour codes are kept."""


@dataclass(frozen=True)
class FileState:
    """What a ``stat`` says about the log: enough to see it grew or was replaced."""

    size: int
    identity: tuple[int, int] | None
    """(device, inode); ``None`` when the file does not exist."""


def decode(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    if "\r" in text:
        # tqdm and friends redraw a line with \r: a terminal shows only the last draw.
        text = text.rsplit("\r", 1)[1]
    if "\t" in text:
        text = text.expandtabs(8)
    return text.translate(_UNPRINTABLE)


_UNPRINTABLE = {code: "\ufffd" for code in (*range(0, 9), *range(10, 27), *range(28, 32), 127)}
"""Control bytes other than tab and escape (ANSI colours) would move a terminal's
cursor: each is shown as a replacement character instead."""


class LogFile:
    """A log file on disk, read a window at a time.

    Args:
        path: The file; it need not exist yet.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def state(self) -> FileState:
        try:
            stat = self.path.stat()
        except OSError:
            return FileState(0, None)
        return FileState(stat.st_size, (stat.st_dev, stat.st_ino))

    def lines_from(self, offset: int, count: int) -> list[Line]:
        """Up to ``count`` lines starting at ``offset`` (a line start), in file order."""
        if count <= 0:
            return []
        try:
            handle = self.path.open("rb")
        except OSError:
            return []
        with handle:
            handle.seek(max(0, offset))
            data = b""
            at_eof = False
            while data.count(b"\n") < count and len(data) < WINDOW_BYTES:
                block = handle.read(BLOCK_BYTES)
                if not block:
                    at_eof = True
                    break
                data += block
        lines = _split(data, max(0, offset))
        last = lines[-1] if lines else None
        if not at_eof and last is not None and not data.endswith(b"\n") and last.end - last.offset < MAX_LINE_BYTES:
            # The read stopped inside a line: that line is not known whole yet.
            lines.pop()
        return lines[:count]

    def lines_before(self, end: int, count: int) -> list[Line]:
        """Up to ``count`` lines that end at ``end`` (a line start, or the file's size),
        in file order."""
        if count <= 0 or end <= 0:
            return []
        try:
            handle = self.path.open("rb")
        except OSError:
            return []
        with handle:
            start = end
            data = b""
            while start > 0 and len(data) < WINDOW_BYTES:
                # Newlines strictly inside data (the last byte may be the previous
                # line's own newline) mark line starts.
                if data.count(b"\n", 0, max(0, len(data) - 1)) > count:
                    break
                step = min(BLOCK_BYTES, start)
                start -= step
                handle.seek(start)
                data = handle.read(step) + data
        if start > 0:
            cut = data.find(b"\n", 0, max(0, len(data) - 1))
            if cut >= 0:
                # The first bytes belong to a line that starts before what was read.
                data = data[cut + 1:]
                start += cut + 1
            else:
                start, data = _align_giant(start, data)
        lines = _split(data, start)
        return lines[-count:]

    def tail(self, count: int) -> list[Line]:
        """The last ``count`` lines."""
        return self.lines_before(self.state().size, count)

    def line_start(self, offset: int) -> int:
        """Offset of the start of the line (or piece) that holds byte ``offset``."""
        if offset <= 0:
            return 0
        try:
            handle = self.path.open("rb")
        except OSError:
            return 0
        with handle:
            scan_from = max(0, offset - LINE_SCAN_BYTES)
            handle.seek(scan_from)
            data = handle.read(offset - scan_from)
        newline = data.rfind(b"\n")
        if newline >= 0:
            line_start = scan_from + newline + 1
        elif scan_from == 0:
            line_start = 0
        else:
            line_start = scan_from
        return line_start + (offset - line_start) // MAX_LINE_BYTES * MAX_LINE_BYTES

    def find(
        self,
        needle: str,
        start: int,
        *,
        backwards: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> int | None:
        """Byte offset of the first match of ``needle`` at or after ``start`` (or the
        last one before ``start`` when ``backwards``), or ``None``.

        Plain text, not a pattern; case-insensitive unless ``needle`` has a capital
        (smart case, as in less and vim). Reads the file a chunk at a time, so it
        can be stopped between chunks by ``cancelled``.
        """
        pattern = search_pattern(needle)
        if pattern is None:
            return None
        overlap = len(needle.encode()) - 1
        try:
            handle = self.path.open("rb")
        except OSError:
            return None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if backwards:
                return _find_backwards(handle, pattern, min(start, size), overlap, cancelled)
            position = max(0, start)
            while position < size:
                if cancelled():
                    return None
                handle.seek(position)
                chunk = handle.read(SEARCH_CHUNK_BYTES + overlap)
                if not chunk:
                    return None
                match = pattern.search(chunk)
                if match:
                    return position + match.start()
                position += SEARCH_CHUNK_BYTES
        return None


def search_pattern(needle: str) -> re.Pattern[bytes] | None:
    """The bytes pattern :meth:`LogFile.find` uses; ``None`` for an empty needle."""
    if not needle:
        return None
    flags = 0 if any(char.isupper() for char in needle) else re.IGNORECASE
    return re.compile(re.escape(needle.encode()), flags)


def _find_backwards(handle, pattern: re.Pattern[bytes], end: int, overlap: int,
                    cancelled: Callable[[], bool]) -> int | None:
    while end > 0:
        if cancelled():
            return None
        start = max(0, end - SEARCH_CHUNK_BYTES)
        handle.seek(start)
        chunk = handle.read(min(end + overlap, _size(handle)) - start)
        last = None
        for match in pattern.finditer(chunk):
            if start + match.start() < end:
                last = match
        if last is not None:
            return start + last.start()
        end = start
    return None


def _size(handle) -> int:
    return os.fstat(handle.fileno()).st_size


def _align_giant(start: int, data: bytes) -> tuple[int, bytes]:
    """No newline in a whole window: all of it is one giant line that began earlier.
    Cut its pieces from where the line starts if that is near, else from ``start``."""
    skip = (-start) % MAX_LINE_BYTES if start <= LINE_SCAN_BYTES else 0
    return start + skip, data[skip:]


def _split(data: bytes, base: int) -> list[Line]:
    """``data`` (which begins at a line start, byte ``base`` of the file) as lines."""
    lines: list[Line] = []
    position = 0
    length = len(data)
    while position < length:
        newline = data.find(b"\n", position, position + MAX_LINE_BYTES)
        end = newline + 1 if newline >= 0 else min(length, position + MAX_LINE_BYTES)
        lines.append(Line(base + position, base + end, decode(data[position:end])))
        position = end
    return lines
