"""Pools, reservations and preemption: the pure rules, the engine with fakes, and the real
daemon (a preemptible checkpointing run is preempted, requeued and resumes)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import poll_until
from engine import reservations
from engine.config import Config
from engine.engine import Engine
from engine.envelope import Envelope
from engine.model import RunState
from engine.policy import BoxView, GpuView, Holding, QueuedRun, decide
from engine.probes.simulated import SimulatedGpuProbe
from engine.shared_config import PoolConfig, SharedSettings
from engine.store.shared_tables import apply_shared_migrations
from engine_rig import G, Clock, FakeLauncher, FixedHost, RecordingRandom
from engine.store import sql
from engine.store.runs import RunStore
from engine.store.schema import migrate

H = 3600.0
PY = sys.executable


# ------------------------------------------------------------------------- pure rules


def test_pools_and_reservations_decide_which_gpus_a_run_may_not_get():
    pools = {"interactive": PoolConfig("interactive", (3,), 7200.0)}
    window = reservations.Reservation(1, "bob", (1, 2), start=100 * H, end=104 * H)
    everything = range(4)

    def banned(user="alice", limit=None, pool=None, now=99 * H):
        return reservations.forbidden(user=user, time_limit_s=limit, pool=pool, now=now, reservations=[window],
                                      pools=pools, gpu_indices=everything)

    assert banned() == {1, 2, 3}                       # no time limit: it could reach into the window
    assert banned(limit=H / 2) == {3}                  # ends before the window opens
    assert banned(limit=2 * H) == {1, 2, 3}
    assert banned(user="bob") == {3}                   # the reservation's own user
    assert banned(now=104 * H) == {3}                  # the window is over
    assert banned(pool="interactive") == {0, 1, 2}     # a pool run gets its pool's cards only
    assert reservations.choose_gpus(2, range(4), {3}) == (1, 2)
    assert reservations.choose_gpus(3, range(4), {3, 0}) is None


def _box(cards: int) -> BoxView:
    return BoxView(cpus=16, mem_total=64 * G, gpus=tuple(GpuView(index, 80 * G) for index in range(cards)))


def test_a_higher_priority_run_preempts_only_preemptible_runs_of_lower_priority():
    one_gpu = Envelope(cpus=1, mem_bytes=G, gpus=1)
    holdings = [
        Holding(1, one_gpu, (0,), priority=0, preemptible=True),
        Holding(2, one_gpu, (1,), priority=0, preemptible=False),
    ]
    urgent = QueuedRun(10, one_gpu, priority=5)
    decision = decide([urgent], holdings, _box(2), now=0.0)
    assert decision.preempt == {10: (1,)} and decision.starts == ()
    assert decision.waiting[10] == "waiting: preempting run 1 (priority 0)"
    # Equal priority preempts nothing, and a run not marked preemptible never goes.
    assert decide([QueuedRun(10, one_gpu, priority=0)], holdings, _box(2), 0.0).preempt == {}
    unmarked = [Holding(1, one_gpu, (0,), priority=0), holdings[1]]
    assert decide([urgent], unmarked, _box(2), 0.0).preempt == {}
    # Only as many as it needs, and one victim serves one run.
    both = [Holding(1, one_gpu, (0,), preemptible=True), Holding(2, one_gpu, (1,), preemptible=True)]
    two = decide([QueuedRun(10, one_gpu, priority=5), QueuedRun(11, one_gpu, priority=4)], both, _box(2), 0.0)
    assert two.preempt == {10: (2,), 11: (1,)}
    assert decide([urgent], both, _box(2), 0.0).preempt == {10: (2,)}  # the newest goes first


# ------------------------------------------------------------------------- engine rig


@pytest.fixture
def gpu_rig(tmp_path: Path):
    db_path = tmp_path / "runyard.db"
    migrate(db_path)
    apply_shared_migrations(db_path)
    conn = sql.connect(db_path)
    clock = Clock()
    launcher = FakeLauncher()
    engine = Engine(
        RunStore(conn, tmp_path / "runs"), launcher, FixedHost(),
        SimulatedGpuProbe("2x80G", foreign_file=tmp_path / "sim.json"), gpu_source="simulated", clock=clock,
        rng=RecordingRandom(), boot_time=lambda: 0.0, sample_ttl_s=0.0,
    )
    yield engine, launcher, clock
    conn.close()


def _submit(engine, tmp_path, user="alice", **request):
    base = {"argv": ["/bin/true"], "cwd": str(tmp_path), "envelope": {"mem_bytes": G, "cpus": 1, "gpus": 1}}
    base["envelope"] = {**base["envelope"], **request.pop("envelope", {})}
    return engine.submit({**base, **request}, uid=1000 + len(user), user=user).id


def test_a_reservation_holds_its_gpus_across_its_window(gpu_rig, tmp_path):
    engine, launcher, clock = gpu_rig
    start = clock.now + H
    reservations.add(engine.store.conn, user="bob", gpus=(0, 1), start=start, end=start + 2 * H, created_by="bob",
                     now=clock.now)
    endless = _submit(engine, tmp_path)
    short = _submit(engine, tmp_path, envelope={"time_limit_s": H / 2})
    engine.tick()
    assert launcher.launches == [(short, 1)], "only a run that ends before the window may use its GPUs"
    engine.tick()
    assert engine.get(endless).reason == "waiting: needs 1 GPU, 0 free, 2 set aside (a pool or a reservation)"
    clock.now += H / 2
    launcher.exits[short] = 0
    engine.tick()
    assert engine.get(endless).state is RunState.QUEUED
    clock.now = start
    bobs = _submit(engine, tmp_path, user="bob", envelope={"gpus": 2})
    alices = _submit(engine, tmp_path, envelope={"time_limit_s": 60})
    engine.tick()
    assert launcher.launches[-1] == (bobs, 1) and engine.get(bobs).gpus == (0, 1)
    assert engine.get(alices).state is RunState.QUEUED  # in the window even a short run waits
    clock.now = start + 2 * H
    launcher.exits[bobs] = 0
    engine.tick()
    assert {run_id for run_id, _ in launcher.launches[-2:]} == {endless, alices}


def test_pool_gpus_go_only_to_runs_of_the_pool(gpu_rig, tmp_path):
    engine, launcher, clock = gpu_rig
    engine.config = Config(shared=SharedSettings(pools={"interactive": PoolConfig("interactive", (1,), 2 * H)}))
    first = _submit(engine, tmp_path)
    second = _submit(engine, tmp_path)
    pooled = _submit(engine, tmp_path, envelope={"time_limit_s": H})
    reservations.record_options(engine.store.conn, pooled, reservations.RunOptions(pool="interactive"))
    engine.tick()
    engine.tick()
    assert engine.get(first).gpus == (0,) and engine.get(pooled).gpus == (1,)
    assert engine.get(second).state is RunState.QUEUED
    assert "1 set aside" in engine.get(second).reason


def test_a_preempted_run_is_stopped_requeued_without_a_retry_and_resumes_from_its_checkpoint(gpu_rig, tmp_path):
    from runyard import checkpoint

    engine, launcher, clock = gpu_rig
    victim = _submit(engine, tmp_path, envelope={"gpus": 2})
    reservations.record_options(engine.store.conn, victim, reservations.RunOptions(preemptible=True))
    engine.tick()
    assert launcher.launches == [(victim, 1)]
    checkpoint.save({"step": 7}, 7, directory=engine.get(victim).checkpoint_dir)
    urgent = _submit(engine, tmp_path, user="bob", priority=3)
    clock.now += 1
    engine.tick()
    stopping = engine.get(victim)
    assert stopping.stop_request == "preempt" and stopping.stop_detail == f"preempted for run {urgent} (priority 3)"
    assert engine.get(urgent).reason == f"waiting: preempting run {victim} (priority 0)"
    launcher.exits[victim] = -15
    clock.now += 1
    engine.tick()
    requeued = engine.get(victim)
    assert requeued.state is RunState.QUEUED and requeued.attempt == 2 and requeued.retries_used == 0
    requeue = engine.store.transitions(victim)[-1]
    assert requeue["reason"] == f"waiting: attempt 2, preempted for run {urgent} (priority 3)"
    assert engine.store.attempts(victim)[0]["failure_class"] == "preempted"
    assert launcher.launches[-1] == (urgent, 1)
    launcher.exits[urgent] = 0
    engine.tick()
    assert launcher.launches[-1] == (victim, 2)
    resumed = launcher.envs[-1]["RUNYARD_RESUME_FROM"]
    assert checkpoint.load(resumed).step == 7


# ------------------------------------------------------------------------- the daemon


TRAIN = textwrap.dedent(
    """
    import os, signal, sys, time
    from runyard import checkpoint

    latest = checkpoint.load_latest()
    start = latest.step + 1 if latest else 0
    print(f"attempt {os.environ['RUNYARD_ATTEMPT']} starts at step {start}", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    for step in range(start, 60):
        time.sleep(0.05)
        checkpoint.save({"step": step}, step)
        if stop:
            print(f"checkpointed step {step} and stopped", flush=True)
            sys.exit(1)
    print("done", flush=True)
    """
)


def test_a_preemptible_checkpointing_run_is_preempted_requeued_and_resumes(yard):
    yard.start_daemon("--simulate-gpus", "1x80G")
    victim = yard.submit("--gpus", "1", "--cpus", "0.1", "--mem", "200M", "--preemptible", "--", PY, "-c", TRAIN)
    poll_until(lambda: "starts at step 0" in yard.cli("logs", str(victim)).stdout, message="the victim to start")
    poll_until(lambda: "checkpoints" in json.dumps(yard.run(victim)) and yard.run(victim)["checkpoints"],
               message="a first checkpoint")
    urgent = yard.submit("--gpus", "1", "--cpus", "0.1", "--mem", "50M", "--priority", "5", "--", "sleep", "0.2")
    yard.wait_state(urgent, "succeeded")
    done = yard.wait_state(victim, "succeeded")
    assert done["attempt"] == 2 and done["retries_used"] == 0 and done["preemptible"] is True
    first, second = done["attempt_history"]
    assert first["failure_class"] == "preempted" and f"preempted for run {urgent}" in first["reason"]
    first_log = Path(first["log_path"]).read_text()
    second_log = Path(second["log_path"]).read_text()
    stopped_at = int(first_log.split("checkpointed step ")[1].split()[0])
    assert f"attempt 2 starts at step {stopped_at + 1}" in second_log and "done" in second_log


def test_reserve_from_the_command_line_and_a_run_that_would_reach_into_it_waits(yard):
    yard.start_daemon("--simulate-gpus", "1x80G")
    # For someone else: the reserving user's own runs may always use their reservation.
    made = yard.json("reserve", "--gpus", "1", "--from", "+1h", "--for", "2h", "--user", "colleague")
    assert made["gpus"] == [0] and made["end"] - made["start"] == 7200 and made["user"] == "colleague"
    assert [item["id"] for item in yard.json("reservations")] == [made["id"]]
    waiting = yard.submit("--gpus", "1", "--cpus", "0.1", "--mem", "20M", "--", "true")
    quick = yard.submit("--gpus", "1", "--cpus", "0.1", "--mem", "20M", "--time", "10m", "--", "true")
    yard.wait_state(quick, "succeeded")
    reason = poll_until(lambda: "set aside" in (r := yard.run(waiting))["reason"] and r["reason"],
                        message="the waiting run's reason")
    assert "1 set aside (a pool or a reservation)" in reason
    refused = yard.cli("reserve", "--gpus", "1", "--from", "+2h", "--for", "1h", check=False)
    assert refused.returncode == 1
    assert "only 0 of this box's 1 are outside pools and other reservations" in refused.stderr
    assert f"reservation {made['id']} removed" in yard.cli("unreserve", str(made["id"])).stdout
    yard.wait_state(waiting, "succeeded")


def test_a_pool_run_gets_the_pools_time_limit_and_a_bad_pool_is_refused(yard):
    (yard.home / "empty-config.toml").write_text('[shared.pools.interactive]\ngpus = [1]\nmax_time = "2h"\n')
    yard.start_daemon("--simulate-gpus", "2x80G")
    pooled = yard.submit("--pool", "interactive", "--gpus", "1", "--cpus", "0.1", "--mem", "20M", "--", "true")
    run = yard.wait_state(pooled, "succeeded")
    assert run["gpus"] == [1] and run["envelope"]["time_limit_s"] == 7200 and run["pool"] == "interactive"
    too_long = yard.cli("submit", "--pool", "interactive", "--time", "3h", "--", "true", check=False)
    assert too_long.returncode == 2 and "pool interactive allows runs of at most 2h" in too_long.stderr
    unknown = yard.cli("submit", "--pool", "batch", "--", "true", check=False)
    assert unknown.returncode == 2 and "no such pool (pools: interactive)" in unknown.stderr
    outside = yard.submit("--gpus", "1", "--cpus", "0.1", "--mem", "20M", "--", "true")
    assert yard.wait_state(outside, "succeeded")["gpus"] == [0]
