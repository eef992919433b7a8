"""The engine's view of a run's checkpoints: what ``runyard.checkpoint`` wrote, found by
reading the folder (the format is that module's; it imports only the stdlib)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("runyard.checkpoints")


def discover(folder: str | Path | None) -> list[dict[str, Any]]:
    """The complete checkpoints in ``folder``, oldest first, as JSON-ready records
    (path, step, epoch, metrics, size_bytes, saved_at, is_best, newest). Never raises:
    a run's folder is the run's to mess up."""
    if not folder:
        return []
    from runyard.checkpoint import list_checkpoints

    try:
        found = list_checkpoints(Path(folder))
    except FileNotFoundError:
        return []
    except Exception:  # a corrupt record must not take a request or a tick down
        log.exception("cannot read the checkpoints in %s", folder)
        return []
    records = [_record(info) for info in found]
    if records:
        newest = max(records, key=lambda record: (record["saved_at"] or 0, record["step"] or 0))
        for record in records:
            record["newest"] = record is newest
    return records


def latest_path(folder: str | Path | None) -> str | None:
    """The newest complete checkpoint's path, for ``RUNYARD_RESUME_FROM``."""
    newest = [record for record in discover(folder) if record.get("newest")]
    return newest[0]["path"] if newest else None


def _record(info: Any) -> dict[str, Any]:
    return {
        "path": str(info.path),
        "step": getattr(info, "step", None),
        "epoch": getattr(info, "epoch", None),
        "metrics": getattr(info, "metrics", None) or {},
        "size_bytes": getattr(info, "size_bytes", None),
        "saved_at": getattr(info, "saved_at", None),
        "is_best": bool(getattr(info, "is_best", False)),
        "newest": False,
    }
