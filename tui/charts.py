"""Tiny charts drawn with block characters: sparklines and column charts.

Pure functions returning text, so they are tested without a terminal. Both scale from 0
to a ceiling the caller gives (a GPU's 100%, a run's envelope), never to the data's own
range: Textual's ``Sparkline`` spans min..max of its data, which would draw a GPU held
at 97% all along as an empty line, and a flat line at 2% as a full one.
"""

from __future__ import annotations

from collections.abc import Sequence

BLOCKS = " ▁▂▃▄▅▆▇█"
"""Eighths of a cell, from empty to full."""


def resample(values: Sequence[float | None], width: int) -> list[float | None]:
    """``width`` values: buckets of ``values`` summarised by their peak (a spike must
    not vanish by averaging). Fewer values than cells are kept as they are, so a short
    history does not stretch into a misleading plateau."""
    if width <= 0:
        return []
    if len(values) <= width:
        return list(values)
    buckets: list[float | None] = []
    for index in range(width):
        start = index * len(values) // width
        end = max(start + 1, (index + 1) * len(values) // width)
        known = [value for value in values[start:end] if value is not None]
        buckets.append(max(known) if known else None)
    return buckets


def sparkline(values: Sequence[float | None], width: int, ceiling: float) -> str:
    """One line ``width`` cells wide, newest on the right; a cell for a sample with no
    value is a space, and missing history on the left is padded with spaces."""
    cells = []
    for value in resample(values, width):
        cells.append(" " if value is None else BLOCKS[_eighths(value, ceiling, 8) or 1])
    return "".join(cells).rjust(width)


def columns(values: Sequence[float | None], width: int, height: int, ceiling: float) -> list[str]:
    """A column chart ``height`` rows tall, top row first; each value is a column of
    eighth-blocks filling up to ``value / ceiling`` of the height."""
    series = resample(values, width)
    series = [None] * (width - len(series)) + series
    rows = []
    for row in range(height - 1, -1, -1):
        cells = []
        for value in series:
            if value is None:
                cells.append(" ")
                continue
            filled = _eighths(value, ceiling, 8 * height) - 8 * row
            cells.append(BLOCKS[max(0, min(8, filled))])
        rows.append("".join(cells))
    return rows


def level_row(level: float, height: int, ceiling: float) -> int | None:
    """The row (top row is 0) of a chart ``height`` tall where ``level`` falls, for a
    limit line; ``None`` when it is above the chart."""
    if ceiling <= 0 or level > ceiling:
        return None
    from_bottom = min(height - 1, int(level / ceiling * height - 1e-9))
    return height - 1 - max(0, from_bottom)


def _eighths(value: float, ceiling: float, scale: int) -> int:
    if ceiling <= 0 or value <= 0:
        return 0
    return max(1, min(scale, round(value / ceiling * scale)))
