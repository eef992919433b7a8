"""Open the TUI: attach to a running engine, or run one embedded for the session.

Quitting never stops a run: runs live in their own sessions. With an embedded engine
and runs queued or running, quitting asks whether to hand them over to a background
daemon (``runyard --daemon``, detached, on the same home); either way nothing is
lost: queued runs wait in the database, running runs go on, and the next engine to
start (the daemon, or a later ``runyard``) re-adopts them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.client import Client, ClientError, DaemonUnavailable
from engine.paths import Home

DEMO_GPUS = "4x80G"
DAEMON_START_TIMEOUT_S = 30.0
"""How long a handed-over daemon may take to answer on its socket."""


class EmbeddedSession:
    """The embedded engine of one TUI session, and how it ends.

    Args:
        engine: The started :class:`engine.daemon.EmbeddedEngine`.
        home: Its home.
        simulate_gpus: What it simulates, passed on to a daemon it hands over to.
    """

    embedded = True

    def __init__(self, engine, home: Home, simulate_gpus: str | None) -> None:
        self.engine = engine
        self.home = home
        self.simulate_gpus = simulate_gpus
        self.finished = False
        self.daemon_pid: int | None = None

    def active_runs(self) -> tuple[int, int]:
        """(queued, running) as the database says, read without the engine."""
        from engine.store import sql

        try:
            conn = sql.connect(self.home.db_path, readonly=True)
        except Exception:
            return 0, 0
        try:
            counts = dict(conn.execute(
                "SELECT state, COUNT(*) FROM runs WHERE state IN ('queued', 'running') GROUP BY state").fetchall())
        finally:
            conn.close()
        return counts.get("queued", 0), counts.get("running", 0)

    def leave(self) -> str:
        """Stop the embedded engine; returns one line for the terminal."""
        self._stop()
        queued, running = self.active_runs()
        if not queued and not running:
            return ""
        parts = []
        if queued:
            parts.append(f"{queued} queued run(s) wait in {self.home.root} until an engine runs (`runyard --daemon`)")
        if running:
            parts.append(f"{running} running run(s) go on; the next engine re-adopts them")
        return "runyard: " + "; ".join(parts) + "."

    def hand_over(self) -> str:
        """Stop the embedded engine, start ``runyard --daemon`` detached on the same home,
        and wait until it answers; returns one line for the terminal.

        Raises:
            RuntimeError: the daemon did not come up (the runs are in the database, and
                the message says how to start one).
        """
        self._stop()
        log_path = self.home.root / "daemon.log"
        command = [sys.executable, "-m", "runyard.cli", "--daemon"]
        if self.simulate_gpus:
            command += ["--simulate-gpus", self.simulate_gpus]
        env = dict(os.environ, RUNYARD_HOME=str(self.home.root))
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(self.home.root),
                start_new_session=True,  # the daemon must outlive this terminal and its signals
            )
        self.daemon_pid = process.pid
        client = Client(self.home.socket_path, timeout_s=3.0)
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the background daemon exited at once (status {process.returncode}); see {log_path}. "
                    "The runs are safe in the database: start an engine with `runyard --daemon`."
                )
            try:
                client.call("hello")
                break
            except (DaemonUnavailable, ClientError, OSError):
                time.sleep(0.1)
        else:
            raise RuntimeError(
                f"the background daemon (pid {process.pid}) did not answer within {DAEMON_START_TIMEOUT_S:g}s; "
                f"see {log_path}"
            )
        queued, running = self.active_runs()
        return (f"runyard: a background daemon (pid {process.pid}) now runs the queue: {running} running, "
                f"{queued} queued. Log: {log_path}. Stop it with `kill {process.pid}`; runs keep running.")

    def _stop(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.engine.stop()


def launch_tui(home: Home, *, simulate_gpus: str | None, demo: bool, theme: str | None) -> int:
    from engine.config import ConfigError, load_config
    from engine.daemon import DaemonError, start_embedded
    from engine.inprocess import InProcessClient

    if demo:
        home = Home(Path(tempfile.mkdtemp(prefix="runyard-demo-")))
        simulate_gpus = simulate_gpus or DEMO_GPUS
    # Short: a hung engine must not freeze quitting for long (the TUI retries anyway).
    from engine.shared import client_for  # the home's daemon, else the box's shared one

    socket_client = client_for(home, timeout_s=3.0)
    session: EmbeddedSession | None = None
    client = socket_client
    if not socket_client.is_alive():
        try:
            engine = start_embedded(home, simulate_gpus=simulate_gpus, settings=load_config())
        except (DaemonError, ConfigError) as error:
            print(f"runyard: {error}", file=sys.stderr)
            return 1
        session = EmbeddedSession(engine, home, simulate_gpus)
        client = InProcessClient(engine)
    if demo:
        from runyard.demo import submit_demo_runs

        submit_demo_runs(client)
    from tui.app import RunyardApp

    message = None
    try:
        # No title suffix: the header's engine line already says "embedded engine" or "daemon".
        message = RunyardApp(client, theme_name=theme, session=session).run()
    finally:
        if session is not None and not session.finished:
            message = session.leave()
    if message:
        print(message, file=sys.stderr)
    return 0
