"""The Slurm backend without Slurm: its readers on recorded output, its sbatch options, and
the engine handing runs over to a stand-in for Slurm's tools (real SQLite, injected clock)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine import shim
from engine.config import ConfigError, load_config
from engine.envelope import Envelope
from engine.model import SUBMITTING, RunState
from engine.retry import RetryPolicy
from engine.slurm import jobs, mapping
from engine.slurm.commands import SlurmError, SlurmTools
from engine.slurm.launcher import SlurmLauncher
from engine_rig import Clock, engine_on_file

G = 1 << 30

# ------------------------------------------------------------------ sbatch options


def test_an_envelope_becomes_sbatch_options_in_slurms_units():
    envelope = Envelope(cpus=2.5, mem_bytes=3 * G + 1, gpus=2, disk_bytes=10 * G, time_limit_s=90,
                        resources={"nfs_io": 1})
    retry = RetryPolicy(requeue=True, warn_signal="SIGUSR1", warn_before_s=30)
    request = mapping.sbatch_options(envelope, retry, name="runyard-7.1-abc", log_path="/r/7/output.log",
                                     cwd="/work", partition="gpu")
    assert request.options == [
        "--job-name=runyard-7.1-abc", "--output=/r/7/output.log", "--open-mode=append", "--chdir=/work",
        "--export=ALL", "--nodes=1", "--ntasks=1", "--cpus-per-task=3", "--mem=3073M", "--partition=gpu",
        "--gres=gpu:2", "--tmp=10240M", "--time=3", "--licenses=nfs_io:1", "--signal=B:USR1@120", "--no-requeue",
    ]
    assert request.notes == ["--cpus 2.5 asks Slurm for 3 (whole CPUs only)"]


def test_gpu_memory_becomes_the_smallest_gpu_kind_that_holds_it_or_a_note():
    envelope = Envelope(gpus=1, gpu_mem_bytes=40 * G)
    kinds = {"a100": 80 * G, "a40": 48 * G, "t4": 16 * G}
    as_gres = mapping.sbatch_options(envelope, RetryPolicy(), name="n", log_path="l", cwd="/",
                                     gpu_types=mapping.GpuTypes(kinds))
    assert "--gres=gpu:a40:1" in as_gres.options and not as_gres.notes
    as_feature = mapping.sbatch_options(envelope, RetryPolicy(), name="n", log_path="l", cwd="/",
                                        gpu_types=mapping.GpuTypes(kinds, as_feature=True))
    assert "--constraint=a40" in as_feature.options and "--gres=gpu:1" in as_feature.options
    unmapped = mapping.sbatch_options(envelope, RetryPolicy(), name="n", log_path="l", cwd="/")
    assert "--gres=gpu:1" in unmapped.options and "--no-requeue" in unmapped.options
    assert unmapped.notes == ["--gpu-mem 40G: this cluster maps no GPU kinds to memory ([slurm] gpu_types); "
                              "Slurm gives whole GPUs of any kind"]
    too_big = mapping.sbatch_options(Envelope(gpus=1, gpu_mem_bytes=100 * G), RetryPolicy(), name="n",
                                     log_path="l", cwd="/", gpu_types=mapping.GpuTypes(kinds))
    assert "no GPU kind in [slurm] gpu_types has that much memory" in too_big.notes[0]


# ------------------------------------------------------------------------ readers

SQUEUE_22_05 = {
    "meta": {"plugin": {"type": "openapi/v0.0.38"}},
    "errors": [],
    "jobs": [
        {"job_id": 1, "name": "runyard-1.1-t", "job_state": "FAILED", "state_reason": "NonZeroExitCode",
         "nodes": "node7", "batch_host": "node7", "start_time": 1796281259, "end_time": 1796281262,
         "exit_code": 1792, "restart_cnt": 0},
        {"job_id": 2, "name": "runyard-2.1-t", "job_state": "PENDING", "state_reason": "Resources",
         "nodes": "", "batch_host": "", "start_time": 1796290000, "end_time": 1796299999, "exit_code": 0},
        {"job_id": 3, "name": "x", "job_state": "CANCELLED", "state_reason": "None", "nodes": "node1",
         "start_time": 1796281259, "end_time": 1796281262, "exit_code": 9},
    ],
}

SQUEUE_24_11 = {
    "jobs": [
        {"job_id": 9, "name": "runyard-9.2-t", "job_state": ["RUNNING"], "state_reason": "None", "nodes": "gpu03",
         "start_time": {"set": True, "infinite": False, "number": 1796281259},
         "end_time": {"set": True, "infinite": False, "number": 1796367659},
         "exit_code": {"status": ["PENDING"], "return_code": {"set": False, "number": 0}}, "restart_cnt": 1},
        {"job_id": 10, "name": "r", "job_state": ["TIMEOUT"], "state_reason": "TimeLimit", "nodes": "gpu04",
         "start_time": {"set": True, "number": 100}, "end_time": {"set": True, "number": 200},
         "exit_code": {"status": ["SIGNALED"], "signal": {"id": {"set": True, "number": 15}, "name": "TERM"}}},
    ],
}


def test_squeue_json_of_slurm_22_05_and_24_11_read_alike():
    old = jobs.jobs_from_json(json.dumps(SQUEUE_22_05))
    assert old["1"].phase == "ended" and old["1"].exit_code == 7 and old["1"].node == "node7"
    assert old["1"].started_at == 1796281259 and old["1"].ended_at == 1796281262
    assert old["2"].phase == "pending" and old["2"].reason == "Resources" and old["2"].node is None
    assert old["2"].started_at is None  # a pending job's start time is Slurm's guess, not a start
    assert old["3"].exit_code == -9 and old["3"].signal == "SIGKILL" and old["3"].ended_by == "cancelled"
    new = jobs.jobs_from_json(json.dumps(SQUEUE_24_11))
    assert new["9"].phase == "running" and new["9"].restarts == 1 and new["9"].exit_code is None
    assert new["10"].ended_by == "timeout" and new["10"].exit_code == -15 and new["10"].ended_at == 200
    with pytest.raises(ValueError):
        jobs.jobs_from_json("squeue: error: something")


def test_the_fixed_format_reads_names_that_hold_the_separator():
    table = ("12|odd|name|RUNNING|None|node2|2026-12-03T07:00:59|2026-12-03T08:00:59\n"
             "13|runyard-3.1-t|PENDING|Priority||N/A|N/A\n")
    read = jobs.jobs_from_table(table)
    assert read["12"].name == "odd|name" and read["12"].node == "node2" and read["12"].ended_at is None
    assert read["12"].started_at == time.mktime(time.strptime("2026-12-03T07:00:59", "%Y-%m-%dT%H:%M:%S"))
    assert read["13"].reason == "Priority" and read["13"].phase == "pending"


def test_sacct_rows_give_exit_codes_and_signals():
    rows = ("41|runyard-3.1-t|FAILED|7:0|2026-12-03T07:00:59|2026-12-03T07:01:09|node4\n"
            "42|x|CANCELLED by 0|0:9|2026-12-03T07:00:59|2026-12-03T07:01:09|node4\n"
            "43|y|PENDING|0:0|Unknown|Unknown|None assigned\n")
    read = jobs.jobs_from_sacct(rows)
    assert read["41"].exit_code == 7 and read["41"].node == "node4" and read["41"].phase == "ended"
    assert read["42"].state == "CANCELLED" and read["42"].exit_code == -9 and read["42"].ended_by == "cancelled"
    assert read["43"].node is None and read["43"].exit_code is None and read["43"].started_at is None


def test_without_accounting_sacct_is_asked_once():
    answers = Answers({"sacct": (1, "", "Slurm accounting storage is disabled\n")})
    tools = SlurmTools({}, runner=answers)
    assert tools.accounted("5") is None and tools.accounted("6") is None
    assert len(answers.calls) == 1


def test_the_line_worth_showing_of_slurms_errors():
    submitted = ("sbatch: error: Memory specification can not be satisfied\n"
                 "sbatch: error: Batch job submission failed: Requested node configuration is not available\n")
    assert jobs.first_error_line(submitted, "?") == "Requested node configuration is not available"
    assert jobs.first_error_line("allocation failure: Requested node configuration is not available\n", "?") \
        == "Requested node configuration is not available"
    assert jobs.first_error_line("sbatch: error: Invalid partition name specified\n", "?") == \
        "Invalid partition name specified"
    assert jobs.first_error_line("", "exit code 1") == "exit code 1"
    plugin = ("sbatch: error: Jobs on the gpu partition must ask for --gpus\n"
              "sbatch: error: Batch job submission failed: Unspecified error\n")
    assert jobs.first_error_line(plugin, "?") == "Jobs on the gpu partition must ask for --gpus"


def test_gpus_are_counted_in_every_gres_spelling():
    assert jobs.gpu_count("gpu:2") == 2
    assert jobs.gpu_count("gpu:a100:4(S:0-1)") == 4
    assert jobs.gpu_count("gpu:1(IDX:0),shard:2") == 1
    assert jobs.gpu_count("gpu:a100:2,gpu:t4:1") == 3
    assert jobs.gpu_count("(null)") == 0 and jobs.gpu_count(None) == 0


def test_sinfo_tables_give_nodes_and_partitions():
    nodes = jobs.nodes_from_table("n1|mixed|1/1/0/2|20000|gpu:2|debug*|none\n"
                                  "n1|mixed|1/1/0/2|20000|gpu:2|long|none\n"
                                  "n2|drained|0/0/4/4|1000|(null)|debug*|bad disk\n")
    assert [node["name"] for node in nodes] == ["n1", "n2"]
    assert nodes[0]["partitions"] == ["debug", "long"] and nodes[0]["gpus_total"] == 2
    assert nodes[1]["reason"] == "bad disk" and nodes[1]["cpus_total"] == 4
    partitions = jobs.partitions_from_table("debug*|up|infinite|2|1/1/4/6|gpu:2\nlong|up|7-00:00:00|1|1/1/0/2|gpu:2\n",
                                            nodes)
    assert partitions[0] == {"name": "debug", "state": "up", "default": True, "nodes": 2, "time_limit": "infinite",
                             "cpus_alloc": 1, "cpus_idle": 5, "cpus_total": 6, "gpus_total": 2, "gpus_used": 0}
    assert partitions[1]["default"] is False and partitions[1]["time_limit"] == "7-00:00:00"


# ------------------------------------------------------------------------ the tools


@dataclass
class Answers:
    """A stand-in for subprocess.run: answers by the program's name."""

    by_program: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)

    def __call__(self, argv, **kwargs):
        self.calls.append(argv)
        answer = self.by_program[os.path.basename(argv[0])]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(argv)
        return subprocess.CompletedProcess(argv, *answer)


