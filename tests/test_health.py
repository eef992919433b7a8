"""Health verdicts: the pure functions the engine asks about a live run."""

from __future__ import annotations

import math
import os
import random
import re
from dataclasses import dataclass

import pytest

from engine import health
from engine.health import (
    HEALTHY,
    STARTING,
    UNHEALTHY,
    HealthPolicy,
    HealthPolicyError,
    disk_almost_full,
    disk_space,
    fatal_log_lines,
    finding_kind,
    gpu_idle,
    is_stalled,
    last_activity,
    log_activity_at,
    memory_trend,
    metric_problems,
    policy_from_options,
    probe_detail,
    probe_verdict,
    read_tail,
    record_probe,
)

M = 1 << 20
G = 1 << 30
T0 = 1_800_000_000.0


# ------------------------------------------------------------------------- the policy


def test_policy_round_trips_through_a_dict() -> None:
    policy = HealthPolicy(stall_timeout_s=600, on_stall="restart", cmd="curl -f localhost:8080", interval_s=5,
                          retries=2, timeout_s=3, start_period_s=60)
    assert HealthPolicy.from_dict(policy.to_dict()) == policy
    assert HealthPolicy.from_dict(None) == HealthPolicy()
    # A newer runyard's extra keys do not break an older reader.
    assert HealthPolicy.from_dict(dict(policy.to_dict(), future_key=1)) == policy
    assert policy.checks_anything and not HealthPolicy().checks_anything


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"on_stall": "explode", "stall_timeout_s": 60}, "--on-stall must be one of warn, kill, restart"),
        ({"on_stall": "kill"}, "--on-stall kill needs --stall-timeout"),
        ({"stall_timeout_s": 0}, "--stall-timeout must be a positive duration"),
        ({"stall_timeout_s": math.inf}, "--stall-timeout must be a positive duration"),
        ({"cmd": "  "}, "--health-cmd must be a non-empty command"),
        ({"cmd": "true", "retries": 0}, "--health-retries must be a whole number, 1 or more"),
        ({"cmd": "true", "retries": True}, "--health-retries"),
        ({"cmd": "true", "interval_s": -1}, "--health-interval must be a positive duration"),
        ({"cmd": "true", "timeout_s": 0}, "--health-timeout must be a positive duration"),
        ({"cmd": "true", "start_period_s": -5}, "--health-start-period"),
    ],
)
def test_a_bad_policy_is_one_line_naming_the_option(fields, message) -> None:
    with pytest.raises(HealthPolicyError) as caught:
        HealthPolicy(**fields).check()
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(HealthPolicyError):
        HealthPolicy.from_dict(fields)


def test_policy_from_command_line_values() -> None:
    assert policy_from_options() is None
    policy = policy_from_options(stall_timeout="15m", on_stall="KILL", health_cmd="test -f ok",
                                 health_interval="10s", health_retries="2", health_timeout="3s",
                                 health_start_period="1m")
    assert policy == HealthPolicy(stall_timeout_s=900, on_stall="kill", cmd="test -f ok", interval_s=10, retries=2,
                                  timeout_s=3, start_period_s=60)
    assert policy_from_options(stall_timeout="10m") == HealthPolicy(stall_timeout_s=600)
    with pytest.raises(HealthPolicyError, match="--health-interval needs --health-cmd"):
        policy_from_options(stall_timeout="10m", health_interval="5s")
    with pytest.raises(HealthPolicyError, match="--on-stall needs --stall-timeout"):
        policy_from_options(on_stall="kill")
    with pytest.raises(HealthPolicyError, match=r"--stall-timeout: .*has no unit"):
        policy_from_options(stall_timeout="600")
    with pytest.raises(HealthPolicyError, match="--health-retries must be a whole number"):
        policy_from_options(health_cmd="true", health_retries="three")


# ------------------------------------------------------------------------- the probe


