"""The one check before a load: settings + model + machine → problems.

`check(quant, options, machine, model)` returns every `Problem` (field, message,
hint) it finds. The window marks each on its field and disables Load; the CLI and
the server's load refuse the first with exit 2; the loader refuses it too, so a load
that skipped the faces still cannot start with a setting the libraries would ignore
or choke on. The same bad setting gives the same words everywhere.

What a check needs that the settings alone do not say comes in two small objects:
`Machine` (CUDA devices, flash-attn) and `ModelFacts` (module names from the
estimate's meta-device build, and how many bytes the model needs; see
core.model.facts). A check whose facts are missing (no machine probed yet, no module
names) finds nothing.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core.errors import NibbleError, SettingsError
from core.settings import LoadOptions, QuantSettings, memory_amount, spec_of
from core.units import format_bytes

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
class ModelFacts:
    """What the checks know of the model: its modules and its size."""

    module_names: tuple[str, ...] = ()
    # The bytes the model's weights need with given settings; None when unknown.
    needed_bytes: Callable[[QuantSettings, LoadOptions], int | None] | None = None


@dataclass(frozen=True)
class Problem:
    """One setting that cannot load as asked: the field, what is wrong, what to do.

    A `warning` does not stop the load (a cap that has no effect); anything else
    does.
    """

    field: str  # the QuantSettings / LoadOptions field name ('' for none)
    message: str
    hint: str
    warning: bool = False

    def text(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message

    def error(self) -> SettingsError:
        return SettingsError(self.message, self.hint, self.field)

    @classmethod
    def from_error(cls, exc: NibbleError) -> Problem:
        """A refused value (SettingsError) as a Problem on the field it names."""
        return cls(getattr(exc, "field", ""), exc.message, exc.hint)


def label(field: str) -> str:
    """'Keep unquantized (llm_int8_skip_modules)': a field as every face names it."""
    for cls in (QuantSettings, LoadOptions):
        try:
            title = spec_of(cls, field).title
        except KeyError:
            continue
        same = title.lower() == field.replace("_", " ").lower()
        return title if same else f"{title} ({field})"
    return field


def check(
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None = None,
    model: ModelFacts | None = None,
) -> list[Problem]:
    """Every problem of these settings on `machine` with `model`, in field order."""
    problems: list[Problem] = []
    for one in CHECKS:
        problems += one(quant, options, machine, model)
    return problems


def refuse(problems: Iterable[Problem]) -> list[Problem]:
    """Raise the first problem that stops a load as a SettingsError; the warnings."""
    problems = list(problems)
    for problem in problems:
        if not problem.warning:
            raise problem.error()
    return problems


# -- the checks ----------------------------------------------------------------------


def _on_cpu_only(options: LoadOptions, machine: Machine | None) -> bool | None:
    """Whether the whole model goes to the CPU; None when the machine is unknown."""
    if options.device_map == "cpu":
        return True
    if machine is None:
        return None
    return options.device_map == "auto" and not machine.has_gpu


def _device_map(
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None,
    model: ModelFacts | None,
) -> list[Problem]:
    device = options.device_map
    if machine is None or not device.startswith("cuda"):
        return []
    index = int(device.partition(":")[2] or 0)
    what = label("device_map")
    if not machine.has_gpu:
        return [
            Problem(
                "device_map",
                f"{what}: {device} needs an NVIDIA GPU and this machine has none",
                "pick cpu or auto",
            )
        ]
    if index >= machine.cuda_devices:
        count = machine.cuda_devices
        have = f"cuda:0 to cuda:{count - 1}" if count > 1 else "cuda:0"
        return [
            Problem(
                "device_map",
                f"{what}: {device}, but this machine has {count} "
                f"GPU{'s' if count > 1 else ''} ({have})",
                "pick an existing GPU or auto",
            )
        ]
    return []


def _gpu_mixed_with_cpu(
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None,
    model: ModelFacts | None,
) -> list[Problem]:
    caps = options.max_memory
    offloads = any(k in ("cpu", "disk") for k in caps)
    has_gpu = any(k.isdigit() for k in caps) or options.device_map.startswith("cuda")
    if quant.quantized and offloads and has_gpu:
        if not quant.llm_int8_enable_fp32_cpu_offload:
            return [
                Problem(
                    "max_memory",
                    f"{label('max_memory')}: this device map mixes a GPU with "
                    "cpu/disk, which quantized loading refuses",
                    "turn on llm_int8_enable_fp32_cpu_offload or drop the cpu/disk "
                    "memory cap",
                )
            ]
    return []


def _gpu_caps(
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None,
    model: ModelFacts | None,
) -> list[Problem]:
    gpus = [k for k in options.max_memory if k.isdigit()]
    if machine is None or not gpus or machine.has_gpu:
        return []
    return [
        Problem(
            "max_memory",
            f"{label('max_memory')}: caps GPU {', '.join(gpus)} and this machine "
            "has no GPU",
            "remove the GPU caps or use cpu=…",
        )
    ]


def _cpu_cap(
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None,
    model: ModelFacts | None,
) -> list[Problem]:
    """accelerate ignores max_memory when the whole model goes to the CPU."""
    if not options.max_memory or not _on_cpu_only(options, machine):
        return []
    if machine is not None and not machine.has_gpu:
        if any(k.isdigit() for k in options.max_memory):
            return []  # _gpu_caps says what is wrong with these caps
    what = label("max_memory")
    no_effect = Problem(
        "max_memory",
        f"{what}: has no effect, the model loads whole on the CPU",
        "leave max memory out, or put the model on a GPU",
        warning=True,
    )
    cap = options.max_memory.get("cpu")
    if cap is None or model is None or model.needed_bytes is None:
        return [no_effect]
    try:
        needed = model.needed_bytes(quant, options)
    except NibbleError:
        needed = None
    if needed is not None and memory_amount(cap) < needed:
        return [
            Problem(
                "max_memory",
                f"{what}: caps the CPU at {cap}, but the model needs "
                f"{format_bytes(needed)} there (there is no GPU to put the rest on)",
                "raise the cpu cap or leave max memory out",
            )
        ]
    return [no_effect]


def _offload_on_cpu(
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None,
    model: ModelFacts | None,
) -> list[Problem]:
    """transformers skips every Linear when the device map is {"": "cpu"}."""
    if not (quant.quantized and quant.llm_int8_enable_fp32_cpu_offload):
        return []
    if not _on_cpu_only(options, machine):
        return []
    return [
        Problem(
            "llm_int8_enable_fp32_cpu_offload",
            f"{label('llm_int8_enable_fp32_cpu_offload')}: with the whole model on "
            "the CPU it would quantize nothing",
            "turn it off: it is for splitting a model between a GPU and the CPU",
        )
    ]


def _attention(
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None,
    model: ModelFacts | None,
) -> list[Problem]:
    if machine is None or options.attn_implementation != "flash_attention_2":
        return []
    what = label("attn_implementation")
    if not machine.has_gpu:
        return [
            Problem(
                "attn_implementation",
                f"{what}: flash_attention_2 runs only on an NVIDIA GPU",
                "pick auto or sdpa",
            )
        ]
    if not machine.flash_attn:
        return [
            Problem(
                "attn_implementation",
                f"{what}: flash_attention_2 needs the flash-attn package",
                "pip install flash-attn, or pick auto or sdpa",
            )
        ]
    return []


def _skip_modules(
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None,
    model: ModelFacts | None,
) -> list[Problem]:
    """transformers silently ignores a name that matches no module: a typo would
    quantize what the user meant to keep."""
    if model is None or not model.module_names:
        return []
    if not quant.quantized or not quant.llm_int8_skip_modules:
        return []
    modules = list(model.module_names)
    suggestions = _suffixes(modules)
    problems = []
    # lm_head is Nibble's own addition to every custom list; a model whose head is
    # tied to the embeddings has none to keep, and the library ignores it harmlessly.
    for name in quant.llm_int8_skip_modules:
        if name == "lm_head" or any(matches(name, m) for m in modules):
            continue
        close = difflib.get_close_matches(name, suggestions, n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + " or ".join(close) + "?"
        else:
            hint = "this model's names include " + ", ".join(_examples(suggestions))
        problems.append(
            Problem(
                "llm_int8_skip_modules",
                f"{label('llm_int8_skip_modules')}: {name!r} matches no module of "
                "this model",
                hint,
            )
        )
    return problems


CHECKS: tuple[
    Callable[
        [QuantSettings, LoadOptions, Machine | None, ModelFacts | None], list[Problem]
    ],
    ...,
] = (
    _skip_modules,
    _offload_on_cpu,
    _device_map,
    _gpu_mixed_with_cpu,
    _gpu_caps,
    _cpu_cap,
    _attention,
)


# -- module names --------------------------------------------------------------------


def matches(pattern: str, module: str) -> bool:
    """Whether a skip-list entry keeps `module` unquantized, by transformers' rule
    (from the start up to a module boundary, as a regex, or as a suffix)."""
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:  # older transformers: the same rule, written out
        boundary = r"(?:(?<=\.)|(?=\.|$))"
        try:
            if re.match(rf"(?:{pattern}){boundary}", module):
                return True
        except re.error:
            pass
        return module.endswith(pattern)
    try:
        return not should_convert_module(module, [pattern])
    except re.error:
        return module.endswith(pattern)


def _suffixes(modules: list[str]) -> list[str]:
    """Every module name and its dotted tails that do not start with a block index."""
    out: dict[str, None] = {}
    for module in modules:
        parts = module.split(".")
        for i in range(len(parts)):
            if not parts[i].isdigit():
                out[".".join(parts[i:])] = None
    return list(out)


def _examples(suggestions: list[str], count: int = 3) -> list[str]:
    """A few names a user would write: lm_head and the short per-block ones."""
    short = sorted(
        s
        for s in suggestions
        if s.count(".") == 1 and not any(part.isdigit() for part in s.split("."))
    )
    picked = (["lm_head"] if "lm_head" in suggestions else []) + short
    return picked[:count] or suggestions[:count]
