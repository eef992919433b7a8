"""Validation of a submit request, shared by the daemon and the CLI's offline path.

Light imports only: ``runyard submit`` loads this when no daemon is running.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from engine.envelope import Envelope, EnvelopeError
from engine.model import ON_OVERRUN_CHOICES, RunSpec
from engine.protocol import RequestError
from engine.retry import RetryPolicy, RetryPolicyError


def spec_from_request(args: dict[str, Any], default_envelope: dict[str, Any] | None = None) -> RunSpec:
    """Validate a submit request; raises :class:`RequestError` with a one-line message.

    ``args["envelope"]`` holds only what the submitter said; the rest comes from
    ``default_envelope`` (the config's ``[defaults]``), then from :class:`Envelope`'s own.
    ``args["options"]``, the command line's options as typed, is read first (see
    :func:`request_from_options`).
    """
    if args.get("options") is not None:
        args = {**args, **request_from_options(args["options"])}
    argv = args.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(part, str) for part in argv):
        raise RequestError("missing command: runyard submit [options] -- CMD [ARGS...]")
    cwd = args.get("cwd")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise RequestError("cwd must be an absolute path")
    if not os.path.isdir(cwd):
        raise RequestError(f"cwd {cwd} is not a directory; pass --cwd with one that exists")
    env = args.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise RequestError("env must map names to strings")
    program = resolve_program(argv[0], cwd, env.get("PATH"))
    if program is None:
        raise RequestError(
            f"command not found: {argv[0]} (not on PATH and no such file in {cwd}); give its full path"
        )
    try:
        given = args.get("envelope") or {}
        if not isinstance(given, dict):
            raise TypeError("envelope must be an object")
        envelope = Envelope.from_dict({**(default_envelope or {}), **given})
    except (EnvelopeError, TypeError) as error:
        raise RequestError(str(error)) from None
    try:
        priority = int(args.get("priority") or 0)
        grace_s = float(args.get("grace_s", 30.0))
    except (TypeError, ValueError):
        raise RequestError("priority must be a whole number and grace a duration") from None
    if grace_s < 0:
        raise RequestError("--grace cannot be negative")
    name = args.get("name")
    if name is not None and not isinstance(name, str):
        raise RequestError("name must be text")
    on_overrun = args.get("on_overrun") or "default"
    if on_overrun not in ON_OVERRUN_CHOICES:
        raise RequestError(f"--on-overrun must be one of {', '.join(ON_OVERRUN_CHOICES)}, got {on_overrun!r}")
    try:
        retry = RetryPolicy.from_dict(args.get("retry"))
    except (RetryPolicyError, TypeError, ValueError) as error:
        raise RequestError(f"retry: {error}") from None
    if retry.warn_before_s is not None and envelope.time_limit_s is None:
        raise RequestError("--signal SIG@TIME warns before the time limit: give --time too")
    checkpoint_dir = args.get("checkpoint_dir")
    if checkpoint_dir is not None and (not isinstance(checkpoint_dir, str) or not os.path.isabs(checkpoint_dir)):
        raise RequestError("checkpoint_dir must be an absolute path")
    seed = _seed(args.get("seed"))
    if seed is not None:
        env = {**env, "RUNYARD_SEED": str(seed)}
    return RunSpec(
        argv=tuple(argv), cwd=cwd, env=env, name=name or None, priority=priority,
        envelope=envelope, grace_s=grace_s, held=bool(args.get("held", False)), on_overrun=on_overrun,
        retry=retry, checkpoint_dir=checkpoint_dir, depends_on=_dependencies(args.get("after")),
        start_at=_start_at(args.get("at")), group=_text_or_none(args.get("group"), "group"),
        health=_health(args.get("health")), seed=seed, params=_params(args.get("params")),
    )


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"--seed must be a whole number, got {value!r}")
    return value


def _params(value: Any) -> dict[str, str] | None:
    if not value:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RequestError("params must map names to strings")
    return dict(value)


def _dependencies(value: Any) -> tuple[tuple[int, str], ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise RequestError("after must be a list of [run id, 'ok' | 'any']")
    deps = []
    for item in value:
        if (
            not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool)
            or not isinstance(item[0], int) or item[1] not in ("ok", "any")
        ):
            raise RequestError(f"--after {item!r}: write ID, ID:ok or ID:any")
        deps.append((item[0], item[1]))
    return tuple(deps)


def _start_at(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError("at must be a Unix time")
    return float(value)


def _text_or_none(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestError(f"{what} must be text")
    return value


def _health(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    from engine.health import HealthPolicy, HealthPolicyError

    try:
        return HealthPolicy.from_dict(value).to_dict()
    except (HealthPolicyError, TypeError, ValueError) as error:
        raise RequestError(f"health: {error}") from None


def resolve_program(program: str, cwd: str, path: str | None) -> str | None:
    """Where ``program`` would be found when the run starts in ``cwd`` with ``PATH``."""
    if "/" in program:
        candidate = os.path.join(cwd, program)
        return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    return shutil.which(program, path=path if path is not None else os.defpath)


ENVELOPE_OPTIONS = {
    "cpus": "cpus", "mem": "mem_bytes", "gpus": "gpus", "gpu_mem": "gpu_mem_bytes", "disk": "disk_bytes",
    "time": "time_limit_s", "res": "resources",
}
"""``runyard submit``'s envelope options, and the envelope field each one sets."""

