"""When scheduled runs are due: ``--cron`` expressions and ``--at`` times.

Pure functions of the times they are given (the engine injects its clock), so a 02:00
schedule is tested without waiting for 02:00. Cron arithmetic is APScheduler's
(``CronTrigger``); this module adds what crontab users expect on top of it:

- Day-of-week numbers are crontab's (0 and 7 are Sunday). APScheduler 3 reads 0 as
  Monday (its documented historical mistake), so the field is translated to day names.
- When both day of month and day of week are restricted (``0 0 1 * 1``), either one
  matching fires, as in cron, rather than both.
- ``@hourly``, ``@daily``, ``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``.
- Daylight saving time: a time the spring change skips still fires once, read with the
  offset before the change (02:30 fires at 03:30, when 02:30 would have been); a time
  the autumn change repeats fires once, at its first occurrence.

Times are local to the box unless a ``tz`` is passed. APScheduler is imported only when
a cron expression is used, so ``--at`` stays light for the command line.
"""

from __future__ import annotations

import collections
import functools
import re
from datetime import datetime, time as clock_time, timedelta, timezone, tzinfo
from typing import Any

from engine.units import UnitError, parse_duration

CRON_HINT = "write 5 fields like '0 2 * * *'"
AT_HINT = "write HH:MM, 'YYYY-MM-DD HH:MM', an ISO 8601 time, +2h or 'in 30m'"
MAX_CATCH_UP = 100
"""The most firings :func:`due_firings` returns with ``catch_up`` (the most recent ones)."""

_MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_FIELD_NAMES = {"minute": "minute", "hour": "hour", "day": "day of month", "month": "month",
                "day_of_week": "day of week"}
_CRON_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
"""Index = crontab's day number (0 = Sunday); APScheduler reads the names correctly."""
_DOW_ITEM = re.compile(r"^(?:(\*)|(\w+)(?:-(\w+))?)(?:/(\d+))?$")
_ONE_MICROSECOND = timedelta(microseconds=1)


class ScheduleError(ValueError):
    """A cron expression or ``--at`` time that cannot be used; one line for the user."""


# ---------------------------------------------------------------------- cron


def parse_cron(expr: str, tz: tzinfo | None = None) -> Any:
    """The APScheduler trigger for a 5-field crontab expression (or a ``@daily``-style
    macro), in ``tz`` (default: the box's local zone).

    The result can be given to ``AsyncIOScheduler.add_job(..., trigger=...)``. Raises
    :class:`ScheduleError` like ``--cron '61 * * * *': minute: the last value (61) is
    higher than the maximum value (59); write 5 fields like '0 2 * * *'``.
    """
    if not isinstance(expr, str):
        raise ScheduleError(f"--cron {expr!r}: not text; {CRON_HINT}")
    return _trigger(expr.strip(), tz)


@functools.lru_cache(maxsize=256)
def _trigger(expr: str, tz: tzinfo | None) -> Any:
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    def fail(message: str) -> ScheduleError:
        return ScheduleError(f"--cron {expr!r}: {message}; {CRON_HINT}")

    if expr.startswith("@"):
        if expr.lower() not in _MACROS:
            raise fail(f"unknown macro {expr} (known: {', '.join(sorted(_MACROS))})")
        fields = _MACROS[expr.lower()].split()
    else:
        fields = expr.split()
    if len(fields) != 5:
        raise fail(f"{len(fields)} field{'s' if len(fields) != 1 else ''}, not 5")
    values = dict(zip(_FIELDS, fields))
    for name, value in values.items():
        if name == "day_of_week":
            values[name] = value = _translate_day_of_week(value, fail)
        try:
            CronTrigger(**{name: value}, timezone=timezone.utc)
        except ValueError as error:
            message = re.sub(r"^Error validating expression '[^']*': ", "", str(error))
            raise fail(f"{_FIELD_NAMES[name]} {fields[_FIELDS.index(name)]!r}: {message}") from None

    try:
        # Cron's rule: with both day fields restricted, a day matching either fires.
        if not fields[2].startswith("*") and not fields[4].startswith("*"):
            trigger = OrTrigger([
                CronTrigger(**dict(values, day_of_week="*"), timezone=tz),
                CronTrigger(**dict(values, day="*"), timezone=tz),
            ])
        else:
            trigger = CronTrigger(**values, timezone=tz)
    except ValueError as error:
        raise fail(str(error)) from None
    # No year field: an expression that fires at all fires within 8 years (leap days),
    # so a fixed reference keeps this check deterministic.
    if _raw_next(trigger, datetime(2000, 1, 1, tzinfo=timezone.utc)) is None:
        raise fail("that date never occurs")
    return trigger


