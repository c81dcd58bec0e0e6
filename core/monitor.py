"""Live memory sampling: NVML GPUs and psutil host/process numbers as dataclasses.

A `Sampler` returns one `Sample` per call. Having no NVIDIA driver, no NVML library or
no GPU is a state with its reason (`Sample.gpu_reason`), never an exception; a field a
GPU does not support is None. Torch's own counters are read only when the program has
already initialised CUDA: the monitor never imports torch nor creates a CUDA context.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core import machine, memory
from core.errors import NibbleError, SettingsError
from core.units import format_bytes

logger = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.25
MAX_INTERVAL_S = 5.0
HISTORY_S = 600.0
# CPU percentages over less than this are noise (psutil measures since its last call).
_MIN_CPU_WINDOW_S = 0.05


class MonitorError(NibbleError):
    """The monitor cannot watch what it was asked to."""


def check_interval(seconds: float) -> float:
    """The sampling interval, validated: 0.25 to 5 seconds."""
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise SettingsError(
            f"sampling interval {seconds:g} s is out of range",
            f"pick an interval from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds",
        )
    return float(seconds)


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment. Bytes, percent, °C and watts; None: not supported."""

    index: int
    name: str
    memory_used: int | None = None
    memory_total: int | None = None
    process_memory: int | None = None
    utilization: float | None = None
    temperature: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    torch_allocated: int | None = None
    torch_reserved: int | None = None

    @property
    def memory_fraction(self) -> float | None:
        if self.memory_used is None or not self.memory_total:
            return None
        return self.memory_used / self.memory_total

    def summary(self) -> str:
        """'GPU0 H100 · VRAM 1.2 GiB / 80.0 GiB (ours 900 MiB) · 35% · 45 °C · 120/700 W'."""
        parts = [f"GPU{self.index} {self.name}"]
        vram = (
            f"VRAM {format_bytes(self.memory_used)} / {format_bytes(self.memory_total)}"
        )
        if self.process_memory is not None:
            vram += f" (ours {format_bytes(self.process_memory)})"
        parts.append(vram)
        if self.utilization is not None:
            parts.append(f"{self.utilization:.0f}%")
        if self.temperature is not None:
            parts.append(f"{self.temperature:.0f} °C")
        if self.power_w is not None:
            limit = f"/{self.power_limit_w:.0f}" if self.power_limit_w else ""
            parts.append(f"{self.power_w:.0f}{limit} W")
        return " · ".join(parts)


@dataclass(frozen=True)
class HostSample:
    """The machine and our process. CPU percents as psutil: 100 = one full core for
    the process, 100 = every core busy for the machine."""

    ram_used: int
    ram_total: int
    cpu_percent: float | None
    process_rss: int
    process_cpu_percent: float | None
    # RSS split (core.memory): anonymous stays with the process, file-backed pages
    # (mapped weights, libraries) the OS can drop. None where /proc has no split.
    process_anon: int | None = None
    process_file: int | None = None


@dataclass(frozen=True)
class Sample:
    """Everything measured at `time` (seconds since the epoch)."""

    time: float
    gpus: tuple[GpuSample, ...]
    host: HostSample
    gpu_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 3),
            "gpus": [asdict(g) for g in self.gpus],
            "host": asdict(self.host),
            "gpu_reason": self.gpu_reason,
        }

    def columns(self) -> dict[str, float]:
        """Flat numeric columns for History; None becomes NaN."""
        host = self.host
        out = {
            "ram_used": host.ram_used,
            "ram_total": host.ram_total,
            "cpu_percent": host.cpu_percent,
            "process_rss": host.process_rss,
            "process_anon": host.process_anon,
            "process_file": host.process_file,
            "process_cpu_percent": host.process_cpu_percent,
        }
        for g in self.gpus:
            for name in GPU_COLUMNS:
                out[f"gpu{g.index}.{name}"] = getattr(g, name)
        return {k: np.nan if v is None else float(v) for k, v in out.items()}


