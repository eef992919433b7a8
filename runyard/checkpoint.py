"""Checkpoints for a training script: saved atomically, a few kept, resumed with one call.

A training script imports this module (never ``engine``; many ML repositories have an
``engine.py`` of their own)::

    from runyard import checkpoint

    resumed = checkpoint.load_latest()          # None on a fresh start
    if resumed is not None:
        model.load_state_dict(resumed.state["model"])
        start_step = resumed.step
    ...
    checkpoint.save({"model": model.state_dict()}, step, metrics={"val_loss": v}, best_metric="val_loss")

Where checkpoints live: ``RUNYARD_CHECKPOINT_DIR`` when runyard started the run (the engine
sets it per run, the same for every attempt, and looks there for checkpoints); otherwise the
``directory`` argument; otherwise ``./checkpoints``. On a retried attempt the engine sets
``RUNYARD_RESUME_FROM`` to the checkpoint it chose, and :func:`load_latest` prefers it.

On disk one checkpoint is two files side by side::

    ckpt-000000001200-1f3a9c0d.pt     the payload: .pt (torch.save), .pkl (pickle) or .bin (raw bytes)
    ckpt-000000001200-1f3a9c0d.json   its metadata record

The metadata record is written after the payload is complete and durable, so it is the
commit: a payload without its record, a record without its payload (or with a payload of
another size), and temporary files (``.ckpt-*.tmp``) are never taken for a checkpoint.
Each save gets a fresh name (step plus a random tag), so a checkpoint is never rewritten
in place, even when a resumed run saves the same step again.

One process writes to a folder at a time. The module imports only the standard library;
torch is imported when a state holds torch objects, when asked for, or when loading a
``.pt`` payload. The engine calls :func:`list_checkpoints`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import operator
import os
import pickle
import secrets
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

CHECKPOINT_DIR_ENV = "RUNYARD_CHECKPOINT_DIR"
RESUME_FROM_ENV = "RUNYARD_RESUME_FROM"
DEFAULT_DIRECTORY = "checkpoints"
RECORD_VERSION = 1

PREFIX = "ckpt-"
METADATA_SUFFIX = ".json"
PAYLOAD_SUFFIXES = {"torch": ".pt", "pickle": ".pkl", "bytes": ".bin"}
TEMP_SUFFIX = ".tmp"

LEFTOVER_GRACE_S = 600.0
"""Age after which a temporary file or a payload with no record is swept, whoever wrote it.
A write in progress keeps touching its file, so only an abandoned one gets this old."""

Format = Literal["auto", "torch", "pickle", "bytes"]
Mode = Literal["min", "max"]
MetricValue = int | float | str | None


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded as asked."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint as its metadata record describes it (no payload read)."""

    path: Path
    """The payload file; what ``RUNYARD_RESUME_FROM`` and :func:`load` take."""
    metadata_path: Path
    step: int
    epoch: int | None
    metrics: dict[str, MetricValue]
    size_bytes: int
    saved_at: float
    """Unix time at which the checkpoint was complete."""
    format: str
    """``torch``, ``pickle`` or ``bytes``: how the payload was written."""
    best_metric: str | None = None
    mode: str = "min"
    is_best: bool = False
    """The best by the metric named in the newest record that names one."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the state that was saved, and its record."""

    state: Any
    info: CheckpointInfo

    @property
    def step(self) -> int:
        return self.info.step

    @property
    def epoch(self) -> int | None:
        return self.info.epoch

    @property
    def metrics(self) -> dict[str, MetricValue]:
        return self.info.metrics

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def saved_at(self) -> float:
        return self.info.saved_at


# --------------------------------------------------------------------------- public API


def resolve_directory(directory: str | os.PathLike[str] | None = None) -> Path:
    """The folder :func:`save` and :func:`load_latest` use.

    ``RUNYARD_CHECKPOINT_DIR`` wins over ``directory``: under runyard the engine must find
    the checkpoints (to show them and to resume a retried attempt), so a folder written into
    the script is for runs started without runyard. Without either: ``./checkpoints``.
    """
    from_engine = os.environ.get(CHECKPOINT_DIR_ENV)
    if from_engine:
        if directory is not None and Path(directory).absolute() != Path(from_engine).absolute():
            _warn_once(
                f"runyard.checkpoint: using {CHECKPOINT_DIR_ENV}={from_engine} (set by runyard), "
                f"not directory={os.fspath(directory)!r}"
            )
        return Path(from_engine)
    return Path(directory) if directory is not None else Path(DEFAULT_DIRECTORY)


