"""A one-line banner under the header for what needs attention now (engine gone, draining)."""

from __future__ import annotations

from typing import Literal

from textual.widgets import Static

Severity = Literal["error", "warning"]


class Banner(Static):
    """Hidden until :meth:`show`; the severity picks the colours (see app.tcss)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.display = False
        self.text = ""

    def show(self, text: str, severity: Severity = "error") -> None:
        self.text = text
        self.update(text)
        self.set_class(severity == "error", "-error")
        self.set_class(severity == "warning", "-warning")
        self.display = True

    def hide(self) -> None:
        self.text = ""
        self.display = False
