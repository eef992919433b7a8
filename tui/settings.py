"""The TUI's own settings file, ``tui.toml`` beside the engine's ``config.toml``.

A separate file because the engine refuses tables it does not know in its config,
and a display preference must never be able to stop an engine. Only ``theme`` is read
today::

    theme = "runyard-light"

``RUNYARD_TUI_CONFIG`` names another file. A missing file means the defaults; a broken
one is reported in the interface and ignored.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TuiSettings:
    theme: str | None = None
    """The theme to open with, unless ``--theme`` says otherwise."""


def settings_path() -> Path:
    explicit = os.environ.get("RUNYARD_TUI_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    from engine.config import config_path

    return config_path().parent / "tui.toml"


def load_settings(path: Path | None = None) -> tuple[TuiSettings, str | None]:
    """The settings and, when the file could not be used, one line saying why."""
    path = path or settings_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return TuiSettings(), None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        return TuiSettings(), f"{path}: cannot read it ({error}); using the defaults"
    unknown = sorted(set(raw) - {"theme"})
    if unknown:
        return TuiSettings(), f"{path}: unknown key {unknown[0]!r} (known: theme); using the defaults"
    theme = raw.get("theme")
    if theme is not None and not isinstance(theme, str):
        return TuiSettings(), f'{path}: theme must be a name such as "runyard-light"; using the defaults'
    return TuiSettings(theme=theme), None
