"""What the shared box adds to admission's inputs: fair-share scores, limits, set-aside GPUs.

:func:`inputs` is called by the engine each time it admits; it turns the config's
``[shared]`` table and the database into plain values for :func:`engine.policy.decide`
(which stays pure). With nothing configured and one user it costs next to nothing.
"""

from __future__ import annotations

import grp
import os
import pwd
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine import fairshare, reservations
from engine.model import Run
from engine.policy import Limit
from engine.shared_config import Limits, SharedSettings


@dataclass
class AdmissionInputs:
    shares: dict[str, float] = field(default_factory=dict)
    """User -> fair-share score, when at least two users have runs queued."""
    accounts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """User -> the accounts their runs count against (only limited ones)."""
    limits: dict[str, Limit] = field(default_factory=dict)
    forbid: dict[int, frozenset[int]] = field(default_factory=dict)
    """Run id -> GPU indices it may not get."""
    preemptible: set[int] = field(default_factory=set)
    """Running runs that may be preempted."""

    def queued(self, run: Run) -> dict[str, Any]:
        """Extra :class:`engine.policy.QueuedRun` fields of ``run``."""
        extra: dict[str, Any] = {}
        user = user_of(run)
        if user in self.shares:
            extra["share"] = self.shares[user]
        if self.accounts.get(user):
            extra["accounts"] = self.accounts[user]
        if run.id in self.forbid:
            extra["forbid"] = self.forbid[run.id]
        return extra

    def holding(self, run: Run) -> dict[str, Any]:
        """Extra :class:`engine.policy.Holding` fields of ``run``."""
        extra: dict[str, Any] = {}
        accounts = self.accounts.get(user_of(run))
        if accounts:
            extra["accounts"] = accounts
        if run.id in self.preemptible and run.stop_request is None:
            extra.update(priority=run.priority, preemptible=True)
        return extra

    def options(self) -> dict[str, Any]:
        """Extra keyword arguments of :func:`engine.policy.decide`."""
        return {"limits": self.limits} if self.limits else {}


def user_of(run: Run) -> str:
    return run.user or (f"uid {run.uid}" if run.uid is not None else "?")


def to_limit(limits: Limits) -> Limit:
    return Limit(gpus=limits.gpus, cpus=limits.cpus, mem_bytes=limits.mem_bytes)


def groups_of(user: str) -> set[str]:
    """Names of the Unix groups ``user`` belongs to (primary and supplementary)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return set()
    names = set()
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def accounts_of(user: str, settings: SharedSettings) -> tuple[tuple[str, ...], dict[str, Limit]]:
    """The limited accounts a user's runs count against, and their limits."""
    accounts: list[str] = []
    limits: dict[str, Limit] = {}
    own = settings.limits_of_user(user)
    if not own.empty:
        accounts.append(f"user {user}")
        limits[f"user {user}"] = to_limit(own)
    if settings.groups:
        for group in sorted(groups_of(user) & set(settings.groups)):
            limit = settings.groups[group]
            if not limit.empty:
                accounts.append(f"group {group}")
                limits[f"group {group}"] = to_limit(limit)
    return tuple(accounts), limits


class _State:
    def __init__(self, settings: SharedSettings) -> None:
        self.book = fairshare.UsageBook(settings.half_life_s, settings.cpu_hour_weight)


_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def usage_book(engine: Any) -> fairshare.UsageBook:
    """The engine's running totals of usage (kept between ticks)."""
    settings = engine.config.shared
    state = _states.get(engine)
    if state is None or state.book.half_life_s != settings.half_life_s:
        state = _states[engine] = _State(settings)
    return state.book


def inputs(engine: Any, queued: Iterable[Run], running: Iterable[Run], now: float) -> AdmissionInputs:
    """Admission's extra inputs for this tick (see the module docstring)."""
    settings: SharedSettings = engine.config.shared
    queued, running = list(queued), list(running)
    result = AdmissionInputs()
    users = {user_of(run) for run in queued}
    if len(users) > 1:
        shares = usage_book(engine).shares(engine.store.conn, now)
        result.shares = {user: shares[user].score if user in shares else 0.0 for user in users}
    if not settings.limits.empty or settings.users or settings.groups:
        for user in users | {user_of(run) for run in running}:
            accounts, limits = accounts_of(user, settings)
            if accounts:
                result.accounts[user] = accounts
                result.limits.update(limits)
    conn = engine.store.conn
    options = reservations.options_of(conn, [run.id for run in queued] + [run.id for run in running])
    result.preemptible = {run.id for run in running if options.get(run.id, NO_OPTIONS).preemptible}
    held = reservations.current(conn, now)
    if settings.pools or held:
        indices = [gpu.index for gpu in engine.sample().box.gpus]
        for run in queued:
            banned = reservations.forbidden(
                user=user_of(run), time_limit_s=run.envelope.time_limit_s, pool=options.get(run.id, NO_OPTIONS).pool,
                now=now, reservations=held, pools=settings.pools, gpu_indices=indices,
            )
            if banned:
                result.forbid[run.id] = banned
    return result


NO_OPTIONS = reservations.RunOptions()


def preempt(engine: Any, victims_by_run: dict[int, tuple[int, ...]], now: float) -> None:
    """Ask each victim to stop (SIGTERM now, SIGKILL after its grace) so that the run that
    needs its resources can start; :func:`finish_preempted` requeues it when it ends."""
    from engine.model import RunState

    for run_id, victims in victims_by_run.items():
        for victim_id in victims:
            victim = engine.store.get(victim_id)
            if victim is None or victim.state is not RunState.RUNNING or victim.stop_request is not None:
                continue
            why = f"preempted for run {run_id} (priority {engine.get(run_id).priority})"
            engine._request_stop(victim, "preempt", why, now)
            engine._supervise(engine.store.get(victim_id) or victim, now)


def finish_preempted(engine: Any, run: Run, observation: Any, now: float) -> bool:
    """Requeue a preempted run that ended, as a new attempt that resumes from its newest
    checkpoint; no retry is used up. ``False`` for any other run."""
    from engine.engine import _fresh_attempt_fields
    from engine.model import RunState

    if run.stop_request != "preempt":
        return False
    engine._term_delivered.discard(run.id)
    how = f"killed by {observation.signal}" if observation.signal else f"exit code {observation.exit_code}"
    reason = f"{run.stop_detail}; {how}"
    record = {"ended_at": observation.ended_at or now, "state": RunState.QUEUED.value, "reason": reason,
              "exit_code": observation.exit_code, "signal": observation.signal, "failure_class": "preempted"}
    next_attempt = run.attempt + 1
    engine.store.end_attempt(
        run, RunState.QUEUED, f"waiting: attempt {next_attempt}, {run.stop_detail}",
        now=now, record=record, failure_class="preempted", **_fresh_attempt_fields(run, next_attempt), not_before=None,
    )
    return True
