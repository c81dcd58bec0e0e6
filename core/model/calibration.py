"""An estimate that learns this machine: each load's estimate beside what it cost.

Every load (core.model.loader) is measured by a `Meter` and described by a
`LoadRecord`: the settings, the model's shape, the versions, what the estimate's
formulas said and what the load really took (steady state and peak, RAM and VRAM).
The record goes to the journal a face installed with `use_journal` (the window, the
CLI and the server keep them in the local history database, core.store.calibration);
with none installed nothing is kept. Recording never fails a load: a journal that
raises is logged.

The estimate's formulas count the bytes the libraries allocate for the weights. What
they cannot see (allocator slack, runtime buffers, the CUDA context the driver makes)
is modelled as one additive term per device, learnt once `MIN_LOADS` records of that
device exist: the median of (actual - formula) over its newest records, for the peak
during the load and for what the load holds once settled. The "±" is the
leave-one-out error: each record predicted from the others, the largest miss in
percent of its actual peak.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from core import machine, memory

logger = logging.getLogger(__name__)

MIN_LOADS = 3
"""Usable records of one device before its estimate is calibrated."""
MAX_LOADS = 20
"""Only the newest records of a device count: they describe the machine as it is."""
VERSIONED = ("torch", "transformers", "bitsandbytes")
"""A record made with other versions of these no longer describes the load."""


def device_key(on_gpu: bool, gpus: Sequence[Any] = ()) -> str:
    """'cpu', or 'cuda:0 NVIDIA H100 80GB HBM3' for the first GPU (NVML's name)."""
    if not on_gpu:
        return "cpu"
    if gpus:
        first = gpus[0]
        return f"cuda:{first.index} {first.name}".strip()
    return "cuda:0"


@dataclass
class LoadRecord:
    """One load: its settings and shape, what was estimated and what it cost.

    `device` is what the estimate judged (the calibration's key); `placement` where
    the weights went. Bytes on the CPU are the anonymous memory the load added plus
    the weights it keeps in the mapped checkpoint (docs/facts.md, "How a load's peak
    is measured"); VRAM is None on the CPU.
    """

    model: str
    device: str
    label: str
    placement: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    shape: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    estimated_steady_bytes: int | None = None
    """The formulas: weights + quantization state (+ the CUDA context on a GPU)."""
    estimated_peak_bytes: int | None = None
    """The formulas' peak during the load, before any calibration."""
    predicted_peak_bytes: int | None = None
    """What the estimate said at the time, its calibration included."""
    steady_ram_bytes: int | None = None
    peak_ram_bytes: int | None = None
    steady_vram_bytes: int | None = None
    peak_vram_bytes: int | None = None
    peak_rss_bytes: int | None = None
    """VmHWM above RSS before the load: mapped pages included (not calibrated on)."""
    true_bytes: int | None = None
    load_s: float | None = None
    created: float = field(default_factory=time.time)
    id: int | None = None

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def actual_peak_bytes(self) -> int | None:
        """The peak on the device the estimate judged."""
        return self.peak_vram_bytes if self.on_gpu else self.peak_ram_bytes

    @property
    def actual_steady_bytes(self) -> int | None:
        return self.steady_vram_bytes if self.on_gpu else self.steady_ram_bytes

    @property
    def usable(self) -> bool:
        """Both sides known, and the weights on one device (not split by offload)."""
        return (
            self.estimated_peak_bytes is not None
            and bool(self.actual_peak_bytes)
            and "," not in self.placement
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Calibration:
    """The learnt overhead terms of one device and the records behind them."""

    device: str
    records: list[LoadRecord] = field(default_factory=list)
    peak_offset_bytes: int = 0
    steady_offset_bytes: int = 0
    errors_pct: list[float] = field(default_factory=list)
    """Per record (same order): the leave-one-out miss of its peak, in percent."""

    @property
    def loads(self) -> int:
        return len(self.records)

    @property
    def calibrated(self) -> bool:
        return self.loads >= MIN_LOADS

    @property
    def spread_pct(self) -> float | None:
        """The largest leave-one-out miss, in percent: the "±" shown."""
        return max((abs(e) for e in self.errors_pct), default=None)

    def peak(self, formula_bytes: int) -> int:
        return formula_bytes + (self.peak_offset_bytes if self.calibrated else 0)

    def line(self) -> str:
        """What every estimate row says about where its overhead comes from."""
        if not self.calibrated:
            return (
                f"not calibrated yet ({self.loads} of {MIN_LOADS} loads on "
                f"{self.device})"
            )
        spread = self.spread_pct or 0.0
        return f"calibrated on this machine from {self.loads} loads (±{spread:.1f}%)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "calibrated": self.calibrated,
            "loads": self.loads,
            "spread_pct": None
            if self.spread_pct is None
            else round(self.spread_pct, 2),
            "peak_offset_bytes": self.peak_offset_bytes if self.calibrated else 0,
            "steady_offset_bytes": self.steady_offset_bytes if self.calibrated else 0,
            "text": self.line(),
            "records": [r.id for r in self.records],
        }


def _same_versions(record: LoadRecord, now: dict[str, Any]) -> bool:
    return all(
        record.versions.get(name) in (None, now.get(name))
        for name in VERSIONED
        if now.get(name) is not None
    )


def calibrate(
    device: str,
    records: Sequence[LoadRecord],
    versions: dict[str, Any] | None = None,
) -> Calibration:
    """Learn `device`'s overhead terms from `records` (newest first).

    Only records of that device, with both sides known and made with the current
    library `versions` (default: this process's), count; the newest `MAX_LOADS`.
    """
    now = machine.versions() if versions is None else versions
    usable = [
        r for r in records if r.device == device and r.usable and _same_versions(r, now)
    ][:MAX_LOADS]
    result = Calibration(device, usable)
    if len(usable) < MIN_LOADS:
        return result
    residuals = [r.actual_peak_bytes - r.estimated_peak_bytes for r in usable]  # type: ignore[operator]
    result.peak_offset_bytes = int(statistics.median(residuals))
    for i, record in enumerate(usable):
        others = residuals[:i] + residuals[i + 1 :]
        predicted = record.estimated_peak_bytes + statistics.median(others)  # type: ignore[operator]
        actual = record.actual_peak_bytes or 1
        result.errors_pct.append(100.0 * (predicted - actual) / actual)
    steady = [
        r.actual_steady_bytes - r.estimated_steady_bytes
        for r in usable
        if r.actual_steady_bytes is not None and r.estimated_steady_bytes is not None
    ]
    if steady:
        result.steady_offset_bytes = int(statistics.median(steady))
    return result


# -- where records go: the journal a face installs --


class Journal(Protocol):
    """Keeps load records (core.store.calibration.LoadJournal keeps them in SQLite)."""

    def add(self, record: LoadRecord) -> None: ...

    def records(self, device: str | None = None) -> list[LoadRecord]:
        """Newest first; every device's when `device` is None."""
        ...


_journal: Journal | None = None
_journal_lock = threading.Lock()


def use_journal(journal: Journal | None) -> Journal | None:
    """Send records to `journal` (None: keep none); returns the one it replaces."""
    global _journal
    with _journal_lock:
        previous, _journal = _journal, journal
    return previous


def current_journal() -> Journal | None:
    return _journal


def keep(report: Any, quant: Any, row: Any, meter: Meter, config: Any) -> None:
    """Record a finished load (a LoadReport) beside its estimate `row`, if a journal
    is installed; never raises."""
    if _journal is None:
        return
    try:
        entry = make_record(report, quant, row, meter, shape_of(config, row))
    except Exception as exc:
        logger.warning("the load record could not be made: %s", exc)
        return
    record(entry)


def record(entry: LoadRecord) -> None:
    """Hand `entry` to the journal; a failure is logged, never raised."""
    journal = _journal
    if journal is None:
        return
    try:
        journal.add(entry)
    except Exception as exc:
        logger.warning("the load record was not kept: %s", exc)


def records(device: str | None = None) -> list[LoadRecord]:
    """The journal's records, newest first; [] without one or when it cannot be read."""
    journal = _journal
    if journal is None:
        return []
    try:
        return journal.records(device)
    except Exception as exc:
        logger.warning("the load records could not be read: %s", exc)
        return []


def for_device(device: str) -> Calibration:
    """The calibration of `device` from the journal's records."""
    return calibrate(device, records(device))


# -- measuring a load --


class Meter:
    """What a load costs, measured around `from_pretrained`.

    RAM: the anonymous memory above the value on entry, sampled (its peak), and once
    settled that plus the weights left in the mapped checkpoint; the peak is the higher
    of the two, as bench/load_memory.py counts it. VRAM (on a GPU): torch's reserved
    memory above the value on entry, plus what the process holds outside torch's
    allocator (the CUDA context, from NVML), so that it compares with the estimate.
    """

    def __init__(self, on_gpu: bool, active: bool = True) -> None:
        self.on_gpu = on_gpu
        self.active = active
        self.sampler = memory.PeakSampler()
        self.steady_ram: int | None = None
        self.peak_ram: int | None = None
        self.steady_vram: int | None = None
        self.peak_vram: int | None = None
        self.peak_rss: int | None = None
        self._reserved_before = 0
        self._reserved_peak = 0

    def __enter__(self) -> Meter:
        if not self.active:
            return self
        if self.on_gpu:
            with contextlib.suppress(Exception):
                import torch

                torch.cuda.synchronize()
                self._reserved_before = int(torch.cuda.memory_reserved())
                torch.cuda.reset_peak_memory_stats()
        memory.trim_heap()  # what the estimate freed is no part of the load
        self.sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.active:
            return
        self.sampler.__exit__(*exc)
        self.peak_rss = self.sampler.rss_rise()
        if self.on_gpu:
            with contextlib.suppress(Exception):
                import torch

                torch.cuda.synchronize()
                self._reserved_peak = int(torch.cuda.max_memory_reserved())

    def settle(self, mapped_bytes: int) -> None:
        """Measure what the finished load holds (after its memory was freed)."""
        if not self.active:
            return
        now = memory.anonymous_bytes()
        base = self.sampler.base
        if now is not None and base is not None:
            self.steady_ram = max(0, now - base) + mapped_bytes
            self.peak_ram = max(self.sampler.rise or 0, self.steady_ram)
        if self.on_gpu:
            with contextlib.suppress(Exception):
                self._settle_gpu()

    def _settle_gpu(self) -> None:
        import torch

        from core.model.estimate import process_gpu_bytes

        reserved = int(torch.cuda.memory_reserved())
        process = process_gpu_bytes()
        outside = max(0, process - reserved) if process is not None else 0
        self.steady_vram = max(0, reserved - self._reserved_before) + outside
        peak = max(self._reserved_peak, reserved)
        self.peak_vram = max(0, peak - self._reserved_before) + outside


def recording() -> bool:
    """Whether loads are recorded (a journal is installed)."""
    return _journal is not None


def meter(on_gpu: bool) -> Meter:
    """A Meter for a load; one that measures nothing when loads are not recorded."""
    return Meter(on_gpu, active=recording())


def expect(ref: Any, quant: Any, options: Any, on_gpu: bool) -> Any:
    """The estimate of a load about to start, when loads are recorded (else None).

    It also imports the model's classes, which the first load in a process would
    otherwise count as its own memory.
    """
    if not recording():
        return None
    from core.model import estimate
    from core.model.fit import DeviceInfo, probe_device

    try:
        device = probe_device() if on_gpu else DeviceInfo([], 0, 0, cuda=False)
        return estimate.estimate(ref, quant, options, device=device)
    except Exception as exc:
        logger.debug("no estimate to record for %s: %s", getattr(ref, "name", ref), exc)
        return None


def shape_of(config: Any, row: Any) -> dict[str, Any]:
    """Parameters (from the estimate), layers and hidden size (from the config)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "architecture": getattr(row, "architecture", None),
        "params": getattr(row, "parameters", None),
        "layers": getattr(text, "num_hidden_layers", None),
        "hidden": getattr(text, "hidden_size", None),
    }


def make_record(
    report: Any, quant: Any, row: Any, meter: Meter, shape: dict[str, Any]
) -> LoadRecord:
    """The record of a finished load (a LoadReport) beside its estimate `row`."""
    key = row.device_key if row is not None else device_key(meter.on_gpu)
    label = quant.label() if quant.quantized else str(report.options.get("dtype"))
    if row is not None:
        label = row.label
    versions = machine.versions()
    return LoadRecord(
        model=report.model,
        device=key,
        label=label,
        placement=report.device,
        settings=dict(report.settings),
        options=dict(report.options),
        shape=shape,
        versions={name: versions.get(name) for name in ("nibble", *VERSIONED)},
        estimated_steady_bytes=row.formula_steady_bytes if row is not None else None,
        estimated_peak_bytes=row.formula_peak_bytes if row is not None else None,
        predicted_peak_bytes=row.load_peak_bytes if row is not None else None,
        steady_ram_bytes=meter.steady_ram,
        peak_ram_bytes=meter.peak_ram,
        steady_vram_bytes=meter.steady_vram,
        peak_vram_bytes=meter.peak_vram,
        peak_rss_bytes=meter.peak_rss,
        true_bytes=report.true_bytes,
        load_s=round(report.load_s, 3),
    )