def _translate_day_of_week(text: str, fail: Any) -> str:
    """Crontab day-of-week (0-7, Sunday = 0 or 7, names, ranges, steps) as day names."""
    days: set[int] = set()
    for item in text.lower().split(","):
        match = _DOW_ITEM.match(item)
        if not match:
            raise fail(f"day of week {text!r}: cannot read {item!r} (use 0-7 or sun-sat, ranges like 1-5)")
        star, first, last, step = match.groups()
        if star:
            low, high = 0, 6
        else:
            low = _day_number(first, text, fail)
            high = _day_number(last, text, fail) if last else (6 if step else low)
            if last and high == 0 and low > 0:
                high = 7  # "5-7" and "fri-sun" end on Sunday
            if high < low:
                raise fail(f"day of week {text!r}: the range {item} runs backwards")
        stride = int(step) if step else 1
        if stride < 1:
            raise fail(f"day of week {text!r}: a step must be 1 or more")
        days.update(day % 7 for day in range(low, high + 1, stride))
    if len(days) == 7:
        return "*"
    return ",".join(_CRON_DAY_NAMES[day] for day in sorted(days))


def _day_number(token: str, text: str, fail: Any) -> int:
    if token.isdigit():
        number = int(token)
        if number > 7:
            raise fail(f"day of week {text!r}: {number} is not a day (0-7; 0 and 7 are Sunday)")
        return number
    if token[:3] in _CRON_DAY_NAMES and len(token) == 3:
        return _CRON_DAY_NAMES.index(token)
    raise fail(f"day of week {text!r}: {token!r} is not a day (0-7 or sun-sat)")


def _raw_next(trigger: Any, after: datetime) -> datetime | None:
    """APScheduler's next firing at or after ``after``."""
    # Always from UTC: APScheduler 3 can loop forever when handed a wall-clock time
    # with ``fold=1`` (the repeated autumn hour).
    return trigger.get_next_fire_time(None, after.astimezone(timezone.utc))


def _just_after(moment: datetime) -> datetime:
    # In UTC: wall-clock arithmetic drops ``fold`` and would step back into the first
    # occurrence of a repeated hour.
    return moment.astimezone(timezone.utc) + _ONE_MICROSECOND


def _is_repeat(trigger: Any, fire: datetime) -> bool:
    """The second of two firings at the same wall-clock time (the autumn DST change
    repeats an hour): ``fold=1`` and nothing fired since the first occurrence."""
    if not fire.fold:
        return False
    first = fire.replace(fold=0)
    if first.utcoffset() == fire.utcoffset():
        return False
    return _raw_next(trigger, _just_after(first)) == fire


def _next_after(trigger: Any, after: float) -> float | None:
    """The first firing strictly after Unix time ``after``."""
    fire = _raw_next(trigger, _just_after(datetime.fromtimestamp(after, timezone.utc)))
    while fire is not None and _is_repeat(trigger, fire):
        fire = _raw_next(trigger, _just_after(fire))
    return None if fire is None else fire.timestamp()


def next_fire(expr: str, after: float, tz: tzinfo | None = None) -> float:
    """Unix time of the first firing of ``expr`` strictly after ``after``; raises
    :class:`ScheduleError` for a bad expression."""
    trigger = parse_cron(expr, tz)
    fire = _next_after(trigger, after)
    if fire is None:  # parse_cron refuses expressions that never fire
        raise ScheduleError(f"--cron {expr!r}: no firing after {after}; {CRON_HINT}")
    return fire


