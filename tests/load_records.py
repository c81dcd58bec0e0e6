"""Recorded load records of the default model, for the calibration tests.

Made by `bench/calibration.py` on the 2-core CPU test machine (2026-12-06): the
default model loaded in fresh processes, each load's formula peak beside its
measured peak (anonymous memory added, or at the end that plus the weights left in
the mapped checkpoint), in bytes.
"""

from __future__ import annotations

from core.model.calibration import LoadRecord

# (preset, formula steady, formula peak, actual steady, actual peak)
DEFAULT_MODEL_LOADS = [
    ("fp32", 538_060_288, 538_060_288, 541_000_000, 545_000_000),
    ("int8", 220_177_408, 232_000_000, 225_000_000, 240_000_000),
    ("nf4", 173_120_128, 180_000_000, 178_000_000, 186_000_000),
    ("nf4-dq", 168_385_528, 176_000_000, 173_000_000, 182_000_000),
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
