"""Usage history: what the box and each run used over time, in bounded tables.

Samples arrive every few seconds for as long as the daemon runs, so they are thinned
out as they age (:meth:`History.compact`): raw samples are kept for ``raw_keep_s``
(an hour by default), then folded into one row per minute, which is kept for
``retention_s`` (three days). Row counts therefore depend on those two settings and
the number of series, never on uptime.

Each series (the box, each GPU, each run) has a raw table and a per-minute table of
the same shape: a row holds a *sum* and a *peak* of every metric, and how many samples
went into it (1 for a raw row). Merging any mix of rows, when thinning or when reading
a series, is then exact: a group's mean is the sum of its sums over the sum of its
counts. Metrics that may be unknown (GPU utilisation, disk) carry their own count.

Each run also has a summary row (peaks, sums, counts, first and last sample), updated
with every record, so ``runyard show ID --usage`` reads one row and still answers
after the samples themselves are gone.

The tables are a separate sqlite-utils migration set (``runyard-history``) beside the
main schema, in the runs database or a file of their own. ``PRAGMA user_version``
belongs to the main set and is not touched. Reading needs only the stdlib; sqlite-utils
is imported when migrating, so the CLI's readers stay light.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.store.sql import connect, write_transaction

if TYPE_CHECKING:
    # Types only: a reader (``runyard show --usage``) needs neither psutil nor sqlite-utils.
    from sqlite_utils import Database, Migrations

    from engine.probes.gpu import GpuSample
    from engine.probes.host import HostSample
    from engine.usage import RunUsage

MIGRATION_SET = "runyard-history"
MINUTE_S = 60.0
DEFAULT_RAW_KEEP_S = 3600.0
DEFAULT_RETENTION_S = 3 * 86400.0
DEFAULT_MAX_POINTS = 120


# ------------------------------------------------------------------------ migrations


def m001_usage_history(db: Database) -> None:
    """Box, per-GPU and per-run samples (raw and per-minute), and run summaries.

    Written out rather than generated from the table descriptions below: a migration
    must create the same tables forever, whatever those descriptions become. Tables are
    ``WITHOUT ROWID`` on their natural key, so the key is the only B-tree to update.
    """
    box = """
        at REAL NOT NULL, samples INTEGER NOT NULL,
        cpu_percent_sum REAL NOT NULL, cpu_percent_max REAL NOT NULL,
        mem_used_bytes_sum INTEGER NOT NULL, mem_used_bytes_max INTEGER NOT NULL,
        mem_total_bytes_max INTEGER NOT NULL,
        disk_free_bytes_sum INTEGER NOT NULL, disk_free_bytes_min INTEGER NOT NULL,
        PRIMARY KEY (at)
    """
    # Every GPU is read together, so time leads the key.
    gpu = """
        gpu_index INTEGER NOT NULL, at REAL NOT NULL, samples INTEGER NOT NULL,
        mem_used_bytes_sum INTEGER NOT NULL, mem_used_bytes_max INTEGER NOT NULL,
        mem_total_bytes_max INTEGER NOT NULL,
        util_percent_sum REAL NOT NULL, util_percent_max REAL, util_percent_samples INTEGER NOT NULL,
        PRIMARY KEY (at, gpu_index)
    """
    run_metrics = """
        cpu_percent_sum REAL NOT NULL, cpu_percent_max REAL NOT NULL,
        rss_bytes_sum INTEGER NOT NULL, rss_bytes_max INTEGER NOT NULL,
        gpu_mem_bytes_sum INTEGER NOT NULL, gpu_mem_bytes_max INTEGER NOT NULL,
        gpu_util_percent_sum REAL NOT NULL, gpu_util_percent_max REAL,
        gpu_util_percent_samples INTEGER NOT NULL,
        disk_bytes_sum INTEGER NOT NULL, disk_bytes_max INTEGER, disk_bytes_samples INTEGER NOT NULL,
        processes_max INTEGER NOT NULL
    """
    # One run is read at a time, so the run leads the key.
    run = f"""
        run_id INTEGER NOT NULL, at REAL NOT NULL, samples INTEGER NOT NULL,
        {run_metrics},
        PRIMARY KEY (run_id, at)
    """
    for resolution in ("raw", "minute"):
        db.execute(f"CREATE TABLE usage_box_{resolution} ({box}) WITHOUT ROWID")
        db.execute(f"CREATE TABLE usage_gpu_{resolution} ({gpu}) WITHOUT ROWID")
        db.execute(f"CREATE TABLE usage_run_{resolution} ({run}) WITHOUT ROWID")
    db.execute(
        f"""
        CREATE TABLE usage_run_summary (
            run_id INTEGER PRIMARY KEY, first_at REAL NOT NULL, last_at REAL NOT NULL,
            samples INTEGER NOT NULL, {run_metrics}
        )
        """
    )


@functools.cache
def history_migrations() -> Migrations:
    """The ``runyard-history`` migration set (built on first use: it needs sqlite-utils)."""
    from sqlite_utils import Migrations

    migrations = Migrations(MIGRATION_SET)
    migrations()(m001_usage_history)
    return migrations


def apply_history_migrations(db_path_or_conn: Path | str | sqlite3.Connection) -> None:
    """Create or update the history tables; applying twice changes nothing.

    Takes the lock file of :func:`engine.store.schema.migrate`, so migrations of the
    two sets by several processes never race.

    Args:
        db_path_or_conn: The database file (created if needed, switched to WAL), or an
            open connection to it that is not inside a transaction.

    Raises:
        sqlite3.DatabaseError: The file is not a database; turn it into one line with
            :func:`engine.store.sql.store_error`.
    """
    from sqlite_utils import Database

    if isinstance(db_path_or_conn, sqlite3.Connection):
        with _migration_lock(_file_of(db_path_or_conn)):
            # Someone else's connection: leave its pragmas alone.
            db = Database(db_path_or_conn, recursive_triggers=False, execute_plugins=False)
            history_migrations().apply(db)
        return
    path = Path(db_path_or_conn)
    with _migration_lock(path):
        conn = connect(path)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            history_migrations().apply(Database(conn))
        finally:
            conn.close()


def _file_of(conn: sqlite3.Connection) -> Path | None:
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            return Path(row[2]) if row[2] else None
    return None


@contextlib.contextmanager
def _migration_lock(db_path: Path | None) -> Iterator[None]:
    if db_path is None:  # in memory: no other process can see it
        yield
        return
    with open(f"{db_path}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ------------------------------------------------------------------------ the series


@dataclass(frozen=True)
class _Metric:
    """How one metric is stored: ``{name}_sum`` and ``{name}_{peak}``, plus
    ``{name}_samples`` when it may be unknown. ``peak_only`` keeps just ``{name}_max``."""

    name: str
    peak: str = "max"
    nullable: bool = False
    peak_only: bool = False

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """``(column, how rows merge)``; ``how`` is ``SUM``, ``MAX`` or ``MIN``."""
        if self.peak_only:
            return ((f"{self.name}_max", "MAX"),)
        columns = [(f"{self.name}_sum", "SUM"), (f"{self.name}_{self.peak}", self.peak.upper())]
        if self.nullable:
            columns.append((f"{self.name}_samples", "SUM"))
        return tuple(columns)

    def as_row(self, value: str) -> list[str]:
        """SQL turning one reading (the expression ``value``) into this metric's columns
        of a raw row: the reading is its own sum and peak."""
        if self.peak_only:
            return [value]
        if self.nullable:
            return [f"COALESCE({value}, 0)", value, f"({value} IS NOT NULL)"]
        return [value, value]


@dataclass(frozen=True)
class _Series:
    """A pair of series tables (raw, minute) and the SQL that writes, thins and reads
    them. A test holds these descriptions to the columns the migration created."""

    name: str
    keys: tuple[str, ...]
    """What tells one series of the table from another (run id, GPU index)."""
    primary_key: tuple[str, ...]
    metrics: tuple[_Metric, ...]

    @property
    def raw(self) -> str:
        return f"{self.name}_raw"

    @property
    def minute(self) -> str:
        return f"{self.name}_minute"

    @property
    def rules(self) -> tuple[tuple[str, str], ...]:
        return tuple(column for metric in self.metrics for column in metric.columns)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.keys, "at", "samples", *(column for column, _ in self.rules))

    @property
    def readings(self) -> tuple[str, ...]:
        """What one reading binds, in order: the keys, ``at``, then each metric's value."""
        return (*self.keys, "at", *(metric.name for metric in self.metrics))

    def as_row(self, values: Sequence[str]) -> list[str]:
        """SQL turning a reading (expressions in :attr:`readings` order) into a raw row."""
        keys_and_at = list(values[: len(self.keys) + 1])
        metrics = values[len(self.keys) + 1 :]
        columns = [sql for metric, value in zip(self.metrics, metrics) for sql in metric.as_row(value)]
        return [*keys_and_at, "1", *columns]

    def record_sql(self) -> str:
        """Insert one reading, bound as a tuple in :attr:`readings` order."""
        values = self.as_row([f"?{number}" for number in range(1, len(self.readings) + 1)])
        return (
            f"INSERT INTO {self.raw} ({', '.join(self.columns)}) VALUES ({', '.join(values)}) "
            f"{self.merge_on_conflict()}"
        )

    def compact_sql(self) -> str:
        """Fold raw rows before ``:before`` into their minutes (merging with a minute
        row already there, which only a clock set back can cause)."""
        bucket = "CAST(at / :minute AS INTEGER) * :minute"
        group = ", ".join([*self.keys, "bucket"])
        selected = [*self.keys, f"{bucket} AS bucket", "SUM(samples)", *_aggregates(self.rules)]
        return (
            f"INSERT INTO {self.minute} ({', '.join(self.columns)}) "
            f"SELECT {', '.join(selected)} FROM {self.raw} WHERE at < :before GROUP BY {group} "
            f"{self.merge_on_conflict()}"
        )

    def series_sql(self, where: str = "") -> str:
        """Both tables' rows in ``[:since, :until]``, merged into ``:step``-wide slots.
        The last slot also takes the row at ``:until`` itself, so slots never exceed
        ``:last + 1``."""
        slot = "MIN(CAST((at - :since) / :step AS INTEGER), :last)"
        columns = ", ".join(self.columns)
        arms = [
            f"SELECT {columns} FROM {table} WHERE at >= :since AND at <= :until {where}"
            for table in (self.minute, self.raw)
        ]
        merged = [f"{aggregate} AS {column}" for aggregate, (column, _) in zip(_aggregates(self.rules), self.rules)]
        group = ", ".join(["slot", *self.keys])
        return (
            f"SELECT {slot} AS slot, {', '.join([*self.keys, 'MIN(at) AS at', 'SUM(samples) AS samples', *merged])} "
            f"FROM ({' UNION ALL '.join(arms)}) GROUP BY {group} ORDER BY {group}"
        )

    def bounds_sql(self, where: str = "") -> str:
        """Newest raw and minute sample, and oldest raw one: index lookups only."""
        return (
            f"SELECT (SELECT MAX(at) FROM {self.raw} WHERE 1 {where}),"
            f" (SELECT MAX(at) FROM {self.minute} WHERE 1 {where}),"
            f" (SELECT MIN(at) FROM {self.raw} WHERE 1 {where})"
        )

    def merge_on_conflict(self) -> str:
        """The upsert clause merging a row into the one already stored under its key."""
        return f"ON CONFLICT({', '.join(self.primary_key)}) DO UPDATE SET {_merge_assignments(self.rules)}"


