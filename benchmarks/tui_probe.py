"""Measure the TUI against a running daemon, headless; prints one JSON object.

    python benchmarks/tui_probe.py SOCKET [--all] [--ticks N] [--spawned-at UNIX_TIME]

* ``start_s``: from ``--spawned-at`` (when the parent spawned this process; else from the
  probe's first line) to the first poll's figures being on screen.
* ``tick_cpu_ms``: CPU time (all threads: the poll worker decoding the answer, the
  widgets updating, the screen rendering) per refresh, each refresh asked for at once and
  waited for, over ``--ticks`` refreshes, once the table has finished filling (the first
  fill of ten thousand rows is chunked over a few seconds; ``fill_s`` says how long).
  The daemon is another process: none of its work is counted.
* ``rss_bytes``: the process's resident memory after the ticks.

Runs as its own process so its memory and CPU are the TUI's alone. The app is the real
one (``tui.app.RunyardApp``) in Textual's headless test mode at 200x60.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

FIRST_LINE_AT = time.time()


async def probe(socket_path: str, show_all: bool, ticks: int, spawned_at: float) -> dict:
    import psutil

    from engine.client import Client
    from tui.app import RunyardApp

    handled = 0

    class ProbedApp(RunyardApp):
        # Textual reads CSS_PATH relative to the module defining the class: point it back.
        CSS_PATH = _css_beside(RunyardApp)

        def on_view_polled(self, message) -> None:  # type: ignore[override]
            nonlocal handled
            super().on_view_polled(message)
            # Textual calls the handler of every class in the MRO: without this the app's
            # own handler would run a second time, and each refresh would count double.
            message.prevent_default()
            handled += 1

    # A poll interval of an hour: every refresh below is one this probe asked for.
    app = ProbedApp(Client(socket_path, timeout_s=120), poll_interval_s=3600)
    async with app.run_test(size=(200, 60)) as pilot:
        while handled < 1:
            await pilot.pause(0.005)
        await pilot.pause()
        start_s = time.time() - spawned_at
        fill_started = time.time()
        if show_all:
            app.action_toggle_all()
            while handled < 2:
                await pilot.pause(0.005)
            await pilot.pause()
        table = app.query_one("#queue")
        # Filled when three looks 50 ms apart see the same number of rows.
        counts = []
        while len(counts) < 3 or len(set(counts[-3:])) > 1:
            counts.append(table.row_count)
            await pilot.pause(0.05)
        fill_s = time.time() - fill_started
        costs = []
        for _ in range(ticks):
            seen = handled
            cpu = time.process_time()
            app.action_refresh_now()
            while handled == seen:
                await pilot.pause(0.001)
            await pilot.pause()  # let the table's re-render land
            costs.append((time.process_time() - cpu) * 1000)
        rows = table.row_count
    return {"start_s": start_s, "fill_s": fill_s, "tick_cpu_ms": costs, "rows": rows,
            "rss_bytes": psutil.Process().memory_info().rss}


def _css_beside(app_class) -> list[str]:
    import inspect
    from pathlib import Path

    paths = app_class.CSS_PATH or []
    folder = Path(inspect.getfile(app_class)).parent
    return [str(folder / path) for path in ([paths] if isinstance(paths, (str, Path)) else paths)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket")
    parser.add_argument("--all", action="store_true", help="list every run (the TUI's `a`)")
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--spawned-at", type=float, default=None)
    args = parser.parse_args()
    result = asyncio.run(probe(args.socket, args.all, args.ticks, args.spawned_at or FIRST_LINE_AT))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
