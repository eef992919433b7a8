"""The daemon's wire protocol: newline-delimited JSON over a Unix socket.

A request is one line ``{"v": 1, "op": "<name>", "args": {...}}``; the answer is one line
``{"v": 1, "ok": true, "result": ...}`` or ``{"v": 1, "ok": false, "error": "<one line>",
"code": <exit status>}``. ``code`` uses the CLI's exit statuses, so the CLI can pass a
daemon's refusal straight through. Easy to debug with ``socat - UNIX:runyard.sock``.

The caller's identity is never taken from the message: the daemon reads it from the
socket (SO_PEERCRED).
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 16 << 20
"""A request carries a whole environment; 16 MiB bounds a hostile or broken client."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_NO_SUCH_RUN = 3

OPS = (
    "hello", "submit", "ls", "show", "cancel", "hold", "release", "drain", "undrain", "status",
    "usage", "history", "priority", "preview", "retry", "submit_many", "schedule", "schedules", "unschedule",
    "results", "share", "reserve", "reservations", "unreserve",
)


FEATURES = ("submit_options",)
"""What this engine understands beyond version 1's first form, for ``hello``:
``submit_options``: a submit request may carry the command line's options as typed
(``engine.submission.request_from_options``). An engine without it would ignore them."""


class RequestError(Exception):
    """A request the daemon refuses; ``code`` is the CLI exit status to use."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def too_long_message(op: str, size: int | None = None) -> str:
    """One line for an answer longer than :data:`MAX_LINE_BYTES` (``size`` unknown: the
    reader stopped at the limit)."""
    how_long = f"is {size / (1 << 20):.1f} MiB," if size is not None else "is"
    return (
        f"the answer to {op!r} {how_long} over the protocol's {MAX_LINE_BYTES >> 20} MiB line limit; "
        "ask for less (for ls: pages with after_id and limit, as `runyard ls --all` does)"
    )


def encode_request(op: str, args: dict[str, Any] | None = None) -> bytes:
    return (json.dumps({"v": PROTOCOL_VERSION, "op": op, "args": args or {}}) + "\n").encode()


def encode_result(result: Any) -> bytes:
    return (json.dumps({"v": PROTOCOL_VERSION, "ok": True, "result": result}) + "\n").encode()


def encode_error(message: str, code: int) -> bytes:
    return (json.dumps({"v": PROTOCOL_VERSION, "ok": False, "error": message, "code": code}) + "\n").encode()


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("request is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise RequestError('request must be an object with an "op"')
    if message.get("v") != PROTOCOL_VERSION:
        raise RequestError(
            f"protocol version {message.get('v')!r} not understood (daemon speaks {PROTOCOL_VERSION}); "
            "restart the daemon or the client so both are the same runyard version",
            EXIT_ERROR,
        )
    args = message.get("args") or {}
    if not isinstance(args, dict):
        raise RequestError('"args" must be an object')
    return message["op"], args
