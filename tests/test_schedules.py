"""Schedules: cron firings and --at times, computed from injected times (no sleeping)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from engine.schedules import MAX_CATCH_UP, ScheduleError, due_firings, next_fire, parse_at, parse_cron

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3600.0
DAY = 86400.0


def at(text: str, tz: ZoneInfo = UTC) -> float:
    """Unix time of a wall-clock time like ``2026-05-06 12:00`` in ``tz``."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def wall(moment: float, tz: ZoneInfo = UTC) -> str:
    return datetime.fromtimestamp(moment, tz).strftime("%Y-%m-%d %H:%M %Z")


# ------------------------------------------------------------------------- next_fire


def test_a_nightly_schedule_fires_at_the_next_2am() -> None:
    assert wall(next_fire("0 2 * * *", at("2026-05-06 12:00"), tz=UTC)) == "2026-05-07 02:00 UTC"
    assert wall(next_fire("0 2 * * *", at("2026-05-06 01:59:59"), tz=UTC)) == "2026-05-06 02:00 UTC"
    # Strictly after: from the firing itself, the next one is a day later.
    assert wall(next_fire("0 2 * * *", at("2026-05-06 02:00"), tz=UTC)) == "2026-05-07 02:00 UTC"
    assert wall(next_fire("*/15 * * * *", at("2026-05-06 12:07:30"), tz=UTC)) == "2026-05-06 12:15 UTC"


@pytest.mark.parametrize("sunday", ["0", "7", "sun", "SUN"])
def test_day_of_week_numbers_are_crontabs(sunday: str) -> None:
    # 2026-05-06 is a Wednesday; APScheduler alone would read 0 as Monday.
    assert wall(next_fire(f"0 2 * * {sunday}", at("2026-05-06 12:00"), tz=UTC)) == "2026-05-10 02:00 UTC"


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("1-5", ["Thu", "Fri", "Mon", "Tue", "Wed"]),
        ("mon-fri", ["Thu", "Fri", "Mon", "Tue", "Wed"]),
        ("*/2", ["Thu", "Sat", "Sun", "Tue"]),  # cron's 0,2,4,6: Sun Tue Thu Sat
        ("5-7", ["Fri", "Sat", "Sun", "Fri"]),
        ("fri-sun", ["Fri", "Sat", "Sun", "Fri"]),
        ("1,3", ["Mon", "Wed", "Mon", "Wed"]),
        ("0-6", ["Thu", "Fri", "Sat", "Sun"]),
    ],
)
def test_day_of_week_ranges_lists_and_steps(field: str, days: list[str]) -> None:
    moment = at("2026-05-06 12:00")  # a Wednesday
    seen = []
    for _ in days:
        moment = next_fire(f"0 2 * * {field}", moment, tz=UTC)
        seen.append(datetime.fromtimestamp(moment, UTC).strftime("%a"))
    assert seen == days


def test_both_day_fields_restricted_fire_on_either_as_cron_does() -> None:
    moment = at("2026-05-26 12:00")  # a Tuesday; the 1st of June is a Monday, then Mondays
    seen = []
    for _ in range(4):
        moment = next_fire("0 0 1 * 1", moment, tz=UTC)
        seen.append(wall(moment)[:10])
    assert seen == ["2026-06-01", "2026-06-08", "2026-06-15", "2026-06-22"]
    moment = at("2026-06-22 12:00")
    moment = next_fire("0 0 1 * 3", moment, tz=UTC)  # Wednesday the 24th comes first...
    assert wall(moment)[:10] == "2026-06-24"
    assert wall(next_fire("0 0 1 * 3", at("2026-06-30 12:00"), tz=UTC))[:10] == "2026-07-01"  # ...then the 1st


