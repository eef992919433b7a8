"""``runyard install-service``: a systemd unit that keeps the engine up.

The system unit runs the shared daemon as root (``--daemon --shared``); ``--user`` writes
a user unit for the personal daemon. Both use ``KillMode=process``: stopping or restarting
the engine must leave the runs running (each lives in its own session), and the next
engine re-adopts them.

Stdlib only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SYSTEM_UNIT = Path("/etc/systemd/system/runyard.service")
ENV_NAMES = ("RUNYARD_HOME", "RUNYARD_SOCKET", "RUNYARD_CONFIG", "RUNYARD_SIMULATE_GPUS")
"""Carried into the unit when set at install time: the service then serves the same
home, socket and config as the shell that installed it."""


def user_unit_path() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user" / "runyard.service"


def _quote(word: str) -> str:
    """A word of a systemd command line (it splits on spaces and takes C-style quotes)."""
    if word and all(char.isalnum() or char in "/._-+=:,@%" for char in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(*, user: bool, python: str | None = None, environ: dict[str, str] | None = None) -> str:
    """The unit file: the system's shared daemon, or (``user``) the personal one."""
    python = python or sys.executable
    environ = os.environ if environ is None else environ
    command = [python, "-m", "runyard.cli", "--daemon"] + ([] if user else ["--shared"])
    lines = ["[Unit]"]
    lines.append("Description=runyard: " + ("your queue of ML runs" if user else "the shared queue of ML runs"))
    if not user:
        lines.append("After=network.target")
    lines += [
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_quote(word) for word in command),
        # The runs live in their own sessions: a restart of the engine must not kill them.
        "KillMode=process",
        "Restart=on-failure",
        "RestartSec=5",
    ]
    if not user:
        lines += [
            # /run/runyard for the socket: 0755, so every user reaches it (the socket is 0666).
            "RuntimeDirectory=runyard",
            "RuntimeDirectoryMode=0755",
            "RuntimeDirectoryPreserve=yes",
            "StateDirectory=runyard",
            "StateDirectoryMode=0711",
        ]
    for name in ENV_NAMES:
        if environ.get(name):
            lines.append(f"Environment={_quote(f'{name}={environ[name]}')}")
    lines += ["", "[Install]", "WantedBy=" + ("default.target" if user else "multi-user.target")]
    return "\n".join(lines) + "\n"


def enable_hint(*, user: bool, path: Path) -> str:
    if user:
        return (f"wrote {path}; start it now and at every login with:\n"
                "  systemctl --user daemon-reload && systemctl --user enable --now runyard\n"
                "(and `loginctl enable-linger $USER` to keep it running while you are logged out)")
    return (f"wrote {path}; start it now and at every boot with:\n"
            "  systemctl daemon-reload && systemctl enable --now runyard\n"
            "then any user's `runyard submit` reaches it at /run/runyard/runyard.sock")


def install(*, user: bool, path: Path | None = None) -> Path:
    """Write the unit; raises :class:`OSError` when it cannot be written."""
    target = path or (user_unit_path() if user else SYSTEM_UNIT)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(unit_text(user=user))
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)
    return target