def save(
    state: Any,
    step: int,
    *,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
    best_metric: str | None = None,
    mode: Mode = "min",
    directory: str | os.PathLike[str] | None = None,
    format: Format = "auto",
) -> Path:
    """Save ``state`` as a complete checkpoint, then prune older ones; return the payload path.

    Args:
        state: A torch state dict (or any structure of dicts, lists and tuples holding torch
            objects), any picklable object, or ``bytes``.
        step: The training step the state is at (what the run resumes after), ``>= 0``.
        epoch: The epoch, if the script counts them.
        metrics: Numbers (or strings) to record with it, e.g. ``{"val_loss": 0.31}``. 0-d
            tensors are read with ``.item()``; NaN and infinities are recorded as the strings
            ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no such numbers).
        keep_last: How many of the newest checkpoints to keep; ``None`` keeps all. The best
            one and the one just written are kept whatever this says.
        best_metric: The metric that decides the best checkpoint, kept through pruning.
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``best_metric`` is better.
        directory: Used when ``RUNYARD_CHECKPOINT_DIR`` is unset (see :func:`resolve_directory`).
        format: ``"auto"`` (bytes as raw bytes, states holding torch objects with
            ``torch.save``, anything else with pickle), or one of ``"torch"``, ``"pickle"``,
            ``"bytes"``.

    The payload is written to a temporary file in the same folder, synced, renamed into
    place and the folder synced; then the metadata record the same way. Pruning starts
    only after that.
    """
    if isinstance(step, bool):
        raise TypeError("step must be an integer, not a bool")
    step = operator.index(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, not {step}")
    if epoch is not None:
        epoch = operator.index(epoch)
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (or None to keep all), not {keep_last}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    kind = _payload_format(state, format)
    recorded_metrics = _recordable_metrics(metrics or {})

    folder = resolve_directory(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{PREFIX}{step:012d}-{secrets.token_hex(4)}"
    payload_path = folder / f"{stem}{PAYLOAD_SUFFIXES[kind]}"
    size_bytes = _write_atomically(payload_path, lambda file: _write_payload(state, kind, file))
    attempt = os.environ.get("RUNYARD_ATTEMPT")
    record = {
        "version": RECORD_VERSION,
        "step": step,
        "epoch": epoch,
        "metrics": recorded_metrics,
        "saved_at": time.time(),
        "payload": payload_path.name,
        "format": kind,
        "size_bytes": size_bytes,
        "best_metric": best_metric,
        "mode": mode,
        "attempt": int(attempt) if attempt and attempt.isdigit() else None,
    }
    encoded = json.dumps(record, indent=1, allow_nan=False).encode()
    _write_atomically(folder / f"{stem}{METADATA_SUFFIX}", lambda file: file.write(encoded))

    if keep_last is not None:
        _prune(folder, keep_last, just_written=payload_path)
    _sweep_leftovers(folder)
    return payload_path


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """The complete checkpoints in ``directory``, oldest first (by ``saved_at``, then step).

    Reads only the metadata records and the payloads' sizes; standard library only, for the
    engine. ``directory`` is taken as given (no environment lookup). A missing folder has no
    checkpoints; unreadable or incomplete records are skipped.
    """
    folder = Path(directory)
    try:
        record_paths = [
            folder / entry.name
            for entry in os.scandir(folder)
            if entry.name.startswith(PREFIX) and entry.name.endswith(METADATA_SUFFIX)
        ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [info for path in record_paths if (info := _read_record(path)) is not None]
    found.sort(key=_age_order)
    best = _best_of(found)
    return [replace(info, is_best=info is best) for info in found]


def load(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, weights_only: bool = True
) -> Checkpoint:
    """Load one checkpoint, named by its payload or its metadata record.

    ``.pt`` payloads go through ``torch.load(..., weights_only=True)``, which refuses to run
    arbitrary code; pass ``weights_only=False`` (for a folder you trust) or allow the types
    with ``torch.serialization.add_safe_globals`` when the state holds other objects.

    Raises:
        CheckpointError: ``path`` is not a complete checkpoint, or torch's safe loader
            refused its contents.
    """
    info = _complete_checkpoint_at(Path(path))
    if info is None:
        raise CheckpointError(f"{os.fspath(path)} is not a complete checkpoint")
    return Checkpoint(state=_read_payload(info, map_location, weights_only), info=info)


def load_latest(
    directory: str | os.PathLike[str] | None = None, map_location: Any = "cpu", *, weights_only: bool = True
) -> Checkpoint | None:
    """The checkpoint to resume from, loaded; ``None`` when there is none (a fresh start).

    ``RUNYARD_RESUME_FROM`` (set by the engine on a retried attempt) comes first when it
    names a complete checkpoint; otherwise the newest complete checkpoint in the folder
    (see :func:`resolve_directory`). ``map_location`` and ``weights_only`` are as in
    :func:`load`.
    """
    resume_from = os.environ.get(RESUME_FROM_ENV)
    folder = resolve_directory(directory)
    if resume_from:
        info = _complete_checkpoint_at(Path(resume_from))
        if info is not None:
            return Checkpoint(state=_read_payload(info, map_location, weights_only), info=info)
        warnings.warn(
            f"runyard.checkpoint: {RESUME_FROM_ENV}={resume_from} is not a complete checkpoint; "
            f"resuming from the newest in {folder} instead",
            stacklevel=2,
        )
    found = list_checkpoints(folder)
    if not found:
        return None
    newest = found[-1]
    return Checkpoint(state=_read_payload(newest, map_location, weights_only), info=newest)


# --------------------------------------------------------------------------- writing


def _payload_format(state: Any, requested: str) -> str:
    if requested == "bytes" or (requested == "auto" and isinstance(state, (bytes, bytearray, memoryview))):
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise TypeError(f"format='bytes' needs bytes, not {type(state).__name__}")
        return "bytes"
    if requested == "auto":
        return "torch" if _holds_torch_objects(state) else "pickle"
    if requested not in ("torch", "pickle"):
        raise ValueError(f"format must be 'auto', 'torch', 'pickle' or 'bytes', not {requested!r}")
    return requested


def _holds_torch_objects(state: Any) -> bool:
    """Whether the containers in ``state`` hold a tensor, a module or any torch type.

    Looks at each object's type's module name, so a state with no torch in it never makes
    us import torch; and a state that has torch objects came from a process that has it.
    """
    pending = [state]
    seen: set[int] = set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if type(value).__module__.partition(".")[0] == "torch":
            return True
        if isinstance(value, Mapping):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            pending.extend(value)
    return False


def _write_payload(state: Any, kind: str, file: BinaryIO) -> None:
    if kind == "bytes":
        file.write(state)
    elif kind == "pickle":
        pickle.dump(state, file, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        import torch

        torch.save(state, file)


def _recordable_metrics(metrics: Mapping[str, Any]) -> dict[str, MetricValue]:
    recorded: dict[str, MetricValue] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"metric names must be strings, not {name!r}")
        if callable(getattr(value, "item", None)):  # a 0-d tensor or a numpy scalar
            value = value.item()
        if value is None or isinstance(value, (bool, int, str)):
            recorded[name] = value
        elif isinstance(value, float) or hasattr(value, "__float__"):
            number = float(value)
            # JSON has no NaN or infinity, and the engine hands these records to JSON
            # clients with strict parsers; a diverged loss is still worth seeing.
            recorded[name] = number if math.isfinite(number) else str(number)
        else:
            raise TypeError(f"metric {name!r} is a {type(value).__name__}: record a number or a string")
    return recorded


def _write_atomically(final_path: Path, write: Callable[[BinaryIO], Any]) -> int:
    """Write through a temporary file in the same folder (a rename within one filesystem
    is atomic), sync it, rename it into place and sync the folder so the rename itself
    survives a power loss; return the size written."""
    temp_path = final_path.with_name(f".{final_path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(temp_path, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
            size_bytes = os.fstat(file.fileno()).st_size
        os.replace(temp_path, final_path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp_path.unlink()
        raise
    _fsync_directory(final_path.parent)
    return size_bytes


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some filesystems (certain FUSE and network ones) cannot sync a folder; the rename
        # is still atomic there, its durability is then the filesystem's business.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


def _prune(folder: Path, keep_last: int, just_written: Path) -> None:
    found = list_checkpoints(folder)
    keep = {info.path for info in found[-keep_last:]}
    keep.add(just_written)  # even if a clock stepped back and it sorts as old
    keep.update(info.path for info in found if info.is_best)
    for info in found:
        if info.path not in keep:
            _delete(info)


def _delete(info: CheckpointInfo) -> None:
    # The record goes first: that alone makes the checkpoint disappear, so a crash between
    # the two unlinks leaves an orphan payload that is never loaded and is swept later.
    with contextlib.suppress(FileNotFoundError):
        info.metadata_path.unlink()
    with contextlib.suppress(FileNotFoundError):
        info.path.unlink()


def _sweep_leftovers(folder: Path) -> None:
    """Remove what killed writers left: temporary files whose writer is gone (or that are
    old), and payloads that never got their record (once old: their writer may be between
    the two renames)."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    names = {entry.name for entry in entries}
    for entry in entries:
        name = entry.name
        if name.startswith(f".{PREFIX}") and name.endswith(TEMP_SUFFIX):
            writer_pid = name[: -len(TEMP_SUFFIX)].rpartition(".")[2]
            abandoned = writer_pid.isdigit() and int(writer_pid) != os.getpid() and not _alive(int(writer_pid))
        elif name.startswith(PREFIX) and name.endswith(tuple(PAYLOAD_SUFFIXES.values())):
            if f"{name.rpartition('.')[0]}{METADATA_SUFFIX}" in names:
                continue
            abandoned = False
        else:
            continue
        with contextlib.suppress(OSError):
            if abandoned or now - entry.stat(follow_symlinks=False).st_mtime > LEFTOVER_GRACE_S:
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        return True
    return True


# --------------------------------------------------------------------------- reading


def _read_record(metadata_path: Path) -> CheckpointInfo | None:
    """The checkpoint whose record this is, or None unless the record parses and its
    payload is there with the recorded size."""
    try:
        record = json.loads(metadata_path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("version"), int):
        return None
    kind = record.get("format")
    payload_name = record.get("payload")
    step = record.get("step")
    size_bytes = record.get("size_bytes")
    saved_at = record.get("saved_at")
    epoch = record.get("epoch")
    metrics = record.get("metrics") or {}
    # The payload must be this record's own sibling: a record never points elsewhere.
    if kind not in PAYLOAD_SUFFIXES or payload_name != metadata_path.stem + PAYLOAD_SUFFIXES[kind]:
        return None
    if not (_is_int(step) and _is_int(size_bytes) and isinstance(saved_at, (int, float))):
        return None
    if not (epoch is None or _is_int(epoch)) or not isinstance(metrics, dict):
        return None
    payload_path = metadata_path.with_name(payload_name)
    try:
        if payload_path.stat().st_size != size_bytes:
            return None
    except OSError:
        return None
    best_metric = record.get("best_metric")
    return CheckpointInfo(
        path=payload_path,
        metadata_path=metadata_path,
        step=step,
        epoch=epoch,
        metrics=metrics,
        size_bytes=size_bytes,
        saved_at=float(saved_at),
        format=kind,
        best_metric=best_metric if isinstance(best_metric, str) else None,
        mode="max" if record.get("mode") == "max" else "min",
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _age_order(info: CheckpointInfo) -> tuple[float, int, str]:
    return info.saved_at, info.step, info.path.name


def _best_of(found: list[CheckpointInfo]) -> CheckpointInfo | None:
    """By the metric and mode of the newest record naming one; ties go to the newer."""
    policy = next((info for info in reversed(found) if info.best_metric), None)
    if policy is None:
        return None
    best: CheckpointInfo | None = None
    best_value = 0.0
    for info in found:
        value = info.metrics.get(policy.best_metric or "")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        better = value <= best_value if policy.mode == "min" else value >= best_value
        if best is None or better:
            best, best_value = info, value
    return best


def _complete_checkpoint_at(path: Path) -> CheckpointInfo | None:
    """The complete checkpoint named by its payload or its record, with ``is_best`` as
    its folder sees it."""
    metadata_path = path if path.suffix == METADATA_SUFFIX else path.with_suffix(METADATA_SUFFIX)
    if not metadata_path.name.startswith(PREFIX):
        return None
    in_folder = [info for info in list_checkpoints(metadata_path.parent) if info.metadata_path == metadata_path]
    return in_folder[0] if in_folder else None


def _read_payload(info: CheckpointInfo, map_location: Any, weights_only: bool) -> Any:
    if info.format == "bytes":
        return info.path.read_bytes()
    if info.format == "pickle":
        # Full unpickling, not a safe loader: this file was written by save() for a state
        # with no torch objects in it, in the run's own checkpoint folder, and "any
        # picklable object" can only come back through pickle. States with tensors are
        # written in the torch format and go through torch's safe loader below.
        with open(info.path, "rb") as file:
            return pickle.load(file)
    import torch

    try:
        return torch.load(info.path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as error:
        if not weights_only:
            raise
        raise CheckpointError(
            f"{info.path}: torch's safe loader (weights_only=True) refused it: {error}. "
            "Allow the types with torch.serialization.add_safe_globals([...]), or load with "
            "weights_only=False if you trust this folder."
        ) from error


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)  # the caller of save() or load_latest()