def _aggregates(rules: Iterable[tuple[str, str]]) -> list[str]:
    return [f"{how}({column})" for column, how in rules]


def _merge_assignments(rules: Iterable[tuple[str, str]]) -> str:
    """An upsert's SET clause adding ``excluded`` (the new row) into the stored row."""
    parts = ["samples = samples + excluded.samples"]
    for column, how in rules:
        if how == "SUM":
            parts.append(f"{column} = {column} + excluded.{column}")
        else:
            # Two-argument MAX/MIN is NULL when either is: keep whichever is known.
            parts.append(
                f"{column} = {how}(COALESCE({column}, excluded.{column}), COALESCE(excluded.{column}, {column}))"
            )
    return ", ".join(parts)


_BOX = _Series(
    "usage_box",
    (),
    ("at",),
    (
        _Metric("cpu_percent"),
        _Metric("mem_used_bytes"),
        _Metric("mem_total_bytes", peak_only=True),
        # The lowest free space is what runs a run out of disk; the highest is no news.
        _Metric("disk_free_bytes", peak="min"),
    ),
)
_GPU = _Series(
    "usage_gpu",
    ("gpu_index",),
    ("at", "gpu_index"),
    (
        _Metric("mem_used_bytes"),
        _Metric("mem_total_bytes", peak_only=True),
        _Metric("util_percent", nullable=True),
    ),
)
_RUN = _Series(
    "usage_run",
    ("run_id",),
    ("run_id", "at"),
    (
        _Metric("cpu_percent"),
        _Metric("rss_bytes"),
        _Metric("gpu_mem_bytes"),
        _Metric("gpu_util_percent", nullable=True),
        _Metric("disk_bytes", nullable=True),
        _Metric("processes", peak_only=True),
    ),
)
_ALL_SERIES = (_BOX, _GPU, _RUN)
_BOX_RECORD = _BOX.record_sql()
_GPU_RECORD = _GPU.record_sql()
_SUMMARY = "usage_run_summary"
_BATCH = "usage_run_batch"
"""A per-connection temporary table of readings: a batch lands here first, so that the
raw table and the summaries are each updated by one statement aggregating in SQLite."""
_BATCH_DDL = f"CREATE TEMP TABLE IF NOT EXISTS {_BATCH} ({', '.join(_RUN.readings)})"
_BATCH_INSERT = f"INSERT INTO temp.{_BATCH} VALUES ({', '.join('?' for _ in _RUN.readings)})"
_BATCH_AS_ROWS = (
    f"SELECT {', '.join(f'{sql} AS {column}' for sql, column in zip(_RUN.as_row(_RUN.readings), _RUN.columns))} "
    f"FROM temp.{_BATCH}"
)
_RAW_FROM_BATCH = (
    f"INSERT INTO {_RUN.raw} ({', '.join(_RUN.columns)}) {_BATCH_AS_ROWS} WHERE true {_RUN.merge_on_conflict()}"
)
_SUMMARY_FROM_BATCH = (
    f"INSERT INTO {_SUMMARY} (run_id, first_at, last_at, samples, {', '.join(column for column, _ in _RUN.rules)}) "
    f"SELECT run_id, MIN(at), MAX(at), SUM(samples), {', '.join(_aggregates(_RUN.rules))} "
    f"FROM ({_BATCH_AS_ROWS}) WHERE true GROUP BY run_id "
    f"ON CONFLICT(run_id) DO UPDATE SET first_at = MIN(first_at, excluded.first_at), "
    f"last_at = MAX(last_at, excluded.last_at), {_merge_assignments(_RUN.rules)}"
)


