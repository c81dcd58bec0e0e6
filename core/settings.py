"""QuantSettings, LoadOptions and GenerationSettings: the one home of every setting.

QuantSettings has one field per ``BitsAndBytesConfig.__init__`` argument, with the
library's names and meanings. The two load flags are derived from a single ``mode``
(none / 8bit / 4bit) so the "neither flag set still quantizes to fp4" trap cannot
happen. The settings panel, the CLI flags, the JSON file and the Python snippet are all
generated from ``FIELDS``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import SettingsError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

Mode = Literal["none", "8bit", "4bit"]
MODES: tuple[str, ...] = ("none", "8bit", "4bit")
MODE_TITLES = {"none": "None (full precision)", "8bit": "8-bit", "4bit": "4-bit"}
APPLIES_TITLES = {"8bit": "8-bit", "4bit": "4-bit", "both": "8-bit and 4-bit"}

FLOAT_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
STORAGE_DTYPES: tuple[str, ...] = ("uint8", "int8", "float16", "bfloat16", "float32")
_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
}
# Names users copy from tutorials that BitsAndBytesConfig silently ignores.
_KNOWN_BOGUS = {
    "bnb_8bit_compute_dtype": "8-bit has no compute dtype: LLM.int8 computes in the "
    "model's dtype; remove it",
    "bnb_4bit_blocksize": "the 4-bit blocksize is fixed at 64 by bitsandbytes; remove it",
    "blocksize": "the 4-bit blocksize is fixed at 64 by bitsandbytes; remove it",
}


@dataclass(frozen=True)
class FieldSpec:
    """What the window, the CLI and the docs need to know about one setting."""

    name: str
    title: str
    description: str
    kind: Literal["bool", "float", "choice", "list"]
    applies: Literal["8bit", "4bit", "both"]
    default: Any
    choices: tuple[Any, ...] = ()
    derived: bool = False  # set through `mode`, never edited on its own

    def applies_to(self, mode: str) -> bool:
        """Whether this field has an effect in `mode`."""
        if mode == "none":
            return False
        return self.applies in ("both", mode)

    def reason_disabled(self, mode: str) -> str:
        """Why the field is greyed out in `mode`, or '' when it applies."""
        if self.applies_to(mode):
            return ""
        if mode == "none":
            return "Has no effect without quantization: pick 8-bit or 4-bit."
        return f"Applies to {APPLIES_TITLES[self.applies]} only."


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "load_in_8bit",
        "Load in 8-bit",
        "Replace every Linear layer with LLM.int8: weights stored as int8 with one "
        "scale per output row, outlier features kept in 16-bit. Set by the mode switch.",
        "bool",
        "8bit",
        False,
        derived=True,
    ),
    FieldSpec(
        "load_in_4bit",
        "Load in 4-bit",
        "Replace every Linear layer with a 4-bit layer (nf4 or fp4) that keeps one "
        "scale per block of 64 weights. Set by the mode switch.",
        "bool",
        "4bit",
        False,
        derived=True,
    ),
    FieldSpec(
        "llm_int8_threshold",
        "Outlier threshold",
        "Activations whose magnitude exceeds this value are multiplied in 16-bit "
        "instead of int8. Lower keeps more in 16-bit (more accurate, slower); 6.0 is "
        "the value from the LLM.int8 paper.",
        "float",
        "8bit",
        6.0,
    ),
    FieldSpec(
        "llm_int8_skip_modules",
        "Keep unquantized",
        "Module names that stay in full precision. Empty means the library's choice "
        "(the output head and tied modules). A custom list replaces that choice, so "
        "Nibble keeps lm_head in it unless you untick 'quantize lm_head'.",
        "list",
        "both",
        None,
    ),
    FieldSpec(
        "llm_int8_enable_fp32_cpu_offload",
        "fp32 CPU offload",
        "Allow layers that do not fit on the GPU to run on the CPU in float32. Needed "
        "when the device map mixes a GPU with cpu or disk.",
        "bool",
        "both",
        False,
    ),
    FieldSpec(
        "llm_int8_has_fp16_weight",
        "Keep fp16 weights",
        "Keep a 16-bit copy of the weights beside the int8 ones, for fine-tuning. "
        "Costs the memory 8-bit was meant to save; leave off for inference.",
        "bool",
        "8bit",
        False,
    ),
    FieldSpec(
        "bnb_4bit_compute_dtype",
        "Compute dtype",
        "The dtype 4-bit weights are unpacked to for each matrix multiply. bfloat16 "
        "is fast on recent GPUs and CPUs with AVX512-BF16; default is float32.",
        "choice",
        "4bit",
        None,
        choices=(None, *FLOAT_DTYPES),
    ),
    FieldSpec(
        "bnb_4bit_quant_type",
        "Quant type",
        "nf4 (NormalFloat) places its 16 levels where normally distributed weights "
        "fall and is the better choice for LLMs; fp4 is a plain 4-bit float. The "
        "library's default is fp4.",
        "choice",
        "4bit",
        "fp4",
        choices=("nf4", "fp4"),
    ),
    FieldSpec(
        "bnb_4bit_use_double_quant",
        "Double quant",
        "Quantize the per-block scales themselves to 8-bit, saving about 0.37 bits "
        "per weight (roughly 3 GB on a 65B model) at a tiny cost in accuracy.",
        "bool",
        "4bit",
        False,
    ),
    FieldSpec(
        "bnb_4bit_quant_storage",
        "Quant storage",
        "The tensor dtype the packed 4-bit values are stored in. uint8 (default) "
        "suits inference; match the model dtype for FSDP sharding.",
        "choice",
        "4bit",
        None,
        choices=(None, *STORAGE_DTYPES),
    ),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
EDITABLE_FIELDS = tuple(f for f in FIELDS if not f.derived)


@dataclass(frozen=True)
class OptionSpec:
    """A LoadOptions or GenerationSettings field: what its widget, tooltip, CLI flag
    and JSON key are made from."""

    name: str
    title: str
    description: str
    kind: Literal["bool", "int", "float", "choice", "text", "optional_int"]
    default: Any
    choices: tuple[str, ...] = ()
    editable: bool = False  # a choice that also takes typed values (cuda:N)
    low: float = 0.0
    high: float = 0.0
    step: float = 1.0
    placeholder: str = ""

    @property
    def flag(self) -> str:
        """The command-line flag: --device-map for device_map."""
        return "--" + self.name.replace("_", "-")


DEVICE_MAPS: tuple[str, ...] = ("auto", "cpu", "cuda:0")
ATTENTION: tuple[str, ...] = ("auto", "eager", "sdpa", "flash_attention_2")

LOAD_FIELDS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "device_map",
        "Device map",
        "auto puts the model on the GPU when there is one, else on the CPU; cpu or "
        "cuda:N pins it to one device.",
        "choice",
        "auto",
        DEVICE_MAPS,
        editable=True,
    ),
    OptionSpec(
        "max_memory",
        "Max memory",
        "A cap per device; layers that do not fit go to the next device. Empty means "
        "no cap.",
        "text",
        "",
        placeholder="e.g. 0=6GiB,cpu=20GiB",
    ),
    OptionSpec(
        "dtype",
        "dtype",
        "The dtype of everything that is not quantized (embeddings, norms, the output "
        "head). auto: float32 on the CPU, the model's own on a GPU.",
        "choice",
        "auto",
        ("auto", *FLOAT_DTYPES),
    ),
    OptionSpec(
        "attn_implementation",
        "Attention",
        "How attention is computed. auto lets transformers choose (sdpa where it "
        "can); flash_attention_2 needs an NVIDIA GPU and the flash-attn package.",
        "choice",
        "auto",
        ATTENTION,
    ),
    OptionSpec(
        "trust_remote_code",
        "Trust remote code",
        "Run Python code shipped inside the model's folder or repository. Only for "
        "models whose authors you trust.",
        "bool",
        False,
    ),
)
LOAD_FIELD_BY_NAME = {f.name: f for f in LOAD_FIELDS}

GENERATION_FIELDS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "max_new_tokens",
        "Max tokens",
        "The longest answer, in tokens.",
        "int",
        256,
        low=1,
        high=32768,
    ),
    OptionSpec(
        "temperature",
        "Temperature",
        "Higher is more varied; 0 always picks the likeliest token.",
        "float",
        0.7,
        low=0.0,
        high=5.0,
        step=0.05,
    ),
    OptionSpec(
        "top_p",
        "Top-p",
        "Sample from the smallest set of tokens with this much probability.",
        "float",
        0.9,
        low=0.01,
        high=1.0,
        step=0.05,
    ),
    OptionSpec(
        "top_k",
        "Top-k",
        "Sample from the k likeliest tokens; 0 means all.",
        "int",
        50,
        low=0,
        high=1000,
    ),
    OptionSpec(
        "repetition_penalty",
        "Repetition",
        "Penalty for repeating tokens; 1 is off.",
        "float",
        1.0,
        low=0.5,
        high=3.0,
        step=0.05,
    ),
    OptionSpec(
        "seed",
        "Random seed",
        "A number makes sampling repeatable: the same settings give the same answer "
        "again. Empty picks a new one each time.",
        "optional_int",
        None,
        placeholder="random",
    ),
    OptionSpec(
        "greedy",
        "Greedy",
        "Always pick the likeliest token (ignores temperature, top-p and top-k).",
        "bool",
        False,
    ),
)
GENERATION_FIELD_BY_NAME = {f.name: f for f in GENERATION_FIELDS}


def canonical_dtype(value: Any, allowed: Iterable[str], what: str) -> str | None:
    """Return 'float16' for torch.float16, 'fp16', 'torch.float16'...; None stays None."""
    if value is None or value == "" or value == "default":
        return None
    text = str(value).strip()
    text = text.removeprefix("torch.").lower()
    text = _DTYPE_ALIASES.get(text, text)
    allowed = tuple(allowed)
    if text not in allowed:
        raise SettingsError(
            f"{what} {value!r} is not a dtype Nibble can use here",
            f"choose one of {', '.join(allowed)}",
        )
    return text


@dataclass
class QuantSettings:
    """Every BitsAndBytesConfig argument, validated on construction."""

    mode: Mode = "none"
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: str | None = None
    bnb_4bit_quant_type: str = "fp4"
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: str | None = None
    # Not a BitsAndBytesConfig argument: with a custom skip list, lm_head is added to it
    # unless the user asks for it to be quantized on purpose.
    quantize_lm_head: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(
                f"mode {self.mode!r} is not valid", "use one of: none, 8bit, 4bit"
            )
        self.llm_int8_threshold = _as_threshold(self.llm_int8_threshold)
        self.llm_int8_skip_modules = _as_module_list(self.llm_int8_skip_modules)
        for name in (
            "llm_int8_enable_fp32_cpu_offload",
            "llm_int8_has_fp16_weight",
            "bnb_4bit_use_double_quant",
            "quantize_lm_head",
        ):
            setattr(self, name, _as_bool(name, getattr(self, name)))
        self.bnb_4bit_compute_dtype = canonical_dtype(
            self.bnb_4bit_compute_dtype, FLOAT_DTYPES, "bnb_4bit_compute_dtype"
        )
        self.bnb_4bit_quant_storage = canonical_dtype(
            self.bnb_4bit_quant_storage, STORAGE_DTYPES, "bnb_4bit_quant_storage"
        )
        qt = self.bnb_4bit_quant_type
        if qt not in ("nf4", "fp4"):
            hint = (
                "use lower case: 'nf4'"
                if str(qt).lower() in ("nf4", "fp4")
                else ("bitsandbytes 4-bit comes in 'nf4' (best for LLMs) or 'fp4'")
            )
            raise SettingsError(
                f"bnb_4bit_quant_type {qt!r} is not valid: must be 'nf4' or 'fp4'", hint
            )

    # -- derived flags ---------------------------------------------------------------
    @property
    def load_in_8bit(self) -> bool:
        return self.mode == "8bit"

    @property
    def load_in_4bit(self) -> bool:
        return self.mode == "4bit"

    @property
    def quantized(self) -> bool:
        return self.mode != "none"

    def effective_skip_modules(self) -> list[str] | None:
        """The list passed to BitsAndBytesConfig (None = the library's own choice)."""
        skip = self.llm_int8_skip_modules
        if skip is None:
            return [] if self.quantize_lm_head else None
        skip = list(skip)
        if not self.quantize_lm_head and "lm_head" not in skip:
            skip.append("lm_head")
        if self.quantize_lm_head:
            skip = [s for s in skip if s != "lm_head"]
        return skip

    def effective(self) -> QuantSettings:
        """A copy with every field that does not apply to the mode at its default."""
        changes = {
            spec.name: spec.default
            for spec in EDITABLE_FIELDS
            if not spec.applies_to(self.mode)
        }
        if not self.quantized:
            changes["quantize_lm_head"] = False
        return self.replace(**changes)

    def label(self) -> str:
        """A short name for tables: 'nf4-dq', 'int8', 'none'..."""
        if self.mode == "8bit":
            return "int8"
        if self.mode == "4bit":
            return self.bnb_4bit_quant_type + (
                "-dq" if self.bnb_4bit_use_double_quant else ""
            )
        return "none"

    # -- conversions -----------------------------------------------------------------
    def replace(self, **changes: Any) -> QuantSettings:
        """A copy with some fields changed, validated."""
        return dataclasses.replace(self, **changes)

    def with_values(self, values: Mapping[str, Any]) -> QuantSettings:
        """A copy with fields set from user values (strings from the CLI or panel)."""
        changes: dict[str, Any] = {}
        mode = self.mode
        for name, raw in values.items():
            if name == "mode":
                changes["mode"] = parse_mode(raw)
                mode = changes["mode"]
            elif name in ("load_in_8bit", "load_in_4bit"):
                if _as_bool(name, parse_field(name, raw)):
                    other = "load_in_4bit" if name == "load_in_8bit" else "load_in_8bit"
                    if other in values and _as_bool(
                        other, parse_field(other, values[other])
                    ):
                        raise SettingsError(
                            "load_in_8bit and load_in_4bit cannot both be on",
                            "pick one mode: 8bit or 4bit",
                        )
                    mode = "8bit" if name == "load_in_8bit" else "4bit"
                    changes["mode"] = mode
                elif mode == ("8bit" if name == "load_in_8bit" else "4bit"):
                    changes["mode"] = mode = "none"
            else:
                check_field_name(name)
                changes[name] = parse_field(name, raw)
        return self.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the schema version."""
        data = {"schema_version": SCHEMA_VERSION}
        data.update(dataclasses.asdict(self))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantSettings:
        """Build from a dict written by `to_dict` (older versions migrated)."""
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SettingsError(
                f"settings schema version {version!r} is newer than this Nibble",
                "update Nibble or reset the settings",
            )
        return cls().with_values(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantSettings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(
                f"settings file is not valid JSON ({exc.msg} at line {exc.lineno})",
                "fix the file or delete it to start from defaults",
            ) from exc
        if not isinstance(data, dict):
            raise SettingsError("settings file does not hold an object", "reset it")
        return cls.from_dict(data)

    def bnb_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for BitsAndBytesConfig, dtypes still as names."""
        if not self.quantized:
            return {}
        return {
            "load_in_8bit": self.load_in_8bit,
            "load_in_4bit": self.load_in_4bit,
            "llm_int8_threshold": self.llm_int8_threshold,
            "llm_int8_skip_modules": self.effective_skip_modules(),
            "llm_int8_enable_fp32_cpu_offload": self.llm_int8_enable_fp32_cpu_offload,
            "llm_int8_has_fp16_weight": self.llm_int8_has_fp16_weight,
            "bnb_4bit_compute_dtype": self.bnb_4bit_compute_dtype,
            "bnb_4bit_quant_type": self.bnb_4bit_quant_type,
            "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
            "bnb_4bit_quant_storage": self.bnb_4bit_quant_storage,
        }

    def to_bnb_config(self) -> Any:
        """A transformers BitsAndBytesConfig, or None when mode is 'none'."""
        if not self.quantized:
            return None
        import torch
        from transformers import BitsAndBytesConfig

        kwargs = self.bnb_kwargs()
        if kwargs["bnb_4bit_compute_dtype"] is not None:
            kwargs["bnb_4bit_compute_dtype"] = getattr(
                torch, kwargs["bnb_4bit_compute_dtype"]
            )
        if kwargs["bnb_4bit_quant_storage"] is None:
            del kwargs["bnb_4bit_quant_storage"]
        return BitsAndBytesConfig(**kwargs)

    def python_lines(self) -> list[str]:
        """The `BitsAndBytesConfig(...)` arguments that differ from defaults, as code."""
        if not self.quantized:
            return []
        lines = [f"load_in_{self.mode}=True,"]
        for spec in EDITABLE_FIELDS:
            if not spec.applies_to(self.mode):
                continue
            if spec.name == "llm_int8_skip_modules":
                value = self.effective_skip_modules()
            else:
                value = getattr(self, spec.name)
            if value == spec.default:
                continue
            if spec.name == "bnb_4bit_compute_dtype":
                lines.append(f"{spec.name}=torch.{value},")
            else:
                lines.append(f"{spec.name}={py_literal(value)},")
        return lines

    def to_python(
        self, model: str = "your-model-name", options: LoadOptions | None = None
    ) -> str:
        """A runnable snippet in the style users know from the bitsandbytes guides for these settings."""
        options = options or LoadOptions()
        out = [
            "import torch",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
        ]
        if self.quantized:
            out[-1] += ", BitsAndBytesConfig"
            out += ["", "bnb_config = BitsAndBytesConfig("]
            out += [f"    {line}" for line in self.python_lines()]
            out.append(")")
        out += [
            "",
            "model = AutoModelForCausalLM.from_pretrained(",
            f"    {py_literal(model)},",
        ]
        if self.quantized:
            out.append("    quantization_config=bnb_config,")
        out.append(f"    device_map={py_literal(options.device_map_value())},")
        if options.dtype != "auto":
            out.append(f"    dtype=torch.{options.dtype},")
        if options.max_memory:
            out.append(f"    max_memory={py_literal(options.max_memory_value())},")
        if options.attn_implementation != "auto":
            out.append(
                f"    attn_implementation={py_literal(options.attn_implementation)},"
            )
        if options.trust_remote_code:
            out.append("    trust_remote_code=True,")
        out.append(")")
        out.append(f"tokenizer = AutoTokenizer.from_pretrained({py_literal(model)})")
        return "\n".join(out) + "\n"


def py_literal(value: Any) -> str:
    """Python source for a value, with double-quoted strings as in the usual bitsandbytes examples."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


def check_field_name(name: str) -> str:
    """Return `name` if it is a QuantSettings field, else a SettingsError with a hint."""
    if name in FIELD_BY_NAME or name in ("mode", "quantize_lm_head"):
        return name
    if name in _KNOWN_BOGUS:
        raise SettingsError(
            f"{name} is not a BitsAndBytesConfig setting", _KNOWN_BOGUS[name]
        )
    close = [f for f in FIELD_BY_NAME if name.lower() in f or f.endswith(name.lower())]
    hint = (
        f"did you mean {close[0]}?" if close else "see `python main.py snippet --help`"
    )
    raise SettingsError(f"unknown setting {name!r}", hint)


def parse_mode(raw: Any) -> str:
    text = str(raw).strip().lower().replace("-", "").replace("_", "")
    aliases = {
        "none": "none",
        "off": "none",
        "8bit": "8bit",
        "int8": "8bit",
        "8": "8bit",
        "4bit": "4bit",
        "4": "4bit",
        "int4": "4bit",
    }
    if text not in aliases:
        raise SettingsError(
            f"mode {raw!r} is not valid", "use one of: none, 8bit, 4bit"
        )
    return aliases[text]


def parse_field(name: str, raw: Any) -> Any:
    """Turn a user's value (often a string) into the field's type; validation follows."""
    if not isinstance(raw, str):
        return raw
    spec = FIELD_BY_NAME.get(name)
    kind = spec.kind if spec else "bool"
    text = raw.strip()
    if kind == "bool":
        return _as_bool(name, text)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise SettingsError(
                f"{name} must be a number, got {raw!r}", "for example 6.0"
            ) from None
    if kind == "list":
        if text.lower() in ("", "none", "default"):
            return None
        return [part.strip() for part in text.split(",") if part.strip()]
    if text.lower() in ("none", "default", ""):
        return None
    return text


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise SettingsError(
        f"{name} must be true or false, got {value!r}", "use true or false"
    )


def _as_threshold(value: Any) -> float:
    # bitsandbytes raises TypeError for an int; users type 6, so 6 means 6.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(
            f"llm_int8_threshold must be a number, got {value!r}", "for example 6.0"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise SettingsError(
            f"llm_int8_threshold must be a positive number, got {value}",
            "6.0 is the usual value; 0 keeps nothing in 16-bit",
        )
    return value


_MODULE_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def _as_module_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",") if p.strip()]
    if not isinstance(value, (list, tuple)):
        raise SettingsError(
            f"llm_int8_skip_modules must be a list of module names, got {value!r}",
            'for example ["lm_head", "mlp.down_proj"]',
        )
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not _MODULE_NAME.match(item.strip()):
            raise SettingsError(
                f"{item!r} is not a module name",
                'names look like "lm_head" or "mlp.down_proj"',
            )
        if item.strip() not in names:
            names.append(item.strip())
    return names


# -- load options --

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_MEMORY = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE
)


@dataclass
class LoadOptions:
    """How and where to load: device map, memory caps, dtype, attention, remote code."""

    device_map: str = "auto"
    max_memory: dict[str, str] = field(default_factory=dict)
    dtype: str = "auto"
    attn_implementation: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        self.device_map = str(self.device_map).strip().lower()
        if not _DEVICE.match(self.device_map):
            raise SettingsError(
                f"device map {self.device_map!r} is not valid",
                "use auto, cpu or cuda:N",
            )
        if self.dtype != "auto":
            self.dtype = canonical_dtype(self.dtype, FLOAT_DTYPES, "dtype") or "auto"
        if self.attn_implementation not in ATTENTION:
            raise SettingsError(
                f"attention implementation {self.attn_implementation!r} is not valid",
                "use " + ", ".join(ATTENTION),
            )
        self.trust_remote_code = _as_bool("trust_remote_code", self.trust_remote_code)
        self.max_memory = parse_max_memory(self.max_memory)

    def device_map_value(self) -> str | dict[str, str]:
        """The device_map argument for from_pretrained."""
        if self.device_map == "cuda":
            return {"": "cuda:0"}
        if self.device_map.startswith("cuda:") or self.device_map == "cpu":
            return {"": self.device_map}
        return "auto"

    def max_memory_value(self) -> dict[int | str, str]:
        return {int(k) if k.isdigit() else k: v for k, v in self.max_memory.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict keyed by LOAD_FIELDS."""
        return {f.name: _copy(getattr(self, f.name)) for f in LOAD_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadOptions:
        return cls(**{k: v for k, v in data.items() if k in LOAD_FIELD_BY_NAME})


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def load_dtype(options: LoadOptions, config_dtype: Any, on_gpu: bool) -> str:
    """The dtype of a load's unquantized parts, by name: the one rule for loader and
    estimate.

    An explicit `options.dtype` wins; "auto" is float32 on the CPU (half precision is
    slow there) and, on a GPU, the checkpoint's own float16 or bfloat16 (`config_dtype`,
    a string, a torch dtype or None), else float16.
    """
    if options.dtype != "auto":
        return options.dtype
    if not on_gpu:
        return "float32"
    wanted = str(config_dtype or "").removeprefix("torch.")
    return wanted if wanted in ("float16", "bfloat16") else "float16"


def parse_max_memory(value: Any) -> dict[str, str]:
    """'0=6GiB,cpu=20GiB' or {'0': '6GiB'} → {'0': '6GiB', 'cpu': '20GiB'}."""
    if not value:
        return {}
    if isinstance(value, str):
        items = []
        for part in value.split(","):
            if "=" not in part:
                raise SettingsError(
                    f"max memory entry {part.strip()!r} has no '='",
                    "write it as 0=6GiB,cpu=20GiB",
                )
            key, _, amount = part.partition("=")
            items.append((key, amount))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise SettingsError(
            f"max memory {value!r} is not valid", "write it as 0=6GiB,cpu=20GiB"
        )
    out: dict[str, str] = {}
    for key, amount in items:
        key = str(key).strip().lower().removeprefix("cuda:")
        if not (key.isdigit() or key in ("cpu", "disk", "mps")):
            raise SettingsError(
                f"max memory device {key!r} is not valid",
                "use a GPU index, cpu or disk",
            )
        if not _MEMORY.match(str(amount)):
            raise SettingsError(
                f"max memory amount {amount!r} for {key} is not valid",
                "for example 6GiB or 500MB",
            )
        out[key] = str(amount).strip().replace(" ", "")
    return out


def check_compatible(quant: QuantSettings, options: LoadOptions) -> None:
    """Raise a SettingsError for combinations that fail deep inside loading."""
    offloads = any(k in ("cpu", "disk") for k in options.max_memory)
    has_gpu = any(
        k.isdigit() for k in options.max_memory
    ) or options.device_map.startswith("cuda")
    if (
        quant.quantized
        and offloads
        and has_gpu
        and not quant.llm_int8_enable_fp32_cpu_offload
    ):
        raise SettingsError(
            "this device map mixes a GPU with cpu/disk, which quantized loading refuses",
            "turn on llm_int8_enable_fp32_cpu_offload or drop the cpu/disk memory cap",
        )
    if quant.quantized and options.dtype == "float16" and options.device_map == "cpu":
        logger.info("float16 on the CPU is slow; bfloat16 or float32 are faster there")


# -- generation --


@dataclass
class GenerationSettings:
    """Sampling parameters for one answer."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", int, 1, 1_000_000),
            ("temperature", float, 0.0, 10.0),
            ("top_p", float, 0.0, 1.0),
            ("top_k", int, 0, 1_000_000),
            ("repetition_penalty", float, 0.01, 10.0),
        ]
        for name, kind, low, high in checks:
            value = getattr(self, name)
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise SettingsError(
                    f"{name} must be a number, got {value!r}",
                    f"use a value from {low} to {high}",
                ) from None
            if not low <= value <= high:
                raise SettingsError(
                    f"{name} {value} is out of range",
                    f"use a value from {low} to {high}",
                )
            setattr(self, name, value)
        if self.top_p == 0.0:
            raise SettingsError(
                "top_p 0 would allow no token", "use a value above 0, e.g. 0.9"
            )
        if self.seed is not None:
            try:
                self.seed = int(self.seed)
            except (TypeError, ValueError):
                raise SettingsError(
                    f"seed {self.seed!r} is not an integer", "e.g. 42"
                ) from None
        self.greedy = _as_bool("greedy", self.greedy)

    @property
    def do_sample(self) -> bool:
        return not self.greedy and self.temperature > 0

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for model.generate."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(
                temperature=self.temperature, top_p=self.top_p, top_k=self.top_k
            )
        else:
            # Silence the "sampling flags set but do_sample=False" warnings.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict keyed by GENERATION_FIELDS."""
        return {f.name: getattr(self, f.name) for f in GENERATION_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSettings:
        return cls(**{k: v for k, v in data.items() if k in GENERATION_FIELD_BY_NAME})


# -- presets --


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
