"""Keeping runs inside their envelopes: core pinning, overrun verdicts, per-run memory
cgroups and telling an OOM kill from a crash. Real processes wherever the machine allows."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cgroups, enforce, shim
from engine.envelope import Envelope
from engine.launcher import SHIM_DIED, LocalLauncher, shim_command
from engine.model import Run
from helpers import make_run, process_alive, wait_until
from test_supervisor import (
    RUN_ENV,
    WAIT_FOR_GO,
    Sessions,
    TrackedLauncher,
    log_text,
    started,
    wait_for_child,
    wait_for_state,
)

MiB = 1 << 20
GiB = 1 << 30

ALLOCATE_200M = "b = bytearray(200 << 20); print('survived', flush=True)"
"""bytearray zero-fills, so every page is touched and charged."""

PRINT_AFFINITY = "import os; print(sorted(os.sched_getaffinity(0)))"


@pytest.fixture
def sessions():
    tracked = Sessions()
    yield tracked
    tracked.kill_all()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def with_envelope(run: Run, **values) -> Run:
    return dataclasses.replace(run, envelope=Envelope(**values))


def launch(launcher: LocalLauncher, home: Path, argv: list[str], *, mem_bytes: int = 64 * MiB, **options) -> Run:
    run = with_envelope(make_run(home, argv), mem_bytes=mem_bytes)
    return started(run, launcher.launch(run, RUN_ENV, **options))


# -- core pinning -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpus", "available", "taken", "expected"),
    [
        (2, [0, 1, 2, 3], {0}, (1, 2)),
        (1, [0, 1], set(), (0,)),
        (2, [3, 1, 0, 2], {1}, (0, 2)),
        (4, [0, 1, 2, 3], set(), (0, 1, 2, 3)),
        (2.0, [0, 0, 1], set(), (0, 1)),
        (1.5, [0, 1, 2, 3], set(), None),
        (0.5, [0, 1], set(), None),
        (3, [0, 1, 2, 3], {2, 3}, None),
        (1, [], set(), None),
    ],
)
def test_assign_cores(cpus, available, taken, expected):
    assert enforce.assign_cores(cpus, available, taken) == expected


def test_a_pinned_run_sees_only_its_cores(home, sessions):
    available = sorted(os.sched_getaffinity(0))
    cores = enforce.assign_cores(1, available, taken=available[:-1])  # the last core
    assert cores == (available[-1],)
    launcher = TrackedLauncher(home / "runs", sessions)
    run = launch(launcher, home, [sys.executable, "-c", PRINT_AFFINITY], cores=cores)

    seen = wait_for_state(launcher, run, "exited")

    assert seen.exit_code == 0, log_text(run)
    assert log_text(run) == f"{list(cores)}\n"
    assert seen.cores == cores
    assert shim_json(run)["cores"] == list(cores)


def test_a_pinned_runs_children_inherit_its_cores(home, sessions):
    core = sorted(os.sched_getaffinity(0))[0]
    launcher = TrackedLauncher(home / "runs", sessions)
    run = launch(launcher, home, ["sh", "-c", "grep Cpus_allowed_list /proc/self/status"], cores=(core,))

    assert wait_for_state(launcher, run, "exited").exit_code == 0
    assert log_text(run).split() == ["Cpus_allowed_list:", str(core)]


def test_cores_the_box_does_not_have_leave_the_run_unpinned_and_say_so(home, sessions):
    launcher = TrackedLauncher(home / "runs", sessions)
    everything = sorted(os.sched_getaffinity(0))
    run = launch(launcher, home, [sys.executable, "-c", PRINT_AFFINITY], cores=(4095,))

    seen = wait_for_state(launcher, run, "exited")

    assert seen.exit_code == 0
    lines = log_text(run).splitlines()
    assert lines[0] == "runyard: cannot pin the run to cores 4095 (Invalid argument); it runs unpinned"
    assert lines[1] == str(everything)
    assert seen.cores is None


# -- overrun verdicts ---------------------------------------------------------------------

ENV_16G = Envelope(mem_bytes=16 * GiB)
ENV_GPU = Envelope(mem_bytes=16 * GiB, gpus=1, gpu_mem_bytes=10 * GiB)
ENV_2GPU = Envelope(mem_bytes=16 * GiB, gpus=2, gpu_mem_bytes=5 * GiB)
PEAK_17_2G = int(17.2 * GiB)
MEM_OVER = "exceeded memory envelope 16G (peak 17.2G)"
GPU_OVER = "exceeded GPU memory envelope 10G (peak 12G)"


@pytest.mark.parametrize(
    ("envelope", "mode", "usage", "peaks", "expected"),
    [
        # inside the envelope, at it, or back inside after a spike: nothing to do
        (ENV_16G, "default", (15 * GiB, 0), (15 * GiB, 0), None),
        (ENV_16G, "default", (16 * GiB, 0), (16 * GiB, 0), None),
        (ENV_16G, "kill", (15 * GiB, 0), (PEAK_17_2G, 0), None),
        # memory
        (ENV_16G, "default", (17 * GiB, 0), (PEAK_17_2G, 0), ("kill", MEM_OVER, ("mem",))),
        (ENV_16G, "warn", (17 * GiB, 0), (PEAK_17_2G, 0), ("warn", MEM_OVER, ("mem",))),
        (ENV_16G, "kill", (17 * GiB, 0), (PEAK_17_2G, 0), ("kill", MEM_OVER, ("mem",))),
        # a peak below the current usage (a late first sample) reads as the usage
        (ENV_16G, "default", (PEAK_17_2G, 0), (0, 0), ("kill", MEM_OVER, ("mem",))),
        # GPU memory: per GPU times the number of GPUs
        (ENV_GPU, "default", (GiB, 11 * GiB), (GiB, 12 * GiB), ("warn", GPU_OVER, ("gpu_mem",))),
        (ENV_GPU, "kill", (GiB, 11 * GiB), (GiB, 12 * GiB), ("kill", GPU_OVER, ("gpu_mem",))),
        (ENV_2GPU, "kill", (GiB, 11 * GiB), (GiB, 12 * GiB), ("kill", GPU_OVER, ("gpu_mem",))),
        (ENV_2GPU, "kill", (GiB, 10 * GiB), (GiB, 10 * GiB), None),
        # both over: a kill names what kills; warnings name everything
        (ENV_GPU, "default", (17 * GiB, 11 * GiB), (PEAK_17_2G, 12 * GiB), ("kill", MEM_OVER, ("mem",))),
        (ENV_GPU, "warn", (17 * GiB, 11 * GiB), (PEAK_17_2G, 12 * GiB),
         ("warn", f"{MEM_OVER}; {GPU_OVER}", ("mem", "gpu_mem"))),
        (ENV_GPU, "kill", (17 * GiB, 11 * GiB), (PEAK_17_2G, 12 * GiB),
         ("kill", f"{MEM_OVER}; {GPU_OVER}", ("mem", "gpu_mem"))),
        # whole GPUs have no smaller limit; --mem 0 sets none
        (Envelope(gpus=1), "kill", (0, 80 * GiB), (0, 80 * GiB), None),
        (Envelope(mem_bytes=0), "kill", (64 * GiB, 0), (64 * GiB, 0), None),
    ],
)
def test_check_overrun(envelope, mode, usage, peaks, expected):
    verdict = enforce.check_overrun(envelope, mode, usage[0], usage[1], peaks[0], peaks[1])

    if expected is None:
        assert verdict is None
    else:
        assert (verdict.action, verdict.reason, verdict.resources) == expected


def test_check_overrun_refuses_an_unknown_mode():
    with pytest.raises(ValueError) as caught:
        enforce.check_overrun(ENV_16G, "explode", 0, 0, 0, 0)

    assert str(caught.value) == "on-overrun must be one of default, warn, kill; got 'explode'"


# -- OOM kill or crash ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [(3, 4, True), (3, 3, False), (0, 7, True), (None, 4, None), (3, None, None)],
)
def test_oom_count_rose(before, after, expected):
    assert enforce.oom_count_rose(before, after) is expected


def exit_reason(**values):
    defaults = dict(
        exit_code=-9, signal="SIGKILL", envelope=ENV_16G, oom_killed=None, box_oom_kill_rose=None,
        runyard_sent_kill=False,
    )
    return enforce.exit_reason(**{**defaults, **values})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # the run's cgroup saw an OOM kill
        ({"oom_killed": True}, "killed by the kernel's OOM killer: exceeded memory envelope 16G"),
        ({"oom_killed": True, "exit_code": 1, "signal": None},
         "exit code 1 after the kernel's OOM killer killed one of its processes: exceeded memory envelope 16G"),
        ({"oom_killed": True, "exit_code": -6, "signal": "SIGABRT"},
         "killed by SIGABRT after the kernel's OOM killer killed one of its processes: exceeded memory envelope 16G"),
        ({"oom_killed": True, "exit_code": 0, "signal": None}, None),
        # it saw none: a SIGKILL is someone's kill -9, whatever the box's count did
        ({"oom_killed": False, "box_oom_kill_rose": True}, None),
        # no cgroup: only the box's count can hint at the OOM killer
        ({"box_oom_kill_rose": True}, enforce.BOX_OOM_REASON),
        ({"box_oom_kill_rose": False}, None),
        ({"box_oom_kill_rose": None}, None),
        ({"box_oom_kill_rose": True, "runyard_sent_kill": True}, None),
        ({"box_oom_kill_rose": True, "exit_code": -15, "signal": "SIGTERM"}, None),
        ({"box_oom_kill_rose": True, "exit_code": 1, "signal": None}, None),
    ],
)
def test_exit_reason(values, expected):
    assert exit_reason(**values) == expected


def test_box_oom_reason_is_the_documented_line():
    assert enforce.BOX_OOM_REASON == "probably killed by the kernel's OOM killer (the box's oom_kill count rose)"


VMSTAT_SAMPLE = b"nr_free_pages 1107452\npgfault 88\noom_kill 3\nnr_foll_pin_acquired 0\n"
V2_EVENTS_SAMPLE = b"low 0\nhigh 0\nmax 17\noom 2\noom_kill 2\noom_group_kill 1\n"
V1_OOM_CONTROL_SAMPLE = b"oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (VMSTAT_SAMPLE, 3),
        (V2_EVENTS_SAMPLE, 2),
        (V1_OOM_CONTROL_SAMPLE, 1),
        (b"oom_kill_disable 0\nunder_oom 0\n", None),  # a kernel before 4.13
        (b"oom_kill lots\n", None),
        (b"", None),
    ],
)
def test_parse_oom_kill(data, expected):
    assert shim.parse_oom_kill(data) == expected


def test_the_box_oom_count_is_read_from_proc_vmstat(tmp_path):
    sample = tmp_path / "vmstat"
    sample.write_bytes(VMSTAT_SAMPLE)

    assert shim.read_box_oom_kills(str(sample)) == 3
    assert shim.read_box_oom_kills(str(tmp_path / "missing")) is None
    if Path(shim.VMSTAT_PATH).exists():
        assert isinstance(shim.read_box_oom_kills(), int)


def test_every_run_records_the_box_oom_count_at_launch_and_end(home, sessions):
    launcher = TrackedLauncher(home / "runs", sessions)
    run = launch(launcher, home, ["true"])

    seen = wait_for_state(launcher, run, "exited")

    before, after = shim_json(run)["box_oom_kills"], exit_json(run)["box_oom_kills"]
    if not Path(shim.VMSTAT_PATH).exists():
        pytest.skip("this kernel has no /proc/vmstat")
    assert isinstance(before, int) and isinstance(after, int) and after >= before
    assert seen.box_oom_kill_rose == (after > before)
    assert (seen.oom_killed, seen.peak_mem_bytes) == (None, None)  # no cgroup


def shim_json(run: Run) -> dict:
    return json.loads((Path(run.run_dir) / shim.SHIM_FILE).read_text())


def exit_json(run: Run) -> dict:
    return exit_json_at(Path(run.run_dir))


# -- finding a usable cgroup hierarchy --------------------------------------------------------

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
this line is not mountinfo
99 31 0:40 /sub /mnt/with\\040space rw shared:1 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_parse_mountinfo_keeps_cgroup_mounts():
    mounts = cgroups.parse_mountinfo(HYBRID_MOUNTINFO)

    assert mounts == [
        cgroups.Mount("/", "/sys/fs/cgroup/memory", "cgroup", ("rw", "memory")),
        cgroups.Mount("/", "/sys/fs/cgroup/systemd", "cgroup", ("rw", "name=systemd")),
        cgroups.Mount("/", "/sys/fs/cgroup/unified", "cgroup2", ("rw",)),
        cgroups.Mount("/sub", "/mnt/with space", "cgroup2", ("rw", "nsdelegate")),
    ]


def test_parse_proc_cgroup():
    text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/user.slice\ngarbage\n"

    assert cgroups.parse_proc_cgroup(text) == {
        "name=systemd": "/",
        "memory": "/process_api/abc",
        "cpu": "/x",
        "cpuacct": "/x",
        "": "/user.slice",
    }


@pytest.mark.parametrize(
    ("envelope_bytes", "limit_bytes"), [(0, 64 * MiB), (64 * MiB, 128 * MiB), (16 * GiB, 17 * GiB)]
)
def test_the_cgroup_limit_leaves_slack_above_the_envelope(envelope_bytes, limit_bytes):
    assert cgroups.memory_limit_bytes(envelope_bytes) == limit_bytes


def test_home_tags_are_stable_and_tell_homes_apart(tmp_path):
    assert cgroups.home_tag(tmp_path / "a") == cgroups.home_tag(tmp_path / "a")
    assert cgroups.home_tag(tmp_path / "a") != cgroups.home_tag(tmp_path / "b")
    assert re.fullmatch(r"[0-9a-f]{8}", cgroups.home_tag(tmp_path))


def fake_proc(tmp_path: Path, mountinfo: str, proc_cgroup: str) -> dict[str, str]:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(proc_cgroup)
    return {"mountinfo_path": str(tmp_path / "mountinfo"), "proc_cgroup_path": str(tmp_path / "cgroup")}


def fake_v2(tmp_path: Path, controllers: str, subtree: str) -> dict[str, str]:
    """A directory that looks like a cgroup2 mount, holding our group ``/me``."""
    mount = tmp_path / "cg2"
    (mount / "me").mkdir(parents=True)
    (mount / "me" / "cgroup.controllers").write_text(controllers + "\n")
    (mount / "me" / "cgroup.subtree_control").write_text(subtree + "\n")
    return fake_proc(tmp_path, f"41 31 0:38 / {mount} rw - cgroup2 cgroup2 rw\n", "0::/me\n")


def test_detection_without_readable_proc_files_says_why(tmp_path):
    root, how = cgroups.diagnose(mountinfo_path=str(tmp_path / "none"), proc_cgroup_path=str(tmp_path / "none"))

    assert root is None
    assert how == "cannot read this process's cgroups (No such file or directory)"


def test_detection_without_cgroup_mounts_says_why(tmp_path):
    paths = fake_proc(tmp_path, "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", "0::/\n")

    assert cgroups.diagnose(**paths) == (None, "cgroup v2: not mounted; cgroup v1: no memory hierarchy mounted")


def test_detection_of_a_v2_group_without_the_memory_controller(tmp_path):
    root, how = cgroups.diagnose(**fake_v2(tmp_path, "hugetlb", ""))

    assert root is None
    assert how.startswith(f"cgroup v2: {tmp_path / 'cg2' / 'me'} has no memory controller")


def refuse_writes(path: Path) -> None:
    """Make ``path`` readable but unwritable, even for root: a file with no write handler."""
    path.unlink()
    path.symlink_to("/proc/version")


def test_detection_of_a_v2_group_that_cannot_hand_memory_down(tmp_path):
    paths = fake_v2(tmp_path, "cpu memory", "")
    me = tmp_path / "cg2" / "me"
    refuse_writes(me / "cgroup.subtree_control")

    root, how = cgroups.diagnose(**paths)

    assert root is None
    assert how.startswith(f"cgroup v2: cannot enable the memory controller below {me}: Input/output error")


def test_detection_moves_the_engine_only_when_it_is_alone_in_its_group(tmp_path):
    paths = fake_v2(tmp_path, "cpu memory", "")
    me = tmp_path / "cg2" / "me"
    refuse_writes(me / "cgroup.subtree_control")
    (me / "cgroup.procs").write_text(f"{os.getpid()}\n1\n")

    root, how = cgroups.diagnose(**paths, allow_move=True)

    assert root is None
    assert how.startswith(f"cgroup v2: cannot enable the memory controller below {me}: 1 other processes are in it")
    assert not (me / cgroups.ENGINE_LEAF).exists()

    (me / "cgroup.procs").write_text(f"{os.getpid()}\n")
    root, how = cgroups.diagnose(**paths, allow_move=True)

    # A plain directory is no cgroup: the leaf made has no cgroup.procs to move into.
    assert root is None
    assert how.startswith(f"cgroup v2: cannot move the engine into {me / cgroups.ENGINE_LEAF}: No such file")


def test_detection_proves_a_group_takes_a_limit_and_leaves_nothing_behind(tmp_path):
    # Controllers say yes, but a made group has no memory.max: not a real hierarchy.
    root, how = cgroups.diagnose(**fake_v2(tmp_path, "cpu memory", "memory"))

    assert root is None
    assert how.startswith(f"cgroup v2: cannot set a memory limit in {tmp_path / 'cg2' / 'me'}")
    assert sorted(path.name for path in (tmp_path / "cg2" / "me").iterdir()) == [
        "cgroup.controllers",
        "cgroup.subtree_control",
    ]


def test_detection_of_a_group_outside_the_mount(tmp_path):
    paths = fake_proc(tmp_path, f"41 31 0:38 /sub {tmp_path} rw - cgroup2 cgroup2 rw\n", "0::/elsewhere\n")

    root, how = cgroups.diagnose(**paths)

    assert root is None
    assert how.startswith(f"cgroup v2: our group /elsewhere is outside the mount at {tmp_path}")


def test_detection_never_crashes_on_garbage(tmp_path):
    paths = fake_proc(tmp_path, "\x00\x01 - - -\n - cgroup2\n1 2 3\n", ":::\n0:\nz::/a:b\n")

    assert cgroups.diagnose(**paths)[0] is None


# -- when the cgroup cannot be had ---------------------------------------------------------------


def test_a_run_whose_cgroup_cannot_be_made_runs_under_sampling_and_says_so(home, sessions, tmp_path):
    not_a_hierarchy = cgroups.CgroupRoot(2, tmp_path / "fake", tmp_path / "fake")
    (tmp_path / "fake").mkdir()
    launcher = TrackedLauncher(home / "runs", sessions)
    launcher.cgroup_root = not_a_hierarchy
    run = launch(launcher, home, ["sh", "-c", "echo ran"])

    seen = wait_for_state(launcher, run, "exited")

    assert seen.exit_code == 0
    first, second = log_text(run).splitlines()
    assert first.startswith("runyard: cannot set the memory limit of ")
    assert first.endswith("; the memory envelope is enforced by sampling only")
    assert second == "ran"
    assert shim_json(run)["cgroup"] is None
    assert list((tmp_path / "fake").iterdir()) == []


def test_a_shim_that_cannot_join_its_cgroup_runs_the_command_anyway(tmp_path, sessions):
    missing = tmp_path / "no-such-group"
    log = tmp_path / "output.log"
    with open(log, "ab") as out:
        done = subprocess.run(
            shim_command(tmp_path, ["sh", "-c", "echo ran"], cgroup=missing, cgroup_origin=tmp_path),
            stdout=out, stderr=out, timeout=120,
        )

    assert done.returncode == 0
    assert log.read_text().splitlines() == [
        f"runyard: cannot join the run's cgroup {missing} (No such file or directory); "
        "its memory envelope is enforced by sampling only",
        "ran",
    ]
    record = exit_json_at(tmp_path)
    assert (record["exit_code"], "oom_kills" in record) == (0, False)


def exit_json_at(run_dir: Path) -> dict:
    return json.loads((run_dir / shim.EXIT_FILE).read_text())


# -- real per-run cgroups ------------------------------------------------------------------------


@pytest.fixture
def cgroup_root() -> cgroups.CgroupRoot:
    root, how = cgroups.diagnose()
    if root is None:
        pytest.skip(f"no usable memory cgroup on this machine: {how}")
    return root


@pytest.fixture
def confined(home, sessions, cgroup_root):
    """A launcher that gives runs memory cgroups; every group it made is gone afterwards."""
    launcher = TrackedLauncher(home / "runs", sessions)
    launcher.cgroup_root = cgroup_root
    yield launcher
    sessions.kill_all()
    for group in run_groups(cgroup_root, launcher.cgroup_tag):
        cgroups.remove_run_group(group)
    assert run_groups(cgroup_root, launcher.cgroup_tag) == []


def run_groups(root: cgroups.CgroupRoot, tag: str) -> list[Path]:
    return sorted(path for path in root.base.iterdir() if path.name.startswith(f"runyard-{tag}-"))


def group_of(run: Run) -> Path:
    return Path(shim_json(run)["cgroup"])


def test_a_run_over_its_memory_envelope_is_oom_killed_in_its_cgroup_and_its_neighbour_lives_on(
    confined, home, cgroup_root
):
    neighbour = launch(confined, home, ["sh", "-c", WAIT_FOR_GO])
    neighbour_child = wait_for_child(confined, neighbour).child_pid
    hog = launch(confined, home, [sys.executable, "-c", ALLOCATE_200M])

    seen = wait_for_state(confined, hog, "exited")

    assert (seen.exit_code, seen.signal, seen.oom_killed) == (-signal.SIGKILL, "SIGKILL", True), log_text(hog)
    assert "survived" not in log_text(hog)
    assert 64 * MiB < seen.peak_mem_bytes <= cgroups.memory_limit_bytes(64 * MiB)
    assert enforce.exit_reason(
        exit_code=seen.exit_code, signal=seen.signal, envelope=hog.envelope, oom_killed=seen.oom_killed,
        box_oom_kill_rose=seen.box_oom_kill_rose, runyard_sent_kill=False,
    ) == "killed by the kernel's OOM killer: exceeded memory envelope 64M"
    assert not group_of(hog).exists()

    assert confined.observe(neighbour).state == "running"
    assert process_alive(neighbour_child)
    members = shim.cgroup_pids(str(group_of(neighbour)))
    assert neighbour_child in members and neighbour.shim_pid not in members
    (home / "go").touch()
    seen = wait_for_state(confined, neighbour, "exited")
    assert (seen.exit_code, seen.oom_killed) == (0, False)
    assert seen.peak_mem_bytes > 0
    assert run_groups(cgroup_root, confined.cgroup_tag) == []


def test_every_process_of_a_run_starts_inside_its_cgroup(confined, home):
    run = launch(confined, home, ["sh", "-c", "cat /proc/self/cgroup; echo --; sh -c 'cat /proc/self/cgroup'"])

    assert wait_for_state(confined, run, "exited").exit_code == 0
    hierarchy = "" if confined.cgroup_root.version == 2 else "memory"
    command, grandchild = (cgroups.parse_proc_cgroup(part)[hierarchy] for part in log_text(run).split("--\n"))
    assert command == grandchild
    assert shim_json(run)["cgroup"].endswith(command)
    assert Path(shim_json(run)["cgroup"]).name == cgroups.group_name(confined.cgroup_tag, run.id)


def test_processes_that_escape_the_run_group_die_with_the_cgroup(confined, home):
    run = launch(confined, home, ["sh", "-c", "setsid sleep 600 & echo escaped=$!; sleep 0.2"])
    escaped = int(wait_until(lambda: re.search(r"escaped=(\d+)", log_text(run)))[1])

    seen = wait_for_state(confined, run, "exited")

    assert seen.exit_code == 0
    assert exit_json(run)["cgroup_removed"] is True
    wait_until(lambda: not process_alive(escaped), message="a setsid'd process outlived its run's cgroup")


def test_the_group_of_a_run_whose_shim_died_is_removed_when_the_run_is_seen_lost(confined, home):
    run = launch(confined, home, ["sleep", "600"])
    seen = wait_for_child(confined, run)
    run = dataclasses.replace(run, pid=seen.child_pid, pid_started_at=seen.child_started_at)
    group = group_of(run)
    os.kill(run.shim_pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(run.shim_pid))
    assert group.exists()

    assert confined.signal(run, signal.SIGTERM)
    seen = wait_for_state(confined, run, "lost")

    assert seen.detail == SHIM_DIED
    assert seen.oom_killed is False
    assert not group.exists()


def test_a_run_with_no_memory_envelope_gets_no_cgroup(confined, home):
    run = launch(confined, home, ["true"], mem_bytes=0)

    assert wait_for_state(confined, run, "exited").exit_code == 0
    assert shim_json(run)["cgroup"] is None


def test_sweep_removes_only_this_homes_empty_groups(cgroup_root, tmp_path):
    tag, other = cgroups.home_tag(tmp_path / "a"), cgroups.home_tag(tmp_path / "b")
    mine = cgroups.create_run_group(cgroup_root, cgroups.group_name(tag, 1), 64 * MiB)
    theirs = cgroups.create_run_group(cgroup_root, cgroups.group_name(other, 1), 64 * MiB)
    try:
        assert cgroups.sweep(cgroup_root, tag) == 1
        assert not mine.exists() and theirs.exists()
    finally:
        cgroups.remove_run_group(mine)
        cgroups.remove_run_group(theirs)
    assert not theirs.exists()


def test_without_a_cgroup_an_oom_kill_shows_as_a_rise_of_the_boxs_count(home, sessions, cgroup_root, tmp_path):
    # The run is unconfined by runyard; it walks into a small group of the test's own,
    # so the kernel's OOM killer really ends it and only /proc/vmstat can tell.
    trap = cgroups.create_run_group(cgroup_root, f"runyard-test-trap-{os.getpid()}", 64 * MiB)
    try:
        launcher = TrackedLauncher(home / "runs", sessions)
        script = f"echo $$ > {trap}/cgroup.procs && exec {sys.executable} -c \"{ALLOCATE_200M}\""
        run = launch(launcher, home, ["sh", "-c", script])

        seen = wait_for_state(launcher, run, "exited")

        assert (seen.signal, seen.oom_killed, seen.box_oom_kill_rose) == ("SIGKILL", None, True), log_text(run)
        assert enforce.exit_reason(
            exit_code=seen.exit_code, signal=seen.signal, envelope=run.envelope, oom_killed=None,
            box_oom_kill_rose=seen.box_oom_kill_rose, runyard_sent_kill=False,
        ) == enforce.BOX_OOM_REASON
    finally:
        with contextlib.suppress(OSError):
            cgroups.remove_run_group(trap)
    assert not trap.exists()