def due_firings(
    expr: str,
    last_fired_at: float | None,
    created_at: float,
    now: float,
    *,
    catch_up: bool = False,
    tz: tzinfo | None = None,
) -> list[float]:
    """The scheduled times (Unix, oldest first) that are due in ``(last_fired_at or
    created_at, now]``; ``[]`` when none is.

    After downtime (the engine was stopped over several firings) a schedule fires once,
    for its most recent missed time, not once per missed time: like anacron and
    systemd's ``Persistent=true``, and so a box that was off for a weekend does not
    start three nightly trainings at once. With ``catch_up`` every missed time is
    returned (at most :data:`MAX_CATCH_UP`, the most recent).

    The engine queues one run per returned time and stores the last one as
    ``last_fired_at``, in the same transaction, so a firing is neither lost nor doubled.
    """
    trigger = parse_cron(expr, tz)
    start = created_at if last_fired_at is None else last_fired_at
    if now <= start:
        return []
    if catch_up:
        firings: collections.deque[float] = collections.deque(maxlen=MAX_CATCH_UP)
        fire = _next_after(trigger, start)
        while fire is not None and fire <= now:
            firings.append(fire)
            fire = _next_after(trigger, fire)
        return list(firings)
    latest = _latest_firing(trigger, start, now)
    return [] if latest is None else [latest]


def _latest_firing(trigger: Any, start: float, now: float) -> float | None:
    """The last firing in ``(start, now]``, found without walking every missed one: a
    window ending at ``now`` doubles until it holds a firing, then is walked."""
    width = 60.0
    while True:
        window_start = max(start, now - width)
        fire = _next_after(trigger, window_start)
        if fire is not None and fire <= now:
            while (following := _next_after(trigger, fire)) is not None and following <= now:
                fire = following
            return fire
        if window_start <= start:
            return None
        width *= 2


# ---------------------------------------------------------------------- --at


_RELATIVE = re.compile(r"^(?:\+|in\s+)(.+)$", re.IGNORECASE)
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_at(text: str, now: float, tz: tzinfo | None = None) -> float:
    """Unix time of an ``--at`` value, read relative to ``now`` (Unix).

    Accepts ``+2h`` / ``in 30m`` (any runyard duration), ``HH:MM`` or ``HH:MM:SS`` (the
    next time the clock shows it: today, or tomorrow if that has passed), ``YYYY-MM-DD
    HH:MM``, ``YYYY-MM-DD`` (midnight) and ISO 8601 (``2026-12-01T02:00:00+01:00``).
    Times without an offset are in ``tz`` (default: the box's local zone). An absolute
    time that has already passed is refused. Raises :class:`ScheduleError` (one line).
    """
    raw = str(text).strip()

    def fail(message: str) -> ScheduleError:
        return ScheduleError(f"--at {text!r}: {message}")

    relative = _RELATIVE.match(raw)
    if relative:
        try:
            return now + parse_duration(relative.group(1).strip())
        except UnitError as error:
            raise fail(str(error)) from None

    clock = _CLOCK.match(raw)
    if clock:
        hour, minute, second = int(clock.group(1)), int(clock.group(2)), int(clock.group(3) or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise fail(f"not a time of day; {AT_HINT}")
        today = _local(now, tz).date()
        wanted = clock_time(hour, minute, second)
        at = _timestamp(datetime.combine(today, wanted), tz)
        if at <= now:
            at = _timestamp(datetime.combine(today + timedelta(days=1), wanted), tz)
        return at

    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise fail(f"cannot read a time; {AT_HINT}") from None
    at = moment.timestamp() if moment.tzinfo is not None else _timestamp(moment, tz)
    if at <= now:
        raise fail(f"that time has passed (it is now {_local(now, tz):%Y-%m-%d %H:%M})")
    return at


def _local(moment: float, tz: tzinfo | None) -> datetime:
    """Wall-clock time in ``tz``; naive local time when ``tz`` is ``None``."""
    return datetime.fromtimestamp(moment, tz)


def _timestamp(wall: datetime, tz: tzinfo | None) -> float:
    """Unix time of a naive wall-clock time in ``tz`` (``None``: local, via mktime,
    which follows the box's daylight saving rules)."""
    return wall.timestamp() if tz is None else wall.replace(tzinfo=tz).timestamp()
