"""The engine: one tick reaps exits, enforces stops and time limits, admits and launches.

The tick is a plain method, so tests drive it directly with an injected clock and fake
probes; the daemon only decides *when* it runs (APScheduler's interval, a submit, a
pidfd saying a run ended, the next deadline). Collaborators arrive as arguments; only
:mod:`engine.daemon` knows how to build them.

The database is the source of truth: every tick reads queued and running runs from it,
so runs queued by an offline ``runyard submit`` are picked up like any other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from engine import breaker, checkpoints, enforce, groups, health, policy, provenance, retry
from engine import handover, shared_policy, userfiles
from engine.config import Config
from engine.launcher import LaunchError, Launcher, Observation
from engine.model import Run, RunState
from engine.probes.attribution import box_view, run_process_trees, run_rss_bytes
from engine.probes.gpu import GpuSample
from engine.probes.host import HostSample
from engine.protocol import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_NO_SUCH_RUN, RequestError
from engine.store.history import History
from engine.store import sql
from engine.store.runs import RunStore
from engine.submission import spec_from_request
from engine.units import format_duration
from engine.usage import RunUsage, UsageSampler

log = logging.getLogger("runyard.engine")

DRAINING_KEY = "draining"
STOP_RETRY_S = 0.1


class HostProbe(Protocol):
    def sample(self) -> HostSample: ...


class GpuProbe(Protocol):
    def sample(self) -> tuple[GpuSample, ...]: ...


@dataclass
class Sample:
    host: HostSample
    gpus: tuple[GpuSample, ...]
    box: policy.BoxView
    at: float
    trees: dict[int, set[int]]
    """``run_id -> pids`` of the runs running when it was taken."""
    rss_bytes: dict[int, int]


class Engine:
    def __init__(
        self,
        store: RunStore,
        launcher: Launcher,
        host_probe: HostProbe,
        gpu_probe: GpuProbe,
        *,
        gpu_source: str,
        clock: Callable[[], float] = time.time,
        mode: str = "daemon",
        home: Path | None = None,
        sample_ttl_s: float = 1.0,
        config: Config | None = None,
        history: History | None = None,
        rng: random.Random | None = None,
        boot_time: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.launcher = launcher
        self.host_probe = host_probe
        self.gpu_probe = gpu_probe
        self.gpu_source = gpu_source
        self.clock = clock
        self.mode = mode
        self.home = home
        self.sample_ttl_s = sample_ttl_s
        self.config = config or Config()
        self.started_at = clock()
        self._sample: Sample | None = None
        self.history = history
        self.rng = rng or random.Random()
        self.breaker = breaker.Breaker()
        self.boot_time = boot_time or _boot_time
        self.usage_sampler = UsageSampler()
        self.last_usage: dict[int, RunUsage] = {}
        self._trails: dict[int, _Trail] = {}
        self._probing: set[int] = set()
        self._last_probe: dict[tuple[int, int], float] = {}
        self._probe_history: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._peaks: dict[int, tuple[int, int]] = {}
        """``run_id -> (peak RSS, peak GPU memory)`` seen since this engine started; the
        history's summary supplies what earlier engines saw."""
        self.schedules_itself = bool(getattr(launcher, "schedules_itself", False))
        """A cluster backend (Slurm) that decides when and where runs start (:mod:`engine.handover`)."""
        self._term_delivered: set[int] = set()
        """Runs whose stop SIGTERM reached a process; a failed delivery (no pid known
        yet) is retried on the next tick instead of being forgotten."""

    # ----------------------------------------------------------------- ticking

    def tick(self) -> float | None:
        """One round of supervision and admission; returns when the next one is due
        for a deadline or a grace period (``None``: nothing timed is pending)."""
        now = self.clock()
        if self.schedules_itself:
            self.launcher.refresh()
        # One transaction for the tick's changes (flushed before a launch or a stop
        # signal, which must find them durable): a tick that reaps and starts several
        # runs waits for the disk twice, not several times per run.
        with self.store.batch():
            for run in self.store.in_state(RunState.RUNNING):
                self._supervise(run, now)
            self._fire_schedules(now)
            self._admit(now)
        return self._next_deadline()

    # --------------------------------------------------------------- schedules

    def schedule(self, args: dict[str, Any], cron: Any, *, uid: int | None, user: str | None) -> dict[str, Any]:
        """Keep a run template that fires on ``cron``; each firing queues a new run."""
        from engine import schedules

        if not isinstance(cron, str):
            raise RequestError("cron must be a crontab expression like '0 2 * * *'", EXIT_BAD_INPUT)
        try:
            schedules.parse_cron(cron)
        except schedules.ScheduleError as error:
            raise RequestError(str(error), EXIT_BAD_INPUT) from None
        self._checked_spec(args)  # a template that could never be queued is refused now, not at 2 a.m.
        template = dict(args, uid=uid, user=user)
        now = self.clock()
        with sql.write_transaction(self.store.conn):
            cursor = self.store.conn.execute(
                "INSERT INTO schedules (name, cron, template, created_at, enabled) VALUES (?, ?, ?, ?, 1)",
                (args.get("name") or " ".join(args.get("argv") or [])[:40], cron, json.dumps(template), now),
            )
        return self.schedule_json(cursor.lastrowid)

    def schedule_json(self, schedule_id: int) -> dict[str, Any]:
        from engine import schedules

        row = self.store.conn.execute("SELECT * FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        if row is None:
            raise RequestError(f"no schedule {schedule_id}; `runyard schedules` lists them", EXIT_NO_SUCH_RUN)
        template = json.loads(row["template"])
        after = row["last_fired_at"] or row["created_at"]
        return {
            "id": row["id"], "name": row["name"], "cron": row["cron"], "argv": template.get("argv"),
            "created_at": row["created_at"], "last_fired_at": row["last_fired_at"], "last_run_id": row["last_run_id"],
            "next_at": schedules.next_fire(row["cron"], max(after, self.clock())), "enabled": bool(row["enabled"]),
        }

    def list_schedules(self) -> list[dict[str, Any]]:
        ids = [row[0] for row in self.store.conn.execute("SELECT id FROM schedules WHERE enabled = 1 ORDER BY id")]
        return [self.schedule_json(schedule_id) for schedule_id in ids]

    def unschedule(self, schedule_id: Any) -> dict[str, Any]:
        if isinstance(schedule_id, bool) or not isinstance(schedule_id, int):
            raise RequestError(f"{schedule_id!r} is not a schedule id (a number, as `runyard schedules` shows)")
        found = self.schedule_json(schedule_id)
        with sql.write_transaction(self.store.conn):
            self.store.conn.execute("UPDATE schedules SET enabled = 0 WHERE id = ?", (schedule_id,))
        return dict(found, enabled=False)

    def _fire_schedules(self, now: float) -> None:
        from engine import schedules

        rows = self.store.conn.execute("SELECT * FROM schedules WHERE enabled = 1").fetchall()
        for row in rows:
            try:
                due = schedules.due_firings(row["cron"], row["last_fired_at"], row["created_at"], now)
            except schedules.ScheduleError:
                log.exception("schedule %s has a bad cron expression", row["id"])
                continue
            if not due:
                continue
            template = json.loads(row["template"])
            uid, user = template.pop("uid", None), template.pop("user", None)
            try:
                # Read now, not when the schedule was made: the firing runs the tree as it is now.
                spec, diff = self._with_provenance(
                    replace(self._checked_spec(template), schedule_id=row["id"]), {}, uid, user
                )
            except RequestError as error:
                log.warning("schedule %s cannot queue its run: %s", row["id"], error)
                spec, diff = None, None
            # The run and the schedule's progress in one transaction: a crash in between
            # can neither lose a firing nor fire it twice.
            with sql.write_transaction(self.store.conn):
                run_id = None
                if spec is not None:
                    run_id = sql.insert_run(self.store.conn, spec, now=now, runs_dir=self.store.runs_dir, uid=uid,
                                            user=user)
                self.store.conn.execute(
                    "UPDATE schedules SET last_fired_at = ?, last_run_id = COALESCE(?, last_run_id) WHERE id = ?",
                    (due[-1], run_id, row["id"]),
                )
            if run_id is not None:
                _save_diff(self.store.get(run_id), diff)
                log.info("schedule %s fired: run %s", row["id"], run_id)

    def _next_schedule_fire(self) -> float | None:
        from engine import schedules

        times = []
        for row in self.store.conn.execute("SELECT cron, last_fired_at, created_at FROM schedules WHERE enabled = 1"):
            try:
                times.append(schedules.next_fire(row["cron"], max(row["last_fired_at"] or row["created_at"],
                                                                  self.clock())))
            except schedules.ScheduleError:
                continue
        return min(times) if times else None

    def recover(self) -> None:
        """At start: settle runs that ended while no engine ran, re-adopt live ones."""
        if self.schedules_itself:
            self.launcher.refresh(force=True)
        for run in self.store.in_state(RunState.RUNNING):
            observation = self.launcher.observe(run)
            log.info("recovering run %s: %s %s", run.id, observation.state, observation.detail or "")
            if (observation.state == "lost" and run.shim_pid is None and not observation.child_pid
                    and not run.backend_job):
                # It never started: the engine stopped between marking it running and
                # launching it. Running it now is the only way it runs at all, and it
                # cannot run twice (no shim or child of it exists).
                self.store.transition(
                    run.id, RunState.RUNNING, RunState.QUEUED,
                    "waiting: requeued, the engine stopped while launching it",
                    now=self.clock(), started_at=None, gpus=(), pid=None, pid_started_at=None,
                    shim_pid=None, shim_started_at=None,
                )
                continue
            self._supervise(run, self.clock(), observation)

    def sample(self, *, fresh: bool = False) -> Sample:
        now = self.clock()
        if fresh or self._sample is None or now - self._sample.at >= self.sample_ttl_s:
            host = self.host_probe.sample()
            gpus = tuple(self.gpu_probe.sample())
            running = self.store.in_state(RunState.RUNNING)
            trees = run_process_trees({run.id: run.pid for run in running if run.pid})
            rss_by_run = run_rss_bytes(trees)
            box = with_headroom(box_view(host, gpus, trees, sum(rss_by_run.values())), self.config)
            self._sample = Sample(host, gpus, box, now, trees, rss_by_run)
        return self._sample

    # ------------------------------------------------------------------- usage

    def sample_usage(self) -> bool:
        """Take a fresh sample of the box and every running run, record it in the usage
        history and act on runs that outgrew their envelope.

        Returns:
            Whether a run was asked to stop (the caller should tick soon, to deliver the
            SIGTERM and time its grace).
        """
        sample = self.sample(fresh=True)
        now = sample.at
        running = [run for run in self.store.in_state(RunState.RUNNING) if run.id in sample.trees or not run.pid]
        usages = self.usage_sampler.sample(
            {run.id: (run.pid, _usage_folders(run)) for run in running},
            sample.gpus,
            {run.id: run.gpus for run in running},
            now,
            trees=sample.trees,
            rss_bytes=sample.rss_bytes,
        )
        self.last_usage = usages
        for run_id in set(self._peaks) - set(usages):
            del self._peaks[run_id]
        for run_id in set(self._trails) - set(usages):
            del self._trails[run_id]
        if self.history is not None:
            try:
                self.history.record_box(now, sample.host, sample.gpus)
                self.history.record_runs(now, usages)
            except Exception:  # a full disk must not stop enforcement
                log.exception("cannot record usage history")
        stopped = False
        for run in running:
            usage = usages.get(run.id)
            if usage is not None and run.pid:
                stopped |= self._enforce(run, usage, now)
            if usage is not None:
                try:
                    stopped |= self._watch_health(self.store.get(run.id) or run, usage, sample, now)
                except Exception:  # a check must never stop the engine's sampling
                    log.exception("health checks of run %s failed", run.id)
        return stopped

    def _enforce(self, run: Run, usage: RunUsage, now: float) -> bool:
        rss_peak, gpu_peak = self._peaks.get(run.id, (0, 0))
        rss_peak, gpu_peak = max(rss_peak, usage.rss_bytes), max(gpu_peak, usage.gpu_mem_bytes)
        self._peaks[run.id] = (rss_peak, gpu_peak)
        if run.stop_request is not None:
            return False
        verdict = enforce.check_overrun(
            run.envelope, run.on_overrun, usage.rss_bytes, usage.gpu_mem_bytes,
            *self._historic_peaks(run.id, rss_peak, gpu_peak),
        )
        if verdict is None:
            return False
        if verdict.action == "kill":
            log.warning("run %s: %s; stopping it", run.id, verdict.reason)
            self._request_stop(run, "overrun", verdict.reason, now)
            self._supervise(self.store.get(run.id) or run, now)
            return True
        if not _same_overrun(run.warning, verdict):
            log.warning("run %s: %s (on-overrun: warn)", run.id, verdict.reason)
            self.store.update(run.id, RunState.RUNNING, warning=verdict.reason)
        return False

    # ------------------------------------------------------------------ health

    def _watch_health(self, run: Run, usage: RunUsage, sample: Sample, now: float) -> bool:
        """Liveness (heartbeat, log growth) and the built-in findings of one running run;
        returns whether a stall stopped it."""
        trail = self._trails.setdefault(run.id, _Trail())
        trail.add(now, usage, run.gpus)
        beat = _read_heartbeat(run)
        if beat is not None and beat != (run.progress or {}).get("beat"):
            progress = {"step": beat.get("step"), "total": beat.get("total"), "metrics": beat.get("metrics"),
                        "at": beat.get("at"), "beat": beat}
            trail.steps.append((now, beat.get("step")))
            progress["eta"] = _eta(trail.steps, beat.get("total"), now)
            self.store.update(run.id, RunState.RUNNING, progress=progress)
        if now - trail.findings_at >= FINDINGS_INTERVAL_S:
            # Reading log tails and free space costs I/O: every few samples is enough.
            trail.findings_at = now
            for finding in self._findings(run, trail, beat, now):
                self._add_warning(self.store.get(run.id) or run, finding, now)
        policy_now = health.HealthPolicy.from_dict(run.health_policy) if run.health_policy else None
        if policy_now is None or policy_now.stall_timeout_s is None or run.stop_request is not None:
            return False
        last = health.last_activity(
            run.started_at, (beat or {}).get("at"), health.log_activity_at(run.log_path),
            trail.last_busy_at,
        )
        if not health.is_stalled(last, now, policy_now.stall_timeout_s):
            if run.health == health.STALLED:
                self._set_health(run, health.HEALTHY, "activity resumed", now)
            return False
        detail = health.stall_detail(last, now)
        if run.health != health.STALLED:
            self._set_health(run, health.STALLED, detail, now)
        if policy_now.on_stall == "warn":
            return False
        kind = "stall" if policy_now.on_stall == "kill" else "stall_restart"
        self._request_stop(self.store.get(run.id) or run, kind, f"stalled: {detail}", now)
        self._supervise(self.store.get(run.id) or run, now)
        return True

    def _findings(self, run: Run, trail: _Trail, beat: dict | None, now: float) -> list[str]:
        findings = list(health.metric_problems((beat or {}).get("metrics")))
        if run.envelope.mem_bytes:
            trend = health.memory_trend(list(trail.rss), run.envelope.mem_bytes)
            if trend:
                findings.append(trend)
        if run.gpus:
            idle = health.gpu_idle(list(trail.gpu_util), True, self.config.gpu_idle_after_s)
            if idle:
                findings.append(idle)
        space = health.disk_space(run.checkpoint_dir)
        if space is not None:
            full = health.disk_almost_full(*space)
            if full:
                findings.append(full)
        findings.extend(health.fatal_log_lines(health.read_tail(run.log_path, owner=run.uid)))
        return findings

    def _add_warning(self, run: Run, finding: str, now: float) -> None:
        """Keep one warning per kind of finding: a finding that rewords itself as it
        develops ("in about 6m", then "5m") replaces its older text, and alerts once."""
        parts = run.warning.split("; ") if run.warning else []
        kind = health.finding_kind(finding)
        same = [index for index, part in enumerate(parts) if health.finding_kind(part) == kind]
        if same and parts[same[0]] == finding:
            return
        if same:
            parts[same[0]] = finding
        else:
            parts.append(finding)
        if self.store.update(run.id, RunState.RUNNING, warning="; ".join(parts)) and not same:
            log.warning("run %s: %s", run.id, finding)
            self.emit({"kind": "health:warning", "run_id": run.id, "at": now, "reason": finding})

    def _set_health(self, run: Run, state: str, detail: str, now: float) -> None:
        if self.store.update(run.id, RunState.RUNNING, health=state, health_detail=detail):
            log.info("run %s is %s: %s", run.id, state, detail)
            self.emit({"kind": f"health:{state}", "run_id": run.id, "at": now, "reason": detail,
                       "health": state, "previous_health": run.health, "name": run.name})

    def due_probes(self, now: float) -> list[Run]:
        """Running runs whose ``--health-cmd`` is due and not already running."""
        due = []
        for run in self.store.in_state(RunState.RUNNING):
            if not run.health_policy or run.id in self._probing:
                continue
            policy_now = health.HealthPolicy.from_dict(run.health_policy)
            last = self._last_probe.get((run.id, run.attempt), run.started_at or now)
            if policy_now.cmd and now - last >= policy_now.interval_s:
                due.append(run)
        for run in due:
            self._probing.add(run.id)
        return due

    def probe_request(self, run: Run) -> dict[str, Any]:
        """What the daemon needs to run a run's probe off the engine's thread."""
        policy_now = health.HealthPolicy.from_dict(run.health_policy)
        return {"cmd": policy_now.cmd, "env": run_environment(run), "cwd": run.cwd, "timeout_s": policy_now.timeout_s}

    def record_probe_result(self, run: Run, result: Any, now: float) -> None:
        """A probe of ``run`` (as it was when the probe started) finished."""
        self._probing.discard(run.id)
        self._last_probe[(run.id, run.attempt)] = now
        current = self.store.get(run.id)
        if current is None or current.state is not RunState.RUNNING or current.attempt != run.attempt:
            return  # it ended meanwhile: the verdict would describe nothing
        policy_now = health.HealthPolicy.from_dict(current.health_policy)
        key = (run.id, run.attempt)
        history, verdict = health.record_probe(
            self._probe_history.get(key, []), result, at=now, run_started_at=current.started_at or now,
            policy=policy_now,
        )
        self._probe_history[key] = history
        with sql.write_transaction(self.store.conn):
            self.store.conn.execute(
                "INSERT INTO health_checks (run_id, attempt, at, check_name, ok, health, output) "
                "VALUES (?, ?, ?, 'command', ?, ?, ?)",
                (run.id, run.attempt, now, int(result.ok), verdict, result.output[-2000:]),
            )
        detail = health.probe_detail(history, verdict)
        if verdict != current.health or detail != current.health_detail:
            if verdict != current.health:
                self._set_health(current, verdict, detail, now)
            else:
                self.store.update(run.id, RunState.RUNNING, health_detail=detail)

    def health_checks(self, run_id: int, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.store.conn.execute(
            "SELECT attempt, at, check_name, ok, health, output FROM health_checks WHERE run_id = ? "
            "ORDER BY id DESC LIMIT ?", (run_id, limit),
        ).fetchall()
        return [dict(row, ok=bool(row["ok"])) for row in reversed(rows)]

    def _historic_peaks(self, run_id: int, rss_peak: int, gpu_peak: int) -> tuple[int, int]:
        if self.history is None:
            return rss_peak, gpu_peak
        summary = self.history.run_summary(run_id) or {}
        return (
            max(rss_peak, (summary.get("rss_bytes") or {}).get("max") or 0),
            max(gpu_peak, (summary.get("gpu_mem_bytes") or {}).get("max") or 0),
        )

    def compact_history(self) -> None:
        if self.history is not None:
            self.history.compact(self.clock())

    def usage_report(self, run_id: Any, *, max_points: int = 120) -> dict[str, Any]:
        """A run's usage against its envelope: its lifetime summary and a series for plots."""
        run = self.get(run_id)
        summary = self.history.run_summary(run.id) if self.history else None
        series = []
        if self.history is not None and summary is not None:
            series = self.history.run_series(
                run.id, since=summary["first_at"], until=summary["last_at"], max_points=max_points
            )
        return {"run": run.to_json(), "summary": summary, "series": [asdict(point) for point in series]}

    def box_history(self, since: float, *, max_points: int = 120) -> list[dict[str, Any]]:
        """The box (and its GPUs) since ``since``, for sparklines."""
        if self.history is None:
            return []
        return [asdict(point) for point in self.history.box_series(since, max_points=max_points)]

    # ------------------------------------------------------------- supervision

    def _supervise(self, run: Run, now: float, observation: Observation | None = None) -> None:
        observation = observation or self.launcher.observe(run)
        if observation.state == "pending":
            handover.requeued_by_backend(self, run, observation, now)
            return
        if observation.state == "exited":
            self._finish(run, observation, now)
            return
        if observation.state == "lost":
            self._term_delivered.discard(run.id)
            if run.started_at is not None and self.boot_time() > run.started_at:
                why = "lost: machine restarted"
            else:
                why = f"lost: {observation.detail}"
            self._end_attempt(run, RunState.FAILED, why, retry.LOST, now, ended_at=now, exit_code=None, signal=None)
            return
        learned: dict[str, object] = {}
        if run.pid is None and observation.child_pid:
            learned.update(pid=observation.child_pid, pid_started_at=observation.child_started_at)
        if not run.cores and observation.cores:
            learned.update(cores=observation.cores)
        if observation.node and run.node != observation.node:
            learned.update(node=observation.node)
        if run.shim_pid is None and observation.shim_pid:
            # Adopted after a crash between launch and recording the shim: remember it,
            # or every tick would search for it again.
            learned.update(shim_pid=observation.shim_pid, shim_started_at=observation.shim_started_at)
        if learned:
            self.store.update(run.id, RunState.RUNNING, **learned)
            run = self.store.get(run.id) or run
        warn_at = _warn_at(run)
        if warn_at is not None and run.stop_request is None and run.warn_sent_at is None and now >= warn_at:
            # Sent once: a run that ignores it meets its limit as any other run would.
            sig = signal.Signals[run.retry.warn_signal]
            if self.launcher.signal(run, sig):
                log.info("run %s: sent %s, %s before its time limit", run.id, sig.name,
                         format_duration(run.retry.warn_before_s))
                self.store.update(run.id, RunState.RUNNING, warn_sent_at=now)
                run = self.store.get(run.id) or run
        if run.stop_request is None and run.deadline is not None and now >= run.deadline:
            limit = format_duration(run.envelope.time_limit_s)
            self._request_stop(run, "timeout", f"time limit {limit} reached", now)
            run = self.store.get(run.id) or run
        if run.stop_request is None:
            return
        if run.id not in self._term_delivered and run.kill_sent_at is None:
            if self.launcher.signal(run, signal.SIGTERM):
                self._term_delivered.add(run.id)
        if run.kill_sent_at is None and now >= (run.stop_requested_at or now) + run.grace_s:
            if self.launcher.signal(run, signal.SIGKILL):
                self.store.update(run.id, RunState.RUNNING, kill_sent_at=now)

    def _request_stop(self, run: Run, kind: str, reason: str, now: float) -> None:
        grace = format_duration(run.grace_s)
        self.store.update(
            run.id, RunState.RUNNING, stop_request=kind, stop_requested_at=now, stop_detail=reason,
            reason=f"{reason}: SIGTERM, then SIGKILL after {grace}",
        )
        # The run's end is read as this stop (a timeout, a cancel) only if the request
        # is on disk before the signal that causes the end.
        self.store.flush()

    def _finish(self, run: Run, observation: Observation, now: float) -> None:
        if shared_policy.finish_preempted(self, run, observation, now):
            return
        self._term_delivered.discard(run.id)
        state, reason, failure_class = _outcome(run, observation)
        if failure_class == retry.EXIT and _log_shows_cuda_oom(run):
            failure_class = retry.CUDA_OOM
            reason = f"{reason}: CUDA out of memory (from the log)"
        self._end_attempt(
            run, state, reason, failure_class, now,
            ended_at=observation.ended_at or now, exit_code=observation.exit_code, signal=observation.signal,
            pid=run.pid or observation.child_pid,
        )

    def _end_attempt(
        self, run: Run, state: RunState, reason: str, failure_class: str | None, now: float, **fields: Any
    ) -> None:
        """Record how the attempt ended; requeue the run if its retry policy says so."""
        record = {
            "ended_at": fields.get("ended_at"), "state": state.value, "reason": reason,
            "exit_code": fields.get("exit_code"), "signal": fields.get("signal"), "failure_class": failure_class,
        }
        report = _read_report(run)
        if report is not None:
            fields = {**fields, "metrics": report}  # a later attempt that reports nothing keeps the last report
        again = None
        if state is not RunState.SUCCEEDED and failure_class is not None:
            again = self._retry_decision(run, failure_class, fields.get("exit_code"), reason)
        if again is None or again.counts_as_retry:
            # A requeue at the time limit (or a health restart) is a planned end of a slot,
            # not a failure: it must not count toward pausing the run's group.
            self._feed_breaker(run, state, failure_class, reason, now)
        if again is None:
            self.store.end_attempt(run, state, reason, now=now, record=record, failure_class=failure_class, **fields)
            return
        until = now + again.delay_s
        next_attempt = run.attempt + 1
        until_text = time.strftime("%H:%M:%S", time.localtime(until))
        log.info("run %s: attempt %s ended (%s); requeued for attempt %s", run.id, run.attempt, reason, next_attempt)
        self.store.end_attempt(
            run, RunState.QUEUED, retry.requeue_reason(again, next_attempt, run.retry, until_text),
            now=now, record=record, failure_class=failure_class,
            **_fresh_attempt_fields(run, next_attempt),
            retries_used=run.retries_used + (1 if again.counts_as_retry else 0),
            not_before=until if again.delay_s > 0 else None, envelope=again.envelope,
        )

    def _feed_breaker(self, run: Run, state: RunState, failure_class: str | None, reason: str, now: float) -> None:
        key = breaker.key_of(run.group, run.user, run.uid)
        if state is RunState.SUCCEEDED:
            self.breaker.succeeded(key)
            return
        if failure_class in (None, retry.CANCELLED):
            return
        line = breaker.last_meaningful_line(_log_tail(run)) if failure_class == retry.EXIT else None
        detail = f"{reason}: {line}" if line else reason
        pause = self.breaker.failed(
            key, at=now, failure_class=failure_class, duration_s=now - (run.started_at or now), detail=detail
        )
        if pause is not None:
            log.warning("%s: %s", pause.key, pause.reason)
            self.store.pause(pause.key, pause.reason, now)
            self.emit({"kind": "paused", "run_id": run.id, "at": now, "reason": pause.reason, "key": pause.key})

    def emit(self, event: dict[str, Any]) -> None:
        """Hand an event that is not a state change (a pause, a health change) to the
        store's listeners, where alerts are attached (after the tick's changes commit)."""
        self.store.notify(event)

    def _retry_decision(self, run: Run, failure_class: str, exit_code: int | None, reason: str) -> retry.Retry | None:
        box = self.sample().box
        cards = [gpu.mem_total for gpu in box.gpus if gpu.available]
        return retry.decide(
            policy=run.retry, failure_class=failure_class, exit_code=exit_code, retries_used=run.retries_used,
            has_checkpoint=checkpoints.latest_path(run.checkpoint_dir) is not None, envelope=run.envelope,
            mem_limit_bytes=box.mem_total, gpu_mem_limit_bytes=min(cards) if cards else None,
            why=reason, rng=self.rng,
        )

    def _next_deadline(self) -> float | None:
        times = []
        for run in self.store.in_state(RunState.RUNNING):
            if run.stop_request is not None and run.id not in self._term_delivered and run.kill_sent_at is None:
                # The stop's SIGTERM found no process yet (the shim had not recorded its
                # child): try again soon rather than at the next periodic tick.
                times.append(self.clock() + STOP_RETRY_S)
            if run.stop_request is None and run.deadline is not None:
                times.append(run.deadline)
            warn_at = _warn_at(run)
            if warn_at is not None and run.stop_request is None and run.warn_sent_at is None:
                times.append(warn_at)
            elif run.stop_request is not None and run.kill_sent_at is None:
                times.append((run.stop_requested_at or 0) + run.grace_s)
        times.extend(
            run.not_before for run in self.store.in_state(RunState.QUEUED)
            if run.not_before is not None and run.not_before > self.clock()
        )
        next_fire = self._next_schedule_fire()
        if next_fire is not None:
            times.append(next_fire)
        return min(times) if times else None

    # --------------------------------------------------------------- admission

    def _admit(self, now: float) -> None:
        if self.schedules_itself:
            handover.admit(self, now)
            return
        queued = self.store.in_state(RunState.QUEUED)
        if not queued:
            return
        running = self.store.in_state(RunState.RUNNING)
        box = self.sample().box
        # A run in its retry backoff (or scheduled with --at) waits like a held one; its
        # reason, which says until when, was written when it was queued and is left alone.
        backing_off = {run.id for run in queued if run.not_before is not None and run.not_before > now}
        own_reasons, cancelled = self._gate(queued, now)
        queued = [run for run in queued if run.id not in cancelled]
        backing_off |= set(own_reasons)
        extra = shared_policy.inputs(self, queued, running, now)  # fair share, limits, set-aside GPUs
        decision = policy.decide(
            [
                policy.QueuedRun(run.id, run.envelope, run.priority, run.submitted_at, run.held or run.id in backing_off,
                                 **extra.queued(run))
                for run in queued
            ],
            [policy.Holding(run.id, run.envelope, run.gpus, run.deadline, **extra.holding(run)) for run in running],
            box,
            now,
            draining=self.draining,
            **extra.options(),
        )
        by_id = {run.id: run for run in queued}
        shared_policy.preempt(self, decision.preempt, now)
        for run_id, reason in decision.refused.items():
            self.store.transition(
                run_id, RunState.QUEUED, RunState.FAILED, f"refused: {reason}", now=now, ended_at=now
            )
        marked = [run for run in (self._mark_running(by_id[start.run_id], start.gpus, now) for start in decision.starts)
                  if run is not None]
        if marked:
            self.store.flush()
            taken = {core for other in running for core in other.cores}
            for run in marked:
                taken |= set(self._launch(run, taken, now))
        self.store.set_reasons(
            {run_id: reason for run_id, reason in decision.waiting.items() if run_id not in backing_off}
            | own_reasons
        )
        if decision.starts:
            self._sample = None  # what the new runs hold must show in the next sample

    def _gate(self, queued: list[Run], now: float) -> tuple[dict[int, str], set[int]]:
        """Queued runs kept back by something other than resources: a dependency not yet
        met, or a breaker pause of their group or user. Runs whose ``ok`` dependency ended
        badly are cancelled here.

        Returns:
            ``run_id -> reason`` of the runs kept waiting, and the ids of those cancelled.
        """
        waiting: dict[int, str] = {}
        cancelled: set[int] = set()
        pauses = self.store.pauses()
        for run in queued:
            for dep_id, kind in run.depends_on:
                dep = self.store.get(dep_id)
                if dep is not None and not dep.state.terminal:
                    waiting[run.id] = f"waiting: after run {dep_id} ({dep.state.value})"
                    break
                if dep is None or (kind == "ok" and dep.state is not RunState.SUCCEEDED):
                    why = "does not exist" if dep is None else f"{dep.state.value} ({dep.reason})"
                    if self.store.transition(
                        run.id, RunState.QUEUED, RunState.CANCELLED, f"dependency run {dep_id} {why}; not started",
                        now=now, ended_at=now,
                    ):
                        cancelled.add(run.id)
                    break
            else:
                key = breaker.key_of(run.group, run.user, run.uid)
                if key in pauses:
                    waiting[run.id] = f"{pauses[key]}; `runyard release {run.id}` resumes"
        return waiting, cancelled

    def _mark_running(self, run: Run, gpus: tuple[int, ...], now: float) -> Run | None:
        """The first half of a start. Mark it running *before* the process exists (the
        caller flushes before launching): a crash in between leaves a running row with no
        shim, which recovery requeues. The other order could leave a live process behind
        a queued row and run it twice."""
        resume_from = checkpoints.latest_path(run.checkpoint_dir)
        if not self.store.transition(
            run.id, RunState.QUEUED, RunState.RUNNING, "running", now=now, started_at=now, gpus=gpus,
            resume_from=resume_from,
        ):
            return None
        return self.store.get(run.id)

    def _launch(self, run: Run, taken: set[int], now: float) -> tuple[int, ...]:
        """Start a run marked running; returns the cores it was pinned to."""
        cores = enforce.assign_cores(run.envelope.cpus, sorted(os.sched_getaffinity(0)), taken)
        # Shared: the shim makes it, as the run's user (root must not make folders where users say).
        if run.checkpoint_dir and not getattr(self.launcher, "shared", False):
            with contextlib.suppress(OSError):  # a bad folder is the run's to report, in its log
                Path(run.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        try:
            launched = self.launcher.launch(run, run_environment(run), cores=cores)
        except LaunchError as error:
            self.store.transition(
                run.id, RunState.RUNNING, RunState.FAILED, f"cannot start: {error}", now=now, ended_at=now
            )
            return ()
        policy_now = health.HealthPolicy.from_dict(run.health_policy) if run.health_policy else None
        self.store.update(
            run.id, RunState.RUNNING, shim_pid=launched.shim_pid, shim_started_at=launched.shim_started_at,
            cores=cores or (),
            health=(health.STARTING if policy_now.cmd else health.HEALTHY) if policy_now else None,
            health_detail="waiting for the first health check" if policy_now and policy_now.cmd else None,
        )
        return tuple(cores or ())

    # ---------------------------------------------------------------- requests

    @property
    def draining(self) -> bool:
        return self.store.get_meta(DRAINING_KEY) == "1"

    def submit(self, args: dict[str, Any], *, uid: int | None, user: str | None) -> Run:
        spec, diff = self._with_provenance(self._checked_spec(args), args, uid, user)
        run = self.store.submit(spec, now=self.clock(), uid=uid, user=user)
        _save_diff(run, diff)
        return run

    def submit_many(
        self, requests: Any, *, uid: int | None, user: str | None, group: Any = None, git_diff: Any = None
    ) -> list[Run]:
        """Queue a batch (a sweep) in one transaction; one bad request queues none of them.

        ``group`` (``{"name", "kind", "definition"}``) is created with the runs; ``git_diff``
        is the uncommitted diff the batch's runs share (sent once, not once per run).
        """
        from engine.groups import GroupExists

        if not isinstance(requests, list) or not requests:
            raise RequestError("runs must be a non-empty list of submit requests", EXIT_BAD_INPUT)
        if group is not None and not (isinstance(group, dict) and isinstance(group.get("kind"), str)
                                      and isinstance(group.get("name"), (str, type(None)))):
            raise RequestError("group must be {name, kind, definition}; nothing was queued", EXIT_BAD_INPUT)
        specs, diffs, captured = [], [], {}
        for index, args in enumerate(requests):
            if not isinstance(args, dict):
                raise RequestError(f"run {index + 1} of the batch is not an object; nothing was queued", EXIT_BAD_INPUT)
            try:
                spec, diff = self._with_provenance(
                    self._checked_spec(args), {"git_diff": git_diff, **args}, uid, user, captured
                )
            except RequestError as error:
                raise RequestError(f"run {index + 1} of the batch: {error}", error.code) from None
            specs.append(spec)
            diffs.append(diff)
        try:
            runs = self.store.submit_many(specs, now=self.clock(), uid=uid, user=user, group=group)
        except GroupExists as error:
            raise RequestError(f"{error}; nothing was queued", EXIT_BAD_INPUT) from None
        for run, diff in zip(runs, diffs):
            _save_diff(run, diff)
        return runs

    def _with_provenance(
        self, spec, args: dict[str, Any], uid: int | None, user: str | None, captured: dict | None = None
    ):
        """The run's provenance record; see :mod:`engine.provenance` for who reads what."""
        from runyard import __version__

        versions = getattr(self.gpu_probe, "versions", None)
        try:
            gpu = versions() if callable(versions) else None
        except Exception:  # a driver hiccup must not refuse a submit
            log.exception("cannot read the GPU driver's version")
            gpu = None
        # git obeys the repository's own config (fsmonitor, filters): the engine runs it
        # only in a tree of the user it runs as, never as root in someone else's.
        read_git = uid is None or uid == os.geteuid()
        return provenance.prepare(spec, args, user=user, gpu=gpu, runyard_version=__version__, captured=captured,
                                  read_git=read_git)

    def _never_fits(self, spec) -> str | None:
        if self.schedules_itself:
            refusal = self.launcher.refusal(spec.envelope, spec.retry, spec.cwd)
            return f"Slurm would never run it: {refusal} (ask for less, or see `sinfo` for what nodes have)" if refusal else None
        return policy.never_fits(spec.envelope, self.sample().box)

    def _checked_spec(self, args: dict[str, Any]):
        spec = spec_from_request(args, self.config.default_envelope)
        problem = self._never_fits(spec)
        if problem:
            raise RequestError(f"{problem}; nothing was queued", EXIT_BAD_INPUT)
        for dep_id, _ in spec.depends_on:
            if self.store.get(dep_id) is None:
                raise RequestError(f"--after {dep_id}: no such run; nothing was queued", EXIT_NO_SUCH_RUN)
        return spec

    def get(self, run_id: Any) -> Run:
        try:
            number = int(run_id)
        except (TypeError, ValueError):
            raise RequestError(f"{run_id!r} is not a run id (a number, as `runyard ls` shows)") from None
        run = self.store.get(number)
        if run is None:
            raise RequestError(f"no run {number}; `runyard ls --all` lists them", EXIT_NO_SUCH_RUN)
        return run

    def cancel(self, run_id: Any) -> Run:
        run = handover.settle(self, self.get(run_id))
        now = self.clock()
        if run.state is RunState.QUEUED:
            if not self.store.transition(
                run.id, RunState.QUEUED, RunState.CANCELLED, "cancelled before it started", now=now, ended_at=now
            ):
                return self.cancel(run_id)  # it started meanwhile: cancel it as a running run
            self.store.flush()
            handover.withdraw(self, run)
        elif run.state is RunState.RUNNING:
            if run.stop_request != "cancel":
                self._request_stop(run, "cancel", "cancelling", now)
                self._supervise(self.get(run.id), now)
        else:
            raise RequestError(f"run {run.id} has already ended ({run.state.value}); nothing to cancel", EXIT_ERROR)
        return self.get(run.id)

    def set_held(self, run_id: Any, held: bool) -> Run:
        run = handover.settle(self, self.get(run_id))
        if run.state is not RunState.QUEUED:
            raise RequestError(
                f"run {run.id} is {run.state.value}; only queued runs can be held or released", EXIT_ERROR
            )
        if not held and self.store.unpause(breaker.key_of(run.group, run.user, run.uid)):
            log.info("run %s released: its group or user is admitted again", run.id)
        reason = f"held: release it with `runyard release {run.id}`" if held else "waiting: released"
        # Held means out of Slurm's queue too: its job is withdrawn, and released it is handed over anew.
        withdrawn = {"backend_job": None} if held and run.backend_job else {}
        if not self.store.update(run.id, RunState.QUEUED, held=held, reason=reason, **withdrawn):
            return self.set_held(run_id, held)
        if withdrawn:
            self.store.flush()
            handover.withdraw(self, run)
        return self.get(run.id)

    def retry(self, run_id: Any) -> Run:
        """Requeue a run that ended, by hand, as a new attempt (its automatic retries are
        not used up by it)."""
        run = self.get(run_id)
        if not run.state.terminal:
            raise RequestError(
                f"run {run.id} is {run.state.value}; only a run that ended can be retried", EXIT_ERROR
            )
        next_attempt = run.attempt + 1
        moved = self.store.transition(
            run.id, run.state, RunState.QUEUED, f"waiting: attempt {next_attempt}, retried by hand",
            now=self.clock(), **_fresh_attempt_fields(run, next_attempt), not_before=None,
        )
        if not moved:
            raise RequestError(f"run {run.id} changed meanwhile; look again with `runyard show {run.id}`", EXIT_ERROR)
        return self.get(run.id)

    def describe(self, run_id: Any) -> dict[str, Any]:
        """``show``: the run with its environment, history, attempts and checkpoints."""
        run = self.get(run_id)
        data = run.to_json(with_env=True)
        data["transitions"] = self.store.transitions(run.id)
        data["attempt_history"] = self.store.attempts(run.id)
        data["checkpoints"] = checkpoints.discover(run.checkpoint_dir)
        data["health_checks"] = self.health_checks(run.id)
        data["health_policy"] = run.health_policy
        data["provenance"], data["drift"] = groups.run_provenance(self.store.conn, run.id, run.group)
        return data

    def results(self, group: Any) -> dict[str, Any]:
        """The group table and export rows (every run when ``group`` is None)."""
        if group is not None and not isinstance(group, str):
            raise RequestError("group must be a group name", EXIT_BAD_INPUT)
        try:
            return groups.table(self.store.conn, group)
        except groups.NoSuchGroup as error:
            raise RequestError(str(error), EXIT_NO_SUCH_RUN) from None

    def set_priority(self, run_id: Any, priority: Any) -> Run:
        run = self.get(run_id)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise RequestError(f"priority must be a whole number, got {priority!r}", EXIT_BAD_INPUT)
        if run.state is not RunState.QUEUED:
            raise RequestError(
                f"run {run.id} is {run.state.value}; only a queued run's priority can change", EXIT_ERROR
            )
        if not self.store.update(run.id, RunState.QUEUED, priority=priority):
            return self.set_priority(run_id, priority)
        return self.get(run.id)

    def preview(self, args: dict[str, Any]) -> dict[str, Any]:
        """Whether a run as submitted with ``args`` would start now, or why it would wait.

        The same parsing and admission as :meth:`submit`, on the current queue, without
        queueing anything.
        """
        spec = spec_from_request(args, self.config.default_envelope)
        box = self.sample().box
        problem = self._never_fits(spec)
        if problem:
            return {"verdict": "refused", "reason": problem, "envelope": spec.envelope.to_dict(), "describe": spec.envelope.describe()}
        if self.schedules_itself:
            verdict, reason = handover.preview(self, spec)
            return {"verdict": verdict, "reason": reason,
                    "envelope": spec.envelope.to_dict(), "describe": spec.envelope.describe()}
        candidate_id = -1
        queued = [
            policy.QueuedRun(run.id, run.envelope, run.priority, run.submitted_at, run.held)
            for run in self.store.in_state(RunState.QUEUED)
        ]
        queued.append(policy.QueuedRun(candidate_id, spec.envelope, spec.priority, self.clock(), spec.held))
        running = self.store.in_state(RunState.RUNNING)
        decision = policy.decide(
            queued,
            [policy.Holding(run.id, run.envelope, run.gpus, run.deadline) for run in running],
            box,
            self.clock(),
            draining=self.draining,
        )
        if any(start.run_id == candidate_id for start in decision.starts):
            return {"verdict": "starts", "reason": "would start now", "envelope": spec.envelope.to_dict(), "describe": spec.envelope.describe()}
        reason = decision.waiting.get(candidate_id, "waiting")
        return {"verdict": "waits", "reason": reason, "envelope": spec.envelope.to_dict(), "describe": spec.envelope.describe()}

    def set_draining(self, draining: bool) -> dict[str, Any]:
        self.store.set_meta(DRAINING_KEY, "1" if draining else None)
        return {"draining": draining}

    def list_runs(self, *, include_finished: bool) -> list[Run]:
        return sql.list_runs(self.store.conn, include_finished=include_finished, recent_finished=20)

    def status(self) -> dict[str, Any]:
        from runyard import __version__

        sample = self.sample()
        running = self.store.in_state(RunState.RUNNING)
        holders: dict[int, list[int]] = {}
        reserved_gpu_mem: dict[int, int] = {}
        for run in running:
            for index in run.gpus:
                holders.setdefault(index, []).append(run.id)
                reserved_gpu_mem[index] = reserved_gpu_mem.get(index, 0) + (run.envelope.gpu_mem_bytes or 0)
        for gpu in sample.gpus:
            # A card held whole is reserved whole, however little of it the run uses.
            if any(self._holds_whole(run, gpu.index) for run in running):
                reserved_gpu_mem[gpu.index] = gpu.mem_total
        owner_of = {pid: run_id for run_id, pids in sample.trees.items() for pid in pids}
        counted_held: dict[str, int] = {}
        for run in running:
            for name, amount in run.envelope.resources:
                counted_held[name] = counted_held.get(name, 0) + amount
        counts = dict(
            self.store.conn.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall()
        )
        extra: dict[str, Any] = {"backend": "slurm" if self.schedules_itself else "local"}
        if self.schedules_itself:
            extra["cluster"] = self.launcher.cluster()
        return {
            **extra,
            "engine": {
                "pid": os.getpid(),
                "version": __version__,
                "home": str(self.home) if self.home else None,
                "started_at": self.started_at,
                "draining": self.draining,
                "mode": self.mode,
                "gpu_source": self.gpu_source,
            },
            "host": {
                "hostname": socket.gethostname(),
                "cpus": sample.host.cpus,
                "cpu_percent": sample.host.cpu_percent,
                "mem_total": sample.host.mem_total,
                "mem_available": sample.host.mem_available,
                "disk_total": sample.host.disk_total,
                "disk_free": sample.host.disk_free,
                "load1": sample.host.load1,
            },
            "gpus": [
                {
                    "index": gpu.index,
                    "name": gpu.name,
                    "uuid": gpu.uuid,
                    "mem_total": gpu.mem_total,
                    "mem_used": gpu.mem_used,
                    "util_percent": gpu.util_percent,
                    "temperature_c": gpu.temperature_c,
                    "power_w": gpu.power_w,
                    "available": gpu.available,
                    "unavailable_reason": gpu.unavailable_reason,
                    "holders": holders.get(gpu.index, []),
                    "mem_reserved": reserved_gpu_mem.get(gpu.index, 0),
                    "processes": [_gpu_process_json(process, owner_of) for process in gpu.processes],
                }
                for gpu in sample.gpus
            ],
            "resources": [
                {"name": name, "capacity": capacity, "held": counted_held.get(name, 0)}
                for name, capacity in self.config.resources
            ],
            "reserved": {
                "cpus": sum(run.envelope.cpus for run in running),
                "mem_bytes": sum(run.envelope.mem_bytes for run in running),
                "gpus": len({index for run in running for index in run.gpus}),
            },
            "counts": {state.value: counts.get(state.value, 0) for state in RunState},
            "sampled_at": sample.at,
        }


    @staticmethod
    def _holds_whole(run: Run, index: int) -> bool:
        return index in run.gpus and run.envelope.gpu_mem_bytes is None


def with_headroom(box: policy.BoxView, config: Config) -> policy.BoxView:
    """What admission may hand out: the box less the headroom kept free for the OS and
    other users, plus the configured counted resources."""
    gpus = tuple(
        replace(gpu, mem_total=max(0, gpu.mem_total - config.gpu_mem_headroom_bytes)) for gpu in box.gpus
    )
    return replace(
        box, mem_total=max(0, box.mem_total - config.mem_headroom_bytes), gpus=gpus, counted=config.resources
    )


def _outcome(run: Run, observation: Observation) -> tuple[RunState, str, str | None]:
    """The final state, the reason and the failure class (``engine.retry``) of an attempt."""
    how = f"killed by {observation.signal}" if observation.signal else f"exit code {observation.exit_code}"
    if run.stop_request == "cancel":
        return RunState.CANCELLED, f"cancelled by user; {how}", retry.CANCELLED
    if run.stop_request == "timeout":
        limit = format_duration(run.envelope.time_limit_s)
        return RunState.TIMED_OUT, f"time limit {limit} reached; {how}", retry.TIMEOUT
    if run.stop_request in ("stall", "stall_restart"):
        failure = retry.RESTART if run.stop_request == "stall_restart" else retry.STALLED
        return RunState.FAILED, f"{run.stop_detail}; {how}", failure
    if run.stop_request == "overrun":
        detail = run.stop_detail or "exceeded its envelope"
        failure = retry.GPU_MEMORY_OVERRUN if detail.startswith("exceeded GPU memory") else retry.MEMORY_OVERRUN
        return RunState.FAILED, f"{detail}; {how}", failure
    backend = _backend_outcome(run, observation, how)
    if backend is not None:
        return backend
    oom = enforce.exit_reason(
        exit_code=observation.exit_code, signal=observation.signal, envelope=run.envelope,
        oom_killed=observation.oom_killed, box_oom_kill_rose=observation.box_oom_kill_rose,
        runyard_sent_kill=run.kill_sent_at is not None,
    )
    if oom:
        return RunState.FAILED, oom, retry.OOM_KILLED
    if observation.exit_code == 0:
        return RunState.SUCCEEDED, "exit code 0", None
    if run.warn_sent_at is not None:
        # It was warned of its time limit and stopped short of success: it checkpointed and
        # left, as the warning asked. That is the time limit's doing, and may be requeued.
        limit = format_duration(run.envelope.time_limit_s)
        return (
            RunState.TIMED_OUT,
            f"stopped after {run.retry.warn_signal}, ahead of its time limit {limit}; {how}",
            retry.TIMEOUT,
        )
    if observation.exit_code == 127:
        return RunState.FAILED, "exit code 127: command not found", retry.EXIT
    if observation.exit_code == 126:
        return RunState.FAILED, "exit code 126: command not executable", retry.EXIT
    return RunState.FAILED, how, retry.EXIT


def _backend_outcome(run: Run, observation: Observation, how: str) -> tuple[RunState, str, str | None] | None:
    """How a cluster backend says the run ended, when that says more than its exit code."""
    where = f" on {observation.node}" if observation.node else ""
    if observation.ended_by == "timeout":
        limit = format_duration(run.envelope.time_limit_s) if run.envelope.time_limit_s else "its"
        return RunState.TIMED_OUT, f"time limit {limit} reached (Slurm stopped it); {how}", retry.TIMEOUT
    if observation.ended_by == "oom":
        return RunState.FAILED, f"killed by Slurm: out of memory (--mem {run.envelope.describe()}); {how}", retry.OOM_KILLED
    if observation.ended_by == "cancelled":
        return RunState.CANCELLED, f"cancelled in Slurm (scancel outside runyard); {how}", retry.CANCELLED
    if observation.ended_by == "node_fail":
        return RunState.FAILED, f"lost: Slurm node failed{where}", retry.LOST
    if observation.ended_by == "preempted":
        return RunState.FAILED, f"preempted by Slurm{where}; {how}", retry.LOST
    return None


FINDINGS_INTERVAL_S = 15.0
TRAIL_S = 15 * 60.0
"""How much recent usage each running run keeps in memory for trend checks."""


@dataclass
class _Trail:
    """A running run's recent readings, for the checks that look at a trend."""

    rss: deque = field(default_factory=deque)
    gpu_util: deque = field(default_factory=deque)
    steps: deque = field(default_factory=lambda: deque(maxlen=64))
    last_busy_at: float | None = None
    """When its processes last used CPU: a run that computes without printing is alive."""
    findings_at: float = float("-inf")

    def add(self, now: float, usage: RunUsage, gpus: tuple[int, ...]) -> None:
        self.rss.append((now, usage.rss_bytes))
        if gpus:
            self.gpu_util.append((now, usage.gpu_util_percent))
        if usage.cpu_percent >= 5.0:
            self.last_busy_at = now
        for series in (self.rss, self.gpu_util):
            while series and now - series[0][0] > TRAIL_S:
                series.popleft()


HEARTBEAT_FILE = "heartbeat.json"
"""Written atomically by ``runyard.heartbeat()`` in the run's folder (``RUNYARD_RUN_DIR``)."""


def _read_heartbeat(run: Run) -> dict[str, Any] | None:
    if not run.run_dir:
        return None
    try:
        with userfiles.open_run_file(Path(run.run_dir) / HEARTBEAT_FILE, run.uid) as file:
            beat = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return beat if isinstance(beat, dict) else None


REPORT_FILE = "report.json"
"""Written atomically by ``runyard.report()`` in the attempt's folder: the run's final metrics."""


def _read_report(run: Run) -> dict[str, Any] | None:
    if not run.run_dir:
        return None
    try:
        with userfiles.open_run_file(Path(run.run_dir) / REPORT_FILE, run.uid) as file:
            report = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report else None


def _save_diff(run: Run | None, diff: bytes | None) -> None:
    if run is None or not diff:
        return
    try:
        provenance.save_diff(run.run_dir, diff)
    except OSError:  # the record keeps the diff's hash; losing the copy must not fail the submit
        log.exception("cannot save the uncommitted diff of run %s", run.id)


def _eta(steps: deque, total: Any, now: float) -> float | None:
    from engine.progress import eta

    if not isinstance(total, (int, float)) or isinstance(total, bool):
        return None
    remaining = eta(list(steps), total)
    return None if remaining is None else now + remaining


def _warn_at(run: Run) -> float | None:
    if run.deadline is None or run.retry.warn_signal is None or run.retry.warn_before_s is None:
        return None
    return run.deadline - run.retry.warn_before_s


def _fresh_attempt_fields(run: Run, attempt: int) -> dict[str, Any]:
    """A queued run's fields for its next attempt: nothing left of the last one's process,
    and a folder of its own, so each attempt keeps its log."""
    root = Path(run.run_dir or "").parent if run.attempt > 1 else Path(run.run_dir or "")
    run_dir = root / f"attempt-{attempt}"
    return dict(
        attempt=attempt, run_dir=str(run_dir), log_path=str(run_dir / "output.log"),
        started_at=None, ended_at=None, gpus=(), cores=(), pid=None, pid_started_at=None, shim_pid=None,
        shim_started_at=None, exit_code=None, signal=None, stop_request=None, stop_requested_at=None,
        stop_detail=None, kill_sent_at=None, warn_sent_at=None, warning=None, resume_from=None,
        health=None, health_detail=None, backend_job=None, node=None,
    )


def _log_tail(run: Run, tail_bytes: int = 64 << 10) -> bytes:
    if not run.log_path:
        return b""
    try:
        with userfiles.open_run_file(run.log_path, run.uid) as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - tail_bytes))
            return log_file.read()
    except OSError:
        return b""


def _log_shows_cuda_oom(run: Run) -> bool:
    return retry.log_shows_cuda_oom(_log_tail(run))


def _boot_time() -> float:
    import psutil

    return psutil.boot_time()


def _gpu_process_json(process: Any, owner_of: dict[int, int]) -> dict[str, Any]:
    """A GPU process and who it belongs to: a runyard run, or a user of the box."""
    run_id = owner_of.get(process.pid)
    user = process.user or (None if run_id is not None else _process_user(process.pid))
    return {"pid": process.pid, "used_mem": process.used_mem, "run_id": run_id, "user": user}


def _process_user(pid: int) -> str | None:
    import psutil

    try:
        return psutil.Process(pid).username()
    except (psutil.Error, KeyError, OSError):
        return None


def _usage_folders(run: Run) -> list[Path]:
    return [Path(run.run_dir)] if run.run_dir else []


def _same_overrun(previous: str | None, verdict: enforce.Verdict) -> bool:
    """Whether a stored warning already names every resource of this one (the peak in
    it may have grown; a warning is written once per resource, not per sample)."""
    if previous is None:
        return False
    names = {"mem": "exceeded memory envelope", "gpu_mem": "exceeded GPU memory envelope"}
    return all(names[resource] in previous for resource in verdict.resources)


def run_environment(run: Run, *, gpus_from_backend: bool = False) -> dict[str, str]:
    """The run's environment: the submitter's, plus what tells it its envelope.

    ``gpus_from_backend``: a cluster backend (Slurm) picks the GPUs on the node and sets
    ``CUDA_VISIBLE_DEVICES`` itself; the submitter's value must not hide them."""
    env = dict(run.env)
    envelope = run.envelope
    env.update(
        RUNYARD_RUN_ID=str(run.id),
        RUNYARD_RUN_DIR=str(run.run_dir),
        RUNYARD_CPUS=f"{envelope.cpus:g}",
        RUNYARD_MEM_BYTES=str(envelope.mem_bytes),
        # NVML numbers GPUs by PCI bus; CUDA by default numbers the fastest first. The
        # indices we hand out are NVML's, so CUDA must count the same way.
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        CUDA_VISIBLE_DEVICES=",".join(str(index) for index in run.gpus),
    )
    if gpus_from_backend:
        del env["CUDA_VISIBLE_DEVICES"]
    if envelope.gpu_mem_bytes is not None:
        env["RUNYARD_GPU_MEM_BYTES"] = str(envelope.gpu_mem_bytes)
    else:
        env.pop("RUNYARD_GPU_MEM_BYTES", None)
    if run.deadline is not None:
        env["RUNYARD_DEADLINE"] = f"{run.deadline:.0f}"
    else:
        env.pop("RUNYARD_DEADLINE", None)
    env["RUNYARD_ATTEMPT"] = str(run.attempt)
    if run.checkpoint_dir:
        env["RUNYARD_CHECKPOINT_DIR"] = run.checkpoint_dir
    # Only the engine may say what to resume from: a value inherited from the submitter's
    # shell would point at some other run's checkpoint.
    env.pop("RUNYARD_RESUME_FROM", None)
    if run.resume_from:
        env["RUNYARD_RESUME_FROM"] = run.resume_from
    return env
