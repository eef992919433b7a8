"""Alerts: the [alerts] config table, events, and delivery to a real local webhook and a
real command, off the caller's thread."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from engine.alerts import AlertsConfig, AlertsConfigError, Event, Notifier, _command_argv
from engine.config import ConfigError

DEADLINE_S = 20.0
T0 = 1_800_000_000.0


def poll_until(predicate, message: str, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


@dataclass
class HookServer:
    """An HTTP server on 127.0.0.1 that records every POST and answers from a script."""

    server: ThreadingHTTPServer
    thread: threading.Thread
    received: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    """Answers to give, first come first served; 200 once they run out."""
    hold: threading.Event = field(default_factory=threading.Event)
    """Cleared: requests wait (up to the deadline) before answering."""
    arrivals: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks/runyard?token=secret"

    def kinds(self) -> list[str]:
        with self.lock:
            return [request["json"]["kind"] for request in self.received]


@pytest.fixture
def hook_server(monkeypatch) -> Iterator[HookServer]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            hook: HookServer = self.server.hook  # type: ignore[attr-defined]
            with hook.lock:
                hook.arrivals += 1
            hook.hold.wait(DEADLINE_S)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with hook.lock:
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.received.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                          "json": json.loads(body)})
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args) -> None:  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    hook = HookServer(server, thread)
    hook.hold.set()
    server.hook = hook  # type: ignore[attr-defined]
    thread.start()
    try:
        yield hook
    finally:
        hook.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE_S)


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    """Notifiers made by a test, closed whatever happens to it."""
    made: list[Notifier] = []
    yield made
    for notifier in made:
        notifier.close(timeout_s=DEADLINE_S)


def make(notifiers: list[Notifier], **fields) -> Notifier:
    fields.setdefault("backoff_s", 0.01)
    notifier = Notifier(AlertsConfig(**fields))
    notifiers.append(notifier)
    return notifier


def failed(run_id: int = 7, at: float = T0, reason: str = "exit code 1") -> Event:
    return Event.state_change(run_id, "failed", "running", at=at, reason=reason, name="train", exit_code=1)


# ------------------------------------------------------------------------- config


def test_config_table_is_validated_with_the_file_and_key() -> None:
    config = AlertsConfig.from_table(
        {"webhook": "https://hooks.example.com/x", "command": "notify-send runyard", "events": ["failed", "health"],
         "retries": 5, "timeout": "10s", "backoff": 2},
        "config.toml",
    )
    assert config == AlertsConfig(command="notify-send runyard", webhook="https://hooks.example.com/x",
                                  events=("failed", "health"), retries=5, timeout_s=10.0, backoff_s=2.0)
    assert AlertsConfig.from_table({}, "config.toml") == AlertsConfig()
    assert not AlertsConfig().enabled and config.enabled


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"webhook": "ftp://example.com/"}, "config.toml: alerts.webhook: must be an http:// or https:// URL"),
        ({"webhook": "http://"}, "config.toml: alerts.webhook: must be an http:// or https:// URL"),
        ({"webhook": 3}, "config.toml: alerts.webhook: must be an http:// or https:// URL"),
        ({"command": ""}, "config.toml: alerts.command: must be a command line"),
        ({"events": ["failed", "exploded"]}, "config.toml: alerts.events: unknown event 'exploded'"),
        ({"events": "failed,running"}, "config.toml: alerts.events: unknown event 'failed,running'"),
        ({"events": [1]}, "config.toml: alerts.events: write a list of event kinds"),
        ({"retries": -1}, "config.toml: alerts.retries: must be a whole number from 0 to 100"),
        ({"retries": True}, "config.toml: alerts.retries"),
        ({"timeout": "0s"}, "config.toml: alerts.timeout: must be a positive duration"),
        ({"timeout": "5"}, "config.toml: alerts.timeout: duration '5' has no unit"),
        ({"backoff": -1}, "config.toml: alerts.backoff: must be a duration"),
        ({"url": "http://x"}, "config.toml: alerts.url: unknown key"),
    ],
)
def test_a_bad_config_value_is_one_line(table, message) -> None:
    with pytest.raises(AlertsConfigError) as caught:
        AlertsConfig.from_table(table, "config.toml")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # the engine's config errors catch it
    with pytest.raises(AlertsConfigError, match=r"config.toml: \[alerts\] must be a table"):
        AlertsConfig.from_table(["webhook"], "config.toml")


def test_event_filter_matches_kinds_and_prefixes() -> None:
    everything = AlertsConfig(webhook="http://x")
    assert everything.wants("running") and everything.wants("health:stalled")
    some = AlertsConfig(webhook="http://x", events=("failed", "health"))
    assert [kind for kind in ("running", "failed", "health:unhealthy", "health:stalled", "healthy", "paused")
            if some.wants(kind)] == ["failed", "health:unhealthy", "health:stalled"]
    assert AlertsConfig(events=("health:stalled",)).wants("health:stalled")
    assert not AlertsConfig(events=("health:stalled",)).wants("health:unhealthy")


# ------------------------------------------------------------------------- events


def test_event_json() -> None:
    event = failed()
    data = json.loads(event.to_json())
    assert data == {
        "source": "runyard", "kind": "failed", "run_id": 7, "name": "train", "at": T0,
        "at_iso": "2027-01-15T08:00:00+00:00", "host": socket.gethostname(), "state": "failed",
        "previous_state": "running", "health": None, "previous_health": None, "reason": "exit code 1",
        "text": "run 7 (train) failed: exit code 1", "data": {"exit_code": 1},
    }
    stalled = Event.health_change(3, "stalled", "healthy", at=T0, reason="no heartbeat and no log output for 15m")
    assert stalled.kind == "health:stalled"
    assert stalled.text == "run 3 is stalled: no heartbeat and no log output for 15m"
    assert Event.state_change(4, "running", "queued", at=T0).text == "run 4 started"
    paused = Event(kind="paused", run_id=None, at=T0, reason="5 failures in 10m", data={"key": "group:sweep"})
    assert paused.text == "runyard paused: 5 failures in 10m"
    # JSON has no NaN or infinity: they go as the strings heartbeats use.
    odd = Event("health:unhealthy", 1, T0, data={"loss": float("nan"), "grad": [float("-inf")], "when": Path("/x")})
    assert json.loads(odd.to_json())["data"] == {"loss": "nan", "grad": ["-inf"], "when": "/x"}


def test_events_from_what_the_engine_already_produces() -> None:
    change = {"run_id": 9, "at": T0, "from_state": "running", "to_state": "failed", "reason": "exit code 1"}
    assert Event.from_change(change, name="train") == Event.state_change(9, "failed", "running", at=T0,
                                                                        reason="exit code 1", name="train")
    paused = Event.from_change({"kind": "paused", "run_id": 9, "at": T0, "reason": "3 failures", "key": "user:ann"})
    assert (paused.kind, paused.run_id, paused.reason, paused.data) == ("paused", 9, "3 failures", {"key": "user:ann"})
    health = Event.from_change({"kind": "health:stalled", "run_id": 9, "at": T0, "health": "stalled",
                                "previous_health": "healthy", "reason": "no heartbeat"})
    assert health == Event.health_change(9, "stalled", "healthy", at=T0, reason="no heartbeat", state=None)


# ------------------------------------------------------------------------- webhook


def test_a_webhook_receives_the_events_in_order(hook_server, notifiers) -> None:
    notifier = make(notifiers, webhook=hook_server.url)
    events = [
        Event.state_change(5, "queued", None, at=T0, name="train"),
        Event.state_change(5, "running", "queued", at=T0 + 1, name="train"),
        Event.health_change(5, "unhealthy", "healthy", at=T0 + 2, reason="health command failed 3 times in a row"),
        Event.state_change(5, "failed", "running", at=T0 + 3, reason="exit code 1", exit_code=1),
    ]
    started = time.monotonic()
    assert all(notifier.notify(event) for event in events)
    assert time.monotonic() - started < 1.0  # queued, not delivered, on the caller's thread
    poll_until(lambda: len(hook_server.received) == 4, "four events at the webhook")
    assert hook_server.kinds() == ["queued", "running", "health:unhealthy", "failed"]
    first, _, unhealthy, last = hook_server.received
    assert first["path"] == "/hooks/runyard?token=secret"
    assert first["content_type"] == "application/json"
    assert unhealthy["json"]["health"] == "unhealthy" and unhealthy["json"]["previous_health"] == "healthy"
    assert last["json"] == json.loads(events[-1].to_json())
    assert notifier.close(timeout_s=DEADLINE_S)


def test_only_wanted_events_are_sent(hook_server, notifiers) -> None:
    notifier = make(notifiers, webhook=hook_server.url, events=("failed", "health"))
    sent = [notifier.notify(event) for event in (
        Event.state_change(1, "queued", None, at=T0),
        Event.state_change(1, "running", "queued", at=T0),
        Event.health_change(1, "stalled", "healthy", at=T0),
        Event.state_change(1, "succeeded", "running", at=T0),
        Event.state_change(2, "failed", "running", at=T0),
    )]
    assert sent == [False, False, True, False, True]
    assert notifier.close(timeout_s=DEADLINE_S)
    assert hook_server.kinds() == ["health:stalled", "failed"]


def test_a_server_error_is_retried(hook_server, notifiers, caplog) -> None:
    hook_server.statuses[:] = [500, 503]
    notifier = make(notifiers, webhook=hook_server.url, retries=3)
    with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
        notifier.notify(failed())
        poll_until(lambda: hook_server.kinds() == ["failed"], "the retried event")
    assert hook_server.arrivals == 3
    retries = [record.getMessage() for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) == 2 and "HTTP 500" in retries[0] and "HTTP 503" in retries[1]
    assert all("secret" not in record.getMessage() for record in caplog.records)  # the token stays out of logs


def test_a_client_error_is_not_retried_and_later_events_still_go(hook_server, notifiers, caplog) -> None:
    hook_server.statuses[:] = [404]
    notifier = make(notifiers, webhook=hook_server.url, retries=3)
    with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
        notifier.notify(failed(run_id=1))
        notifier.notify(failed(run_id=2))
        poll_until(lambda: len(hook_server.received) == 1, "the second event")
    assert hook_server.arrivals == 2
    assert hook_server.received[0]["json"]["run_id"] == 2
    assert any("not delivered" in record.getMessage() and "HTTP 404" in record.getMessage()
               for record in caplog.records)


def test_an_unreachable_webhook_is_logged_never_raised(notifiers, caplog) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notifier = make(notifiers, webhook=f"http://127.0.0.1:{port}/hook", retries=2, timeout_s=2)
    with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
        assert notifier.notify(failed()) is True
        poll_until(lambda: any("not delivered" in record.getMessage() for record in caplog.records),
                   "the delivery failure to be logged")
    final = [record.getMessage() for record in caplog.records if "not delivered" in record.getMessage()]
    assert final == [f"alert failed for run 7 not delivered to webhook http://127.0.0.1:{port}/… after 3 attempts: "
                     f"cannot reach it ([Errno 111] Connection refused)"]
    assert notifier.close(timeout_s=DEADLINE_S)


def test_a_hanging_webhook_blocks_neither_notify_nor_close(hook_server, notifiers, caplog) -> None:
    hook_server.hold.clear()
    notifier = make(notifiers, webhook=hook_server.url, timeout_s=DEADLINE_S)
    notifier.notify(failed(run_id=1))
    poll_until(lambda: hook_server.arrivals == 1, "the first request to arrive")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
        for run_id in range(2, 2 + 5):
            notifier.notify(failed(run_id=run_id))
    assert time.monotonic() - started < 1.0
    assert notifier.close(timeout_s=0.3) is False  # gave up waiting; did not hang
    assert time.monotonic() - started < 5.0
    hook_server.hold.set()


def test_a_full_queue_drops_the_oldest(hook_server, notifiers, caplog) -> None:
    hook_server.hold.clear()
    notifier = Notifier(AlertsConfig(webhook=hook_server.url, backoff_s=0.01), queue_size=2)
    notifiers.append(notifier)
    notifier.notify(failed(run_id=1))
    poll_until(lambda: hook_server.arrivals == 1, "the first request to be in flight")
    with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
        for run_id in (2, 3, 4, 5):
            notifier.notify(failed(run_id=run_id))
    dropped = [record.getMessage() for record in caplog.records if "dropped" in record.getMessage()]
    assert len(dropped) == 2 and "run 2" in dropped[0] and "run 3" in dropped[1]
    hook_server.hold.set()
    poll_until(lambda: len(hook_server.received) == 3, "the kept events")
    assert [request["json"]["run_id"] for request in hook_server.received] == [1, 4, 5]


# ------------------------------------------------------------------------- command


def test_a_command_gets_the_event_on_stdin_and_in_its_environment(tmp_path, notifiers) -> None:
    out = tmp_path / "events.jsonl"
    envs = tmp_path / "env.txt"
    command = (f"cat >> {out}; echo >> {out}; "
               f"echo \"$RUNYARD_EVENT_KIND|$RUNYARD_EVENT_RUN_ID|$RUNYARD_EVENT_REASON\" >> {envs}")
    notifier = make(notifiers, command=command)
    notifier.notify(failed())
    notifier.notify(Event.health_change(8, "stalled", "healthy", at=T0, reason="no heartbeat"))
    assert notifier.close(timeout_s=DEADLINE_S)
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [json.loads(failed().to_json()),
                                                    json.loads(Event.health_change(
                                                        8, "stalled", "healthy", at=T0,
                                                        reason="no heartbeat").to_json())]
    assert envs.read_text().splitlines() == ["failed|7|exit code 1", "health:stalled|8|no heartbeat"]


def test_a_plain_command_runs_without_a_shell(tmp_path, notifiers) -> None:
    script = tmp_path / "hook.py"
    out = tmp_path / "argv.json"
    script.write_text(
        "import json, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'stdin': json.load(sys.stdin)['kind']}},"
        f" open({str(out)!r}, 'w'))\n"
    )
    notifier = make(notifiers, command=f"{sys.executable} {script} 'two words' plain")
    notifier.notify(failed())
    assert notifier.close(timeout_s=DEADLINE_S)
    recorded = json.loads(out.read_text())
    assert recorded["argv"] == ["two words", "plain"] and recorded["stdin"] == "failed"


def test_shell_syntax_decides_whether_a_shell_runs_the_command() -> None:
    assert _command_argv("notify-send 'runyard alert' -u critical") == [
        "notify-send", "runyard alert", "-u", "critical"]
    for command in ("notify-send \"$RUNYARD_EVENT_TEXT\"", "cat > /tmp/x", "a | b", "a && b", "echo ~",
                    "FOO=1 hook", "hook *.json", "echo 'unbalanced"):
        assert _command_argv(command) == ["sh", "-c", command], command


def test_a_failing_command_is_retried_then_logged(tmp_path, notifiers, caplog) -> None:
    counter = tmp_path / "attempts"
    notifier = make(notifiers, command=f"echo x >> {counter}; echo boom; exit 2", retries=2)
    with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
        notifier.notify(failed())
        assert notifier.close(timeout_s=DEADLINE_S)
    assert counter.read_text().count("x") == 3
    assert any("after 3 attempts: exit 2: boom" in record.getMessage() for record in caplog.records)


def test_a_hanging_command_is_killed_at_its_timeout(tmp_path, notifiers, caplog) -> None:
    pid_file = tmp_path / "pid"
    notifier = make(notifiers, command=f"echo $$ > {pid_file}; sleep 60", retries=0, timeout_s=0.5)
    with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
        notifier.notify(failed())
        poll_until(lambda: any("still running after 0.5s" in record.getMessage() for record in caplog.records),
                   "the timeout to be logged")
    pid = int(pid_file.read_text())

    def ended() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    poll_until(ended, "the hook's shell to be killed")


def test_a_command_that_leaves_something_running_is_done_when_it_exits(tmp_path, notifiers, caplog) -> None:
    pid_file = tmp_path / "pid"
    out = tmp_path / "event.json"
    notifier = make(notifiers, command=f"sleep 60 & echo $! > {pid_file}; cat > {out}", timeout_s=10)
    try:
        with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
            notifier.notify(failed())
            started = time.monotonic()
            assert notifier.close(timeout_s=DEADLINE_S)
        assert time.monotonic() - started < 8  # not held until its timeout by the leftover
        assert json.loads(out.read_text())["kind"] == "failed"
        assert [record for record in caplog.records if record.name == "runyard.alerts"] == []
    finally:
        if pid_file.exists():
            try:
                psutil.Process(int(pid_file.read_text())).kill()
            except psutil.NoSuchProcess:
                pass


def test_a_missing_program_is_logged(notifiers, caplog) -> None:
    notifier = make(notifiers, command="/no/such/runyard-hook", retries=0)
    with caplog.at_level(logging.WARNING, logger="runyard.alerts"):
        notifier.notify(failed())
        assert notifier.close(timeout_s=DEADLINE_S)
    assert any("cannot run it" in record.getMessage() for record in caplog.records)


def test_webhook_and_command_are_independent(hook_server, tmp_path, notifiers) -> None:
    out = tmp_path / "kinds"
    hook_server.hold.clear()  # the webhook hangs; the command must not wait for it
    notifier = make(notifiers, webhook=hook_server.url, command=f"cat >> {out}; echo >> {out}", timeout_s=DEADLINE_S)
    notifier.notify(failed(run_id=1))
    notifier.notify(failed(run_id=2))
    poll_until(lambda: out.exists() and len(out.read_text().splitlines()) == 2, "both events at the command")
    hook_server.hold.set()
    poll_until(lambda: len(hook_server.received) == 2, "both events at the webhook")


def test_a_notifier_without_destinations_does_nothing() -> None:
    notifier = Notifier(AlertsConfig())
    assert notifier.notify(failed()) is False
    assert notifier.idle() and notifier.close(timeout_s=1)


def test_notify_after_close_is_ignored(hook_server) -> None:
    notifier = Notifier(AlertsConfig(webhook=hook_server.url))
    assert notifier.close(timeout_s=DEADLINE_S)
    assert notifier.notify(failed()) is False
    assert notifier.idle() and hook_server.received == []

