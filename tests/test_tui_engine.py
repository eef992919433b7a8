"""The interface driven end to end against a real engine: an embedded engine on a
throwaway RUNYARD_HOME with two simulated GPUs, talked to through the in-process
client, running real processes. Every action a person can take is pressed here."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from textual.notifications import Notify

from engine.client import Client, ClientError, DaemonUnavailable
from engine.daemon import EmbeddedEngine, start_embedded
from engine.inprocess import InProcessClient
from engine.paths import Home
from runyard.tui_launch import EmbeddedSession
from tui.app import RunyardApp
from tui.screens.dialogs import ConfirmScreen, HandoverScreen, PriorityScreen
from tui.screens.run_detail import RunDetailScreen
from tui.screens.submit import SubmitScreen
from tui.widgets.log_view import LogView
from tui.widgets.queue_table import QueueTable

DEADLINE_S = 30.0
GIB = 1 << 30
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(600)"
TICKER = (
    "import itertools, time\n"
    "print('MARKER first line', flush=True)\n"
    "for i in itertools.count():\n"
    "    print(f'tick {i}', flush=True)\n"
    "    time.sleep(0.02)\n"
)


@dataclass
class Rig:
    home: Home
    engine: EmbeddedEngine
    client: InProcessClient

    def submit(self, code: str, name: str, **request: Any) -> dict:
        envelope = {"mem_bytes": 256 << 20, "cpus": 0.1, **request.pop("envelope", {})}
        return self.client.call(
            "submit", argv=[sys.executable, "-c", code], cwd=str(self.home.root),
            env=dict(os.environ), name=name, envelope=envelope, **request,
        )

    def run(self, run_id: int) -> dict:
        return self.client.call("show", id=run_id)

    def wait_state(self, run_id: int, *states: str) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            run = self.run(run_id)
            if run["state"] in states:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} is {run['state']}, not {states}")
            time.sleep(0.05)

    def wait_pid(self, run_id: int) -> int:
        """The pid of a running run's command, once the engine knows it."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            run = self.run(run_id)
            if run["state"] == "running" and run["pid"]:
                return run["pid"]
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} never got a pid: {run['state']}")
            time.sleep(0.05)

    def app(self, **kwargs: Any) -> RunyardApp:
        kwargs.setdefault("session", EmbeddedSession(self.engine, self.home, "2x80G"))
        return RunyardApp(kwargs.pop("client", self.client), hostname="testbox", poll_interval_s=0.2,
                          log_poll_interval_s=0.1, **kwargs)


@pytest.fixture
def rig(monkeypatch) -> Iterator[Rig]:
    # A short path: a Unix socket's path must stay under about 100 bytes.
    home = Home(Path(tempfile.mkdtemp(prefix="ry-", dir="/tmp")))
    # Runs inherit it, so the teardown finds and kills every process this test started.
    monkeypatch.setenv("RUNYARD_HOME", str(home.root))
    monkeypatch.setenv("RUNYARD_CONFIG", str(home.root / "no-config.toml"))
    (home.root / "no-config.toml").write_text("")
    monkeypatch.setenv("RUNYARD_TUI_CONFIG", str(home.root / "no-tui.toml"))
    engine = start_embedded(home, simulate_gpus="2x80G")
    try:
        yield Rig(home, engine, InProcessClient(engine))
    finally:
        stop_once(engine)
        kill_home_processes(home.root)
        shutil.rmtree(home.root, ignore_errors=True)


def kill_home_processes(home: Path) -> None:
    """Kill every process started with this RUNYARD_HOME (shims, runs, a handed-over
    daemon) and wait until each is dead.

    Like conftest's ``kill_processes_of_home``, but a killed run whose shim died first
    counts as dead once it is a zombie: here the box's init reaps orphans slowly, and
    waiting for that cost more than a second per test.
    """
    victims = []
    for process in psutil.process_iter(["pid"]):
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get("RUNYARD_HOME") == str(home):
                victims.append(process)
        except (psutil.Error, OSError):
            continue
    for process in victims:
        with contextlib.suppress(psutil.Error):
            process.kill()
    deadline = time.monotonic() + DEADLINE_S
    for process in victims:
        with contextlib.suppress(ChildProcessError, OSError, psutil.Error):
            if process.ppid() == os.getpid():
                os.waitpid(process.pid, 0)  # our child (a shim): reap it
        while time.monotonic() < deadline:
            try:
                if process.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)


