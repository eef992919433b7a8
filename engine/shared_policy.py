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

from engine import fairshare
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
        accounts = self.accounts.get(user_of(run))
        return {"accounts": accounts} if accounts else {}

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
    return result
