"""Alerts: tell a person (or a chat, or a pager) when a run changes state or health.

Configured in the config file's ``[alerts]`` table::

    [alerts]
    webhook = "https://hooks.example.com/runyard"   # POSTed the event as JSON
    command = "notify-send runyard \\"$RUNYARD_EVENT_KIND\\""  # gets the JSON on stdin
    events = ["failed", "timed_out", "health"]    # empty or absent: every event
    retries = 3                                   # more attempts after a failed delivery
    timeout = "5s"                                # per attempt
    backoff = "1s"                                # before the first retry; doubles after

An event filter matches its kind exactly or as a prefix before ``:`` (``health``
matches ``health:unhealthy`` and ``health:stalled``).

Delivery never blocks and never fails the engine: :meth:`Notifier.notify` only queues;
one worker thread per destination (webhook, command) delivers in order, retrying a
failure with backoff and logging what could not be delivered. A destination that
hangs delays only its own later events, up to its timeout per attempt.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.config import ConfigError
from engine.units import UnitError, parse_duration

log = logging.getLogger("runyard.alerts")

STATE_EVENTS = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out", "retrying", "paused")
HEALTH_EVENTS = ("health:starting", "health:healthy", "health:unhealthy", "health:stalled", "health:warning")
EVENT_KINDS = STATE_EVENTS + HEALTH_EVENTS
"""Every kind of event runyard sends; a filter may also name a prefix (``health``)."""
EVENT_PREFIXES = tuple(sorted({kind.split(":", 1)[0] for kind in EVENT_KINDS if ":" in kind}))

MAX_BACKOFF_S = 60.0
DEFAULT_QUEUE_SIZE = 1000
_RESPONSE_READ_LIMIT = 64 << 10
_COMMAND_OUTPUT_KEEP = 500
# Shell syntax that shlex cannot stand in for: expansions, pipes, redirections, globs.
_SHELL_SYNTAX = re.compile(r"[$`|&;<>()*?\[\]{}~!#\\\n]|^\s*\w+=")


class AlertsConfigError(ConfigError):
    """A bad ``[alerts]`` value; one line naming the file and the key."""


@dataclass(frozen=True)
class AlertsConfig:
    command: str | None = None
    """Run for each event with its JSON on stdin (through ``sh -c`` if it uses shell syntax)."""
    webhook: str | None = None
    """An http:// or https:// URL that is POSTed each event as JSON."""
    events: tuple[str, ...] = ()
    """Kinds (or prefixes) to send; empty: all."""
    retries: int = 3
    """Further attempts after a failed delivery."""
    timeout_s: float = 5.0
    backoff_s: float = 1.0
    """Wait before the first retry; doubles for each next one (up to a minute)."""

    @property
    def enabled(self) -> bool:
        return self.command is not None or self.webhook is not None

    def wants(self, kind: str) -> bool:
        """Whether an event of this kind passes the ``events`` filter."""
        return not self.events or any(kind == wanted or kind.startswith(f"{wanted}:") for wanted in self.events)

    @classmethod
    def from_table(cls, table: Any, path: Path | str | None) -> AlertsConfig:
        """Validate the TOML ``[alerts]`` table (``{}`` when absent); raises
        :class:`AlertsConfigError` like ``config.toml: alerts.webhook: must be an http:// or
        https:// URL``."""
        where = str(path) if path is not None else "config"

        def fail(key: str, message: str) -> AlertsConfigError:
            return AlertsConfigError(f"{where}: alerts.{key}: {message}")

        if not isinstance(table, Mapping):
            raise AlertsConfigError(f"{where}: [alerts] must be a table")
        known = ("command", "webhook", "events", "retries", "timeout", "backoff")
        for key in table:
            if key not in known:
                raise fail(key, f"unknown key (known: {', '.join(known)})")

        command = table.get("command")
        if command is not None and (not isinstance(command, str) or not command.strip()):
            raise fail("command", "must be a command line, e.g. \"notify-send runyard\"")

        webhook = table.get("webhook")
        if webhook is not None:
            parts = urllib.parse.urlsplit(webhook) if isinstance(webhook, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise fail("webhook", "must be an http:// or https:// URL")

        events = table.get("events", [])
        if isinstance(events, str):
            events = [events]
        if not isinstance(events, list) or not all(isinstance(kind, str) for kind in events):
            raise fail("events", "write a list of event kinds, e.g. [\"failed\", \"health\"]")
        for kind in events:
            if kind not in EVENT_KINDS and kind not in EVENT_PREFIXES:
                raise fail("events", f"unknown event {kind!r} (known: {', '.join(EVENT_KINDS + EVENT_PREFIXES)})")

        retries = table.get("retries", cls.retries)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise fail("retries", "must be a whole number from 0 to 100")

        return cls(
            command=command,
            webhook=webhook,
            events=tuple(events),
            retries=retries,
            timeout_s=_seconds(table, "timeout", cls.timeout_s, fail, positive=True),
            backoff_s=_seconds(table, "backoff", cls.backoff_s, fail, positive=False),
        )


def _seconds(table: Mapping[str, Any], key: str, default: float,
             fail: Callable[[str, str], AlertsConfigError], *, positive: bool) -> float:
    value = table.get(key, default)
    if isinstance(value, str):
        try:
            value = parse_duration(value)
        except UnitError as error:
            raise fail(key, str(error)) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise fail(key, f"must be a {'positive ' if positive else ''}duration like \"5s\"")
    return float(value)


@dataclass(frozen=True)
class Event:
    """Something an alert reports. ``kind`` is a run state (``failed``), ``paused`` or
    ``health:<health>``."""

    kind: str
    run_id: int | None
    at: float
    """Unix time of the change."""
    name: str | None = None
    state: str | None = None
    previous_state: str | None = None
    health: str | None = None
    previous_health: str | None = None
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    """Anything else worth sending (an exit code, a pause's key)."""

    @classmethod
    def state_change(cls, run_id: int, to_state: str, from_state: str | None, *, at: float, reason: str = "",
                     name: str | None = None, **data: Any) -> Event:
        """The event of a run's state change (the store listener's ``to_state`` etc.)."""
        return cls(kind=to_state, run_id=run_id, at=at, name=name, state=to_state, previous_state=from_state,
                   reason=reason, data=data)

    @classmethod
    def health_change(cls, run_id: int, health: str, previous_health: str | None, *, at: float, reason: str = "",
                      name: str | None = None, state: str | None = "running", **data: Any) -> Event:
        return cls(kind=f"health:{health}", run_id=run_id, at=at, name=name, state=state, health=health,
                   previous_health=previous_health, reason=reason, data=data)

    @classmethod
    def from_change(cls, change: Mapping[str, Any], *, name: str | None = None) -> Event:
        """The event of a dict the engine already produces: a store listener's state
        change ``{run_id, at, from_state, to_state, reason}``, or an ``Engine.emit``
        event ``{kind, run_id, at, reason, ...}`` (other keys go to ``data``; a
        ``health``/``previous_health`` pair is recognised)."""
        if "to_state" in change:
            return cls.state_change(change["run_id"], change["to_state"], change.get("from_state"),
                                    at=change["at"], reason=change.get("reason") or "", name=name)
        known = {"kind", "run_id", "at", "reason", "name", "state", "previous_state", "health", "previous_health"}
        return cls(
            kind=change["kind"], run_id=change.get("run_id"), at=change["at"], name=change.get("name", name),
            state=change.get("state"), previous_state=change.get("previous_state"), health=change.get("health"),
            previous_health=change.get("previous_health"), reason=change.get("reason") or "",
            data={key: value for key, value in change.items() if key not in known},
        )

    @property
    def text(self) -> str:
        """One line for a person: ``run 7 (train) failed: exit code 1``."""
        subject = "runyard" if self.run_id is None else f"run {self.run_id}"
        if self.name:
            subject = f"{subject} ({self.name})"
        verb = f"is {self.health}" if self.health is not None and self.kind.startswith("health:") else self.kind
        verb = {"running": "started", "queued": "queued", "retrying": "will be retried"}.get(verb, verb)
        return f"{subject} {verb}: {self.reason}" if self.reason else f"{subject} {verb}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": "runyard",
            "kind": self.kind,
            "run_id": self.run_id,
            "name": self.name,
            "at": self.at,
            "at_iso": datetime.fromtimestamp(self.at, timezone.utc).isoformat(),
            "host": socket.gethostname(),
            "state": self.state,
            "previous_state": self.previous_state,
            "health": self.health,
            "previous_health": self.previous_health,
            "reason": self.reason,
            # Slack, Mattermost and Discord-compatible hooks show this field as it is.
            "text": self.text,
            "data": self.data,
        }

    def to_json(self) -> str:
        """The JSON a webhook or command receives; never raises on odd ``data``."""
        return json.dumps(_json_safe(self.to_dict()), default=str, allow_nan=False)


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: send them as the strings heartbeat files use."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


