"""The store: migrations, WAL, compare-and-set transitions under concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from engine.model import RunSpec, RunState
from engine.store import sql
from engine.store.runs import RunStore
from engine.store.schema import migrate


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "runyard.db"
    migrate(path)
    return path


@pytest.fixture
def store(db_path, tmp_path):
    conn = sql.connect(db_path)
    yield RunStore(conn, tmp_path / "runs")
    conn.close()


def _spec(name: str = "r") -> RunSpec:
    return RunSpec(argv=("python", "train.py"), cwd="/", name=name)


def test_migrations_are_idempotent_and_set_wal_and_version(db_path):
    migrate(db_path)
    conn = sql.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sql.schema_version(conn) == sql.SCHEMA_VERSION
    names = [row[0] for row in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'runyard'")]
    assert names == ["m001_runs", "m002_enforcement", "m003_attempts", "m004_health_and_scheduling", "m005_provenance_and_groups",
                     "m006_index_ended_at", "m007_backend_jobs"]
    conn.close()


def test_a_version_5_database_gets_the_ended_at_index_and_keeps_its_runs(tmp_path):
    from sqlite_utils import Database

    from engine.store.schema import migrations

    path = tmp_path / "v5.db"
    conn = sql.connect(path)
    migrations.apply(Database(conn), stop_before="m006_index_ended_at")
    assert sql.schema_version(conn) == 5
    for index in range(30):
        conn.execute(
            "INSERT INTO runs (name, state, argv, cwd, envelope, submitted_at, ended_at) "
            "VALUES (?, 'succeeded', '[\"true\"]', '/', '{}', 1.0, ?)", (f"r{index}", float(index)),
        )
    conn.commit()
    conn.close()
    migrate(path)
    conn = sql.connect(path)
    assert sql.schema_version(conn) == sql.SCHEMA_VERSION == 7
    plan = " ".join(row[3] for row in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM runs WHERE state NOT IN ('queued', 'running') "
        "ORDER BY ended_at DESC, id DESC LIMIT 20"))
    assert "idx_runs_ended_at" in plan and "TEMP B-TREE" not in plan
    recent = sql.list_runs(conn, include_finished=False, recent_finished=3)
    assert [run.name for run in recent] == ["r27", "r28", "r29"]
    conn.close()


def test_a_version_1_database_with_runs_migrates_and_keeps_them(tmp_path):
    from sqlite_utils import Database

    from engine.store.schema import migrations

    path = tmp_path / "old.db"
    conn = sql.connect(path)
    migrations.apply(Database(conn), stop_before="m002_enforcement")
    assert sql.schema_version(conn) == 1
    conn.execute(
        "INSERT INTO runs (name, state, argv, cwd, envelope, submitted_at) "
        "VALUES ('old', 'succeeded', '[\"true\"]', '/', '{\"cpus\": 2}', 1.0)"
    )
    conn.commit()
    conn.close()
    migrate(path)
    conn = sql.connect(path)
    run = sql.get_run(conn, 1)
    assert run.name == "old" and run.envelope.cpus == 2 and run.on_overrun == "default" and run.cores == ()
    assert sql.schema_version(conn) == sql.SCHEMA_VERSION
    conn.close()


def test_ids_are_never_reused(store):
    first = store.submit(_spec(), now=1.0, uid=0, user="u")
    store.conn.execute("DELETE FROM transitions WHERE run_id = ?", (first.id,))
    store.conn.execute("DELETE FROM runs WHERE id = ?", (first.id,))
    store.conn.commit()
    assert store.submit(_spec(), now=2.0, uid=0, user="u").id == first.id + 1


def test_default_name_prefers_the_script(store):
    run = store.submit(RunSpec(argv=("python3", "scripts/train.py", "--lr", "1"), cwd="/"), now=1, uid=0, user="u")
    assert run.name == f"train.py-{run.id}"
    assert run.log_path.endswith(f"runs/{run.id}/output.log")


def test_transition_is_compare_and_set_with_history(store):
    run = store.submit(_spec(), now=1.0, uid=0, user="u")
    assert store.transition(run.id, RunState.QUEUED, RunState.RUNNING, "running", now=2.0, started_at=2.0, gpus=(1,))
    assert not store.transition(run.id, RunState.QUEUED, RunState.CANCELLED, "late", now=3.0)
    current = store.get(run.id)
    assert current.state is RunState.RUNNING and current.gpus == (1,) and current.started_at == 2.0
    assert [(t["from_state"], t["to_state"]) for t in store.transitions(run.id)] == [
        (None, "queued"), ("queued", "running")
    ]


def test_update_refuses_unknown_columns(store):
    run = store.submit(_spec(), now=1.0, uid=0, user="u")
    with pytest.raises(ValueError):
        store.update(run.id, RunState.QUEUED, state="running")
    with pytest.raises(ValueError):
        store.update(run.id, RunState.QUEUED, argv="[]")


def test_state_check_constraint_rejects_nonsense(store):
    run = store.submit(_spec(), now=1.0, uid=0, user="u")
    with pytest.raises(sqlite3.IntegrityError):
        store.conn.execute("UPDATE runs SET state = 'zombie' WHERE id = ?", (run.id,))


def _race(db_path: str, run_id: int, target: str, barrier, results) -> None:
    conn = sql.connect(db_path)
    store = RunStore(conn, None)
    barrier.wait()
    won = store.transition(run_id, RunState.QUEUED, RunState(target), target, now=5.0)
    results.put((target, won))
    conn.close()


def test_racing_transitions_exactly_one_wins(db_path, tmp_path):
    conn = sql.connect(db_path)
    store = RunStore(conn, tmp_path)
    ids = [store.submit(_spec(f"r{i}"), now=1.0, uid=0, user="u").id for i in range(10)]
    context = multiprocessing.get_context("spawn")
    for run_id in ids:
        barrier = context.Barrier(3)
        results = context.Queue()
        procs = [context.Process(target=_race, args=(str(db_path), run_id, target, barrier, results))
                 for target in ("running", "cancelled", "failed")]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        outcomes = [results.get(timeout=10) for _ in procs]
        assert sum(won for _, won in outcomes) == 1, outcomes
        winner = next(target for target, won in outcomes if won)
        assert store.get(run_id).state.value == winner
        assert len(store.transitions(run_id)) == 2
    conn.close()


def test_set_reasons_only_touches_queued_runs(store):
    a = store.submit(_spec("a"), now=1.0, uid=0, user="u")
    b = store.submit(_spec("b"), now=1.0, uid=0, user="u")
    store.transition(b.id, RunState.QUEUED, RunState.RUNNING, "running", now=2.0)
    store.set_reasons({a.id: "waiting: needs 1 GPU, 0 free", b.id: "waiting: nonsense"})
    assert store.get(a.id).reason == "waiting: needs 1 GPU, 0 free"
    assert store.get(b.id).reason == "running"


def test_meta_round_trip(store):
    assert store.get_meta("draining") is None
    store.set_meta("draining", "1")
    assert store.get_meta("draining") == "1"
    store.set_meta("draining", None)
    assert store.get_meta("draining") is None


def test_readonly_connection_reads_a_wal_database(store, db_path):
    run = store.submit(_spec(), now=1.0, uid=0, user="u")
    ro = sql.connect(db_path, readonly=True)
    assert sql.get_run(ro, run.id).name == "r"
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("DELETE FROM runs")
    ro.close()


def test_corrupt_file_is_a_store_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 1000)
    with pytest.raises((sql.StoreError, sqlite3.DatabaseError)):
        conn = sql.connect(bad)
        sql.schema_version(conn)
