"""Probes: host (real psutil), NVML (through a fake pynvml, and the real one on this GPU-less
box), simulated GPUs, and the split of usage between runyard runs and everyone else."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine.policy import BoxView, GpuView
from engine.probes.attribution import box_view, run_process_trees, run_rss_bytes
from engine.probes.gpu import GpuProcess, GpuSample, NvmlProbe, nvml_status, open_nvml, select_visible
from engine.probes.host import HostProbe, HostSample
from engine.probes.simulated import SimulatedGpuProbe, parse_gpu_spec
from conftest import DEADLINE_S, poll_until
from fake_pynvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeDevice,
    FakeNvml,
    NVMLError,
    NVMLError_GpuIsLost,
    NVMLLibraryMismatchError,
)

G = 1 << 30


# ---------------------------------------------------------------------------- host


def test_host_sample_is_sane(tmp_path: Path) -> None:
    probe = HostProbe(tmp_path / "not" / "created" / "yet")
    sample = probe.sample()
    assert sample.cpus >= 1
    assert sample.cpus <= (psutil.cpu_count() or 1)
    assert 0 < sample.mem_available <= sample.mem_total
    assert 0 <= sample.disk_free <= sample.disk_total
    assert sample.disk_total > 0
    assert 0.0 <= sample.cpu_percent <= 100.0
    assert sample.load1 >= 0.0
    # The nearest existing parent is measured: same filesystem as tmp_path.
    assert sample.disk_total == psutil.disk_usage(str(tmp_path)).total


def test_host_cpu_percent_sees_a_busy_cpu(tmp_path: Path) -> None:
    probe = HostProbe(tmp_path)
    probe.sample()
    end = time.monotonic() + DEADLINE_S
    busy = 0.0
    while time.monotonic() < end and busy <= 0.0:
        spin_until = time.monotonic() + 0.2
        while time.monotonic() < spin_until:
            pass
        busy = probe.sample().cpu_percent
    assert busy > 0.0


# ---------------------------------------------------------------------------- NVML (fake)


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeDevice(
                name="NVIDIA A100-SXM4-80GB",
                uuid="GPU-aaaa1111-0000-0000-0000-000000000000",
                mem_total=80 * G,
                mem_used=30 * G,
                util_percent=57,
                temperature_c=61,
                power_mw=251_500,
                processes=[(4242, 20 * G), (5151, None)],
            ),
            FakeDevice(name="NVIDIA L4", uuid="GPU-bbbb2222-0000-0000-0000-000000000000", mem_total=24 * G),
        ]
    )


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = two_gpus()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def test_fake_errors_mirror_the_real_hierarchy() -> None:
    error = NVMLError(NVML_ERROR_GPU_IS_LOST)
    assert type(error) is NVMLError_GpuIsLost
    assert isinstance(error, NVMLError) and error.value == NVML_ERROR_GPU_IS_LOST
    assert NVMLError_GpuIsLost().value == NVML_ERROR_GPU_IS_LOST
    assert str(error) == "GPU is lost"


def test_nvml_normal_sample(fake_nvml: FakeNvml) -> None:
    probe, status = open_nvml()
    assert probe is not None
    assert "2 of 2 GPUs" in status and "550.54.15" in status
    first, second = probe.sample()
    assert first == GpuSample(
        index=0,
        name="NVIDIA A100-SXM4-80GB",
        uuid="GPU-aaaa1111-0000-0000-0000-000000000000",
        mem_total=80 * G,
        mem_used=30 * G,
        util_percent=57.0,
        temperature_c=61.0,
        power_w=251.5,
        processes=(GpuProcess(4242, 20 * G), GpuProcess(5151, None)),
    )
    assert (second.index, second.name, second.mem_total, second.processes) == (1, "NVIDIA L4", 24 * G, ())
    probe.close()
    probe.close()
    assert fake_nvml.shutdown_calls == 1 and fake_nvml.refcount == 0
    assert probe.sample() == ()


def test_nvml_follows_changes_between_samples(fake_nvml: FakeNvml) -> None:
    probe = NvmlProbe.try_open()
    assert probe is not None
    fake_nvml.devices[1].mem_used = 5 * G
    fake_nvml.devices[1].processes = [(777, 5 * G)]
    assert probe.sample()[1].processes == (GpuProcess(777, 5 * G),)
    assert probe.sample()[1].mem_used == 5 * G
    probe.close()


def test_nvml_unsupported_fields_become_none(fake_nvml: FakeNvml) -> None:
    fake_nvml.devices[0].errors = {
        "nvmlDeviceGetUtilizationRates": NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetTemperature": NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetPowerUsage": NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetUUID": NVML_ERROR_NOT_SUPPORTED,
        # The real module raises this (not an NVMLError) when bindings outrun the driver.
        "nvmlDeviceGetComputeRunningProcesses": NVMLLibraryMismatchError("too old"),
    }
    probe = NvmlProbe.try_open()
    assert probe is not None
    sample = probe.sample()[0]
    assert sample.available
    assert (sample.util_percent, sample.temperature_c, sample.power_w, sample.uuid) == (None, None, None, None)
    assert sample.processes == ()
    assert (sample.mem_total, sample.mem_used) == (80 * G, 30 * G)
    probe.close()


def test_nvml_lost_gpu_is_unavailable_with_reason(fake_nvml: FakeNvml) -> None:
    probe = NvmlProbe.try_open()
    assert probe is not None
    assert probe.sample()[0].available
    fake_nvml.devices[0].errors = {"nvmlDeviceGetMemoryInfo": NVML_ERROR_GPU_IS_LOST}
    fake_nvml.devices[1].errors = {"nvmlDeviceGetHandleByIndex": 999}
    lost, broken = probe.sample()
    assert not lost.available and "GPU is lost" in lost.unavailable_reason
    # Known before it was lost: still shown by name and size.
    assert (lost.name, lost.mem_total, lost.processes) == ("NVIDIA A100-SXM4-80GB", 80 * G, ())
    assert not broken.available and "Unknown Error" in broken.unavailable_reason
    fake_nvml.devices[0].errors = {}
    assert probe.sample()[0].available
    probe.close()


def test_nvml_lost_from_the_start_still_listed(fake_nvml: FakeNvml) -> None:
    fake_nvml.devices[1].errors = {"nvmlDeviceGetHandleByIndex": NVML_ERROR_GPU_IS_LOST}
    probe = NvmlProbe.try_open()
    assert probe is not None
    assert probe.indices == (0, 1)
    lost = probe.sample()[1]
    assert (lost.index, lost.name, lost.available) == (1, "GPU 1", False)
    probe.close()


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver found"),
        (NVML_ERROR_DRIVER_NOT_LOADED, "not loaded"),
        (999, "Unknown Error"),
    ],
)
def test_nvml_init_failure_gives_none_and_a_reason(monkeypatch: pytest.MonkeyPatch, code: int, words: str) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeDevice()], init_error=code))
    assert NvmlProbe.try_open() is None
    assert words in nvml_status()
    assert "\n" not in nvml_status()


def test_nvml_missing_module_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    probe, status = open_nvml(visible=None)
    assert probe is None and "nvidia-ml-py" in status


def test_cuda_visible_devices_by_index(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    probe = NvmlProbe.try_open()
    assert probe is not None
    assert probe.indices == (1,)
    assert [s.index for s in probe.sample()] == [1]
    probe.close()


def test_cuda_visible_devices_by_uuid(fake_nvml: FakeNvml) -> None:
    probe = NvmlProbe.try_open(visible="GPU-bbbb2222-0000-0000-0000-000000000000")
    assert probe is not None
    assert [(s.index, s.name) for s in probe.sample()] == [(1, "NVIDIA L4")]
    probe.close()
    probe = NvmlProbe.try_open(visible="GPU-bbbb,GPU-aaaa")  # unique prefixes, as CUDA accepts
    assert probe is not None
    assert probe.indices == (0, 1)
    probe.close()


def test_cuda_visible_devices_empty_means_no_gpus(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    probe, status = open_nvml()
    assert probe is None and "empty" in status
    assert fake_nvml.init_calls == 0


def test_cuda_visible_devices_stops_at_a_bad_entry(fake_nvml: FakeNvml) -> None:
    probe, status = open_nvml(visible="1,7,0")
    assert probe is not None and probe.indices == (1,)
    assert "'7'" in status
    probe.close()
    probe, status = open_nvml(visible="-1")
    assert probe is None and "0 of 2" in status
    assert fake_nvml.refcount == 0


def test_select_visible_rules() -> None:
    uuids = ["GPU-aa1", "GPU-aa2", None]
    assert select_visible(None, uuids) == ((0, 1, 2), None)
    assert select_visible("2,0", uuids) == ((0, 2), None)
    assert select_visible("GPU-aa2", uuids) == ((1,), None)
    indices, note = select_visible("GPU-aa", uuids)  # ambiguous prefix names no single card
    assert indices == () and "GPU-aa" in note
    assert select_visible("MIG-1234", uuids)[0] == ()


def test_exclude_drops_indices(fake_nvml: FakeNvml) -> None:
    probe, status = open_nvml(exclude={0})
    assert probe is not None
    assert [s.index for s in probe.sample()] == [1]
    assert "excluded 0" in status
    probe.close()
    probe, _ = open_nvml(exclude={0, 1})
    assert probe is None and fake_nvml.refcount == 0


def _nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_real_pynvml_without_a_driver_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    if _nvml_library_present():
        pytest.skip("this machine has an NVIDIA driver")
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert NvmlProbe.try_open() is None
    assert "no NVIDIA driver found" in nvml_status()


@pytest.mark.gpu
def test_real_gpu_sample() -> None:
    probe = NvmlProbe.try_open()
    if probe is None:
        pytest.skip(nvml_status())
    try:
        samples = probe.sample()
        assert samples and all(s.mem_total > 0 for s in samples if s.available)
    finally:
        probe.close()


# ---------------------------------------------------------------------------- simulated


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("4x80G", [("Simulated GPU 80G", 80 * G)] * 4),
        ("2x80G,1x24G", [("Simulated GPU 80G", 80 * G)] * 2 + [("Simulated GPU 24G", 24 * G)]),
        ("1x40GiB", [("Simulated GPU 40G", 40 * G)]),
        ("8", [("Simulated GPU 80G", 80 * G)] * 8),
        (" 2 X 16G , 24G ", [("Simulated GPU 16G", 16 * G)] * 2 + [("Simulated GPU 24G", 24 * G)]),
        ("0", []),
    ],
)
def test_parse_gpu_spec(spec: str, expected: list) -> None:
    assert list(parse_gpu_spec(spec)) == expected


@pytest.mark.parametrize("spec", ["abc", "", "4x", "x80G", "4x80", "0x80G", "4x-1G", "2x80G,,1x24G", "4x80Gx"])
def test_parse_gpu_spec_refuses_with_one_line(spec: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_gpu_spec(spec)
    message = str(caught.value)
    assert message.startswith("--simulate-gpus: cannot read")
    assert "4x80G" in message and "\n" not in message


def test_simulated_probe_without_foreign_usage() -> None:
    probe = SimulatedGpuProbe("2x80G,1x24G")
    samples = probe.sample()
    assert [(s.index, s.uuid, s.mem_total, s.mem_used, s.available) for s in samples] == [
        (0, "GPU-sim-0", 80 * G, 0, True),
        (1, "GPU-sim-1", 80 * G, 0, True),
        (2, "GPU-sim-2", 24 * G, 0, True),
    ]
    assert all(s.processes == () for s in samples)
    assert [s.index for s in SimulatedGpuProbe("3", exclude={1}).sample()] == [0, 2]


def write_json(path: Path, data: object) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def test_simulated_foreign_file_is_read_on_every_sample(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.json"
    probe = SimulatedGpuProbe("3x80G", foreign_file=foreign)
    assert probe.sample()[0].mem_used == 0  # missing file: nobody else

    write_json(foreign, {"0": {"mem_used": "20G", "procs": 2, "util": 90}, "2": {"lost": True}})
    gpu0, gpu1, gpu2 = probe.sample()
    assert gpu0.mem_used == 20 * G and gpu0.util_percent == 90
    assert len(gpu0.processes) == 2 and sum(p.used_mem for p in gpu0.processes) == 20 * G
    assert all(p.pid < 0 for p in gpu0.processes)
    assert gpu1.mem_used == 0 and gpu1.available
    assert not gpu2.available and "lost" in gpu2.unavailable_reason

    foreign.write_text('{"0": {"mem_used": ')  # half-written: the last reading stands
    assert probe.sample()[0].mem_used == 20 * G
    write_json(foreign, {"0": {"mem_used": "nonsense"}, "1": {"mem_used": 5 * G}, "x": 3})
    gpu0, gpu1, gpu2 = probe.sample()
    assert (gpu0.mem_used, gpu1.mem_used, gpu2.available) == (0, 5 * G, True)
    assert len(gpu1.processes) == 1
    write_json(foreign, ["not", "a", "mapping"])
    assert probe.sample()[1].mem_used == 5 * G
    foreign.unlink()
    assert probe.sample()[1].mem_used == 0


def test_simulated_foreign_usage_is_foreign_to_attribution(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.json"
    write_json(foreign, {"0": {"mem_used": "20G", "procs": 1}})
    gpus = SimulatedGpuProbe("1x80G", foreign_file=foreign).sample()
    # Even a run whose tree holds every positive pid cannot claim a simulated process.
    view = box_view(host_sample(), gpus, {1: {1, os.getpid()}}, 0)
    assert view.gpus[0] == GpuView(index=0, mem_total=80 * G, mem_foreign=20 * G, foreign_procs=1)


# ---------------------------------------------------------------------------- attribution


def host_sample(**changes) -> HostSample:
    values = dict(
        cpus=8.0,
        cpu_percent=10.0,
        mem_total=64 * G,
        mem_available=40 * G,
        disk_total=1000 * G,
        disk_free=300 * G,
        load1=1.0,
    )
    values.update(changes)
    return HostSample(**values)


def gpu_sample(index: int, mem_used: int, processes: tuple[GpuProcess, ...], **changes) -> GpuSample:
    values = dict(
        index=index,
        name="g",
        uuid=None,
        mem_total=80 * G,
        mem_used=mem_used,
        util_percent=None,
        temperature_c=None,
        power_w=None,
        processes=processes,
    )
    values.update(changes)
    return GpuSample(**values)


def test_box_view_splits_gpu_usage_by_process_tree() -> None:
    gpus = [
        gpu_sample(0, 32 * G, (GpuProcess(100, 10 * G), GpuProcess(900, 20 * G))),
        gpu_sample(1, 12 * G, (GpuProcess(101, 12 * G),)),
        gpu_sample(2, 0, (), available=False, unavailable_reason="GPU is lost"),
    ]
    view = box_view(host_sample(), gpus, {7: {100, 101}, 8: set()}, runyard_rss_bytes=0)
    assert view.gpus == (
        GpuView(index=0, mem_total=80 * G, mem_foreign=22 * G, foreign_procs=1),
        GpuView(index=1, mem_total=80 * G, mem_foreign=0, foreign_procs=0),
        GpuView(index=2, mem_total=80 * G, available=False, unavailable_reason="GPU is lost"),
    )


def test_box_view_counts_unknown_runyard_gpu_memory_as_foreign() -> None:
    gpus = [gpu_sample(0, 10 * G, (GpuProcess(100, None),))]
    view = box_view(host_sample(), gpus, {1: {100}}, 0)
    assert (view.gpus[0].mem_foreign, view.gpus[0].foreign_procs) == (10 * G, 0)


def test_box_view_memory_subtracts_runyard_rss() -> None:
    host = host_sample(mem_total=64 * G, mem_available=40 * G)
    view = box_view(host, [], {}, runyard_rss_bytes=10 * G)
    assert view == BoxView(cpus=8.0, mem_total=64 * G, mem_foreign=14 * G, disk_free=300 * G, gpus=())
    # A runyard estimate above what the host shows used never goes negative.
    assert box_view(host, [], {}, runyard_rss_bytes=30 * G).mem_foreign == 0


def test_box_view_with_no_runs_everything_is_foreign() -> None:
    gpus = [gpu_sample(0, 5 * G, (GpuProcess(1, 5 * G),))]
    view = box_view(host_sample(), gpus, {}, 0)
    assert view.mem_foreign == 24 * G
    assert (view.gpus[0].mem_foreign, view.gpus[0].foreign_procs) == (5 * G, 1)


SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(8 << 20); time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.fixture
def spawned_tree():
    """A parent in its own session with one child; the whole group is killed afterwards."""
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )

    def kill() -> None:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.wait(timeout=DEADLINE_S)
        parent.stdout.close()

    try:
        child_pid = int(parent.stdout.readline())
        yield parent, child_pid
    finally:
        kill()


def test_run_process_trees_on_a_real_tree(spawned_tree) -> None:
    parent, child_pid = spawned_tree
    trees = poll_until(
        lambda: (t := run_process_trees({5: parent.pid, 6: 2**22 + 12345})) and child_pid in t[5] and t,
        message="the child to appear in the tree",
    )
    assert trees[5] == {parent.pid, child_pid}
    assert trees[6] == set()  # no such process: empty, no error
    rss = run_rss_bytes(trees)
    assert rss[6] == 0
    assert rss[5] > 8 << 20  # the child's bytearray alone is 8 MiB, and both are interpreters


def test_run_process_trees_keeps_orphans_of_the_session(spawned_tree) -> None:
    parent, child_pid = spawned_tree
    poll_until(lambda: child_pid in run_process_trees({1: parent.pid})[1], message="the child to appear")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=DEADLINE_S)
    # The child is re-parented away from the dead root but stays in the run's session.
    poll_until(lambda: psutil.Process(child_pid).ppid() != parent.pid, message="the child to be re-parented")
    assert run_process_trees({1: parent.pid}) == {1: {child_pid}}


def test_run_process_trees_of_nothing() -> None:
    assert run_process_trees({}) == {}
    assert run_rss_bytes({}) == {}


def test_run_process_trees_keeps_orphans_of_the_process_group() -> None:
    """As the shim starts a command: leader of its own process group, not of a session."""
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, process_group=0
    )
    try:
        child_pid = int(parent.stdout.readline())
        assert os.getsid(parent.pid) != parent.pid  # the session match cannot be what finds it
        poll_until(lambda: child_pid in run_process_trees({1: parent.pid})[1], message="the child to appear")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=DEADLINE_S)
        poll_until(lambda: psutil.Process(child_pid).ppid() != parent.pid, message="the child to be re-parented")
        assert run_process_trees({1: parent.pid}) == {1: {child_pid}}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            parent.wait(timeout=DEADLINE_S)
        parent.stdout.close()
