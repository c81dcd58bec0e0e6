"""Presets: named starting points of quantization plus the dtype of unquantized parts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.errors import SettingsError
from core.settings.load import LoadOptions
from core.settings.quant import QuantSettings


@dataclass(frozen=True)
class Preset:
    """A named starting point: quantization plus the dtype of unquantized parts."""

    name: str
    title: str
    description: str
    quant: QuantSettings
    dtype: str = "auto"
    bits: int = 32

    def load_options(self, base: LoadOptions | None = None) -> LoadOptions:
        base = base or LoadOptions()
        return dataclasses.replace(base, dtype=self.dtype)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "fp32",
            "FP32",
            "Full precision, the reference.",
            QuantSettings(),
            "float32",
            32,
        ),
        Preset(
            "bf16",
            "BF16",
            "Half the memory, fp32's range.",
            QuantSettings(),
            "bfloat16",
            16,
        ),
        Preset(
            "fp16",
            "FP16",
            "Half the memory, narrower range.",
            QuantSettings(),
            "float16",
            16,
        ),
        Preset(
            "int8",
            "INT8",
            "LLM.int8: about a quarter of fp32, outliers kept in 16-bit.",
            QuantSettings(mode="8bit"),
            bits=8,
        ),
        Preset(
            "nf4",
            "NF4",
            "4-bit NormalFloat: the best 4-bit choice for LLMs.",
            QuantSettings(mode="4bit", bnb_4bit_quant_type="nf4"),
            bits=4,
        ),
        Preset(
            "nf4-dq",
            "NF4 + double quant",
            "The classic QLoRA setup: nf4, double quant, float16 compute.",
            QuantSettings(
                mode="4bit",
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype="float16",
            ),
            bits=4,
        ),
        Preset(
            "fp4",
            "FP4",
            "Plain 4-bit float, the library's default 4-bit type.",
            QuantSettings(mode="4bit", bnb_4bit_quant_type="fp4"),
            bits=4,
        ),
    )
}


def preset(name: str) -> Preset:
    """Look up a preset by name, with a hint listing them all."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise SettingsError(
            f"unknown preset {name!r}", f"choose one of {', '.join(PRESETS)}"
        )
    return PRESETS[key]


def preset_name_for(quant: QuantSettings, dtype: str = "auto") -> str | None:
    """The name of the preset equal to these settings, if any.

    Fields that do not apply to the mode (a 4-bit quant type in 8-bit mode) do not
    count: they change nothing that loads.
    """
    mine = quant.effective()
    for p in PRESETS.values():
        if p.quant.effective() == mine and p.dtype == dtype:
            return p.name
    return None


def settings_label(quant: QuantSettings, dtype: str = "auto") -> str:
    """What a load runs as, in a word: its preset's name ('fp32', 'bf16', 'nf4-dq'),
    else the quantization ('nf4', 'int8'), else 'unquantized' (the checkpoint's own
    dtype kept)."""
    named = preset_name_for(quant, dtype)
    if named is not None:
        return named
    return quant.label() if quant.quantized else "unquantized"
