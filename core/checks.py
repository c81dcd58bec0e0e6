"""Checks before Load against this machine and the selected model's structure.

`check_options` flags a device map or attention implementation this machine cannot
run (a CUDA device without a GPU, flash_attention_2 without its package or a GPU);
`unknown_skip_modules` flags Keep-unquantized names that match no module of the model
(from the meta-device build the estimate already does), with the nearest real names.
Every problem names the field, says what is wrong and what to do.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from core.settings import LoadOptions, QuantSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Machine:
    """What this machine can run: CUDA devices and the flash-attn package."""

    cuda_devices: int = 0
    flash_attn: bool = False
    description: str = "CPU"

    @property
    def has_gpu(self) -> bool:
        return self.cuda_devices > 0


def probe_machine() -> Machine:
    """Ask torch for CUDA devices (imports torch: call it off the UI thread)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    description = f"CUDA: {torch.cuda.get_device_name(0)}" if count else "CPU"
    flash = importlib.util.find_spec("flash_attn") is not None
    return Machine(count, flash, description)


@dataclass(frozen=True)
class Problem:
    """One setting this machine or this model cannot take."""

    field: str  # the LoadOptions / QuantSettings field name
    message: str
    hint: str

    def text(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


def check_options(options: LoadOptions, machine: Machine) -> list[Problem]:
    """Device map, memory caps and attention that `machine` cannot run."""
    problems: list[Problem] = []
    device = options.device_map
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not machine.has_gpu:
            problems.append(
                Problem(
                    "device_map",
                    f"Device map {device} needs an NVIDIA GPU and this machine has none",
                    "pick cpu or auto",
                )
            )
        elif index >= machine.cuda_devices:
            problems.append(
                Problem(
                    "device_map",
                    f"Device map {device}: this machine has {machine.cuda_devices} "
                    f"GPU{'s' if machine.cuda_devices > 1 else ''} (cuda:0"
                    + (
                        f" to cuda:{machine.cuda_devices - 1})"
                        if machine.cuda_devices > 1
                        else ")"
                    ),
                    "pick an existing GPU or auto",
                )
            )
    gpus = [k for k in options.max_memory if k.isdigit()]
    if gpus and not machine.has_gpu:
        problems.append(
            Problem(
                "max_memory",
                f"Max memory caps GPU {', '.join(gpus)} and this machine has no GPU",
                "remove the GPU caps or use cpu=…",
            )
        )
    if options.attn_implementation == "flash_attention_2":
        if not machine.has_gpu:
            problems.append(
                Problem(
                    "attn_implementation",
                    "Attention flash_attention_2 runs only on an NVIDIA GPU",
                    "pick auto or sdpa",
                )
            )
        elif not machine.flash_attn:
            problems.append(
                Problem(
                    "attn_implementation",
                    "Attention flash_attention_2 needs the flash-attn package",
                    "pip install flash-attn, or pick auto or sdpa",
                )
            )
    return problems


def matches(pattern: str, module: str) -> bool:
    """Whether a skip-list entry keeps `module` unquantized (transformers' rule:
    from the start up to a module boundary, as a regex, or as a suffix)."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    try:
        if re.match(rf"(?:{pattern}){boundary}", module):
            return True
    except re.error:
        pass
    return module.endswith(pattern)


def unknown_skip_modules(
    quant: QuantSettings, module_names: Iterable[str]
) -> list[Problem]:
    """Keep-unquantized names that match no module, with the nearest real names."""
    modules = [m for m in module_names if m]
    if not modules or not quant.quantized or not quant.llm_int8_skip_modules:
        return []
    suggestions = _suffixes(modules)
    problems = []
    for name in quant.llm_int8_skip_modules:
        if any(matches(name, m) for m in modules):
            continue
        close = difflib.get_close_matches(name, suggestions, n=3, cutoff=0.5)
        hint = (
            "did you mean " + " or ".join(close) + "?"
            if close
            else "names look like lm_head or mlp.down_proj"
        )
        problems.append(
            Problem(
                "llm_int8_skip_modules",
                f"Keep unquantized: {name!r} matches no module of this model",
                hint,
            )
        )
    return problems


def _suffixes(modules: list[str]) -> list[str]:
    """Every module name and its dotted tails that do not start with a block index."""
    out: dict[str, None] = {}
    for module in modules:
        parts = module.split(".")
        for i in range(len(parts)):
            if not parts[i].isdigit():
                out[".".join(parts[i:])] = None
    return list(out)


def module_names(model: object, dtype: str = "float32") -> list[str]:
    """Every module name of `model` (a ModelRef, 'default', a folder, a config dict)
    from the estimate's meta-device build, parents included; [] when it cannot be
    built."""
    from core.model import estimate

    try:
        struct = estimate.structure(estimate.read_source(model), dtype)
    except Exception as exc:  # the estimate shows why; here nothing can be checked
        logger.debug("no module names for %s: %s", model, exc)
        return []
    names: dict[str, None] = {}
    for tensor in (*struct.params, *struct.buffers):
        parts = tensor.module.split(".")
        for i in range(1, len(parts) + 1):
            names[".".join(parts[:i])] = None
    return list(names)
