"""The composition root: builds the engine's parts and serves them on a Unix socket.

``runyard --daemon`` runs :func:`run` in the foreground (systemd ``Type=simple``); the
TUI runs the very same server in a background thread (:func:`start_embedded`) when no
daemon is up. Either way one process per ``RUNYARD_HOME`` holds ``daemon.lock``.

When the engine runs, on an asyncio loop in one thread:
- APScheduler's interval job ticks every ``TICK_INTERVAL_S`` (foreign usage changes,
  runs queued by an offline ``runyard submit``);
- another samples every run's usage every ``sample_interval`` of the config, records it
  in the usage history and stops runs over their envelope; a third thins the history;
- a request that changes the queue ticks at once;
- each running run's pidfd wakes the loop the moment its process ends;
- a timer fires at the next time limit or end of a grace period.
SIGTERM or SIGINT stops the engine and leaves every run running.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine import cgroups, protocol, shared_daemon
from engine.config import Config
from engine.engine import Engine
from engine.launcher import LocalLauncher
from engine.paths import Home
from engine.probes.host import HostProbe
from engine.store import sql
from engine.store.history import History, apply_history_migrations
from engine.store.runs import RunStore
from engine.store.schema import migrate
from engine.store.shared_tables import apply_shared_migrations

log = logging.getLogger("runyard.daemon")

TICK_INTERVAL_S = 2.0
COMPACT_INTERVAL_S = 600.0
HEALTH_POLL_S = 1.0
"""How often due health commands are looked for; each has its own --health-interval."""
LS_ALL_MAX_RUNS = 10_000
"""The most runs one ``ls`` answer holds, paged or not."""


class DaemonError(RuntimeError):
    """The daemon cannot start; the message is one line that says what to do."""


@dataclass
class DaemonConfig:
    home: Home
    simulate_gpus: str | None = None
    mode: str = "daemon"
    install_signals: bool = True
    settings: Config = field(default_factory=Config)
    """The config file's values (``engine.config``)."""
    shared: bool = False
    """One engine for every user of the box (``engine.shared_daemon``)."""
    slurm_env: dict[str, str] | None = None
    """The environment Slurm's tools run with; default: the engine's own."""


def gpu_probe_for(config: DaemonConfig) -> tuple[Any, str]:
    """The simulated probe when asked for, else NVML when present, else no GPUs."""
    spec = config.simulate_gpus or os.environ.get("RUNYARD_SIMULATE_GPUS")
    if spec:
        from engine.probes.simulated import SimulatedGpuProbe

        try:
            probe = SimulatedGpuProbe(
                spec, foreign_file=config.home.root / "simulated-gpus.json", exclude=config.settings.exclude_gpus
            )
        except ValueError as error:
            raise DaemonError(str(error)) from None
        return probe, f"simulated {spec}"
    from engine.probes.gpu import open_nvml

    probe, status = open_nvml(exclude=config.settings.exclude_gpus)
    if probe is not None:
        return probe, f"nvml: {status}"
    return _NoGpus(), f"none: {status}"


class _NoGpus:
    """A box without GPUs (no driver, no NVML): samples nothing, never fails."""

    def sample(self) -> tuple:
        return ()

    def close(self) -> None:
        pass


