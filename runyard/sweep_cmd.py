"""``runyard sweep`` and ``runyard rerun``: runs queued from a template or from an earlier run."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

from engine import gitfacts, provenance
from engine.client import DaemonUnavailable
from engine.paths import Home
from engine.protocol import EXIT_BAD_INPUT
from runyard import cli
from runyard.sweep import SweepError, check_placeholders, combinations, fill, parse_params


def cmd_sweep(home: Home, args: argparse.Namespace) -> int:
    try:
        params = parse_params(args.param)
        argv = args.argv[1:] if args.argv[:1] == ["--"] else list(args.argv)
        if not argv:
            raise SweepError("missing command: runyard sweep --param NAME=VALUES [options] -- CMD ... {NAME} ...")
        check_placeholders(argv, params, also={"--name": args.name} if args.name else None)
        if args.sample_seed is not None and args.random is None:
            raise SweepError("--sample-seed seeds the --random draw; add --random K")
        sample_seed = args.sample_seed
        if args.random is not None and sample_seed is None:
            # Drawn here and recorded with the group, so even an unseeded draw can be repeated.
            sample_seed = random.SystemRandom().randrange(2**31)
        chosen = combinations(params, random_k=args.random, sample_seed=sample_seed)
        seeds = [_seed_of(values, args.seed) for values in chosen]
    except SweepError as error:
        print(f"runyard sweep: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    base = cli._submit_request(args)
    if args.checkpoint_dir:
        base["checkpoint_dir"] = os.path.abspath(args.checkpoint_dir)
    base["group"] = None  # the group is made with the runs, in the same transaction
    cli._add_git_facts(base)
    git_diff = base.pop("git_diff")
    requests = [
        {**base, "argv": [fill(part, values) for part in base["argv"]],
         "name": fill(args.name, values) if args.name else None, "params": values, "seed": seed}
        for values, seed in zip(chosen, seeds)
    ]
    group = {"name": args.group, "kind": "sweep", "definition": {
        "params": params, "argv": base["argv"], "random": args.random, "sample_seed": sample_seed, "runs": len(chosen),
    }}
    try:
        runs = cli._client(home).call("submit_many", runs=requests, group=group, git_diff=git_diff)
        offline = False
    except DaemonUnavailable:
        runs = _sweep_offline(home, requests, group, git_diff)
        offline = True
    name = runs[0]["group"]
    if args.json:
        print(json.dumps({"group": name, "sample_seed": sample_seed, "runs": runs}, indent=2))
    else:
        drawn = f", drawn with --sample-seed {sample_seed}" if args.random is not None else ""
        print(f"{name}: {len(runs)} runs queued ({', '.join(str(run['id']) for run in runs)}){drawn}")
        print(f"see them with `runyard ls --group {name}`")
    if offline:
        print(f"runyard: no engine is running: {cli.NO_ENGINE_HINT}", file=sys.stderr)
    return 0


def _seed_of(values: dict[str, str], default: int | None) -> int | None:
    """A ``seed`` parameter is the run's seed (RUNYARD_SEED) when it is a whole number."""
    text = values.get("seed")
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise SweepError(f"--param seed={text}: a seed is a whole number") from None


def _sweep_offline(home: Home, requests: list[dict], group: dict, git_diff: str | None) -> list[dict[str, Any]]:
    from engine.config import ConfigError, load_config
    from engine.groups import GroupExists
    from engine.protocol import RequestError
    from engine.store.runs import RunStore

    try:
        defaults = load_config().default_envelope
        prepared = [cli._offline_spec({**request, "git_diff": git_diff}, defaults) for request in requests]
    except RequestError as error:
        raise cli.CliError(str(error), error.code) from None
    except ConfigError as error:
        raise cli.CliError(str(error), EXIT_BAD_INPUT) from None
    home.ensure()
    conn = cli._open_db(home, create=True)
    try:
        runs = RunStore(conn, home.runs_dir).submit_many(
            [spec for spec, _ in prepared], now=time.time(), uid=os.getuid(), user=cli._current_user(), group=group,
        )
    except GroupExists as error:
        raise cli.CliError(str(error), EXIT_BAD_INPUT) from None
    finally:
        conn.close()
    for run, (_, diff) in zip(runs, prepared):
        cli._save_diff_offline(run.run_dir, diff)
    return [run.to_json() for run in runs]


# ------------------------------------------------------------------------ rerun


def cmd_rerun(home: Home, args: argparse.Namespace) -> int:
    run = cli._get_run(home, args.id)
    record = run.get("provenance") or {}
    request = {
        "argv": run["argv"], "cwd": run["cwd"], "env": run["env"],
        # As first submitted: a retry may have grown the run's envelope since.
        "envelope": record.get("envelope") or run["envelope"],
        "grace_s": run["grace_s"], "on_overrun": run["on_overrun"], "retry": run["retry_policy"],
        "health": run.get("health_policy"), "priority": run["priority"], "seed": run["seed"],
        "params": run["params"],
        # A name the engine made up ends in the old run's id; the new run gets its own.
        "name": None if run["name"].endswith(f"-{run['id']}") else run["name"],
    }
    git, diff = gitfacts.capture_git(run["cwd"])
    for warning in _code_warnings(home, run, record, git):
        print(f"runyard rerun: warning: {warning}", file=sys.stderr)
    request["provenance"] = {"git": git}
    request["git_diff"] = gitfacts.encode_diff(diff)
    try:
        new = cli._client(home).call("submit", **request)
    except DaemonUnavailable:
        new = cli._submit_offline(home, request)
        print(f"runyard: queued run {new['id']}, but no engine is running: {cli.NO_ENGINE_HINT}", file=sys.stderr)
    if args.json:
        print(json.dumps(new, indent=2))
    else:
        print(new["id"])
    return 0


def _code_warnings(home: Home, run: dict[str, Any], record: dict[str, Any], git: dict | None) -> list[str]:
    """How the working tree now differs from what the run ran."""
    if not record:
        return [f"run {run['id']} has no provenance record; cannot check that the code is the same"]
    then, now = record.get("git") or {}, git or {}
    if not then.get("commit") and not now.get("commit"):
        return []
    changes = provenance.drift({"commit": then.get("commit"), "diff": then.get("diff_sha256")},
                    {"commit": now.get("commit"), "diff": now.get("diff_sha256")})
    if not changes:
        return []
    hint = f"`git checkout {then['commit'][:12]}`" if then.get("commit") else ""
    saved = home.run_dir(run["id"]) / gitfacts.DIFF_FILE
    if then.get("diff_sha256") and saved.exists():
        hint += (" then " if hint else "") + f"`git apply {saved}`"
    return [f"{run['cwd']} differs from run {run['id']}'s record: {'; '.join(changes)}"
            + (f" (to run the same code: {hint})" if hint else "")]