@pytest.mark.parametrize(
    ("results", "state"),
    [
        ([], STARTING),
        ([False], STARTING),
        ([False, False], STARTING),
        ([False, False, False], UNHEALTHY),
        ([True], HEALTHY),
        ([False, True], HEALTHY),
        ([True, False, False], HEALTHY),  # two failures since a success: still healthy
        ([True, False, False, False], UNHEALTHY),
        ([True, False, False, False, True], HEALTHY),  # one success recovers
    ],
)
def test_probe_verdict_follows_docker(results, state) -> None:
    assert probe_verdict(results, retries=3) == state


def test_probe_verdict_from_a_failure_count() -> None:
    assert probe_verdict(0, 3) == STARTING
    assert probe_verdict(2, 3) == STARTING
    assert probe_verdict(2, 3, had_success=True) == HEALTHY
    assert probe_verdict(3, 3, had_success=True) == UNHEALTHY


@dataclass(frozen=True)
class Result:
    ok: bool
    exit_code: int | None = 0
    output: str = ""
    duration_s: float = 0.01
    timed_out: bool = False


def fail(output: str = "connection refused", **changes) -> Result:
    return Result(ok=False, exit_code=changes.pop("exit_code", 1), output=output, **changes)


def test_failures_in_the_start_period_do_not_count() -> None:
    policy = HealthPolicy(cmd="probe", retries=2, start_period_s=60)
    history: list = []
    states = []
    for at, result in ((10, fail()), (20, fail()), (30, fail()), (70, fail()), (80, fail())):
        history, state = record_probe(history, result, at=T0 + at, run_started_at=T0, policy=policy)
        states.append(state)
    assert states == [STARTING, STARTING, STARTING, STARTING, UNHEALTHY]
    assert [entry["counted"] for entry in history] == [False, False, False, True, True]


def test_after_a_success_in_the_start_period_failures_count() -> None:
    policy = HealthPolicy(cmd="probe", retries=2, start_period_s=60)
    history, state = record_probe([], Result(ok=True), at=T0 + 5, run_started_at=T0, policy=policy)
    assert state == HEALTHY
    history, state = record_probe(history, fail(), at=T0 + 10, run_started_at=T0, policy=policy)
    assert state == HEALTHY
    history, state = record_probe(history, fail(), at=T0 + 15, run_started_at=T0, policy=policy)
    assert state == UNHEALTHY
    assert probe_detail(history, state) == "health command failed 2 times in a row (exit 1: connection refused)"


def test_history_is_trimmed_but_keeps_what_the_verdict_needs() -> None:
    policy = HealthPolicy(cmd="probe", retries=7)
    history, _ = record_probe([], Result(ok=True), at=T0, run_started_at=T0, policy=policy)
    for index in range(6):
        history, state = record_probe(history, fail(), at=T0 + index + 1, run_started_at=T0, policy=policy)
        assert state == HEALTHY
    history, state = record_probe(history, fail(), at=T0 + 10, run_started_at=T0, policy=policy)
    assert len(history) == 8 and state == UNHEALTHY
    for index in range(20):
        history, state = record_probe(history, fail(), at=T0 + 20 + index, run_started_at=T0, policy=policy)
    assert len(history) == 8 and state == UNHEALTHY
    history, state = record_probe(history, Result(ok=True), at=T0 + 99, run_started_at=T0, policy=policy)
    assert state == HEALTHY and probe_detail(history, state) == "health command passed"
    # A short policy keeps Docker's five.
    short = HealthPolicy(cmd="probe", retries=1)
    for index in range(9):
        history, _ = record_probe(history, Result(ok=True), at=T0 + 200 + index, run_started_at=T0, policy=short)
    assert len(history) == health.HISTORY_KEEP


def test_probe_detail_describes_a_timeout_and_the_wait() -> None:
    assert probe_detail([], STARTING) == "waiting for the first health check"
    policy = HealthPolicy(cmd="probe", retries=1)
    history, state = record_probe([], fail("", exit_code=-9, timed_out=True, duration_s=10.0), at=T0,
                                  run_started_at=T0, policy=policy)
    assert probe_detail(history, state) == "health command failed 1 time in a row (timed out after 10.0s)"
    long_output = "x" * 10_000 + "\nlast words"
    history, _ = record_probe([], fail(long_output), at=T0, run_started_at=T0, policy=HealthPolicy(cmd="p"))
    assert len(history[0]["output"]) == 2000 and history[0]["output"].endswith("last words")


