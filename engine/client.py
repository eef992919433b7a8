"""A blocking client of the daemon's socket, for the CLI, the TUI's workers and tests.

Stdlib only: ``runyard submit`` and ``runyard ls`` import this.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from engine import protocol


class DaemonUnavailable(ConnectionError):
    """No daemon answers on the socket."""


class ClientError(Exception):
    """The daemon refused a request; ``code`` is the CLI exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, socket_path: Path, *, timeout_s: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s

    def call(self, op: str, **args: Any) -> Any:
        """One request, one answer, on a fresh connection (cheap on a Unix socket)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as error:
                raise DaemonUnavailable(str(error)) from None
            # Past this point the daemon may have acted on the request: a failure is not
            # "no daemon", or a caller falling back to an offline path could do it twice.
            try:
                sock.sendall(protocol.encode_request(op, args))
                line = sock.makefile("rb").readline(protocol.MAX_LINE_BYTES)
            except OSError as error:
                raise ClientError(
                    f"the engine did not answer ({error}); check with `runyard ls` before retrying",
                    protocol.EXIT_ERROR,
                ) from None
        finally:
            sock.close()
        if not line:
            raise ClientError(
                "the engine closed the connection without answering; check with `runyard ls` before retrying",
                protocol.EXIT_ERROR,
            )
        if not line.endswith(b"\n"):
            # readline stopped at the limit (or the engine died mid-answer): what came is
            # a fragment, and decoding it would only say "Unterminated string".
            if len(line) >= protocol.MAX_LINE_BYTES:
                raise ClientError(protocol.too_long_message(op), protocol.EXIT_ERROR)
            raise ClientError(
                "the engine's answer was cut off; check with `runyard ls` before retrying", protocol.EXIT_ERROR
            )
        try:
            answer = json.loads(line)
        except ValueError as error:
            raise ClientError(f"the engine's answer is not JSON ({error})", protocol.EXIT_ERROR) from None
        if not isinstance(answer, dict):
            raise ClientError("the engine's answer is not a protocol message", protocol.EXIT_ERROR)
        if not answer.get("ok"):
            raise ClientError(answer.get("error", "request failed"), answer.get("code", protocol.EXIT_ERROR))
        return answer.get("result")

    def runs(self, page: int = 1000) -> Iterator[dict[str, Any]]:
        return every_run(self, page)

    def is_alive(self) -> bool:
        try:
            self.call("hello")
        except (DaemonUnavailable, ClientError):
            return False
        return True


def every_run(client: Any, page: int = 1000) -> Iterator[dict[str, Any]]:
    """Every run, in id order, read a page at a time through ``client.call`` (the socket
    client or the in-process one): each answer stays small, and the engine serves other
    requests between pages. A run is seen exactly once even while runs are submitted
    meanwhile (pages follow ids, which only grow). An engine that predates paging answers
    the first request with every run; that answer is taken whole."""
    after_id = 0
    while True:
        answer = client.call("ls", all=True, after_id=after_id, limit=page)
        if not isinstance(answer, list) or not all(isinstance(run, dict) for run in answer):
            raise ClientError("the engine's ls answer is not a list of runs", protocol.EXIT_ERROR)
        yield from answer
        if len(answer) != page:
            return
        last = answer[-1].get("id")
        if not isinstance(last, int) or last <= after_id:
            raise ClientError("the engine's ls pages are out of order", protocol.EXIT_ERROR)
        after_id = last
