"""Theme variables as plain colours, for Rich renderables (DataTable cells).

Rich cannot resolve ``$success`` nor draw translucent colours, so a variable is looked
up in the app's current theme and blended over the background.
"""

from __future__ import annotations

from collections.abc import Mapping

from textual.color import Color, ColorParseError


def solid_color(variables: Mapping[str, str], name: str) -> str | None:
    """Hex colour of theme variable ``name``; None when the theme lacks it or it is not a colour."""
    try:
        color = Color.parse(variables[name])
        background = Color.parse(variables.get("background", "#000000"))
    except (KeyError, ColorParseError):
        return None
    if color.a < 1:
        color = background + color
    return color.hex
