"""The daemon's shared mode: its folders, and every request checked against its caller.

:func:`answer` sits between the socket and :meth:`engine.daemon.Server.dispatch`: it
serves the requests of this module's own features, and on a shared daemon refuses what
the caller may not do (:mod:`engine.access`), keeps what a submit said about its
submitter for the launch, checks the submitter can enter the run's cwd, and leaves out of
``results`` the runs of others. A personal daemon's requests pass through untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
from typing import TYPE_CHECKING, Any

from engine import access, userfiles
from engine.paths import Home
from engine.protocol import EXIT_BAD_INPUT, EXIT_ERROR, RequestError

if TYPE_CHECKING:
    from engine.daemon import Server

SUBMIT_OPS = ("submit", "submit_many", "schedule")

CAPABILITIES = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}
"""What starting runs as their users needs: root has them all."""


def missing_capabilities() -> list[str]:
    """The capabilities a shared daemon needs and this process lacks."""
    if os.geteuid() == 0:
        return []
    try:
        with open("/proc/self/status") as status:
            effective = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return sorted(CAPABILITIES)
    return [name for name, bit in sorted(CAPABILITIES.items()) if not effective >> bit & 1]


def prepare(home: Home) -> None:
    """The shared home and socket folder: private files, folders users can pass through.

    The database holds every run's environment: 0600 (the umask set here makes SQLite's
    files so). Users reach their own ``runs/ID`` (their run's folder, 0700 and theirs)
    through the home and ``runs/``, which they may enter but not list (0711).
    """
    os.umask(0o077)
    userfiles.set_strict()
    home.ensure()
    for folder in (home.root, home.runs_dir):
        _chmod_dir(folder, 0o711)
    for name in ("runyard.db", "runyard.db-wal", "runyard.db-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(home.root / name, 0o600)
    socket_dir = home.socket_path.parent
    if not socket_dir.exists():
        socket_dir.mkdir(parents=True, mode=0o755)
        os.chmod(socket_dir, 0o755)  # mkdir's mode is cut by the umask


def _chmod_dir(folder, mode: int) -> None:
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise RequestError(f"{folder} is not a folder", EXIT_ERROR)
    os.chmod(folder, mode)


def answer(server: Server, op: str, args: dict[str, Any], peer: tuple[int, int, int] | None) -> Any:
    """Serve one request (see the module docstring)."""
    if not server.config.shared:
        return server.dispatch(op, args, peer)
    admin_group = server.config.settings.shared.admin_group
    caller = access.caller_of(peer, admin_group)
    conn = server.engine.store.conn
    access.check(
        op, args, caller,
        run_owner=lambda run_id: _owner(conn, "SELECT uid, user FROM runs WHERE id = ?", run_id),
        schedule_owner=lambda schedule_id: _schedule_owner(conn, schedule_id),
        admin_group=admin_group,
    )
    if op in SUBMIT_OPS:
        _check_cwds(op, args, caller)
    result = server.dispatch(op, args, peer)
    if op == "submit":
        access.record_owner(conn, result["id"], gid=caller.gid, umask=args.get("umask"))
    elif op == "submit_many":
        for run, request in zip(result, args.get("runs") or []):
            access.record_owner(conn, run["id"], gid=caller.gid, umask=request.get("umask"))
    elif op == "results" and not caller.admin and isinstance(result, dict):
        mine = {row[0] for row in conn.execute("SELECT id FROM runs WHERE uid = ?", (caller.uid,))}
        result = dict(result, runs=[row for row in result.get("runs", []) if row.get("id") in mine])
    return result


def _check_cwds(op: str, args: dict[str, Any], caller: access.Caller) -> None:
    """A run its user could not start in is refused now, not at its launch."""
    if op == "submit_many":
        requests = args.get("runs") if isinstance(args.get("runs"), list) else []
    elif op == "schedule":
        requests = [args.get("template") or {}]
    else:
        requests = [args]
    for request in requests:
        cwd = request.get("cwd") if isinstance(request, dict) else None
        if not isinstance(cwd, str) or not os.path.isabs(cwd) or not os.path.isdir(cwd):
            continue  # the engine's own checks say what is wrong with it
        try:
            entry = pwd.getpwuid(caller.uid)
            groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        except KeyError:
            raise RequestError(f"uid {caller.uid} has no account on this box; nothing was queued", EXIT_ERROR) from None
        problem = access.cannot_enter(cwd, caller.uid, caller.gid, groups)
        if problem is not None:
            raise RequestError(
                f"{caller.name} cannot enter {cwd} ({problem}); pass --cwd with a folder you can enter",
                EXIT_BAD_INPUT,
            )


def _owner(conn, query: str, key: int) -> tuple[int | None, str | None] | None:
    row = conn.execute(query, (key,)).fetchone()
    return None if row is None else (row[0], row[1])


def _schedule_owner(conn, schedule_id: int) -> tuple[int | None, str | None] | None:
    row = conn.execute("SELECT template FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
    if row is None:
        return None
    try:
        template = json.loads(row[0])
    except ValueError:
        return (None, None)
    return template.get("uid"), template.get("user")


def probe_identity(server: Server, run) -> dict[str, Any]:
    """How a run's ``--health-cmd`` is spawned: as the run's user on a shared daemon."""
    if not server.config.shared:
        return {}
    who = access.credentials(server.engine.store.conn, run.id, run.uid)
    return {"user": who.uid, "group": who.gid, "extra_groups": list(who.groups), "umask": who.umask}