# ------------------------------------------------------------------------- stalls


def test_stall_uses_the_latest_sign_of_life() -> None:
    started, heartbeat, log_grew = T0, T0 + 100, T0 + 250
    latest = last_activity(started, heartbeat, None, log_grew)
    assert latest == log_grew
    assert last_activity(None, None) is None
    assert not is_stalled(latest, T0 + 250 + 600, 600)
    assert is_stalled(latest, T0 + 250 + 600.5, 600)
    assert not is_stalled(latest, T0 + 10**6, None)  # no --stall-timeout: never stalled
    assert not is_stalled(None, T0, 600)
    assert health.stall_detail(T0, T0 + 900) == "no heartbeat and no log output for 15m"


def test_log_activity_is_the_log_mtime(tmp_path) -> None:
    log = tmp_path / "output.log"
    assert log_activity_at(log) is None and log_activity_at(None) is None
    log.write_text("step 1\n")
    os.utime(log, (T0, T0 + 42))
    assert log_activity_at(log) == T0 + 42


# ------------------------------------------------------------------------- memory trend


def series(start: float, rate_per_s: float, count: int = 30, step: float = 10.0, base: float = 4 * G,
           noise: float = 0.0, seed: int = 0) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    return [(T0 + i * step, int(base + rate_per_s * i * step + rng.gauss(0, noise) if noise else
                               base + rate_per_s * i * step)) for i in range(count)]


def test_a_leak_toward_the_envelope_is_reported_before_the_overrun() -> None:
    # 120M a minute from 14.8G at the newest sample: the 16G envelope in about 10m.
    rate = 120 * M / 60
    samples = series(T0, rate, base=16 * G - 1.2 * G - rate * 290)
    finding = memory_trend(samples, 16 * G, horizon_s=900)
    assert finding == "memory grows 120M/min; reaches its 16G envelope in about 10m"
    # A horizon shorter than the time left: not yet worth a warning.
    assert memory_trend(samples, 16 * G, horizon_s=300) is None


def test_memory_trend_ignores_flat_falling_noisy_and_scant_data() -> None:
    envelope = 8 * G
    assert memory_trend(series(T0, 0.0), envelope) is None
    assert memory_trend(series(T0, -1 * M), envelope) is None
    # Big waves around a flat level: a loader allocating and freeing, not a leak.
    assert memory_trend(series(T0, 0.5 * M, noise=1 * G, seed=3), envelope, horizon_s=10**6) is None
    assert memory_trend(series(T0, 10 * M, count=4), envelope) is None  # too few samples
    assert memory_trend(series(T0, 10 * M, step=1.0), envelope) is None  # 29 s: too short to tell
    assert memory_trend(series(T0, 10 * M), None) is None
    assert memory_trend([], envelope) is None
    assert memory_trend(series(T0, 10 * M, base=9 * G), envelope) is None  # already over: enforcement's job


def test_memory_trend_tolerates_mild_noise_and_uses_the_recent_window() -> None:
    rate = 2 * M  # per second
    noisy = series(T0, rate, base=6 * G, noise=20 * M, seed=1)
    assert re.fullmatch(r"memory grows 1[12]\d(\.\d)?M/min; reaches its 8G envelope in about 1\dm",
                        memory_trend(noisy, 8 * G, horizon_s=3600))
    # An old leak that stopped: the recent window is flat.
    old_leak = series(T0, rate, count=30, base=2 * G)
    flat_since = [(T0 + 300 + i * 10.0, old_leak[-1][1]) for i in range(1, 70)]
    assert memory_trend(old_leak + flat_since, 8 * G, horizon_s=10**6) is None
    # Sample order does not matter.
    assert memory_trend(list(reversed(noisy)), 8 * G, horizon_s=3600) == memory_trend(noisy, 8 * G, horizon_s=3600)


