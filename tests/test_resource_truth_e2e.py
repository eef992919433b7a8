"""Resource truth end to end: a real daemon, real runs, the simulated GPU probe.

What the box shows (foreign GPU processes, a lost card) steers admission; what a run
really uses is sampled, recorded and held against its envelope.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import DEADLINE_S, poll_until
from engine import cgroups

HOG = """
import os, sys, time
held = b"\\x01" * ({mib} << 20)   # written, so every page is resident
open(sys.argv[1], "w").close()
time.sleep(600)
"""

FORKER = """
import os, sys, time
for _ in range(2):
    if os.fork() == 0:
        held = b"\\x01" * (40 << 20)
        time.sleep(600)
        os._exit(0)
open(sys.argv[1], "w").close()
time.sleep(600)
"""


def fast_sampling(yard, extra: str = "") -> None:
    (yard.home / "empty-config.toml").write_text(f'[engine]\nsample_interval = "0.3s"\n{extra}')


def write_foreign(yard, usage: dict) -> None:
    """The simulated cards' other users; written atomically as the probe expects."""
    target = yard.home / "simulated-gpus.json"
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(usage))
    os.replace(partial, target)


def usage_report(yard, run_id: int) -> dict:
    return json.loads(yard.cli("show", str(run_id), "--usage", "--json").stdout)


def test_a_run_over_its_memory_envelope_is_stopped_while_its_neighbour_runs_on(yard, tmp_path):
    fast_sampling(yard)
    yard.start_daemon()
    neighbour = yard.submit("--mem", "256M", "--", sys.executable, "-c", "import time; time.sleep(600)")
    # 160 MiB against an envelope of 128M: over it, yet under the cgroup backstop
    # (128M + 64M slack), so it is sampling that must catch it.
    hog = yard.submit("--mem", "128M", "--grace", "5s", "--", sys.executable, "-c", HOG.format(mib=160),
                      str(tmp_path / "allocated"))
    ended = yard.wait_state(hog, "failed", "succeeded", "cancelled", timeout=60)
    assert ended["state"] == "failed"
    assert ended["reason"].startswith("exceeded memory envelope 128M (peak 1"), ended["reason"]
    assert "killed by SIGTERM" in ended["reason"]
    assert yard.run(neighbour)["state"] == "running"

    report = usage_report(yard, hog)
    assert report["summary"]["rss_bytes"]["max"] > 128 << 20
    text = yard.cli("show", str(hog), "--usage").stdout
    assert "memory" in text and "asked 128M, peak 1" in text, text


def test_on_overrun_warn_keeps_the_run_and_records_a_warning(yard, tmp_path):
    fast_sampling(yard)
    yard.start_daemon()
    run_id = yard.submit("--mem", "64M", "--on-overrun", "warn", "--", sys.executable, "-c", HOG.format(mib=80),
                         str(tmp_path / "allocated"))
    warned = poll_until(lambda: (run := yard.run(run_id))["warning"] and run, message="the overrun warning")
    assert warned["state"] == "running"
    assert warned["warning"].startswith("exceeded memory envelope 64M (peak ")
    assert "warning" in yard.cli("show", str(run_id)).stdout


@pytest.mark.skipif(cgroups.detect(allow_move=False) is None, reason="no memory cgroup can be made here")
def test_a_run_killed_by_the_kernel_oom_killer_says_so(yard, tmp_path):
    # Sampling is slowed down so that it is the cgroup's limit that acts.
    (yard.home / "empty-config.toml").write_text('[engine]\nsample_interval = "60s"\n')
    yard.start_daemon()
    neighbour = yard.submit("--mem", "256M", "--", sys.executable, "-c", "import time; time.sleep(600)")
    run_id = yard.submit("--mem", "64M", "--", sys.executable, "-c", HOG.format(mib=1024), str(tmp_path / "x"))
    ended = yard.wait_state(run_id, "failed", "succeeded", timeout=60)
    assert ended["reason"] == "killed by the kernel's OOM killer: exceeded memory envelope 64M", ended["reason"]
    assert yard.run(neighbour)["state"] == "running"


def test_usage_of_a_forking_run_counts_its_whole_process_tree(yard, tmp_path):
    fast_sampling(yard)
    yard.start_daemon()
    run_id = yard.submit("--mem", "1G", "--", sys.executable, "-c", FORKER, str(tmp_path / "forked"))

    def tree_seen():
        summary = usage_report(yard, run_id)["summary"]
        return summary and summary["processes"]["max"] >= 3 and summary["rss_bytes"]["max"] >= 80 << 20 and summary

    summary = poll_until(tree_seen, timeout=DEADLINE_S * 2, interval=0.2, message="the forked children's memory")
    assert summary["samples"] >= 1
    assert yard.run(run_id)["state"] == "running"
    series = usage_report(yard, run_id)["series"]
    assert series and all(point["rss_bytes_max"] >= point["rss_bytes"] for point in series)


