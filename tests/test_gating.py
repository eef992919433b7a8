"""What keeps a queued run back besides resources: dependencies, a start time, and the
circuit breaker. Driven through the engine with fakes and an injected clock."""

from __future__ import annotations

import pytest

from engine.breaker import Breaker, key_of, last_meaningful_line
from engine.model import RunState
from engine.protocol import RequestError
from engine_rig import rig, submit  # noqa: F401  (rig is a fixture)


def test_afterok_chain_runs_in_order(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    first = submit(engine, tmp_path)
    second = submit(engine, tmp_path, after=[[first, "ok"]])
    third = submit(engine, tmp_path, after=[[second, "ok"]])
    engine.tick()
    engine.tick()  # reasons are written before the tick's launches: the next tick tells the new state
    assert launcher.launches == [(first, 1)]
    assert engine.get(second).reason == f"waiting: after run {first} (running)"
    assert engine.get(third).reason == f"waiting: after run {second} (queued)"
    launcher.exits[first] = 0
    engine.tick()
    assert [run_id for run_id, _ in launcher.launches] == [first, second]
    launcher.exits[second] = 0
    engine.tick()
    assert [run_id for run_id, _ in launcher.launches] == [first, second, third]


def test_a_failed_dependency_cancels_its_children_and_afterany_still_runs(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    parent = submit(engine, tmp_path)
    strict = submit(engine, tmp_path, after=[[parent, "ok"]])
    lenient = submit(engine, tmp_path, after=[[parent, "any"]])
    grandchild = submit(engine, tmp_path, after=[[strict, "ok"]])
    engine.tick()
    launcher.exits[parent] = 1
    engine.tick()
    engine.tick()
    cancelled = engine.get(strict)
    assert cancelled.state is RunState.CANCELLED
    assert cancelled.reason == f"dependency run {parent} failed (exit code 1); not started"
    assert engine.get(grandchild).state is RunState.CANCELLED  # the chain ends, it does not wait forever
    assert (lenient, 1) in launcher.launches


def test_a_dependency_that_does_not_exist_is_refused_at_submit(rig, tmp_path) -> None:
    engine, _, _, _ = rig
    with pytest.raises(RequestError, match="--after 99: no such run"):
        submit(engine, tmp_path, after=[[99, "ok"]])
    with pytest.raises(RequestError, match="write ID, ID:ok or ID:any"):
        submit(engine, tmp_path, after=[[1, "sometimes"]])


def test_a_run_scheduled_with_at_starts_at_its_time(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    start = clock.now + 3600
    run_id = submit(engine, tmp_path, at=start)
    assert engine.get(run_id).reason.startswith("waiting: scheduled for ")
    assert engine.tick() == pytest.approx(start)
    assert launcher.launches == []
    clock.now = start
    engine.tick()
    assert launcher.launches == [(run_id, 1)]


def test_the_breaker_pauses_a_group_after_fast_failures_and_release_resumes_it(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    runs = [submit(engine, tmp_path, group="sweep-7", envelope={"mem_bytes": 1 << 30, "cpus": 8}) for _ in range(7)]
    other = submit(engine, tmp_path, envelope={"mem_bytes": 1 << 30, "cpus": 8}, priority=-1)
    for run_id in runs[:5]:
        engine.tick()
        assert launcher.launches[-1] == (run_id, 1)
        clock.now += 5
        launcher.exits[run_id] = 1
    engine.tick()
    paused = engine.get(runs[5])
    assert paused.state is RunState.QUEUED
    assert paused.reason.startswith("paused: 5 consecutive failures (exit code 1")
    assert engine.store.pauses() == {"group:sweep-7": paused.reason.split("; `runyard release")[0]}
    # Outside the group, admission goes on.
    assert launcher.launches[-1] == (other, 1)
    launcher.exits[other] = 0
    engine.tick()
    assert all(run_id != runs[5] for run_id, _ in launcher.launches)

    engine.set_held(runs[5], False)
    engine.tick()
    assert launcher.launches[-1] == (runs[5], 1)
    assert engine.store.pauses() == {}


def test_breaker_counts_only_fast_failures_of_one_class_in_a_row() -> None:
    breaker = Breaker(threshold=3, window_s=60, fast_s=30)
    key = key_of(None, "alice", 1000)
    assert key == "user:alice"
    assert breaker.failed(key, at=0, failure_class="exit", duration_s=1, detail="x") is None
    assert breaker.failed(key, at=1, failure_class="oom_killed", duration_s=1, detail="x") is None  # class changed
    assert breaker.failed(key, at=2, failure_class="oom_killed", duration_s=100, detail="x") is None  # slow: resets
    assert breaker.failed(key, at=3, failure_class="exit", duration_s=1, detail="x") is None
    breaker.succeeded(key)
    for at in (10, 11):
        assert breaker.failed(key, at=at, failure_class="exit", duration_s=1, detail="x") is None
    pause = breaker.failed(key, at=12, failure_class="exit", duration_s=1, detail="exit code 1: boom")
    assert pause is not None and pause.reason == "paused: 3 consecutive failures (exit code 1: boom)"
    # Failures spread beyond the window do not trip it.
    spread = Breaker(threshold=2, window_s=10, fast_s=30)
    assert spread.failed("k", at=0, failure_class="exit", duration_s=1, detail="x") is None
    assert spread.failed("k", at=100, failure_class="exit", duration_s=1, detail="x") is None


def test_last_meaningful_line() -> None:
    tail = b"Traceback (most recent call last):\n  File \"t.py\"\nModuleNotFoundError: No module named 'x'\n\n"
    assert last_meaningful_line(tail) == "ModuleNotFoundError: No module named 'x'"
    assert last_meaningful_line(b"\n \n") is None


def test_a_batch_is_queued_whole_or_not_at_all(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    good = {"argv": ["/bin/true"], "cwd": str(tmp_path), "env": {}}
    runs = engine.submit_many([good, dict(good, name="second")], uid=None, user=None)
    assert [run.name for run in runs][1] == "second" and len(runs) == 2
    with pytest.raises(RequestError, match="run 2 of the batch: missing command"):
        engine.submit_many([good, dict(good, argv=[])], uid=None, user=None)
    assert len(engine.list_runs(include_finished=True)) == 2


def test_a_cron_schedule_fires_at_an_injected_time_once_per_firing(rig, tmp_path) -> None:
    import datetime

    engine, launcher, clock, _ = rig
    one_am = datetime.datetime(2026, 11, 24, 1, 0).timestamp()  # local time, as cron reads it
    two_am = datetime.datetime(2026, 11, 24, 2, 0).timestamp()
    clock.now = one_am
    template = {"argv": ["/bin/true"], "cwd": str(tmp_path), "env": {}, "name": "nightly"}
    schedule = engine.schedule(template, "0 2 * * *", uid=None, user=None)
    assert schedule["next_at"] == pytest.approx(two_am)
    assert engine.tick() == pytest.approx(two_am)  # the engine wakes for it
    assert launcher.launches == []

    clock.now = two_am
    engine.tick()
    clock.now = two_am + 30
    engine.tick()
    runs = engine.list_runs(include_finished=True)
    assert [(run.name, run.schedule_id) for run in runs] == [("nightly", schedule["id"])]
    assert engine.list_schedules()[0]["last_run_id"] == runs[0].id

    # A restarted engine on the same database remembers what already fired.
    again = type(engine)(engine.store, launcher, engine.host_probe, engine.gpu_probe, gpu_source="none",
                         clock=clock, rng=engine.rng, boot_time=lambda: 0.0)
    again.tick()
    assert len(again.list_runs(include_finished=True)) == 1
    clock.now = two_am + 86400
    again.tick()
    assert len(again.list_runs(include_finished=True)) == 2

    again.unschedule(schedule["id"])
    clock.now = two_am + 2 * 86400
    again.tick()
    assert len(again.list_runs(include_finished=True)) == 2 and again.list_schedules() == []


def test_a_bad_cron_or_template_is_refused_at_once(rig, tmp_path) -> None:
    engine, _, _, _ = rig
    template = {"argv": ["/bin/true"], "cwd": str(tmp_path), "env": {}}
    with pytest.raises(RequestError, match="cron"):
        engine.schedule(template, "61 * * * *", uid=None, user=None)
    with pytest.raises(RequestError, match="missing command"):
        engine.schedule(dict(template, argv=[]), "0 2 * * *", uid=None, user=None)