# ------------------------------------------------------------------------- GPU idle


def gpu_series(values: list[float | None], step: float = 60.0) -> list[tuple[float, float | None]]:
    return [(T0 + i * step, value) for i, value in enumerate(values)]


def test_a_held_gpu_idle_long_enough_is_reported() -> None:
    busy_then_idle = gpu_series([90, 85, 95] + [0, 1, 2, 0] * 4 + [0])  # idle from minute 3 to 19
    assert gpu_idle(busy_then_idle, held=True, idle_after_s=15 * 60) == "GPU idle (under 5% for 16m) while held"
    assert gpu_idle(busy_then_idle, held=True, idle_after_s=20 * 60) is None
    assert gpu_idle(busy_then_idle, held=False, idle_after_s=60) is None
    assert gpu_idle(busy_then_idle, held=True, idle_after_s=60, label="GPU 2").startswith("GPU 2 idle")


def test_gpu_idle_needs_an_unbroken_observed_stretch() -> None:
    assert gpu_idle(gpu_series([0] * 10 + [50] + [0] * 5), held=True, idle_after_s=10 * 60) is None
    assert gpu_idle(gpu_series([0] * 10 + [None] + [0] * 5), held=True, idle_after_s=10 * 60) is None
    assert gpu_idle(gpu_series([0] * 20 + [None]), held=True, idle_after_s=60) is None  # newest unknown
    assert gpu_idle(gpu_series([5] * 30), held=True, idle_after_s=60) is None  # 5% is not under 5%
    assert gpu_idle(gpu_series([8] * 30), held=True, idle_after_s=60, threshold_percent=10) is not None
    assert gpu_idle([], held=True, idle_after_s=60) is None


# ------------------------------------------------------------------------- disk


def test_disk_almost_full_on_either_limit() -> None:
    assert disk_almost_full(800 * M, 500 * G) == "checkpoint disk almost full: 800M free of 500G (0.2%)"
    assert disk_almost_full(20 * G, 1024 * G) == "checkpoint disk almost full: 20G free of 1T (2.0%)"
    assert disk_almost_full(100 * G, 1024 * G) is None
    assert disk_almost_full(2 * G, 10 * G, min_free_bytes=G) is None
    assert disk_almost_full(0, 0) is None
    assert disk_almost_full(1, 10 * G, what="run folder disk").startswith("run folder disk almost full")


def test_disk_space_looks_through_missing_folders(tmp_path) -> None:
    free, total = disk_space(tmp_path / "not" / "yet" / "there")
    assert 0 <= free <= total and total > 0
    assert disk_space(None) is None


# ------------------------------------------------------------------------- fatal log lines


TRACEBACK = b"""epoch 3 step 1200 loss 0.41
Traceback (most recent call last):
  File "train.py", line 88, in <module>
    main()
  File "train.py", line 80, in main
    x = model(batch)
        ^^^^^^^^^^^^
ValueError: bad shape
"""


def test_a_traceback_at_the_end_of_the_log() -> None:
    assert fatal_log_lines(TRACEBACK) == ["traceback at the end of the log: ValueError: bad shape"]
    # A few lines after it (a launcher's summary) still count as the end.
    assert fatal_log_lines(TRACEBACK + b"wandb: Synced run\nwandb: 2 files\n") == [
        "traceback at the end of the log: ValueError: bad shape"]
    # A traceback the run survived and went on from is not fatal.
    survived = TRACEBACK + b"".join(b"epoch 4 step %d loss 0.4\n" % step for step in range(30))
    assert fatal_log_lines(survived) == []
    # An unfinished traceback (still being written) is not yet a finding.
    assert fatal_log_lines(TRACEBACK.rsplit(b"ValueError", 1)[0]) == []


def test_a_chained_traceback_reports_the_last_exception() -> None:
    chained = TRACEBACK + b"""
During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "train.py", line 90, in <module>
    save()
KeyboardInterrupt
"""
    assert fatal_log_lines(chained) == ["traceback at the end of the log: KeyboardInterrupt"]


