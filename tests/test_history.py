"""Usage history: migrations beside the main schema, thinning that keeps the tables
bounded, exact means and peaks, and series reads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from engine.probes.gpu import GpuSample
from engine.probes.host import HostSample
from engine.store import sql
from engine.store.history import History, apply_history_migrations, history_migrations
from engine.store.schema import migrate
from engine.store.schema import migrations as main_migrations
from engine.usage import RunUsage

G = 1 << 30
M = 1 << 20
STEP_S = 2.0
WINDOW_S = 600.0
"""The daemon compacts every ten minutes."""
TICKS_PER_WINDOW = int(WINDOW_S / STEP_S)
T0 = 1_699_999_980.0  # a whole minute, so minutes and windows line up with ticks
RAW_KEEP_S = 3600.0
RETENTION_S = 3 * 86400.0
RUNS = (1, 2, 3)
HISTORY_TABLES = {
    f"usage_{series}_{resolution}" for series in ("box", "gpu", "run") for resolution in ("raw", "minute")
} | {"usage_run_summary"}


def open_history(path: Path, **periods: float) -> History:
    apply_history_migrations(path)
    conn = sql.connect(path)
    # Durability is not under test here; an fsync per transaction would only slow it.
    conn.execute("PRAGMA synchronous=OFF")
    return History(conn, **periods)


@pytest.fixture
def history(tmp_path: Path):
    history = open_history(tmp_path / "runyard.db", raw_keep_s=RAW_KEEP_S, retention_s=RETENTION_S)
    yield history
    history.conn.close()


def host(cpu_percent: float = 50.0, mem_used: int = 10 * G, disk_free: int = 100 * G) -> HostSample:
    return HostSample(
        cpus=2.0, cpu_percent=cpu_percent, mem_total=64 * G, mem_available=64 * G - mem_used,
        disk_total=500 * G, disk_free=disk_free, load1=0.5,
    )


def gpu(index: int, mem_used: int, util: float | None, **changes) -> GpuSample:
    values = dict(
        index=index, name="g", uuid=None, mem_total=80 * G, mem_used=mem_used, util_percent=util,
        temperature_c=None, power_w=None, processes=(),
    )
    values.update(changes)
    return GpuSample(**values)


def usage(run_id: int, tick: int) -> RunUsage:
    """A run's reading at a tick. Every pattern's period divides a window's ticks, so
    one window's readings serve every window and exact expectations are easy."""
    return RunUsage(
        run_id=run_id,
        at=0.0,
        cpu_percent=(tick % 6) * 12.5,
        rss_bytes=run_id * G + (tick % 5) * M,
        gpu_mem_bytes=(tick % 3) * G if run_id == 1 else 0,
        gpu_util_percent=None if tick % 4 == 0 else (tick % 4) * 10.0,
        disk_bytes=None if run_id == 3 else ((tick % TICKS_PER_WINDOW) // 30) * 4096,
        processes=1 + tick % 3,
    )


def mean(values):
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


# ---------------------------------------------------------------------- migrations


def test_migrations_apply_twice_beside_the_main_set(tmp_path: Path) -> None:
    db_path = tmp_path / "runyard.db"
    migrate(db_path)
    apply_history_migrations(db_path)
    apply_history_migrations(db_path)
    conn = sql.connect(db_path)
    apply_history_migrations(conn)  # through an open connection too
    migrate(db_path)  # the main set still finds its schema version untouched
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert HISTORY_TABLES <= tables and "runs" in tables
    applied = conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'runyard-history'")
    assert [row[0] for row in applied] == ["m001_usage_history"]
    assert main_migrations.pending(Database(conn)) == [] and history_migrations().pending(Database(conn)) == []
    assert sql.schema_version(conn) == sql.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_history_first_then_the_main_set(tmp_path: Path) -> None:
    db_path = tmp_path / "runyard.db"
    apply_history_migrations(db_path)
    migrate(db_path)
    apply_history_migrations(db_path)
    conn = sql.connect(db_path)
    assert sql.schema_version(conn) == sql.SCHEMA_VERSION
    History(conn).record_runs(1.0, {5: usage(5, 1)})
    assert History(conn).run_summary(5)["samples"] == 1
    conn.close()


def test_sql_and_migration_agree_on_columns(history: History) -> None:
    from engine.store.history import _ALL_SERIES

    for series in _ALL_SERIES:
        for table in (series.raw, series.minute):
            columns = [row[1] for row in history.conn.execute(f"PRAGMA table_info({table})")]
            assert columns == list(series.columns), table


def test_history_refuses_retention_shorter_than_raw_keep() -> None:
    conn = sqlite3.connect(":memory:")
    with pytest.raises(ValueError, match="at least as long"):
        History(conn, raw_keep_s=3600, retention_s=60)
    conn.close()


# ---------------------------------------------------------------------- a week


def test_a_week_of_samples_stays_bounded(history: History) -> None:
    week_windows = int(7 * 86400 / WINDOW_S)
    readings = [{run_id: usage(run_id, tick) for run_id in RUNS} for tick in range(TICKS_PER_WINDOW)]
    box = [
        (host(cpu_percent=(tick % 6) * 15.0, mem_used=(10 + tick % 2) * G), (gpu(0, (tick % 3) * G, 50.0),))
        for tick in range(TICKS_PER_WINDOW)
    ]
    # After thinning at `now`, raw rows are at most raw_keep_s (plus the minute being
    # filled) old; minute rows span retention_s minus what is still raw.
    raw_bound = (RAW_KEEP_S + 60) / STEP_S + 1
    minute_bound = (RETENTION_S - RAW_KEEP_S) / 60 + 1
    bounds = {
        "usage_box_raw": raw_bound, "usage_gpu_raw": raw_bound, "usage_run_raw": len(RUNS) * raw_bound,
        "usage_box_minute": minute_bound, "usage_gpu_minute": minute_bound,
        "usage_run_minute": len(RUNS) * minute_bound, "usage_run_summary": len(RUNS),
    }
    peak = dict.fromkeys(bounds, 0)
    for window in range(week_windows):
        start = T0 + window * WINDOW_S
        times = [start + tick * STEP_S for tick in range(TICKS_PER_WINDOW)]
        history.record_box_batch((at, sample[0], sample[1]) for at, sample in zip(times, box))
        history.record_runs_batch(zip(times, readings))
        history.compact(times[-1] + STEP_S)
        counts = history.row_counts()
        assert all(counts[table] <= bound for table, bound in bounds.items()), (window, counts)
        peak = {table: max(peak[table], counts[table]) for table in bounds}
    # The bounds are tight: a week comes close to each.
    assert all(peak[table] >= 0.95 * bound for table, bound in bounds.items()), peak

    end = T0 + week_windows * WINDOW_S
    check_minutes(history, end)
    check_raw_tail(history, end)
    check_summaries(history, week_windows * TICKS_PER_WINDOW)
    check_series_shapes(history, end)


def check_minutes(history: History, end: float) -> None:
    """Per-minute means and peaks from thinned rows, against the readings themselves."""
    since = end - 86400.0  # a day ago: thinned long since, not yet expired
    minutes = 30
    points = history.run_series(1, since, max_points=minutes, until=since + minutes * 60 - 0.001)
    assert [point.at for point in points] == pytest.approx([since + 60 * k for k in range(minutes)])
    for point in points:
        first = int((point.at - T0) / STEP_S)
        ticks = range(first, first + 30)
        expected = [usage(1, tick) for tick in ticks]
        assert point.samples == 30
        assert point.cpu_percent == mean([u.cpu_percent for u in expected])
        assert point.cpu_percent_max == max(u.cpu_percent for u in expected)
        assert point.rss_bytes == round(mean([u.rss_bytes for u in expected]))
        assert point.rss_bytes_max == max(u.rss_bytes for u in expected)
        assert point.gpu_mem_bytes_max == max(u.gpu_mem_bytes for u in expected)
        assert point.gpu_util_percent == mean([u.gpu_util_percent for u in expected])
        assert point.gpu_util_percent_max == 30.0
        assert point.disk_bytes == round(mean([u.disk_bytes for u in expected]))
        assert point.disk_bytes_max == max(u.disk_bytes for u in expected)
        assert point.processes_max == 3
    box = history.box_series(since, until=since + minutes * 60 - 0.001, max_points=minutes)
    assert len(box) == minutes
    assert {(p.samples, p.cpu_percent, p.cpu_percent_max, p.mem_used_bytes_max) for p in box} == {
        (30, 37.5, 75.0, 11 * G)
    }
    assert {(g.index, g.mem_used_bytes, g.mem_used_bytes_max, g.util_percent) for p in box for g in p.gpus} == {
        (0, 1 * G, 2 * G, 50.0)
    }


def check_raw_tail(history: History, end: float) -> None:
    """The last ten minutes are still raw: one point per reading."""
    since = end - WINDOW_S
    points = history.run_series(2, since, max_points=TICKS_PER_WINDOW)
    assert len(points) == TICKS_PER_WINDOW
    for point in points:
        expected = usage(2, int(round((point.at - T0) / STEP_S)))
        assert point.samples == 1
        assert (point.cpu_percent, point.rss_bytes, point.gpu_util_percent) == (
            expected.cpu_percent, expected.rss_bytes, expected.gpu_util_percent,
        )


def check_summaries(history: History, ticks: int) -> None:
    """Summaries cover the whole week, although most samples are long gone."""
    for run_id in RUNS:
        expected = [usage(run_id, tick) for tick in range(TICKS_PER_WINDOW)]  # one period of every pattern
        summary = history.run_summary(run_id)
        assert summary["samples"] == ticks
        assert (summary["first_at"], summary["last_at"]) == (T0, T0 + (ticks - 1) * STEP_S)
        assert summary["cpu_percent"] == {"mean": 31.25, "max": 62.5}
        assert summary["rss_bytes"] == {"mean": run_id * G + 2 * M, "max": run_id * G + 4 * M}
        assert summary["gpu_mem_bytes"] == ({"mean": G, "max": 2 * G} if run_id == 1 else {"mean": 0, "max": 0})
        assert summary["gpu_util_percent"] == {"mean": 20.0, "max": 30.0}
        if run_id == 3:
            assert summary["disk_bytes"] == {"mean": None, "max": None}
        else:
            assert summary["disk_bytes"] == {"mean": round(mean([u.disk_bytes for u in expected])), "max": 9 * 4096}
        assert summary["processes"] == {"max": 3}
    assert history.run_summary(99) is None


def check_series_shapes(history: History, end: float) -> None:
    for max_points in (1, 7, 120, 500):
        for points in (
            history.box_series(end - 4 * 86400, max_points=max_points),
            history.run_series(3, end - 2 * 3600, max_points=max_points),
            history.run_series(3, end - 600, max_points=max_points),
        ):
            assert 0 < len(points) <= max_points
            times = [point.at for point in points]
            assert times == sorted(set(times))
    # Every sample lands in some point, whatever the resolution.
    whole = history.box_series(end - 2 * 3600, max_points=7)
    assert sum(point.samples for point in whole) == (2 * 3600 // 60 - 60) * 30 + 3600 / STEP_S
    assert history.run_series(1, end + 1) == []


# ---------------------------------------------------------------------- small cases


def test_summary_is_exact_and_outlives_the_samples(history: History) -> None:
    readings = [
        RunUsage(4, 0, cpu_percent=10.0, rss_bytes=100, gpu_mem_bytes=0, gpu_util_percent=None,
                 disk_bytes=None, processes=1),
        RunUsage(4, 0, cpu_percent=250.0, rss_bytes=700, gpu_mem_bytes=3 * G, gpu_util_percent=80.0,
                 disk_bytes=5000, processes=4),
        RunUsage(4, 0, cpu_percent=40.0, rss_bytes=400, gpu_mem_bytes=1 * G, gpu_util_percent=20.0,
                 disk_bytes=None, processes=2),
    ]
    for offset, reading in enumerate(readings):
        history.record_runs(T0 + offset * STEP_S, {4: reading})
    history.record_runs(T0 + 10, {})  # nothing to record: no transaction, no error
    expected = {
        "run_id": 4, "first_at": T0, "last_at": T0 + 4.0, "samples": 3,
        "cpu_percent": {"mean": 100.0, "max": 250.0},
        "rss_bytes": {"mean": 400, "max": 700},
        "gpu_mem_bytes": {"mean": round(4 * G / 3), "max": 3 * G},
        "gpu_util_percent": {"mean": 50.0, "max": 80.0},
        "disk_bytes": {"mean": 5000, "max": 5000},
        "processes": {"max": 4},
    }
    assert history.run_summary(4) == expected
    history.compact(T0 + RETENTION_S + 3600)
    assert history.run_series(4, T0) == []
    assert {table: count for table, count in history.row_counts().items() if count} == {"usage_run_summary": 1}
    assert history.run_summary(4) == expected


def test_batch_and_single_records_agree(tmp_path: Path) -> None:
    one = open_history(tmp_path / "one.db")
    many = open_history(tmp_path / "many.db")
    samples = [(T0 + tick * STEP_S, {run_id: usage(run_id, tick) for run_id in RUNS}) for tick in range(95)]
    for at, readings in samples:
        one.record_runs(at, readings)
    many.record_runs_batch(samples)
    for history in (one, many):
        history.compact(T0 + 95 * STEP_S + RAW_KEEP_S - 60)  # the first two minutes are thinned
    for run_id in RUNS:
        assert one.run_summary(run_id) == many.run_summary(run_id)
        assert one.run_series(run_id, T0, max_points=200) == many.run_series(run_id, T0, max_points=200)
    one.conn.close()
    many.conn.close()


def test_series_merge_thinned_and_raw_rows_exactly(history: History) -> None:
    # Two hours of the box, thinned at the end: the first hour is minute rows, the
    # second raw. Read at one point per minute, the seam does not show.
    ticks = int(2 * 3600 / STEP_S)
    history.record_box_batch(
        (T0 + tick * STEP_S, host(cpu_percent=float(tick % 30), disk_free=(100 + tick % 7) * G), ())
        for tick in range(ticks)
    )
    end = T0 + ticks * STEP_S
    history.compact(end)
    assert 0 < history.row_counts()["usage_box_minute"] < 120 < history.row_counts()["usage_box_raw"]
    points = history.box_series(T0, until=end - 0.001, max_points=120)
    assert len(points) == 120
    assert {(p.samples, p.cpu_percent, p.cpu_percent_max) for p in points} == {(30, 14.5, 29.0)}
    assert {p.disk_free_bytes_min for p in points} == {100 * G}
    assert [p.at for p in points] == pytest.approx([T0 + 60 * k for k in range(120)], abs=0.01)


def test_unavailable_gpus_are_left_out(history: History) -> None:
    history.record_box(T0, host(), [gpu(0, 4 * G, None), gpu(1, 0, None, available=False)])
    history.record_box(T0 + STEP_S, host(), [gpu(0, 6 * G, 30.0), gpu(1, 0, None, available=False)])
    (point,) = history.box_series(T0, max_points=1)
    assert point.samples == 2
    (only,) = point.gpus
    assert (only.index, only.mem_used_bytes, only.mem_used_bytes_max) == (0, 5 * G, 6 * G)
    assert (only.util_percent, only.util_percent_max) == (30.0, 30.0)  # the unknown reading is not a 0


def test_a_reading_twice_at_one_time_is_merged(history: History) -> None:
    # A clock set back can stamp two readings alike; neither is lost.
    history.record_runs(T0, {1: usage(1, 1)})
    history.record_runs(T0, {1: usage(1, 2)})
    (point,) = history.run_series(1, T0)
    assert (point.samples, point.cpu_percent, point.cpu_percent_max) == (2, 18.75, 25.0)
    assert history.run_summary(1)["samples"] == 2
