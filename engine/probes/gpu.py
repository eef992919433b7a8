"""What the GPUs show, read through NVML (the ``pynvml`` module of ``nvidia-ml-py``).

Every GPU is named by its **NVML index**, which orders devices by PCI bus id. CUDA's own
default order (``CUDA_DEVICE_ORDER=FASTEST_FIRST``) can differ on mixed boxes, so the
engine must start every run with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; only then does
``CUDA_VISIBLE_DEVICES=2`` in a run mean the card this module calls 2. Passing the
run its GPUs' UUIDs (:attr:`GpuSample.uuid`) instead of indices avoids the question.

Missing values follow nvitop's "N/A" idea expressed as ``None``: a field the card or
driver cannot report (no power sensor, MIG, old driver) is ``None`` and never an error.
A card that cannot be read at all is still returned, with ``available=False`` and a
reason, so that admission never places on it and the UI can say why.

Opening NVML is done by :func:`open_nvml`, which returns the probe *and* a one-line
status for the UI ("no NVIDIA driver found: running without GPUs"), or by
:meth:`NvmlProbe.try_open`, after which :func:`nvml_status` gives that line. Neither
raises. Neither changes the environment, and NVML's own init is reference-counted, so
several probes may be open at once; the only state kept here is the last status line.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU, as the driver reports it."""

    pid: int
    """As NVML reports it: a host pid. Inside a container with its own pid namespace
    these do not match the container's pids, and every process looks foreign."""
    used_mem: int | None
    """Bytes; ``None`` when the driver cannot tell (e.g. Windows WDDM, some vGPU setups)."""
    user: str | None = None
    """Who runs it, when the probe knows without asking the OS (simulated cards);
    otherwise looked up by pid when shown."""


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU. Sizes are bytes."""

    index: int
    """NVML index (PCI bus order); see the module docstring about ``CUDA_DEVICE_ORDER``."""
    name: str
    uuid: str | None
    mem_total: int
    mem_used: int
    """Everything in use on the card, including the driver's own reserve."""
    util_percent: float | None
    temperature_c: float | None
    power_w: float | None
    processes: tuple[GpuProcess, ...]
    available: bool = True
    unavailable_reason: str | None = None


class GpuProbe(Protocol):
    """What the engine needs from a GPU source: NVML or the simulation."""

    status: str
    """One line for the UI: what is being read, or why there are no GPUs."""

    def sample(self) -> tuple[GpuSample, ...]: ...

    def close(self) -> None: ...


class _FromEnv(enum.Enum):
    FROM_ENV = "from-env"


FROM_ENV = _FromEnv.FROM_ENV
"""Default for ``visible``: read ``CUDA_VISIBLE_DEVICES`` when the probe is opened (not
when this module is imported, so a test's ``monkeypatch.setenv`` is honoured)."""


def select_visible(visible: str | None, uuids: Sequence[str | None]) -> tuple[tuple[int, ...], str | None]:
    """Which NVML indices a ``CUDA_VISIBLE_DEVICES`` value leaves visible.

    Args:
        visible: The variable's value; ``None`` when unset (every GPU is visible).
        uuids: UUID of each NVML index, ``None`` where unreadable.

    Returns:
        The visible indices, ascending, and a note for the UI when part of the value
        was not understood (``None`` otherwise). Like CUDA, reading stops at the first
        entry that names no device: ``0,7,1`` on a 4-GPU box leaves only GPU 0.
    """
    if visible is None:
        return tuple(range(len(uuids))), None
    chosen: list[int] = []
    for raw in visible.split(","):
        token = raw.strip()
        index = _resolve_visible_token(token, uuids)
        if index is None:
            if token:
                return tuple(sorted(set(chosen))), (
                    f"CUDA_VISIBLE_DEVICES entry {token!r} names no GPU here; it and the entries after it are ignored"
                )
            break
        chosen.append(index)
    return tuple(sorted(set(chosen))), None


def _resolve_visible_token(token: str, uuids: Sequence[str | None]) -> int | None:
    if token.isdigit():
        index = int(token)
        return index if index < len(uuids) else None
    if token.upper().startswith("GPU-"):
        # CUDA accepts any unique prefix of a UUID, not only the full string.
        wanted = token.lower()
        matches = [i for i, uuid in enumerate(uuids) if uuid is not None and uuid.lower().startswith(wanted)]
        return matches[0] if len(matches) == 1 else None
    # Negative numbers, MIG-... instances and typos: CUDA stops here too.
    return None


_last_status = "NVML not opened yet"