def _acquire_lock(home: Home) -> int:
    fd = os.open(home.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DaemonError(
            f"another runyard engine (pid {holder}) already serves {home.root}; "
            "use it (`runyard ls`), or stop it first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def open_store(home: Home, settings: Config | None = None) -> tuple[RunStore, History]:
    """Migrate and open the database, turning every way it can be broken into one line.

    The usage history gets a connection of its own: its writes need not wait for the
    run store's, and it may trade durability for speed (``synchronous=NORMAL``): a
    crash can lose its last samples, never a run.
    """
    settings = settings or Config()
    home.ensure()
    try:
        migrate(home.db_path)
        apply_history_migrations(home.db_path)
        apply_shared_migrations(home.db_path)
        conn = sql.connect(home.db_path)
        sql.schema_version(conn)
        history_conn = sql.connect(home.db_path)
        history_conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as error:
        raise DaemonError(str(sql.store_error(home.db_path, error))) from None
    except sql.StoreError as error:
        raise DaemonError(str(error)) from None
    except OSError as error:
        raise DaemonError(f"cannot open {home.db_path}: {error.strerror}; check the disk and permissions") from None
    history = History(
        history_conn, raw_keep_s=settings.history_raw_keep_s, retention_s=settings.history_retention_s
    )
    return RunStore(conn, home.runs_dir), history


def build_engine(config: DaemonConfig) -> Engine:
    store, history = open_store(config.home, config.settings)
    gpu_probe, gpu_source = gpu_probe_for(config)
    if config.settings.backend == "slurm":
        # This machine only submits: its own GPUs are nobody's runs' (the TUI shows the cluster).
        gpu_probe, gpu_source = _NoGpus(), "slurm"
        launcher, root = slurm_launcher(config), None  # the nodes hold the runs: no cgroup here is theirs
    else:
        root, how = cgroups.diagnose(allow_move=True)
        log.info("memory cgroups: %s", how)
        launcher = LocalLauncher(config.home.runs_dir, cgroup_root=root)
    if config.shared:
        from engine import access
        from engine.shared_launch import SharedLauncher

        launcher = SharedLauncher(config.home.runs_dir, cgroup_root=root,
                                  credentials=lambda run: access.credentials(store.conn, run.id, run.uid))
    if root is not None:
        # Before any launch: a run's group is empty for an instant before its shim joins.
        cgroups.sweep(root, launcher.cgroup_tag)
    return Engine(
        store,
        launcher,
        HostProbe(config.home.root),
        gpu_probe,
        gpu_source=gpu_source,
        mode=config.mode,
        home=config.home.root,
        config=config.settings,
        history=history,
    )


def slurm_launcher(config: DaemonConfig):
    from engine.slurm.commands import SlurmTools
    from engine.slurm.launcher import SlurmLauncher
    from engine.slurm.mapping import GpuTypes

    if config.shared:
        # sbatch as root would run every user's job as root: each user runs their own daemon.
        raise DaemonError("--shared and the Slurm backend do not go together: Slurm already serves "
                          "every user; run `runyard --daemon --backend slurm` as each user")
    env = config.slurm_env if config.slurm_env is not None else os.environ
    missing = [tool for tool in ("sbatch", "squeue", "scancel", "sinfo") if shutil.which(tool, path=env.get("PATH")) is None]
    if missing:
        raise DaemonError(f"the Slurm backend needs {', '.join(missing)} on PATH: install Slurm's client tools "
                          "(Debian: slurm-client) or start without --backend slurm")
    slurm = config.settings.slurm
    return SlurmLauncher(
        config.home.runs_dir, partition=slurm.partition, tools=SlurmTools(config.slurm_env),
        poll_interval_s=slurm.poll_interval_s,
        gpu_types=GpuTypes(dict(slurm.gpu_types), as_feature=slurm.gpu_types_as == "feature"),
    )


def attach_alerts(engine: Engine, config: DaemonConfig):
    """Send state and health changes to the configured hook; ``None`` when none is."""
    from engine.alerts import AlertsConfig, AlertsConfigError, Event, Notifier

    try:
        alerts = AlertsConfig.from_table(config.settings.alerts_table, config.settings.path)
    except AlertsConfigError as error:
        raise DaemonError(str(error)) from None
    if not alerts.enabled:
        return None
    notifier = Notifier(alerts)

    def forward(change: dict) -> None:
        if "to_state" in change:
            kind = change["to_state"]
            if change["from_state"] == "running" and kind == "queued":
                kind = "retrying"
            event = Event.state_change(change["run_id"], change["to_state"], change["from_state"], at=change["at"],
                                       reason=change["reason"])
            if kind != event.kind:
                event = replace(event, kind=kind)
        elif str(change.get("kind", "")).startswith("health:"):
            event = Event.health_change(change["run_id"], change["kind"].split(":", 1)[1],
                                        change.get("previous_health"), at=change["at"], reason=change["reason"],
                                        name=change.get("name"))
        else:
            event = Event(kind=change["kind"], run_id=change.get("run_id"), at=change["at"],
                          reason=change.get("reason", ""), data={"key": change.get("key")})
        notifier.notify(event)

    engine.store.listeners.append(forward)
    return notifier


@dataclass
class Server:
    """The running engine on its loop: the socket, the timers and the pidfd watches."""

    engine: Engine
    config: DaemonConfig
    loop: asyncio.AbstractEventLoop
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tick_pending: bool = False
    _deadline_timer: asyncio.TimerHandle | None = None
    _watched: dict[int, int] = field(default_factory=dict)  # run id -> pidfd
    _probes: set = field(default_factory=set)

    def wake(self) -> None:
        """Ask for a tick soon; many wakes before it runs make one tick."""
        if not self._tick_pending and not self.stopping.is_set():
            self._tick_pending = True
            self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_pending = False
        try:
            next_deadline = self.engine.tick()
        except Exception:
            log.exception("tick failed; retrying on the next one")
            next_deadline = None
        self._arm_deadline(next_deadline)
        self._sync_watches()

    # APScheduler runs a plain function in a worker thread; these are coroutines so that
    # they run on the loop, the only thread that may touch the engine.

    async def periodic_tick(self) -> None:
        self.wake()

    async def sample_usage(self) -> None:
        try:
            if self.engine.sample_usage():
                self.wake()
        except Exception:
            log.exception("usage sampling failed; retrying on the next one")

    async def compact_history(self) -> None:
        try:
            self.engine.compact_history()
        except Exception:
            log.exception("thinning the usage history failed; retrying later")

    async def run_health_probes(self) -> None:
        """Start every due ``--health-cmd``; each runs as its own task, so a slow probe
        delays nothing but itself."""
        try:
            due = self.engine.due_probes(self.engine.clock())
        except Exception:
            log.exception("cannot list due health checks")
            return
        for run in due:
            task = self.loop.create_task(self._probe(run))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def _probe(self, run) -> None:
        from engine.health_probe import run_probe

        try:
            request = self.engine.probe_request(run)
            result = await run_probe(request["cmd"], env=request["env"], cwd=request["cwd"],
                                     timeout_s=request["timeout_s"],
                                     as_user=shared_daemon.probe_identity(self, run))
            self.engine.record_probe_result(run, result, self.engine.clock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("health check of run %s failed to run", run.id)
            self.engine._probing.discard(run.id)

    def _arm_deadline(self, at: float | None) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if at is not None:
            delay = max(0.0, at - self.engine.clock()) + 0.01
            self._deadline_timer = self.loop.call_later(delay, self.wake)

    def _sync_watches(self) -> None:
        from engine.model import RunState

        running = {run.id: run for run in self.engine.store.in_state(RunState.RUNNING)}
        for run_id in list(self._watched):
            if run_id not in running:
                self._unwatch(run_id)
        for run_id, run in running.items():
            if run_id in self._watched:
                continue
            fd = self.engine.launcher.exit_fd(run)
            if fd is None:
                continue
            self._watched[run_id] = fd
            self.loop.add_reader(fd, self._on_exit, run_id)

    def _on_exit(self, run_id: int) -> None:
        self._unwatch(run_id)
        self.wake()

    def _unwatch(self, run_id: int) -> None:
        fd = self._watched.pop(run_id, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def close_watches(self) -> None:
        for run_id in list(self._watched):
            self._unwatch(run_id)

    # ---------------------------------------------------------------- requests

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_credentials(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(protocol.encode_error("request too large", protocol.EXIT_BAD_INPUT))
                    break
                if not line:
                    break
                writer.write(self.answer(line, peer))
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def answer(self, line: bytes, peer: tuple[int, int, int] | None) -> bytes:
        try:
            op, args = protocol.decode_request(line)
            result = shared_daemon.answer(self, op, args, peer)
        except protocol.RequestError as error:
            return protocol.encode_error(str(error), error.code)
        except Exception as error:  # a bug must not take the daemon down with it
            log.exception("request failed")
            return protocol.encode_error(f"internal error: {error}", protocol.EXIT_ERROR)
        encoded = protocol.encode_result(result)
        if len(encoded) > protocol.MAX_LINE_BYTES:
            # A client reads at most this much of a line: past it, it would see a cut-off
            # answer and fail to decode it. Say what to do instead.
            return protocol.encode_error(protocol.too_long_message(op, len(encoded)), protocol.EXIT_ERROR)
        return encoded

    def dispatch(self, op: str, args: dict[str, Any], peer: tuple[int, int, int] | None) -> Any:
        engine = self.engine
        uid = peer[1] if peer else None
        if op == "hello":
            return {"version": protocol.PROTOCOL_VERSION, "features": list(protocol.FEATURES), "pid": os.getpid(),
                    "mode": self.config.mode,
                    "home": str(self.config.home.root)}
        if op == "submit":
            run = engine.submit(args, uid=uid, user=_user_name(uid))
            self.wake()
            return run.to_json()
        if op == "schedule":
            result = engine.schedule(args.get("template") or {}, args.get("cron"), uid=uid, user=_user_name(uid))
            self.wake()
            return result
        if op == "schedules":
            return engine.list_schedules()
        if op == "unschedule":
            return engine.unschedule(args.get("id"))
        if op == "submit_many":
            runs = engine.submit_many(args.get("runs"), uid=uid, user=_user_name(uid), group=args.get("group"),
                                      git_diff=args.get("git_diff"))
            self.wake()
            return [run.to_json() for run in runs]
        if op == "ls":
            if args.get("limit") is not None:
                # A page of every run, by id: a big list comes in several answers, so no
                # single one holds the loop (or a client decoding it) for long.
                after_id, limit = args.get("after_id", 0), args.get("limit")
                if any(isinstance(value, bool) or not isinstance(value, int) for value in (after_id, limit)) \
                        or after_id < 0 or not 1 <= limit <= LS_ALL_MAX_RUNS:
                    raise protocol.RequestError(
                        f"ls: after_id must be a run id (0 or more) and limit 1 to {LS_ALL_MAX_RUNS}")
                return [run.to_json() for run in sql.list_runs(engine.store.conn, after_id=after_id, limit=limit)]
            if args.get("all"):
                # Every run in one answer would build them all in this process's memory
                # (which CPython keeps) and could outgrow the protocol's line: past one
                # page's worth, the client must page.
                total = sql.count_runs(engine.store.conn)
                if total > LS_ALL_MAX_RUNS:
                    raise protocol.RequestError(
                        f"ls: {total} runs are too many for one answer; ask for pages with after_id and limit "
                        f"(at most {LS_ALL_MAX_RUNS} each), as `runyard ls --all` does", protocol.EXIT_ERROR,
                    )
            return [run.to_json() for run in engine.list_runs(include_finished=bool(args.get("all")))]
        if op == "show":
            return engine.describe(args.get("id"))
        if op == "retry":
            run = engine.retry(args.get("id"))
            self.wake()
            return run.to_json()
        if op == "cancel":
            run = engine.cancel(args.get("id"))
            self.wake()
            return run.to_json()
        if op in ("hold", "release"):
            run = engine.set_held(args.get("id"), op == "hold")
            self.wake()
            return run.to_json()
        if op in ("drain", "undrain"):
            result = engine.set_draining(op == "drain")
            self.wake()
            return result
        if op == "status":
            return engine.status()
        if op == "usage":
            return engine.usage_report(args.get("id"), max_points=_points(args))
        if op == "history":
            since = args.get("since")
            if not isinstance(since, (int, float)):
                since = engine.clock() - 600
            return engine.box_history(float(since), max_points=_points(args))
        if op == "priority":
            run = engine.set_priority(args.get("id"), args.get("priority"))
            self.wake()
            return run.to_json()
        if op == "preview":
            return engine.preview(args)
        if op == "results":
            return engine.results(args.get("group"))
        raise protocol.RequestError(f"unknown request {op!r}; known: {', '.join(protocol.OPS)}")


def _points(args: dict[str, Any]) -> int:
    points = args.get("max_points", 120)
    if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= 10_000:
        raise protocol.RequestError("max_points must be a whole number from 1 to 10000", protocol.EXIT_BAD_INPUT)
    return points


def _peer_credentials(sock: socket.socket | None) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end, as the kernel tells it."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", raw)


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


async def serve(config: DaemonConfig, *, on_ready: Callable[[Server], None] | None = None) -> None:
    """Run the engine until SIGTERM/SIGINT (or :attr:`Server.stopping` is set)."""
    home = config.home
    if config.shared:
        shared_daemon.prepare(home)
    home.ensure()
    lock_fd = _acquire_lock(home)
    try:
        engine = build_engine(config)
        notifier = attach_alerts(engine, config)
        loop = asyncio.get_running_loop()
        server = Server(engine, config, loop)
        engine.recover()
        socket_path = home.socket_path
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # stale: the lock proves no engine is using it
        listener = await asyncio.start_unix_server(
            server.handle_connection, path=str(socket_path), limit=protocol.MAX_LINE_BYTES
        )
        # Shared: anyone may connect; who they are comes from the socket, not the request.
        os.chmod(socket_path, 0o666 if config.shared else 0o600)
        scheduler = AsyncIOScheduler(event_loop=loop)
        scheduler.add_job(server.periodic_tick, "interval", seconds=TICK_INTERVAL_S, id="tick",
                          coalesce=True, max_instances=1)
        scheduler.add_job(server.sample_usage, "interval", seconds=config.settings.sample_interval_s,
                          id="sample", coalesce=True, max_instances=1)
        scheduler.add_job(server.compact_history, "interval", seconds=COMPACT_INTERVAL_S, id="compact",
                          coalesce=True, max_instances=1)
        scheduler.add_job(server.run_health_probes, "interval", seconds=HEALTH_POLL_S, id="health",
                          coalesce=True, max_instances=1)
        scheduler.start()
        if config.install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, server.stopping.set)
        server.wake()
        await server.compact_history()
        await server.sample_usage()
        log.info("runyard engine serving %s (pid %s, GPUs: %s)", socket_path, os.getpid(), engine.gpu_source)
        if on_ready:
            on_ready(server)
        try:
            await server.stopping.wait()
        finally:
            if config.install_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
            scheduler.shutdown(wait=False)
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            server.close_watches()
            for task in list(server._probes):
                task.cancel()
            if server._probes:
                await asyncio.wait(list(server._probes), timeout=10)
            if notifier is not None:
                notifier.close(timeout_s=5.0)
            engine.gpu_probe.close()
            engine.store.conn.close()
            if engine.history is not None:
                engine.history.conn.close()
            log.info("runyard engine stopped; runs keep running")
    finally:
        os.close(lock_fd)


def run(config: DaemonConfig) -> None:
    asyncio.run(serve(config))


class EmbeddedEngine:
    """The engine in a background thread of another program (the TUI)."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._ready = threading.Event()
        self._server: Server | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="runyard-engine", daemon=True)

    def start(self, timeout_s: float = 30.0) -> EmbeddedEngine:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise DaemonError("the embedded engine did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        def ready(server: Server) -> None:
            self._server = server
            self._ready.set()

        try:
            asyncio.run(serve(self.config, on_ready=ready))
        except BaseException as error:  # handed to start() in the caller's thread
            self._error = error
            self._ready.set()

    @property
    def server(self) -> Server | None:
        """The running server (``None`` before :meth:`start` returns); its loop is the only
        thread that may touch the engine."""
        return self._server

    def stop(self, timeout_s: float = 10.0) -> None:
        server = self._server
        if server is not None:
            server.loop.call_soon_threadsafe(server.stopping.set)
        self._thread.join(timeout_s)


def start_embedded(home: Home, *, simulate_gpus: str | None = None, settings: Config | None = None) -> EmbeddedEngine:
    config = DaemonConfig(home=home, simulate_gpus=simulate_gpus, mode="embedded", install_signals=False,
                          settings=settings or Config())
    return EmbeddedEngine(config).start()