def test_a_slurm_without_json_is_read_in_fixed_format_from_then_on():
    def squeue(argv):
        if "--json" in argv:
            return subprocess.CompletedProcess(argv, 1, "", "squeue: unrecognized option '--json'\n")
        return subprocess.CompletedProcess(argv, 0, "5|runyard-1.1-t|RUNNING|None|n1|2026-12-03T07:00:59|N/A\n", "")

    answers = Answers({"squeue": squeue})
    tools = SlurmTools({}, runner=answers)
    assert tools.queue()["5"].node == "n1"
    tools.queue()
    assert sum("--json" in call for call in answers.calls) == 1


def test_tool_failures_are_one_line_errors():
    for failure, words in (
        (FileNotFoundError(), "squeue is not installed here"),
        (subprocess.TimeoutExpired("squeue", 30), "squeue did not answer in 30s"),
        ((1, "", "squeue: error: Unable to contact slurm controller (connect failure)\n"),
         "squeue: Unable to contact slurm controller"),
    ):
        tools = SlurmTools({}, runner=Answers({"squeue": failure}))
        with pytest.raises(SlurmError, match=words):
            tools.queue()


def test_the_job_gets_the_runs_environment_and_what_sbatch_needs_to_find_the_cluster():
    tools = SlurmTools({"SLURM_CONF": "/etc/x.conf", "HOME": "/root", "SLURM_JOB_ID": "1"}, runner=Answers())
    env = tools.job_env({"HOME": "/home/u", "PATH": "/bin", "SLURM_JOB_ID": "99", "SBATCH_ACCOUNT": "lab"})
    assert env == {"HOME": "/home/u", "PATH": "/bin", "SLURM_CONF": "/etc/x.conf", "SBATCH_ACCOUNT": "lab"}


