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
import os
import sys
import threading
from collections.abc import Iterator
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


@dataclass(frozen=True)
class Mapping:
    """One mapping of a file into this process: addresses, file offset, path."""

    addresses: range
    offset: int
    path: str


def mappings(suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> list[Mapping]:
    """This process's mappings of files ending in `suffixes` (/proc/self/maps)."""
    found = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n").endswith(suffixes):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    path = parts[5].rstrip("\n")
                    found.append(Mapping(range(start, end), int(parts[2], 16), path))
    except (OSError, ValueError):
        return []
    return found


def mapped_ranges(suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> list[range]:
    """Address ranges of this process's mappings of files ending in `suffixes`."""
    return [m.addresses for m in mappings(suffixes)]


def resident_mapped_bytes(
    suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES, under: str = ""
) -> int:
    """Resident bytes of this process's mappings of checkpoint files (/proc smaps),
    only those of files whose path starts with `under` when it is given."""
    total = 0
    inside = False
    try:
        with open("/proc/self/smaps") as fh:
            for line in fh:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):
                    parts = line.rstrip("\n").split(maxsplit=5)
                    path = parts[5] if len(parts) == 6 else ""
                    inside = path.endswith(suffixes) and path.startswith(under)
                elif inside and first == "Rss:":
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


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


def _libc() -> Any:
    """glibc, or None where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (musl has no mallopt)
    except (OSError, AttributeError):
        return None
    return libc


_MADV_DONTNEED = 4


def release_checkpoint_pages(model: Any) -> int:
    """Give back the pages of the checkpoint that no tensor of `model` uses.

    After a quantizing load the unquantized rest (embedding, norms) still points
    into the mapped checkpoint, and every page the quantization read stays resident
    in the process and in the page cache. The rest stays mapped (clean file pages
    the OS may drop and read again, as in an unquantized load); every page outside
    it is unmapped from the process (MADV_DONTNEED, after which a read would fault
    the same bytes back in) and dropped from the page cache (POSIX_FADV_DONTNEED).
    Returns the bytes released.
    """
    found = mappings()
    libc = _libc()
    if not found or libc is None:
        return 0
    used: list[tuple[int, int]] = []
    for _, _, tensor in _tensors(model):
        if tensor.device.type != "cpu":
            continue
        storage = tensor.untyped_storage()
        used.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
    page = os.sysconf("SC_PAGE_SIZE")
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for mapping in found:
        start, end = mapping.addresses.start, mapping.addresses.stop
        inside = sorted(
            (max(a, start), min(b, end)) for a, b in used if a < end and b > start
        )
        gaps, cursor = [], start
        for a, b in inside:
            if a > cursor:
                gaps.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < end:
            gaps.append((cursor, end))
        fd = _open_quietly(mapping.path)
        try:
            for a, b in gaps:
                a = -(-a // page) * page  # whole pages only: a used one may share it
                b = b // page * page
                if b <= a:
                    continue
                if libc.madvise(a, b - a, _MADV_DONTNEED) != 0:
                    continue
                released += b - a
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.posix_fadvise(
                            fd,
                            mapping.offset + a - start,
                            b - a,
                            os.POSIX_FADV_DONTNEED,
                        )
        finally:
            if fd is not None:
                os.close(fd)
    logger.debug("released %d bytes of checkpoint pages", released)
    return released


def _open_quietly(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only), collecting garbage first when
    on the main thread: a collection on a load thread can finalize the window's Qt
    objects there, and Qt crashes on objects deleted off their own thread."""
    if threading.current_thread() is threading.main_thread():
        gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# glibc's mallopt parameter (docs/facts.md, "A quantizing load keeps every freed
# temporary"); 128 KiB is glibc's own starting threshold.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024
# While decoding: every step allocates and frees the same few blocks of a few hundred
# KiB (a compiled step's buffers, the logits). Above a 128 KiB threshold each is a
# fresh mmap, zero-filled page by page and unmapped again: 20 instead of 28 tok/s
# compiled (docs/facts.md, "Decoding wants a heap that keeps its blocks").
DECODE_MMAP_THRESHOLD = 4 * 2**20
DECODE_TRIM_THRESHOLD = 8 * 2**20


@contextlib.contextmanager
def heap_for_loading() -> Iterator[None]:
    """Make freed load temporaries go back to the OS at once, then trim the heap.

    A load that quantizes reads each weight, quantizes it and frees the full-precision
    temporaries, one tensor after another. glibc raises its mmap threshold to the size
    of the first large block freed, so every later temporary comes from the heap, and
    the heap only shrinks from its top, where the packed weights just allocated sit:
    every temporary stays resident and the process grows by about the checkpoint's
    size. A fixed threshold maps and unmaps each large block on its own. It stays
    fixed after the load: the first forward of a 4-bit model on the CPU repacks every
    weight and would leave the same holes (+40 MiB on the default model).
    """
    fix_mmap_threshold()
    try:
        yield
    finally:
        trim_heap()


def fix_mmap_threshold() -> None:
    """Fix glibc's mmap and trim thresholds at 128 KiB (see heap_for_loading);
    idempotent."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD)


def heap_for_decoding() -> None:
    """Let decode steps reuse heap blocks: blocks up to 4 MiB come from the heap and
    up to 8 MiB of free heap top stays with the process. Set once a loaded model has
    run its first forward (a 4-bit model's repack needs the load's threshold)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, DECODE_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, DECODE_TRIM_THRESHOLD)


def anonymous_bytes() -> int | None:
    """This process's anonymous memory (RssAnon + RssShmem), else RSS; None unknown."""
    now = process_memory()
    if now is None:
        return None
    return now.anon if now.anon is not None else now.rss


def rss_high_water() -> int | None:
    """The highest RSS this process ever had (VmHWM), None where /proc is not there."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakSampler:
    """The highest anonymous memory of this process while the block runs.

    Linux keeps a high-water mark only of RSS (VmHWM), which counts the checkpoint's
    mapped pages: a quantizing load reads the whole file through them, yet the OS may
    drop them again. So a thread reads RssAnon every `interval_s` (docs/facts.md,
    "How a load's peak is measured"); `base` is the value on entry, `peak` the
    highest seen, both None where /proc cannot be read.
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.base: int | None = None
        self.peak: int | None = None
        self.rss_base: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        now = anonymous_bytes()
        if now is not None:
            self.peak = now if self.peak is None else max(self.peak, now)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakSampler:
        now = process_memory()
        self.rss_base = now.rss if now is not None else None
        self.base = self.peak = anonymous_bytes()
        self.resume()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pause()

    def resume(self) -> None:
        """Sample again after `pause`, keeping the base and the peak so far."""
        if self.base is None or self._thread is not None:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="nibble-peak", daemon=True
        )
        self._thread.start()

    def pause(self) -> None:
        """Stop sampling (one last sample taken)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()

    @property
    def rise(self) -> int | None:
        """The peak above the value on entry."""
        if self.base is None or self.peak is None:
            return None
        return max(0, self.peak - self.base)

    def rss_rise(self) -> int | None:
        """The kernel's RSS high-water mark above RSS on entry: file-backed pages
        included, and only the block's own when the process never had more RSS before."""
        high = rss_high_water()
        if high is None or self.rss_base is None:
            return None
        return max(0, high - self.rss_base)
