"""The config file's ``[shared]`` table: who administers the box, fair share, limits, pools.

::

    [shared]
    admin_group = "runyard-admin"   # members may act on every run (root always may)
    fair_share_half_life = "7d"     # usage this old counts half as much
    cpu_hour_weight = 0.05          # a CPU-hour counts as this many GPU-hours in fair share

    [shared.limits]                 # each user, unless [shared.users.NAME] says otherwise
    gpus = 4                        # held at once by running runs
    cpus = 32
    mem = "256G"
    queued = 200                    # runs queued (held ones too); more are refused

    [shared.users.alice]            # this user's own limits (keys as in [shared.limits])
    gpus = 8

    [shared.groups.students]        # a Unix group: its members together
    gpus = 2

    [shared.pools.interactive]      # GPUs set aside: only runs with --pool interactive use them
    gpus = [6, 7]
    max_time = "2h"                 # a pool run's --time is at most this (and defaults to it)

Stdlib only (the CLI reads the config for an offline submit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.units import UnitError, parse_duration, parse_size

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
DEFAULT_HALF_LIFE_S = 7 * 86400.0
DEFAULT_CPU_HOUR_WEIGHT = 0.05
"""A GPU-hour is worth about twenty CPU-hours on a typical GPU box: cost and scarcity."""


class SharedConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Limits:
    """Caps on what one user (or one group's members together) may hold or queue;
    ``None``: no cap."""

    gpus: int | None = None
    cpus: float | None = None
    mem_bytes: int | None = None
    queued: int | None = None

    def merged(self, other: Limits) -> Limits:
        """``other``'s values where it has them, else this one's."""
        return Limits(
            gpus=other.gpus if other.gpus is not None else self.gpus,
            cpus=other.cpus if other.cpus is not None else self.cpus,
            mem_bytes=other.mem_bytes if other.mem_bytes is not None else self.mem_bytes,
            queued=other.queued if other.queued is not None else self.queued,
        )

    @property
    def empty(self) -> bool:
        return self == Limits()


@dataclass(frozen=True)
class PoolConfig:
    name: str
    gpus: tuple[int, ...]
    max_time_s: float | None = None


@dataclass(frozen=True)
class SharedSettings:
    admin_group: str | None = None
    half_life_s: float = DEFAULT_HALF_LIFE_S
    cpu_hour_weight: float = DEFAULT_CPU_HOUR_WEIGHT
    limits: Limits = field(default_factory=Limits)
    users: Mapping[str, Limits] = field(default_factory=dict)
    groups: Mapping[str, Limits] = field(default_factory=dict)
    pools: Mapping[str, PoolConfig] = field(default_factory=dict)

    def limits_of_user(self, name: str | None) -> Limits:
        own = self.users.get(name) if name else None
        return self.limits.merged(own) if own is not None else self.limits

    @property
    def pooled_gpus(self) -> frozenset[int]:
        return frozenset(index for pool in self.pools.values() for index in pool.gpus)

    @classmethod
    def from_table(cls, table: Any, path: Path | str | None = None) -> SharedSettings:
        """Parse ``[shared]``; raises :class:`SharedConfigError` naming the file and key."""
        where = f"{path}: " if path else ""

        def fail(key: str, message: str) -> SharedConfigError:
            return SharedConfigError(f"{where}shared.{key}: {message}")

        if not isinstance(table, dict):
            raise SharedConfigError(f"{where}[shared] must be a table")
        known = {"admin_group", "fair_share_half_life", "cpu_hour_weight", "limits", "users", "groups", "pools"}
        for key in table:
            if key not in known:
                raise fail(key, f"unknown key (known: {', '.join(sorted(known))})")
        admin_group = table.get("admin_group")
        if admin_group is not None and (not isinstance(admin_group, str) or not admin_group):
            raise fail("admin_group", "write a group name, e.g. \"runyard-admin\"")
        half_life_s = _duration(table.get("fair_share_half_life"), DEFAULT_HALF_LIFE_S, "fair_share_half_life", fail)
        if half_life_s <= 0:
            raise fail("fair_share_half_life", "must be longer than 0s")
        weight = table.get("cpu_hour_weight", DEFAULT_CPU_HOUR_WEIGHT)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise fail("cpu_hour_weight", f"write a number of 0 or more, got {weight!r}")
        limits = _limits(table.get("limits", {}), "limits", fail)
        users = _named(table.get("users", {}), "users", fail)
        groups = _named(table.get("groups", {}), "groups", fail)
        pools = _pools(table.get("pools", {}), fail)
        return cls(admin_group=admin_group, half_life_s=half_life_s, cpu_hour_weight=float(weight),
                   limits=limits, users=users, groups=groups, pools=pools)


def _duration(value: Any, default: float, key: str, fail) -> float:
    if value is None:
        return default
    try:
        return parse_duration(str(value))
    except UnitError as error:
        raise fail(key, str(error)) from None


def _limits(table: Any, key: str, fail) -> Limits:
    if not isinstance(table, dict):
        raise fail(key, "must be a table of gpus, cpus, mem, queued")
    for name in table:
        if name not in ("gpus", "cpus", "mem", "queued"):
            raise fail(f"{key}.{name}", "unknown key (known: cpus, gpus, mem, queued)")
    values: dict[str, Any] = {}
    for name in ("gpus", "queued"):
        if name in table:
            value = table[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail(f"{key}.{name}", f"write a whole number of 0 or more, got {value!r}")
            values[name] = value
    if "cpus" in table:
        value = table["cpus"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise fail(f"{key}.cpus", f"write a number of 0 or more, got {value!r}")
        values["cpus"] = float(value)
    if "mem" in table:
        try:
            values["mem_bytes"] = parse_size(str(table["mem"]))
        except UnitError as error:
            raise fail(f"{key}.mem", str(error)) from None
    return Limits(**values)


def _named(table: Any, key: str, fail) -> dict[str, Limits]:
    if not isinstance(table, dict):
        raise fail(key, "must be a table of NAME = {gpus = ..., ...}")
    found = {}
    for name, limits in table.items():
        if not NAME_RE.fullmatch(name):
            raise fail(f"{key}.{name}", "not a user or group name")
        found[name] = _limits(limits, f"{key}.{name}", fail)
    return found


def _pools(table: Any, fail) -> dict[str, PoolConfig]:
    if not isinstance(table, dict):
        raise fail("pools", "must be a table of NAME = {gpus = [...], max_time = ...}")
    pools: dict[str, PoolConfig] = {}
    taken: dict[int, str] = {}
    for name, pool in table.items():
        if not NAME_RE.fullmatch(name):
            raise fail(f"pools.{name}", "a pool name is letters, digits, _ . - (not starting with a digit)")
        if not isinstance(pool, dict):
            raise fail(f"pools.{name}", "must be a table with gpus = [...]")
        for key in pool:
            if key not in ("gpus", "max_time"):
                raise fail(f"pools.{name}.{key}", "unknown key (known: gpus, max_time)")
        gpus = pool.get("gpus")
        if (not isinstance(gpus, list) or not gpus
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in gpus)):
            raise fail(f"pools.{name}.gpus", "write a list of GPU indices, e.g. [6, 7]")
        for index in gpus:
            if index in taken:
                raise fail(f"pools.{name}.gpus", f"GPU {index} is already in pool {taken[index]}")
            taken[index] = name
        max_time = pool.get("max_time")
        max_time_s = _duration(max_time, 0.0, f"pools.{name}.max_time", fail) if max_time is not None else None
        pools[name] = PoolConfig(name=name, gpus=tuple(sorted(set(gpus))), max_time_s=max_time_s)
    return pools