# ------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class GpuPoint:
    """One GPU over one slot of a series. Bytes are means unless named ``_max``."""

    index: int
    mem_used_bytes: int
    mem_used_bytes_max: int
    mem_total_bytes: int
    util_percent: float | None
    util_percent_max: float | None


@dataclass(frozen=True)
class BoxPoint:
    """The box over one slot of a series: means, and the worst value in the slot."""

    at: float
    """When the slot's first sample was taken (its minute's start, if thinned)."""
    samples: int
    cpu_percent: float
    cpu_percent_max: float
    mem_used_bytes: int
    mem_used_bytes_max: int
    mem_total_bytes: int
    disk_free_bytes: int
    disk_free_bytes_min: int
    gpus: tuple[GpuPoint, ...]


@dataclass(frozen=True)
class RunPoint:
    """One run over one slot of a series: means, and peaks (``_max``)."""

    at: float
    """When the slot's first sample was taken (its minute's start, if thinned)."""
    samples: int
    cpu_percent: float
    cpu_percent_max: float
    rss_bytes: int
    rss_bytes_max: int
    gpu_mem_bytes: int
    gpu_mem_bytes_max: int
    gpu_util_percent: float | None
    gpu_util_percent_max: float | None
    disk_bytes: int | None
    disk_bytes_max: int | None
    processes_max: int


