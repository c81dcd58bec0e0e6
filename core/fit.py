"""Fit verdicts: does an estimate fit the free VRAM (NVML) or host RAM (psutil)?"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from core.units import format_bytes

if TYPE_CHECKING:
    from core.estimate import Estimate

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

    @property
    def gpu_free_bytes(self) -> int:
        return sum(g.free_bytes for g in self.gpus)

    def describe(self) -> str:
        ram = f"{format_bytes(self.ram_available_bytes)} RAM available"
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
            "summary": self.describe(),
        }


def probe_device() -> DeviceInfo:
    """Free VRAM per GPU from NVML and available host RAM from psutil."""
    import psutil

    memory = psutil.virtual_memory()
    gpus = _nvml_gpus()
    return DeviceInfo(gpus, int(memory.total), int(memory.available), _cuda(gpus))


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


def judge(row: Estimate, device: DeviceInfo) -> None:
    """Set the row's verdict: fits / fits with CPU offload / does not fit / unknown."""
    row.offload = None
    total = row.total_bytes
    if total is None:
        row.verdict, row.verdict_text = "unknown", "the weights could not be counted"
        return
    if not row.on_gpu:
        ram = device.ram_available_bytes
        if total <= ram:
            row.verdict = "fits"
            row.verdict_text = f"fits in RAM ({format_bytes(ram - total)} to spare)"
        else:
            row.verdict = "does not fit"
            row.verdict_text = (
                f"needs {format_bytes(total)}, {format_bytes(ram)} of RAM available"
            )
        return
    free = device.gpu_free_bytes
    if total <= free:
        row.verdict = "fits"
        row.verdict_text = f"fits on the GPU ({format_bytes(free - total)} to spare)"
        return
    row.offload = propose_offload(row, device)
    if row.offload is None:
        row.verdict = "does not fit"
        row.verdict_text = (
            f"needs {format_bytes(total)}: more than {format_bytes(free)} free VRAM "
            f"+ {format_bytes(device.ram_available_bytes)} RAM"
        )
        return
    row.verdict = "fits with CPU offload"
    extra = (
        "; turn on llm_int8_enable_fp32_cpu_offload"
        if row.label not in ("float32", "bfloat16", "float16")
        else ""
    )
    row.verdict_text = (
        f"split with max_memory {row.offload.max_memory}: "
        f"{format_bytes(row.offload.cpu_bytes)} on the CPU{extra}"
    )


def propose_offload(row: Estimate, device: DeviceInfo) -> Offload | None:
    """Fill the GPU with blocks in order; the rest go to the CPU, unquantized.

    bitsandbytes keeps offloaded modules unquantized (at the load dtype), and the
    KV cache, activations and one streamed-in block stay on the GPU.
    """
    if not row.groups or row.kv_cache_bytes is None or row.overhead_bytes is None:
        return None
    streamed = max(p for _, _, p in row.groups)
    budget = device.gpu_free_bytes - row.kv_cache_bytes - row.overhead_bytes - streamed
    if budget <= 0:
        return None
    gpu = cpu = 0
    full = False
    for _, quantized, plain in row.groups:
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