def stop_once(engine: EmbeddedEngine) -> None:
    """``EmbeddedEngine.stop`` raises on an engine already stopped (its loop is closed)."""
    server = engine.server
    if server is not None and not server.loop.is_closed():
        engine.stop()


async def wait_for(pilot, predicate, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await pilot.pause(0.05)


def notes_hook(notes: list[str]):
    def hook(message) -> None:
        if isinstance(message, Notify):
            notes.append(message.notification.message)
    return hook


def table(app: RunyardApp) -> QueueTable:
    return app.dashboard.query_one(QueueTable)


async def highlight(pilot, app: RunyardApp, run_id: int) -> None:
    await wait_for(pilot, lambda: str(run_id) in table(app).run_keys(), f"run {run_id} listed")
    table(app).select_run(run_id)
    await pilot.pause()
    assert table(app).highlighted_run()["id"] == run_id


# --- the in-process client --------------------------------------------------------------

def test_in_process_client_answers_like_the_socket(rig: Rig):
    assert rig.client.call("hello")["mode"] == "embedded"
    run = rig.submit(SLEEPER, "sleeper", held=True)
    assert isinstance(run["gpus"], list) and run["user"]
    with pytest.raises(ClientError) as raised:
        rig.client.call("show", id=999)
    assert raised.value.code == 3 and "no run 999" in str(raised.value)
    with pytest.raises(ClientError) as raised:
        rig.client.call("no-such-op")
    assert "unknown request" in str(raised.value)
    stop_once(rig.engine)
    with pytest.raises(DaemonUnavailable):
        rig.client.call("ls")


def test_every_run_is_read_in_pages(rig: Rig):
    from tui.poll import read_all_runs

    ids = [rig.submit(SLEEPER, f"held-{index}", held=True)["id"] for index in range(5)]
    assert [run["id"] for run in read_all_runs(rig.client, page=2)] == ids
    assert [run["id"] for run in rig.client.call("ls", all=True, after_id=ids[1], limit=2)] == ids[2:4]
    with pytest.raises(ClientError) as raised:
        rig.client.call("ls", all=True, after_id=-1, limit=2)
    assert raised.value.code == 2


# --- the run detail and its log ----------------------------------------------------------

async def test_enter_opens_the_log_which_follows_pauses_searches_and_jumps(rig: Rig):
    run = rig.submit(TICKER, "ticker")
    rig.wait_state(run["id"], "running")
    app = rig.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await highlight(pilot, app, run["id"])
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunDetailScreen), "the run's detail")
        view = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: any(line.startswith("tick") for line in view.visible_lines()), "output")

        def last_tick() -> int:
            ticks = [line for line in view.visible_lines() if line.startswith("tick")]
            return int(ticks[-1].split()[1]) if ticks else -1

        seen = last_tick()
        await wait_for(pilot, lambda: last_tick() > seen + 5, "new output followed")

        await pilot.press("f")  # pause
        assert not view.follow
        paused_at = view.visible_lines()
        await pilot.pause(0.5)
        assert view.visible_lines() == paused_at, "a paused log must stay where it is"

        await pilot.press("home")
        await wait_for(pilot, lambda: view.visible_lines()[:1] == ["MARKER first line"], "the top")

        await pilot.press("slash")
        await pilot.press(*"tick 7")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "tick 7" in view.visible_lines(), "the first match")
        await pilot.press("n")
        await wait_for(pilot, lambda: "tick 70" in view.visible_lines(), "the next match")
        await pilot.press("N")
        await wait_for(pilot, lambda: view.status_text().count("/tick 7") == 1 and "tick 7" in view.visible_lines(),
                       "back to the previous match")

        await pilot.press("end")
        assert view.follow
        seen = last_tick()
        await wait_for(pilot, lambda: view.at_end and last_tick() > seen, "following at the end again")

        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunDetailScreen), "back on the dashboard")


