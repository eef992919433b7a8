"""What keeps runyard fast and bounded with a big database: paged lists, answers that fit
the protocol's line, group commits per tick, rows decoded once, a thin submit path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import protocol
from engine.client import Client, ClientError
from engine.envelope import Envelope
from engine.model import JsonObject, Run, RunSpec, RunState
from engine.store import sql
from engine.store.runs import RunStore
from engine.store.schema import migrate

ROOT = Path(__file__).resolve().parent.parent


def _fill(home: Path, count: int, *, queued: int = 0) -> None:
    """``count`` runs straight into the database (one transaction), all but the last
    ``queued`` finished: months of use, in a second."""
    (home / "runs").mkdir(exist_ok=True)
    migrate(home / "runyard.db")
    conn = sql.connect(home / "runyard.db")
    try:
        with sql.write_transaction(conn):
            for index in range(count):
                spec = RunSpec(argv=("true",), cwd=str(home), env={"A": "1" * 100}, held=True,
                               envelope=Envelope(cpus=0.1, mem_bytes=1 << 20))
                sql.insert_run(conn, spec, now=1000.0 + index, runs_dir=home / "runs", uid=os.getuid(), user="t")
            conn.execute("UPDATE runs SET state = 'succeeded', started_at = submitted_at, "
                         "ended_at = submitted_at + 1, exit_code = 0 WHERE id <= ?", (count - queued,))
    finally:
        conn.close()


# -- paged ls ----------------------------------------------------------------------------


def test_ls_all_pages_through_every_run_exactly_once_in_order(yard):
    _fill(yard.home, 2345, queued=5)
    yard.start_daemon()
    listed = json.loads(yard.cli("ls", "--all", "--json").stdout)
    assert [run["id"] for run in listed] == list(range(1, 2346))

    client = Client(yard.home / "runyard.sock")
    seen = []
    for run in client.runs(page=100):
        seen.append(run["id"])
        if len(seen) == 150:
            yard.submit("--hold", "--", "true")  # arrives mid-listing: after every page read so far
    assert seen == list(range(1, 2347))

    table = yard.cli("ls", "--all").stdout.splitlines()
    assert len(table) == 1 + 2346 and table[0].startswith("ID") and table[-1].startswith("2346 ")


def test_ls_all_without_a_daemon_pages_the_database_too(yard):
    _fill(yard.home, 1500)
    listed = json.loads(yard.cli("ls", "--all", "--json").stdout)
    assert [run["id"] for run in listed] == list(range(1, 1501))
    assert json.loads(yard.cli("ls", "--json").stdout)[-1]["id"] == 1500  # the 20 most recently ended


def test_an_unpaged_ls_all_of_too_many_runs_is_refused_in_one_line(monkeypatch):
    import shutil
    import tempfile

    from engine import daemon
    from engine.daemon import start_embedded
    from engine.paths import Home

    monkeypatch.setattr(daemon, "LS_ALL_MAX_RUNS", 3)
    home = Home(Path(tempfile.mkdtemp(prefix="ry-", dir="/tmp")))  # a socket path must be short
    monkeypatch.setenv("RUNYARD_CONFIG", str(home.root / "none.toml"))
    _fill(home.root, 5)
    engine = start_embedded(home)
    try:
        with pytest.raises(protocol.RequestError, match="too many for one answer; ask for pages"):
            engine.server.dispatch("ls", {"all": True}, None)
        assert len(engine.server.dispatch("ls", {"all": True, "after_id": 0, "limit": 3}, None)) == 3
    finally:
        engine.stop()
        shutil.rmtree(home.root, ignore_errors=True)


# -- answers longer than the line ----------------------------------------------------------


def test_the_daemon_refuses_to_send_an_answer_over_the_line_limit(monkeypatch):
    from engine import daemon

    monkeypatch.setattr(protocol, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(daemon.shared_daemon, "answer", lambda server, op, args, peer: ["x" * 100] * 20)
    line = daemon.Server.__new__(daemon.Server).answer(protocol.encode_request("ls", {"all": True}), None)
    answer = json.loads(line)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and len(line) < 1000
    assert answer["ok"] is False and answer["code"] == protocol.EXIT_ERROR
    assert "over the protocol's" in answer["error"] and "after_id and limit" in answer["error"]


def _serve_once(path: Path, reply: bytes) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)

    def serve() -> None:
        with listener:
            for _ in range(4):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(1 << 16)
                    conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("reply, words", [
    (b'{"v": 1, "ok": true, "result": "' + b"x" * 3000 + b'"}\n', "over the protocol's"),
    (b'{"v": 1, "ok": true, "result": "cut', "cut off"),
    (b"not json\n", "not JSON"),
])
def test_a_bad_answer_is_one_line_from_the_client_and_the_cli(tmp_path, monkeypatch, capsys, reply, words):
    from runyard import cli

    monkeypatch.setattr(protocol, "MAX_LINE_BYTES", 1000)
    path = Path(f"/tmp/ry-sock-{os.getpid()}-{len(words)}")
    path.unlink(missing_ok=True)
    thread = _serve_once(path, reply)
    try:
        with pytest.raises(ClientError, match=words):
            Client(path).call("ls", all=True)
        monkeypatch.setenv("RUNYARD_HOME", str(tmp_path))
        monkeypatch.setenv("RUNYARD_SOCKET", str(path))
        assert cli.main(["ls", "--json"]) == protocol.EXIT_ERROR
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("runyard: ") and words in err
    finally:
        path.unlink(missing_ok=True)
        thread.join(timeout=5)


# -- the store: rows decoded once, group commit ---------------------------------------------


@pytest.fixture
def store(tmp_path):
    migrate(tmp_path / "runyard.db")
    conn = sql.connect(tmp_path / "runyard.db")
    yield RunStore(conn, tmp_path / "runs")
    conn.close()


def _spec(**extra) -> RunSpec:
    return RunSpec(argv=("true",), cwd="/", env={"HOME": "/root", "LONG": "x" * 4000}, **extra)


def test_an_unchanged_row_is_not_decoded_again_and_a_changed_one_is(store):
    first = store.submit(_spec(), now=1.0, uid=0, user="u")
    second = store.submit(_spec(), now=2.0, uid=0, user="u")
    a = store.in_state(RunState.QUEUED)
    b = store.in_state(RunState.QUEUED)
    assert [run.id for run in a] == [first.id, second.id]
    assert a[0] is b[0] and a[1] is b[1]
    store.update(second.id, RunState.QUEUED, priority=5)
    c = store.in_state(RunState.QUEUED)
    assert c[0] is a[0] and c[1] is not a[1] and c[1].priority == 5
    assert store.transition(first.id, RunState.QUEUED, RunState.RUNNING, "running", now=3.0)
    assert [run.id for run in store.in_state(RunState.QUEUED)] == [second.id]
    assert first.id not in store._decoded  # left the queue: not kept


def test_the_environment_is_decoded_only_when_read(store):
    run = store.submit(_spec(), now=1.0, uid=0, user="u")
    assert isinstance(run.env, JsonObject) and run.env._data is None
    assert run.to_json()["id"] == run.id and run.env._data is None  # listing never needs it
    assert run.env["HOME"] == "/root" and dict(run.env)["LONG"] == "x" * 4000
    assert run.to_json(with_env=True)["env"]["HOME"] == "/root"
    assert Run.from_row({**dict(store.conn.execute("SELECT * FROM runs").fetchone()), "env": None}).env == {}


def test_a_batch_commits_once_and_announces_only_what_it_committed(store):
    heard = []
    store.listeners.append(heard.append)
    ids = [store.submit(_spec(), now=1.0, uid=0, user="u").id for _ in range(3)]
    heard.clear()
    other = sql.connect(store.conn.execute("PRAGMA database_list").fetchone()[2], readonly=True)
    try:
        with store.batch():
            store.transition(ids[0], RunState.QUEUED, RunState.RUNNING, "running", now=2.0)
            assert heard == []  # not committed yet: nobody is told
            assert sql.get_run(other, ids[0]).state is RunState.QUEUED
            store.flush()  # before an effect outside the database (a launch)
            assert [change["run_id"] for change in heard] == [ids[0]]
            assert sql.get_run(other, ids[0]).state is RunState.RUNNING
            store.transition(ids[1], RunState.QUEUED, RunState.CANCELLED, "cancelled", now=2.0)
        assert [change["run_id"] for change in heard] == [ids[0], ids[1]]
        with pytest.raises(RuntimeError):
            with store.batch():
                store.transition(ids[2], RunState.QUEUED, RunState.CANCELLED, "cancelled", now=3.0)
                raise RuntimeError("a bug in the middle of a tick")
        assert sql.get_run(other, ids[2]).state is RunState.QUEUED  # rolled back, and
        assert [change["run_id"] for change in heard] == [ids[0], ids[1]]  # never announced
    finally:
        other.close()


# -- the thin submit path -------------------------------------------------------------------


def test_the_cli_sends_the_options_the_engine_parses(yard):
    from engine import submission
    from runyard import cli

    assert cli.TEXT_OPTIONS == submission.TEXT_OPTIONS
    yard.start_daemon()
    run_id = yard.submit("--hold", "--mem", "64M", "--time", "1h", "--retries", "2", "--grace", "5s",
                         "--stall-timeout", "10m", "--", "true")
    run = yard.run(run_id)
    assert run["envelope"]["mem_bytes"] == 64 << 20 and run["envelope"]["time_limit_s"] == 3600
    assert run["retries"] == 2 and run["grace_s"] == 5 and run["health_policy"]["stall_timeout_s"] == 600
    bad = yard.cli("submit", "--mem", "512", "--", "true", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'512' has no unit" in bad.stderr, bad.stderr


def test_the_submit_path_imports_no_parser_with_a_daemon(yard):
    yard.start_daemon()
    code = (
        "import sys, json, runyard.cli\n"
        "runyard.cli.main(['submit', '--hold', '--mem', '1G', '--', 'true'])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=yard.env, capture_output=True, text=True, timeout=60,
                         cwd=str(yard.home))
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"engine.envelope", "engine.retry", "engine.health", "engine.units", "dataclasses"}


def test_an_engine_without_typed_options_gets_them_parsed_by_the_cli():
    from runyard import cli

    class OldEngine:
        def call(self, op, **args):
            assert op == "hello"
            return {"version": 1, "pid": 1}

    request = {"argv": ["true"], "options": {name: None for name in cli.TEXT_OPTIONS} | {"mem": "2G", "retries": 1}}
    parsed = cli._understood(OldEngine(), request)
    assert "options" not in parsed and parsed["envelope"] == {"mem_bytes": 2 << 30}
    assert parsed["retry"]["retries"] == 1 and parsed["grace_s"] == 30.0 and parsed["health"] is None
    with pytest.raises(cli.CliError) as refused:
        cli._understood(OldEngine(), {**request, "options": {"time": "soon"}})
    assert refused.value.code == protocol.EXIT_BAD_INPUT

    class NewEngine:
        def call(self, op, **args):
            return {"version": 1, "features": list(protocol.FEATURES)}

    assert cli._understood(NewEngine(), request) is request


# -- the tick ----------------------------------------------------------------------------


def test_a_tick_with_many_queued_runs_decodes_only_what_changed(tmp_path, monkeypatch):
    import engine.model as model
    from engine.daemon import DaemonConfig, build_engine
    from engine.paths import Home

    _fill(tmp_path, 300, queued=100)
    engine = build_engine(DaemonConfig(home=Home(tmp_path), simulate_gpus="1x80G"))
    try:
        engine.tick()
        decoded = []
        original = model.Run.from_row.__func__
        monkeypatch.setattr(model.Run, "from_row", classmethod(lambda cls, row: decoded.append(row["id"]) or
                                                               original(cls, row)))
        started = time.perf_counter()
        for _ in range(5):
            engine.tick()
        assert decoded == []  # held runs, unchanged: read, compared, never decoded again
        assert time.perf_counter() - started < 5  # not a benchmark: a guard against O(queue) decoding hanging
    finally:
        engine.store.conn.close()
