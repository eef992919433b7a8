"""``runyard.heartbeat()``: a training script tells the engine how far it is.

    import runyard
    for step in range(start, total):
        ...
        runyard.heartbeat(step=step + 1, total=total, metrics={"loss": loss})

Cheap enough to call every step: a call that comes sooner than ``min_interval_s`` after
the last write only remembers its values, and the newest values are written at the next
allowed call or when the process exits. The file is ``$RUNYARD_RUN_DIR/heartbeat.json``,
replaced atomically so the engine never reads half of it; outside runyard (no
``RUNYARD_RUN_DIR``) the call does nothing. Only the standard library is imported.

The module is not called ``heartbeat``: importing a submodule of that name would replace
the ``runyard.heartbeat`` function with the module.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "RUNYARD_RUN_DIR"
HEARTBEAT_FILE = "heartbeat.json"
DEFAULT_MIN_INTERVAL_S = 1.0


class _Beater:
    def __init__(self) -> None:
        self.count = 0
        self.last_write = float("-inf")
        self.pending: dict[str, Any] | None = None
        self.exit_hook = False

    def beat(self, step: Any, total: Any, metrics: Mapping[str, Any] | None, min_interval_s: float, force: bool) -> bool:
        self.count += 1
        run_dir = os.environ.get(RUN_DIR_ENV)
        if not run_dir:
            return False
        self.pending = {"step": _plain(step), "total": _plain(total), "metrics": _plain(dict(metrics or {})),
                        "pid": os.getpid(), "count": self.count}
        if not self.exit_hook:
            # The last values before a rate-limited stretch ends must not be lost.
            atexit.register(self.flush)
            self.exit_hook = True
        finished = step is not None and total is not None and _plain(step) == _plain(total)
        if not (force or finished) and time.monotonic() - self.last_write < min_interval_s:
            return False
        return self.flush()

    def flush(self) -> bool:
        run_dir = os.environ.get(RUN_DIR_ENV)
        if self.pending is None or not run_dir:
            return False
        record = {**self.pending, "at": time.time()}
        self.pending = None
        self.last_write = time.monotonic()
        try:
            _write_atomically(Path(run_dir) / HEARTBEAT_FILE, json.dumps(record, allow_nan=False))
        except OSError:
            return False  # progress is advisory: a full disk must not kill the training
        return True


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".heartbeat-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities as ``"nan"``/``"inf"``/``"-inf"`` (JSON has neither;
    the engine's health check reads these strings), tensors and numpy scalars as numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    item = getattr(value, "item", None)  # torch tensors and numpy scalars, without importing either
    if callable(item):
        try:
            return _plain(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


_beater = _Beater()


def heartbeat(
    step: int | float | None = None,
    total: int | float | None = None,
    metrics: Mapping[str, Any] | None = None,
    *,
    min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
    force: bool = False,
) -> bool:
    """Record the run's progress; returns whether this call wrote the file.

    Args:
        step: steps done so far.
        total: steps in all; with ``step`` it gives the engine an ETA.
        metrics: numbers to show beside the progress (``{"loss": 0.31}``); a NaN or
            infinite value makes the engine warn.
        min_interval_s: the least time between two writes.
        force: write now, whatever the interval.
    """
    return _beater.beat(step, total, metrics, min_interval_s, force)