# ------------------------------------------------------------ engine and launcher


class FakeSlurm:
    """Slurm's tools as a dictionary of jobs that a test moves between states."""

    def __init__(self) -> None:
        self.jobs: dict[str, jobs.Job] = {}
        self.submitted: list[tuple[list[str], list[str], dict]] = []
        self.cancelled: list[str] = []
        self.signals: list[tuple[str, str]] = []
        self.refuse: str | None = None
        self.down: bool = False
        self.hidden: set[str] = set()
        self.slow_sbatch = False
        """sbatch times out although slurmctld took the job (listed once ``hidden`` is cleared)."""
        self.sbatch_down = False
        self.refusal_checks = 0
        self.sbatch_calls = 0
        self.estimate: tuple[float, str] | None = None
        self.accounts: dict[str, jobs.Job] = {}
        """What sacct would say of jobs squeue has forgotten."""
        self.next_id = 100

    def submit(self, options, script, args, env):
        self.sbatch_calls += 1
        if self.down or self.sbatch_down:
            raise SlurmError("sbatch did not answer in 30s: is slurmctld up?")
        if self.refuse:
            raise SlurmError(f"sbatch: {self.refuse}")
        self.next_id += 1
        job_id = str(self.next_id)
        name = next(option.split("=", 1)[1] for option in options if option.startswith("--job-name="))
        self.jobs[job_id] = jobs.Job(job_id, name, "PENDING", "Priority")
        self.submitted.append((list(options), list(args), dict(env)))
        if self.slow_sbatch:
            self.hidden.add(job_id)  # slurmctld took it, slowly: not listed yet
            raise SlurmError("sbatch did not answer in 30s: is slurmctld up?")
        return job_id

    def refusal(self, options, script):
        self.refusal_checks += 1
        return self.refuse

    def expected_start(self, options, script):
        return self.estimate

    def queue(self):
        if self.down:
            raise SlurmError("squeue: Unable to contact slurm controller")
        return {job_id: job for job_id, job in self.jobs.items() if job_id not in self.hidden}

    def accounted(self, job_id):
        return self.accounts.get(job_id)

    def signal(self, job_id, signame):
        self.signals.append((job_id, signame))
        return True

    def cancel(self, job_id):
        if self.down:
            raise SlurmError("scancel: Unable to contact slurm controller (connect failure)")
        self.cancelled.append(job_id)
        if job_id in self.jobs:
            self.move(job_id, "CANCELLED")

    def cluster(self, partition):
        return {"partition": partition, "partitions": [], "nodes": [], "error": None}

    def move(self, job_id, state, **facts):
        job = self.jobs[job_id]
        self.jobs[job_id] = jobs.Job(job_id, job.name, state, facts.pop("reason", ""), **facts)


