"""Who may do what on a shared daemon, and as whom a run starts.

The caller is whoever the kernel says is at the other end of the socket (SO_PEERCRED):
nothing a client sends names a user. Everyone sees the queue; a run's owner, root and
members of the admin group (``[shared] admin_group``) may act on it and read its log,
environment and provenance.

A run starts as its submitter: uid, the gid the submitting process had, that user's
supplementary groups as the system lists them at launch (a membership revoked meanwhile
is not carried over), and the submitter's umask with nothing open to others.
"""

from __future__ import annotations

import grp
import os
import pwd
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.protocol import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_NO_SUCH_RUN, RequestError
from engine.shared import DEFAULT_UMASK, run_umask

OWNER_OPS = {
    "cancel": "cancel", "retry": "retry", "hold": "hold", "release": "release", "priority": "reprioritise",
}
"""Requests that change a run: its owner's or an admin's to make."""
PRIVATE_OPS = {"show": "read the environment, log and provenance of"}
"""Requests that reveal what only the owner and admins may read."""
ADMIN_OPS = {"drain", "undrain"}
"""Requests that change the box for everyone."""


@dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
    name: str
    admin: bool


@dataclass(frozen=True)
class Credentials:
    """What a run's processes run as."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    umask: int
    name: str
    home: str


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def is_admin(uid: int, admin_group: str | None, *, daemon_uid: int | None = None) -> bool:
    """Root, the daemon's own user, or a member of ``admin_group`` (primary or supplementary)."""
    if uid == 0 or (daemon_uid is not None and uid == daemon_uid):
        return True
    if not admin_group:
        return False
    try:
        group = grp.getgrnam(admin_group)
        entry = pwd.getpwuid(uid)
    except KeyError:
        return False
    return group.gr_gid in os.getgrouplist(entry.pw_name, entry.pw_gid)


def caller_of(peer: tuple[int, int, int] | None, admin_group: str | None) -> Caller:
    """The caller as the socket names it; a request with no peer credentials is refused
    (a shared daemon cannot tell whose it is)."""
    if peer is None:
        raise RequestError("cannot tell who is asking (no peer credentials on the socket); refused", EXIT_ERROR)
    _, uid, gid = peer
    return Caller(uid=uid, gid=gid, name=user_name(uid), admin=is_admin(uid, admin_group, daemon_uid=os.geteuid()))


def check(
    op: str,
    args: Mapping[str, Any],
    caller: Caller,
    *,
    run_owner: Callable[[int], tuple[int | None, str | None] | None],
    schedule_owner: Callable[[int], tuple[int | None, str | None] | None],
    admin_group: str | None,
) -> None:
    """Refuse ``op`` when ``caller`` may not make it; one line saying who may.

    ``run_owner(id)`` / ``schedule_owner(id)`` give the ``(uid, user)`` of a run or
    schedule, ``None`` when there is none (the engine then says so itself).
    """
    if caller.admin:
        return
    admins = f"a member of {admin_group}" if admin_group else "root"
    if op in ADMIN_OPS:
        raise RequestError(f"only {admins} may {op} the shared engine", EXIT_ERROR)
    if op in OWNER_OPS or op in PRIVATE_OPS:
        run_id = _id(args.get("id"), "run", "runyard ls")
        owner = run_owner(run_id)
        if owner is None:
            return
        uid, user = owner
        if uid != caller.uid:
            verb = OWNER_OPS.get(op) or PRIVATE_OPS[op]
            whose = user or f"uid {uid}"
            raise RequestError(
                f"run {run_id} belongs to {whose}: only {whose} or {admins} may {verb} it", EXIT_ERROR
            )
    if op == "unschedule":
        schedule_id = _id(args.get("id"), "schedule", "runyard schedules")
        owner = schedule_owner(schedule_id)
        if owner is not None and owner[0] != caller.uid:
            whose = owner[1] or f"uid {owner[0]}"
            raise RequestError(
                f"schedule {schedule_id} belongs to {whose}: only {whose} or {admins} may remove it", EXIT_ERROR
            )


def _id(value: Any, what: str, lister: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{value!r} is not a {what} id (a number, as `{lister}` shows)", EXIT_BAD_INPUT) from None


# ------------------------------------------------------------------ who a run runs as


def record_owner(conn: sqlite3.Connection, run_id: int, *, gid: int, umask: Any) -> None:
    """Keep what the socket and the request said about the submitter, for the launch."""
    from engine.store.sql import write_transaction

    with write_transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO run_owners (run_id, gid, umask) VALUES (?, ?, ?)",
            (run_id, gid, run_umask(umask)),
        )


def credentials(conn: sqlite3.Connection, run_id: int, uid: int | None) -> Credentials:
    """Who ``run_id`` runs as.

    Raises:
        RequestError: the run has no user, or its user no longer exists.
    """
    if uid is None:
        raise RequestError("the run has no submitting user recorded; a shared engine starts no run as root",
                           EXIT_ERROR)
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise RequestError(f"its user (uid {uid}) no longer exists", EXIT_ERROR) from None
    row = conn.execute("SELECT gid, umask FROM run_owners WHERE run_id = ?", (run_id,)).fetchone()
    gid, umask = (row[0], row[1]) if row is not None else (entry.pw_gid, DEFAULT_UMASK)
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    if gid != entry.pw_gid and gid not in groups:
        gid = entry.pw_gid  # it left the group it submitted with: no run keeps a group its user lost
    return Credentials(uid=uid, gid=gid, groups=groups, umask=run_umask(umask), name=entry.pw_name,
                       home=entry.pw_dir)


def cannot_enter(path: str, uid: int, gid: int, groups: tuple[int, ...]) -> str | None:
    """Why the user cannot make ``path`` their working directory (``None``: they can).

    Asked of the kernel, not worked out from mode bits (ACLs, root-squashed mounts): a
    forked child takes the user's identity and tries.
    """
    if os.geteuid() != 0 or uid == 0:
        return None if os.access(path, os.X_OK) else os.strerror(13)
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 0
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            os.chdir(path)
        except OSError as error:
            code = error.errno or 1
        except BaseException:
            code = 1
        os._exit(min(code, 255))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return None if code == 0 else os.strerror(code)
