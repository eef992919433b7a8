"""The box at a glance: CPU, memory, disk, what runyard's runs hold, and one line per GPU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.content import Content
from textual.geometry import Size
from textual.widget import Widget

from engine.units import format_size
from tui import format as fmt

METER_GAP = 3
MIN_BAR_WIDTH = 4
MAX_BAR_WIDTH = 48
"""Past this, a longer bar reads no better and pushes the figures away from their labels."""
WIDE_MIN_WIDTH = 110
"""Content width from which GPU lines also show temperature and power."""
HOLDERS_WIDTH = {False: 10, True: 20}
LEGEND = "█ used  ▒ reserved by runs  ░ free"

Part = str | tuple[str, str]


class ResourcesPanel(Widget):
    """Renders the ``status`` answer of the engine; feed it with :meth:`update_status`."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._status: Mapping[str, Any] | None = None
        self.border_title = "Resources"

    def update_status(self, status: Mapping[str, Any] | None) -> None:
        self._status = status
        self.border_subtitle = LEGEND if status and status.get("gpus") else ""
        self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        # Measured from the data, not from a render: render() clips to the height it was
        # given, and measuring that would keep the panel small once it had been squeezed.
        if self._status is None:
            return 1
        return 2 + max(1, len(self._status.get("gpus") or []))

    def render(self) -> Content:
        width = self.content_region.width
        if self._status is None:
            return Content.assemble(("waiting for the engine…", "$text-muted"))
        lines = [self._host_line(width), self._reserved_line(width)]
        gpus = self._status.get("gpus") or []
        if not gpus:
            source = (self._status.get("engine") or {}).get("gpu_source") or "none"
            lines.append(Content.assemble(("no GPUs ", "$text-muted"), (f"({source})", "$text-muted")))
        label_width = len("GPU") + max((len(str(gpu.get("index", ""))) for gpu in gpus), default=1)
        room = self.content_region.height
        shown = gpus if len(lines) + len(gpus) <= room else gpus[: max(0, room - len(lines) - 1)]
        for gpu in shown:
            lines.append(self._gpu_line(gpu, width, label_width))
        if len(shown) < len(gpus):
            hidden = len(gpus) - len(shown)
            note = f"+{hidden} more GPU{'s' if hidden > 1 else ''}: make the window taller to see them"
            lines.append(_fit(Content.assemble((note, "$text-muted")), width))
        return Content("\n").join(lines)

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
        reserved = self._status.get("reserved") or {}
        parts: list[Part] = [
            ("runs hold ", "$text-muted"), fmt.reserved_text(reserved),
            ("   load ", "$text-muted"), f"{host.get('load1') or 0:.2f}",
        ]
        line = Content.assemble(*parts)
        engine = self._status.get("engine") or {}
        about = Content.assemble(
            ("engine ", "$text-muted"), str(engine.get("version") or "?"),
            ("  pid ", "$text-muted"), str(engine.get("pid") or "?"),
            ("  home ", "$text-muted"), str(engine.get("home") or "?"),
        )
        # Only when it fits whole: half a path is worse than none.
        if line.cell_length + METER_GAP + about.cell_length <= width:
            line = line + Content(" " * (width - line.cell_length - about.cell_length)) + about
        return _fit(line, width)

    def _gpu_line(self, gpu: Mapping[str, Any], width: int, label_width: int) -> Content:
        wide = width >= WIDE_MIN_WIDTH
        label = f"GPU{gpu.get('index', '?')}".ljust(label_width)
        name_width = 22 if wide else 14
        name = _clip(fmt.short_gpu_name(gpu.get("name")), name_width).ljust(name_width)
        head: list[Part] = [(label, "bold $text-primary"), " ", (name, "$text-muted"), " "]
        if not gpu.get("available", True):
            reason = gpu.get("unavailable_reason") or "unknown reason"
            return _fit(Content.assemble(*head, (f"unavailable: {reason}", "$text-error")), width)

        mem_total = gpu.get("mem_total") or 0
        mem_used = gpu.get("mem_used") or 0
        used = fmt.fraction(mem_used, mem_total)
        reserved = fmt.fraction(gpu.get("mem_reserved") or 0, mem_total)
        mem_text = fmt.mem_pair_text(mem_used, mem_total).rjust(11)
        util = gpu.get("util_percent")
        util_text = f"util {util:3.0f}%" if util is not None else "util   -"
        tail: list[Part] = [" ", mem_text, "  ", util_text]
        if wide:
            temperature = gpu.get("temperature_c")
            power = gpu.get("power_w")
            tail += ["  ", f"{temperature:3.0f}°C" if temperature is not None else "   -  ",
                     "  ", f"{power:4.0f}W" if power is not None else "    -"]
        holders_width = HOLDERS_WIDTH[wide]
        holders = _clip(fmt.holders_text(gpu.get("holders"), holders_width), holders_width)
        holders_part: Part = (holders, "$text-muted") if holders == "idle" else (holders, "$text-accent")
        tail += ["  ", holders_part]
        # Every GPU line reserves the same room for its holders, so the bars line up.
        fixed = (Content.assemble(*head).cell_length + Content.assemble(*tail).cell_length
                 - len(holders) + holders_width)
        bar_width = min(MAX_BAR_WIDTH, width - fixed)
        if bar_width < MIN_BAR_WIDTH:
            return _fit(Content.assemble(*head, *tail), width)
        return _fit(Content.assemble(*head, _bar(bar_width, used, reserved), *tail), width)


def _meter(label: str, share: float, text: str, width: int) -> Content:
    bar_width = width - len(label) - len(text) - 2
    parts: list[Part | Content] = [(label, "bold $text-primary"), " "]
    if bar_width >= MIN_BAR_WIDTH:
        parts += [_bar(bar_width, share), " "]
    parts.append(text)
    return Content.assemble(*parts).truncate(width, ellipsis=True, pad=True)


def _bar(width: int, used: float, reserved: float = 0.0) -> Content:
    used_cells, reserved_cells, free_cells = fmt.bar_cells(width, used, reserved)
    return Content.assemble(
        ("█" * used_cells, f"${fmt.level_variable(used)}"),
        ("▒" * reserved_cells, "$secondary"),
        ("░" * free_cells, "$surface-lighten-3"),
    )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _fit(content: Content, width: int) -> Content:
    """Never wrap a line of this panel: cut it with an ellipsis instead."""
    return content.truncate(width, ellipsis=True)