def json_answer(payload):
    return lambda argv: subprocess.CompletedProcess(argv, 0, json.dumps(payload), "")


@pytest.fixture
def cluster_rig(tmp_path):
    clock = Clock()
    slurm = FakeSlurm()
    launcher = SlurmLauncher(tmp_path / "runs", tools=slurm, poll_interval_s=0, clock=clock)
    engine, conn = engine_on_file(tmp_path, launcher, clock, gpu_source="slurm")
    yield engine, slurm, clock
    conn.close()


def queue_run(engine, tmp_path, **request):
    base = {"argv": [sys.executable, "train.py", "two words"], "cwd": str(tmp_path),
            "env": {"CUDA_VISIBLE_DEVICES": "3", "PATH": os.environ.get("PATH", "/usr/bin")},
            "envelope": {"mem_bytes": G}}
    base.update(request)
    return engine.submit(base, uid=None, user=None).id


def start_first_job(cluster_rig) -> None:
    """Hand the queued runs over and have Slurm start the first job (101) on node n1."""
    engine, slurm, clock = cluster_rig
    engine.tick()
    slurm.move("101", "RUNNING", node="n1", started_at=clock.now)
    clock.now += 1
    engine.tick()


def write_exit(engine, run_id, exit_code, signal_name=None):
    run = engine.store.get(run_id)
    folder = Path(run.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / shim.EXIT_FILE).write_text(json.dumps({"exit_code": exit_code, "signal": signal_name,
                                                     "ended_at": engine.clock()}))


