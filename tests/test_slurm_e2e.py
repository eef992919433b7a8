"""The Slurm backend end to end: a real one-node Slurm cluster (munged, slurmctld, slurmd
on localhost), the real daemon with ``--backend slurm``, the real CLI, real jobs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import DEADLINE_S, poll_until
from slurm_cluster import ClusterUnavailable, LocalSlurm, installed
from test_resume_e2e import TRAIN_TINY, final_sha, train_command

pytestmark = pytest.mark.skipif(
    not installed() and not os.environ.get("RUNYARD_REQUIRE_SLURM"),
    reason="Slurm is not installed (apt-get install slurm-wlm munge)",
)

SLOW = DEADLINE_S * 3  # a job's start waits for slurmctld's scheduling pass and slurmd's launch


@pytest.fixture(scope="module")
def cluster():
    try:
        slurm = LocalSlurm().start()
    except ClusterUnavailable as error:
        pytest.fail(f"Slurm is installed but the test cluster would not start: {error}")
    try:
        yield slurm
    finally:
        slurm.cancel_all()
        slurm.stop()


@pytest.fixture
def slurm_yard(yard, cluster):
    """A runyard home whose daemon (and CLI) talk to the test cluster; its queue is emptied after."""
    yard.extra_env.update(cluster.env)
    try:
        yield yard
    finally:
        cluster.cancel_all()
        poll_until(lambda: all(cluster.job_state(job) not in ("RUNNING", "PENDING", "COMPLETING")
                               for job in cluster.job_ids()),
                   timeout=SLOW, message="the test's jobs to leave the cluster")


def test_a_run_succeeds_on_a_node_with_its_log_and_provenance(slurm_yard, cluster):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm")
    run_id = yard.submit("--name", "hello", "--", sys.executable, "-c", "import sys; print('hi from', sys.argv)",
                         "two words", "$HOME")
    done = yard.wait_state(run_id, "succeeded", "failed", timeout=SLOW)
    assert done["state"] == "succeeded", done["reason"]
    assert done["node"] == "localhost" and done["backend_job"].isdigit()
    assert cluster.job_state(done["backend_job"]) == "COMPLETED"
    # The argv reached the command as given: no shell split "two words" or expanded $HOME.
    assert "hi from ['-c', 'two words', '$HOME']" in yard.cli("logs", str(run_id)).stdout
    assert "job " + done["backend_job"] in yard.cli("show", str(run_id)).stdout
    assert json.loads(yard.cli("show", str(run_id), "--provenance", "--json").stdout)["provenance"]["argv"][-1] == "$HOME"
    assert "WHERE" in yard.cli("ls").stdout and f"localhost:{done['backend_job']}" in yard.cli("ls").stdout


def test_a_failing_run_records_its_exit_code(slurm_yard, cluster):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm")
    run_id = yard.submit("--", "sh", "-c", "echo about to fail; exit 3")
    done = yard.wait_state(run_id, "succeeded", "failed", timeout=SLOW)
    assert done["state"] == "failed" and done["exit_code"] == 3 and done["reason"] == "exit code 3"
    assert cluster.job_state(done["backend_job"]) == "FAILED"
    assert "about to fail" in yard.cli("logs", str(run_id)).stdout


def test_cancel_ends_a_running_job_and_withdraws_a_pending_one(slurm_yard, cluster):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm")
    # The node has as many CPUs as the box: the first run takes them all, the second waits in Slurm.
    running = yard.submit("--cpus", str(cluster.cpus), "--grace", "2s", "--", "sleep", "300")
    pending = yard.submit("--cpus", str(cluster.cpus), "--", "sleep", "300")
    yard.wait_state(running, "running", timeout=SLOW)
    poll_until(lambda: "waiting in Slurm: " in yard.run(pending)["reason"], timeout=SLOW,
               message="Slurm's pending reason")
    waiting = yard.run(pending)
    assert waiting["state"] == "queued" and waiting["reason"] in (
        f"waiting in Slurm: Resources (job {waiting['backend_job']})",
        f"waiting in Slurm: Priority (job {waiting['backend_job']})",
    )
    yard.cli("cancel", str(pending))
    poll_until(lambda: cluster.job_state(waiting["backend_job"]) in (None, "CANCELLED"), timeout=SLOW,
               message="the pending job to be withdrawn from Slurm")
    job = yard.run(running)["backend_job"]
    yard.cli("cancel", str(running))
    done = yard.wait_state(running, "cancelled", "failed", timeout=SLOW)
    assert done["state"] == "cancelled" and "cancelled by user" in done["reason"], done["reason"]
    poll_until(lambda: cluster.job_state(job) in (None, "COMPLETED", "CANCELLED", "FAILED"), timeout=SLOW,
               message="the cancelled job to end in Slurm")
    assert yard.run(pending)["state"] == "cancelled"


def test_a_run_no_node_can_hold_is_refused_at_submit_with_slurms_reason(slurm_yard):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm")
    for ask in (["--mem", "100000G"], ["--gpus", "3"], ["--cpus", "64"]):
        result = yard.cli("submit", *ask, "--", "true", check=False)
        assert result.returncode != 0, ask
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "Slurm would never run it: Requested node configuration is not available" in lines[0]
        assert "nothing was queued" in lines[0]
    assert yard.json("ls", "--all") == []
    # What fits the node's two GPUs is taken.
    gpu_run = yard.submit("--gpus", "2", "--", "sh", "-c", "echo gpus=$SLURM_GPUS_ON_NODE")
    assert yard.wait_state(gpu_run, "succeeded", "failed", timeout=SLOW)["state"] == "succeeded"
    assert "gpus=2" in yard.cli("logs", str(gpu_run)).stdout


@pytest.mark.skipif(not TRAIN_TINY.exists(), reason="examples/train_tiny.py is missing")
def test_a_time_limited_run_is_requeued_and_resumes_from_its_checkpoint(slurm_yard, cluster):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm")
    run_id = yard.submit("--mem", "2G", "--time", "5s", "--grace", "3s", "--requeue", "--",
                         *train_command(sleep=0.03))
    done = yard.wait_state(run_id, "succeeded", "failed", "timed_out", timeout=SLOW * 4)
    assert done["state"] == "succeeded", done["reason"]
    assert done["attempt"] >= 2 and done["retries_used"] == 0
    slots = done["attempt_history"][:-1]
    assert slots and all(a["failure_class"] == "timeout" for a in slots)
    assert all(a["resumed_from"] for a in done["attempt_history"][1:])
    # Each slot was its own Slurm job; the run ends with the weights of an uninterrupted run.
    assert final_sha(Path(done["log_path"]).read_text()) == _reference_sha()


def _reference_sha() -> str:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
        result = subprocess.run(
            [sys.executable, str(TRAIN_TINY), "--steps", "240", "--every", "10", "--checkpoint-dir", f"{folder}/ck"],
            capture_output=True, text=True, timeout=300, env=env, cwd=folder,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return final_sha(result.stdout)


def test_killing_the_daemon_loses_nothing(slurm_yard, cluster, tmp_path):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm")
    gate = tmp_path / "go"
    wait_for_gate = f"while [ ! -e {gate} ]; do sleep 0.1; done; echo finished"
    first = yard.submit("--cpus", str(cluster.cpus), "--", "sh", "-c", wait_for_gate)
    second = yard.submit("--cpus", str(cluster.cpus), "--", "sh", "-c", "exit 5")
    yard.wait_state(first, "running", timeout=SLOW)
    poll_until(lambda: yard.run(second)["backend_job"], timeout=SLOW, message="the second run to be handed over")
    jobs = {run_id: yard.run(run_id)["backend_job"] for run_id in (first, second)}

    yard.kill_daemon()
    # Slurm keeps both jobs: the first ends and the second runs while no engine watches.
    gate.touch()
    poll_until(lambda: cluster.job_state(jobs[second]) in ("FAILED", "COMPLETED"), timeout=SLOW,
               message="the second job to run and end while the daemon is down")
    queued_while_down = yard.submit("--", "true")  # the CLI queues it in the database itself

    yard.start_daemon("--backend", "slurm")
    assert yard.wait_state(first, "succeeded", "failed", timeout=SLOW)["state"] == "succeeded"
    ended = yard.wait_state(second, "succeeded", "failed", timeout=SLOW)
    assert ended["state"] == "failed" and ended["exit_code"] == 5
    assert yard.wait_state(queued_while_down, "succeeded", "failed", timeout=SLOW)["state"] == "succeeded"
    # Adopted, not submitted again: still one job each.
    assert {run_id: yard.run(run_id)["backend_job"] for run_id in (first, second)} == jobs
    assert "finished" in yard.cli("logs", str(first)).stdout


def test_a_silent_run_is_found_stalled_from_its_log(slurm_yard):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm")
    run_id = yard.submit("--stall-timeout", "3s", "--on-stall", "kill", "--grace", "1s", "--", "sleep", "300")
    done = yard.wait_state(run_id, "failed", "succeeded", timeout=SLOW)
    assert done["state"] == "failed" and "stalled" in done["reason"], done["reason"]


def test_hold_takes_a_pending_run_back_from_slurm_and_release_hands_it_over_again(slurm_yard, cluster):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm")
    blocker = yard.submit("--cpus", str(cluster.cpus), "--", "sleep", "300")
    waiting = yard.submit("--cpus", str(cluster.cpus), "--", "true")
    yard.wait_state(blocker, "running", timeout=SLOW)
    first_job = poll_until(lambda: yard.run(waiting)["backend_job"], timeout=SLOW, message="a job for the run")
    yard.cli("hold", str(waiting))
    poll_until(lambda: cluster.job_state(first_job) in (None, "CANCELLED"), timeout=SLOW,
               message="the held run's job to leave Slurm")
    assert yard.run(waiting)["backend_job"] is None
    yard.cli("release", str(waiting))
    yard.cli("cancel", str(blocker))
    done = yard.wait_state(waiting, "succeeded", "failed", timeout=SLOW)
    assert done["state"] == "succeeded" and done["backend_job"] != first_job


def test_status_shows_the_clusters_partitions_and_nodes(slurm_yard, cluster):
    yard = slurm_yard
    yard.start_daemon("--backend", "slurm", "--partition", "debug")
    status = yard.json("status")
    assert status["backend"] == "slurm" and status["gpus"] == []
    view = status["cluster"]
    assert view["partition"] == "debug" and view["error"] is None
    assert [p["name"] for p in view["partitions"]] == ["debug"]
    node = view["nodes"][0]
    assert node["name"] == "localhost" and node["cpus_total"] == cluster.cpus and node["gpus_total"] == 2
    from engine.client import Client

    client = Client(yard.home / "runyard.sock", timeout_s=30)
    request = {"argv": ["true"], "cwd": str(yard.home), "env": {}, "envelope": {"mem_bytes": 1 << 28}}
    assert client.call("preview", **request) == {
        "verdict": "starts", "reason": "Slurm would start it now on localhost",
        "envelope": client.call("preview", **request)["envelope"], "describe": "1 CPU, 256M"}
    refused = client.call("preview", **{**request, "envelope": {"mem_bytes": 1 << 50}})
    assert refused["verdict"] == "refused" and "Requested node configuration is not available" in refused["reason"]
    text = yard.cli("status").stdout
    assert "slurm    partition debug" in text and f"  localhost: idle, CPUs 0/{cluster.cpus}" in text
    assert "GPUs 0/2" in text


def test_the_fixed_format_readers_agree_with_json_on_a_real_slurm(cluster, tmp_path):
    from engine.slurm.commands import SlurmTools

    job = cluster.client("sbatch", "--parsable", "-o", str(tmp_path / "out"), "--wrap", "exit 2").stdout.strip()
    poll_until(lambda: cluster.job_state(job) == "FAILED", timeout=SLOW, message="the job to fail")
    with_json = SlurmTools({**os.environ, **cluster.env})
    fixed = SlurmTools({**os.environ, **cluster.env}, prefer_json=False)
    a, b = with_json.queue()[job], fixed.queue()[job]
    assert (a.state, a.node, a.started_at, a.ended_at) == (b.state, b.node, b.started_at, b.ended_at)
    assert a.exit_code == 2 and b.exit_code is None  # the fixed format has none: exit.json tells
    # This cluster keeps no accounts: sacct says so once and is not asked again.
    assert with_json.accounted(job) is None and with_json.accounting is False
    nodes_json, nodes_fixed = with_json.cluster(None)["nodes"], fixed.cluster(None)["nodes"]
    assert [(n["name"], n["cpus_total"], n["gpus_total"]) for n in nodes_json] == \
        [(n["name"], n["cpus_total"], n["gpus_total"]) for n in nodes_fixed]


def test_the_test_cluster_stops_with_its_jobs_and_leaves_no_process(tmp_path):
    import psutil

    slurm = LocalSlurm().start()
    try:
        job = slurm.client("sbatch", "--parsable", "-o", str(tmp_path / "out"), "--wrap", "sleep 300").stdout.strip()
        poll_until(lambda: slurm.job_state(job) == "RUNNING", timeout=SLOW, message="the job to run")
        daemons = [process.pid for process in slurm.processes.values()]
        job_processes = poll_until(
            lambda: [p for p in slurm.step_processes() if p.name() == "sleep"] and slurm.step_processes(),
            timeout=SLOW, message="the job's slurmstepd and command")
    finally:
        slurm.stop()
    gone, alive = psutil.wait_procs(job_processes, timeout=10)
    assert alive == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in daemons)
    assert not slurm.folder.exists()


def test_while_slurm_cannot_be_reached_nothing_is_concluded(yard):
    slurm = LocalSlurm().start()
    try:
        yard.extra_env.update(slurm.env)
        yard.start_daemon("--backend", "slurm")
        running = yard.submit("--cpus", str(slurm.cpus), "--", "sleep", "300")
        pending = yard.submit("--cpus", str(slurm.cpus), "--", "sleep", "300")
        yard.wait_state(running, "running", timeout=SLOW)
        poll_until(lambda: "waiting in Slurm" in yard.run(pending)["reason"], timeout=SLOW, message="a pending job")
        before = {run_id: yard.run(run_id) for run_id in (running, pending)}
        # Without munge no Slurm call is authenticated: squeue --json answers "no jobs" and an error.
        slurm.processes["munged"].terminate()
        slurm.processes["munged"].wait(timeout=30)
        since = poll_until(lambda: yard.json("status")["cluster"]["error"] and yard.json("status")["sampled_at"],
                           timeout=SLOW, interval=1, message="the status to tell Slurm cannot be reached")
        # A few more ticks and failed polls (each squeue waits ~9 s for munge): still nothing concluded.
        poll_until(lambda: yard.json("status")["sampled_at"] > since + 10, timeout=SLOW, interval=1,
                   message="the engine to go on ticking")
        for run_id, seen in before.items():
            now = yard.run(run_id)
            assert (now["state"], now["backend_job"]) == (seen["state"], seen["backend_job"]), now["reason"]
    finally:
        slurm.stop()
