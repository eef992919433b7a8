"""Opening a file that a run's user controls (its log, heartbeat, report) for the engine.

On a personal daemon this is a plain ``open``. A shared daemon runs as root and reads
files in folders its users own, where a user may have put a link to ``/etc/shadow`` in
place of a log: it would read that file with root's rights and show its last line in a
reason everyone can see. Once :func:`set_strict` was called (by the shared daemon at
start), links are not followed and a file counts only if the run's user (or root) owns it.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

_strict = False


def set_strict(strict: bool = True) -> None:
    """Make every later :func:`open_run_file` refuse links and other users' files. A
    property of the whole process: a daemon is shared or it is not."""
    global _strict
    _strict = strict


def open_run_file(path: str | os.PathLike[str], owner: int | None) -> BinaryIO:
    """``path`` opened for reading in binary; raises :class:`OSError` when it cannot be, or
    (strict) when it is a link, not a regular file, or not ``owner``'s (or root's)."""
    if not _strict:
        return open(path, "rb")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in (owner, 0):
            raise PermissionError(f"{path} is not a file of the run's user")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
