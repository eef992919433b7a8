"""The ``runyard`` command: a thin client of the daemon.

``submit``, ``ls``, ``show`` and ``logs`` import only light modules (argparse, json,
socket, sqlite3 and engine's stdlib-only parts); Textual, sqlite-utils, APScheduler,
psutil and torch load only for the TUI and the daemon. Check with
``python -X importtime -m runyard.cli ls``.

Exit statuses: 0 ok, 2 bad input, 3 no such run, 1 anything else. Errors are one line on
stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from engine.client import Client, ClientError, DaemonUnavailable
from engine.paths import Home
from engine.protocol import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_NO_SUCH_RUN, RequestError

NO_ENGINE_HINT = "start one with `runyard --daemon` (headless) or `runyard` (the TUI)"


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where help is."""

    def error(self, message: str) -> NoReturn:
        if _partial_parser:
            raise _NotThisParser
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class _NotThisParser(Exception):
    """A parser built for one command could not parse the line: the full one will say why."""


_partial_parser = False


class _OneCommand:
    """Stands for ``add_subparsers()``'s action when one command is wanted: the others
    are not built. A parser of every command costs a `runyard submit` more time
    (argparse formats and translates each option's help as it is added) than sending
    the run to the engine."""

    def __init__(self, commands: argparse._SubParsersAction, wanted: str) -> None:
        self.commands = commands
        self.wanted = wanted
        self.found = False

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name != self.wanted:
            return _Unbuilt()
        self.found = True
        return self.commands.add_parser(name, **kwargs)