async def test_detail_tabs_show_checkpoints_health_usage_and_provenance(rig: Rig):
    code = (
        "import time\n"
        "from runyard import checkpoint\n"
        "for step in (10, 20):\n"
        "    checkpoint.save({'step': step}, step, metrics={'loss': 1 / step})\n"
        "print('saved', flush=True)\n"
        "time.sleep(600)\n"
    )
    run = rig.submit(code, "saver", health={"cmd": "true", "interval_s": 1.0})
    rig.wait_state(run["id"], "running")
    app = rig.app()
    async with app.run_test(size=(120, 36)) as pilot:
        await highlight(pilot, app, run["id"])
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunDetailScreen), "the run's detail")
        screen = app.screen
        await pilot.press("2")
        checkpoints = screen.query_one("#checkpoints-table")
        await wait_for(pilot, lambda: checkpoints.row_count == 2, "two checkpoints", timeout_s=DEADLINE_S)
        newest = checkpoints.get_row_at(0)
        assert str(newest[0]) == "newest" and str(newest[1]) == "20"
        await pilot.press("3")
        await wait_for(pilot, lambda: "health healthy" in str(screen.query_one("#health-summary").render()),
                       "a healthy check")
        await pilot.press("4")
        await wait_for(pilot, lambda: screen.query("UsageChart"), "usage charts")
        assert "memory" in [chart.series.title for chart in screen.query("UsageChart")]
        await pilot.press("5")
        text = str(screen.query_one("ProvenancePane").render())
        assert "provenance not recorded" in text or text.strip()


# --- actions -----------------------------------------------------------------------------

async def test_cancel_asks_first_and_stops_the_run(rig: Rig):
    run = rig.submit(SLEEPER, "sleeper")
    pid = rig.wait_pid(run["id"])
    app = rig.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await highlight(pilot, app, run["id"])
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("n")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the question gone")
        await pilot.pause(0.3)
        assert rig.run(run["id"])["state"] == "running"
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question again")
        await pilot.press("y")
        await wait_for(pilot, lambda: rig.run(run["id"])["state"] == "cancelled", "the run cancelled")
        await wait_for(pilot, lambda: table(app).cell_text(run["id"], "state") == "cancelled", "the table updated")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_hold_release_and_priority_of_a_waiting_run(rig: Rig):
    blocker = rig.submit(SLEEPER, "blocker", envelope={"gpus": 2})
    rig.wait_state(blocker["id"], "running")
    waiting = rig.submit(SLEEPER, "waiting", envelope={"gpus": 1})
    app = rig.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await highlight(pilot, app, waiting["id"])
        await wait_for(pilot, lambda: "needs 1 GPU" in table(app).cell_text(waiting["id"], "reason"),
                       "why it waits")
        await pilot.press("h")
        await wait_for(pilot, lambda: rig.run(waiting["id"])["held"], "held")
        await wait_for(pilot, lambda: table(app).cell_text(waiting["id"], "state") == "held", "shown held")
        await pilot.press("h")
        await wait_for(pilot, lambda: not rig.run(waiting["id"])["held"], "released")

        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, PriorityScreen), "the priority dialog")
        await pilot.press("backspace", "7", "enter")
        await wait_for(pilot, lambda: rig.run(waiting["id"])["priority"] == 7, "priority 7")

        # Running runs cannot be held: said, not crashed.
        notes: list[str] = []
        table(app).select_run(blocker["id"])
        await pilot.pause()
        app.notify = lambda message, **kwargs: notes.append(message)  # type: ignore[method-assign]
        await pilot.press("h")
        assert any("only queued runs can be held" in note for note in notes)


