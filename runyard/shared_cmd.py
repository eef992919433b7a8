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

COMMANDS = ("install-service",)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    install = commands.add_parser(
        "install-service", help="write a systemd unit that keeps the engine up",
        description="Write a systemd unit: the shared daemon for the whole box (as root), or with --user "
                    "your personal one. Runs outlive restarts of the engine (KillMode=process).",
    )
    install.add_argument("--user", action="store_true", help="a user unit for your personal daemon")
    install.add_argument("--print", dest="print_only", action="store_true", help="print the unit, write nothing")
    install.add_argument("--path", help="write here instead of the systemd folder")


def run(home: Any, args: argparse.Namespace, error_type: type[Exception]) -> int:
    """Run ``args.command``; ``error_type(message, code)`` is the CLI's one-line error."""
    if args.command == "install-service":
        return install_service(args, error_type)
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


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
