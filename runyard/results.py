"""``runyard.report()``: a run's final metrics, for ``show``, the group table and export.

    import runyard
    ...
    runyard.report(loss=val_loss, acc=val_acc)

Each call merges its metrics into ``$RUNYARD_RUN_DIR/report.json`` (replaced atomically,
so the engine never reads half of it); the engine stores them with the run when the
attempt ends. NaN and infinities are kept as ``"nan"``/``"inf"``/``"-inf"`` (JSON has
neither), tensors and numpy scalars as numbers. Outside runyard (no ``RUNYARD_RUN_DIR``)
the call only returns what it would have written. Only the standard library is imported.

The module is not called ``report``: importing a submodule of that name would replace the
``runyard.report`` function with the module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runyard.progress import RUN_DIR_ENV, _plain, _write_atomically

REPORT_FILE = "report.json"


def report(**metrics: Any) -> dict[str, Any]:
    """Record final metrics (merged with earlier calls of this attempt); returns them all."""
    values = _plain(metrics)
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        return values
    path = Path(run_dir) / REPORT_FILE
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = {}
    merged = {**(earlier if isinstance(earlier, dict) else {}), **values}
    _write_atomically(path, json.dumps(merged, allow_nan=False))
    return merged
