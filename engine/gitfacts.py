"""The git facts of a run's working tree, read where the tree is (see :mod:`engine.provenance`).

``runyard submit`` imports this on every call, so it stays small: ``subprocess`` loads only
inside a repository, hashlib and base64 only for a dirty tree.
"""

from __future__ import annotations

import os
from typing import Any

GIT_TIMEOUT_S = 2.0
"""Per git call. A repository that takes longer is recorded with the error, not waited for."""
DIFF_FILE = "git.diff"
"""The uncommitted diff, saved in the run's folder beside its log."""
MAX_SAVED_DIFF_BYTES = 8 << 20
"""A bigger diff is hashed and measured but not saved (it would be sent with every request)."""
UNTRACKED_LISTED = 50


def capture_git(cwd: str) -> tuple[dict[str, Any] | None, bytes | None]:
    """The repository at ``cwd`` and its uncommitted diff; ``(None, None)`` outside one.

    Returns:
        ``({"commit", "branch", "dirty", "diff_sha256", "diff_bytes", "untracked",
        "untracked_count"}, diff)``, or ``({"error": ...}, None)`` when git could not tell.
    """
    if not _in_repository(cwd):
        return None, None
    status_git = _git_start(cwd, "status", "--porcelain=v2", "--branch", "-z")
    # Started beside `git status`, not after it: a dirty tree (the usual one while
    # experimenting) then costs every submit one git's time, not two. In a clean tree its
    # (empty) output is dropped.
    diff_git = _git_start(cwd, *DIFF_ARGS)
    status, error = _git_wait(status_git, "status")
    if status is None:
        _git_drop(diff_git)
        return (None if error is None else {"error": error}), None
    facts: dict[str, Any] = {"commit": None, "branch": None, "dirty": False}
    untracked: list[str] = []
    for entry in status.split(b"\0"):
        if entry.startswith(b"# branch.oid "):
            oid = entry[len(b"# branch.oid "):].decode()
            facts["commit"] = None if oid == "(initial)" else oid
        elif entry.startswith(b"# branch.head "):
            head = entry[len(b"# branch.head "):].decode(errors="replace")
            facts["branch"] = None if head == "(detached)" else head
        elif entry[:2] in (b"1 ", b"2 ", b"u "):
            facts["dirty"] = True
        elif entry.startswith(b"? "):
            untracked.append(entry[2:].decode(errors="replace"))
    diff = None
    if facts["dirty"] and facts["commit"]:
        diff, error = _git_wait(diff_git, "diff")
        if diff is None:
            facts["diff_error"] = error
    else:
        _git_drop(diff_git)
    if diff:
        import hashlib

        facts["diff_sha256"] = hashlib.sha256(diff).hexdigest()
    else:
        facts["diff_sha256"] = None
    facts["diff_bytes"] = len(diff) if diff else 0
    facts["untracked"] = sorted(untracked)[:UNTRACKED_LISTED]
    facts["untracked_count"] = len(untracked)
    return facts, diff


def _in_repository(cwd: str) -> bool:
    """Whether git could find a repository from ``cwd``: a few stats, where asking git
    would cost a process (and, here, loading :mod:`subprocess`) for every submit
    outside one."""
    if os.environ.get("GIT_DIR"):
        return True
    path = os.path.abspath(cwd)
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


DIFF_ARGS = ("diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", "--no-textconv")
"""Against HEAD: staged and unstaged changes alike. No external diff tools or textconv
filters: the bytes must be what `git apply` takes back."""


def _git(cwd: str, *args: str) -> tuple[bytes | None, str | None]:
    """``(stdout, None)``, or ``(None, why)``; ``(None, None)`` means "not a repository"."""
    return _git_wait(_git_start(cwd, *args), args[0])


def _git_start(cwd: str, *args: str) -> Any:
    """A running git (see :func:`_git_wait`), or already its outcome when it could not start."""
    import subprocess

    # No optional locks: `git status` would otherwise refresh the index, and could trip
    # over (or hold up) a commit the user is making at that moment.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        return subprocess.Popen(["git", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        return None, None  # no git on this machine: nothing to record
    except OSError as error:
        return None, f"git {args[0]}: {error.strerror}"


def _git_wait(started: Any, what: str) -> tuple[bytes | None, str | None]:
    import subprocess

    if isinstance(started, tuple):
        return started
    try:
        out, err = started.communicate(timeout=GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _git_drop(started)
        return None, f"git {what} took over {GIT_TIMEOUT_S:g}s"
    if started.returncode == 0:
        return out, None
    message = err.decode(errors="replace").strip().splitlines()
    if message and "not a git repository" in message[0]:
        return None, None
    return None, (message[0] if message else f"git {what} exited {started.returncode}")


def _git_drop(started: Any) -> None:
    if isinstance(started, tuple):
        return
    started.kill()
    started.communicate()


def encode_diff(diff: bytes | None) -> str | None:
    """For a request: the diff's bytes survive JSON only as text."""
    import base64

    if not diff or len(diff) > MAX_SAVED_DIFF_BYTES:
        return None
    return base64.b64encode(diff).decode("ascii")


def decode_diff(text: Any) -> bytes | None:
    import base64
    import binascii

    if not isinstance(text, str) or not text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
