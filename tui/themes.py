"""Themes from TOML files: every ``*.toml`` in the repository's ``themes/`` directory.

A theme file holds the fields of :class:`textual.theme.Theme` (``name`` and ``primary``
are required) and an optional ``[variables]`` table of extra CSS variables. A broken
file is reported and skipped: a typo in one theme must never stop the interface.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from textual.app import App
from textual.color import Color, ColorParseError
from textual.theme import Theme

def _themes_dir() -> Path:
    """The repository's ``themes/`` in a checkout or editable install; the copy that
    ``pip install`` puts under ``<prefix>/share/runyard/themes`` otherwise."""
    beside = Path(__file__).resolve().parent.parent / "themes"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "runyard" / "themes"


THEMES_DIR = _themes_dir()
DEFAULT_THEME = "runyard-dark"
FALLBACK_THEME = "textual-dark"
"""Built into Textual, so always available when no theme file could be read."""

_COLOR_KEYS = ("primary", "secondary", "warning", "error", "success", "accent",
               "foreground", "background", "surface", "panel", "boost")
_FLOAT_KEYS = ("luminosity_spread", "text_alpha")
_BOOL_KEYS = ("dark", "ansi")
_KNOWN_KEYS = frozenset(f.name for f in fields(Theme))


class ThemeFileError(ValueError):
    """A theme file that cannot be used; the message is one line naming the file."""


@dataclass
class LoadedThemes:
    themes: list[Theme] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """One line per skipped file, ready to show to the user."""


def load_theme_file(path: Path) -> Theme:
    """Read one theme file; raises :class:`ThemeFileError` saying what to fix."""
    where = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ThemeFileError(f"theme {where}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ThemeFileError(f"theme {where}: not valid TOML ({error})") from None

    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ThemeFileError(
            f"theme {where}: unknown key {unknown[0]!r}; use only {', '.join(sorted(_KNOWN_KEYS))}"
        )
    for required in ("name", "primary"):
        if not isinstance(data.get(required), str) or not data[required].strip():
            raise ThemeFileError(f"theme {where}: needs {required} = \"...\"")
    for key in _COLOR_KEYS:
        if key in data:
            _check_color(where, key, data[key])
    for key in _FLOAT_KEYS:
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], (int, float))):
            raise ThemeFileError(f"theme {where}: {key} must be a number, got {data[key]!r}")
    for key in _BOOL_KEYS:
        if key in data and not isinstance(data[key], bool):
            raise ThemeFileError(f"theme {where}: {key} must be true or false, got {data[key]!r}")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(
        isinstance(name, str) and isinstance(value, str) for name, value in variables.items()
    ):
        raise ThemeFileError(f'theme {where}: [variables] must map names to strings, e.g. border = "#336699"')
    return Theme(**data)


def _check_color(where: str, key: str, value: object) -> None:
    if not isinstance(value, str):
        raise ThemeFileError(f'theme {where}: {key} must be a colour string such as "#4FB3BF"')
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeFileError(
            f'theme {where}: {key} = {value!r} is not a colour; use e.g. "#4FB3BF" or "rgb(79,179,191)"'
        ) from None


def load_themes(directory: Path = THEMES_DIR) -> LoadedThemes:
    """Every readable theme in ``directory``, in file-name order, and what was skipped."""
    loaded = LoadedThemes()
    if not directory.is_dir():
        return loaded
    for path in sorted(directory.glob("*.toml")):
        try:
            loaded.themes.append(load_theme_file(path))
        except ThemeFileError as error:
            loaded.problems.append(str(error))
    return loaded


def register_themes(app: App, directory: Path = THEMES_DIR) -> list[str]:
    """Register the themes of ``directory`` with ``app``; returns the problems, one line each."""
    loaded = load_themes(directory)
    for theme in loaded.themes:
        app.register_theme(theme)
    return loaded.problems


def choose_theme(app: App, requested: str | None) -> tuple[str, str | None]:
    """The theme to use and, when the request cannot be honoured, a one-line note why."""
    available = app.available_themes
    default = DEFAULT_THEME if DEFAULT_THEME in available else FALLBACK_THEME
    if requested is None:
        return default, None
    if requested in available:
        return requested, None
    names = ", ".join(sorted(available))
    return default, f"no theme named {requested!r}; using {default}. Available: {names}"
