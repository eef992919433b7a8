"""The configuration file: one TOML file, every value optional.

Found at ``$RUNYARD_CONFIG``, else ``config.toml`` in the platform's user config dir
(``~/.config/runyard/config.toml`` on Linux). A missing file means the defaults below.
A bad value is one line naming the file and the key, never a traceback::

    [engine]
    sample_interval = "2s"      # how often the box and each run are measured
    mem_headroom = "2G"         # memory admission keeps free for the OS and others
    gpu_mem_headroom = "512M"   # the same, per GPU
    exclude_gpus = [3]          # NVML indices runyard never hands out

    [defaults]                  # the envelope of a run that does not say
    cpus = 1
    mem = "1G"
    gpus = 0
    time = "12h"

    [history]
    raw_keep = "1h"             # full-resolution samples; older ones become per-minute
    retention = "3d"            # per-minute samples older than this are dropped

    [resources]                 # named counted resources: a run asks --res nfs_io=1
    nfs_io = 4
    licence = 2

Stdlib only: the CLI reads it for an offline submit.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.envelope import RESOURCE_NAME_RE
from engine.shared_config import SharedConfigError, SharedSettings
from engine.units import UnitError, parse_duration, parse_size



class ConfigError(ValueError):
    """A config file that cannot be used; one line naming the file and the key."""


@dataclass(frozen=True)
class SlurmSettings:
    """``[slurm]``: where and how runs go with ``backend = "slurm"``."""

    partition: str | None = None
    poll_interval_s: float = 2.0
    gpu_types: tuple[tuple[str, int], ...] = ()
    """GPU kinds by memory per GPU (``a100 = "80G"``), for ``--gpu-mem``."""
    gpu_types_as: str = "gres"
    """``gres`` (``--gres=gpu:a100:N``) or ``feature`` (``--constraint=a100``)."""


BACKENDS = ("local", "slurm")


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    """The file read, or ``None`` when there was none."""
    sample_interval_s: float = 2.0
    mem_headroom_bytes: int = 0
    gpu_mem_headroom_bytes: int = 0
    exclude_gpus: tuple[int, ...] = ()
    default_envelope: dict[str, Any] = field(default_factory=dict)
    """Envelope fields (``Envelope.to_dict`` names) that a submit leaves out."""
    history_raw_keep_s: float = 3600.0
    history_retention_s: float = 3 * 86400.0
    resources: tuple[tuple[str, int], ...] = ()
    gpu_idle_after_s: float = 15 * 60.0
    """A held GPU idle (under 5%) this long is reported."""
    alerts_table: dict[str, Any] = field(default_factory=dict)
    """``[alerts]`` as written; ``engine.alerts.AlertsConfig.from_table`` reads it (the
    CLI never needs it, so it is not parsed here)."""
    shared: SharedSettings = field(default_factory=SharedSettings)
    """``[shared]``: admins, fair share, limits and pools (``engine.shared_config``)."""
    backend: str = "local"
    """``[engine] backend``: ``local`` (this box) or ``slurm``; ``--backend`` overrides it."""
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


def config_path() -> Path:
    explicit = os.environ.get("RUNYARD_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("runyard", appauthor=False)) / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """Read the config file; raises :class:`ConfigError` with a one-line message."""
    path = path or config_path()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if os.environ.get("RUNYARD_CONFIG"):
            raise ConfigError(f"{path}: no such file (named by RUNYARD_CONFIG)") from None
        return Config()
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    return _parse(path, raw)


def _parse(path: Path, raw: dict[str, Any]) -> Config:
    reader = _Reader(path)
    known_tables = {"engine", "defaults", "history", "resources", "alerts", "health", "shared", "slurm"}
    for table in raw:
        if table not in known_tables:
            raise ConfigError(f"{path}: unknown table [{table}] (known: {', '.join(sorted(known_tables))})")
    engine = reader.table(raw, "engine", {"sample_interval", "mem_headroom", "gpu_mem_headroom", "exclude_gpus",
                                          "backend"})
    backend = engine.get("backend", "local")
    if backend not in BACKENDS:
        raise reader.fail("engine.backend", f"write one of {', '.join(BACKENDS)}, got {backend!r}")
    slurm = _slurm_settings(reader, reader.table(raw, "slurm", {"partition", "poll_interval", "gpu_types", "gpu_types_as"}))
    defaults = reader.table(raw, "defaults", {"cpus", "mem", "gpus", "gpu_mem", "disk", "time"})
    history = reader.table(raw, "history", {"raw_keep", "retention"})
    health = reader.table(raw, "health", {"gpu_idle_after"})
    alerts = raw.get("alerts", {})
    if not isinstance(alerts, dict):
        raise ConfigError(f"{path}: [alerts] must be a table (command, webhook, events, retries, timeout)")
    if alerts:
        from engine.alerts import AlertsConfig  # only when configured: it pulls in urllib

        AlertsConfig.from_table(alerts, path)  # a bad value fails here, naming the key
    try:
        shared = SharedSettings.from_table(raw.get("shared", {}), path)
    except SharedConfigError as error:
        raise ConfigError(str(error)) from None
    resources_table = raw.get("resources", {})
    if not isinstance(resources_table, dict):
        raise ConfigError(f"{path}: [resources] must be a table of NAME = COUNT")

    default_envelope: dict[str, Any] = {}
    if "cpus" in defaults:
        default_envelope["cpus"] = reader.number("defaults.cpus", defaults["cpus"], positive=True)
    if "gpus" in defaults:
        default_envelope["gpus"] = reader.whole("defaults.gpus", defaults["gpus"])
    for key, name in (("mem", "mem_bytes"), ("gpu_mem", "gpu_mem_bytes"), ("disk", "disk_bytes")):
        if key in defaults:
            default_envelope[name] = reader.size(f"defaults.{key}", defaults[key])
    if "time" in defaults:
        default_envelope["time_limit_s"] = reader.duration("defaults.time", defaults["time"])

    resources = []
    for name, count in sorted(resources_table.items()):
        if not RESOURCE_NAME_RE.fullmatch(name):
            raise ConfigError(f"{path}: resources.{name}: a name is letters, digits, _ . - (not starting with a digit)")
        resources.append((name, reader.whole(f"resources.{name}", count, minimum=1)))

    exclude = engine.get("exclude_gpus", [])
    if not isinstance(exclude, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in exclude):
        raise ConfigError(f"{path}: engine.exclude_gpus: write a list of GPU indices, e.g. [0, 3]")

    config = Config(
        path=path,
        sample_interval_s=reader.duration("engine.sample_interval", engine.get("sample_interval", "2s")),
        mem_headroom_bytes=reader.size("engine.mem_headroom", engine.get("mem_headroom", "0")),
        gpu_mem_headroom_bytes=reader.size("engine.gpu_mem_headroom", engine.get("gpu_mem_headroom", "0")),
        exclude_gpus=tuple(sorted(set(exclude))),
        default_envelope=default_envelope,
        history_raw_keep_s=reader.duration("history.raw_keep", history.get("raw_keep", "1h")),
        history_retention_s=reader.duration("history.retention", history.get("retention", "3d")),
        resources=tuple(resources),
        gpu_idle_after_s=reader.duration("health.gpu_idle_after", health.get("gpu_idle_after", "15m")),
        alerts_table=dict(alerts),
        shared=shared,
        backend=backend,
        slurm=slurm,
    )
    if config.sample_interval_s < 0.2:
        raise ConfigError(f"{path}: engine.sample_interval: at least 0.2s (it costs CPU on every sample)")
    return config


def _slurm_settings(reader: _Reader, table: dict[str, Any]) -> SlurmSettings:
    partition = table.get("partition")
    if partition is not None and (not isinstance(partition, str) or not partition.strip()):
        raise reader.fail("slurm.partition", f"write a partition name, got {partition!r}")
    poll = reader.duration("slurm.poll_interval", table.get("poll_interval", "2s"))
    if poll < 0.5:
        raise reader.fail("slurm.poll_interval", "at least 0.5s (each poll asks slurmctld about every job)")
    kinds = table.get("gpu_types", {})
    if not isinstance(kinds, dict):
        raise reader.fail("slurm.gpu_types", 'write a table of GPU kind = memory per GPU, e.g. { a100 = "80G" }')
    gpu_types = tuple(sorted((name, reader.size(f"slurm.gpu_types.{name}", size)) for name, size in kinds.items()))
    kind_as = table.get("gpu_types_as", "gres")
    if kind_as not in ("gres", "feature"):
        raise reader.fail("slurm.gpu_types_as", f"write gres or feature, got {kind_as!r}")
    return SlurmSettings(partition=partition, poll_interval_s=poll, gpu_types=gpu_types, gpu_types_as=kind_as)


@dataclass(frozen=True)
class _Reader:
    path: Path

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def table(self, raw: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{self.path}: [{name}] must be a table")
        for key in table:
            if key not in keys:
                raise self.fail(f"{name}.{key}", f"unknown key (known: {', '.join(sorted(keys))})")
        return table

    def size(self, key: str, value: Any) -> int:
        try:
            return parse_size(str(value))
        except UnitError as error:
            raise self.fail(key, str(error)) from None

    def duration(self, key: str, value: Any) -> float:
        try:
            return parse_duration(str(value))
        except UnitError as error:
            raise self.fail(key, str(error)) from None

    def number(self, key: str, value: Any, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
            raise self.fail(key, f"write a {'positive ' if positive else ''}number, got {value!r}")
        return float(value)

    def whole(self, key: str, value: Any, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"write a whole number of at least {minimum}, got {value!r}")
        return value