def nvml_status() -> str:
    """The status line of the most recent :func:`open_nvml` / :meth:`NvmlProbe.try_open`
    in this process: what is sampled, or why there are no GPUs."""
    return _last_status


def open_nvml(
    visible: str | None | _FromEnv = FROM_ENV,
    exclude: Collection[int] = (),
) -> tuple[NvmlProbe | None, str]:
    """Open NVML for sampling; never raises.

    Args:
        visible: A ``CUDA_VISIBLE_DEVICES`` value narrowing which GPUs runyard uses:
            NVML indices (``"0,2"``), UUIDs or unique UUID prefixes (``"GPU-8932f937"``),
            ``""`` for none, ``None`` for all. By default the daemon's own environment.
        exclude: NVML indices runyard must never use (from configuration); they are
            left out of every sample.

    Returns:
        ``(probe, status)``; the probe is ``None`` when there is nothing to sample, and
        ``status`` then says why in one line (no driver, library missing, none visible).
        The status is also kept for :func:`nvml_status`.
    """
    global _last_status
    probe, _last_status = _open_nvml(visible, exclude)
    return probe, _last_status


def _open_nvml(visible: str | None | _FromEnv, exclude: Collection[int]) -> tuple[NvmlProbe | None, str]:
    if visible is FROM_ENV:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return None, "CUDA_VISIBLE_DEVICES is empty: no GPUs are used"
    try:
        import pynvml
    except Exception:  # noqa: BLE001 - any import failure means the same thing here.
        return None, "no NVML bindings (pip install nvidia-ml-py): running without GPUs"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return None, _init_failure(pynvml, error)
    except Exception as error:  # noqa: BLE001 - opening must never take the daemon down.
        return None, f"NVML failed to start ({error}): running without GPUs"
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as error:
        _shutdown_quietly(pynvml)
        return None, f"NVML cannot count GPUs ({_error_text(error)}): running without GPUs"
    uuids = _read_uuids(pynvml, count) if visible is not None and "GPU-" in visible.upper() else [None] * count
    indices, note = select_visible(visible, uuids)
    excluded = {int(i) for i in exclude}
    indices = tuple(i for i in indices if i not in excluded)
    status = _open_status(pynvml, count, indices, excluded, note)
    if not indices:
        _shutdown_quietly(pynvml)
        return None, status
    return NvmlProbe(pynvml, indices, status), status


