"""Open the TUI: attach to a running engine, or run one embedded for the session.

Quitting never stops a run: runs live in their own sessions. With an embedded engine,
queued runs wait in the database until an engine runs again, and the exit says so.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from engine.client import Client, DaemonUnavailable
from engine.paths import Home

DEMO_GPUS = "4x80G"


def launch_tui(home: Home, *, simulate_gpus: str | None, demo: bool, theme: str | None) -> int:
    from engine.config import ConfigError, load_config
    from engine.daemon import DaemonError, start_embedded

    if demo:
        home = Home(Path(tempfile.mkdtemp(prefix="runyard-demo-")))
        simulate_gpus = simulate_gpus or DEMO_GPUS
    # Short: a hung engine must not freeze quitting for long (the TUI retries anyway).
    client = Client(home.socket_path, timeout_s=3.0)
    embedded = None
    if not client.is_alive():
        try:
            embedded = start_embedded(home, simulate_gpus=simulate_gpus, settings=load_config())
        except (DaemonError, ConfigError) as error:
            print(f"runyard: {error}", file=sys.stderr)
            return 1
    if demo:
        from runyard.demo import submit_demo_runs

        submit_demo_runs(client)
    from tui.app import RunyardApp

    mode = "embedded engine" if embedded else "attached"
    try:
        RunyardApp(client, title_suffix=mode, theme_name=theme).run()
    finally:
        if embedded is not None:
            waiting = _count_queued(client)
            embedded.stop()
            if waiting:
                print(
                    f"runyard: {waiting} queued run(s) wait in {home.root} until an engine runs "
                    "(`runyard --daemon`); running runs go on.",
                    file=sys.stderr,
                )
    return 0


def _count_queued(client: Client) -> int:
    try:
        return sum(1 for run in client.call("ls") if run["state"] == "queued")
    except (DaemonUnavailable, Exception):
        return 0
