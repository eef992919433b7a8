"""Never lose work, end to end: real daemon, real training runs, real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import DEADLINE_S, poll_until

ROOT = Path(__file__).resolve().parent.parent
TRAIN_TINY = ROOT / "examples" / "train_tiny.py"
SHA_PREFIX = "final-sha256: "

pytestmark = pytest.mark.skipif(not TRAIN_TINY.exists(), reason="examples/train_tiny.py is missing")


def final_sha(text: str) -> str:
    last = text.strip().splitlines()[-1]
    assert last.startswith(SHA_PREFIX), f"last line is {last!r}"
    return last[len(SHA_PREFIX):]


@pytest.fixture(scope="module")
def reference_sha(tmp_path_factory) -> str:
    """The final weights of an uninterrupted run, started directly (no runyard)."""
    folder = tmp_path_factory.mktemp("reference")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    result = subprocess.run(
        [sys.executable, str(TRAIN_TINY), "--steps", "240", "--every", "10", "--checkpoint-dir", str(folder / "ck")],
        capture_output=True, text=True, timeout=300, env=env, cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return final_sha(result.stdout)


def newest_step(yard, run_id: int) -> int:
    checkpoints = yard.run(run_id).get("checkpoints") or []
    return max((c["step"] or 0 for c in checkpoints), default=0)


def kill_run_process(yard, run_id: int) -> None:
    pid = yard.run(run_id)["pid"]
    assert pid, "the run has no pid yet"
    os.killpg(pid, signal.SIGKILL)


def train_command(steps: int = 240, sleep: float = 0.02) -> list[str]:
    return [sys.executable, str(TRAIN_TINY), "--steps", str(steps), "--every", "10", "--sleep-per-step", str(sleep)]


def test_sigkilled_twice_and_resumed_by_retries_ends_with_the_same_weights(yard, reference_sha):
    yard.start_daemon()
    run_id = yard.submit("--mem", "2G", "--retries", "3", "--backoff", "0s..0s", "--", *train_command())
    for kill_after_step, attempt in ((60, 1), (150, 2)):
        poll_until(lambda: yard.run(run_id)["attempt"] == attempt and yard.run(run_id)["state"] == "running"
                   and newest_step(yard, run_id) >= kill_after_step,
                   timeout=DEADLINE_S * 4, interval=0.1, message=f"attempt {attempt} to pass step {kill_after_step}")
        kill_run_process(yard, run_id)
    done = yard.wait_state(run_id, "succeeded", "failed", timeout=DEADLINE_S * 4)
    assert done["state"] == "succeeded", done["reason"]
    assert done["attempt"] == 3
    attempts = done["attempt_history"]
    assert [a["failure_class"] for a in attempts[:2]] == ["exit", "exit"]
    assert all("SIGKILL" in a["reason"] for a in attempts[:2])
    assert attempts[1]["resumed_from"] and attempts[2]["resumed_from"]
    final_log = Path(done["log_path"]).read_text()
    assert final_sha(final_log) == reference_sha
    assert "attempt-3" in done["log_path"]


def test_a_time_limited_run_is_requeued_and_completes_across_slots(yard, reference_sha):
    yard.start_daemon()
    run_id = yard.submit("--mem", "2G", "--time", "4s", "--grace", "2s", "--requeue", "--",
                         *train_command(sleep=0.03))
    done = yard.wait_state(run_id, "succeeded", "failed", "timed_out", timeout=DEADLINE_S * 6)
    assert done["state"] == "succeeded", done["reason"]
    assert done["attempt"] >= 2
    assert done["retries_used"] == 0  # requeues at the limit use up no retries
    slots = done["attempt_history"][:-1]
    assert slots and all(a["failure_class"] == "timeout" for a in slots)
    assert final_sha(Path(done["log_path"]).read_text()) == reference_sha


def test_a_daemon_killed_during_the_backoff_retries_once_not_twice(yard, tmp_path):
    counter = tmp_path / "starts"
    yard.start_daemon()
    run_id = yard.submit("--retries", "1", "--backoff", "4s..4s", "--",
                         "sh", "-c", f"echo start >> {counter}; exit 1")
    poll_until(lambda: yard.run(run_id)["not_before"] is not None, interval=0.02, message="the backoff")
    yard.kill_daemon(signal.SIGKILL)
    yard.start_daemon()
    done = yard.wait_state(run_id, "failed", timeout=DEADLINE_S)
    assert done["attempt"] == 2 and done["retries_used"] == 1
    assert counter.read_text().splitlines() == ["start", "start"]
    assert [a["attempt"] for a in done["attempt_history"]] == [1, 2]


def test_a_run_lost_while_the_daemon_was_down_is_retried(yard, tmp_path):
    """A reboot as the engine sees it: the daemon is down, then the run and its shim are
    gone with no exit record; the database is intact."""
    marker = tmp_path / "second-attempt"
    yard.start_daemon()
    script = f"test -n \"$RUNYARD_RESUME_FROM\" -o \"$RUNYARD_ATTEMPT\" = 2 && touch {marker} && exit 0; sleep 600"
    run_id = yard.submit("--retries", "1", "--backoff", "0s..0s", "--", "sh", "-c", script)
    running = yard.wait_state(run_id, "running")
    poll_until(lambda: yard.run(run_id)["pid"], message="the run's pid")
    yard.kill_daemon(signal.SIGKILL)
    shim = psutil.Process(yard.run(run_id)["pid"]).parent()
    os.killpg(yard.run(run_id)["pid"], signal.SIGKILL)
    shim.kill()
    psutil.wait_procs([shim], timeout=DEADLINE_S)
    yard.start_daemon()
    done = yard.wait_state(run_id, "succeeded", "failed", timeout=DEADLINE_S)
    assert done["state"] == "succeeded", done
    first = done["attempt_history"][0]
    assert first["failure_class"] == "lost" and first["reason"].startswith("lost:"), first
    assert marker.exists()
    assert running["attempt"] == 1 and done["attempt"] == 2


def test_retry_by_hand_and_show_lists_attempts(yard):
    yard.start_daemon()
    run_id = yard.submit("--", "sh", "-c", "echo attempt $RUNYARD_ATTEMPT; exit 3")
    yard.wait_state(run_id, "failed")
    assert "attempt 2" in yard.cli("retry", str(run_id)).stdout
    done = poll_until(lambda: (run := yard.run(run_id))["attempt"] == 2 and run["state"] == "failed" and run,
                      message="the second attempt to fail")
    assert Path(done["log_path"]).read_text().strip() == "attempt 2"
    text = yard.cli("show", str(run_id)).stdout
    assert "attempt 1: failed, exit code 3" in text and "attempt 2: failed, exit code 3" in text
    refused = yard.cli("retry", "999", check=False)
    assert refused.returncode == 3


def test_checkpoint_dir_and_resume_env_reach_the_run(yard, tmp_path):
    folder = tmp_path / "ck"
    yard.start_daemon()
    run_id = yard.submit("--checkpoint-dir", str(folder), "--", "sh", "-c", 'echo "$RUNYARD_CHECKPOINT_DIR"')
    done = yard.wait_state(run_id, "succeeded")
    assert Path(done["log_path"]).read_text().strip() == str(folder)
    assert json.loads(yard.cli("show", str(run_id), "--json").stdout)["checkpoint_dir"] == str(folder)
