"""Fit verdicts: does an estimate fit the free VRAM (NVML) or host RAM (psutil)?"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.units import format_bytes

logger = logging.getLogger(__name__)

Verdict = Literal["fits", "fits with CPU offload", "does not fit", "unknown"]


@dataclass
class Offload:
    """A proposed max_memory split that lets a model run with CPU offload."""

    gpu_bytes: int
    cpu_bytes: int
    max_memory: dict[str, str]


@dataclass
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass
class DeviceInfo:
    """What memory there is to fit into: GPUs (NVML) and host RAM (psutil)."""

    gpus: list[Gpu]
    ram_total_bytes: int
    ram_available_bytes: int
    cuda: bool  # whether torch can use the GPUs (the loader's choice)
    ram_limit: str = ""
    """The limit that caps `ram_available_bytes` ('RLIMIT_DATA', 'RLIMIT_AS' or
    'memory cgroup'), if any."""

    @property
    def gpu_free_bytes(self) -> int:
        return sum(g.free_bytes for g in self.gpus)

    def describe(self) -> str:
        ram = f"{format_bytes(self.ram_available_bytes)} RAM available"
        if self.ram_limit == CGROUP:
            ram += " (under the memory cgroup's limit)"
        elif self.ram_limit:
            ram += f" (under this process's {self.ram_limit})"
        if not self.gpus:
            return f"No GPU · {ram}"
        gpus = ", ".join(
            f"GPU {g.index} {g.name}: {format_bytes(g.free_bytes)} free of "
            f"{format_bytes(g.total_bytes)}"
            for g in self.gpus
        )
        usable = "" if self.cuda else " (torch has no CUDA: loads go to the CPU)"
        return f"{gpus} · {ram}{usable}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpus": [g.__dict__ for g in self.gpus],
            "ram_total_bytes": self.ram_total_bytes,
            "ram_available_bytes": self.ram_available_bytes,
            "cuda": self.cuda,
            "ram_limit": self.ram_limit or None,
            "summary": self.describe(),
        }


def probe_device() -> DeviceInfo:
    """Free VRAM per GPU from NVML and available host RAM from psutil, capped by
    what this process may still allocate under its own limits (`ulimit -d`/`-v`)
    and under its memory cgroup's limit (a container's, which psutil ignores)."""
    import psutil

    memory = psutil.virtual_memory()
    gpus = _nvml_gpus()
    available, limit = int(memory.available), ""
    for room in (limit_headroom(), cgroup_headroom()):
        if room is not None and room[0] < available:
            available, limit = room
    return DeviceInfo(gpus, int(memory.total), available, _cuda(gpus), limit)


CGROUP = "memory cgroup"
# A v1 group without a limit reports PAGE_COUNTER_MAX pages (9223372036854771712
# bytes with 4 KiB pages); anything this large is no limit.
_NO_LIMIT = 2**60


def cgroup_headroom(
    root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")
) -> tuple[int, str] | None:
    """The bytes this process's memory cgroup (and every group above it) may still
    charge before its limit, and 'memory cgroup'; None without a limit, or where
    the files cannot be read.

    cgroup v1: `memory.limit_in_bytes` - `memory.usage_in_bytes` under
    `root/memory`; v2: `memory.max` - `memory.current` under `root`. The group's
    inactive file pages (page cache the kernel reclaims first) count as free, as
    a container's working set does. `root` and `own` are parameters for tests.
    """
    try:
        lines = own.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if "memory" in controllers.split(","):
            v1 = path
        elif controllers == "" and line.startswith("0::"):
            v2 = path
    if v1 is not None:
        rooms = _rooms(root / "memory", v1, _V1)
    elif v2 is not None:
        rooms = _rooms(root, v2, _V2)
    else:
        return None
    return (min(rooms), CGROUP) if rooms else None


# (limit file, usage file, the memory.stat key of inactive file pages)
_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
_V2 = ("memory.max", "memory.current", "inactive_file")


def _rooms(base: Path, path: str, files: tuple[str, str, str]) -> list[int]:
    """The room left under each limited group from the process's own up to `base`.

    Inside a container the mount shows only its own group, whose path the
    process's /proc/self/cgroup may not name: then the mount's top is the group.
    """
    group = base / path.strip("/")
    if not group.is_dir():
        group = base
    rooms = []
    while True:
        room = _room(group, files)
        if room is not None:
            rooms.append(room)
        if group == base or base not in group.parents:
            return rooms
        group = group.parent


def _room(group: Path, files: tuple[str, str, str]) -> int | None:
    limit_file, usage_file, inactive_key = files
    try:
        limit_text = (group / limit_file).read_text(encoding="ascii").strip()
        if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
            return None
        usage = int((group / usage_file).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        for line in (group / "memory.stat").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, ValueError):
        inactive = 0
    return max(int(limit_text) - usage + min(inactive, usage), 0)


# What each limit counts, as /proc/self/status names it: RLIMIT_DATA the private
# writable mappings (heap and anonymous mmaps, not the mmapped checkpoint),
# RLIMIT_AS every mapping (docs/facts.md, "A process memory limit").
_LIMITS = (("RLIMIT_DATA", "VmData"), ("RLIMIT_AS", "VmSize"))


def limit_headroom() -> tuple[int, str] | None:
    """The bytes this process may still map under RLIMIT_DATA / RLIMIT_AS, and
    which limit is the tighter; None when neither is set (or on Windows)."""
    try:
        import resource

        status = Path("/proc/self/status").read_text(encoding="ascii")
    except (ImportError, OSError):
        return None
    used = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmData", "VmSize") and value.strip().endswith("kB"):
            used[key] = int(value.split()[0]) * 1024
    best: tuple[int, str] | None = None
    for name, key in _LIMITS:
        soft, _hard = resource.getrlimit(getattr(resource, name))
        if soft == resource.RLIM_INFINITY or key not in used:
            continue
        room = max(soft - used[key], 0)
        if best is None or room < best[0]:
            best = (room, name)
    return best


def _cuda(gpus: list[Gpu]) -> bool:
    if not gpus:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _nvml_gpus() -> list[Gpu]:
    """Free memory per NVIDIA GPU through the monitor's sampler; [] without NVML."""
    from core.monitor import Sampler

    sampler = Sampler()
    try:
        sample = sampler.sample()
    finally:
        sampler.close()
    gpus = []
    for g in sample.gpus:
        if g.memory_total is None or g.memory_used is None:
            continue
        free = g.memory_total - g.memory_used
        gpus.append(Gpu(g.index, g.name, g.memory_total, free))
    return gpus