class _Unbuilt:
    """Takes a parser's building calls and keeps nothing."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        return None

    def add_argument_group(self, *args: Any, **kwargs: Any) -> _Unbuilt:
        return self

    add_mutually_exclusive_group = add_argument_group

    def set_defaults(self, **kwargs: Any) -> None:
        return None


def _add_envelope_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("envelope (what the run may use)")
    group.add_argument("--cpus", help="CPU cores, may be fractional (default 1)")
    group.add_argument("--mem", help="memory, e.g. 512M, 16G (default 1G)")
    group.add_argument("--gpus", help="whole GPUs (default 0)")
    group.add_argument("--gpu-mem", dest="gpu_mem",
                       help="memory per GPU, e.g. 10G; lets the run share a card (omit: whole GPUs)")
    group.add_argument("--disk", help="free disk needed under runyard's home, e.g. 20G")
    group.add_argument("--time", help="wall-clock limit, e.g. 90s, 45m, 2h, 1d, 1:30:00 (default none)")
    group.add_argument("--res", action="append", default=None, metavar="NAME=COUNT",
                       help="a named counted resource from the config's [resources], e.g. nfs_io=1 (repeatable)")


def _add_submit_options(parser: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    _add_envelope_options(parser)
    parser.add_argument("--name", help="a name to find the run by")
    parser.add_argument("--priority", type=int, default=0, help="higher starts first (default 0)")
    parser.add_argument("--grace", default=None, help="time between SIGTERM and SIGKILL on stop (default 30s)")
    parser.add_argument("--cwd", help="working directory (default: the current one)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set a variable in the run's environment (repeatable)")
    parser.add_argument("--hold", action="store_true", help="queue it held: it starts only after `runyard release`")
    parser.add_argument("--on-overrun", dest="on_overrun", choices=("default", "warn", "kill"), default="default",
                        help="past the envelope: default stops on memory and warns on GPU memory; "
                             "warn never stops; kill stops on either")
    retries = parser.add_argument_group("retries, checkpoints and time limits")
    retries.add_argument("--retries", type=int, default=0, metavar="N",
                         help="retry up to N times after a failure, an OOM kill or a lost run (default 0)")
    retries.add_argument("--backoff", metavar="MIN..MAX", help="wait between retries, exponential with jitter (default 10s..10m)")
    retries.add_argument("--retry-on", action="append", metavar="CODES", help="retry only these exit codes, e.g. 1,137")
    retries.add_argument("--no-retry-on", action="append", metavar="CODES", help="never retry these exit codes, e.g. 2")
    retries.add_argument("--grow-on-oom", type=float, metavar="FACTOR",
                         help="after an out-of-memory end, retry with the memory (or GPU memory) envelope times FACTOR")
    retries.add_argument("--checkpoint-dir", metavar="DIR",
                         help="where the run keeps checkpoints (RUNYARD_CHECKPOINT_DIR; default: in its run folder)")
    retries.add_argument("--signal", dest="warn_signal", metavar="SIG@TIME",
                         help="send SIG that long before the time limit, e.g. USR1@5m, so the run can checkpoint")
    retries.add_argument("--requeue", action="store_true",
                         help="at the time limit, requeue a run that has a checkpoint instead of ending it")
    checks = parser.add_argument_group("health")
    checks.add_argument("--stall-timeout", metavar="DURATION",
                        help="no heartbeat, no log output and no CPU use this long makes the run 'stalled'")
    checks.add_argument("--on-stall", choices=("warn", "kill", "restart"), help="what a stall does (default warn)")
    checks.add_argument("--health-cmd", metavar="CMD", help="a probe run with `sh -c` in the run's environment; exit 0 is healthy")
    checks.add_argument("--health-interval", metavar="DURATION", help="between probes (default 30s)")
    checks.add_argument("--health-retries", metavar="N", help="failures in a row that make the run unhealthy (default 3)")
    checks.add_argument("--health-timeout", metavar="DURATION", help="a probe running longer fails (default 10s)")
    checks.add_argument("--health-start-period", metavar="DURATION", help="failures this soon after the start do not count")
    order = parser.add_argument_group("order and schedule")
    order.add_argument("--after", action="append", metavar="ID[:ok|:any]",
                       help="start after run ID succeeded (:ok, the default) or ended at all (:any); repeatable")
    if sweep:
        order.add_argument("--group", help="name the sweep's group (default: sweep-N)")
    else:
        order.add_argument("--group", help="put the run in a group (a sweep); the circuit breaker counts per group")
    order.add_argument("--at", metavar="TIME", help="not before TIME: 14:30, '2026-12-01 02:00', +2h")
    if not sweep:
        order.add_argument("--cron", metavar="EXPR",
                           help="queue a new run from this template on a crontab schedule, e.g. '0 2 * * *'")
    parser.add_argument("--seed", type=int, help="the run's seed: recorded, and given to it as RUNYARD_SEED")
    parser.add_argument("--pool", help="run on the GPUs set aside for this pool ([shared.pools] in the config)")
    parser.add_argument("--preemptible", action="store_true",
                        help="may be stopped (SIGTERM, grace, requeued to resume from its checkpoint) "
                             "so that a run of higher priority starts")
    parser.add_argument("--json", action="store_true", help="print the run as JSON")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``only``, just that command's part (``parser.only_found``
    says whether such a command exists)."""
    parser = _Parser(prog="runyard", description="A control center for ML experiment runs.")
    parser.add_argument("--daemon", action="store_true", help="run the engine headless in the foreground")
    parser.add_argument("--shared", action="store_true",
                        help="with --daemon: one engine for every user of the box (as root; "
                             "state in /var/lib/runyard, socket /run/runyard/runyard.sock)")
    parser.add_argument("--backend", choices=("local", "slurm"),
                        help="with --daemon: run on this box (local) or hand runs to Slurm (default: "
                             "the config's [engine] backend, else local)")
    parser.add_argument("--partition", metavar="P", help="with --backend slurm: the partition runs go to")
    parser.add_argument("--simulate-gpus", metavar="SPEC",
                        help="pretend the box has these GPUs, e.g. 4x80G or 2x80G,1x24G")
    parser.add_argument("--demo", action="store_true",
                        help="open the TUI on a demo queue in a throwaway home with 4 simulated GPUs")
    parser.add_argument("--theme", help="TUI theme name")
    commands: Any = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if only is not None:
        commands = _OneCommand(commands, only)

    submit = commands.add_parser("submit", help="queue a run", description="Queue a run: runyard submit [options] -- CMD [ARGS...]")
    _add_submit_options(submit)
    sweep = commands.add_parser(
        "sweep", help="queue one run per combination of parameters, in a new group",
        description="Queue a sweep: runyard sweep --param lr=1e-3,1e-4 --param seed=1..3 [options] "
                    "-- CMD ... {lr} ... {seed}",
    )
    sweep_options = sweep.add_argument_group("sweep")
    sweep_options.add_argument("--param", action="append", default=[], metavar="NAME=VALUES",
                               help="values of {NAME} in the command: a,b,c or a range of whole numbers 1..5 "
                                    "(repeatable; the grid is every combination)")
    sweep_options.add_argument("--random", type=int, metavar="K", help="K combinations drawn at random instead of all")
    sweep_options.add_argument("--sample-seed", type=int, metavar="S",
                               help="seed of the --random draw, so the same sweep can be drawn again")
    _add_submit_options(sweep, sweep=True)

    ls = commands.add_parser("ls", help="list runs")
    ls.add_argument("--all", action="store_true", help="include every finished run")
    ls.add_argument("--group", help="the runs of one group (a sweep): parameters, metrics, drift")
    ls.add_argument("--sort", metavar="KEY",
                    help="with --group: by a parameter, a metric, id, state or time; --sort=-KEY for largest first")
    ls.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="show one run")
    show.add_argument("id")
    show.add_argument("--usage", action="store_true", help="what it used against its envelope: peak and mean")
    show.add_argument("--provenance", action="store_true",
                      help="what it ran: command, environment, git commit and diff, Python and packages, driver")
    show.add_argument("--json", action="store_true")

    logs = commands.add_parser("logs", help="print a run's output")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")

    for name, text in (("cancel", "stop a run (SIGTERM, then SIGKILL after its grace)"),
                       ("hold", "keep a queued run from starting"),
                       ("release", "let a held run start")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("id")
        sub.add_argument("--json", action="store_true")
    priority = commands.add_parser("priority", help="change a queued run's priority (higher starts first)")
    priority.add_argument("id")
    priority.add_argument("priority", type=int)
    priority.add_argument("--json", action="store_true")
    schedules_cmd = commands.add_parser("schedules", help="list the --cron schedules")
    schedules_cmd.add_argument("--json", action="store_true")
    unschedule = commands.add_parser("unschedule", help="remove a --cron schedule")
    unschedule.add_argument("id")
    rerun = commands.add_parser("rerun", help="queue a new run with an earlier run's command, cwd, env and envelope")
    rerun.add_argument("id")
    rerun.add_argument("--json", action="store_true")
    export = commands.add_parser("export", help="one row per run: parameters, metrics, state, durations, provenance")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("--group", help="only this group's runs")
    export.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    retry_cmd = commands.add_parser("retry", help="requeue a run that ended, as a new attempt")
    retry_cmd.add_argument("id")
    retry_cmd.add_argument("--json", action="store_true")
    simulate = commands.add_parser(
        "simulate", add_help=False,
        help="replay a trace of runs through runyard's admission on a simulated box (`runyard simulate --help`)",
    )
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    commands.add_parser("drain", help="admit nothing new; running runs go on")
    commands.add_parser("undrain", help="admit runs again")
    status = commands.add_parser("status", help="the engine and the box's resources")
    status.add_argument("--json", action="store_true")
    from runyard import shared_cmd  # the shared box's commands; argparse only at import

    shared_cmd.add_parsers(commands)
    parser.only_found = only is None or commands.found  # type: ignore[attr-defined]
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command's own parser first; the whole one when that cannot be used (no
    command, an option's value mistaken for one, a usage error to report)."""
    global _partial_parser
    line = sys.argv[1:] if argv is None else argv
    named = next((token for token in line if not token.startswith("-")), None)
    if named is not None and "--" not in line[: line.index(named)]:
        parser = build_parser(only=named)
        if parser.only_found:  # type: ignore[attr-defined]
            _partial_parser = True
            try:
                return parser.parse_args(line)
            except _NotThisParser:
                pass
            finally:
                _partial_parser = False
    return build_parser().parse_args(line)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        home = Home.resolve()
        if args.daemon:
            return _run_daemon(home, args)
        if args.shared:
            raise CliError("--shared goes with --daemon: runyard --daemon --shared", EXIT_BAD_INPUT)
        if args.backend or args.partition:
            raise CliError("--backend and --partition go with --daemon: runyard --daemon --backend slurm",
                           EXIT_BAD_INPUT)
        if args.command is None:
            return _run_tui(home, args)
        if args.command not in COMMANDS:
            from runyard import shared_cmd

            return shared_cmd.run(home, args, CliError)
        return COMMANDS[args.command](home, args)
    except CliError as error:
        print(f"runyard: {error}", file=sys.stderr)
        return error.code
    except ClientError as error:
        print(f"runyard: {error}", file=sys.stderr)
        return error.code
    except DaemonUnavailable:  # it stopped between two requests of one command (ls pages)
        print(f"runyard: the engine stopped answering; {NO_ENGINE_HINT}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


# ------------------------------------------------------------------ commands


def _client(home: Home) -> Client:
    from engine.shared import client_for  # the home's daemon, else the box's shared one

    return client_for(home)


def cmd_submit(home: Home, args: argparse.Namespace) -> int:
    request = _submit_request(args)
    if args.cron:
        return _schedule(home, args, request)
    if args.checkpoint_dir:
        request["checkpoint_dir"] = os.path.abspath(args.checkpoint_dir)
    _add_git_facts(request)
    client = _client(home)
    try:
        run = client.call("submit", **_understood(client, request))
        offline = False
    except DaemonUnavailable:
        if request.get("pool") or request.get("preemptible"):
            raise CliError(f"--pool and --preemptible need a running engine: {NO_ENGINE_HINT}") from None
        run = _submit_offline(home, request)
        offline = True
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        print(run["id"])
    if offline:
        print(f"runyard: queued run {run['id']}, but no engine is running: {NO_ENGINE_HINT}", file=sys.stderr)
    return 0


def _add_git_facts(request: dict[str, Any]) -> None:
    """Read here, where the submitter's working tree is (engine.provenance says why)."""
    from engine.gitfacts import capture_git, encode_diff

    git, diff = capture_git(request["cwd"])
    request["provenance"] = {"git": git}
    request["git_diff"] = encode_diff(diff)


def _submit_request(args: argparse.Namespace) -> dict[str, Any]:
    """The submit request that ``submit``'s options (shared by ``sweep``) describe.

    The envelope, retry and health options go as typed, and the engine parses them
    (``engine.submission.request_from_options``): their parsers cost this process more
    to import than the rest of a submit. :func:`_understood` parses them here for an
    engine that cannot, and the offline path parses them on its own.
    """
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("missing command: runyard submit [options] -- CMD [ARGS...]", EXIT_BAD_INPUT)
    env = dict(os.environ)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--env {item!r}: write NAME=VALUE", EXIT_BAD_INPUT)
        env[name] = value
    request = {
        "argv": argv,
        "cwd": os.path.abspath(args.cwd or os.getcwd()),
        "env": env,
        "name": args.name,
        "priority": args.priority,
        "options": {name: getattr(args, name) for name in TEXT_OPTIONS},
        "held": args.hold,
        "on_overrun": args.on_overrun,
        "after": _dependencies(args.after),
        "group": args.group,
        "seed": args.seed,
        "umask": _umask(),
        "pool": args.pool,
        "preemptible": args.preemptible,
    }
    if args.at:
        request["at"] = _start_time(args.at)
    return request


def _umask() -> int | None:
    from engine.shared import current_umask  # a shared engine starts the run with it

    return current_umask()


def _start_time(text: str) -> float:
    from engine.schedules import ScheduleError, parse_at

    try:
        return parse_at(text, time.time())
    except ScheduleError as error:
        raise CliError(str(error), EXIT_BAD_INPUT) from None


def _schedule(home: Home, args: argparse.Namespace, template: dict[str, Any]) -> int:
    try:
        template = _understood(_client(home), template)
    except DaemonUnavailable:
        raise CliError(f"`runyard schedule` needs a running engine: {NO_ENGINE_HINT}") from None
    schedule = _engine_call(home, "schedule", template=template, cron=args.cron)
    if args.json:
        print(json.dumps(schedule, indent=2))
    else:
        print(f"schedule {schedule['id']}: next run at {_stamp(schedule['next_at'])}")
    return 0


def _stamp(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def _simulate(argv: list[str]) -> int:
    from runyard.simulate_cmd import main as simulate_main

    return simulate_main(argv)


def cmd_schedules(home: Home, args: argparse.Namespace) -> int:
    schedules = _engine_call(home, "schedules")
    if args.json:
        print(json.dumps(schedules, indent=2))
        return 0
    if not schedules:
        print("no schedules")
        return 0
    for item in schedules:
        last = f", last run {item['last_run_id']}" if item["last_run_id"] else ""
        print(f"{item['id']}  {item['cron']:<15}  next {_stamp(item['next_at'])}{last}  {' '.join(item['argv'] or [])}")
    return 0


def cmd_unschedule(home: Home, args: argparse.Namespace) -> int:
    if not args.id.isdigit():
        raise CliError(f"{args.id!r} is not a schedule id (a number, as `runyard schedules` shows)", EXIT_BAD_INPUT)
    removed = _engine_call(home, "unschedule", id=int(args.id))
    print(f"schedule {removed['id']} removed; runs it queued stay")
    return 0


def _dependencies(values: list[str] | None) -> list[list[Any]]:
    deps = []
    for value in values or ():
        run_id, _, kind = value.partition(":")
        if not run_id.strip().isdigit() or kind not in ("", "ok", "any"):
            raise CliError(f"--after {value!r}: write ID, ID:ok or ID:any", EXIT_BAD_INPUT)
        deps.append([int(run_id), kind or "ok"])
    return deps


TEXT_OPTIONS = (
    "cpus", "mem", "gpus", "gpu_mem", "disk", "time", "res", "grace", "retries", "backoff", "retry_on",
    "no_retry_on", "grow_on_oom", "warn_signal", "requeue", "stall_timeout", "on_stall", "health_cmd",
    "health_interval", "health_retries", "health_timeout", "health_start_period",
)
"""``engine.submission.TEXT_OPTIONS``, spelled out: importing that module here would
import the parsers this list exists to keep out (tests/test_architecture.py checks both agree)."""


def _understood(client: Client, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` as ``client``'s engine understands it. An engine from before the typed
    options would ignore them (and run with the default envelope): for it they are parsed
    here. One more round trip on the socket, against the parsers' imports."""
    if "options" not in request:
        return request
    hello = client.call("hello")
    if "submit_options" in ((hello or {}).get("features") or ()):
        return request
    return _parsed_here(request)


def _parsed_here(request: dict[str, Any]) -> dict[str, Any]:
    from engine.submission import request_from_options

    try:
        fields = request_from_options(request["options"])
    except RequestError as error:
        raise CliError(str(error), error.code) from None
    return {**{name: value for name, value in request.items() if name != "options"}, **fields}


def _submit_offline(home: Home, request: dict[str, Any]) -> dict[str, Any]:
    """Queue straight into the database; the next engine to start admits it."""
    from engine.config import ConfigError, load_config
    from engine.store import sql

    try:
        spec, diff = _offline_spec(request, load_config().default_envelope)
    except RequestError as error:
        raise CliError(str(error), error.code) from None
    except ConfigError as error:
        raise CliError(str(error), EXIT_BAD_INPUT) from None
    home.ensure()
    conn = _open_db(home, create=True)
    try:
        run_id = sql.insert_run(conn, spec, now=time.time(), runs_dir=home.runs_dir,
                                uid=os.getuid(), user=_current_user(),
                                reason="waiting: no engine is running")
        run = sql.get_run(conn, run_id)
    except sql.sqlite3.OperationalError as error:
        raise CliError(f"cannot queue in {home.db_path}: {error}; check the disk and permissions") from None
    finally:
        conn.close()
    assert run is not None
    _save_diff_offline(run.run_dir, diff)
    return run.to_json()


def _offline_spec(request: dict[str, Any], default_envelope: dict[str, Any] | None):
    """The spec and its provenance as the daemon would make them, less the GPU driver's
    versions (only the daemon has NVML open)."""
    from engine import provenance
    from engine.submission import spec_from_request
    from runyard import __version__

    spec = spec_from_request(request, default_envelope)
    return provenance.prepare(spec, request, user=_current_user(), gpu=None, runyard_version=__version__)


def _save_diff_offline(run_dir: str | None, diff: bytes | None) -> None:
    from engine.provenance import save_diff

    try:
        save_diff(run_dir, diff)
    except OSError as error:
        print(f"runyard: the uncommitted diff was not saved ({error.strerror}); its hash is recorded", file=sys.stderr)


def _open_db(home: Home, *, create: bool):
    """The database for an offline client; migrates only when it is new or old."""
    from engine.store import sql

    if not home.db_path.exists() and not create:
        return None
    try:
        conn = sql.connect(home.db_path, readonly=not create)
        current = sql.schema_version(conn) == sql.SCHEMA_VERSION
    except sql.StoreError as error:
        raise CliError(str(error)) from None
    if current or not create:
        return conn
    conn.close()
    # A new home: the one time an offline submit pays for sqlite-utils (the schema).
    import sqlite3

    from engine.store.schema import migrate

    try:
        migrate(home.db_path)
    except sqlite3.DatabaseError as error:
        raise CliError(str(sql.store_error(home.db_path, error))) from None
    except OSError as error:
        raise CliError(f"cannot create {home.db_path}: {error.strerror}; check the disk and permissions") from None
    return sql.connect(home.db_path)


def _current_user() -> str | None:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def _read_offline(home: Home, fetch):
    from engine.store import sql

    conn = _open_db(home, create=False)
    if conn is None:
        return None
    try:
        if sql.schema_version(conn) != sql.SCHEMA_VERSION:
            return None
        return fetch(conn)
    finally:
        conn.close()


LS_PAGE = 1000
"""Runs per answer for ``ls --all``: a page is about a megabyte of JSON, and the engine
serves other clients between pages."""


def cmd_ls(home: Home, args: argparse.Namespace) -> int:
    if args.group is not None or args.sort:
        return _results_cmd("cmd_group")(home, args)
    client = _client(home)
    try:
        if args.all:
            pages = client.runs(page=LS_PAGE)
            # Pulled now, so that "no engine" is known before anything is printed.
            first = list(itertools.islice(pages, 1))
            runs = itertools.chain(first, pages)
        else:
            runs = iter(client.call("ls", all=False))
    except DaemonUnavailable:
        return _ls_offline(home, args)
    _print_runs(runs, args)
    return 0


def _ls_offline(home: Home, args: argparse.Namespace) -> int:
    from engine.store import sql

    conn = _open_db(home, create=False)
    try:
        current = conn is not None and sql.schema_version(conn) == sql.SCHEMA_VERSION
        if args.all and current:
            runs = (run.to_json() for run in _db_pages(conn))
        elif current:
            runs = iter([run.to_json() for run in sql.list_runs(conn, include_finished=False, recent_finished=20)])
        else:
            runs = iter(())
        if not args.json:
            print(f"runyard: no engine is running ({NO_ENGINE_HINT}); showing the database", file=sys.stderr)
        _print_runs(runs, args)
    except sql.StoreError as error:
        raise CliError(str(error)) from None
    except sql.sqlite3.DatabaseError as error:
        raise CliError(str(sql.store_error(home.db_path, error))) from None
    finally:
        if conn is not None:
            conn.close()
    return 0


def _db_pages(conn):
    """Every run in id order, a page of rows at a time, as the daemon pages them."""
    from engine.store import sql

    after_id = 0
    while True:
        page = sql.list_runs(conn, after_id=after_id, limit=LS_PAGE)
        yield from page
        if len(page) < LS_PAGE:
            return
        after_id = page[-1].id


def _print_runs(runs: Iterator[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print as they come: a hundred thousand runs are never all in memory as objects."""
    if args.json:
        _print_json_array(runs)
    else:
        print(_format_table(runs))


def _print_json_array(items: Iterator[Any]) -> None:
    """What ``json.dumps(list(items), indent=2)`` prints, an item at a time."""
    out = sys.stdout
    count = 0
    for item in items:
        out.write("[\n" if count == 0 else ",\n")
        out.write("\n".join("  " + line for line in json.dumps(item, indent=2).split("\n")))
        count += 1
    out.write("\n]\n" if count else "[]\n")


def _format_table(runs: Iterable[dict[str, Any]]) -> str:
    from engine.envelope import Envelope
    from engine.units import format_duration

    now = time.time()
    header = ("ID", "NAME", "STATE", "GPUS", "ENVELOPE", "TIME", "PROGRESS", "HEALTH", "REASON")
    rows = [header]
    on_cluster = False
    for run in runs:
        envelope = Envelope.from_dict(run["envelope"]).describe()
        if run["started_at"]:
            elapsed = format_duration((run["ended_at"] or now) - run["started_at"])
        else:
            elapsed = "-"
        gpus = ",".join(str(index) for index in run["gpus"]) or "-"
        if run.get("backend_job"):
            on_cluster = True  # Slurm picks the node and the GPUs on it: where it runs is the news
            gpus = f"{run['node']}:{run['backend_job']}" if run.get("node") else f"job {run['backend_job']}"
        rows.append((str(run["id"]), run["name"], run["state"], gpus, envelope, elapsed,
                     _progress_text(run, now), (run.get("health") if run["state"] == "running" else None) or "-",
                     run["reason"]))
    if on_cluster:
        rows[0] = ("ID", "NAME", "STATE", "WHERE", *header[4:])
    widths = [max(len(row[col]) for row in rows) for col in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1] for row in rows
    )


def _progress_text(run: dict[str, Any], now: float) -> str:
    """``450/1000 eta 5m``, from the run's last heartbeat."""
    progress = run.get("progress") or {}
    step, total = progress.get("step"), progress.get("total")
    if step is None:
        return "-"
    text = f"{step}/{total}" if total else str(step)
    eta = progress.get("eta")
    if run["state"] == "running" and isinstance(eta, (int, float)) and eta > now:
        from engine.units import format_duration

        text += f" eta {format_duration(eta - now)}"
    return text


def _get_run(home: Home, run_id: str) -> dict[str, Any]:
    try:
        return _client(home).call("show", id=run_id)
    except DaemonUnavailable:
        from engine.store import sql

        if not run_id.isdigit():
            raise CliError(f"{run_id!r} is not a run id (a number, as `runyard ls` shows)", EXIT_BAD_INPUT) from None
        run = _read_offline(home, lambda conn: _described(conn, sql.get_run(conn, int(run_id))))
        if run is None:
            raise CliError(f"no run {run_id}; `runyard ls --all` lists them", EXIT_NO_SUCH_RUN) from None
        return run


def _described(conn, run) -> dict[str, Any] | None:
    """What the engine's ``show`` adds that the database alone can tell."""
    from engine import groups

    if run is None:
        return None
    data = run.to_json(with_env=True)
    data["provenance"], data["drift"] = groups.run_provenance(conn, run.id, run.group)
    return data


def cmd_show(home: Home, args: argparse.Namespace) -> int:
    if args.usage:
        return _show_usage(home, args)
    run = _get_run(home, args.id)
    if args.provenance:
        from runyard.results_cmd import show_provenance

        return show_provenance(home, run, as_json=args.json)
    if args.json:
        print(json.dumps(run, indent=2))
        return 0
    from engine.envelope import Envelope

    envelope = Envelope.from_dict(run["envelope"])
    fields = [
        ("id", run["id"]), ("name", run["name"]), ("state", run["state"]), ("reason", run["reason"]),
        ("command", " ".join(run["argv"])), ("cwd", run["cwd"]), ("envelope", envelope.describe()),
        ("priority", run["priority"]), ("held", "yes" if run["held"] else "no"),
        ("gpus", ",".join(map(str, run["gpus"])) or "-"), ("pid", run["pid"] or "-"),
        ("exit code", "-" if run["exit_code"] is None else run["exit_code"]),
        ("submitted", _stamp(run["submitted_at"])), ("started", _stamp(run["started_at"])),
        ("ended", _stamp(run["ended_at"])), ("log", run["log_path"]),
    ]
    if run.get("backend_job"):
        where = f"job {run['backend_job']}" + (f" on {run['node']}" if run.get("node") else " (not started)")
        fields[9:11] = [("slurm", where)]
    if run.get("warning"):
        fields.insert(4, ("warning", run["warning"]))
    if run.get("retries") or run.get("attempt", 1) > 1:
        fields.insert(4, ("attempt", f"{run['attempt']} (automatic retries used {run['retries_used']} of {run['retries']})"))
    if run.get("checkpoint_dir"):
        fields.append(("checkpoints", run["checkpoint_dir"]))
    if run.get("health") and run["state"] == "running":
        fields.insert(4, ("health", f"{run['health']}" + (f": {run['health_detail']}" if run.get("health_detail") else "")))
    if run.get("progress"):
        fields.insert(4, ("progress", _progress_text(run, time.time())))
    if run.get("depends_on"):
        fields.append(("after", ", ".join(f"{dep}:{kind}" for dep, kind in run["depends_on"])))
    from runyard.results_cmd import show_fields

    fields.extend(show_fields(run))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {value}")
    for attempt in run.get("attempt_history", []):
        print(f"  attempt {attempt['attempt']}: {attempt['state']}, {attempt['reason']}"
              + (f" [{attempt['failure_class']}]" if attempt["failure_class"] else "")
              + f"  log {attempt['log_path']}")
    for checkpoint in run.get("checkpoints", []):
        mark = " (newest)" if checkpoint["newest"] else ""
        best = " (best)" if checkpoint["is_best"] else ""
        print(f"  checkpoint step {checkpoint['step']}: {checkpoint['path']}{mark}{best}")
    return 0


def _show_usage(home: Home, args: argparse.Namespace) -> int:
    from engine.usage_report import format_usage

    try:
        report = _client(home).call("usage", id=args.id)
    except DaemonUnavailable:
        report = _usage_offline(home, args.id)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_usage(report["run"], report["summary"]))
    return 0


def _usage_offline(home: Home, run_id: str) -> dict[str, Any]:
    import sqlite3

    from engine.store.history import History

    run = _get_run(home, run_id)

    def summary(conn):
        try:
            return History(conn).run_summary(run["id"])
        except sqlite3.OperationalError:  # no engine ever ran here: no history tables yet
            return None

    return {"run": run, "summary": _read_offline(home, summary), "series": []}


def cmd_priority(home: Home, args: argparse.Namespace) -> int:
    run = _engine_call(home, "priority", id=args.id, priority=args.priority)
    return _print_run(run, args, f"priority {run['priority']}")


def cmd_logs(home: Home, args: argparse.Namespace) -> int:
    run = _get_run(home, args.id)
    path = Path(run["log_path"])
    out = sys.stdout.buffer
    position = 0
    while True:
        try:
            with path.open("rb") as log:
                log.seek(position)
                while chunk := log.read(1 << 16):
                    out.write(chunk)
                    position += len(chunk)
            out.flush()
        except FileNotFoundError:
            if not args.follow and run["state"] != "queued":
                raise CliError(f"run {run['id']} has no log at {path}") from None
        if not args.follow or run["state"] not in ("queued", "running"):
            return 0
        time.sleep(0.25)
        run = _get_run(home, args.id)


def _engine_call(home: Home, op: str, **request: Any) -> Any:
    try:
        return _client(home).call(op, **request)
    except DaemonUnavailable:
        raise CliError(f"`runyard {op}` needs a running engine: {NO_ENGINE_HINT}") from None


def cmd_run_action(home: Home, args: argparse.Namespace) -> int:
    run = _engine_call(home, args.command, id=args.id)
    return _print_run(run, args, run["state"])


def _print_run(run: dict[str, Any], args: argparse.Namespace, headline: str) -> int:
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        print(f"run {run['id']}: {headline} ({run['reason']})")
    return 0


def cmd_drain(home: Home, args: argparse.Namespace) -> int:
    result = _engine_call(home, args.command)
    print("draining: no new run starts; running runs go on" if result["draining"] else "admitting runs again")
    return 0


def cmd_status(home: Home, args: argparse.Namespace) -> int:
    from engine.units import format_size

    status = _engine_call(home, "status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    host, engine = status["host"], status["engine"]
    print(f"engine   {engine['mode']} pid {engine['pid']}, home {engine['home']}"
          + (", DRAINING" if engine["draining"] else ""))
    # With Slurm, this machine only submits: what runs reserve is on the nodes, below.
    local = not status.get("cluster")
    reserved_cpus = f", {status['reserved']['cpus']:g} reserved" if local else ""
    reserved_mem = f", {format_size(status['reserved']['mem_bytes'])} reserved" if local else ""
    print(f"cpu      {host['cpus']:g} cores, {host['cpu_percent']:.0f}% busy{reserved_cpus}")
    print(f"memory   {format_size(host['mem_total'] - host['mem_available'])} used of "
          f"{format_size(host['mem_total'])}{reserved_mem}")
    print(f"disk     {format_size(host['disk_free'])} free of {format_size(host['disk_total'])}")
    if status.get("cluster"):
        _print_cluster(status["cluster"])
    else:
        print(f"gpus     {engine['gpu_source']}")
    for gpu in status["gpus"]:
        state = "" if gpu["available"] else f"  UNAVAILABLE: {gpu['unavailable_reason']}"
        holders = ",".join(map(str, gpu["holders"])) or "-"
        print(f"  [{gpu['index']}] {gpu['name']}: {format_size(gpu['mem_used'])} / {format_size(gpu['mem_total'])}"
              f" used, runs {holders}{state}")
        for process in gpu.get("processes", []):
            owner = f"run {process['run_id']}" if process["run_id"] is not None else (process["user"] or "unknown user")
            used = "?" if process["used_mem"] is None else format_size(process["used_mem"])
            print(f"      pid {process['pid']}: {used} ({owner})")
    for resource in status.get("resources", []):
        print(f"{resource['name']:<8} {resource['held']} of {resource['capacity']} held")
    counts = ", ".join(f"{count} {state}" for state, count in status["counts"].items() if count)
    print(f"runs     {counts or 'none'}")
    return 0


def _print_cluster(cluster: dict[str, Any]) -> None:
    """The Slurm backend's partitions and nodes: this machine only submits."""
    from engine.units import format_size

    print(f"slurm    partition {cluster['partition'] or '(the default)'}"
          + (f"  ERROR: {cluster['error']}" if cluster.get("error") else ""))
    for part in cluster.get("partitions", []):
        print(f"  {part['name']}{'*' if part['default'] else ''}: {part['state']}, {part['nodes']} nodes, "
              f"CPUs {part['cpus_alloc']}/{part['cpus_total']} allocated, GPUs {part['gpus_used']}/{part['gpus_total']}"
              f" in use, time limit {part['time_limit']}")
    for node in cluster.get("nodes", []):
        mem = format_size(node["mem_total_bytes"])
        if node.get("mem_alloc_bytes") is not None:
            mem = f"{format_size(node['mem_alloc_bytes'])}/{mem}"
        gpus = f", GPUs {node['gpus_used'] if node.get('gpus_used') is not None else '?'}/{node['gpus_total']}" \
            if node["gpus_total"] else ""
        reason = f" ({node['reason']})" if node.get("reason") else ""
        print(f"  {node['name']}: {node['state']}{reason}, CPUs {node['cpus_alloc']}/{node['cpus_total']}, "
              f"memory {mem}{gpus}")


COMMANDS = {
    "submit": cmd_submit,
    "ls": cmd_ls,
    "show": cmd_show,
    "logs": cmd_logs,
    "cancel": cmd_run_action,
    "hold": cmd_run_action,
    "release": cmd_run_action,
    "priority": cmd_priority,
    "retry": cmd_run_action,
    "schedules": cmd_schedules,
    "simulate": lambda home, args: _simulate(args.rest),
    "unschedule": cmd_unschedule,
    "drain": cmd_drain,
    "undrain": cmd_drain,
    "status": cmd_status,
    "sweep": lambda home, args: _sweep_cmd("cmd_sweep")(home, args),
    "rerun": lambda home, args: _sweep_cmd("cmd_rerun")(home, args),
    "export": lambda home, args: _results_cmd("cmd_export")(home, args),
}


def _sweep_cmd(name: str):
    from runyard import sweep_cmd

    return getattr(sweep_cmd, name)


def _results_cmd(name: str):
    from runyard import results_cmd

    return getattr(results_cmd, name)


# ------------------------------------------------------------ daemon and TUI


def _run_daemon(home: Home, args: argparse.Namespace) -> int:
    import logging

    from engine.config import ConfigError, load_config
    from engine.daemon import DaemonConfig, DaemonError, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config_file = None
    if args.shared:
        from engine.shared import SYSTEM_CONFIG, shared_home
        from engine.shared_daemon import missing_capabilities

        missing = missing_capabilities()
        if missing:
            raise CliError(f"--shared starts runs as their users: run it as root (this process lacks "
                           f"{', '.join(missing)})")
        home = shared_home()
        config_file = None if os.environ.get("RUNYARD_CONFIG") else SYSTEM_CONFIG
    try:
        settings = load_config(config_file)
    except ConfigError as error:
        raise CliError(str(error), EXIT_BAD_INPUT) from None
    settings = _with_backend(settings, args)
    try:
        run(DaemonConfig(home=home, simulate_gpus=args.simulate_gpus, settings=settings, shared=args.shared))
    except DaemonError as error:
        raise CliError(str(error)) from None
    return 0


def _with_backend(settings, args: argparse.Namespace):
    """The config's backend and partition, with the command line's on top."""
    from dataclasses import replace

    backend = args.backend or settings.backend
    if args.partition is not None and backend != "slurm":
        raise CliError("--partition goes with the Slurm backend: runyard --daemon --backend slurm --partition P",
                       EXIT_BAD_INPUT)
    if args.partition is not None and not args.partition.strip():
        raise CliError("--partition needs a partition name (`sinfo` lists them)", EXIT_BAD_INPUT)
    slurm = replace(settings.slurm, partition=args.partition) if args.partition else settings.slurm
    return replace(settings, backend=backend, slurm=slurm)


def _run_tui(home: Home, args: argparse.Namespace) -> int:
    from runyard.tui_launch import launch_tui

    return launch_tui(home, simulate_gpus=args.simulate_gpus, demo=args.demo, theme=args.theme)


if __name__ == "__main__":
    sys.exit(main())
