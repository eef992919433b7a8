"""Provenance: what a run was, recorded once when it is queued and never changed.

Who reads what, and why there:

- The git facts of the run's working tree (commit, branch, dirty state, a hash of the
  uncommitted diff) are read by the submitting client (:mod:`engine.gitfacts`). The
  engine's loop serves every client and supervises every run, so a ``git status`` in a
  huge repository must not stall it; a sweep's N runs share one reading; and the CLI's offline
  submit needs the same code anyway. The daemon sees the same cwd path, so a request that
  comes without git facts (the TUI's form, a ``--cron`` firing, an older client) has them
  read by the daemon instead, with the same short timeout.
- Everything else follows from the run's spec (argv, cwd, environment, envelope, seed,
  parameters) or is cheap (the interpreter the run will use and a hash of its installed
  package set: one directory listing, cached by the directories' mtimes) and is put
  together by whoever inserts the run, :func:`finish`: the daemon, which alone has NVML
  open for driver and CUDA versions, or the CLI's offline submit (no versions: null).

Stdlib only; the CLI's offline submit imports this (with an engine running, ``runyard
submit`` imports only :mod:`engine.gitfacts`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.gitfacts import DIFF_FILE, MAX_SAVED_DIFF_BYTES, capture_git, decode_diff

SECRET_NAME = re.compile("TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
MASK = "***"
PYTHON_NAME = re.compile(r"python[0-9.]*")

DRIFT_PATHS = {
    "commit": ("git", "commit"),
    "diff": ("git", "diff_sha256"),
    "packages": ("python", "packages_sha256"),
    "driver": ("driver_version",),
}
"""What may differ silently between runs of one group. The same paths are read in SQL
(``json_extract``) by :mod:`engine.groups`, so a group table never parses whole records."""


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment with the values of secret-looking names hidden."""
    return {name: MASK if SECRET_NAME.search(name) else value for name, value in env.items()}


# -------------------------------------------------------------------------- python


def interpreter(argv: tuple[str, ...] | list[str], cwd: str, env: Mapping[str, str]) -> str | None:
    """The Python the run will use: its program when that is Python, or the interpreter
    named in its script's ``#!`` line (``torchrun``, ``accelerate``), else ``python3`` on
    the run's PATH."""
    from engine.submission import resolve_program

    path = env.get("PATH")
    program = resolve_program(argv[0], cwd, path) if argv else None
    if program and PYTHON_NAME.fullmatch(os.path.basename(program)):
        return program
    if program:
        shebang = _shebang(program)
        if shebang and os.path.basename(shebang[0]) == "env" and len(shebang) > 1:
            shebang = [shutil.which(shebang[1], path=path or os.defpath) or shebang[1]]
        if shebang and PYTHON_NAME.fullmatch(os.path.basename(shebang[0])):
            return shebang[0]
    return shutil.which("python3", path=path if path is not None else os.defpath)


def _shebang(program: str) -> list[str] | None:
    try:
        with open(program, "rb") as script:
            first = script.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    return first[2:].decode(errors="replace").split() or None


def python_facts(executable: str | None) -> dict[str, Any] | None:
    """The interpreter's path and version and a hash of its installed package set."""
    if executable is None:
        return None
    # A venv's bin/python is a symlink to the base interpreter: its prefix is the venv,
    # found from the path as written, not as resolved.
    prefix = Path(os.path.abspath(executable)).parent.parent
    venv = _read_pyvenv(prefix / "pyvenv.cfg")
    real = os.path.realpath(executable)
    if venv is None:
        prefix = Path(real).parent.parent
    version = (venv or {}).get("version") or (venv or {}).get("version_info")
    if version is None and real == os.path.realpath(sys.executable):
        version = ".".join(map(str, sys.version_info[:3]))
    if version is None:
        match = re.fullmatch(r"python(\d+\.\d+)", os.path.basename(real))
        version = match.group(1) if match else None
    site_dirs = sorted(
        str(path) for pattern in ("lib/python*/site-packages", "lib/python*/dist-packages",
                                  "local/lib/python*/dist-packages")
        for path in prefix.glob(pattern) if path.is_dir()
    )
    digest, count = package_set(tuple(site_dirs))
    return {"executable": executable, "version": version, "site_packages": site_dirs,
            "packages_sha256": digest, "packages": count}


