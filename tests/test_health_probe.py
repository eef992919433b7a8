"""The --health-cmd probe runner: real processes, timeouts that kill the whole group."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest

from engine.health import UNHEALTHY, HealthPolicy, record_probe
from engine.health_probe import ProbeResult, run_probe

DEADLINE_S = 20.0


def probe_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, **extra)


async def wait_for(predicate, message: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()] if path.exists() else []


async def test_a_passing_probe(tmp_path) -> None:
    result = await run_probe("echo all good; exit 0", env=probe_env(), cwd=str(tmp_path), timeout_s=DEADLINE_S)
    assert result.ok and result.exit_code == 0 and not result.timed_out
    assert result.output == "all good\n"
    assert result.describe() == "exit 0: all good"
    assert 0 <= result.duration_s < DEADLINE_S


async def test_a_failing_probe_keeps_stdout_and_stderr(tmp_path) -> None:
    result = await run_probe("echo out; echo err >&2; exit 3", env=probe_env(), cwd=str(tmp_path),
                             timeout_s=DEADLINE_S)
    assert not result.ok and result.exit_code == 3 and not result.timed_out
    assert result.output == "out\nerr\n"
    assert result.describe() == "exit 3: err"


async def test_the_probe_runs_with_the_given_environment_and_folder(tmp_path) -> None:
    env = probe_env(RUNYARD_RUN_ID="17", PROBE_SECRET="s3cr3t")
    env.pop("HOME_NOT_PASSED", None)
    result = await run_probe('echo "$RUNYARD_RUN_ID $PROBE_SECRET ${UNSET_VAR:-unset}"; pwd',
                             env=env, cwd=str(tmp_path), timeout_s=DEADLINE_S)
    assert result.ok
    assert result.output.splitlines() == ["17 s3cr3t unset", str(tmp_path.resolve())]


async def test_only_the_tail_of_a_chatty_probe_is_kept(tmp_path) -> None:
    result = await run_probe("i=0; while [ $i -lt 3000 ]; do echo line$i; i=$((i+1)); done",
                             env=probe_env(), cwd=str(tmp_path), timeout_s=DEADLINE_S)
    assert result.ok and len(result.output) <= 2000
    assert result.output.endswith("line2999\n")


async def test_a_hanging_probe_is_killed_with_its_children_and_never_blocks_the_loop(tmp_path) -> None:
    pids = tmp_path / "pids"
    # The shell, a grandchild in the background and one in the foreground, all asleep.
    cmd = f"echo started; sleep 60 & echo $$ $! >> {pids}; sh -c 'echo $$ >> {pids}; sleep 60'"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        result = await run_probe(cmd, env=probe_env(), cwd=str(tmp_path), timeout_s=0.5)
        elapsed = time.monotonic() - started
    finally:
        ticking.cancel()
    assert result.timed_out and not result.ok
    assert result.exit_code == -9
    assert result.output.startswith("started")
    assert result.describe().startswith("timed out after 0.")
    assert elapsed < 10, elapsed
    assert ticks >= 5, "the event loop was blocked while the probe ran"
    recorded = read_pids(pids)
    assert len(recorded) == 3, recorded
    await wait_for(lambda: all(gone(pid) for pid in recorded), "every process of the probe to end")


async def test_a_probe_that_leaves_something_behind_does_not_keep_it(tmp_path) -> None:
    pids = tmp_path / "pids"
    result = await run_probe(f"sleep 60 & echo $! > {pids}; echo done", env=probe_env(), cwd=str(tmp_path),
                             timeout_s=DEADLINE_S)
    # The shell said all it had to say and exited 0: a pass, not a timeout...
    assert result.ok and not result.timed_out and result.output == "done\n"
    # ...and its leftover, which held the output pipe, went with it.
    (leftover,) = read_pids(pids)
    await wait_for(lambda: gone(leftover), "the leftover sleep to end")


async def test_a_probe_that_cannot_start_is_a_failure_not_an_exception(tmp_path) -> None:
    missing = tmp_path / "no-such-folder"
    result = await run_probe("true", env=probe_env(), cwd=str(missing), timeout_s=DEADLINE_S)
    assert not result.ok and result.exit_code is None and not result.timed_out
    assert result.output == f"cannot run the health command: no such folder {missing}"
    assert result.describe().startswith("could not run: cannot run the health command")
    bad_env = await run_probe("true", env={"BAD\0NAME": "x"}, cwd=str(tmp_path), timeout_s=DEADLINE_S)
    assert not bad_env.ok and bad_env.output.startswith("cannot run the health command")
    missing_program = await run_probe("no-such-program-for-runyard", env=probe_env(), cwd=str(tmp_path),
                                      timeout_s=DEADLINE_S)
    assert not missing_program.ok and missing_program.exit_code == 127


async def test_cancelling_a_probe_kills_it(tmp_path) -> None:
    pids = tmp_path / "pids"
    task = asyncio.create_task(run_probe(f"echo $$ > {pids}; exec sleep 60", env=probe_env(), cwd=str(tmp_path),
                                         timeout_s=DEADLINE_S))
    await wait_for(lambda: read_pids(pids), "the probe to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (pid,) = read_pids(pids)
    await wait_for(lambda: gone(pid), "the cancelled probe to end")


def processes_marked(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get("RUNYARD_PROBE_TEST") == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


async def test_a_probe_cancelled_at_any_moment_leaves_nothing_behind(tmp_path) -> None:
    marker = f"cancel-{os.getpid()}-{time.monotonic_ns()}"
    env = probe_env(RUNYARD_PROBE_TEST=marker)
    for yields in range(12):
        task = asyncio.create_task(run_probe("sleep 60 & exec sleep 60", env=env, cwd=str(tmp_path),
                                             timeout_s=DEADLINE_S))
        for _ in range(yields):
            await asyncio.sleep(0)
        if yields > 8:
            await asyncio.sleep(0.05 * (yields - 8))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await wait_for(lambda: not processes_marked(marker), "every cancelled probe's processes to end")


async def test_probes_run_concurrently(tmp_path) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(
        run_probe("sleep 0.3; exit 1", env=probe_env(), cwd=str(tmp_path), timeout_s=DEADLINE_S) for _ in range(6)
    ))
    assert [result.exit_code for result in results] == [1] * 6
    assert time.monotonic() - started < 6 * 0.3 + 5  # not one after another on a noisy box either


async def test_a_failing_health_command_turns_the_run_unhealthy_after_its_retries(tmp_path) -> None:
    policy = HealthPolicy(cmd="test -f ready || { echo not ready; exit 1; }", retries=3, timeout_s=5)
    history: list = []
    states = []
    for attempt in range(4):
        result: ProbeResult = await run_probe(policy.cmd, env=probe_env(), cwd=str(tmp_path),
                                              timeout_s=policy.timeout_s)
        history, state = record_probe(history, result, at=1000.0 + attempt, run_started_at=1000.0, policy=policy)
        states.append(state)
    assert states == ["starting", "starting", UNHEALTHY, UNHEALTHY]
    (tmp_path / "ready").write_text("")
    result = await run_probe(policy.cmd, env=probe_env(), cwd=str(tmp_path), timeout_s=policy.timeout_s)
    _, state = record_probe(history, result, at=1010.0, run_started_at=1000.0, policy=policy)
    assert state == "healthy"