@pytest.mark.parametrize(
    ("macro", "expected"),
    [("@hourly", "2026-05-06 13:00 UTC"), ("@daily", "2026-05-07 00:00 UTC"), ("@midnight", "2026-05-07 00:00 UTC"),
     ("@weekly", "2026-05-10 00:00 UTC"), ("@monthly", "2026-06-01 00:00 UTC"), ("@yearly", "2027-01-01 00:00 UTC")],
)
def test_macros(macro: str, expected: str) -> None:
    assert wall(next_fire(macro, at("2026-05-06 12:00"), tz=UTC)) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "--cron '61 * * * *': minute '61': the last value (61) is higher than the maximum value (59)"),
        ("0 25 * * *", "--cron '0 25 * * *': hour '25'"),
        ("0 2 * *", "--cron '0 2 * *': 4 fields, not 5"),
        ("0 2 * * * *", "--cron '0 2 * * * *': 6 fields, not 5"),
        ("", "--cron '': 0 fields, not 5"),
        ("0 2 32 * *", "--cron '0 2 32 * *': day of month '32'"),
        ("0 2 * 13 *", "--cron '0 2 * 13 *': month '13'"),
        ("0 2 * * 8", "--cron '0 2 * * 8': day of week '8': 8 is not a day (0-7; 0 and 7 are Sunday)"),
        ("0 2 * * 5-1", "--cron '0 2 * * 5-1': day of week '5-1': the range 5-1 runs backwards"),
        ("0 2 * * funday", "--cron '0 2 * * funday': day of week 'funday'"),
        ("0 2 * * 5L", "--cron '0 2 * * 5L': day of week '5L'"),
        ("0 0 30 2 *", "--cron '0 0 30 2 *': that date never occurs"),
        ("@reboot", "--cron '@reboot': unknown macro @reboot"),
        ("x * * * *", "--cron 'x * * * *': minute 'x'"),
    ],
)
def test_a_bad_expression_is_one_line_with_a_hint(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_cron(expr)
    text = str(caught.value)
    assert text.startswith(message), text
    assert text.endswith("; write 5 fields like '0 2 * * *'") and "\n" not in text
    with pytest.raises(ScheduleError):
        next_fire(expr, 0.0)
    with pytest.raises(ScheduleError):
        due_firings(expr, None, 0.0, DAY)


def test_parse_cron_gives_an_apscheduler_trigger() -> None:
    from apscheduler.triggers.base import BaseTrigger

    trigger = parse_cron(" 0 2 * * * ", tz=UTC)
    assert isinstance(trigger, BaseTrigger)
    fire = trigger.get_next_fire_time(None, datetime.fromisoformat("2026-05-06 12:00+00:00"))
    assert fire.isoformat() == "2026-05-07T02:00:00+00:00"
    with pytest.raises(ScheduleError, match="not text"):
        parse_cron(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- due_firings


def test_a_cron_schedule_fires_at_an_injected_time() -> None:
    created = at("2026-05-06 12:00")
    assert due_firings("0 2 * * *", None, created, at("2026-05-07 01:59:59"), tz=UTC) == []
    assert due_firings("0 2 * * *", None, created, at("2026-05-07 02:00"), tz=UTC) == [at("2026-05-07 02:00")]
    assert due_firings("0 2 * * *", None, created, at("2026-05-07 02:00:03"), tz=UTC) == [at("2026-05-07 02:00")]
    # Once it fired (last_fired_at stored), the same night is not due again.
    assert due_firings("0 2 * * *", at("2026-05-07 02:00"), created, at("2026-05-07 02:05"), tz=UTC) == []
    assert due_firings("0 2 * * *", at("2026-05-07 02:00"), created, at("2026-05-08 02:00"), tz=UTC) == [
        at("2026-05-08 02:00")]


def test_a_long_downtime_fires_once_not_a_burst() -> None:
    last = at("2026-05-07 02:00")
    back = at("2026-05-10 09:30")  # the engine was down for three nights
    assert due_firings("0 2 * * *", last, 0.0, back, tz=UTC) == [at("2026-05-10 02:00")]
    # Every minute for a month: still one firing, the latest, and cheaply.
    assert due_firings("* * * * *", last, 0.0, last + 30 * DAY, tz=UTC) == [last + 30 * DAY]
    # Unless catching up was asked for: every missed night.
    assert due_firings("0 2 * * *", last, 0.0, back, catch_up=True, tz=UTC) == [
        at("2026-05-08 02:00"), at("2026-05-09 02:00"), at("2026-05-10 02:00")]
    caught_up = due_firings("*/5 * * * *", last, 0.0, last + DAY, catch_up=True, tz=UTC)
    assert len(caught_up) == MAX_CATCH_UP and caught_up[-1] == last + DAY  # the most recent ones


def test_an_engine_loop_with_an_injected_clock_fires_each_night_across_a_restart() -> None:
    """What the engine does each tick: due_firings, queue a run per firing, store the
    last one. The stored number is all that survives a restart."""
    created = at("2026-05-06 12:00")
    stored_last_fired: float | None = None
    fired: list[str] = []
    clock = created
    for minute in range(0, int(3 * DAY / 60), 7):
        clock = created + minute * 60 + 7  # ticks at odd seconds
        if at("2026-05-07 20:00") <= clock < at("2026-05-08 03:00"):
            continue  # the engine is down over the second night
        due = due_firings("30 1 * * *", stored_last_fired, created, clock, tz=UTC)
        if due:
            fired.extend(wall(moment) for moment in due)
            stored_last_fired = due[-1]
    assert fired == ["2026-05-07 01:30 UTC", "2026-05-08 01:30 UTC", "2026-05-09 01:30 UTC"]


# ------------------------------------------------------------------------- daylight saving


def test_a_time_skipped_in_spring_still_fires_once() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 never shows, so
    # it fires when 02:30 would have been without the change.
    first = next_fire("30 2 * * *", at("2026-03-28 12:00", BERLIN), tz=BERLIN)
    assert wall(first, BERLIN) == "2026-03-29 03:30 CEST"
    assert first == at("2026-03-29 01:30")
    second = next_fire("30 2 * * *", first, tz=BERLIN)
    assert wall(second, BERLIN) == "2026-03-30 02:30 CEST"
    assert due_firings("30 2 * * *", at("2026-03-28 02:30", BERLIN), 0.0, at("2026-03-30 00:00", BERLIN),
                       catch_up=True, tz=BERLIN) == [first]


def test_a_time_repeated_in_autumn_fires_once() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    first = next_fire("30 2 * * *", at("2026-10-24 12:00", BERLIN), tz=BERLIN)
    assert wall(first, BERLIN) == "2026-10-25 02:30 CEST"
    assert wall(next_fire("30 2 * * *", first, tz=BERLIN), BERLIN) == "2026-10-26 02:30 CET"
    an_hour_later = first + HOUR + 15 * 60  # 02:45 CET, after the repeat
    assert due_firings("30 2 * * *", first, 0.0, an_hour_later, tz=BERLIN) == []
    # A schedule with several times in that hour keeps them all (they are not repeats).
    quarter = [next_fire("*/15 * * * *", first + n * 15 * 60 - 1, tz=BERLIN) for n in range(6)]
    assert quarter == [first + n * 15 * 60 for n in range(6)]


# ------------------------------------------------------------------------- --at


NOON = at("2026-05-06 12:00")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+2h", NOON + 2 * HOUR),
        ("+90s", NOON + 90),
        ("in 30m", NOON + 30 * 60),
        ("In 1h30m", NOON + 90 * 60),
        ("+1d", NOON + DAY),
        ("14:30", at("2026-05-06 14:30")),
        ("9:05", at("2026-05-07 09:05")),  # passed today: tomorrow
        ("12:00", at("2026-05-07 12:00")),  # now is not the future
        ("23:59:30", at("2026-05-06 23:59:30")),
        ("2026-12-01 02:00", at("2026-12-01 02:00")),
        ("2026-12-01T02:00:00", at("2026-12-01 02:00")),
        ("2026-12-01", at("2026-12-01 00:00")),
        ("2026-12-01T02:00:00+01:00", at("2026-12-01 01:00")),
        ("2026-12-01T02:00:00Z", at("2026-12-01 02:00")),
    ],
)
def test_at_forms(text: str, expected: float) -> None:
    assert parse_at(text, NOON, tz=UTC) == expected


