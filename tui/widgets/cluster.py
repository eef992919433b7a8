"""The Slurm cluster at a glance, drawn by the resources panel in place of the box's CPU,
memory and GPUs when the engine sends its runs to Slurm (``status``'s ``cluster``, which
the engine reads from ``sinfo``).

The engine's own machine is then only a login node: its figures say nothing about where
runs are. So the panel lists the partitions (the one runs go to marked ``▸``, Slurm's
default starred as ``sinfo`` does), then the nodes. A cluster may have hundreds of nodes:
when they do not all fit, the busiest are shown and a last line counts the rest by state.
Pure functions of the data, the width and the room, like the rest of the panel.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from textual.content import Content

from engine.units import format_duration
from tui import format as fmt
from tui.widgets.lines import bar, clip, fit

LEGEND = "█ allocated  ░ idle"
STALE_AFTER_S = 60.0
"""The engine reads ``sinfo`` every few seconds; figures older than this have their age shown."""
GAP = 2
MIN_BAR_WIDTH = 4
MAX_BAR_WIDTH = 30
"""Narrower than the box's bars: a wide line of the cluster has two."""
NAME_WIDTH = {False: 14, True: 24}
STATE_WIDTH = {False: 10, True: 14}
"""``allocated``; ``mixed+drain`` and ``idle drain`` when wide (cut with an ellipsis when narrow)."""
TARGET_MARK = "▸ "
DOWN_WORDS = ("down", "fail", "not_responding", "inval")
"""Words of a node's state that mean it takes no work; a trailing ``*`` means it does not answer."""
STATE_FLAGS = "*~#!%$@^-"
"""Suffixes ``sinfo`` adds to a state (not responding, powered off, …): dropped when counting."""

Cell = str | tuple[str, str] | float
"""A text (with a style), or for a bar column the share the bar fills."""


@dataclass(frozen=True)
class _Column:
    header: str
    cap: int | None
    """Widest the column gets; ``None`` for a bar, which shares the room left with the other bars."""
    justify: str = "left"


def is_cluster(status: Mapping[str, Any] | None) -> bool:
    """Whether the engine runs on Slurm (an engine that does not say runs locally)."""
    return bool(status) and status.get("backend") == "slurm"


def cluster_height(cluster: Any) -> int:
    """Lines the cluster wants: its error, a header and a line per partition, then per node."""
    if not isinstance(cluster, Mapping):
        return 1
    partitions, nodes = _records(cluster, "partitions"), _records(cluster, "nodes")
    lines = 1 if cluster.get("error") else 0
    lines += (1 + len(partitions) if partitions else 0) + (1 + len(nodes) if nodes else 0)
    return lines if partitions or nodes else lines + 1


def subtitle(cluster: Any, now: float | None) -> str:
    """The panel's bottom border: the bars' legend, after ``sinfo read 5m ago`` when the
    figures are old."""
    if not isinstance(cluster, Mapping):
        return ""
    parts = []
    at = cluster.get("at")
    if now is not None and isinstance(at, (int, float)) and now - at >= STALE_AFTER_S:
        parts.append(f"sinfo read {format_duration(now - at)} ago")
    if _records(cluster, "partitions") or _records(cluster, "nodes"):
        parts.append(LEGEND)
    return " · ".join(parts)


def cluster_lines(cluster: Any, width: int, room: int, *, wide: bool) -> list[Content]:
    """The cluster in at most ``room`` lines (more when ``room`` is too small for headers).
    ``wide``: nodes also get a memory bar and their partitions, partitions a GPU bar."""
    if not isinstance(cluster, Mapping):
        return [_muted("the engine has not read the cluster yet (sinfo)", width)]
    lines = []
    error = cluster.get("error")
    if error:
        # One line whatever Slurm printed: the panel never wraps.
        text = " ".join(str(error).split())
        lines.append(fit(Content.assemble(("⚠ ", "$text-error"), (text, "bold $text-error")), width))
    partitions, nodes = _records(cluster, "partitions"), _records(cluster, "nodes")
    if not partitions and not nodes:
        text = "no partitions or nodes to show until Slurm answers" if error else "sinfo lists no partitions"
        lines.append(_muted(text, width))
        return lines
    partitions_shown, nodes_shown = share_room(room - len(lines), len(partitions), len(nodes))
    if partitions:
        lines += _partition_lines(cluster, partitions, partitions_shown, width, wide)
    if nodes:
        lines += _node_lines(nodes, nodes_shown, width, wide)
    return lines