def test_a_run_is_handed_over_followed_while_pending_and_running_and_ends_with_its_exit_code(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.QUEUED and run.backend_job == "101"
    options, args, env = slurm.submitted[0]
    assert args[-4:] == ["--", sys.executable, "train.py", "two words"] and "--forward" in args
    assert "CUDA_VISIBLE_DEVICES" not in env  # Slurm picks the node's GPUs and says which
    assert env["RUNYARD_RUN_ID"] == str(run_id)
    clock.now += 1
    engine.tick()
    assert engine.store.get(run_id).reason == "waiting in Slurm: Priority (job 101)"
    slurm.move("101", "RUNNING", node="node3", started_at=clock.now - 0.5)
    clock.now += 1
    engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.RUNNING and run.node == "node3" and run.started_at == clock.now - 1.5
    write_exit(engine, run_id, 0)
    slurm.move("101", "COMPLETED", node="node3", exit_code=0)
    clock.now += 1
    engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.SUCCEEDED and run.reason == "exit code 0" and len(slurm.submitted) == 1


def test_an_interrupted_hand_over_adopts_the_job_slurm_got_and_resubmits_only_when_it_got_none(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    adopted = queue_run(engine, tmp_path, name="adopted")
    again = queue_run(engine, tmp_path, name="again")
    for run_id in (adopted, again):
        assert engine.store.update(run_id, RunState.QUEUED, backend_job=SUBMITTING)
    # sbatch ran for the first one before the engine stopped; not for the second.
    name = mapping.job_name(adopted, 1, engine.launcher.home_tag)
    slurm.jobs["55"] = jobs.Job("55", name, "RUNNING", node="n1", started_at=clock.now)
    engine.recover()
    engine.tick()
    assert engine.store.get(adopted).backend_job == "55" and engine.store.get(adopted).state is RunState.RUNNING
    # Found not to have reached Slurm, it is handed over again in the same tick, once.
    assert engine.store.get(again).backend_job == "101"
    engine.tick()
    assert engine.store.get(again).backend_job == "101" and len(slurm.submitted) == 1


def test_nothing_is_concluded_while_slurm_cannot_be_reached(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    running = queue_run(engine, tmp_path)
    start_first_job(cluster_rig)
    slurm.down = True
    slurm.jobs.clear()  # what a wrong conclusion would read as "vanished"
    fresh = queue_run(engine, tmp_path)
    for _ in range(3):
        clock.now += 5
        engine.tick()
    assert engine.store.get(running).state is RunState.RUNNING
    waiting = engine.store.get(fresh)
    assert waiting.state is RunState.QUEUED and waiting.backend_job == SUBMITTING
    assert "Slurm did not take it (sbatch did not answer in 30s" in waiting.reason
    # Back up: the running job is found again, and the waiting run, which Slurm never got,
    # is handed over once.
    slurm.down = False
    slurm.jobs["101"] = jobs.Job("101", "x", "RUNNING", node="n1", started_at=clock.now)
    for _ in range(3):
        clock.now += 5
        engine.tick()
    assert engine.store.get(running).state is RunState.RUNNING
    assert engine.store.get(fresh).backend_job == "102" and len(slurm.submitted) == 2


def test_a_hand_over_that_timed_out_is_adopted_when_slurm_got_it_after_all(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    slurm.slow_sbatch = True
    run_id = queue_run(engine, tmp_path)
    engine.tick()
    engine.tick()  # polled at the instant of the attempt: not finding the job proves nothing yet
    assert engine.store.get(run_id).backend_job == SUBMITTING and len(slurm.submitted) == 1
    slurm.hidden.clear()
    clock.now += 5
    engine.tick()
    assert engine.store.get(run_id).backend_job == "101" and len(slurm.submitted) == 1


def test_a_job_slurm_forgot_without_an_exit_record_is_lost(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    start_first_job(cluster_rig)
    del slurm.jobs["101"]
    clock.now += 1
    engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.FAILED and run.reason == "lost: Slurm no longer knows job 101 and it left no exit record"


def test_a_job_squeue_forgot_is_read_from_slurms_accounting(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    start_first_job(cluster_rig)
    # The shim was killed (no exit record) and the daemon was away past MinJobAge.
    del slurm.jobs["101"]
    slurm.accounts["101"] = jobs.Job("101", "x", "FAILED", node="n1", started_at=clock.now - 1,
                                     ended_at=clock.now, exit_code=7)
    clock.now += 1
    engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.FAILED and run.exit_code == 7 and run.reason == "exit code 7"


def test_a_sweep_asks_slurm_once_whether_its_runs_could_ever_run(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    base = {"argv": [sys.executable, "train.py"], "cwd": str(tmp_path), "env": {"PATH": os.environ["PATH"]},
            "envelope": {"mem_bytes": G, "gpus": 1}}
    runs = engine.submit_many([{**base, "argv": [sys.executable, "train.py", f"--lr={lr}"]} for lr in range(20)],
                              uid=None, user=None)
    assert len(runs) == 20 and slurm.refusal_checks == 1
    queue_run(engine, tmp_path, envelope={"mem_bytes": 2 * G})
    assert slurm.refusal_checks == 2  # another envelope is another question


def test_the_preview_gives_slurms_own_estimate(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    request = {"argv": [sys.executable], "cwd": str(tmp_path), "env": {}, "envelope": {"mem_bytes": G}}
    assert engine.preview(request)["verdict"] == "waits"
    slurm.estimate = (clock.now + 1, "node7")
    assert engine.preview(request)["reason"] == "Slurm would start it now on node7"
    slurm.estimate = (clock.now + 3600, "node[1-2]")
    later = engine.preview(request)
    assert later["verdict"] == "waits" and later["reason"].endswith(
        f"Slurm expects to start it at {time.strftime('%H:%M:%S', time.localtime(clock.now + 3600))} on node[1-2]")
    slurm.refuse = "Requested node configuration is not available"
    assert engine.preview({**request, "envelope": {"mem_bytes": 1 << 50}})["verdict"] == "refused"


def test_sbatch_test_only_estimates_are_read():
    line = "sbatch: Job 5 to start at 2026-12-03T07:01:09 using 1 processors on nodes localhost in partition bench"
    at, nodes = jobs.expected_start(line)
    assert nodes == "localhost" and at == time.mktime(time.strptime("2026-12-03T07:01:09", "%Y-%m-%dT%H:%M:%S"))
    assert jobs.expected_start("allocation failure: nope") is None


def test_a_refusal_at_hand_over_fails_the_run_with_slurms_reason(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    slurm.refuse = "Invalid partition name specified"
    engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.FAILED and run.reason == "cannot start: refused by Slurm: Invalid partition name specified"


def test_submit_is_refused_when_slurm_says_no_node_could_ever_hold_it(cluster_rig, tmp_path):
    from engine.protocol import RequestError

    engine, slurm, clock = cluster_rig
    slurm.refuse = "Requested node configuration is not available"
    with pytest.raises(RequestError, match="Slurm would never run it: Requested node configuration is not available"):
        queue_run(engine, tmp_path, envelope={"mem_bytes": 1 << 50})
    assert engine.store.in_state(RunState.QUEUED) == []


@pytest.mark.parametrize(("state", "retries", "expected_state", "words", "requeued"), [
    ("TIMEOUT", 0, RunState.TIMED_OUT, "time limit 1m reached (Slurm stopped it)", True),
    ("CANCELLED", 1, RunState.CANCELLED, "cancelled in Slurm (scancel outside runyard)", False),
    ("NODE_FAIL", 1, RunState.FAILED, "lost: Slurm node failed on n1", True),
    ("OUT_OF_MEMORY", 0, RunState.FAILED, "killed by Slurm: out of memory", False),
])
def test_slurms_end_states_become_runyards(cluster_rig, tmp_path, state, retries, expected_state, words, requeued):
    from runyard import checkpoint

    engine, slurm, clock = cluster_rig
    checkpoint_dir = tmp_path / "ck"
    saved = checkpoint.save({"step": 10}, 10, directory=checkpoint_dir)
    run_id = queue_run(engine, tmp_path, envelope={"mem_bytes": G, "time_limit_s": 60},
                       retry={"requeue": True, "retries": retries, "backoff_min_s": 0, "backoff_max_s": 0},
                       checkpoint_dir=str(checkpoint_dir))
    start_first_job(cluster_rig)
    slurm.move("101", state, node="n1", exit_code=-15, ended_at=clock.now)
    clock.now += 1
    engine.tick()
    run = engine.store.get(run_id)
    attempt = engine.store.attempts(run_id)[0]
    assert attempt["state"] == expected_state.value and words in attempt["reason"], attempt
    if requeued:
        # Requeued and, with no backoff, handed over again in the same tick, to resume.
        assert run.state is RunState.QUEUED and run.attempt == 2 and run.backend_job == "102"
        assert run.resume_from == str(saved)
        assert slurm.submitted[1][2]["RUNYARD_RESUME_FROM"] == str(saved)
    else:
        assert run.state is expected_state


def test_a_job_an_admin_requeues_runs_again_as_the_same_attempt_and_its_old_exit_record_is_dropped(
        cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    start_first_job(cluster_rig)
    write_exit(engine, run_id, -15, "SIGTERM")  # the first start's, killed by the requeue
    slurm.move("101", "PENDING", reason="BeginTime", restarts=1)
    clock.now += 1
    engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.QUEUED and run.attempt == 1 and run.backend_job == "101" and run.started_at is None
    assert run.reason == "waiting in Slurm: BeginTime (job 101)"
    assert any("Slurm requeued job 101 (BeginTime)" in t["reason"] for t in engine.store.transitions(run_id))
    assert not (Path(run.run_dir) / shim.EXIT_FILE).exists()
    slurm.move("101", "RUNNING", node="n2", started_at=clock.now)
    clock.now += 1
    engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.RUNNING and run.node == "n2" and len(slurm.submitted) == 1
    assert engine.store.attempts(run_id) == []


def test_stops_reach_the_job_script_and_cancel_withdraws_a_pending_job(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    running = queue_run(engine, tmp_path, grace_s=5)
    pending = queue_run(engine, tmp_path)
    start_first_job(cluster_rig)
    engine.cancel(pending)
    assert slurm.cancelled == ["102"] and engine.store.get(pending).state is RunState.CANCELLED
    engine.cancel(running)
    assert slurm.signals == [("101", "TERM")]
    clock.now += 6
    engine.tick()
    assert slurm.signals[-1] == ("101", "KILL")


def test_holding_a_handed_over_run_takes_it_back_from_slurm(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    engine.tick()
    engine.set_held(run_id, True)
    assert slurm.cancelled == ["101"] and engine.store.get(run_id).backend_job is None
    engine.tick()
    assert len(slurm.submitted) == 1
    engine.set_held(run_id, False)
    engine.tick()
    assert engine.store.get(run_id).backend_job == "102"


def test_the_status_says_slurm_and_keeps_the_last_cluster_figures_while_slurm_is_silent(cluster_rig):
    engine, slurm, clock = cluster_rig
    slurm.cluster = lambda partition: {"partition": partition, "partitions": [{"name": "debug"}], "nodes": [],
                                       "error": None}
    status = engine.status()
    assert status["backend"] == "slurm" and status["cluster"]["error"] is None
    read_at = status["cluster"]["at"]

    def silent(partition):
        raise SlurmError("sinfo did not answer in 30s: is slurmctld up?")

    slurm.cluster = silent
    clock.now += 10
    view = engine.status()["cluster"]
    assert view["error"] == "sinfo did not answer in 30s: is slurmctld up?"
    assert view["partitions"] == [{"name": "debug"}] and view["at"] == read_at


# ----------------------------------------------------------------- config, CLI, shim


def test_slurm_settings_are_read_and_bad_ones_named(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[engine]\nbackend = "slurm"\n[slurm]\npartition = "gpu"\npoll_interval = "5s"\n'
                    'gpu_types = { a100 = "80G", t4 = "16G" }\ngpu_types_as = "feature"\n')
    config = load_config(path)
    assert config.backend == "slurm" and config.slurm.partition == "gpu" and config.slurm.poll_interval_s == 5
    assert config.slurm.gpu_types == (("a100", 80 * G), ("t4", 16 * G)) and config.slurm.gpu_types_as == "feature"
    for text, words in (('[engine]\nbackend = "k8s"\n', "engine.backend: write one of local, slurm"),
                        ('[slurm]\npoll_interval = "0.1s"\n', "slurm.poll_interval: at least 0.5s"),
                        ('[slurm]\ngpu_types = { a100 = "lots" }\n', "slurm.gpu_types.a100"),
                        ('[slurm]\nqueue = "x"\n', "slurm.queue: unknown key")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
            load_config(path)


def test_backend_options_outside_the_daemon_are_refused_in_one_line(yard):
    result = yard.cli("--backend", "slurm", "ls", check=False)
    assert result.returncode == 2 and "go with --daemon" in result.stderr
    result = yard.cli("--daemon", "--partition", "gpu", check=False)
    assert result.returncode == 2 and "--partition goes with the Slurm backend" in result.stderr


def test_a_slurm_daemon_without_slurms_tools_says_so_in_one_line(yard):
    yard.extra_env["PATH"] = str(Path(sys.executable).parent)  # no sbatch there
    result = yard.cli("--daemon", "--backend", "slurm", check=False, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("runyard: the Slurm backend needs sbatch, squeue, scancel, sinfo on PATH"), result.stderr


def test_the_shim_passes_forwarded_signals_on_to_the_command(tmp_path):
    marker = tmp_path / "got-usr1"
    child = ("import signal, sys, time, pathlib\n"
             f"signal.signal(signal.SIGUSR1, lambda *a: (pathlib.Path({str(marker)!r}).write_text('yes'), sys.exit(4)))\n"
             f"pathlib.Path({str(tmp_path / 'ready')!r}).write_text('')\n"
             "time.sleep(60)\n")
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(Path(shim.__file__).with_name("shim_start.py")), str(tmp_path),
         "--forward", "TERM,USR1", "--", sys.executable, "-c", child],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGUSR1)  # to the shim only, as `scancel --batch` does
        assert process.wait(timeout=30) == 4
        assert marker.read_text() == "yes"
        assert json.loads((tmp_path / shim.EXIT_FILE).read_text())["exit_code"] == 4
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_shim_refuses_an_unknown_signal_to_forward():
    with pytest.raises(ValueError, match="--forward takes signal names"):
        shim.parse_args(["/tmp/x", "--forward", "TERM,NOPE", "--", "true"])


# ------------------------------------------------------- what review found, kept fixed


def test_squeue_json_that_carries_errors_is_slurm_unreachable_not_an_empty_queue():
    down = {"errors": [{"error": "Unable to contact slurm controller (connect failure)", "errno": 1007}], "jobs": []}
    tools = SlurmTools({}, runner=Answers({"squeue": json_answer(down), "sinfo": json_answer({**down, "nodes": []})}))
    with pytest.raises(SlurmError, match="squeue: Unable to contact slurm controller"):
        tools.queue()
    with pytest.raises(SlurmError, match="sinfo: Unable to contact slurm controller"):
        tools.cluster(None)
    assert tools.json  # Slurm has JSON; it was only unreachable


def test_a_pending_job_that_vanishes_is_handed_over_again_without_pausing_its_owner(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    engine.tick()
    for expected in ("102", "103", "104", "105", "106", "107"):
        slurm.jobs.clear()  # cancelled outside, then forgotten while the daemon was away
        clock.now += 5
        engine.tick()
        assert engine.store.get(run_id).backend_job == expected
    assert engine.store.pauses() == {} and engine.store.attempts(run_id) == []


def test_an_exit_record_waits_a_little_for_slurms_end_state(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    oom = queue_run(engine, tmp_path)
    plain = queue_run(engine, tmp_path)
    engine.tick()
    for job_id in ("101", "102"):
        slurm.move(job_id, "RUNNING", node="n1", started_at=clock.now)
    clock.now += 1
    engine.tick()
    write_exit(engine, oom, -9, "SIGKILL")
    write_exit(engine, plain, 0)
    clock.now += 1
    engine.tick()
    assert engine.store.get(oom).state is RunState.RUNNING  # Slurm still says RUNNING (COMPLETING)
    slurm.move("101", "OUT_OF_MEMORY", node="n1", exit_code=-9)
    clock.now += 1
    engine.tick()
    assert "killed by Slurm: out of memory" in engine.store.get(oom).reason
    assert engine.store.get(plain).state is RunState.RUNNING
    clock.now += 40  # Slurm never said: the exit record alone decides
    engine.tick()
    assert engine.store.get(plain).state is RunState.SUCCEEDED


@pytest.mark.parametrize("message", [
    "Protocol authentication error",
    "Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
])
def test_a_failed_sbatch_that_is_not_a_refusal_keeps_runs_queued_and_stops_the_tick(cluster_rig, tmp_path, message):
    engine, slurm, clock = cluster_rig
    first, second = queue_run(engine, tmp_path), queue_run(engine, tmp_path)
    slurm.refuse = message
    engine.tick()
    assert slurm.sbatch_calls == 1  # the second run was not tried in the same tick
    for run_id in (first, second):
        assert engine.store.get(run_id).state is RunState.QUEUED
    assert "Slurm did not take it" in engine.store.get(first).reason


def test_an_unreachable_slurm_at_submit_is_not_a_refusal_and_is_not_remembered(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    slurm.refuse = "Unable to contact slurm controller (connect failure)"
    queue_run(engine, tmp_path)
    queue_run(engine, tmp_path)
    assert slurm.refusal_checks == 2


def test_a_cancel_that_did_not_reach_slurm_is_made_good_at_a_later_poll(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    engine.tick()
    slurm.down = True
    engine.cancel(run_id)
    assert engine.store.get(run_id).state is RunState.CANCELLED and slurm.cancelled == []
    slurm.down = False
    clock.now += 5
    engine.tick()
    assert slurm.cancelled == ["101"]


def test_a_job_of_a_run_cancelled_while_its_hand_over_was_in_flight_is_cancelled(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    slurm.slow_sbatch = True
    run_id = queue_run(engine, tmp_path)
    engine.tick()
    engine.cancel(run_id)
    slurm.hidden.clear()
    clock.now += 5
    engine.tick()
    assert slurm.cancelled == ["101"] and engine.store.get(run_id).state is RunState.CANCELLED


def test_cancelling_a_run_whose_job_started_since_the_last_poll_stops_it_as_a_running_run(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    engine.tick()
    slurm.move("101", "RUNNING", node="n1", started_at=clock.now)  # no poll since
    run = engine.cancel(run_id)
    assert run.state is RunState.RUNNING and run.stop_request == "cancel"
    assert slurm.signals == [("101", "TERM")]


def test_the_run_cannot_pick_the_cluster_nor_the_tools():
    tools = SlurmTools({"SLURM_CONF": "/etc/slurm/ours.conf", "PATH": "/usr/bin"}, runner=Answers())
    env = tools.job_env({"SLURM_CONF": "/home/u/other.conf", "SLURM_CLUSTERS": "elsewhere", "PATH": "/nowhere"})
    assert env == {"SLURM_CONF": "/etc/slurm/ours.conf", "PATH": "/nowhere"}
    assert tools.paths["sbatch"] == (shutil.which("sbatch", path="/usr/bin") or "sbatch")


def test_no_memory_asked_is_no_mem_option_and_hand_overs_are_capped_per_tick(cluster_rig, tmp_path):
    from engine import handover

    request = mapping.sbatch_options(Envelope(mem_bytes=0), RetryPolicy(), name="n", log_path="l", cwd="/")
    assert not [option for option in request.options if option.startswith("--mem")]
    engine, slurm, clock = cluster_rig
    for _ in range(handover.MAX_PER_TICK + 5):
        queue_run(engine, tmp_path)
    engine.tick()
    assert len(slurm.submitted) == handover.MAX_PER_TICK
    clock.now += 5
    engine.tick()
    assert len(slurm.submitted) == handover.MAX_PER_TICK + 5


def test_a_released_run_never_adopts_the_job_its_hold_withdrew(cluster_rig, tmp_path):
    engine, slurm, clock = cluster_rig
    run_id = queue_run(engine, tmp_path)
    engine.tick()
    engine.set_held(run_id, True)  # job 101 cancelled; squeue lists it for minutes
    engine.set_held(run_id, False)
    slurm.sbatch_down = True
    for _ in range(2):
        clock.now += 5
        engine.tick()
    run = engine.store.get(run_id)
    assert run.state is RunState.QUEUED and run.backend_job == SUBMITTING
    slurm.sbatch_down = False
    clock.now += 5
    engine.tick()
    assert engine.store.get(run_id).backend_job == "102"
