"""Recorded load records of the default model, for the calibration tests.

Made by `bench/calibration.py` on the 2-core CPU test machine (2026-12-06, torch
2.13.0+cpu, transformers 5.25.0, bitsandbytes 0.50.2): the default model loaded in
fresh processes, each load's formulas beside what it measured (the anonymous memory
the load added, at its peak and once settled plus the weights left in the mapped
checkpoint), in bytes.
"""

from __future__ import annotations

from core.model.calibration import LoadRecord

# (label, formula steady, formula peak, actual steady, actual peak); the labels are
# the estimate's (the dtype for an unquantized load).
DEFAULT_MODEL_LOADS = [
    ("float32", 538_060_288, 538_060_288, 538_940_672, 538_940_672),
    ("int8", 220_177_408, 227_058_688, 224_793_856, 224_793_856),
    ("nf4", 173_120_128, 180_001_408, 172_999_936, 172_999_936),
    ("nf4-dq", 168_385_528, 175_266_808, 173_372_672, 173_372_672),
]


def records(n: int = 3, device: str = "cpu") -> list[LoadRecord]:
    """The first `n` recorded loads, oldest first, as records of `device`."""
    out = []
    for i, (label, steady, peak, real_steady, real_peak) in enumerate(
        DEFAULT_MODEL_LOADS[:n]
    ):
        out.append(
            LoadRecord(
                model="SmolLM2-135M-Instruct",
                device=device,
                label=label,
                placement=device.split()[0],
                shape={"params": 134_515_008, "layers": 30, "hidden": 576},
                estimated_steady_bytes=steady,
                estimated_peak_bytes=peak,
                predicted_peak_bytes=peak,
                steady_ram_bytes=real_steady,
                peak_ram_bytes=real_peak,
                true_bytes=steady,
                load_s=10.0,
                created=1_765_000_000.0 + 60 * i,
            )
        )
    return out
