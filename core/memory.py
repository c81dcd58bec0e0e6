"""The process's memory as it is: anonymous vs file-backed, and giving memory back.

RSS alone misleads on a CPU (docs/facts.md, "Memory on the CPU"): a model loaded from
safetensors can keep the checkpoint's pages mapped, which count in RSS as file-backed
pages the kernel may drop and read again, while what the process really holds is its
anonymous memory (heap, copied or quantized weights). Linux reports both in
/proc/<pid>/status; elsewhere only RSS is known and the split is None.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# What each number means, in one line each, for the screens that show them.
ANON_MEANING = "anonymous: memory only this process holds (heap, weights in use)"
FILE_MEANING = "file-backed: mapped files (libraries, mmapped weights) the OS can drop"
RSS_MEANING = "RSS: both together, what task managers show"
MEANING_LINE = (
    "anonymous: memory only this process holds · file-backed: mapped files "
    "(weights, libraries) the OS can drop and reread · RSS: both"
)
CHECKPOINT_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class ProcessMemory:
    """Resident bytes of one process: all, anonymous and file-backed (None if unknown)."""

    rss: int
    anon: int | None = None
    file: int | None = None


def process_memory(pid: int | None = None) -> ProcessMemory | None:
    """RSS, RssAnon and RssFile of `pid` (default: this process) from /proc.

    None where /proc cannot be read (not Linux, or the process is gone).
    """
    status = Path(f"/proc/{pid or 'self'}/status")
    values: dict[str, int] = {}
    try:
        with status.open() as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if "VmRSS" not in values:
        return None
    anon = values.get("RssAnon")
    file = values.get("RssFile")
    if file is not None and "RssShmem" in values:
        # Shared memory is anonymous in all but name: it does not come back from a file.
        anon = (anon or 0) + values["RssShmem"]
    return ProcessMemory(values["VmRSS"], anon, file)


def mapped_ranges(suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> list[range]:
    """Address ranges of this process's mappings of files ending in `suffixes`."""
    ranges = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n").endswith(suffixes):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append(range(start, end))
    except (OSError, ValueError):
        return []
    return ranges


def _tensors(model: Any) -> list[tuple[Any, str, Any]]:
    """(module, name, tensor) for every parameter and buffer, each object once."""
    seen: set[int] = set()
    out = []
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                out.append((module, name, tensor))
    return out


def mapped_bytes(model: Any, ranges: list[range] | None = None) -> int:
    """Bytes of the model's CPU tensors that live in a mapped checkpoint file."""
    ranges = mapped_ranges() if ranges is None else ranges
    if not ranges:
        return 0
    total = 0
    seen: set[int] = set()
    for _, _, tensor in _tensors(model):
        if tensor.device.type != "cpu":
            continue
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or not any(ptr in r for r in ranges):
            continue
        seen.add(ptr)
        total += storage.nbytes()
    return total


def detach_from_checkpoint(model: Any) -> int:
    """Copy every CPU tensor that lives in a mapped checkpoint into the heap.

    A single such tensor (a norm of 576 floats) keeps the whole file mapped, and the
    pages a quantizing load read stay resident. Parameters keep their identity (only
    their data is replaced), so tied weights stay tied. Returns the bytes copied.
    """
    ranges = mapped_ranges()
    if not ranges:
        return 0
    copied: dict[int, Any] = {}  # storage address → its copy, for views that share it
    total = 0
    for module, name, tensor in _tensors(model):
        if tensor.device.type != "cpu":
            continue
        ptr = tensor.untyped_storage().data_ptr()
        if not any(ptr in r for r in ranges):
            continue
        if ptr not in copied:
            total += tensor.untyped_storage().nbytes()
        copy = tensor.detach().clone()
        copied[ptr] = copy
        if name in module._parameters:
            tensor.data = copy  # the same Parameter object: ties and hooks survive
        else:
            module._buffers[name] = copy
    logger.debug("copied %d bytes out of the checkpoint mapping", total)
    return total


def trim_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc only)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
