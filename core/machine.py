"""This machine, asked in one place: NVIDIA GPUs through NVML, the host, the versions.

The report, the Compare lab, every answer's provenance and the window's About box all
read these, so they say the same thing. Nothing here raises for a missing driver, a
missing library or a GPU that lacks a sensor: "not available" is an answer (`None`, `[]`
or `Nvml.reason`). NVML (`pynvml`) is imported only when a GPU is asked about.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import platform
import re
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The libraries that decide Nibble's numbers and answers, and the window's.
PACKAGES = (
    "nibble",
    "torch",
    "transformers",
    "bitsandbytes",
    "accelerate",
    "safetensors",
    "tokenizers",
    "huggingface_hub",
    "PySide6-Essentials",
    "pyqtgraph",
    "numpy",
)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


# -- NVML --


class Nvml:
    """One NVML session that never raises: `open()` says whether GPUs can be read, and
    `reason` says why not in the user's words.

    `binding` is the NVML module; None imports nvidia-ml-py (`pynvml`) on `open()`.
    Tests pass a fake. Use as a context manager, or `open()` then `close()`.
    """

    def __init__(self, binding: Any = None) -> None:
        self._given = binding
        self.binding: Any = None
        self.handles: list[Any] = []
        self.reason: str | None = None

    @property
    def available(self) -> bool:
        return self.binding is not None and bool(self.handles)

    def open(self) -> bool:
        """Initialise NVML and list the GPUs' handles; True when there is a GPU."""
        nvml = self._given
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                self.reason = "nvidia-ml-py is not installed"
                return False
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self.reason = _reason(nvml, exc)
            logger.info("no GPU monitoring: %s", self.reason)
            return False
        self.binding = nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as exc:
            self.reason = _reason(nvml, exc)
            self.handles = []
        if not self.handles and self.reason is None:
            self.reason = "No NVIDIA GPU found"
        return bool(self.handles)

    def call(self, name: str, *args: Any) -> Any:
        """An NVML query, or None where the GPU or driver does not support it."""
        nvml = self.binding
        fn = getattr(nvml, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except nvml.NVMLError:
            return None

    def text(self, name: str, *args: Any) -> str | None:
        """A query whose answer is text (older bindings return bytes)."""
        value = self.call(name, *args)
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        return value

    def close(self) -> None:
        if self.binding is not None:
            with contextlib.suppress(Exception):
                self.binding.nvmlShutdown()
        self.binding = None
        self.handles = []

    def __enter__(self) -> Nvml:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(nvml: Any, exc: Exception) -> str:
    """Why NVML cannot be used, in the user's words."""
    code = getattr(exc, "value", None)
    if code == getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", object()):
        return "No NVIDIA driver found"
    if code == getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", object()):
        return "The NVIDIA driver is not loaded"
    if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", object()):
        return "No permission to read the NVIDIA driver"
    return f"The NVIDIA driver cannot be read: {exc}"


def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs: index, name, total memory and driver; [] without a driver."""
    found: list[dict[str, Any]] = []
    with Nvml() as nvml:
        driver = nvml.text("nvmlSystemGetDriverVersion")
        for index, handle in enumerate(nvml.handles):
            memory = nvml.call("nvmlDeviceGetMemoryInfo", handle)
            found.append(
                {
                    "index": index,
                    "name": nvml.text("nvmlDeviceGetName", handle) or "NVIDIA GPU",
                    "memory_total": None if memory is None else int(memory.total),
                    "driver": driver,
                }
            )
    return found


def driver_version() -> str | None:
    """The NVIDIA driver's version, or None without one."""
    with Nvml() as nvml:
        return nvml.text("nvmlSystemGetDriverVersion") if nvml.binding else None


# -- the host --


def _cpuinfo(key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    """The CPU model as the OS names it."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features bitsandbytes' CPU kernels care about."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    have = set((_cpuinfo("flags") or "").split())
    return [f for f in wanted if f in have]


def os_name() -> str:
    """'Linux-6.8.0-x86_64-with-glibc2.39' and the like."""
    return platform.platform(terse=True)


def host() -> dict[str, Any]:
    """CPU, its features, cores and RAM of this machine."""
    import psutil

    return {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_total": int(psutil.virtual_memory().total),
    }


# -- versions --


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None (nothing is imported)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nibble_version() -> str | None:
    """Nibble's version: installed metadata, else the pyproject.toml beside the code."""
    version = package_version("nibble")
    if version:
        return version
    with contextlib.suppress(OSError):
        match = re.search(
            r'^version\s*=\s*"([^"]+)"', PYPROJECT.read_text(), re.MULTILINE
        )
        if match:
            return match.group(1)
    return None


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str | None], ...]:
    return tuple(
        (name, nibble_version() if name == "nibble" else package_version(name))
        for name in PACKAGES
    )


def versions() -> dict[str, str | None]:
    """Nibble's version and its libraries' (read once, from metadata; None: absent)."""
    return dict(_versions())


def environment() -> dict[str, Any]:
    """Python, the OS, whether this is the packaged app, and the versions."""
    return {
        "python": platform.python_version(),
        "platform": os_name(),
        "frozen": bool(getattr(sys, "frozen", False)),
        "packages": versions(),
    }
