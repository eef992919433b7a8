"""Where runyard keeps its state. One ``RUNYARD_HOME`` is one queue, one database, one daemon."""

from __future__ import annotations

import os
from pathlib import Path


class Home:
    """A home's paths. A plain class, not a dataclass: ``runyard submit`` imports this,
    and ``dataclasses`` (with ``inspect``) would be a sixth of its start-up."""

    __slots__ = ("root", "socket")

    def __init__(self, root: Path, socket: Path | None = None) -> None:
        object.__setattr__(self, "root", root)
        # Where the daemon listens when RUNYARD_SOCKET does not say (default: in root).
        object.__setattr__(self, "socket", socket)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Home is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Home) and (self.root, self.socket) == (other.root, other.socket)

    def __hash__(self) -> int:
        return hash((self.root, self.socket))

    def __repr__(self) -> str:
        return f"Home(root={self.root!r}, socket={self.socket!r})"

    @classmethod
    def resolve(cls, explicit: str | os.PathLike | None = None) -> Home:
        """``explicit``, else ``$RUNYARD_HOME``, else the platform's user state dir."""
        chosen = explicit or os.environ.get("RUNYARD_HOME")
        if chosen:
            return cls(Path(chosen).expanduser().absolute())
        # platformdirs is small (a few ms) but only needed when no home is set.
        from platformdirs import user_state_dir

        return cls(Path(user_state_dir("runyard", appauthor=False)))

    @property
    def db_path(self) -> Path:
        return self.root / "runyard.db"

    @property
    def socket_path(self) -> Path:
        override = os.environ.get("RUNYARD_SOCKET")
        if override:
            return Path(override)
        return self.socket if self.socket is not None else self.root / "runyard.sock"

    @property
    def lock_path(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: int) -> Path:
        return self.runs_dir / str(run_id)

    def ensure(self) -> None:
        """Create the home, private to its owner: it holds run environments."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runs_dir.mkdir(exist_ok=True, mode=0o700)
