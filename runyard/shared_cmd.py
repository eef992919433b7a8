"""The shared box's commands: ``install-service``, ``share``, ``reserve``, ``reservations``,
``unreserve``.

:func:`add_parsers` is called while ``runyard``'s parser is built, for every command, so
this module imports only argparse at load time; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from typing import Any

NEEDS_ENGINE = "needs a running engine: start one with `runyard --daemon` (or ask for the shared one)"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    install = commands.add_parser(
        "install-service", help="write a systemd unit that keeps the engine up",
        description="Write a systemd unit: the shared daemon for the whole box (as root), or with --user "
                    "your personal one. Runs outlive restarts of the engine (KillMode=process).",
    )
    install.add_argument("--user", action="store_true", help="a user unit for your personal daemon")
    install.add_argument("--print", dest="print_only", action="store_true", help="print the unit, write nothing")
    install.add_argument("--path", help="write here instead of the systemd folder")
    share = commands.add_parser(
        "share", help="each user's recent GPU- and CPU-hours and fair-share standing",
        description="Each user's usage, decayed by the fair-share half-life, and their standing: among runs of "
                    "equal priority, the user with standing 1 goes first. Also their runs and limits.",
    )
    share.add_argument("--json", action="store_true")
    reserve = commands.add_parser(
        "reserve", help="hold GPUs for a user over a window",
        description="Hold GPUs for a window: no run of anyone else that could reach into the window starts on "
                    "them (a run whose --time ends it before the window may). Example: "
                    "runyard reserve --gpus 2 --from 14:00 --for 4h",
    )
    reserve.add_argument("--gpus", type=int, required=True, help="how many GPUs")
    reserve.add_argument("--from", dest="start", default="+0s", metavar="TIME",
                         help="when the window opens: 14:30, '2026-12-01 02:00', +2h (default: now)")
    reserve.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="how long, e.g. 4h")
    reserve.add_argument("--user", help="for this user (an admin's to give; default: you)")
    reserve.add_argument("--json", action="store_true")
    listing = commands.add_parser("reservations", help="the reservations whose window has not ended")
    listing.add_argument("--json", action="store_true")
    unreserve = commands.add_parser("unreserve", help="remove a reservation")
    unreserve.add_argument("id")


def run(home: Any, args: argparse.Namespace, error_type: type[Exception]) -> int:
    """Run ``args.command``; ``error_type(message, code)`` is the CLI's one-line error."""
    if args.command == "install-service":
        return install_service(args, error_type)
    if args.command == "share":
        return show_share(_call(home, "share", error_type), args)
    if args.command == "reserve":
        return reserve(home, args, error_type)
    if args.command == "reservations":
        found = _call(home, "reservations", error_type)
        if args.json:
            print(json.dumps(found, indent=2))
        elif not found:
            print("no reservations")
        for item in [] if args.json else found:
            print(_describe(item))
        return 0
    if args.command == "unreserve":
        if not args.id.isdigit():
            raise error_type(f"{args.id!r} is not a reservation id (a number, as `runyard reservations` shows)", 2)
        removed = _call(home, "unreserve", error_type, id=int(args.id))
        print(f"reservation {removed['id']} removed")
        return 0
    raise error_type(f"unknown command {args.command}")


def install_service(args: argparse.Namespace, error_type) -> int:
    from pathlib import Path

    from runyard import service

    if args.print_only:
        sys.stdout.write(service.unit_text(user=args.user))
        return 0
    target = Path(args.path).expanduser().absolute() if args.path else None
    try:
        written = service.install(user=args.user, path=target)
    except OSError as error:
        where = target or (service.user_unit_path() if args.user else service.SYSTEM_UNIT)
        denied = error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        hint = "; run it as root (sudo), or --print it and install it yourself" if denied and not args.user else ""
        raise error_type(f"cannot write {where}: {error.strerror}{hint}") from None
    print(service.enable_hint(user=args.user, path=written))
    return 0


def _call(home: Any, op: str, error_type: type[Exception], **request: Any) -> Any:
    from engine.client import DaemonUnavailable
    from engine.shared import client_for

    try:
        return client_for(home).call(op, **request)
    except DaemonUnavailable:
        raise error_type(f"`runyard {op}` {NEEDS_ENGINE}") from None


def reserve(home: Any, args: argparse.Namespace, error_type: type[Exception]) -> int:
    import time

    from engine.schedules import ScheduleError, parse_at
    from engine.units import UnitError, parse_duration

    try:
        start = parse_at(args.start, time.time())
    except ScheduleError as error:
        raise error_type(str(error).replace("--at", "--from", 1), 2) from None
    try:
        duration = parse_duration(args.duration)
    except UnitError as error:
        raise error_type(f"--for {args.duration!r}: {error}", 2) from None
    made = _call(home, "reserve", error_type, gpus=args.gpus, start=start, duration_s=duration, user=args.user)
    if args.json:
        print(json.dumps(made, indent=2))
    else:
        print(_describe(made))
    return 0


def _describe(item: dict[str, Any]) -> str:
    import time

    def stamp(at: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))

    gpus = ",".join(map(str, item["gpus"]))
    window = f"from {stamp(item['start'])} to {stamp(item['end'])}"
    return f"reservation {item['id']}: GPUs {gpus} for {item['user']} {window}"


def show_share(report: dict[str, Any], args: argparse.Namespace) -> int:
    from engine.units import format_duration, format_size

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"usage decays with a half-life of {format_duration(report['half_life_s'])}; "
          f"a CPU-hour counts as {report['cpu_hour_weight']:g} GPU-hour")
    rows = [("STANDING", "USER", "GPU-H", "CPU-H", "SCORE", "RUNNING", "QUEUED", "GPUS", "LIMITS")]
    for row in report["users"]:
        limits = []
        for account, values in row["limits"].items():
            parts = [f"{values['gpus']} GPUs" if "gpus" in values else None,
                     f"{values['cpus']:g} CPUs" if "cpus" in values else None,
                     f"{format_size(values['mem_bytes'])} memory" if "mem_bytes" in values else None,
                     f"{values['queued']} queued" if "queued" in values else None]
            limits.append(f"{account}: " + ", ".join(part for part in parts if part))
        rows.append((str(row["standing"]), row["user"], f"{row['gpu_hours']:.1f}", f"{row['cpu_hours']:.1f}",
                     f"{row['score']:.2f}", str(row["running"]), str(row["queued"]), str(row["gpus_held"]),
                     "; ".join(limits) or "-"))
    if len(rows) == 1:
        print("no usage yet")
        return 0
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0
