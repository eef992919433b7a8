"""Per-run usage sampling on a real process tree: CPU, memory, GPU attribution, disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from engine import usage as usage_module
from engine.probes.gpu import GpuProcess, GpuSample
from engine.usage import RunUsage, UsageSampler, folder_bytes
from helpers import wait_until

G = 1 << 30
M = 1 << 20
CHILD_BYTES = 40 * M

RUN_SCRIPT = f"""
import os, sys, time

def work():
    block = b"\\x01" * {CHILD_BYTES}  # written, so every page is resident
    while True:
        spin_until = time.monotonic() + 0.05
        while time.monotonic() < spin_until:
            pass
        time.sleep(0.05)

children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        work()
        os._exit(0)
    children.append(pid)
print(*children, flush=True)
time.sleep(600)
"""


@dataclass
class Tree:
    root: subprocess.Popen
    children: tuple[int, int]

    def kill(self) -> None:
        try:
            os.killpg(self.root.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.root.wait(timeout=20)


@pytest.fixture
def tree() -> Iterator[Tree]:
    """A run's root in its own session with two forked children that each hold 40 MiB
    and keep half a core busy; the whole group is killed afterwards."""
    root = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    running = Tree(root, (0, 0))
    try:
        first, second = (int(pid) for pid in root.stdout.readline().split())
        running.children = (first, second)
        yield running
    finally:
        running.kill()
        root.stdout.close()


def gpu(index: int, processes: tuple[GpuProcess, ...] = (), util: float | None = None, **changes) -> GpuSample:
    values = dict(
        index=index, name="g", uuid=None, mem_total=80 * G, mem_used=sum(p.used_mem or 0 for p in processes),
        util_percent=util, temperature_c=None, power_w=None, processes=processes,
    )
    values.update(changes)
    return GpuSample(**values)


def test_sampler_sees_the_whole_tree(tree: Tree, tmp_path: Path) -> None:
    sampler = UsageSampler()
    runs = {7: (tree.root.pid, [tmp_path])}

    def settled() -> RunUsage | None:
        reading = sampler.sample(runs, [], {}, now=1000.0)[7]
        return reading if reading.processes >= 3 and reading.rss_bytes >= 2 * CHILD_BYTES else None

    reading = wait_until(settled, message="the sampler to see 3 processes holding 80 MiB")
    assert reading.run_id == 7 and reading.at == 1000.0
    assert reading.processes == 3
    assert reading.gpu_mem_bytes == 0 and reading.gpu_util_percent is None
    # Two children spin half the time each: about one core in all, on a quiet box.
    busy = wait_until(
        lambda: (r := sampler.sample(runs, [], {}, now=1001.0)[7]).cpu_percent >= 20 and r,
        message="the sampler to see the children's CPU",
    )
    assert busy.cpu_percent <= 100.0 * (psutil.cpu_count() or 1) + 50


def test_first_reading_is_the_average_since_start(tree: Tree) -> None:
    # A fresh sampler has no earlier reading: it reports CPU time over each process's
    # age rather than 0, so a busy run never looks idle at first.
    reading = wait_until(
        lambda: (r := UsageSampler().sample({1: (tree.root.pid, [])}, [], {}, now=0.0)[1]).cpu_percent > 0 and r,
        message="a first reading above 0%",
    )
    assert reading.processes >= 1


def test_gpu_memory_is_the_trees_and_util_the_held_cards(tree: Tree) -> None:
    first, second = tree.children
    stranger = os.getpid()  # alive and on the "GPU", but not in the run
    gpus = [
        gpu(0, (GpuProcess(first, 3 * G), GpuProcess(stranger, 5 * G)), util=20.0),
        gpu(1, (GpuProcess(second, 1 * G), GpuProcess(tree.root.pid, None)), util=40.0),
        gpu(2, (GpuProcess(stranger, 7 * G),), util=90.0),
        gpu(3, available=False, unavailable_reason="GPU is lost"),
    ]
    runs = {1: (tree.root.pid, []), 2: (None, []), 3: (None, [])}
    held = {1: [0, 1], 2: [], 3: [3]}
    readings = wait_until(
        lambda: (r := UsageSampler().sample(runs, gpus, held, now=5.0))[1].processes >= 3 and r,
        message="the children to be in the tree",
    )
    assert readings[1].gpu_mem_bytes == 4 * G  # the stranger's 5G and 7G are not the run's
    assert readings[1].gpu_util_percent == 30.0  # GPUs 0 and 1; not GPU 2, which it does not hold
    assert readings[2].gpu_mem_bytes == 0 and readings[2].gpu_util_percent is None
    assert readings[3].gpu_util_percent is None  # its only card is lost
    assert readings[2].processes == 0 and readings[2].rss_bytes == 0


def test_vanished_processes_are_tolerated(tree: Tree) -> None:
    sampler = UsageSampler()
    runs = {1: (tree.root.pid, [])}
    wait_until(lambda: sampler.sample(runs, [], {}, now=0.0)[1].processes >= 3, message="3 processes")
    os.kill(tree.children[0], signal.SIGKILL)
    wait_until(lambda: sampler.sample(runs, [], {}, now=1.0)[1].processes == 2, message="one child to go")
    tree.kill()
    # SIGKILLed children take a moment to finish exiting; every reading meanwhile must work.
    gone = wait_until(
        lambda: (r := sampler.sample(runs, [], {}, now=2.0)[1]).processes == 0 and r, message="the tree to be gone"
    )
    assert (gone.rss_bytes, gone.cpu_percent, gone.gpu_mem_bytes) == (0, 0.0, 0)


def test_trees_from_the_caller_are_used() -> None:
    # The engine has just scanned the process table for its box sample; the sampler
    # takes that scan instead of making its own.
    reading = UsageSampler().sample({1: (None, [])}, [], {}, now=0.0, trees={1: {os.getpid()}})[1]
    assert reading.processes == 1
    assert reading.rss_bytes > 0
    assert reading.cpu_percent > 0  # this test process has been busy importing


def write_file(path: Path, size: int) -> None:
    path.write_bytes(os.urandom(size))  # incompressible, not sparse: its blocks are allocated


def test_disk_is_measured_at_most_every_interval(tmp_path: Path) -> None:
    run_dir, checkpoints = tmp_path / "run", tmp_path / "ckpt"
    run_dir.mkdir()
    checkpoints.mkdir()
    write_file(run_dir / "output.log", 1 * M)
    sampler = UsageSampler(disk_interval_s=60.0)
    runs = {1: (None, [run_dir, checkpoints])}

    first = sampler.sample(runs, [], {}, now=1000.0)[1].disk_bytes
    assert first is not None and 1 * M <= first < 1 * M + 256 * 1024
    write_file(checkpoints / "step-100.pt", 2 * M)
    assert sampler.sample(runs, [], {}, now=1059.0)[1].disk_bytes == first  # cached
    later = sampler.sample(runs, [], {}, now=1060.0)[1].disk_bytes
    assert later is not None and later >= first + 2 * M
    assert later == folder_bytes([run_dir, checkpoints])


def test_disk_cache_ends_when_the_folders_or_the_run_change(tmp_path: Path) -> None:
    sampler = UsageSampler(disk_interval_s=60.0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_file(tmp_path / "b" / "x", 1 * M)
    small = sampler.sample({1: (None, [tmp_path / "a"])}, [], {}, now=0.0)[1].disk_bytes
    bigger = sampler.sample({1: (None, [tmp_path / "a", tmp_path / "b"])}, [], {}, now=1.0)[1].disk_bytes
    assert bigger >= small + 1 * M
    # A run left out of a call is forgotten: when it comes back it is measured again.
    write_file(tmp_path / "a" / "y", 1 * M)
    sampler.sample({}, [], {}, now=2.0)
    again = sampler.sample({1: (None, [tmp_path / "a", tmp_path / "b"])}, [], {}, now=3.0)[1].disk_bytes
    assert again >= bigger + 1 * M


def test_disk_counts_each_file_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "ckpt").mkdir(parents=True)
    write_file(run_dir / "ckpt" / "model.pt", 1 * M)
    os.link(run_dir / "ckpt" / "model.pt", run_dir / "best.pt")
    (run_dir / "data").symlink_to(tmp_path.parent)  # a link to a dataset is not the run's disk
    alone = folder_bytes([run_dir])
    assert alone is not None and 1 * M <= alone < 1 * M + 256 * 1024
    assert folder_bytes([run_dir, run_dir / "ckpt"]) == alone  # a checkpoint dir inside the run dir
    assert folder_bytes([run_dir / "ckpt", run_dir]) == alone


def test_disk_of_missing_or_unreadable_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert folder_bytes([tmp_path / "not-yet"]) is None
    assert folder_bytes([]) is None
    sampler = UsageSampler()
    assert sampler.sample({1: (None, [tmp_path / "not-yet"])}, [], {}, now=0.0)[1].disk_bytes is None

    (tmp_path / "open").mkdir()
    (tmp_path / "locked").mkdir()
    write_file(tmp_path / "open" / "a", 1 * M)
    write_file(tmp_path / "locked" / "b", 1 * M)
    real_scandir = os.scandir
    locked = str(tmp_path / "locked")

    def scandir(path):  # as for a folder another user made private (root would ignore chmod)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(usage_module.os, "scandir", scandir)
    partial = folder_bytes([tmp_path])
    assert partial is not None and 1 * M <= partial < 2 * M