class NvmlProbe:
    """Samples GPUs through NVML. Build it with :func:`open_nvml` or :meth:`try_open`.

    The set of indices is fixed when the probe opens: a card that is lost later stays in
    every sample as unavailable instead of silently vanishing.
    """

    def __init__(self, nvml: ModuleType, indices: Sequence[int], status: str) -> None:
        self._nvml = nvml
        self._indices = tuple(indices)
        self.status = status
        self._open = True
        self._errors = _error_types(nvml)
        # Name, UUID and total memory never change; caching them saves NVML calls and
        # lets a lost card still be shown by name and size.
        self._identity: dict[int, tuple[str, str | None]] = {}
        self._mem_total: dict[int, int] = {}

    @classmethod
    def try_open(
        cls,
        visible: str | None | _FromEnv = FROM_ENV,
        exclude: Collection[int] = (),
    ) -> NvmlProbe | None:
        """:func:`open_nvml` without the status line; ``None`` when there are no GPUs."""
        return open_nvml(visible, exclude)[0]

    @property
    def indices(self) -> tuple[int, ...]:
        """NVML indices this probe samples."""
        return self._indices

    def sample(self) -> tuple[GpuSample, ...]:
        """Read every visible GPU now; never raises on NVML errors."""
        if not self._open:
            return ()
        return tuple(self._sample_device(index) for index in self._indices)

    def close(self) -> None:
        """Release NVML; further samples are empty. Safe to call twice."""
        if self._open:
            self._open = False
            _shutdown_quietly(self._nvml)

    def versions(self) -> dict[str, str | None]:
        """The driver's version and the CUDA version it supports (``"12.4"``), for a run's
        provenance; ``None`` for what the driver cannot tell."""
        found: dict[str, str | None] = {"driver": None, "cuda": None}
        if not self._open:
            return found
        try:
            found["driver"] = _text(self._nvml.nvmlSystemGetDriverVersion())
        except Exception:  # noqa: BLE001 - a missing version must never fail a submit.
            pass
        try:
            cuda = int(self._nvml.nvmlSystemGetCudaDriverVersion())
            found["cuda"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        except Exception:  # noqa: BLE001 - old drivers and bindings lack the call.
            pass
        return found

    def __enter__(self) -> NvmlProbe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _sample_device(self, index: int) -> GpuSample:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except self._errors as error:
            return self._unavailable(index, error)
        name, uuid = self._identify(index, handle)
        mem_total = self._mem_total[index] = int(memory.total)
        utilization = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        temperature = self._optional(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        power_mw = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
        processes = self._optional(nvml.nvmlDeviceGetComputeRunningProcesses, handle) or ()
        return GpuSample(
            index=index,
            name=name,
            uuid=uuid,
            mem_total=mem_total,
            mem_used=int(memory.used),
            util_percent=None if utilization is None else float(utilization.gpu),
            temperature_c=None if temperature is None else float(temperature),
            power_w=None if power_mw is None else power_mw / 1000.0,
            processes=tuple(
                GpuProcess(
                    pid=int(proc.pid),
                    used_mem=None if getattr(proc, "usedGpuMemory", None) is None else int(proc.usedGpuMemory),
                )
                for proc in processes
            ),
        )

    def _identify(self, index: int, handle: object) -> tuple[str, str | None]:
        if index in self._identity:
            return self._identity[index]
        name = _text(self._optional(self._nvml.nvmlDeviceGetName, handle))
        uuid = _text(self._optional(self._nvml.nvmlDeviceGetUUID, handle))
        if name is not None and uuid is not None:
            self._identity[index] = (name, uuid)
        return name or f"GPU {index}", uuid

    def _optional(self, call, *args):
        try:
            return call(*args)
        except self._errors:
            return None

    def _unavailable(self, index: int, error: BaseException) -> GpuSample:
        name, uuid = self._identity.get(index, (f"GPU {index}", None))
        return GpuSample(
            index=index,
            name=name,
            uuid=uuid,
            mem_total=self._mem_total.get(index, 0),
            mem_used=0,
            util_percent=None,
            temperature_c=None,
            power_w=None,
            processes=(),
            available=False,
            unavailable_reason=_device_failure(self._nvml, error),
        )


def _error_types(nvml: ModuleType) -> tuple[type[BaseException], ...]:
    # Unversioned calls raise NVMLLibraryMismatchError (not an NVMLError) when the
    # bindings are newer than the driver; that must not break sampling either.
    mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
    return (nvml.NVMLError, mismatch) if isinstance(mismatch, type) else (nvml.NVMLError,)


def _read_uuids(nvml: ModuleType, count: int) -> list[str | None]:
    uuids: list[str | None] = []
    for index in range(count):
        try:
            uuids.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index))))
        except nvml.NVMLError:
            uuids.append(None)
    return uuids


def _open_status(
    nvml: ModuleType, count: int, indices: Sequence[int], excluded: Collection[int], note: str | None
) -> str:
    driver = None
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
    except Exception:  # noqa: BLE001 - the version is decoration only.
        pass
    parts = [f"NVML: {len(indices)} of {count} GPU{'s' if count != 1 else ''} used"]
    if driver:
        parts.append(f"driver {driver}")
    skipped = sorted(i for i in excluded if 0 <= i < count)
    if skipped:
        parts.append("excluded " + ",".join(str(i) for i in skipped))
    if note:
        parts.append(note)
    return "; ".join(parts)


def _init_failure(nvml: ModuleType, error: BaseException) -> str:
    code = getattr(error, "value", None)
    if code == getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", object()):
        return "no NVIDIA driver found (libnvidia-ml.so.1 is missing): running without GPUs"
    if code == getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", object()):
        return "NVIDIA driver is installed but not loaded (try nvidia-smi): running without GPUs"
    if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", object()):
        return "no permission to open the NVIDIA driver (check /dev/nvidia*): running without GPUs"
    return f"NVML failed to start ({_error_text(error)}): running without GPUs"


def _device_failure(nvml: ModuleType, error: BaseException) -> str:
    code = getattr(error, "value", None)
    if code == getattr(nvml, "NVML_ERROR_GPU_IS_LOST", object()):
        return "GPU is lost (fell off the bus): check nvidia-smi and dmesg; a reset or reboot is needed"
    return f"NVML cannot read this GPU: {_error_text(error)}"


def _error_text(error: BaseException) -> str:
    # pynvml's __str__ may itself call into the library for unknown codes.
    try:
        return str(error)
    except Exception:  # noqa: BLE001
        return f"NVML error {getattr(error, 'value', '?')}"


def _shutdown_quietly(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - nothing useful to do when releasing fails.
        pass


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