def _read_pyvenv(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    pairs = (line.partition("=") for line in text.splitlines())
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


_package_cache: dict[tuple, tuple[str | None, int]] = {}


def package_set(site_dirs: tuple[str, ...]) -> tuple[str | None, int]:
    """``(sha256, count)`` of the distributions installed in ``site_dirs``.

    From the ``*.dist-info`` / ``*.egg-info`` names (which carry the version) and their
    mtimes (a reinstall of the same version is a change too), plus ``.pth`` files
    (editable installs): a directory listing, no imports, no metadata parsing. Cached by
    the directories' own mtimes, which change whenever an entry is added or removed.
    """
    if not site_dirs:
        return None, 0
    try:
        key = tuple((directory, os.stat(directory).st_mtime_ns) for directory in site_dirs)
    except OSError:
        return None, 0
    if key in _package_cache:
        return _package_cache[key]
    lines, count = [], 0
    for directory in site_dirs:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith((".dist-info", ".egg-info")):
                count += 1
            elif not entry.name.endswith(".pth"):
                continue
            try:
                lines.append(f"{entry.name}\t{entry.stat(follow_symlinks=False).st_mtime_ns}")
            except OSError:
                continue
    result = (hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest(), count)
    _package_cache[key] = result
    return result


# ------------------------------------------------------------------------- records


def finish(
    spec: Any,
    git: dict[str, Any] | None,
    *,
    user: str | None,
    gpu: Mapping[str, str | None] | None,
    runyard_version: str,
) -> dict[str, Any]:
    """The whole record of a run about to be queued (``spec`` is an
    :class:`engine.model.RunSpec`), sealed with its hash.

    argv, cwd, environment, envelope, seed and parameters come from the spec itself, so
    the record says what the run really is, whatever a client sent along.
    """
    record = {
        "argv": list(spec.argv),
        "cwd": spec.cwd,
        "env": mask_env(spec.env),
        "git": git,
        "python": python_facts(interpreter(spec.argv, spec.cwd, spec.env)),
        "driver_version": (gpu or {}).get("driver"),
        "cuda_version": (gpu or {}).get("cuda"),
        "host": socket.gethostname(),
        "user": user,
        "envelope": spec.envelope.to_dict(),
        "seed": spec.seed,
        "params": spec.params,
        "runyard_version": runyard_version,
    }
    return seal(record)


def prepare(
    spec: Any,
    args: Mapping[str, Any],
    *,
    user: str | None,
    gpu: Mapping[str, str | None] | None,
    runyard_version: str,
    captured: dict[str, tuple] | None = None,
    read_git: bool = True,
) -> tuple[Any, bytes | None]:
    """``spec`` with its sealed record, and the diff to save once the run has a folder.

    The git facts are the client's (``args["provenance"]["git"]``, the diff base64 in
    ``args["git_diff"]``) when it sent them; otherwise read here, once per cwd in
    ``captured`` (a batch's runs share a working tree), unless ``read_git`` is false.
    """
    from dataclasses import replace

    from engine.protocol import RequestError

    given = args.get("provenance")
    if isinstance(given, Mapping) and "git" in given:
        git = given["git"]
        if git is not None and not isinstance(git, Mapping):
            raise RequestError("provenance.git must be an object or null")
        diff = decode_diff(args.get("git_diff"))
        if diff is not None and (git or {}).get("diff_sha256") != hashlib.sha256(diff).hexdigest():
            diff = None  # not the diff the facts describe: saving it would mislead
    elif not read_git:
        git, diff = {"error": "not read by a shared engine; `runyard submit` records it"}, None
    else:
        memo = captured if captured is not None else {}
        if spec.cwd not in memo:
            memo[spec.cwd] = capture_git(spec.cwd)
        git, diff = memo[spec.cwd]
    record = finish(spec, dict(git) if git is not None else None, user=user, gpu=gpu,
                    runyard_version=runyard_version)
    return replace(spec, provenance=record), diff


def digest(record: Mapping[str, Any]) -> str:
    """sha256 over the record's canonical JSON, its own ``sha256`` left out."""
    body = {key: value for key, value in record.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(record: Mapping[str, Any]) -> dict[str, Any]:
    return {**record, "sha256": digest(record)}


def verify(record: Mapping[str, Any]) -> bool:
    return record.get("sha256") == digest(record)


def save_diff(run_dir: str | Path | None, diff: bytes | None) -> Path | None:
    """Keep the uncommitted diff beside the run's log (``git apply`` takes it back)."""
    if not diff or run_dir is None or len(diff) > MAX_SAVED_DIFF_BYTES:
        return None
    path = Path(run_dir) / DIFF_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(diff)
    os.replace(temporary, path)
    return path


# --------------------------------------------------------------------------- drift


def fingerprint(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The values of :data:`DRIFT_PATHS` in a record."""
    if not record:
        return None
    found = {}
    for name, path in DRIFT_PATHS.items():
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        found[name] = value
    return found


def drift(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[str]:
    """What differs between two fingerprints, one phrase each; ``[]`` when nothing does
    or either is unknown (a run queued before provenance existed)."""
    if not baseline or not current:
        return []
    changes = []
    if baseline.get("commit") != current.get("commit"):
        changes.append(f"commit {_short(baseline.get('commit'))} -> {_short(current.get('commit'))}")
    if baseline.get("diff") != current.get("diff"):
        if not baseline.get("diff"):
            changes.append("uncommitted changes appeared")
        elif not current.get("diff"):
            changes.append("uncommitted changes gone")
        else:
            changes.append(f"uncommitted diff {_short(baseline['diff'])} -> {_short(current['diff'])}")
    if baseline.get("packages") != current.get("packages"):
        changes.append("installed packages changed")
    # Unknown is not different: a run queued with no engine running has no driver reading.
    if None not in (baseline.get("driver"), current.get("driver")) and baseline["driver"] != current["driver"]:
        changes.append(f"driver {baseline['driver']} -> {current['driver']}")
    return changes


def _short(value: Any) -> str:
    return str(value)[:12] if value else "none"
