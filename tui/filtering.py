"""The queue's filter: words a run must all match.

``bert`` matches a run whose id, name, user, state, reason, command, node or Slurm job
holds "bert" (case-insensitive). ``state:queued``, ``user:alice``, ``name:sweep``,
``gpu:1``, ``id:12``, ``node:gpu017`` and ``job:4242`` (the Slurm job) match one field.
``-word`` (or ``-state:failed``) keeps the runs that do not match. Pure: no Textual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tui import format as fmt

FIELDS = ("state", "user", "name", "gpu", "id", "health", "node", "job")


class RunFilter:
    """A parsed filter; :meth:`matches` decides one run."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self._terms: list[tuple[bool, str | None, str]] = []
        for word in self.text.lower().split():
            negate = word.startswith("-") and len(word) > 1
            if negate:
                word = word[1:]
            field, colon, value = word.partition(":")
            if colon and field in FIELDS:
                self._terms.append((negate, field, value))
            else:
                self._terms.append((negate, None, word))

    def __bool__(self) -> bool:
        return bool(self._terms)

    def matches(self, run: Mapping[str, Any]) -> bool:
        return all(self._term_matches(field, value, run) != negate for negate, field, value in self._terms)

    @staticmethod
    def _term_matches(field: str | None, value: str, run: Mapping[str, Any]) -> bool:
        if field == "state":
            state = str(run.get("state") or "")
            return state.startswith(value) or (value == "held" and bool(run.get("held")))
        if field == "user":
            return value in fmt.user_text(run).lower()
        if field == "name":
            return value in str(run.get("name") or "").lower()
        if field == "gpu":
            return value in {str(index) for index in run.get("gpus") or ()}
        if field == "id":
            return str(run.get("id")) == value
        if field == "health":
            return fmt.health_text(run).startswith(value)
        if field == "node":
            return value in str(run.get("node") or "").lower()
        if field == "job":
            return str(run.get("backend_job") or "") == value
        haystack = " ".join((
            str(run.get("id")), str(run.get("name") or ""), fmt.user_text(run), str(run.get("state") or ""),
            str(run.get("reason") or ""), fmt.command_text(run), str(run.get("group") or ""),
            str(run.get("node") or ""), str(run.get("backend_job") or ""),
        )).lower()
        return value in haystack
