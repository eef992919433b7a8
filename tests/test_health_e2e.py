"""Health, alerts and ordering end to end: a real daemon, real runs, a real HTTP server."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import DEADLINE_S, poll_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_a_hung_run_is_detected_within_its_stall_timeout_and_killed_then_retried(yard):
    yard.start_daemon()
    run_id = yard.submit("--stall-timeout", "2s", "--on-stall", "kill", "--retries", "1", "--backoff", "0s..0s",
                         "--", *SLEEPER)
    started = yard.wait_state(run_id, "running")
    stalled = poll_until(lambda: (run := yard.run(run_id))["attempt_history"] and run, timeout=DEADLINE_S,
                         interval=0.2, message="the stalled attempt to end")
    first = stalled["attempt_history"][0]
    assert first["failure_class"] == "stalled"
    assert first["reason"].startswith("stalled: no heartbeat and no log output for")
    # Found within its timeout plus a sample or two, not minutes later.
    assert first["ended_at"] - started["started_at"] < 2 + 10
    assert stalled["attempt"] == 2  # retried, as it had a retry left


def test_a_stall_with_warn_only_marks_the_run(yard):
    yard.start_daemon()
    run_id = yard.submit("--stall-timeout", "1s", "--", *SLEEPER)
    run = poll_until(lambda: (r := yard.run(run_id))["health"] == "stalled" and r, message="health 'stalled'")
    assert run["state"] == "running" and "no heartbeat" in run["health_detail"]


def test_a_failing_health_command_makes_the_run_unhealthy_after_its_retries(yard, tmp_path):
    flag = tmp_path / "healthy"
    flag.touch()
    yard.start_daemon()
    run_id = yard.submit("--health-cmd", f"test -e {flag} || {{ echo 'disk not mounted'; exit 1; }}",
                         "--health-interval", "0.3s", "--health-retries", "3", "--", *SLEEPER)
    poll_until(lambda: yard.run(run_id)["health"] == "healthy", message="the first passing probe")
    flag.unlink()
    run = poll_until(lambda: (r := yard.run(run_id))["health"] == "unhealthy" and r, message="health 'unhealthy'")
    assert run["health_detail"] == "health command failed 3 times in a row (exit 1: disk not mounted)"
    checks = run["health_checks"]
    assert [c["ok"] for c in checks[-3:]] == [False, False, False] and checks[0]["ok"]
    assert "unhealthy" in yard.cli("show", str(run_id)).stdout
    flag.touch()
    poll_until(lambda: yard.run(run_id)["health"] == "healthy", message="recovery after a passing probe")


class Recorder(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", Recorder.received
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_receives_state_and_health_events(yard, webhook):
    url, received = webhook
    (yard.home / "empty-config.toml").write_text(f'[alerts]\nwebhook = "{url}"\nevents = ["running", "failed", "health"]\n')
    yard.start_daemon()
    run_id = yard.submit("--stall-timeout", "1s", "--", "sh", "-c", "sleep 3; exit 4")
    yard.wait_state(run_id, "failed", timeout=DEADLINE_S)
    events = poll_until(lambda: len(received) >= 3 and list(received), message="three events at the webhook")
    kinds = [event["kind"] for event in events if event["run_id"] == run_id]
    assert kinds == ["running", "health:stalled", "failed"], kinds
    failed = events[-1]
    assert failed["reason"] == "exit code 4" and failed["state"] == "failed" and failed["source"] == "runyard"
    assert "queued" not in kinds  # filtered out


def test_an_afterok_chain_runs_in_order_and_a_failed_dependency_cancels_its_child(yard, tmp_path):
    order = tmp_path / "order"
    yard.start_daemon()
    first = yard.submit("--", "sh", "-c", f"sleep 0.5; echo first >> {order}")
    second = yard.submit("--after", str(first), "--", "sh", "-c", f"echo second >> {order}")
    broken = yard.submit("--after", f"{second}:ok", "--", "sh", "-c", f"echo broken >> {order}; exit 1")
    child = yard.submit("--after", f"{broken}:ok", "--", "sh", "-c", f"echo never >> {order}")
    anyway = yard.submit("--after", f"{broken}:any", "--", "sh", "-c", f"echo anyway >> {order}")
    assert yard.wait_state(child, "cancelled")["reason"] == (
        f"dependency run {broken} failed (exit code 1); not started"
    )
    yard.wait_state(anyway, "succeeded")
    assert order.read_text().split() == ["first", "second", "broken", "anyway"]
    refused = yard.cli("submit", "--after", "999", "--", "true", check=False)
    assert refused.returncode == 3 and "no such run" in refused.stderr


def test_cron_schedules_are_listed_survive_a_restart_and_are_removed(yard):
    yard.start_daemon()
    created = json.loads(yard.cli("submit", "--cron", "0 2 * * *", "--json", "--", "true").stdout)
    assert created["cron"] == "0 2 * * *" and created["next_at"] > 0
    yard.kill_daemon()
    yard.start_daemon()
    listed = yard.json("schedules")
    assert [item["id"] for item in listed] == [created["id"]]
    assert "removed" in yard.cli("unschedule", str(created["id"])).stdout
    assert yard.json("schedules") == []
    bad = yard.cli("submit", "--cron", "61 * * * *", "--", "true", check=False)
    assert bad.returncode == 2 and "cron" in bad.stderr


def test_at_delays_a_run(yard):
    yard.start_daemon()
    run_id = yard.submit("--at", "+1h", "--", "true")
    run = yard.run(run_id)
    assert run["state"] == "queued" and run["reason"].startswith("waiting: scheduled for ")
    bad = yard.cli("submit", "--at", "someday", "--", "true", check=False)
    assert bad.returncode == 2


def test_fatal_lines_in_the_log_become_a_warning(yard):
    yard.start_daemon()
    run_id = yard.submit("--", "sh", "-c", "echo 'RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB'; "
                         "sleep 600")
    run = poll_until(lambda: (r := yard.run(run_id))["warning"] and r, message="a warning from the log")
    assert "CUDA out of memory" in run["warning"] and run["state"] == "running"
