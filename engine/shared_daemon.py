"""The daemon's shared mode: its folders, and every request checked against its caller.

:func:`answer` sits between the socket and :meth:`engine.daemon.Server.dispatch`. On
any daemon it serves ``share`` and refuses a submit past the submitter's most runs queued
(``[shared.limits] queued``; nothing is limited unless configured). On a shared daemon it
also refuses what the caller may not do (:mod:`engine.access`), keeps what a submit said
about its submitter for the launch, checks the submitter can enter the run's cwd, and
leaves out of ``results`` the runs of others.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import stat
from typing import TYPE_CHECKING, Any

from engine import access, reservations, userfiles
from engine.paths import Home
from engine.protocol import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_NO_SUCH_RUN, RequestError
from engine.units import UnitError, format_duration, parse_duration

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
    engine = server.engine
    settings = server.config.settings.shared
    conn = engine.store.conn
    shared = server.config.shared
    admin_group = settings.admin_group
    if shared:
        caller = access.caller_of(peer, admin_group)
    else:  # one user: whoever may reach the socket owns everything behind it
        uid, gid = (peer[1], peer[2]) if peer else (os.getuid(), os.getgid())
        caller = access.Caller(uid=uid, gid=gid, name=access.user_name(uid), admin=True)
    if op == "share":
        return share_report(engine, engine.clock())
    if op in RESERVATION_OPS:
        return reservation_op(server, op, args, caller)
    if shared:
        access.check(
            op, args, caller,
            run_owner=lambda run_id: _owner(conn, "SELECT uid, user FROM runs WHERE id = ?", run_id),
            schedule_owner=lambda schedule_id: _schedule_owner(conn, schedule_id),
            admin_group=admin_group,
        )
    options: list[reservations.RunOptions] = []
    if op in SUBMIT_OPS:
        if shared:
            _check_cwds(op, args, caller)
        if peer is not None or shared:
            check_queued_limits(conn, settings, caller.uid, caller.name, _requests(op, args))
        options = [run_options(settings, request) for request in _requests(op, args)]
    result = server.dispatch(op, args, peer)
    if op == "submit":
        _submitted(conn, shared, caller, [result], [args], options)
    elif op == "submit_many":
        _submitted(conn, shared, caller, result, _requests(op, args), options)
    elif op == "show" and isinstance(result, dict):
        found = reservations.options_of(conn, [result["id"]]).get(result["id"], reservations.RunOptions())
        result = dict(result, pool=found.pool, preemptible=found.preemptible)
    elif op == "results" and shared and not caller.admin and isinstance(result, dict):
        mine = {row[0] for row in conn.execute("SELECT id FROM runs WHERE uid = ?", (caller.uid,))}
        result = dict(result, runs=[row for row in result.get("runs", []) if row.get("id") in mine])
    return result


def _submitted(conn, shared: bool, caller: access.Caller, runs: list, requests: list, options: list) -> None:
    for run, request, chosen in zip(runs, requests, options):
        if shared:
            access.record_owner(conn, run["id"], gid=caller.gid, umask=request.get("umask"))
        reservations.record_options(conn, run["id"], chosen)


def run_options(settings, request: dict[str, Any]) -> reservations.RunOptions:
    """A submit's ``pool`` and ``preemptible``, checked; a pool run's time limit is set to
    the pool's longest when it gives none (the request is changed in place)."""
    pool, preemptible = request.get("pool"), request.get("preemptible", False)
    if not isinstance(preemptible, bool):
        raise RequestError("preemptible must be true or false; nothing was queued", EXIT_BAD_INPUT)
    if pool is None:
        return reservations.RunOptions(None, preemptible)
    if not isinstance(pool, str) or pool not in settings.pools:
        known = ", ".join(sorted(settings.pools)) or "none is configured ([shared.pools] in the config)"
        raise RequestError(f"--pool {pool!r}: no such pool (pools: {known}); nothing was queued", EXIT_BAD_INPUT)
    config = settings.pools[pool]
    # The envelope comes parsed ("envelope") or, from a newer CLI, as typed ("options").
    envelope = dict(request["envelope"]) if isinstance(request.get("envelope"), dict) else {}
    typed = request.get("options") if isinstance(request.get("options"), dict) else None
    gpus, limit = envelope.get("gpus"), envelope.get("time_limit_s")
    if typed is not None:
        with contextlib.suppress(TypeError, ValueError, UnitError):  # the engine reports a bad value itself
            gpus = int(typed["gpus"]) if typed.get("gpus") is not None else gpus
            limit = parse_duration(str(typed["time"])) if typed.get("time") else limit
    if isinstance(gpus, int) and gpus > len(config.gpus):
        raise RequestError(f"asks {gpus} GPUs; pool {pool} has {len(config.gpus)}; nothing was queued", EXIT_BAD_INPUT)
    if config.max_time_s is not None:
        if limit is None:
            if typed is not None:
                request["options"] = dict(typed, time=format_duration(config.max_time_s))
            else:
                request["envelope"] = dict(envelope, time_limit_s=config.max_time_s)
        elif isinstance(limit, (int, float)) and limit > config.max_time_s:
            raise RequestError(
                f"pool {pool} allows runs of at most {format_duration(config.max_time_s)}; "
                f"give --time {format_duration(config.max_time_s)} or less; nothing was queued", EXIT_BAD_INPUT,
            )
    return reservations.RunOptions(pool, preemptible)


