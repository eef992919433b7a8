"""A client of an engine running in this process: the same ``call(op, **args)`` as
:class:`engine.client.Client`, without the socket.

The TUI uses it when it runs the engine embedded. Requests are dispatched on the
server's own loop (the only thread that may touch the engine) and the caller waits for
the answer with a timeout, so a caller is never inside the engine's state.

Answers go through a JSON round trip, outside the engine's loop: a caller gets exactly
the shapes the socket would give it (lists, not tuples; fresh objects it may keep or
change), so code written against one client works unchanged with the other.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from typing import Any

from engine import protocol
from engine.client import ClientError, DaemonUnavailable
from engine.daemon import EmbeddedEngine

log = logging.getLogger("runyard.inprocess")

DEFAULT_TIMEOUT_S = 30.0
WAIT_SLICE_S = 0.25


class InProcessClient:
    """Talks to an :class:`~engine.daemon.EmbeddedEngine` by calling its server directly.

    Args:
        embedded: A started embedded engine.
        timeout_s: How long one request may wait for the engine's loop.
    """

    def __init__(self, embedded: EmbeddedEngine, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.embedded = embedded
        self.timeout_s = timeout_s
        # The socket reads the caller's identity from the kernel (SO_PEERCRED); in this
        # process the caller is this process, so runs are submitted as its user.
        self._peer = (os.getpid(), os.getuid(), os.getgid())

    def call(self, op: str, **args: Any) -> Any:
        """One request; raises :class:`ClientError` when the engine refuses it and
        :class:`DaemonUnavailable` when the engine is not running."""
        server = self.embedded.server
        if server is None or server.stopping.is_set():
            raise DaemonUnavailable("the embedded engine is not running")
        answer: concurrent.futures.Future = concurrent.futures.Future()

        def dispatch() -> None:
            if not answer.set_running_or_notify_cancel():
                return  # the caller gave up waiting: do not act on a request nobody awaits
            try:
                answer.set_result(server.dispatch(op, args, self._peer))
            except BaseException as error:  # handed to the caller's thread
                answer.set_exception(error)

        try:
            server.loop.call_soon_threadsafe(dispatch)
        except RuntimeError:  # the loop is closed: the engine stopped
            raise DaemonUnavailable("the embedded engine is not running") from None
        try:
            result = self._wait(answer, server)
        except protocol.RequestError as error:
            raise ClientError(str(error), error.code) from None
        except Exception as error:  # as the socket server answers a bug: one line, not a crash
            log.exception("request %s failed", op)
            raise ClientError(f"internal error: {error}", protocol.EXIT_ERROR) from None
        return json.loads(json.dumps(result))

    def _wait(self, answer: concurrent.futures.Future, server: Any) -> Any:
        # In slices: a loop that closes while the request waits in it never runs it, and
        # the caller should hear "not running" at once rather than after the timeout.
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return answer.result(min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                if server.loop.is_closed():
                    answer.cancel()
                    raise DaemonUnavailable("the embedded engine stopped") from None
                if time.monotonic() >= deadline:
                    answer.cancel()
                    raise ClientError(
                        f"the engine did not answer within {self.timeout_s:g}s; "
                        "check with `runyard ls` before retrying",
                        protocol.EXIT_ERROR,
                    ) from None

    def is_alive(self) -> bool:
        try:
            self.call("hello")
        except (DaemonUnavailable, ClientError):
            return False
        return True