def test_at_is_in_local_wall_time_across_daylight_saving() -> None:
    now = at("2026-03-28 12:00", BERLIN)
    tomorrow_11 = parse_at("11:00", now, tz=BERLIN)
    assert wall(tomorrow_11, BERLIN) == "2026-03-29 11:00 CEST"
    assert tomorrow_11 - now == 22 * HOUR  # 23 hours on the clock; the night is an hour shorter
    assert parse_at("2026-07-01 09:00", now, tz=BERLIN) == at("2026-07-01 07:00")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tomorrow", "--at 'tomorrow': cannot read a time; write HH:MM"),
        ("25:00", "--at '25:00': not a time of day"),
        ("12:60", "--at '12:60': not a time of day"),
        ("+2", "--at '+2': duration '2' has no unit"),
        ("in soon", "--at 'in soon': cannot read duration 'soon'"),
        ("2026-05-06 11:00", "--at '2026-05-06 11:00': that time has passed (it is now 2026-05-06 12:00)"),
        ("2026-13-01 00:00", "--at '2026-13-01 00:00': cannot read a time"),
        ("", "--at '': cannot read a time"),
    ],
)
def test_a_bad_at_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_at(text, NOON, tz=UTC)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_local_time_is_the_default_and_at_stays_light() -> None:
    """In a fresh interpreter with TZ set: the defaults follow the box's zone, and
    --at alone does not load APScheduler (the command line must stay quick)."""
    code = (
        "import json, sys\n"
        "from datetime import datetime\n"
        "from engine.schedules import parse_at, next_fire\n"
        "now = datetime.fromisoformat('2026-05-06T12:00:00-04:00').timestamp()\n"
        "result = {'at': parse_at('14:30', now), 'light': 'apscheduler' not in sys.modules}\n"
        "result['cron'] = next_fire('0 2 * * *', now)\n"
        "print(json.dumps(result))\n"
    )
    env = dict(os.environ, TZ="America/New_York")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["light"] is True
    assert result["at"] == datetime.fromisoformat("2026-05-06T14:30:00-04:00").timestamp()
    assert result["cron"] == datetime.fromisoformat("2026-05-07T02:00:00-04:00").timestamp()
