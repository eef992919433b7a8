"""A run's health: its verdict, what checks it, what the engine noticed, and the history
of its checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import DataTable, Static

from engine.units import format_duration
from tui import format as fmt

NO_CHECKS = "no health checks configured — submit with --stall-timeout 10m or --health-cmd '…' to have one"
Part = str | tuple[str, str]


class HealthPane(Vertical):
    """Feed it with :meth:`show_run` (a ``show`` answer)."""

    DEFAULT_CSS = """
    HealthPane > Static { height: auto; padding: 0 1; }
    HealthPane > DataTable { height: 1fr; margin-top: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="health-summary")
        yield DataTable(id="health-checks", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in (("when", "WHEN"), ("attempt", "ATT"), ("check", "CHECK"), ("result", "RESULT"),
                           ("health", "HEALTH"), ("output", "OUTPUT")):
            table.add_column(label, key=key)
        table.display = False
        self._signature: object = None

    def show_run(self, run: Mapping[str, Any], now: float) -> None:
        checks = run.get("health_checks")
        signature = (run.get("health"), run.get("health_detail"), run.get("warning"), repr(run.get("progress")),
                     repr(run.get("health_policy")), repr(checks), round(now / 10))
        if signature == self._signature:
            return
        self._signature = signature
        self.query_one("#health-summary", Static).update(Content("\n").join(_summary(run, now)))
        table = self.query_one(DataTable)
        if not isinstance(checks, list) or not checks:
            table.display = False
            return
        table.display = True
        table.clear()
        for check in reversed(checks):
            ok = bool(check.get("ok"))
            at = check.get("at")
            table.add_row(
                Text(f"{format_duration(max(0.0, now - at))} ago" if isinstance(at, (int, float)) else "-"),
                Text(str(check.get("attempt") or "-"), justify="right"),
                Text(str(check.get("check_name") or "cmd")),
                Text("ok" if ok else "failed", style="" if ok else "bold"),
                Text(str(check.get("health") or "")),
                Text(" ".join(str(check.get("output") or "").split())[:200]),
            )


def _summary(run: Mapping[str, Any], now: float) -> list[Content]:
    lines: list[Content] = []
    policy = run.get("health_policy")
    health = run.get("health")
    if health:
        label = fmt.HEALTH_LABELS.get(str(health), str(health))
        variable = fmt.health_variable(label) or "foreground"
        detail = str(run.get("health_detail") or "")
        lines.append(Content.assemble(("health ", "$text-muted"), (str(health), f"bold ${variable}"),
                                      (f" — {detail}" if detail else "", "")))
    elif not policy:
        lines.append(Content.assemble((NO_CHECKS, "$text-muted")))
    if isinstance(policy, Mapping) and policy:
        lines.append(Content.assemble(("checks ", "$text-muted"), _policy_text(policy)))
    warning = run.get("warning")
    if warning:
        lines.append(Content.assemble(("warning ", "$text-muted"), (str(warning), "$text-warning")))
    progress = fmt.progress_text(run)
    if progress:
        parts: list[Part] = [("progress ", "$text-muted"), progress]
        eta = fmt.eta_text(run, now)
        if eta:
            parts += [("  ", ""), eta]
        metrics = (run.get("progress") or {}).get("metrics") or run.get("metrics") or {}
        if isinstance(metrics, Mapping):
            for name, value in list(metrics.items())[:4]:
                parts += [("  ", ""), (f"{name} ", "$text-muted"), _number(value)]
        at = (run.get("progress") or {}).get("at")
        if isinstance(at, (int, float)):
            parts += [("  last heartbeat ", "$text-muted"), f"{format_duration(max(0.0, now - at))} ago"]
        lines.append(Content.assemble(*parts))
    return lines


def _policy_text(policy: Mapping[str, Any]) -> str:
    parts = []
    if policy.get("cmd"):
        parts.append(
            f"--health-cmd {policy['cmd']!r} every {format_duration(policy.get('interval_s'))}, "
            f"unhealthy after {policy.get('retries', 3)} failures, timeout {format_duration(policy.get('timeout_s'))}"
        )
    if policy.get("stall_timeout_s"):
        parts.append(f"--stall-timeout {format_duration(policy['stall_timeout_s'])} "
                     f"(on stall: {policy.get('on_stall', 'warn')})")
    return "; ".join(parts) or "none"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
