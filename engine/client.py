"""A blocking client of the daemon's socket, for the CLI, the TUI's workers and tests.

Stdlib only: ``runyard submit`` and ``runyard ls`` import this.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
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
        answer = json.loads(line)
        if not answer.get("ok"):
            raise ClientError(answer.get("error", "request failed"), answer.get("code", protocol.EXIT_ERROR))
        return answer.get("result")

    def is_alive(self) -> bool:
        try:
            self.call("hello")
        except (DaemonUnavailable, ClientError):
            return False
        return True
