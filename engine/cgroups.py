"""Per-run memory cgroups, where the machine grants them.

A run's memory envelope is enforced by sampling everywhere; a cgroup adds a hard limit
the kernel applies between samples, and tells an OOM kill from a crash for certain.

Layout: runyard makes one group per run, ``<base>/runyard-<home tag>-run-<id>``, with the
memory limit set. The shim joins it before starting the command (so every process of the
run is inside from its first instruction), goes back to ``origin`` (the group the engine
runs in) once the command has started, and empties and removes the group when the run
ends (:mod:`engine.shim`).

Which hierarchy is used, in order:

* **cgroup v2** when our own group can give its children the memory controller: it
  already does, or ``+memory`` can be written to its ``cgroup.subtree_control``. The
  kernel allows that only for a group without processes of its own ("no internal
  processes"), so in practice: the root group, or, with ``allow_move=True``, a group the
  engine is alone in (a systemd service with ``Delegate=yes``): the engine then moves
  itself into a leaf child ``runyard-engine`` first. Groups outside our own are never
  touched: under systemd they belong to systemd.
* **cgroup v1** memory hierarchy, as on hybrid setups and older distributions: children
  of our own group can always be made there.

Anything that fails makes detection answer ``None`` with a reason: the runs are then
enforced by sampling only.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from engine import shim

MOUNTINFO_PATH = "/proc/self/mountinfo"
PROC_CGROUP_PATH = "/proc/self/cgroup"
GROUP_PREFIX = "runyard-"
ENGINE_LEAF = "runyard-engine"

SLACK_MIN_BYTES = 64 << 20
SLACK_FRACTION = 1 / 16
"""The cgroup limit sits this far above the envelope. The kernel charges what RSS does
not show (page tables, socket buffers, shared memory such as a DataLoader's tensors in
/dev/shm), so a limit of exactly the envelope would kill runs that sampling, which
measures RSS, finds inside it. Sampling enforces the envelope itself; the cgroup is the
backstop against a spike between two samples."""


class CgroupError(RuntimeError):
    """A run's group could not be made; the message is one line for the run's log."""


@dataclass(frozen=True)
class CgroupRoot:
    """Where this engine can make per-run memory groups."""

    version: int
    """1 or 2."""
    base: Path
    """Run groups are made directly below this directory."""
    origin: Path
    """The group the engine (and so each shim at its start) is in: where a shim goes back
    to after starting its command."""


@dataclass(frozen=True)
class Mount:
    root: str
    """The hierarchy path mounted (``/`` unless only a subtree is visible)."""
    mountpoint: str
    fstype: str
    super_options: tuple[str, ...]


def memory_limit_bytes(envelope_mem_bytes: int) -> int:
    """The cgroup memory limit for a run whose envelope allows ``envelope_mem_bytes``."""
    return envelope_mem_bytes + max(SLACK_MIN_BYTES, int(envelope_mem_bytes * SLACK_FRACTION))


def home_tag(runs_dir: str | os.PathLike) -> str:
    """Short, stable name for one runyard home, so two homes' run 7 get different groups."""
    return hashlib.sha256(os.fsencode(os.path.abspath(runs_dir))).hexdigest()[:8]


def group_name(tag: str, run_id: int) -> str:
    return f"{GROUP_PREFIX}{tag}-run-{run_id}"


