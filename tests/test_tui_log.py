"""The log reader and viewer: windows read by byte offset, follow, pause, search, and a
multi-GB file that opens by reading only what is on screen."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from tui import logfile
from tui.logfile import LogFile, decode
from tui.widgets import log_view
from tui.widgets.log_view import LogView

DEADLINE_S = 20.0


def line(number: int) -> str:
    return f"line {number} {'x' * (number % 7)}"


def write_lines(path: Path, count: int, start: int = 0) -> None:
    with path.open("a") as handle:
        for number in range(start, start + count):
            handle.write(line(number) + "\n")


def texts(lines) -> list[str]:
    return [line.text for line in lines]


# --- LogFile -------------------------------------------------------------------------

def test_windows_forward_backward_and_tail(tmp_path: Path):
    path = tmp_path / "out.log"
    write_lines(path, 1000)
    log = LogFile(path)
    first = log.lines_from(0, 3)
    assert texts(first) == [line(0), line(1), line(2)]
    assert first[1].offset == first[0].end
    assert texts(log.lines_from(first[2].offset, 2)) == [line(2), line(3)]
    assert texts(log.lines_before(first[2].offset, 5)) == [line(0), line(1)]
    assert texts(log.tail(2)) == [line(998), line(999)]
    middle = log.lines_from(0, 501)[500]
    assert log.line_start(middle.offset + 4) == middle.offset
    assert texts(log.lines_before(middle.offset, 2)) == [line(498), line(499)]


def test_a_line_without_newline_at_the_end_is_shown(tmp_path: Path):
    path = tmp_path / "out.log"
    path.write_text("done\nhalf a li")
    assert texts(LogFile(path).tail(5)) == ["done", "half a li"]
    assert texts(LogFile(path).lines_from(0, 5)) == ["done", "half a li"]


def test_missing_file_reads_as_empty(tmp_path: Path):
    log = LogFile(tmp_path / "nothing.log")
    assert log.tail(5) == [] and log.lines_from(0, 5) == [] and log.state().identity is None


def test_terminal_like_decoding():
    assert decode(b"epoch 1  10%\repoch 1  50%\repoch 1 100%\n") == "epoch 1 100%"
    assert decode(b"a\tb\r\n") == "a       b"
    assert decode(b"bell\x07 \x1b[31mred\x1b[0m\n") == "bell\ufffd \x1b[31mred\x1b[0m"
    assert decode(b"\xff\xfe ok\n") == "\ufffd\ufffd ok"


def test_a_giant_line_comes_in_the_same_pieces_from_above_and_below(tmp_path: Path):
    path = tmp_path / "out.log"
    giant = b"y" * (logfile.MAX_LINE_BYTES * 3 + 100)
    path.write_bytes(b"before\n" + giant + b"\nafter\n")
    log = LogFile(path)
    down = log.lines_from(0, 10)
    up = log.lines_before(log.state().size, 10)
    assert [(line.offset, line.end) for line in down] == [(line.offset, line.end) for line in up]
    assert len(down) == 6 and texts(down)[0] == "before" and texts(down)[-1] == "after"


def test_search_forward_backward_smart_case(tmp_path: Path):
    path = tmp_path / "out.log"
    write_lines(path, 2000)
    path.open("a").write("Traceback (most recent call last)\n")
    write_lines(path, 10, start=2000)
    log = LogFile(path)
    found = log.find("traceback", 0)
    assert found is not None and log.lines_from(log.line_start(found), 1)[0].text.startswith("Traceback")
    assert log.find("Traceback", found + 1) is None
    assert log.find("TRACEBACK", 0) is None  # a capital makes the search case-sensitive
    assert log.find("line 5 ", log.state().size, backwards=True) == log.find("line 5 ", 0)
    assert log.find("nowhere", 0) is None


def test_search_across_chunk_boundaries(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(logfile, "SEARCH_CHUNK_BYTES", 64)
    path = tmp_path / "out.log"
    write_lines(path, 200)
    log = LogFile(path)
    for needle in ("line 150 ", line(77), line(199)):
        offset = log.find(needle, 0)
        assert offset is not None and path.read_bytes()[offset:offset + len(needle)].decode() == needle
        assert log.find(needle, log.state().size, backwards=True) == offset


# --- LogView -------------------------------------------------------------------------

class LogApp(App):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        yield LogView(self.path, poll_interval_s=0.05)


async def wait_for(pilot, predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def test_follows_new_output_pauses_and_jumps_to_either_end(tmp_path: Path):
    path = tmp_path / "out.log"
    write_lines(path, 5000)
    app = LogApp(path)
    async with app.run_test(size=(60, 12)) as pilot:
        view = app.query_one(LogView)
        await wait_for(pilot, lambda: view.visible_lines()[-1:] == [line(4999)], "the end")
        assert view.follow and view.at_end
        write_lines(path, 3, start=5000)
        await wait_for(pilot, lambda: view.visible_lines()[-1] == line(5002), "new output followed")

        await pilot.press("f")
        assert not view.follow and "paused" in view.status_text()
        write_lines(path, 3, start=5003)
        await pilot.pause(0.3)
        assert view.visible_lines()[-1] == line(5002), "paused: new output must not move the view"

        await pilot.press("home")
        await wait_for(pilot, lambda: view.visible_lines()[:1] == [line(0)], "the top")
        await pilot.press("down")
        for _ in range(249):  # past the window the view was opened with: a refill
            view.action_step(1)
            await pilot.pause(0)
        await wait_for(pilot, lambda: view.visible_lines()[:1] == [line(250)], "line 250 at the top")
        await pilot.press("pageup")
        assert view.visible_lines()[0] == line(250 - (view.scrollable_content_region.height - 1))
        await pilot.press("end")
        await wait_for(pilot, lambda: view.visible_lines()[-1:] == [line(5005)], "the end again")
        assert view.follow


async def test_search_shows_each_match_and_says_when_there_is_none(tmp_path: Path):
    path = tmp_path / "out.log"
    write_lines(path, 3000)
    app = LogApp(path)
    found: list[tuple[str, bool]] = []
    async with app.run_test(size=(60, 12), message_hook=lambda m: found.append((m.needle, m.found))
                            if isinstance(m, LogView.SearchFinished) else None) as pilot:
        view = app.query_one(LogView)
        await wait_for(pilot, lambda: view.visible_lines(), "the log")
        await pilot.press("home")
        await wait_for(pilot, lambda: view.visible_lines()[:1] == [line(0)], "the top")
        view.search("line 1234 ")
        await wait_for(pilot, lambda: line(1234) in view.visible_lines(), "the first match")
        assert not view.follow
        view.search("line 1234 ")
        await wait_for(pilot, lambda: ("line 1234 ", False) in found, "no second match")
        view.search("LINE 12", backwards=True)
        await wait_for(pilot, lambda: ("LINE 12", False) in found, "case-sensitive: no match")


async def test_a_multi_gigabyte_log_opens_by_reading_only_a_window(tmp_path: Path, monkeypatch):
    path = tmp_path / "huge.log"
    with path.open("wb") as handle:
        handle.write(b"first line\n")
        handle.truncate(4 << 30)  # sparse: 4 GiB on paper, nothing on disk
        handle.seek(4 << 30)
        handle.write(b"\n" + b"".join(b"tail line %d\n" % number for number in range(100)))
    read_bytes = 0

    class CountingLogFile(LogFile):
        def lines_before(self, end: int, count: int):
            nonlocal read_bytes
            lines = super().lines_before(end, count)
            read_bytes += sum(line.end - line.offset for line in lines)
            return lines

        def lines_from(self, offset: int, count: int):
            nonlocal read_bytes
            lines = super().lines_from(offset, count)
            read_bytes += sum(line.end - line.offset for line in lines)
            return lines

    monkeypatch.setattr(log_view, "LogFile", CountingLogFile)
    app = LogApp(path)
    started = time.monotonic()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(LogView)
        await wait_for(pilot, lambda: view.visible_lines()[-1:] == ["tail line 99"], "the end of the file")
        opened_s = time.monotonic() - started
        assert read_bytes <= 4 * logfile.WINDOW_BYTES
        await pilot.press("home")
        await wait_for(pilot, lambda: view.visible_lines()[:1] == ["first line"], "the start of the file")
        assert read_bytes <= 8 * logfile.WINDOW_BYTES
    assert opened_s < 10, "opening a 4 GiB log must not scan it"


@pytest.mark.parametrize("replace", [True, False], ids=["replaced", "truncated"])
async def test_a_replaced_or_truncated_log_is_read_again(tmp_path: Path, replace: bool):
    path = tmp_path / "out.log"
    write_lines(path, 100)
    app = LogApp(path)
    async with app.run_test(size=(60, 12)) as pilot:
        view = app.query_one(LogView)
        await wait_for(pilot, lambda: view.visible_lines()[-1:] == [line(99)], "the end")
        if replace:
            path.unlink()
        path.write_text("fresh start\n")
        await wait_for(pilot, lambda: view.visible_lines() == ["fresh start"], "the new content")
