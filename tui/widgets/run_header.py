"""The top of a run's detail: what it is, where it stands, and why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.content import Content
from textual.widgets import Static

from tui import format as fmt

Part = str | tuple[str, str]


class RunHeader(Static):
    """Two or three lines about one run; feed it with :meth:`show_run`."""

    def show_run(self, run: Mapping[str, Any], now: float) -> None:
        separator: Part = (" · ", "$text-muted")
        state = str(run.get("state") or "?")
        held = bool(run.get("held")) and state == "queued"
        first: list[Part] = [
            (f"#{run.get('id')} ", "bold $text-primary"),
            (str(run.get("name") or ""), "bold"),
            "  ",
            ("held" if held else fmt.state_label(state), f"bold ${fmt.state_color_variable(run)}"),
        ]
        timing = fmt.time_or_reason(run, now) if state == "running" else fmt.when_text(run, now)
        if timing:
            first += [" " if state == "running" else separator, (timing, "")]
        health = fmt.health_text(run)
        if health and health != "-":
            word = str(run.get("health") or health) if health != "warning" else "warning"
            first += [separator, (word, f"${fmt.health_variable(health) or 'foreground'}")]
        if run.get("exit_code") is not None or run.get("signal"):
            first += [separator, (f"exit {fmt.exit_text(run)}", "$text-error" if run.get("exit_code") else "")]

        second: list[Part] = [(fmt.envelope_text(run), "$text-accent")]
        slurm = fmt.slurm_text(run)
        if slurm:
            second += [separator, slurm]
        if run.get("gpus"):
            second += [separator, f"GPUs {fmt.gpus_text(run)}"]
        if state == "running" and run.get("pid"):
            second += [separator, (f"pid {run['pid']}", "$text-muted")]
        second += [separator, (fmt.user_text(run), "$text-muted"), separator,
                   (f"priority {run.get('priority', 0)}", "$text-muted")]
        command = fmt.command_text(run)
        if command:
            second += [("  $ ", "$text-muted"), command]

        lines = [Content.assemble(*first), Content.assemble(*second)]
        reason = str(run.get("reason") or "")
        notes: list[Part] = [(f"attempt {fmt.attempts_text(run)}", "$text-muted")]
        if reason and state != "running":
            notes.append(separator)
            notes.append((reason, "$text-warning" if state == "queued" else ""))
        if run.get("warning"):
            notes.append(separator)
            notes.append((f"⚠ {run['warning']}", "$text-warning"))
        progress = fmt.progress_text(run)
        if progress:
            notes.append(separator)
            notes.append((progress, "$text-accent"))
        lines.append(Content.assemble(*notes))
        self.update(Content("\n").join(lines))