# -- reading the process's place in the hierarchies ---------------------------------------


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts in ``/proc/self/mountinfo`` text; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        before, separator, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not separator or len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] in ("cgroup", "cgroup2"):
            mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), tail[0], tuple(tail[2].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as ``{hierarchy: path}``: ``""`` for v2, else each v1
    controller (``"memory"``) by name."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def _own_dir(mount: Mount, path: str) -> Path | None:
    """Our group's directory under ``mount``; ``None`` when the mount does not show it."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    return Path(mount.mountpoint) / path[len(root) :].lstrip("/")


def _read_text(path: Path) -> str:
    with open(path, encoding="ascii", errors="replace") as file:
        return file.read()


def _write_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _why(error: OSError) -> str:
    return error.strerror or str(error)


# -- detection --------------------------------------------------------------------------


def diagnose(
    *,
    mountinfo_path: str = MOUNTINFO_PATH,
    proc_cgroup_path: str = PROC_CGROUP_PATH,
    allow_move: bool = False,
) -> tuple[CgroupRoot | None, str]:
    """Find where per-run memory groups can be made, proven by making and removing one.

    Args:
        allow_move: on cgroup v2, let the engine move itself into a leaf child of its
            group when it is alone there (the delegated-service case). Only the daemon
            should allow it: it changes the calling process's group.

    Returns:
        ``(root, how)``: ``root`` is ``None`` when no hierarchy is usable, and ``how``
        says in one line what was found (for the daemon's log and status).
    """
    try:
        mounts = parse_mountinfo(_read_text(Path(mountinfo_path)))
        paths = parse_proc_cgroup(_read_text(Path(proc_cgroup_path)))
    except OSError as error:
        return None, f"cannot read this process's cgroups ({_why(error)})"
    reasons = []
    v2 = next((mount for mount in mounts if mount.fstype == "cgroup2"), None)
    if v2 is not None and "" in paths:
        root, reason = _try_v2(v2, paths[""], allow_move)
        if root is not None:
            return root, f"cgroup v2 at {root.base}"
        reasons.append(f"cgroup v2: {reason}")
    else:
        reasons.append("cgroup v2: not mounted")
    v1 = next((m for m in mounts if m.fstype == "cgroup" and "memory" in m.super_options), None)
    if v1 is not None and "memory" in paths:
        root, reason = _try_v1(v1, paths["memory"])
        if root is not None:
            return root, f"cgroup v1 memory at {root.base} ({reasons[0]})"
        reasons.append(f"cgroup v1: {reason}")
    else:
        reasons.append("cgroup v1: no memory hierarchy mounted")
    return None, "; ".join(reasons)


def detect(**options) -> CgroupRoot | None:
    """:func:`diagnose` without the explanation."""
    return diagnose(**options)[0]


def _try_v2(mount: Mount, path: str, allow_move: bool) -> tuple[CgroupRoot | None, str]:
    own = _own_dir(mount, path)
    if own is None:
        return None, f"our group {path} is outside the mount at {mount.mountpoint}"
    try:
        if "memory" not in _read_text(own / "cgroup.controllers").split():
            return None, f"{own} has no memory controller (it may be bound to cgroup v1)"
        origin = own
        if "memory" not in _read_text(own / "cgroup.subtree_control").split():
            enabled = _enable_memory(own)
            if enabled is not None and allow_move:
                origin, enabled = _move_into_leaf(own)
            if enabled is not None:
                return None, enabled
    except OSError as error:
        return None, f"cannot read {own} ({_why(error)})"
    problem = _probe(own, version=2)
    if problem:
        return None, problem
    return CgroupRoot(2, own, origin), ""


def _enable_memory(group: Path) -> str | None:
    try:
        _write_text(group / "cgroup.subtree_control", "+memory")
    except OSError as error:
        hint = " (it holds processes)" if error.errno == errno.EBUSY else ""
        return f"cannot enable the memory controller below {group}{hint}: {_why(error)}"
    return None


def _move_into_leaf(own: Path) -> tuple[Path, str | None]:
    """Move the engine into ``own/runyard-engine`` so ``own`` may pass the memory
    controller to run groups; only when nobody else is in ``own``."""
    others = (shim.cgroup_pids(str(own)) or set()) - {os.getpid()}
    if others:
        return own, f"cannot enable the memory controller below {own}: {len(others)} other processes are in it"
    leaf = own / ENGINE_LEAF
    try:
        leaf.mkdir(exist_ok=True)
        _write_text(leaf / "cgroup.procs", "0")
    except OSError as error:
        return own, f"cannot move the engine into {leaf}: {_why(error)}"
    return leaf, _enable_memory(own)


def _try_v1(mount: Mount, path: str) -> tuple[CgroupRoot | None, str]:
    own = _own_dir(mount, path)
    if own is None:
        return None, f"our group {path} is outside the mount at {mount.mountpoint}"
    problem = _probe(own, version=1)
    if problem:
        return None, problem
    return CgroupRoot(1, own, own), ""


def _probe(base: Path, *, version: int) -> str:
    """Make, limit and remove a throwaway group; empty when all of it worked."""
    probe = base / f"{GROUP_PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError as error:
        return f"cannot make a group in {base} ({_why(error)})"
    try:
        _limit(probe, version, memory_limit_bytes(0))
    except OSError as error:
        return f"cannot set a memory limit in {base} ({_why(error)})"
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass
    return ""


def _limit(group: Path, version: int, limit_bytes: int) -> None:
    """Set the memory limit, with no swap on top of it where the kernel offers that."""
    if version == 2:
        _write_text(group / "memory.max", str(limit_bytes))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            # oom.group: an OOM kill takes the whole run, not one worker that the
            # main process may then wait for forever.
            if (group / name).exists():
                _write_text(group / name, value)
    else:
        # memsw is memory + swap and may never be below the memory limit: lowering goes
        # memory first, raising (a group reused with an older, smaller limit) memsw first.
        swap = group / "memory.memsw.limit_in_bytes"
        try:
            _write_text(group / "memory.limit_in_bytes", str(limit_bytes))
        except OSError as error:
            if error.errno != errno.EINVAL or not swap.exists():
                raise
            _write_text(swap, str(limit_bytes))
            _write_text(group / "memory.limit_in_bytes", str(limit_bytes))
        if swap.exists():
            try:
                _write_text(swap, str(limit_bytes))
            except OSError:
                pass  # swap accounting is off: nothing to limit


# -- one run's group ----------------------------------------------------------------------


def create_run_group(root: CgroupRoot, name: str, limit_bytes: int) -> Path:
    """Make (or reset, when left over from an earlier attempt) the run's group.

    Raises:
        CgroupError: the group cannot be made or limited.
    """
    group = root.base / name
    try:
        group.mkdir(exist_ok=True)
    except OSError as error:
        raise CgroupError(f"cannot make the cgroup {group}: {_why(error)}") from None
    try:
        _limit(group, root.version, limit_bytes)
    except OSError as error:
        remove_run_group(group)
        raise CgroupError(f"cannot set the memory limit of {group}: {_why(error)}") from None
    return group


@dataclass(frozen=True)
class GroupEnd:
    oom_kills: int | None
    peak_mem_bytes: int | None
    removed: bool


def remove_run_group(group: str | os.PathLike, *, timeout_s: float = shim.CGROUP_EMPTY_TIMEOUT_S) -> GroupEnd:
    """Kill what is left in a run's group, read its record, remove it. For groups the
    shim could not remove (it died, or could not leave); safe on a missing group."""
    path = os.fspath(group)
    if not os.path.isdir(path):
        return GroupEnd(None, None, True)
    emptied = shim.empty_cgroup(path, timeout_s)
    end = GroupEnd(shim.cgroup_oom_kills(path), shim.cgroup_peak_bytes(path), False)
    if emptied and shim.remove_cgroup(path, timeout_s):
        return GroupEnd(end.oom_kills, end.peak_mem_bytes, True)
    return end


def sweep(root: CgroupRoot, tag: str) -> int:
    """Remove this home's run groups that are empty: left by shims that died. Call at
    daemon start, before any launch (a group is empty between its creation and its
    shim joining it). The kernel refuses to remove a group with processes, so a live
    run's group is never touched. Returns how many were removed."""
    removed = 0
    try:
        entries = list(root.base.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(f"{GROUP_PREFIX}{tag}-run-"):
            try:
                entry.rmdir()
                removed += 1
            except OSError:
                continue
    return removed