def test_cuda_out_of_memory_and_nccl_errors() -> None:
    tail = (b"step 5\r step 6\r step 7\n"
            b"\x1b[31mtorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\x1b[0m\n"
            b"node1:123:456 [0] NCCL INFO Bootstrap\n"
            b"node1:123:456 [0] include/socket.h:403 NCCL WARN Net : Connect to 10.0.0.2<4321> failed\n"
            b"RuntimeError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1207, "
            b"unhandled system error, NCCL version 2.18.1\n"
            b"ncclSystemError: System call (e.g. socket, malloc) or external library call failed\n")
    findings = fatal_log_lines(tail)
    assert findings[0] == "CUDA out of memory"
    assert findings[1] == ("NCCL error: node1:123:456 [0] include/socket.h:403 NCCL WARN Net : "
                           "Connect to 10.0.0.2<4321> failed")
    assert len(findings) == 2
    assert fatal_log_lines(b"ncclInternalError: internal check failed\n") == [
        "NCCL error: ncclInternalError: internal check failed"]
    assert fatal_log_lines(b"NCCL INFO Channel 00/02\nall good\n") == []
    assert fatal_log_lines(b"") == []
    assert fatal_log_lines(b"\xff\xfe not utf-8 \xc3\n") == []


def test_read_tail(tmp_path) -> None:
    path = tmp_path / "output.log"
    assert read_tail(path) == b"" and read_tail(None) == b""
    path.write_bytes(b"a" * 100 + b"END")
    assert read_tail(path, max_bytes=3) == b"END"
    assert read_tail(path) == b"a" * 100 + b"END"
    assert read_tail(tmp_path) == b""  # a folder: unreadable, not an error


# ------------------------------------------------------------------------- metrics


def test_metric_problems_reads_json_spellings_of_nan_and_infinity() -> None:
    metrics = {"loss": "nan", "grad_norm": "inf", "lr": 1e-3, "step": 10, "neg": "-inf", "val": {"loss": math.nan},
               "acc": float("inf"), "ok": True, "note": "nano", "other": "Infinity"}
    assert metric_problems(metrics) == [
        "loss is NaN", "grad_norm is infinite", "neg is infinite", "val.loss is NaN", "acc is infinite",
        "other is infinite",
    ]
    assert metric_problems({"loss": 0.3}) == [] and metric_problems(None) == []


def test_a_finding_keeps_its_kind_while_its_words_change() -> None:
    envelope = 16 * G
    rate = 120 * M / 60
    earlier = memory_trend(series(T0, rate, base=16 * G - 1.2 * G - rate * 290), envelope, horizon_s=900)
    later = memory_trend(series(T0, rate, base=16 * G - 0.6 * G - rate * 290), envelope, horizon_s=900)
    assert earlier != later and finding_kind(earlier) == finding_kind(later) == "memory_trend"
    idle = gpu_series([0] * 30)
    assert finding_kind(gpu_idle(idle[:20], held=True, idle_after_s=60)) == "gpu_idle:GPU"
    assert finding_kind(gpu_idle(idle, held=True, idle_after_s=60)) == "gpu_idle:GPU"
    assert finding_kind(gpu_idle(idle, held=True, idle_after_s=60, label="GPU 2")) == "gpu_idle:GPU 2"
    assert finding_kind(disk_almost_full(800 * M, 500 * G)) == "disk_full:checkpoint disk"
    assert [finding_kind(f) for f in metric_problems({"loss": "nan", "grad_norm": "inf"})] == [
        "metric:loss", "metric:grad_norm"]
    assert [finding_kind(f) for f in fatal_log_lines(TRACEBACK + b"CUDA out of memory\n")] == [
        "cuda_oom", "traceback"]
    assert finding_kind(fatal_log_lines(b"ncclSystemError: x\n")[0]) == "nccl"
    assert finding_kind("something new") == "something new"
