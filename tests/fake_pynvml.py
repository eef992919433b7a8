"""A scriptable stand-in for the ``pynvml`` module, for tests on machines without GPUs.

Install it with ``monkeypatch.setitem(sys.modules, "pynvml", fake)``. It mirrors the
parts of nvidia-ml-py that runyard calls, including the error hierarchy: ``NVMLError(code)``
returns the subclass for that code (``NVMLError_GPUIsLost`` ...), carrying ``.value``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
NVML_TEMPERATURE_GPU = 0

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Base error; ``NVMLError(code)`` builds the code's subclass, as the real module does."""

    _by_code: dict[int, type[NVMLError]] = {}

    def __new__(cls, value: int):
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, cls)
        error = Exception.__new__(cls)
        error.value = value
        return error

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


class NVMLLibraryMismatchError(Exception):
    """Raised by the real module's unversioned calls when the driver is older."""


def _error_class(class_name: str, code: int) -> type[NVMLError]:
    def new(cls, *args):
        return NVMLError.__new__(cls, code)

    error_class = type(class_name, (NVMLError,), {"__new__": new})
    NVMLError._by_code[code] = error_class
    return error_class


NVMLError_Uninitialized = _error_class("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_NotSupported = _error_class("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _error_class("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_DriverNotLoaded = _error_class("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_FunctionNotFound = _error_class("NVMLError_FunctionNotFound", NVML_ERROR_FUNCTION_NOT_FOUND)
NVMLError_GpuIsLost = _error_class("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _error_class("NVMLError_Unknown", NVML_ERROR_UNKNOWN)


@dataclass
class FakeDevice:
    """One scripted GPU. ``errors`` maps a pynvml function name to the NVML error code
    it raises for this device, e.g. ``{"nvmlDeviceGetPowerUsage": NVML_ERROR_NOT_SUPPORTED}``;
    a value that is an exception instance is raised as is."""

    name: str = "NVIDIA Fake 80GB"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    mem_total: int = 80 << 30
    mem_used: int = 0
    util_percent: int = 0
    temperature_c: int = 40
    power_mw: int = 100_000
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    """``(pid, used_bytes or None)`` of each compute process."""
    errors: dict[str, int | BaseException] = field(default_factory=dict)


class FakeNvml(types.ModuleType):
    """The fake module. Mutate ``devices`` between samples to script changes.

    Args:
        devices: The GPUs, in NVML index order.
        init_error: NVML error code ``nvmlInit`` raises (e.g. ``NVML_ERROR_LIBRARY_NOT_FOUND``).
    """

    def __init__(self, devices: list[FakeDevice] | None = None, init_error: int | None = None) -> None:
        super().__init__("pynvml")
        self.devices = list(devices or [])
        self.init_error = init_error
        self.driver_version = "550.54.15"
        self.refcount = 0
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: list[str] = []
        for name, value in globals().items():
            if name.startswith(("NVML_", "NVMLError")) or name == "NVMLLibraryMismatchError":
                setattr(self, name, value)

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._check_initialised()
        self.shutdown_calls += 1
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_initialised()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check_initialised()
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        self._check_initialised()
        if not 0 <= index < len(self.devices):
            raise NVMLError(2)
        device = self.devices[index]
        self._maybe_raise(device, "nvmlDeviceGetHandleByIndex")
        return device

    def nvmlDeviceGetName(self, handle: FakeDevice) -> str:
        self._maybe_raise(handle, "nvmlDeviceGetName")
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> str:
        self._maybe_raise(handle, "nvmlDeviceGetUUID")
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice, version=None):
        self._maybe_raise(handle, "nvmlDeviceGetMemoryInfo")
        return types.SimpleNamespace(
            total=handle.mem_total, used=handle.mem_used, free=handle.mem_total - handle.mem_used
        )

    def nvmlDeviceGetUtilizationRates(self, handle: FakeDevice):
        self._maybe_raise(handle, "nvmlDeviceGetUtilizationRates")
        return types.SimpleNamespace(gpu=handle.util_percent, memory=0)

    def nvmlDeviceGetTemperature(self, handle: FakeDevice, sensor: int) -> int:
        self._maybe_raise(handle, "nvmlDeviceGetTemperature")
        assert sensor == NVML_TEMPERATURE_GPU
        return handle.temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: FakeDevice) -> int:
        self._maybe_raise(handle, "nvmlDeviceGetPowerUsage")
        return handle.power_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list:
        self._maybe_raise(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in handle.processes]

    def _check_initialised(self) -> None:
        if self.refcount <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _maybe_raise(self, device: FakeDevice, call: str) -> None:
        self.calls.append(call)
        self._check_initialised()
        error = device.errors.get(call)
        if isinstance(error, BaseException):
            raise error
        if error is not None:
            raise NVMLError(error)
