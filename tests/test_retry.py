"""Retries: the pure policy, and the engine driving it with an injected clock and a fake
launcher (no processes, no sleeping)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine import retry
from engine_rig import RecordingRandom, rig, submit  # noqa: F401  (rig is a fixture)
from engine.engine import Engine
from engine.envelope import Envelope
from engine.launcher import Launched, Observation
from engine.model import Run, RunState
from engine.probes.host import HostSample
from engine.retry import RetryPolicy, RetryPolicyError, backoff_delay, parse_backoff, parse_codes, parse_warn_signal
from engine.store import sql
from engine.store.runs import RunStore
from engine.store.schema import migrate

G = 1 << 30


# ------------------------------------------------------------------------- the policy


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(retries=10, backoff_min_s=10, backoff_max_s=600)
    rng = RecordingRandom()
    delays = [backoff_delay(n, policy, rng) for n in range(1, 9)]
    assert rng.caps == [10, 20, 40, 80, 160, 320, 600, 600]
    assert all(0 <= delay <= cap for delay, cap in zip(delays, rng.caps))
    # Jitter: the same retry number does not always wait the same time.
    spread = {round(backoff_delay(3, policy, random.Random(seed)), 6) for seed in range(20)}
    assert len(spread) == 20 and max(spread) <= 40


def args(**changes):
    base = dict(
        policy=RetryPolicy(retries=2), failure_class=retry.EXIT, exit_code=1, retries_used=0, has_checkpoint=False,
        envelope=Envelope(mem_bytes=4 * G), mem_limit_bytes=64 * G, gpu_mem_limit_bytes=None, why="exit code 1",
        rng=random.Random(1),
    )
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "retried"),
    [
        ({}, True),
        ({"retries_used": 2}, False),  # used up
        ({"failure_class": retry.CANCELLED}, False),  # never after cancel
        ({"failure_class": retry.LOST, "exit_code": None}, True),
        ({"failure_class": retry.OOM_KILLED, "exit_code": -9}, True),
        ({"failure_class": retry.TIMEOUT}, False),  # nothing to resume from
        ({"failure_class": retry.TIMEOUT, "has_checkpoint": True}, True),
        ({"policy": RetryPolicy(retries=2, no_retry_on=(2,)), "exit_code": 2}, False),
        ({"policy": RetryPolicy(retries=2, retry_on=(3,)), "exit_code": 1}, False),
        ({"policy": RetryPolicy(retries=2, retry_on=(3,)), "exit_code": 3}, True),
    ],
)
def test_what_is_retried(changes, retried) -> None:
    assert (retry.decide(**args(**changes)) is not None) is retried


def test_requeue_at_the_time_limit_uses_no_retry_and_waits_no_backoff() -> None:
    again = retry.decide(**args(policy=RetryPolicy(requeue=True), failure_class=retry.TIMEOUT, has_checkpoint=True))
    assert again is not None and again.delay_s == 0 and not again.counts_as_retry
    assert retry.decide(**args(policy=RetryPolicy(requeue=True), failure_class=retry.TIMEOUT)) is None


def test_grow_on_oom_raises_the_envelope_up_to_what_the_box_has() -> None:
    policy = RetryPolicy(retries=3, grow_on_oom=1.5)
    again = retry.decide(**args(policy=policy, failure_class=retry.OOM_KILLED))
    assert again.envelope.mem_bytes == 6 * G and "memory grown to 6G" in again.notes[0]
    capped = retry.decide(**args(policy=policy, failure_class=retry.MEMORY_OVERRUN, mem_limit_bytes=5 * G))
    assert capped.envelope.mem_bytes == 5 * G
    gpu = retry.decide(**args(
        policy=policy, failure_class=retry.CUDA_OOM, envelope=Envelope(gpus=1, gpu_mem_bytes=20 * G),
        gpu_mem_limit_bytes=80 * G,
    ))
    assert gpu.envelope.gpu_mem_bytes == 30 * G
    plain = retry.decide(**args(policy=policy))  # an ordinary exit grows nothing
    assert plain.envelope.mem_bytes == 4 * G and plain.notes == ()


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda: parse_backoff("10m..10s"), "first bound"),
        (lambda: parse_backoff("soon"), "MIN..MAX"),
        (lambda: parse_warn_signal("USR1"), "SIGNAL@TIME"),
        (lambda: parse_warn_signal("NOPE@5m"), "unknown signal SIGNOPE"),
        (lambda: parse_codes(["1,x"], "--retry-on"), "exit codes"),
        (lambda: RetryPolicy(retries=-1).check(), "--retries"),
        (lambda: RetryPolicy(grow_on_oom=0.5).check(), "more than 1"),
    ],
)
def test_bad_retry_options_are_one_line(call, problem) -> None:
    with pytest.raises(RetryPolicyError, match=problem):
        call()


def test_parsers() -> None:
    assert parse_backoff("10s..10m") == (10, 600)
    assert parse_backoff("30s") == (30, 30)
    assert parse_warn_signal("usr1@5m") == ("SIGUSR1", 300)
    assert parse_codes(["1,2", "137"], "--retry-on") == (1, 2, 137)
    assert retry.log_shows_cuda_oom(b"...torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")
    assert not retry.log_shows_cuda_oom(b"MemoryError")


# ------------------------------------------------------- the engine, with fakes



def test_failed_runs_wait_out_their_backoff_then_retry_until_used_up(rig, tmp_path) -> None:
    engine, launcher, clock, rng = rig
    policy = RetryPolicy(retries=3, backoff_min_s=10, backoff_max_s=25).to_dict()
    run_id = submit(engine, tmp_path, retry=policy)
    engine.tick()
    assert launcher.launches == [(run_id, 1)]

    waits = []
    for attempt in (1, 2, 3):
        launcher.exits[run_id] = 1
        engine.tick()
        run = engine.get(run_id)
        assert run.state is RunState.QUEUED and run.attempt == attempt + 1
        assert run.reason.startswith(f"waiting: attempt {attempt + 1} of 4 after exit code 1, backoff ")
        waits.append(run.not_before - clock.now)
        # Not a moment before its time, whatever else ticks the engine.
        clock.now = run.not_before - 0.01
        assert engine.tick() == pytest.approx(run.not_before)
        assert launcher.launches[-1] == (run_id, attempt)
        clock.now = run.not_before
        engine.tick()
        assert launcher.launches[-1] == (run_id, attempt + 1)
    assert rng.caps == [10, 20, 25]
    assert all(0 <= wait <= cap for wait, cap in zip(waits, rng.caps))

    launcher.exits[run_id] = 1
    engine.tick()
    run = engine.get(run_id)
    assert (run.state, run.reason, run.retries_used, run.failure_class) == (RunState.FAILED, "exit code 1", 3, "exit")
    history = engine.store.attempts(run_id)
    assert [(row["attempt"], row["state"], row["failure_class"]) for row in history] == [
        (1, "failed", "exit"), (2, "failed", "exit"), (3, "failed", "exit"), (4, "failed", "exit"),
    ]
    # Each attempt has a log of its own.
    assert len({row["log_path"] for row in history}) == 4
    assert history[0]["log_path"].endswith(f"runs/{run_id}/output.log")
    assert history[3]["log_path"].endswith(f"runs/{run_id}/attempt-4/output.log")


def test_success_and_excluded_codes_are_not_retried_and_retry_by_hand_is(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    run_id = submit(engine, tmp_path, retry=RetryPolicy(retries=5, no_retry_on=(2,)).to_dict())
    engine.tick()
    launcher.exits[run_id] = 2
    engine.tick()
    assert engine.get(run_id).state is RunState.FAILED

    again = engine.retry(run_id)
    assert (again.state, again.attempt, again.not_before) == (RunState.QUEUED, 2, None)
    engine.tick()
    assert launcher.launches[-1] == (run_id, 2)
    launcher.exits[run_id] = 0
    engine.tick()
    assert engine.get(run_id).state is RunState.SUCCEEDED


def test_a_lost_run_after_a_reboot_says_so_and_retries(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    run_id = submit(engine, tmp_path, retry=RetryPolicy(retries=1, backoff_min_s=0, backoff_max_s=0).to_dict())
    engine.tick()
    engine.boot_time = lambda: clock.now + 1  # the machine came back up after the run started
    launcher.observe = lambda run: Observation("lost", detail="no shim and no exit record")
    engine.tick()
    # Requeued with no backoff, it starts again in the same tick.
    assert launcher.launches == [(run_id, 1), (run_id, 2)]
    requeued = [t for t in engine.store.transitions(run_id) if t["from_state"] == "running" and t["to_state"] == "queued"]
    assert len(requeued) == 1 and "after lost: machine restarted" in requeued[0]["reason"]
    assert engine.store.attempts(run_id)[0]["reason"] == "lost: machine restarted"
    assert engine.store.attempts(run_id)[0]["failure_class"] == "lost"


def test_cancel_is_never_retried(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    run_id = submit(engine, tmp_path, retry=RetryPolicy(retries=3).to_dict())
    engine.tick()
    engine.cancel(run_id)
    launcher.exits[run_id] = -15
    engine.tick()
    assert engine.get(run_id).state is RunState.CANCELLED


def test_the_warning_signal_goes_out_once_before_the_limit(rig, tmp_path) -> None:
    engine, launcher, clock, _ = rig
    sent = []
    launcher.signal = lambda run, sig: sent.append((clock.now, int(sig))) or True
    policy = RetryPolicy(warn_signal="SIGUSR1", warn_before_s=60).to_dict()
    run_id = submit(engine, tmp_path, retry=policy, envelope={"mem_bytes": G, "time_limit_s": 600})
    start = clock.now
    assert engine.tick() == pytest.approx(start + 540)  # the next thing due is the warning
    clock.now = start + 540
    engine.tick()
    engine.tick()
    import signal as signals

    assert sent == [(start + 540, int(signals.SIGUSR1))]
    launcher.exits[run_id] = 3  # it checkpointed and left, as asked
    engine.tick()
    run = engine.get(run_id)
    assert run.state is RunState.TIMED_OUT and run.reason.startswith("stopped after SIGUSR1")
