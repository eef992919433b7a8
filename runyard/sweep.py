"""A sweep's parameters, their combinations and the placeholders they fill. Pure.

``--param lr=1e-3,1e-4 --param seed=1..3`` gives a grid of 6 combinations; ``--random K``
draws K of them (without repeats) with ``random.Random(sample_seed)``, so the same seed
draws the same runs. ``{lr}`` in an argv element is replaced by the value, element by
element (no shell ever sees the command); ``{{lr}}`` stays a literal ``{lr}``.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence

MAX_RUNS = 1000
"""One sweep queues at most this many runs (a typo in a range should not queue 10^6)."""

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PLACEHOLDER = re.compile(r"\{\{[A-Za-z_][A-Za-z0-9_]*\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


class SweepError(ValueError):
    """Bad sweep input; the message is one line that says what to do."""


def parse_params(items: Sequence[str]) -> dict[str, list[str]]:
    """``["lr=1e-3,1e-4", "seed=1..3"]`` -> ``{"lr": ["1e-3", "1e-4"], "seed": ["1", "2", "3"]}``."""
    params: dict[str, list[str]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not NAME.fullmatch(name):
            raise SweepError(f"--param {item!r}: write NAME=VALUES, e.g. lr=1e-3,1e-4 or seed=1..3")
        if name in params:
            raise SweepError(f"--param {name} is given twice; list all its values in one: {name}=a,b,c")
        if not text:
            raise SweepError(f"--param {name}= has no values; write e.g. {name}=1,2,3 or {name}=1..3")
        values: list[str] = []
        for part in text.split(","):
            if not part:
                raise SweepError(f"--param {item}: an empty value between commas; remove the extra comma")
            values.extend(_expand(name, part))
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise SweepError(f"--param {name} repeats {', '.join(repeated)}; give each value once")
        params[name] = values
    if not params:
        raise SweepError("no --param given; e.g. --param lr=1e-3,1e-4, then {lr} in the command")
    return params


def _expand(name: str, part: str) -> list[str]:
    match = RANGE.fullmatch(part)
    if match is None:
        if ".." in part:
            raise SweepError(f"--param {name}={part}: a range is two whole numbers, e.g. 1..5")
        return [part]
    low, high = int(match.group(1)), int(match.group(2))
    if low > high:
        raise SweepError(f"--param {name}={part} is empty; write {high}..{low} (ranges count up and include both ends)")
    if high - low >= MAX_RUNS:
        raise SweepError(f"--param {name}={part} has {high - low + 1} values; a sweep queues at most {MAX_RUNS} runs")
    return [str(value) for value in range(low, high + 1)]


def placeholders(text: str) -> list[str]:
    return [match.group(1) for match in PLACEHOLDER.finditer(text) if match.group(1)]


def check_placeholders(
    argv: Sequence[str], params: dict[str, list[str]], *, also: dict[str, str] | None = None
) -> None:
    """Every ``{name}`` names a --param, and every --param but ``seed`` (which reaches the
    run as RUNYARD_SEED) is used somewhere: otherwise the runs would differ in nothing.

    ``also``: other templated texts by where they come from (``{"--name": "..."}``).
    """
    known = ", ".join(params)
    used: set[str] = set()
    for where, texts in (("argv", argv), *(((key, [value]) for key, value in (also or {}).items()))):
        for text in texts:
            for name in placeholders(text):
                if name not in params:
                    raise SweepError(f"placeholder {{{name}}} in {where} has no --param (known: {known})")
                used.add(name)
    unused = [name for name in params if name not in used and name != "seed"]
    if unused:
        raise SweepError(f"--param {unused[0]} is used nowhere; put {{{unused[0]}}} in the command")


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``{name}`` replaced by its value and ``{{name}}`` by ``{name}``."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)] if match.group(1) else match.group(0)[1:-1], text)


def combinations(
    params: dict[str, list[str]], *, random_k: int | None = None, sample_seed: int | None = None
) -> list[dict[str, str]]:
    """The grid in order (the first parameter varies slowest), or ``random_k`` distinct
    combinations drawn with ``random.Random(sample_seed)``."""
    names = list(params)
    sizes = [len(params[name]) for name in names]
    total = math.prod(sizes)
    if random_k is None:
        if total > MAX_RUNS:
            raise SweepError(f"the grid has {total} combinations; a sweep queues at most {MAX_RUNS}: "
                             f"use --random K, or fewer values")
        return [dict(zip(names, chosen)) for chosen in itertools.product(*(params[name] for name in names))]
    if random_k < 1:
        raise SweepError("--random K needs K of 1 or more")
    if random_k > total:
        raise SweepError(f"--random {random_k}, but the grid has only {total} combinations; ask for at most {total}")
    if random_k > MAX_RUNS:
        raise SweepError(f"--random {random_k}: a sweep queues at most {MAX_RUNS} runs")
    # Draw positions in the grid, never the grid itself: it may be far larger than K.
    drawn = random.Random(sample_seed).sample(range(total), random_k)
    return [_at(params, names, sizes, index) for index in drawn]


def _at(params: dict[str, list[str]], names: list[str], sizes: list[int], index: int) -> dict[str, str]:
    """The combination at ``index`` of the grid in :func:`itertools.product` order."""
    chosen = {}
    for name, size in zip(reversed(names), reversed(sizes)):
        index, position = divmod(index, size)
        chosen[name] = params[name][position]
    return {name: chosen[name] for name in names}