def share_room(room: int, partitions: int, nodes: int) -> tuple[int, int]:
    """How many partitions and nodes get a line in ``room`` lines, counting a header per
    section and, for a section cut short, a last line that says how much is missing.

    Partitions are few and say where runs can go: they keep their lines unless that
    would leave the nodes fewer than two. At least one of each is always listed.
    """
    if (partitions > 0) + partitions + (nodes > 0) + nodes <= room:
        return partitions, nodes
    node_floor = 0 if not nodes else 1 + nodes if nodes <= 2 else 4
    if partitions and 1 + partitions > room - node_floor:
        partitions_shown = max(1, room - node_floor - 2)
        partition_lines = 2 + partitions_shown
    else:
        partitions_shown = partitions
        partition_lines = 1 + partitions if partitions else 0
    node_room = room - partition_lines
    nodes_shown = nodes if 1 + nodes <= node_room else max(1, node_room - 2)
    return min(partitions, partitions_shown), min(nodes, nodes_shown)


# ------------------------------------------------------------------ partitions

def _partition_lines(cluster: Mapping[str, Any], partitions: list[Mapping[str, Any]], shown: int, width: int,
                     wide: bool) -> list[Content]:
    target = cluster.get("partition") or next(
        (partition.get("name") for partition in partitions if partition.get("default")), None)
    if shown < len(partitions):
        # The partition runs go to is the one a person looks for first.
        partitions = sorted(partitions, key=lambda partition: partition.get("name") != target)
    columns = [_Column("PARTITION", NAME_WIDTH[wide] + len(TARGET_MARK)), _Column("STATE", 8),
               _Column("CPUS", None), _Column("", 11, "right")]
    if wide:
        columns.append(_Column("GPUS", None))
    columns += [_Column("" if wide else "GPUS", 9, "right"), _Column("TIME LIMIT", 11), _Column("NODES", 6, "right")]
    rows = []
    for partition in partitions[:shown]:
        name = str(partition.get("name") or "?")
        state = str(partition.get("state") or "?")
        cpus_alloc, cpus_total = partition.get("cpus_alloc"), partition.get("cpus_total")
        gpus_used, gpus_total = partition.get("gpus_used"), partition.get("gpus_total")
        label = (TARGET_MARK if name == target else " " * len(TARGET_MARK)) + name
        row: list[Cell] = [
            (label + ("*" if partition.get("default") else ""),
             "bold $text-accent" if name == target else "bold $text-primary"),
            (state, "" if state == "up" else "bold $text-error"),
            fmt.fraction(cpus_alloc, cpus_total), _pair(cpus_alloc, cpus_total),
        ]
        if wide:
            row.append(fmt.fraction(gpus_used, gpus_total))
        row += [_pair(gpus_used, gpus_total), (str(partition.get("time_limit") or "-"), "$text-muted"),
                str(partition.get("nodes") if partition.get("nodes") is not None else "-")]
        rows.append(row)
    lines = _table(columns, rows, width)
    hidden = len(partitions) - shown
    if hidden:
        lines.append(_muted(f"+{hidden} more partition{'s' if hidden > 1 else ''}: make the window taller to see them",
                            width))
    return lines


# ----------------------------------------------------------------------- nodes

def _node_lines(nodes: list[Mapping[str, Any]], shown: int, width: int, wide: bool) -> list[Content]:
    if shown < len(nodes):
        nodes = sorted(nodes, key=_busiest_first)
    columns = [_Column("NODE", NAME_WIDTH[wide]), _Column("STATE", STATE_WIDTH[wide]), _Column("CPUS", None),
               _Column("", 11, "right")]
    if wide:
        columns.append(_Column("MEMORY", None))
    columns += [_Column("" if wide else "MEMORY", 12, "right"), _Column("GPUS", 7, "right")]
    if wide:
        columns.append(_Column("PARTITIONS", 24))
    rows = []
    for node in nodes[:shown]:
        state = str(node.get("state") or "?")
        out_style = _state_style(state)
        row: list[Cell] = [(str(node.get("name") or "?"), "bold $text-primary"), (state, out_style)]
        if out_style:
            # A node that takes no work: why matters more than its (idle) figures.
            row.append((str(node.get("reason") or "no reason given"), out_style))
            rows.append(row)
            continue
        cpus_alloc, cpus_total = node.get("cpus_alloc"), node.get("cpus_total")
        mem_alloc, mem_total = node.get("mem_alloc_bytes"), node.get("mem_total_bytes")
        row += [fmt.fraction(cpus_alloc, cpus_total), _pair(cpus_alloc, cpus_total)]
        if wide:
            row.append(fmt.fraction(mem_alloc, mem_total))
        row += [fmt.mem_pair_text(mem_alloc, mem_total) if mem_total else "-",
                _pair(node.get("gpus_used"), node.get("gpus_total"))]
        if wide:
            row.append((",".join(str(name) for name in node.get("partitions") or ()), "$text-muted"))
        rows.append(row)
    lines = _table(columns, rows, width)
    hidden = nodes[shown:]
    if hidden:
        counts = Counter(str(node.get("state") or "?").rstrip(STATE_FLAGS) for node in hidden)
        states = ", ".join(f"{count} {state}" for state, count in counts.most_common())
        lines.append(_muted(f"+{len(hidden)} more node{'s' if len(hidden) > 1 else ''}: {states} · the busiest "
                            f"are listed first; a taller window shows more", width))
    return lines


