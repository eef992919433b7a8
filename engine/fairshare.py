"""Fair share: who used the box recently, with old use fading by a half-life.

A user's *usage* is the GPU-hours and CPU-hours their runs held (envelope times wall time,
each attempt from its start to its end, a running one up to now), every moment weighted
by ``2 ** -(age / half_life)``: an hour used one half-life ago counts half an hour. Their
*score* is GPU-hours plus ``cpu_hour_weight`` times CPU-hours. Among queued runs of equal
priority, the user with the lower score goes first (:func:`engine.policy.queue_order`).

The functions here are pure; :class:`UsageBook` reads the history from the database and
keeps a running total, so a tick on a long history costs a query of what is new.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HOUR_S = 3600.0
HORIZON_HALF_LIVES = 12
"""Attempts that ended longer ago than this many half-lives count for under 0.03%: ignored."""


@dataclass(frozen=True)
class Usage:
    """One attempt's hold on the box."""

    user: str
    started_at: float
    ended_at: float | None
    """``None`` while it runs."""
    gpus: float
    cpus: float


@dataclass(frozen=True)
class Share:
    user: str
    gpu_hours: float
    cpu_hours: float
    score: float


def decayed_hours(started_at: float, ended_at: float, now: float, half_life_s: float) -> float:
    """Hours between ``started_at`` and ``ended_at`` (both at or before ``now``), each
    moment weighted by ``2 ** -((now - t) / half_life_s)``: the exact integral."""
    if ended_at <= started_at:
        return 0.0
    rate = math.log(2) / half_life_s
    # ∫ exp(-rate (now - t)) dt from start to end
    return (math.exp(-rate * (now - ended_at)) - math.exp(-rate * (now - started_at))) / rate / HOUR_S


def decay(value: float, elapsed_s: float, half_life_s: float) -> float:
    """``value`` aged by ``elapsed_s``."""
    return value * 2.0 ** (-max(0.0, elapsed_s) / half_life_s)


def shares(usages: Iterable[Usage], now: float, *, half_life_s: float, cpu_hour_weight: float) -> dict[str, Share]:
    """Each user's decayed usage and score at ``now``."""
    gpu: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for usage in usages:
        end = now if usage.ended_at is None else min(usage.ended_at, now)
        hours = decayed_hours(min(usage.started_at, end), end, now, half_life_s)
        gpu[usage.user] = gpu.get(usage.user, 0.0) + hours * usage.gpus
        cpu[usage.user] = cpu.get(usage.user, 0.0) + hours * usage.cpus
    return {
        user: Share(user, gpu[user], cpu[user], gpu[user] + cpu_hour_weight * cpu[user]) for user in gpu
    }


def standing(scores: Mapping[str, float]) -> dict[str, int]:
    """1 for the user who goes first, then 2, ...; equal scores share a place."""
    places: dict[str, int] = {}
    ordered = sorted(scores.items(), key=lambda item: (item[1], item[0]))
    place, previous = 0, None
    for index, (user, score) in enumerate(ordered):
        if previous is None or not math.isclose(score, previous, rel_tol=1e-9, abs_tol=1e-12):
            place = index + 1
        places[user] = place
        previous = score
    return places


# --------------------------------------------------------------------------- the book


def _user_of(row: sqlite3.Row) -> str:
    return row["user"] or (f"uid {row['uid']}" if row["uid"] is not None else "?")


def _sizes(envelope_json: str | None, gpus_json: str | None) -> tuple[float, float]:
    """GPUs held (the cards it was given, else what it asked) and CPUs, of one attempt."""
    try:
        envelope = json.loads(envelope_json) if envelope_json else {}
    except ValueError:
        envelope = {}
    try:
        cards = len(json.loads(gpus_json)) if gpus_json else 0
    except ValueError:
        cards = 0
    return float(cards or envelope.get("gpus") or 0), float(envelope.get("cpus") or 0)


class UsageBook:
    """Decayed usage per user from the ``attempts`` history plus the runs running now.

    Ended attempts are summed once, into a total kept at one moment and aged from there;
    each call adds only the attempts recorded since (by rowid). Running runs are added
    fresh on every call: their ends move.
    """

    def __init__(self, half_life_s: float, cpu_hour_weight: float) -> None:
        self.half_life_s = half_life_s
        self.cpu_hour_weight = cpu_hour_weight
        self._gpu: dict[str, float] = {}
        self._cpu: dict[str, float] = {}
        self._at: float | None = None
        self._rowid = 0

    def shares(self, conn: sqlite3.Connection, now: float) -> dict[str, Share]:
        if self._at is None:
            self._at = now
        elapsed = now - self._at
        for book in (self._gpu, self._cpu):
            for user in book:
                book[user] = decay(book[user], elapsed, self.half_life_s)
        self._at = now
        horizon = now - HORIZON_HALF_LIVES * self.half_life_s
        rows = conn.execute(
            "SELECT a.rowid AS rowid, a.started_at, a.ended_at, a.envelope, a.gpus, r.user, r.uid "
            "FROM attempts a JOIN runs r ON r.id = a.run_id WHERE a.rowid > ? ORDER BY a.rowid",
            (self._rowid,),
        ).fetchall()
        for row in rows:
            self._rowid = max(self._rowid, row["rowid"])
            if row["started_at"] is None or row["ended_at"] is None or row["ended_at"] < horizon:
                continue
            gpus, cpus = _sizes(row["envelope"], row["gpus"])
            self._add(_user_of(row), row["started_at"], row["ended_at"], now, gpus, cpus)
        gpu, cpu = dict(self._gpu), dict(self._cpu)
        running = conn.execute(
            "SELECT started_at, envelope, gpus, user, uid FROM runs WHERE state = 'running' AND started_at IS NOT NULL"
        ).fetchall()
        for row in running:
            gpus, cpus = _sizes(row["envelope"], row["gpus"])
            hours = decayed_hours(min(row["started_at"], now), now, now, self.half_life_s)
            user = _user_of(row)
            gpu[user] = gpu.get(user, 0.0) + hours * gpus
            cpu[user] = cpu.get(user, 0.0) + hours * cpus
        return {
            user: Share(user, gpu.get(user, 0.0), cpu.get(user, 0.0),
                        gpu.get(user, 0.0) + self.cpu_hour_weight * cpu.get(user, 0.0))
            for user in set(gpu) | set(cpu)
        }

    def _add(self, user: str, started_at: float, ended_at: float, now: float, gpus: float, cpus: float) -> None:
        end = min(ended_at, now)
        hours = decayed_hours(min(started_at, end), end, now, self.half_life_s)
        self._gpu[user] = self._gpu.get(user, 0.0) + hours * gpus
        self._cpu[user] = self._cpu.get(user, 0.0) + hours * cpus