async def test_submit_form_checks_as_you_type_previews_and_queues(rig: Rig):
    app = rig.app()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.last_view is not None, "the first poll")
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, SubmitScreen), "the form")
        form = app.screen
        # Long values are set; the mistake and its fix are typed key by key.
        form.query_one("#command").value = f"{sys.executable} -c 'import time; time.sleep(600)'"
        form.query_one("#name").value = "from-the-form"
        await pilot.click("#mem")
        await pilot.press(*"12x")
        await wait_for(pilot, lambda: "cannot read size '12x'" in str(form.query_one("#problem").render()),
                       "the error as it is typed")
        await pilot.press("backspace", "backspace", "backspace", *"64M")
        await wait_for(pilot, lambda: "would start now" in str(form.query_one("#preview").render()), "a preview")
        assert str(form.query_one("#problem").render()).strip() == ""

        await pilot.click("#gpus")
        await pilot.press("3")
        await wait_for(pilot, lambda: "refused: asks 3 GPUs; this box has 2" in str(form.query_one("#preview").render()),
                       "a refusal previewed")
        await pilot.press("backspace", "1")
        await wait_for(pilot, lambda: "would start now" in str(form.query_one("#preview").render()), "fits again")

        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, SubmitScreen), "the form closed")
        runs = [run for run in rig.client.call("ls") if run["name"] == "from-the-form"]
        assert len(runs) == 1 and runs[0]["envelope"]["mem_bytes"] == 64 << 20 and runs[0]["envelope"]["gpus"] == 1
        await wait_for(pilot, lambda: table(app).highlighted_run() and
                       table(app).highlighted_run()["id"] == runs[0]["id"], "the new run highlighted")


async def test_retry_requeues_a_run_that_ended_and_an_older_engine_just_says_so(rig: Rig):
    run = rig.submit("raise SystemExit(3)", "fails")
    rig.wait_state(run["id"], "failed")
    notes: list[str] = []
    app = rig.app()
    async with app.run_test(size=(100, 30), notifications=True, message_hook=notes_hook(notes)) as pilot:
        await pilot.press("a")  # finished runs too
        await highlight(pilot, app, run["id"])
        await pilot.press("r")
        await wait_for(pilot, lambda: any("queued again as attempt 2" in note for note in notes), "the retry")
        assert rig.run(run["id"])["attempts"] == 2

    class OlderEngine:
        def call(self, op: str, **args: Any) -> Any:
            if op == "retry":
                raise ClientError("unknown request 'retry'; known: hello, submit", 2)
            return rig.client.call(op, **args)

    rig.wait_state(run["id"], "failed")
    notes.clear()
    app = rig.app(client=OlderEngine())
    async with app.run_test(size=(100, 30), notifications=True, message_hook=notes_hook(notes)) as pilot:
        await pilot.press("a")
        await highlight(pilot, app, run["id"])
        await pilot.press("r")
        await wait_for(pilot, lambda: any("cannot retry runs yet" in note for note in notes), "the explanation")
        assert app.is_running