def test_foreign_gpu_processes_block_admission_onto_their_gpu(yard):
    write_foreign(yard, {"0": {"mem_used": "70G", "procs": 1, "user": "alice"}})
    yard.start_daemon("--simulate-gpus", "2x80G")
    whole = yard.submit("--gpus", "2", "--", sys.executable, "-c", "import time; time.sleep(600)")
    shared = yard.submit("--gpus", "1", "--gpu-mem", "20G", "--", sys.executable, "-c", "import time; time.sleep(600)")

    running = yard.wait_state(shared, "running")
    assert running["gpus"] == [1]  # card 0 has 10G left beside alice's process
    waiting = poll_until(lambda: (run := yard.run(whole))["reason"].startswith("waiting:") and run,
                         message="a waiting reason for the two-GPU run")
    assert waiting["state"] == "queued"
    assert "outside runyard" in waiting["reason"], waiting["reason"]

    status = yard.json("status")
    processes = status["gpus"][0]["processes"]
    assert [(process["user"], process["run_id"]) for process in processes] == [("alice", None)]
    assert "(alice)" in yard.cli("status").stdout

    yard.cli("cancel", str(shared))
    write_foreign(yard, {})  # alice is done: both cards are free
    assert yard.wait_state(whole, "running")["gpus"] == [0, 1]


def test_a_lost_gpu_is_taken_out_of_service(yard):
    write_foreign(yard, {"1": {"lost": True, "reason": "GPU is lost (Xid 79)"}})
    yard.start_daemon("--simulate-gpus", "2x80G")
    first = yard.submit("--gpus", "1", "--", sys.executable, "-c", "import time; time.sleep(600)")
    second = yard.submit("--gpus", "1", "--", sys.executable, "-c", "import time; time.sleep(600)")
    assert yard.wait_state(first, "running")["gpus"] == [0]
    waiting = poll_until(lambda: (run := yard.run(second))["reason"].startswith("waiting:") and run,
                         message="the second run to wait")
    assert waiting["state"] == "queued"
    assert "unavailable" in waiting["reason"], waiting["reason"]
    card = yard.json("status")["gpus"][1]
    assert (card["available"], card["unavailable_reason"]) == (False, "GPU is lost (Xid 79)")
    assert "UNAVAILABLE: GPU is lost (Xid 79)" in yard.cli("status").stdout


def test_counted_resources_are_shown_in_status(yard):
    (yard.home / "empty-config.toml").write_text("[resources]\nnfs_io = 2\n")
    yard.start_daemon()
    yard.wait_state(yard.submit("--res", "nfs_io=1", "--", sys.executable, "-c", "import time; time.sleep(600)"),
                    "running")
    assert yard.json("status")["resources"] == [{"name": "nfs_io", "capacity": 2, "held": 1}]
    assert "nfs_io   1 of 2 held" in yard.cli("status").stdout


def test_show_usage_without_samples_or_engine_says_so(yard):
    run_id = yard.submit("--hold", "--", "true")  # offline: queued in the database, never sampled
    result = yard.cli("show", str(run_id), "--usage")
    assert "no usage recorded" in result.stdout


def test_priority_of_a_queued_run_changes(yard):
    yard.start_daemon()
    run_id = yard.submit("--hold", "--", "true")
    assert "priority 5" in yard.cli("priority", str(run_id), "5").stdout
    assert yard.run(run_id)["priority"] == 5
    finished = yard.submit("--", "true")
    yard.wait_state(finished, "succeeded")
    refused = yard.cli("priority", str(finished), "1", check=False)
    assert refused.returncode == 1 and "only a queued run" in refused.stderr


def test_preview_says_whether_a_run_would_start_or_why_it_would_wait(yard):
    from engine.client import Client
    from engine.paths import Home

    yard.start_daemon("--simulate-gpus", "1x24G")
    client = Client(Home(yard.home).socket_path)
    sleeper = ["python3", "-c", "import time; time.sleep(600)"]
    request = {"argv": sleeper, "cwd": str(yard.home), "env": {"PATH": os.environ["PATH"]}}
    assert client.call("preview", **request, envelope={"gpus": 1})["verdict"] == "starts"
    yard.wait_state(yard.submit("--gpus", "1", "--", *sleeper), "running")
    waits = client.call("preview", **request, envelope={"gpus": 1})
    assert waits["verdict"] == "waits" and waits["reason"].startswith("waiting: needs 1 GPU"), waits
    refused = client.call("preview", **request, envelope={"gpus": 2})
    assert refused["verdict"] == "refused" and "this box has 1" in refused["reason"], refused
    assert yard.json("ls") and len(yard.json("ls")) == 1  # nothing was queued by previewing