TEXT_OPTIONS = (
    *ENVELOPE_OPTIONS, "grace", "retries", "backoff", "retry_on", "no_retry_on", "grow_on_oom", "warn_signal",
    "requeue", "stall_timeout", "on_stall", "health_cmd", "health_interval", "health_retries", "health_timeout",
    "health_start_period",
)
"""The options ``runyard submit`` sends as typed, for the engine to parse: the parsers
(envelope, units, retry, health) cost the CLI more to import than the rest of a submit,
and the engine has them loaded anyway."""


def request_from_options(options: Any) -> dict[str, Any]:
    """The request fields (``envelope`` with only what was given, ``grace_s``, ``retry``,
    ``health``) that the command line's options say; raises :class:`RequestError` with
    the parser's own one-line message, as the CLI printed it when it parsed them itself."""
    from engine.envelope import DEFAULT_GRACE_S
    from engine.health import HealthPolicyError, policy_from_options
    from engine.retry import DEFAULT_BACKOFF, parse_backoff, parse_codes, parse_warn_signal
    from engine.units import UnitError, parse_duration

    if not isinstance(options, dict) or set(options) - set(TEXT_OPTIONS):
        unknown = sorted(set(options) - set(TEXT_OPTIONS)) if isinstance(options, dict) else options
        raise RequestError(f"options: not understood: {unknown!r}; is the engine older than the CLI?")
    given = {name: value for name, value in options.items() if value is not None and value is not False and value != []}
    get = given.get
    try:
        envelope = Envelope.parse(cpus=get("cpus"), mem=get("mem"), gpus=get("gpus"), gpu_mem=get("gpu_mem"),
                                  disk=get("disk"), time=get("time"), res=get("res"))
        grace_s = parse_duration(get("grace")) if get("grace") is not None else DEFAULT_GRACE_S
        backoff = parse_backoff(get("backoff")) if get("backoff") else DEFAULT_BACKOFF
        warn_signal, warn_before_s = parse_warn_signal(get("warn_signal")) if get("warn_signal") else (None, None)
        retry = RetryPolicy(
            retries=get("retries") or 0, backoff_min_s=backoff[0], backoff_max_s=backoff[1],
            retry_on=parse_codes(get("retry_on"), "--retry-on"),
            no_retry_on=parse_codes(get("no_retry_on"), "--no-retry-on"),
            grow_on_oom=get("grow_on_oom"), requeue=bool(get("requeue")), warn_signal=warn_signal,
            warn_before_s=warn_before_s,
        )
        retry.check()
        health = policy_from_options(
            stall_timeout=get("stall_timeout"), on_stall=get("on_stall"), health_cmd=get("health_cmd"),
            health_interval=get("health_interval"), health_retries=get("health_retries"),
            health_timeout=get("health_timeout"), health_start_period=get("health_start_period"),
        )
    except (EnvelopeError, UnitError, RetryPolicyError, HealthPolicyError) as error:
        raise RequestError(str(error)) from None
    except (TypeError, ValueError) as error:  # a value of the wrong type: not from our CLI
        raise RequestError(f"options: {error}") from None
    parsed = envelope.to_dict()
    return {
        "envelope": {field: parsed[field] for option, field in ENVELOPE_OPTIONS.items()
                     if option in given and field in parsed},
        "grace_s": grace_s,
        "retry": retry.to_dict(),
        "health": health.to_dict() if health else None,
    }
