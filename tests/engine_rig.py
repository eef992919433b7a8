"""An engine on a real SQLite file with everything else faked: a launcher that runs
nothing (a test says when each run exits), a fixed host, no GPUs, an injected clock and
random source. Scheduling behaviour is tested through it without processes or sleeping."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.launcher import Launched, Observation
from engine.model import Run
from engine.probes.host import HostSample
from engine.store import sql
from engine.store.runs import RunStore
from engine.store.schema import migrate

G = 1 << 30


class RecordingRandom(random.Random):
    """Draws like a seeded Random and remembers each upper bound it was asked for."""

    def __init__(self) -> None:
        super().__init__(7)
        self.caps: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.caps.append(b)
        return super().uniform(a, b)


@dataclass
class FakeLauncher:
    """Runs nothing: a test says when each launched run exits, and with what."""

    launches: list[tuple[int, int]] = field(default_factory=list)
    """(run id, attempt) of every launch."""
    exits: dict[int, int] = field(default_factory=dict)

    def launch(self, run: Run, env, *, cores=None) -> Launched:
        self.launches.append((run.id, run.attempt))
        self.envs = getattr(self, "envs", []) + [dict(env)]
        return Launched(shim_pid=10_000 + len(self.launches), shim_started_at=1.0)

    def observe(self, run: Run) -> Observation:
        if run.id in self.exits:
            code = self.exits.pop(run.id)
            return Observation("exited", exit_code=code, ended_at=None)
        return Observation("running")

    def signal(self, run: Run, sig: int) -> bool:
        return True

    def exit_fd(self, run: Run):
        return None


class FixedHost:
    def sample(self) -> HostSample:
        return HostSample(cpus=8, cpu_percent=0, mem_total=64 * G, mem_available=64 * G, disk_total=G << 10,
                          disk_free=G << 10, load1=0)


class NoGpus:
    def sample(self):
        return ()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine_on_file(tmp_path: Path, launcher, clock: Clock, **options) -> tuple[Engine, object]:
    """An engine on a fresh database in ``tmp_path``, a fixed host and no GPUs; returns it
    and the connection to close."""
    db_path = tmp_path / "runyard.db"
    migrate(db_path)
    conn = sql.connect(db_path)
    store = RunStore(conn, tmp_path / "runs")
    options.setdefault("gpu_source", "none")
    return Engine(store, launcher, FixedHost(), NoGpus(), clock=clock, boot_time=lambda: 0.0, **options), conn


@pytest.fixture
def rig(tmp_path: Path):
    clock = Clock()
    launcher = FakeLauncher()
    rng = RecordingRandom()
    engine, conn = engine_on_file(tmp_path, launcher, clock, rng=rng)
    yield engine, launcher, clock, rng
    conn.close()


def submit(engine: Engine, tmp_path: Path, **request) -> int:
    base = {"argv": ["/bin/true"], "cwd": str(tmp_path), "env": {}, "envelope": {"mem_bytes": G}}
    base.update(request)
    return engine.submit(base, uid=None, user=None).id