RESERVATION_OPS = ("reserve", "reservations", "unreserve")


def reservation_op(server: Server, op: str, args: dict[str, Any], caller: access.Caller) -> Any:
    engine = server.engine
    conn = engine.store.conn
    settings = server.config.settings.shared
    now = engine.clock()
    if op == "reservations":
        return [reservation.to_json() for reservation in reservations.current(conn, now)]
    if op == "unreserve":
        reservation_id = access._id(args.get("id"), "reservation", "runyard reservations")
        found = reservations.get(conn, reservation_id)
        if found is None:
            raise RequestError(f"no reservation {reservation_id}; `runyard reservations` lists them", EXIT_NO_SUCH_RUN)
        if not caller.admin and caller.name not in (found.user, found.created_by):
            raise RequestError(f"reservation {reservation_id} is {found.user}'s: only they, who made it, "
                               "or an admin may remove it", EXIT_ERROR)
        reservations.cancel(conn, reservation_id)
        server.wake()
        return dict(found.to_json(), cancelled=True)
    count, start, duration = args.get("gpus"), args.get("start"), args.get("duration_s")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RequestError("--gpus must be a whole number of GPUs, 1 or more", EXIT_BAD_INPUT)
    if isinstance(start, bool) or not isinstance(start, (int, float)) or start != start:
        raise RequestError("--from must be a time (a Unix time in the request)", EXIT_BAD_INPUT)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 < duration < 366 * 86400:
        raise RequestError("--for must be a duration longer than 0s and shorter than a year", EXIT_BAD_INPUT)
    start = max(float(start), now)
    end = start + float(duration)
    user = args.get("user") or caller.name
    if not isinstance(user, str):
        raise RequestError("--user must be a user name", EXIT_BAD_INPUT)
    if user != caller.name and not caller.admin:
        raise RequestError(f"only an admin may reserve for another user ({user}); reserve for yourself", EXIT_ERROR)
    if server.config.shared:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise RequestError(f"--user {user}: no such user on this box", EXIT_BAD_INPUT) from None
    cap = settings.limits_of_user(user).gpus
    if cap is not None and count > cap:
        raise RequestError(f"{user} may hold at most {cap} GPUs at once; a reservation of {count} is refused",
                           EXIT_ERROR)
    box = engine.sample().box
    indices = [gpu.index for gpu in box.gpus if gpu.available]
    taken = set(settings.pooled_gpus)
    for other in reservations.current(conn, now):
        if other.start < end and start < other.end:
            taken.update(other.gpus)
    gpus = reservations.choose_gpus(count, indices, taken)
    if gpus is None:
        free = len([index for index in indices if index not in taken])
        raise RequestError(
            f"asks {count} GPUs from {_stamp(start)} for {format_duration(duration)}; "
            f"only {free} of this box's {len(box.gpus)} are outside pools and other reservations then "
            "(`runyard reservations` lists them)", EXIT_ERROR,
        )
    made = reservations.add(conn, user=user, gpus=gpus, start=start, end=end, created_by=caller.name, now=now)
    server.wake()
    return made.to_json()