class DeliveryError(Exception):
    """One failed attempt; ``retryable`` is false when trying again cannot help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def post_webhook(url: str, body: bytes, timeout_s: float,
                 opener: urllib.request.OpenerDirector | None = None) -> None:
    """POST ``body`` as JSON; raises :class:`DeliveryError` unless the answer is 2xx.
    A 4xx other than 408/429 is not worth retrying (the hook refuses this request)."""
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "runyard-alerts"},
    )
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=timeout_s) as response:
            response.read(_RESPONSE_READ_LIMIT)
    except urllib.error.HTTPError as error:
        error.close()
        retryable = error.code >= 500 or error.code in (408, 429)
        raise DeliveryError(f"HTTP {error.code} {error.reason}", retryable=retryable) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise DeliveryError(f"cannot reach it ({reason})") from None


def run_command(command: str, body: bytes, event: Event, timeout_s: float) -> None:
    """Run the hook with the event's JSON on stdin and ``RUNYARD_EVENT_*`` in its
    environment; raises :class:`DeliveryError` on a non-zero exit or at the timeout
    (its whole process group is killed then)."""
    env = dict(os.environ)
    env.update({
        "RUNYARD_EVENT_KIND": event.kind,
        "RUNYARD_EVENT_RUN_ID": "" if event.run_id is None else str(event.run_id),
        "RUNYARD_EVENT_REASON": event.reason,
        "RUNYARD_EVENT_STATE": event.state or "",
        "RUNYARD_EVENT_HEALTH": event.health or "",
        "RUNYARD_EVENT_AT": repr(event.at),
        "RUNYARD_EVENT_TEXT": event.text,
    })
    # Files, not pipes, on both ends: a hook that leaves something running in the
    # background (holding its output) is done when it exits, not when that ends.
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as output:
        stdin.write(body)
        stdin.seek(0)
        try:
            process = subprocess.Popen(_command_argv(command), stdin=stdin, stdout=output, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        except (OSError, ValueError) as error:
            raise DeliveryError(f"cannot run it ({error})") from None
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass  # SIGKILLed; only an uninterruptible sleep keeps it
            raise DeliveryError(f"still running after {timeout_s:g}s; killed") from None
        if process.returncode != 0:
            output.seek(max(0, os.fstat(output.fileno()).st_size - 4 * _COMMAND_OUTPUT_KEEP))
            text = output.read().decode("utf-8", errors="replace").strip()[-_COMMAND_OUTPUT_KEEP:]
            raise DeliveryError(f"exit {process.returncode}" + (f": {text}" if text else ""))


def _command_argv(command: str) -> list[str]:
    """A plain command line runs as is; one with shell syntax through ``sh -c``."""
    if not _SHELL_SYNTAX.search(command):
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = []
        if argv:
            return argv
    return ["sh", "-c", command]


def _kill_group(group_id: int) -> None:
    try:
        os.killpg(group_id, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


Deliver = Callable[[Event, bytes], None]


class _Destination:
    """One webhook or command: a bounded queue and the thread that empties it in order."""

    def __init__(self, label: str, deliver: Deliver, config: AlertsConfig, queue_size: int,
                 sleep: Callable[[float], bool]) -> None:
        self.label = label
        self.deliver = deliver
        self.config = config
        self.pending: collections.deque[Event] = collections.deque()
        self.queue_size = queue_size
        self.wakeup = threading.Condition()
        self.closing = False
        self.busy = False
        self.sleep = sleep
        self.thread = threading.Thread(target=self._work, name=f"runyard-alerts-{label.split(' ')[0]}", daemon=True)
        self.thread.start()

    def put(self, event: Event) -> bool:
        with self.wakeup:
            if self.closing:
                return False
            if len(self.pending) >= self.queue_size:
                dropped = self.pending.popleft()
                log.warning("alert queue for %s is full; dropped the %s event of run %s",
                            self.label, dropped.kind, dropped.run_id)
            self.pending.append(event)
            self.wakeup.notify()
            return True

    def close(self) -> None:
        with self.wakeup:
            self.closing = True
            self.wakeup.notify()

    def idle(self) -> bool:
        with self.wakeup:
            return not self.pending and not self.busy

    def _work(self) -> None:
        while True:
            with self.wakeup:
                while not self.pending and not self.closing:
                    self.wakeup.wait()
                if not self.pending:
                    return
                event = self.pending.popleft()
                self.busy = True
            try:
                self._deliver_with_retries(event)
            except Exception:  # a bug here must not end the thread and silence every later alert
                log.exception("alert delivery to %s crashed", self.label)
            finally:
                with self.wakeup:
                    self.busy = False

    def _deliver_with_retries(self, event: Event) -> None:
        body = event.to_json().encode()
        attempts = self.config.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self.deliver(event, body)
                return
            except DeliveryError as error:
                if attempt == attempts or not error.retryable:
                    log.warning("alert %s for run %s not delivered to %s after %d attempt%s: %s",
                                event.kind, event.run_id, self.label, attempt, "s" if attempt > 1 else "", error)
                    return
                delay = min(MAX_BACKOFF_S, self.config.backoff_s * 2 ** (attempt - 1))
                log.warning("alert %s for run %s to %s failed (%s); retrying in %.1fs",
                            event.kind, event.run_id, self.label, error, delay)
                if not self.sleep(delay):
                    log.warning("alert %s for run %s not delivered to %s: shutting down",
                                event.kind, event.run_id, self.label)
                    return


class Notifier:
    """Sends events to the configured webhook and command, off the caller's thread.

    Thread-safe: call :meth:`notify` from the engine's loop (or any thread); it returns
    at once and never raises. Call :meth:`close` when the engine stops.
    """

    def __init__(self, config: AlertsConfig, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.config = config
        self._aborting = threading.Event()
        self._destinations: list[_Destination] = []
        if config.webhook is not None:
            # Built once: proxies come from the environment as the engine started.
            opener = urllib.request.build_opener()
            url = config.webhook

            def deliver_webhook(event: Event, body: bytes) -> None:
                post_webhook(url, body, config.timeout_s, opener)

            self._destinations.append(
                _Destination(f"webhook {_redacted(url)}", deliver_webhook, config, queue_size, self._sleep))
        if config.command is not None:
            command = config.command

            def deliver_command(event: Event, body: bytes) -> None:
                run_command(command, body, event, config.timeout_s)

            self._destinations.append(
                _Destination(f"command {command[:60]!r}", deliver_command, config, queue_size, self._sleep))

    def notify(self, event: Event) -> bool:
        """Queue ``event`` for every destination if the filter wants it; returns whether
        it was queued. Never blocks, never raises."""
        try:
            if not self._destinations or not self.config.wants(event.kind):
                return False
            return any([destination.put(event) for destination in self._destinations])
        except Exception:
            log.exception("could not queue alert %r", event)
            return False

    def idle(self) -> bool:
        """Nothing queued or in flight (for tests and for a graceful stop)."""
        return all(destination.idle() for destination in self._destinations)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Deliver what is queued for up to ``timeout_s``, then give up on the rest
        (retries stop waiting; an attempt in flight ends at its own timeout in a
        daemon thread that does not keep the process alive). Returns whether all was
        delivered or given up on cleanly in time."""
        for destination in self._destinations:
            destination.close()
        deadline = time.monotonic() + timeout_s
        for destination in self._destinations:
            destination.thread.join(max(0.0, deadline - time.monotonic()))
        if any(destination.thread.is_alive() for destination in self._destinations):
            self._aborting.set()
            for destination in self._destinations:
                with destination.wakeup:
                    destination.pending.clear()
            return False
        return True

    def _sleep(self, seconds: float) -> bool:
        """Wait before a retry; ``False`` if the notifier is being torn down."""
        return not self._aborting.wait(seconds)


def _redacted(url: str) -> str:
    """The URL for a log line without credentials, path or query, which often hold a secret."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}" + ("/…" if parts.path not in ("", "/") or parts.query else "")