async def test_pager_copy_id_and_the_mouse(rig: Rig, monkeypatch, tmp_path: Path):
    other = rig.submit(SLEEPER, "other", held=True)
    run = rig.submit(SLEEPER, "sleeper")
    rig.wait_state(run["id"], "running")
    paged = tmp_path / "paged.txt"
    pager = tmp_path / "pager.py"
    pager.write_text(f"import shutil, sys\nshutil.copy(sys.argv[1], {str(paged)!r})\n")
    monkeypatch.setenv("PAGER", f"{sys.executable} {pager}")
    app = rig.app()
    # A headless test terminal cannot be suspended: the pager runs as it would beside one.
    monkeypatch.setattr(type(app), "suspend", lambda self: _nothing())
    async with app.run_test(size=(100, 30)) as pilot:
        await highlight(pilot, app, run["id"])
        await wait_for(pilot, lambda: Path(rig.run(run["id"])["log_path"]).stat().st_size > 0, "output")
        await pilot.press("l")
        await wait_for(pilot, lambda: paged.exists() and "started" in paged.read_text(), "the log paged")
        await pilot.press("y")
        assert app.clipboard == str(run["id"])

        await highlight(pilot, app, other["id"])
        row = table(app).run_keys().index(str(run["id"]))
        await pilot.click(QueueTable, offset=(4, 2 + row))  # first click highlights…
        assert table(app).highlighted_run()["id"] == run["id"]
        await pilot.click(QueueTable, offset=(4, 2 + row))  # …a click on the highlighted row opens it
        await wait_for(pilot, lambda: isinstance(app.screen, RunDetailScreen), "the detail, by mouse")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


async def test_theme_switch_from_the_command_palette(rig: Rig):
    app = rig.app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.theme == "runyard-dark"
        await pilot.press("ctrl+p")
        await pilot.press(*"theme")
        await pilot.press("enter")
        await pilot.press(*"runyard-light")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.theme == "runyard-light", "the light theme")


# --- quitting ----------------------------------------------------------------------------

async def test_quit_hands_the_runs_over_to_a_background_daemon(rig: Rig):
    running = rig.submit(SLEEPER, "keeps-running", envelope={"gpus": 2})
    pid = rig.wait_pid(running["id"])
    queued = rig.submit(SLEEPER, "keeps-waiting", envelope={"gpus": 1})
    app = rig.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: (app.last_status or {}).get("counts", {}).get("queued") == 1, "the counts")
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, HandoverScreen), "the handover question")
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.is_running, "the app to close", timeout_s=45)
    assert "background daemon" in (app.return_value or "")
    daemon = Client(rig.home.socket_path, timeout_s=10)
    assert daemon.call("hello")["mode"] == "daemon"
    runs = {run["id"]: run for run in daemon.call("ls")}
    assert runs[running["id"]]["state"] == "running" and runs[queued["id"]]["state"] == "queued"
    assert psutil.pid_exists(pid), "the running run must survive the handover"


async def test_quit_without_handover_leaves_the_runs_in_the_database(rig: Rig):
    running = rig.submit(SLEEPER, "keeps-running", envelope={"gpus": 2})
    pid = rig.wait_pid(running["id"])
    queued = rig.submit(SLEEPER, "keeps-waiting", envelope={"gpus": 1})
    app = rig.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: (app.last_status or {}).get("counts", {}).get("queued") == 1, "the counts")
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, HandoverScreen), "the handover question")
        await pilot.press("escape")  # cancel: stay
        await wait_for(pilot, lambda: not isinstance(app.screen, HandoverScreen), "back to the dashboard")
        assert app.is_running
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, HandoverScreen), "the question again")
        await pilot.press("n")
        await wait_for(pilot, lambda: not app.is_running, "the app to close")
    assert "1 queued run(s) wait" in (app.return_value or "")
    with pytest.raises(DaemonUnavailable):
        rig.client.call("ls")
    assert psutil.pid_exists(pid)
    session = EmbeddedSession(rig.engine, rig.home, None)
    assert session.active_runs() == (1, 1), f"{queued['id']} queued and {running['id']} running, in the database"


async def test_a_run_that_fails_while_watched_raises_a_notification(rig: Rig):
    run = rig.submit("import time, sys\ntime.sleep(1.5)\nsys.exit(4)", "doomed")
    notes: list[str] = []
    app = rig.app()
    async with app.run_test(size=(100, 30), notifications=True, message_hook=notes_hook(notes)) as pilot:
        await wait_for(pilot, lambda: str(run["id"]) in table(app).run_keys(), "the run listed")
        rig.wait_state(run["id"], "failed")
        await wait_for(pilot, lambda: any(f"run {run['id']} (doomed) failed" in note for note in notes),
                       "the failure notification")