def _stamp(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def _requests(op: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The submit requests in a submit, submit_many or schedule request."""
    if op == "submit_many":
        runs = args.get("runs")
        return [run for run in runs if isinstance(run, dict)] if isinstance(runs, list) else []
    if op == "schedule":
        template = args.get("template")
        return [template] if isinstance(template, dict) else []
    return [args]


def check_queued_limits(conn, settings, uid: int, user: str, requests: list[dict[str, Any]]) -> None:
    """Refuse a submit that would take a user (or a group of theirs) past its most runs
    queued; one line, and nothing is queued."""
    from engine.shared_policy import groups_of

    adding = len(requests)
    if not adding:
        return
    cap = settings.limits_of_user(user).queued
    if cap is not None:
        queued = conn.execute("SELECT COUNT(*) FROM runs WHERE state = 'queued' AND uid = ?", (uid,)).fetchone()[0]
        if queued + adding > cap:
            raise RequestError(
                f"{user} has {queued} runs queued and may have at most {cap}; nothing was queued "
                "(wait for some to start, or cancel some)", EXIT_ERROR,
            )
    capped = {name for name, limits in settings.groups.items() if limits.queued is not None}
    for group in sorted(groups_of(user) & capped):
        members = _members(group)
        marks = ",".join("?" * len(members))
        queued = conn.execute(
            f"SELECT COUNT(*) FROM runs WHERE state = 'queued' AND user IN ({marks})", tuple(members)
        ).fetchone()[0]
        cap = settings.groups[group].queued
        if queued + adding > cap:
            raise RequestError(
                f"group {group} has {queued} runs queued and may have at most {cap}; nothing was queued", EXIT_ERROR
            )


def _members(group: str) -> list[str]:
    """The group's members: those listed, and those whose primary group it is."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return []
    members = set(entry.gr_mem)
    members.update(user.pw_name for user in pwd.getpwall() if user.pw_gid == entry.gr_gid)
    return sorted(members)


def share_report(engine, now: float) -> dict[str, Any]:
    """``runyard share``: each user's decayed usage, fair-share standing, runs and limits."""
    from dataclasses import asdict

    from engine import fairshare
    from engine.shared_policy import groups_of, usage_book

    settings = engine.config.shared
    shares = usage_book(engine).shares(engine.store.conn, now)
    counts: dict[str, dict[str, int]] = {}
    for user, uid, state, count, gpus in engine.store.conn.execute(
        "SELECT user, uid, state, COUNT(*), SUM(json_array_length(COALESCE(gpus, '[]'))) FROM runs "
        "WHERE state IN ('queued', 'running') GROUP BY user, uid, state"
    ):
        name = user or (f"uid {uid}" if uid is not None else "?")
        entry = counts.setdefault(name, {"queued": 0, "running": 0, "gpus_held": 0})
        entry[state] += count
        if state == "running":
            entry["gpus_held"] += gpus or 0
    users = sorted(set(shares) | set(counts))
    places = fairshare.standing({user: shares[user].score if user in shares else 0.0 for user in users})
    rows = []
    for user in users:
        share = shares.get(user)
        limits = {}
        if not settings.limits_of_user(user).empty:
            limits[f"user {user}"] = settings.limits_of_user(user)
        if settings.groups:
            for group in sorted(groups_of(user) & set(settings.groups)):
                limits[f"group {group}"] = settings.groups[group]
        rows.append({
            "user": user,
            "gpu_hours": share.gpu_hours if share else 0.0,
            "cpu_hours": share.cpu_hours if share else 0.0,
            "score": share.score if share else 0.0,
            "standing": places[user],
            **counts.get(user, {"queued": 0, "running": 0, "gpus_held": 0}),
            "limits": {account: {key: value for key, value in asdict(limit).items() if value is not None}
                       for account, limit in limits.items()},
        })
    rows.sort(key=lambda row: (row["standing"], row["user"]))
    return {"half_life_s": settings.half_life_s, "cpu_hour_weight": settings.cpu_hour_weight, "users": rows}


def _check_cwds(op: str, args: dict[str, Any], caller: access.Caller) -> None:
    """A run its user could not start in is refused now, not at its launch; so is a
    checkpoint folder they could not make or enter (root reads it to say what to resume
    from, and must not read other users' folders for them)."""
    groups: tuple[int, ...] | None = None
    for request in _requests(op, args):
        folders = [("cwd", request.get("cwd"))]
        if isinstance(request.get("checkpoint_dir"), str):
            folders.append(("--checkpoint-dir", _nearest_existing(request["checkpoint_dir"])))
        for what, folder in folders:
            if not isinstance(folder, str) or not os.path.isabs(folder) or not os.path.isdir(folder):
                continue  # the engine's own checks say what is wrong with it
            if groups is None:
                try:
                    entry = pwd.getpwuid(caller.uid)
                except KeyError:
                    raise RequestError(f"uid {caller.uid} has no account on this box; nothing was queued",
                                       EXIT_ERROR) from None
                groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
            problem = access.cannot_enter(folder, caller.uid, caller.gid, groups)
            if problem is not None:
                hint = "pass --cwd with a folder you can enter" if what == "cwd" else "choose a folder of yours"
                raise RequestError(f"{caller.name} cannot enter {folder} ({problem}) for its {what}; {hint}",
                                   EXIT_BAD_INPUT)


def _nearest_existing(path: str) -> str:
    """``path``, or its nearest folder above that exists (where the run would make it)."""
    current = os.path.abspath(path)
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    return current


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