@dataclass(frozen=True)
class Need:
    """What a model with given settings needs, as far as the verdict cares.

    `total_bytes` is the steady state after the load; `load_peak_bytes` what the
    load itself holds at its highest. The verdict judges the higher of the two.

    `groups` are (block, bytes as loaded, bytes unquantized) in load order: a block
    offloaded to the CPU stays unquantized there.
    """

    total_bytes: int | None
    on_gpu: bool
    quantized: bool
    load_peak_bytes: int | None = None
    kv_cache_bytes: int | None = None
    overhead_bytes: int | None = None
    groups: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class Fit:
    """The verdict on one Need: its word, a sentence, and the split when offloading."""

    verdict: Verdict
    text: str
    offload: Offload | None = None


def judge(need: Need, device: DeviceInfo) -> Fit:
    """fits / fits with CPU offload / does not fit / unknown, with why.

    Judged on the higher of the steady total and the peak during load: a model
    that would fit once loaded but not while loading does not fit.
    """
    if need.total_bytes is None:
        return Fit("unknown", "the weights could not be counted")
    total = max(need.total_bytes, need.load_peak_bytes or 0)
    when = " while loading" if total > need.total_bytes else ""
    if not need.on_gpu:
        ram = device.ram_available_bytes
        if total <= ram:
            return Fit(
                "fits", f"fits in RAM{when} ({format_bytes(ram - total)} to spare)"
            )
        return Fit(
            "does not fit",
            f"needs {format_bytes(total)}{when}, {format_bytes(ram)} of RAM available",
        )
    free = device.gpu_free_bytes
    if total <= free:
        return Fit(
            "fits", f"fits on the GPU{when} ({format_bytes(free - total)} to spare)"
        )
    offload = propose_offload(need, device)
    if offload is None:
        return Fit(
            "does not fit",
            f"needs {format_bytes(total)}{when}: more than {format_bytes(free)} free VRAM "
            f"+ {format_bytes(device.ram_available_bytes)} RAM",
        )
    extra = "; turn on llm_int8_enable_fp32_cpu_offload" if need.quantized else ""
    return Fit(
        "fits with CPU offload",
        f"split with max_memory {offload.max_memory}: "
        f"{format_bytes(offload.cpu_bytes)} on the CPU{extra}",
        offload,
    )


def propose_offload(need: Need, device: DeviceInfo) -> Offload | None:
    """Fill the GPU with blocks in order; the rest go to the CPU, unquantized.

    bitsandbytes keeps offloaded modules unquantized (at the load dtype), and the
    KV cache, activations and one streamed-in block stay on the GPU.
    """
    if not need.groups or need.kv_cache_bytes is None or need.overhead_bytes is None:
        return None
    streamed = max(p for _, _, p in need.groups)
    budget = (
        device.gpu_free_bytes - need.kv_cache_bytes - need.overhead_bytes - streamed
    )
    if budget <= 0:
        return None
    gpu = cpu = 0
    full = False
    for _, quantized, plain in need.groups:
        if not full and gpu + quantized <= budget:
            gpu += quantized
        else:
            full = True
            cpu += plain
    if cpu > device.ram_available_bytes or gpu == 0:
        return None
    max_memory = {"0": _gib(gpu + streamed), "cpu": _gib(cpu)}
    return Offload(gpu, cpu, max_memory)


def _gib(n: int) -> str:
    return f"{math.ceil(n / 2**30 * 10) / 10:.1f}GiB"