class History:
    """Records usage samples, thins them, reads them back as series and summaries.

    Args:
        conn: A connection (:func:`engine.store.sql.connect`) to a database the history
            migrations were applied to. Each write is one ``BEGIN IMMEDIATE``
            transaction, so the connection and the database may be shared with other
            writers. Not for use from several threads at once.
        raw_keep_s: How long samples are kept as recorded before being thinned to one
            row per minute.
        retention_s: How long per-minute rows are kept. Run summaries are kept for good.

    Raises:
        ValueError: The periods are negative or retention is shorter than raw_keep_s.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        raw_keep_s: float = DEFAULT_RAW_KEEP_S,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        if raw_keep_s < 0 or retention_s < raw_keep_s:
            raise ValueError(
                "usage history: raw samples must be kept 0s or more, and per-minute rows at least as long "
                f"(got {raw_keep_s:g}s and {retention_s:g}s)"
            )
        self.conn = conn
        self.raw_keep_s = float(raw_keep_s)
        self.retention_s = float(retention_s)

    # -- writing ----------------------------------------------------------------------

    def record_box(self, at: float, host: HostSample, gpus: Sequence[GpuSample]) -> None:
        """Record one reading of the box and its GPUs (unavailable GPUs are left out:
        their zeros would drag every mean down)."""
        self.record_box_batch([(at, host, gpus)])

    def record_box_batch(self, samples: Iterable[tuple[float, HostSample, Sequence[GpuSample]]]) -> None:
        """:meth:`record_box` for many readings, in one transaction."""
        box_rows: list[tuple] = []
        gpu_rows: list[tuple] = []
        for at, host, gpus in samples:
            box_rows.append(
                (at, host.cpu_percent, host.mem_total - host.mem_available, host.mem_total, host.disk_free)
            )
            gpu_rows.extend(
                (gpu.index, at, gpu.mem_used, gpu.mem_total, gpu.util_percent) for gpu in gpus if gpu.available
            )
        if not box_rows:
            return
        with write_transaction(self.conn):
            self.conn.executemany(_BOX_RECORD, box_rows)
            self.conn.executemany(_GPU_RECORD, gpu_rows)

    def record_runs(self, at: float, usages: Mapping[int, RunUsage]) -> None:
        """Record one reading of each run, stamped ``at``, and fold it into the run's
        summary."""
        self.record_runs_batch([(at, usages)])

    def record_runs_batch(self, samples: Iterable[tuple[float, Mapping[int, RunUsage]]]) -> None:
        """:meth:`record_runs` for many readings, in one transaction."""
        rows = [  # in _RUN.readings order
            (run_id, at, usage.cpu_percent, usage.rss_bytes, usage.gpu_mem_bytes, usage.gpu_util_percent,
             usage.disk_bytes, usage.processes)
            for at, usages in samples
            for run_id, usage in usages.items()
        ]
        if not rows:
            return
        with write_transaction(self.conn):
            self.conn.execute(_BATCH_DDL)
            self.conn.executemany(_BATCH_INSERT, rows)
            self.conn.execute(_RAW_FROM_BATCH)
            self.conn.execute(_SUMMARY_FROM_BATCH)
            self.conn.execute(f"DELETE FROM temp.{_BATCH}")

    def compact(self, now: float) -> None:
        """Thin out old samples: raw ones older than ``raw_keep_s`` become one row per
        minute, per-minute rows older than ``retention_s`` are deleted.

        Only whole minutes are thinned, so no minute is split between a raw part and a
        minute row. One transaction; meant to be called every few minutes.
        """
        raw_before = ((now - self.raw_keep_s) // MINUTE_S) * MINUTE_S
        keep_from = now - self.retention_s
        with write_transaction(self.conn):
            for series in _ALL_SERIES:
                self.conn.execute(series.compact_sql(), {"before": raw_before, "minute": MINUTE_S})
                self.conn.execute(f"DELETE FROM {series.raw} WHERE at < ?", (raw_before,))
                self.conn.execute(f"DELETE FROM {series.minute} WHERE at < ?", (keep_from,))

    # -- reading ----------------------------------------------------------------------

    def box_series(
        self, since: float, until: float | None = None, max_points: int = DEFAULT_MAX_POINTS
    ) -> list[BoxPoint]:
        """The box from ``since`` to ``until`` (default: the newest sample), as at most
        ``max_points`` points ordered by time. Slots without samples are left out."""
        params = self._slot_params(_BOX, {}, since, until, max_points)
        if params is None:
            return []
        gpus: dict[int, list[GpuPoint]] = {}
        for row in self._rows(_GPU.series_sql(), params):
            gpus.setdefault(row["slot"], []).append(
                GpuPoint(
                    index=row["gpu_index"],
                    mem_used_bytes=_mean_int(row["mem_used_bytes_sum"], row["samples"]),
                    mem_used_bytes_max=row["mem_used_bytes_max"],
                    mem_total_bytes=row["mem_total_bytes_max"],
                    util_percent=_mean(row["util_percent_sum"], row["util_percent_samples"]),
                    util_percent_max=row["util_percent_max"],
                )
            )
        return [
            BoxPoint(
                at=row["at"],
                samples=row["samples"],
                cpu_percent=_mean(row["cpu_percent_sum"], row["samples"]),
                cpu_percent_max=row["cpu_percent_max"],
                mem_used_bytes=_mean_int(row["mem_used_bytes_sum"], row["samples"]),
                mem_used_bytes_max=row["mem_used_bytes_max"],
                mem_total_bytes=row["mem_total_bytes_max"],
                disk_free_bytes=_mean_int(row["disk_free_bytes_sum"], row["samples"]),
                disk_free_bytes_min=row["disk_free_bytes_min"],
                gpus=tuple(gpus.get(row["slot"], ())),
            )
            for row in self._rows(_BOX.series_sql(), params)
        ]

    def run_series(
        self, run_id: int, since: float, max_points: int = DEFAULT_MAX_POINTS, until: float | None = None
    ) -> list[RunPoint]:
        """One run from ``since`` to ``until`` (default: its newest sample), as at most
        ``max_points`` points ordered by time. Slots without samples are left out."""
        params = self._slot_params(_RUN, {"run_id": run_id}, since, until, max_points)
        if params is None:
            return []
        return [
            RunPoint(
                at=row["at"],
                samples=row["samples"],
                cpu_percent=_mean(row["cpu_percent_sum"], row["samples"]),
                cpu_percent_max=row["cpu_percent_max"],
                rss_bytes=_mean_int(row["rss_bytes_sum"], row["samples"]),
                rss_bytes_max=row["rss_bytes_max"],
                gpu_mem_bytes=_mean_int(row["gpu_mem_bytes_sum"], row["samples"]),
                gpu_mem_bytes_max=row["gpu_mem_bytes_max"],
                gpu_util_percent=_mean(row["gpu_util_percent_sum"], row["gpu_util_percent_samples"]),
                gpu_util_percent_max=row["gpu_util_percent_max"],
                disk_bytes=_mean_int(row["disk_bytes_sum"], row["disk_bytes_samples"]),
                disk_bytes_max=row["disk_bytes_max"],
                processes_max=row["processes_max"],
            )
            for row in self._rows(_RUN.series_sql("AND run_id = :run_id"), params)
        ]

    def run_summary(self, run_id: int) -> dict[str, Any] | None:
        """A run's usage over its whole life; ``None`` if it was never sampled.

        Returns:
            ``{"run_id", "first_at", "last_at", "samples", "cpu_percent", "rss_bytes",
            "gpu_mem_bytes", "gpu_util_percent", "disk_bytes", "processes"}``, each metric
            ``{"mean": ..., "max": ...}`` (``None`` where never known; byte means rounded
            to whole bytes; ``processes`` has only ``max``).
        """
        row = self._rows(f"SELECT * FROM {_SUMMARY} WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        summary: dict[str, Any] = {key: row[key] for key in ("run_id", "first_at", "last_at", "samples")}
        for metric in _RUN.metrics:
            if metric.peak_only:
                summary[metric.name] = {"max": row[f"{metric.name}_max"]}
                continue
            count = row[f"{metric.name}_samples"] if metric.nullable else row["samples"]
            mean = _mean_int if metric.name.endswith("_bytes") else _mean
            summary[metric.name] = {"mean": mean(row[f"{metric.name}_sum"], count), "max": row[f"{metric.name}_max"]}
        return summary

    def row_counts(self) -> dict[str, int]:
        """Rows in each history table, by table name."""
        tables = [table for series in _ALL_SERIES for table in (series.raw, series.minute)] + [_SUMMARY]
        return {table: self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in tables}

    def _rows(self, query: str, params: Mapping[str, Any] | Sequence[Any]) -> sqlite3.Cursor:
        """Rows by column name, whatever row factory the connection has."""
        cursor = self.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute(query, params)

    def _slot_params(
        self, series: _Series, keys: Mapping[str, int], since: float, until: float | None, max_points: int
    ) -> dict[str, Any] | None:
        """Parameters of a series query, or ``None`` when it has nothing to read."""
        if max_points < 1:
            raise ValueError(f"max_points must be 1 or more, got {max_points}")
        where = "".join(f"AND {key} = :{key} " for key in keys)
        newest_raw, newest_minute, oldest_raw = self.conn.execute(series.bounds_sql(where), dict(keys)).fetchone()
        known = [at for at in (newest_raw, newest_minute) if at is not None]
        end = until if until is not None else (max(known) if known else None)
        if end is None or end < since:
            return None
        step = (end - since) / max_points
        if oldest_raw is None or since < oldest_raw:
            # Minute rows are in range: slots narrower than a minute would alternate
            # between a point and a gap.
            step = max(step, MINUTE_S)
        return {**keys, "since": since, "until": end, "step": max(step, 1e-9), "last": max_points - 1}


def _mean(total: float | None, count: int | None) -> float | None:
    if total is None or not count:
        return None
    return total / count


def _mean_int(total: int | None, count: int | None) -> int | None:
    mean = _mean(total, count)
    return None if mean is None else round(mean)
