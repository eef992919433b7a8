"""What a run used against what it asked for, as small column charts.

One chart per resource: the run's usage over its life (peaks per time slot, so a spike
shows), the envelope as a dotted line, and columns over the envelope in the error
colour. Fed with the engine's ``usage`` answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.containers import ItemGrid, VerticalScroll
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Static

from engine.units import format_duration, format_size
from tui import charts

CHART_HEIGHT = 5
AXIS_WIDTH = 7
NO_SAMPLES = "no usage samples yet — the engine measures a running run every few seconds"


@dataclass(frozen=True)
class Series:
    """One chart's data."""

    title: str
    values: list[float | None]
    limit: float | None
    """The envelope; ``None`` when the run asked for no limit."""
    unit: Callable[[float], str]
    summary: str
    ceiling: float | None = None
    """The top of the chart when the quantity has one (100%); else it fits the data."""


class UsageChart(Widget):
    """A title line, a column chart with its envelope line, and a time axis."""

    DEFAULT_CSS = """
    UsageChart { height: auto; padding: 0 1 1 1; }
    """

    def __init__(self, series: Series, span: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.series = series
        self.span = span

    def get_content_height(self, container, viewport, width: int) -> int:
        return CHART_HEIGHT + 2

    def render(self) -> Content:
        series = self.series
        width = max(4, self.content_region.width - AXIS_WIDTH - 1)
        known = [value for value in series.values if value is not None]
        peak = max(known, default=0.0)
        ceiling = series.ceiling or max(peak, series.limit or 0.0) * 1.1 or 1.0
        rows = charts.columns(series.values, width, CHART_HEIGHT, ceiling)
        limit_row = charts.level_row(series.limit, CHART_HEIGHT, ceiling) if series.limit else None
        over = series.limit is not None and peak > series.limit
        lines = [Content.assemble((series.title, "bold $text-primary"), "  ", (series.summary, "$text-muted"))]
        for index, row in enumerate(rows):
            if index == limit_row:
                label = series.unit(series.limit or 0)
            elif index == CHART_HEIGHT - 1:
                label = series.unit(0)
            elif index == 0 and limit_row != 0:
                label = series.unit(ceiling)
            else:
                label = ""
            axis = Content.assemble((label.rjust(AXIS_WIDTH - 1)[: AXIS_WIDTH - 1], "$text-muted"), ("┤", "$text-muted"))
            if index == limit_row:
                cells = Content.assemble(*[(char, "$accent") if char != " " else ("┄", "$warning") for char in row])
            else:
                cells = Content.assemble((row, "$error" if over and index < (limit_row or 0) else "$accent"))
            lines.append(axis + cells)
        axis_text = f"{self.span} ".ljust(max(0, width - 4), "─") + " now"
        lines.append(Content.assemble(" " * AXIS_WIDTH, ("└" + axis_text, "$text-muted")))
        return Content("\n").join(lines)


def series_from_usage(usage: Mapping[str, Any]) -> list[Series]:
    """The charts worth drawing for a ``usage`` answer; GPU charts only for GPU runs."""
    run = usage.get("run") or {}
    envelope = run.get("envelope") or {}
    summary = usage.get("summary") or {}
    points = [point for point in usage.get("series") or () if isinstance(point, Mapping)]

    def values(key: str, scale: float = 1.0) -> list[float | None]:
        result = []
        for point in points:
            value = point.get(f"{key}_max", point.get(key))
            result.append(None if value is None else float(value) * scale)
        return result

    def stats(key: str, unit: Callable[[float], str], scale: float = 1.0) -> str:
        figures = summary.get(key) or {}
        parts = []
        if figures.get("max") is not None:
            parts.append(f"peak {unit(figures['max'] * scale)}")
        if figures.get("mean") is not None:
            parts.append(f"mean {unit(figures['mean'] * scale)}")
        return " · ".join(parts)

    size = lambda value: format_size(value)  # noqa: E731
    cores = lambda value: f"{value:.2g}" if value < 10 else f"{value:.0f}"  # noqa: E731
    percent = lambda value: f"{value:.0f}%"  # noqa: E731
    mem_limit = envelope.get("mem_bytes")
    cpus = envelope.get("cpus")
    charts_: list[Series] = [
        Series("memory", values("rss_bytes"), mem_limit, size,
               _asked(size, mem_limit) + stats("rss_bytes", size)),
        Series("CPU cores", values("cpu_percent", 0.01), cpus, cores,
               _asked(cores, cpus) + stats("cpu_percent", cores, 0.01)),
    ]
    gpus = envelope.get("gpus") or 0
    if gpus:
        per_gpu = envelope.get("gpu_mem_bytes")
        gpu_limit = per_gpu * gpus if per_gpu else None
        charts_.append(Series("GPU memory", values("gpu_mem_bytes"), gpu_limit, size,
                              (_asked(size, gpu_limit) if gpu_limit else f"{gpus} whole GPU{'s' if gpus > 1 else ''} · ")
                              + stats("gpu_mem_bytes", size)))
        charts_.append(Series("GPU utilisation", values("gpu_util_percent"), None, percent,
                              stats("gpu_util_percent", percent), ceiling=100.0))
    disk_limit = envelope.get("disk_bytes") or None
    charts_.append(Series("disk", values("disk_bytes"), disk_limit, size,
                          _asked(size, disk_limit) + stats("disk_bytes", size)))
    return charts_


def _asked(unit: Callable[[float], str], limit: float | None) -> str:
    return f"asked {unit(limit)} · " if limit else "no limit · "


def span_text(usage: Mapping[str, Any], now: float) -> str:
    """How far back the charts reach, for their time axis."""
    summary = usage.get("summary") or {}
    first = summary.get("first_at")
    if not isinstance(first, (int, float)):
        return ""
    return f"{format_duration(max(0.0, now - first))} ago"


class UsagePane(VerticalScroll):
    """The charts of one run; feed it with :meth:`show_usage`."""

    DEFAULT_CSS = """
    UsagePane > Static { height: auto; padding: 0 1; color: $text-muted; }
    UsagePane ItemGrid { height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static("loading usage…", id="usage-note")
        yield ItemGrid(min_column_width=60, id="usage-charts")

    def show_usage(self, usage: Mapping[str, Any] | None, now: float, *, error: str | None = None) -> None:
        note = self.query_one("#usage-note", Static)
        grid = self.query_one("#usage-charts", ItemGrid)
        if error:
            note.update(error)
            return
        if not usage or not usage.get("summary"):
            note.update(NO_SAMPLES)
            grid.remove_children()
            return
        summary = usage["summary"]
        samples = summary.get("samples")
        note.update(f"{samples} samples · peaks per time slot · ┄ the envelope asked for" if samples else "")
        all_series = series_from_usage(usage)
        span = span_text(usage, now)
        existing = list(grid.query(UsageChart))
        if [chart.series.title for chart in existing] == [series.title for series in all_series]:
            for chart, series in zip(existing, all_series):
                chart.series, chart.span = series, span
                chart.refresh()
        else:
            grid.remove_children()
            grid.mount_all([UsageChart(series, span) for series in all_series])


