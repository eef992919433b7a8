"""The box at a glance: CPU, memory, disk, what runyard's runs hold, and one line per
GPU with who holds it and a sparkline of its recent utilisation. With the Slurm backend,
the cluster's partitions and nodes instead (:mod:`tui.widgets.cluster`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from textual.content import Content
from textual.geometry import Size
from textual.widget import Widget

from engine.units import format_size
from tui import charts
from tui import format as fmt
from tui.widgets import cluster
from tui.widgets.lines import bar, clip, fit

METER_GAP = 3
MIN_BAR_WIDTH = 4
MAX_BAR_WIDTH = 40
"""Past this, a longer bar reads no better and pushes the figures away from their labels."""
WIDE_MIN_WIDTH = 110
"""Content width from which CPU, memory and disk get a line (and a sparkline) each, and
GPU lines also show temperature and power (and the cluster's lines a second bar)."""
HOLDERS_WIDTH = {False: 12, True: 20}
SPARK_WIDTH = {False: 10, True: 24}
NAME_WIDTH = {False: 12, True: 22}
FIGURES_WIDTH = {False: 19, True: 32}
"""``22.5G/80G util 100%``, and `` 66°C 312W`` when wide."""
LEGEND = "█ used  ▒ reserved by runs  ░ free  ▁▃▅ last 10 min"

Part = str | tuple[str, str]


@dataclass(frozen=True)
class BoxHistory:
    """Recent samples of the box, oldest first, from the engine's ``history`` answer."""

    cpu_percent: list[float | None] = field(default_factory=list)
    mem_used_bytes: list[float | None] = field(default_factory=list)
    disk_used_bytes: list[float | None] = field(default_factory=list)
    gpu_util_percent: dict[int, list[float | None]] = field(default_factory=dict)

    @classmethod
    def from_points(cls, points: Sequence[Mapping[str, Any]], disk_total: int | None = None) -> BoxHistory:
        gpus: dict[int, list[float | None]] = {}
        for position, point in enumerate(points):
            for gpu in point.get("gpus") or ():
                series = gpus.setdefault(int(gpu.get("index", -1)), [None] * position)
                series.append(gpu.get("util_percent"))
            for series in gpus.values():
                series.extend([None] * (position + 1 - len(series)))
        disk = [
            (disk_total - point["disk_free_bytes"]) if disk_total and point.get("disk_free_bytes") is not None
            else None
            for point in points
        ]
        return cls(
            cpu_percent=[point.get("cpu_percent") for point in points],
            mem_used_bytes=[point.get("mem_used_bytes") for point in points],
            disk_used_bytes=disk,
            gpu_util_percent=gpus,
        )


class ResourcesPanel(Widget):
    """Renders the ``status`` answer of the engine; feed it with :meth:`update_status`.

    It redraws only when the figures changed: a poll that brings the same numbers costs
    nothing on screen.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._status: Mapping[str, Any] | None = None
        self._history = BoxHistory()
        self._signature: object = None
        self.border_title = "Resources"

    def update_status(self, status: Mapping[str, Any] | None, history: BoxHistory | None = None,
                      now: float | None = None) -> bool:
        """Show ``status`` (and ``history``, when given); returns whether anything changed.
        ``now`` dates the cluster's figures when they are old."""
        if history is not None:
            self._history = history
        on_cluster = cluster.is_cluster(status)
        # The cluster's subtitle dates old figures: it may change while the status does not.
        cluster_note = cluster.subtitle(status.get("cluster"), now) if on_cluster else ""
        signature = (_without_clock(status), id(self._history), cluster_note)
        if signature == self._signature:
            return False
        self._signature = signature
        self._status = status
        self.border_title = "Slurm cluster" if on_cluster else "Resources"
        if on_cluster:
            self.border_subtitle = cluster_note
        else:
            self.border_subtitle = LEGEND if status and status.get("gpus") else ""
        self.refresh(layout=True)
        return True

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        # Measured from the data, not from a render: render() clips to the height it was
        # given, and measuring that would keep the panel small once it had been squeezed.
        if self._status is None:
            return 1
        if cluster.is_cluster(self._status):
            return cluster.cluster_height(self._status.get("cluster"))
        gpus = max(1, len(self._status.get("gpus") or []))
        return (3 if width >= WIDE_MIN_WIDTH else 2) + gpus

    def render(self) -> Content:
        width = self.content_region.width
        if self._status is None:
            return Content.assemble(("waiting for the engine…", "$text-muted"))
        if cluster.is_cluster(self._status):
            # The engine's machine is only a login node: its figures would mislead.
            lines = cluster.cluster_lines(self._status.get("cluster"), width, self.content_region.height,
                                          wide=width >= WIDE_MIN_WIDTH)
            return Content("\n").join(lines)
        wide = width >= WIDE_MIN_WIDTH
        lines = self._host_lines_wide(width) if wide else [self._host_line(width), self._reserved_line(width)]
        gpus = self._status.get("gpus") or []
        if not gpus:
            source = (self._status.get("engine") or {}).get("gpu_source") or "none"
            lines.append(Content.assemble(("no GPUs ", "$text-muted"), (f"({source})", "$text-muted")))
        label_width = len("GPU") + max((len(str(gpu.get("index", ""))) for gpu in gpus), default=1)
        room = self.content_region.height
        shown = gpus if len(lines) + len(gpus) <= room else gpus[: max(0, room - len(lines) - 1)]
        for gpu in shown:
            lines.append(self._gpu_line(gpu, width, label_width, wide))
        if len(shown) < len(gpus):
            hidden = len(gpus) - len(shown)
            note = f"+{hidden} more GPU{'s' if hidden > 1 else ''}: make the window taller to see them"
            lines.append(fit(Content.assemble((note, "$text-muted")), width))
        return Content("\n").join(lines)

    # ----------------------------------------------------------------- narrow

    def _host_line(self, width: int) -> Content:
        host = self._status.get("host") or {}
        cpus = host.get("cpus") or 0
        cpu_share = (host.get("cpu_percent") or 0) / 100
        mem_total = host.get("mem_total") or 0
        mem_used = max(0, mem_total - (host.get("mem_available") or 0))
        disk_total = host.get("disk_total") or 0
        disk_free = host.get("disk_free") or 0
        meter_width = min(MAX_BAR_WIDTH, max(0, (width - 2 * METER_GAP) // 3))
        meters = [
            _meter("CPU ", cpu_share, f"{cpu_share * 100:.0f}% of {cpus:g}", meter_width),
            _meter("MEM ", fmt.fraction(mem_used, mem_total), fmt.mem_pair_text(mem_used, mem_total), meter_width),
            _meter("DISK", fmt.fraction(disk_total - disk_free, disk_total), f"{format_size(disk_free)} free",
                   meter_width),
        ]
        return Content(" " * METER_GAP).join(meters)

    def _reserved_line(self, width: int) -> Content:
        host = self._status.get("host") or {}
        line = Content.assemble(*self._holds_parts(), ("   load ", "$text-muted"), f"{host.get('load1') or 0:.2f}")
        about = self._engine_about()
        # Only when it fits whole: half a path is worse than none.
        if line.cell_length + METER_GAP + about.cell_length <= width:
            line = line + Content(" " * (width - line.cell_length - about.cell_length)) + about
        return fit(line, width)

    def _holds_parts(self) -> list[Part]:
        reserved = self._status.get("reserved") or {}
        parts: list[Part] = [("runs hold ", "$text-muted"), fmt.reserved_text(reserved)]
        for resource in self._status.get("resources") or ():
            parts += [("  ", ""), (f"{resource.get('name')} ", "$text-muted"),
                      f"{resource.get('held', 0)}/{resource.get('capacity', '?')}"]
        return parts

    def _engine_about(self, *, short: bool = False) -> Content:
        engine = self._status.get("engine") or {}
        parts: list[Part] = [
            ("engine ", "$text-muted"), str(engine.get("version") or "?"),
            ("  pid ", "$text-muted"), str(engine.get("pid") or "?"),
        ]
        if not short:
            parts += [("  home ", "$text-muted"), str(engine.get("home") or "?")]
        return Content.assemble(*parts)

    # ------------------------------------------------------------------- wide

    def _host_lines_wide(self, width: int) -> list[Content]:
        host = self._status.get("host") or {}
        reserved = self._status.get("reserved") or {}
        history = self._history
        cpus = host.get("cpus") or 0
        cpu_share = (host.get("cpu_percent") or 0) / 100
        mem_total = host.get("mem_total") or 0
        mem_used = max(0, mem_total - (host.get("mem_available") or 0))
        disk_total = host.get("disk_total") or 0
        disk_free = host.get("disk_free") or 0
        rows = [
            ("CPU", f"{cpus:g} cores", cpu_share, 0.0, f"{cpu_share * 100:.0f}% busy",
             charts.sparkline(history.cpu_percent, SPARK_WIDTH[True], 100.0),
             Content.assemble(("load ", "$text-muted"), f"{host.get('load1') or 0:.2f}")),
            ("MEM", format_size(mem_total), fmt.fraction(mem_used, mem_total),
             fmt.fraction(reserved.get("mem_bytes") or 0, mem_total), f"{format_size(mem_used)} used",
             charts.sparkline(history.mem_used_bytes, SPARK_WIDTH[True], float(mem_total or 1)),
             Content.assemble(*self._holds_parts())),
            ("DISK", format_size(disk_total), fmt.fraction(disk_total - disk_free, disk_total), 0.0,
             f"{format_size(disk_free)} free",
             charts.sparkline(history.disk_used_bytes, SPARK_WIDTH[True], float(disk_total or 1)),
             self._engine_about(short=True)),
        ]
        lines = []
        for label, name, used, held, figures, spark, tail in rows:
            lines.append(self._row(width, label, name, used, held, figures, spark, tail, True))
        return lines

    def _row(self, width: int, label: str, name: str, used: float, held: float, figures: str, spark: str,
             tail: Content, wide: bool, label_width: int = 4, name_style: str = "$text-muted") -> Content:
        head = Content.assemble((label.ljust(label_width), "bold $text-primary"), " ",
                                (clip(name, NAME_WIDTH[wide]).ljust(NAME_WIDTH[wide]), name_style), " ")
        figure_width = FIGURES_WIDTH[wide]
        after = Content.assemble(" ", clip(figures, figure_width).ljust(figure_width), " ",
                                 (spark, "$accent"), "  ")
        # Every line keeps the same room after its bar, so the bars line up.
        bar_width = min(MAX_BAR_WIDTH, width - head.cell_length - after.cell_length - HOLDERS_WIDTH[wide])
        if bar_width < MIN_BAR_WIDTH:
            return fit(head + after + tail, width)
        return fit(head + bar(bar_width, used, held) + after + tail, width)

    # ------------------------------------------------------------------- GPUs

    def _gpu_line(self, gpu: Mapping[str, Any], width: int, label_width: int, wide: bool) -> Content:
        index = gpu.get("index", "?")
        label = f"GPU{index}"
        name = fmt.short_gpu_name(gpu.get("name"))
        if not gpu.get("available", True):
            reason = gpu.get("unavailable_reason") or "unknown reason"
            head = Content.assemble((label.ljust(label_width), "bold $text-primary"), " ",
                                    (clip(name, NAME_WIDTH[wide]).ljust(NAME_WIDTH[wide]), "$text-muted"), " ")
            return fit(head + Content.assemble((f"unavailable: {reason}", "$text-error")), width)
        mem_total = gpu.get("mem_total") or 0
        mem_used = gpu.get("mem_used") or 0
        util = gpu.get("util_percent")
        figures = fmt.mem_pair_text(mem_used, mem_total).rjust(9)
        figures += f" util {util:3.0f}%" if util is not None else " util   -"
        if wide:
            temperature = gpu.get("temperature_c")
            power = gpu.get("power_w")
            figures += f" {temperature:3.0f}°C" if temperature is not None else "    - "
            figures += f" {power:4.0f}W" if power is not None else "     -"
        history = self._history.gpu_util_percent.get(index if isinstance(index, int) else -1, [])
        spark = charts.sparkline(history, SPARK_WIDTH[wide], 100.0)
        holders_width = HOLDERS_WIDTH[wide]
        holders = clip(fmt.holders_text(gpu.get("holders"), holders_width, fmt.foreign_users(gpu)), holders_width)
        tail = Content.assemble((holders, "$text-muted" if holders == "idle" else "$text-accent"))
        return self._row(width, label, name, fmt.fraction(mem_used, mem_total),
                         fmt.fraction(gpu.get("mem_reserved") or 0, mem_total), figures, spark, tail, wide,
                         label_width=max(4, label_width))


def _without_clock(status: Mapping[str, Any] | None) -> object:
    """The status minus its timestamp, which changes with every poll even when nothing else does."""
    if status is None:
        return None
    return repr(sorted((key, value) for key, value in status.items() if key != "sampled_at"))


def _meter(label: str, share: float, text: str, width: int) -> Content:
    bar_width = width - len(label) - len(text) - 2
    parts: list[Part | Content] = [(label, "bold $text-primary"), " "]
    if bar_width >= MIN_BAR_WIDTH:
        parts += [bar(bar_width, share), " "]
    parts.append(text)
    return Content.assemble(*parts).truncate(width, ellipsis=True, pad=True)