def _busiest_first(node: Mapping[str, Any]) -> tuple:
    """GPUs are what an ML run waits for, so they rank first, then CPUs."""
    return (-fmt.fraction(node.get("gpus_used"), node.get("gpus_total")),
            -fmt.fraction(node.get("cpus_alloc"), node.get("cpus_total")), str(node.get("name") or ""))


def _state_style(state: str) -> str:
    """The colour of a node that takes no work (down: error, drained or draining: warning);
    empty for one that does."""
    if state.endswith("*") or any(word in state for word in DOWN_WORDS):
        return "$text-error"
    if "drain" in state:
        return "$text-warning"
    return ""


# ----------------------------------------------------------------------- table

def _table(columns: Sequence[_Column], rows: list[list[Cell]], width: int) -> list[Content]:
    """A header line, then a line per row, in aligned columns. A row with fewer cells than
    there are columns spans its last cell over the rest of the line."""
    widths: list[int | None] = []
    for index, column in enumerate(columns):
        if column.cap is None:
            widths.append(None)
            continue
        texts = [_text(row[index]) for row in rows if index < len(row) - 1 or len(row) == len(columns)]
        widths.append(min(column.cap, max([len(column.header), *map(len, texts)])))
    fixed = sum(column_width for column_width in widths if column_width is not None)
    bars = widths.count(None)
    room = width - fixed - GAP * (len(columns) - 1)
    bar_width = min(MAX_BAR_WIDTH, room // bars) if bars else 0
    if bar_width < MIN_BAR_WIDTH:
        bar_width = 0  # no room for bars: the figures alone still say it

    def line(cells: Sequence[Cell], header: bool) -> Content:
        parts = []
        for index, (column, cell_width) in enumerate(zip(columns, widths)):
            if index >= len(cells):
                break
            cell = cells[index]
            if header:
                text = column.header
                cell_width = cell_width if cell_width is not None else bar_width
                if not cell_width:
                    continue
                parts.append(Content.styled(_pad(text, cell_width, column.justify), "bold $text-muted"))
            elif index == len(cells) - 1 and len(cells) < len(columns):
                parts.append(Content.styled(_text(cell), _style(cell)))
            elif cell_width is None:
                if bar_width:
                    parts.append(bar(bar_width, float(cell)))  # type: ignore[arg-type]
            else:
                parts.append(Content.styled(_pad(_text(cell), cell_width, column.justify), _style(cell)))
        return fit(Content(" " * GAP).join(parts), width)

    return [line([column.header for column in columns], True), *(line(row, False) for row in rows)]


def _text(cell: Cell) -> str:
    return cell[0] if isinstance(cell, tuple) else str(cell)


def _style(cell: Cell) -> str:
    return cell[1] if isinstance(cell, tuple) else ""


def _pad(text: str, width: int, justify: str) -> str:
    text = clip(text, width)
    return text.rjust(width) if justify == "right" else text.ljust(width)


def _pair(used: Any, total: Any) -> str:
    """``12/64``; ``?/8`` when the use is unknown (``sinfo`` without ``--json`` does not
    give GPUs in use), ``-`` when there are none."""
    if not total:
        return "-"
    return f"{'?' if used is None else used}/{total}"


def _records(cluster: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    return [record for record in cluster.get(key) or () if isinstance(record, Mapping)]


def _muted(text: str, width: int) -> Content:
    return fit(Content.assemble((text, "$text-muted")), width)
