"""Parsing and formatting of sizes and durations, as people type them.

Sizes: ``512M``, ``16G``, ``16GiB``, ``1.5T``. A bare letter or an ``iB`` suffix is
binary (``16G`` = 16 GiB, as Slurm, systemd and Docker read it); ``KB``/``MB``/``GB``/
``TB`` are decimal. A bare number is refused, except ``0``: ``--mem 512`` is ambiguous
(bytes? Slurm reads megabytes), and a wrong guess either wastes a box or kills a run.

Durations: ``90s``, ``45m``, ``2h``, ``1d``, combinations (``1h30m``), and clock forms
``H:MM:SS`` / ``MM:SS`` / ``D-HH:MM:SS`` (Slurm's). A bare number is refused for the same
reason (Slurm reads minutes, most tools seconds).
"""

from __future__ import annotations

import re

_BINARY = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtTpP]?)(i?[bB])?\s*$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class UnitError(ValueError):
    """A size or duration that cannot be read; the message says what to type instead."""


def parse_size(text: str) -> int:
    """Bytes in a size such as ``16G``; raises :class:`UnitError` with a hint."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise UnitError(f"cannot read size {text!r}: use a number and a unit, e.g. 512M, 16G, 1.5T")
    number, prefix, suffix = match.groups()
    prefix = prefix.upper()
    value = float(number)
    if not prefix and not suffix:
        if value == 0:
            return 0
        raise UnitError(f"size {text!r} has no unit: write e.g. {number}M or {number}G")
    if suffix and suffix.lower() == "b" and prefix:
        factor = _DECIMAL[prefix]
    else:
        factor = _BINARY[prefix]
    return int(round(value * factor))


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``2h`` or ``1:30:00``; raises :class:`UnitError`."""
    raw = str(text).strip()
    hint = "use e.g. 90s, 45m, 2h, 1d, 1h30m or 1:30:00"
    if not raw:
        raise UnitError(f"empty duration: {hint}")
    if ":" in raw:
        days = 0
        clock = raw
        if "-" in raw:
            day_part, clock = raw.split("-", 1)
            if not day_part.isdigit():
                raise UnitError(f"cannot read duration {text!r}: {hint}")
            days = int(day_part)
        fields = clock.split(":")
        if len(fields) not in (2, 3) or not all(f.isdigit() for f in fields):
            raise UnitError(f"cannot read duration {text!r}: {hint}")
        numbers = [int(f) for f in fields]
        if len(numbers) == 2:
            numbers.insert(0, 0)
        hours, minutes, seconds = numbers
        if minutes >= 60 or seconds >= 60:
            raise UnitError(f"cannot read duration {text!r}: minutes and seconds must be below 60")
        return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)
    position = 0
    total = 0.0
    compact = raw.replace(" ", "")
    for match in _DURATION_PART_RE.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        position = match.end()
    if position != len(compact) or position == 0:
        if re.fullmatch(r"\d+(\.\d*)?", compact):
            raise UnitError(f"duration {text!r} has no unit: write e.g. {compact}s, {compact}m or {compact}h")
        raise UnitError(f"cannot read duration {text!r}: {hint}")
    return total


def format_size(num_bytes: int | float | None) -> str:
    """Compact binary size (``16G``, ``1.5T``, ``512M``), the same notation :func:`parse_size` reads."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            if unit == "":
                return f"{int(value)}B"
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """Compact duration (``2h``, ``1h30m``, ``45s``), readable back by :func:`parse_duration`."""
    if seconds is None:
        return "-"
    remaining = int(round(seconds))
    if remaining <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2])
