"""Shared mode's paths and how clients find the shared daemon.

One ``runyard --daemon --shared`` serves every user of a box: it runs as root, keeps its
state under :data:`SYSTEM_HOME` and listens on :data:`SYSTEM_SOCKET`. ``RUNYARD_HOME``
and ``RUNYARD_SOCKET`` override both, for the daemon and the clients alike.

A client with neither variable set asks the personal daemon of its user first and, when
none answers, the shared one: a user on a shared box types ``runyard submit`` and it
goes to the box's queue.

Stdlib only: ``runyard submit`` and ``runyard ls`` import this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.client import Client, DaemonUnavailable
from engine.paths import Home

SYSTEM_HOME = Path("/var/lib/runyard")
SYSTEM_SOCKET = Path("/run/runyard/runyard.sock")
SYSTEM_CONFIG = Path("/etc/runyard/config.toml")

DEFAULT_UMASK = 0o077
"""For a run whose submitter's umask is not known (a --cron firing): the most private."""
PRIVATE_BITS = 0o007
"""Always in a run's umask in shared mode: nothing a run creates is open to other users."""


def shared_home() -> Home:
    """The shared daemon's home: ``RUNYARD_HOME``, else :data:`SYSTEM_HOME`; its socket is
    ``RUNYARD_SOCKET``, else the home's own when ``RUNYARD_HOME`` is set (so a client that
    sets only ``RUNYARD_HOME`` finds it), else :data:`SYSTEM_SOCKET`."""
    if os.environ.get("RUNYARD_HOME"):
        return Home.resolve()
    return Home(SYSTEM_HOME, socket=None if os.environ.get("RUNYARD_SOCKET") else SYSTEM_SOCKET)


def fallback_socket(home: Home) -> Path | None:
    """Where a client asks when the personal daemon does not answer; ``None`` when the
    user named a home or a socket (then that one is meant, and only that one)."""
    if os.environ.get("RUNYARD_HOME") or os.environ.get("RUNYARD_SOCKET"):
        return None
    if home.socket_path == SYSTEM_SOCKET:
        return None
    return SYSTEM_SOCKET


class FallbackClient(Client):
    """A :class:`Client` that tries a second socket when no daemon listens on the first.

    Only a failure to connect switches sockets (nothing was sent yet), so a request is
    never done twice. Once the fallback answered, it is used for the rest of the command.
    """

    def __init__(self, socket_path: Path, fallback: Path | None, **options: Any) -> None:
        super().__init__(socket_path, **options)
        self.fallback = fallback

    def call(self, op: str, **args: Any) -> Any:
        try:
            return super().call(op, **args)
        except DaemonUnavailable:
            if self.fallback is None or self.fallback == self.socket_path or not self.fallback.exists():
                raise
            self.socket_path, self.fallback = self.fallback, None
            return super().call(op, **args)


def client_for(home: Home, **options: Any) -> Client:
    """The client a command uses: the home's daemon, else the shared one."""
    return FallbackClient(home.socket_path, fallback_socket(home), **options)


def current_umask() -> int | None:
    """This process's umask, read without changing it (``os.umask`` can only swap it,
    which would race other threads); ``None`` where /proc does not say."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_umask(requested: Any) -> int:
    """The umask a run starts with: its submitter's, never opening anything to others."""
    if isinstance(requested, bool) or not isinstance(requested, int) or not 0 <= requested <= 0o777:
        return DEFAULT_UMASK
    return requested | PRIVATE_BITS