GPU_COLUMNS = (
    "memory_used",
    "memory_total",
    "process_memory",
    "utilization",
    "temperature",
    "power_w",
    "power_limit_w",
    "torch_allocated",
    "torch_reserved",
)


class _Gpu:
    """A GPU handle and what we learned about it once (name, which calls work)."""

    def __init__(self, index: int, handle: Any, name: str, uuid: str | None) -> None:
        self.index = index
        self.handle = handle
        self.name = name
        self.uuid = uuid
        self.temperature_call = "nvmlDeviceGetTemperatureV"
        self.temperature_seen = False


class Sampler:
    """Takes samples of every NVIDIA GPU, the host and this process.

    Parameters
    ----------
    nvml
        The NVML binding; None imports nvidia-ml-py (`pynvml`). Tests pass a fake.
    pid
        The process whose memory and CPU are "ours"; default this one.

    NVML is opened on the first `sample()` (or `open()`), in whatever thread calls
    it, and closed by `close()`. One Sampler is used by one thread at a time.
    """

    def __init__(self, nvml: Any = None, pid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._nvml_given = nvml
        self.nvml = machine.Nvml(nvml)
        self.pid = pid if pid is not None else os.getpid()
        try:
            self._process = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            raise MonitorError(
                f"no process with PID {self.pid}",
                "pass the PID of a running process (see ps or top)",
            ) from None
        self._gpus: list[_Gpu] = []
        self._opened = False
        self.gpu_reason: str | None = None
        self._torch_index: dict[int, int] | None = None
        self._lock = threading.Lock()
        # psutil's CPU percentages measure from the previous call: start the clock.
        psutil.cpu_percent(None)
        self._process.cpu_percent(None)
        self._cpu_since = time.monotonic()

    # -- NVML lifecycle --

    def open(self) -> None:
        """Initialise NVML and find the GPUs; failures become `gpu_reason`."""
        if self._opened:
            return
        self._opened = True
        self.nvml = machine.Nvml(self._nvml_given)
        self.nvml.open()
        for index, handle in enumerate(self.nvml.handles):
            name = self.nvml.text("nvmlDeviceGetName", handle) or "NVIDIA GPU"
            uuid = self.nvml.text("nvmlDeviceGetUUID", handle)
            self._gpus.append(_Gpu(index, handle, name, uuid))
        self.gpu_reason = self.nvml.reason

    def close(self) -> None:
        """Shut NVML down; a later sample opens it again."""
        self.nvml.close()
        self._gpus = []
        self._opened = False
        self.gpu_reason = None
        self._torch_index = None

    @property
    def gpu_count(self) -> int:
        self.open()
        return len(self._gpus)

    # -- sampling --

    def sample(self) -> Sample:
        """Measure now."""
        with self._lock:
            self.open()
            now = time.time()
            gpus = tuple(self._sample_gpu(gpu) for gpu in self._gpus)
            return Sample(now, gpus, self._sample_host(), self.gpu_reason)

    def _sample_host(self) -> HostSample:
        psutil = self._psutil
        vm = psutil.virtual_memory()
        cpu = process_cpu = None
        now = time.monotonic()
        if now - self._cpu_since >= _MIN_CPU_WINDOW_S:
            cpu = psutil.cpu_percent(None)
            process_cpu = self._process.cpu_percent(None)
            self._cpu_since = now
        split = memory.process_memory(self._process.pid)
        if split is not None:
            rss = split.rss
        else:
            try:
                rss = self._process.memory_info().rss
            except psutil.Error:
                rss = 0
        # "used" as htop and nvitop draw it: what is not available to new programs.
        return HostSample(
            ram_used=int(vm.total - vm.available),
            ram_total=int(vm.total),
            cpu_percent=cpu,
            process_rss=int(rss),
            process_cpu_percent=process_cpu,
            process_anon=split.anon if split else None,
            process_file=split.file if split else None,
        )

    def _sample_gpu(self, gpu: _Gpu) -> GpuSample:
        nvml, handle = self.nvml, gpu.handle
        memory = nvml.call("nvmlDeviceGetMemoryInfo", handle)
        rates = nvml.call("nvmlDeviceGetUtilizationRates", handle)
        power_mw = nvml.call("nvmlDeviceGetPowerUsage", handle)
        limit_mw = nvml.call("nvmlDeviceGetEnforcedPowerLimit", handle)
        allocated, reserved = self._torch_memory(gpu)
        return GpuSample(
            index=gpu.index,
            name=gpu.name,
            memory_used=_int(getattr(memory, "used", None)),
            memory_total=_int(getattr(memory, "total", None)),
            process_memory=self._process_memory(gpu, reserved),
            utilization=_float(getattr(rates, "gpu", None)),
            temperature=self._temperature(gpu),
            power_w=None if power_mw is None else power_mw / 1000.0,
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            torch_allocated=allocated,
            torch_reserved=reserved,
        )

    def _temperature(self, gpu: _Gpu) -> float | None:
        nvml = self.nvml
        sensor = getattr(nvml.binding, "NVML_TEMPERATURE_GPU", 0)
        value = nvml.call(gpu.temperature_call, gpu.handle, sensor)
        if value is None and not gpu.temperature_seen:
            # Drivers before 550 lack the V call; the old one is deprecated, not gone.
            gpu.temperature_call = "nvmlDeviceGetTemperature"
            value = nvml.call(gpu.temperature_call, gpu.handle, sensor)
        if value is None:
            return None
        gpu.temperature_seen = True
        return float(value)

    def _process_memory(self, gpu: _Gpu, torch_reserved: int | None) -> int | None:
        processes = self.nvml.call("nvmlDeviceGetComputeRunningProcesses", gpu.handle)
        if processes is None:
            return None
        used = [p.usedGpuMemory for p in processes if p.pid == self.pid]
        if not used:
            # Holding CUDA memory yet absent from the list: the driver sees another
            # PID namespace (a container), so our share is unknown, not zero.
            return None if torch_reserved else 0
        if any(u is None for u in used):  # Windows WDDM does not report it
            return None
        return int(sum(used))

    def _torch_memory(self, gpu: _Gpu) -> tuple[int | None, int | None]:
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        try:
            if cuda is None or not cuda.is_initialized():
                return None, None
            index = self.torch_indices(cuda).get(gpu.index)
            if index is None:
                return None, None
            return int(cuda.memory_allocated(index)), int(cuda.memory_reserved(index))
        except Exception:  # a broken CUDA state must not stop the monitor
            logger.debug("torch CUDA counters unavailable", exc_info=True)
            return None, None

    def torch_indices(self, cuda: Any) -> dict[int, int]:
        """NVML index → torch device index, matched by UUID (orders can differ)."""
        if self._torch_index is None:
            by_uuid = {_uuid_key(g.uuid): g.index for g in self._gpus if g.uuid}
            mapping: dict[int, int] = {}
            for i in range(cuda.device_count()):
                props = cuda.get_device_properties(i)
                nvml_index = by_uuid.get(_uuid_key(str(getattr(props, "uuid", ""))))
                if nvml_index is not None:
                    mapping[nvml_index] = i
            if not mapping and cuda.device_count() == 1 == len(self._gpus):
                mapping = {self._gpus[0].index: 0}
            self._torch_index = mapping
        return self._torch_index

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _uuid_key(uuid: str | None) -> str:
    return (uuid or "").lower().removeprefix("gpu-")


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def samples(
    sampler: Sampler,
    interval: float,
    seconds: float | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> Iterator[Sample]:
    """One sample every `interval` seconds, the first after one interval, for
    `seconds` in all (forever when None)."""
    check_interval(interval)
    start = time.monotonic()
    tick = 1
    while seconds is None or tick * interval <= seconds + 1e-9:
        delay = start + tick * interval - time.monotonic()
        if delay > 0:
            sleep(delay)
        yield sampler.sample()
        tick += 1


# -- markers and history --


@dataclass(frozen=True)
class Marker:
    """An event on the time line: a load, a first token, an unload."""

    time: float
    label: str


@dataclass(frozen=True)
class MemoryDelta:
    """How memory moved between two samples: signed bytes, None where unknown."""

    seconds: float
    process_rss: int
    ram_used: int
    gpus: dict[int, dict[str, int | None]] = field(default_factory=dict)
    process_anon: int | None = None

    def lines(self) -> list[str]:
        out = []
        for index, values in self.gpus.items():
            ours, used = values.get("process_memory"), values.get("memory_used")
            if ours is not None:
                out.append(f"GPU{index} VRAM (ours) {format_delta(ours)}")
            if used is not None:
                out.append(f"GPU{index} VRAM (all) {format_delta(used)}")
        out.append(f"Process RSS {format_delta(self.process_rss)}")
        if self.process_anon is not None:
            out.append(f"Process anonymous {format_delta(self.process_anon)}")
        out.append(f"Host RAM used {format_delta(self.ram_used)}")
        return out


def memory_delta(before: Sample, after: Sample) -> MemoryDelta:
    """The change from `before` to `after`."""
    gpus: dict[int, dict[str, int | None]] = {}
    earlier = {g.index: g for g in before.gpus}
    for g in after.gpus:
        b = earlier.get(g.index)
        if b is None:
            continue
        gpus[g.index] = {
            name: _diff(getattr(b, name), getattr(g, name))
            for name in ("memory_used", "process_memory", "torch_reserved")
        }
    return MemoryDelta(
        seconds=after.time - before.time,
        process_rss=after.host.process_rss - before.host.process_rss,
        ram_used=after.host.ram_used - before.host.ram_used,
        gpus=gpus,
        process_anon=_diff(before.host.process_anon, after.host.process_anon),
    )


def _diff(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


def format_delta(n: float) -> str:
    """+1.5 GiB, −300.0 MiB, ±0 B."""
    if n == 0:
        return "±0 B"
    sign = "+" if n > 0 else "−"
    return sign + format_bytes(abs(n))


class History:
    """Fixed-size ring buffers of sample columns (numpy), oldest first on read.

    Parameters
    ----------
    capacity
        How many samples it keeps; older ones are overwritten.
    """

    def __init__(self, capacity: int = int(HISTORY_S / MIN_INTERVAL_S) + 200) -> None:
        self.capacity = capacity
        self._times = np.full(capacity, np.nan)
        self._columns: dict[str, np.ndarray] = {}
        self._next = 0
        self.size = 0
        self.last: Sample | None = None

    def __len__(self) -> int:
        return self.size

    def append(self, sample: Sample) -> None:
        i = self._next
        self._times[i] = sample.time
        values = sample.columns()
        for name, column in self._columns.items():
            column[i] = values.pop(name, np.nan)
        for name, value in values.items():  # a column seen for the first time
            column = np.full(self.capacity, np.nan)
            column[i] = value
            self._columns[name] = column
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.last = sample

    def _ordered(self, array: np.ndarray) -> np.ndarray:
        if self.size < self.capacity:
            return array[: self.size].copy()
        return np.concatenate((array[self._next :], array[: self._next]))

    def times(self) -> np.ndarray:
        return self._ordered(self._times)

    def column(self, name: str) -> np.ndarray:
        """A column oldest first; all NaN when never seen."""
        column = self._columns.get(name)
        if column is None:
            return np.full(self.size, np.nan)
        return self._ordered(column)

    def names(self) -> list[str]:
        return list(self._columns)

    def clear(self) -> None:
        self._times[:] = np.nan
        for column in self._columns.values():
            column[:] = np.nan
        self._next = 0
        self.size = 0
        self.last = None
