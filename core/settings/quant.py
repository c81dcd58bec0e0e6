"""QuantSettings: one field per ``BitsAndBytesConfig.__init__`` argument, same names.

The two load flags are derived from a single ``mode`` (none / 8bit / 4bit) so the
"neither flag set still quantizes to fp4" trap cannot happen. Each field's title,
description, kind and the modes it applies to live on the field (see schema.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import SettingsError
from core.settings.schema import (
    SCHEMA_VERSION,
    Spec,
    as_bool,
    check_numbers,
    fields_of,
    setting,
)

Mode = Literal["none", "8bit", "4bit"]
MODES: tuple[str, ...] = ("none", "8bit", "4bit")
MODE_TITLES = {"none": "None (full precision)", "8bit": "8-bit", "4bit": "4-bit"}

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
# BitsAndBytesConfig arguments that are not fields: `mode` sets them.
DERIVED_FLAGS = ("load_in_8bit", "load_in_4bit")


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
            what,
        )
    return text


@dataclass
class QuantSettings:
    """Every BitsAndBytesConfig argument, validated on construction."""

    mode: Mode = setting(
        "none",
        "Quantization",
        "none loads full precision; 8bit sets load_in_8bit (LLM.int8), 4bit sets "
        "load_in_4bit (nf4 or fp4). Exactly one flag is ever set.",
        kind="choice",
        set_only=True,  # --set NAME=VALUE on the command line
        choices=MODES,
    )
    llm_int8_threshold: float = setting(
        6.0,
        "Outlier threshold",
        "Activations whose magnitude exceeds this value are multiplied in 16-bit "
        "instead of int8. Lower keeps more in 16-bit (more accurate, slower); 6.0 is "
        "the value from the LLM.int8 paper.",
        kind="float",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="8bit",
        bnb=True,
        low=0.0,
        high=1000.0,
        step=0.5,
        hint="6.0 is the usual value; 0 keeps nothing in 16-bit",
    )
    llm_int8_skip_modules: list[str] | None = setting(
        None,
        "Keep unquantized",
        "Module names that stay in full precision. Empty means the library's choice "
        "(the output head and tied modules). A custom list replaces that choice, so "
        "Nibble keeps lm_head in it unless you untick 'quantize lm_head'.",
        kind="list",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="both",
        bnb=True,
    )
    llm_int8_enable_fp32_cpu_offload: bool = setting(
        False,
        "fp32 CPU offload",
        "Allow layers that do not fit on the GPU to run on the CPU in float32. Needed "
        "when the device map mixes a GPU with cpu or disk.",
        kind="bool",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="both",
        bnb=True,
    )
    llm_int8_has_fp16_weight: bool = setting(
        False,
        "Keep fp16 weights",
        "Keep a 16-bit copy of the weights beside the int8 ones, for fine-tuning. "
        "Costs the memory 8-bit was meant to save; leave off for inference.",
        kind="bool",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="8bit",
        bnb=True,
    )
    bnb_4bit_compute_dtype: str | None = setting(
        None,
        "Compute dtype",
        "The dtype 4-bit weights are unpacked to for each matrix multiply. bfloat16 "
        "is fast on recent GPUs and CPUs with AVX512-BF16; default is float32.",
        kind="choice",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="4bit",
        bnb=True,
        choices=(None, *FLOAT_DTYPES),
    )
    bnb_4bit_quant_type: str = setting(
        "fp4",
        "Quant type",
        "nf4 (NormalFloat) places its 16 levels where normally distributed weights "
        "fall and is the better choice for LLMs; fp4 is a plain 4-bit float. The "
        "library's default is fp4.",
        kind="choice",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="4bit",
        bnb=True,
        choices=("nf4", "fp4"),
    )
    bnb_4bit_use_double_quant: bool = setting(
        False,
        "Double quant",
        "Quantize the per-block scales themselves to 8-bit, saving about 0.37 bits "
        "per weight (roughly 3 GB on a 65B model) at a tiny cost in accuracy.",
        kind="bool",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="4bit",
        bnb=True,
    )
    bnb_4bit_quant_storage: str | None = setting(
        None,
        "Quant storage",
        "The tensor dtype the packed 4-bit values are stored in. uint8 (default) "
        "suits inference; match the model dtype for FSDP sharding.",
        kind="choice",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="4bit",
        bnb=True,
        choices=(None, *STORAGE_DTYPES),
    )
    # Not a BitsAndBytesConfig argument: with a custom skip list, lm_head is added to it
    # unless the user asks for it to be quantized on purpose.
    quantize_lm_head: bool = setting(
        False,
        "Quantize lm_head too",
        "A custom skip list replaces the library's, which would quantize the output "
        "head. Nibble keeps lm_head unquantized unless this is ticked.",
        kind="bool",
        set_only=True,  # --set NAME=VALUE on the command line
        applies="both",
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(
                f"mode {self.mode!r} is not valid",
                "use one of: none, 8bit, 4bit",
                "mode",
            )
        check_numbers(self)
        self.llm_int8_skip_modules = _as_module_list(self.llm_int8_skip_modules)
        for spec in fields_of(QuantSettings):
            if spec.kind == "bool":
                setattr(self, spec.name, as_bool(spec.name, getattr(self, spec.name)))
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
                f"bnb_4bit_quant_type {qt!r} is not valid: must be 'nf4' or 'fp4'",
                hint,
                "bnb_4bit_quant_type",
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
            for spec in fields_of(QuantSettings)
            if not spec.applies_to(self.mode)
        }
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
            elif name in DERIVED_FLAGS:
                if as_bool(name, raw):
                    other = "load_in_4bit" if name == "load_in_8bit" else "load_in_8bit"
                    if other in values and as_bool(other, values[other]):
                        raise SettingsError(
                            "load_in_8bit and load_in_4bit cannot both be on",
                            "pick one mode: 8bit or 4bit",
                            "mode",
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
        data: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
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
        kwargs: dict[str, Any] = {
            "load_in_8bit": self.load_in_8bit,
            "load_in_4bit": self.load_in_4bit,
        }
        for spec in BNB_FIELDS:
            kwargs[spec.name] = getattr(self, spec.name)
        kwargs["llm_int8_skip_modules"] = self.effective_skip_modules()
        return kwargs

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
        from core.settings import snippet

        return snippet.config_lines(self)

    def to_python(self, model: str = "your-model-name", options: Any = None) -> str:
        """A runnable snippet in the style of the bitsandbytes guides."""
        from core.settings import snippet

        return snippet.to_python(self, model, options)


# The editable BitsAndBytesConfig arguments, in the order the library lists them.
BNB_FIELDS: tuple[Spec, ...] = tuple(s for s in fields_of(QuantSettings) if s.bnb)
_BY_NAME = {s.name: s for s in fields_of(QuantSettings)}


def check_field_name(name: str) -> str:
    """Return `name` if it is a QuantSettings field, else a SettingsError with a hint."""
    if name in _BY_NAME:
        return name
    if name in _KNOWN_BOGUS:
        raise SettingsError(
            f"{name} is not a BitsAndBytesConfig setting", _KNOWN_BOGUS[name]
        )
    close = [f for f in _BY_NAME if name.lower() in f or f.endswith(name.lower())]
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
            f"mode {raw!r} is not valid", "use one of: none, 8bit, 4bit", "mode"
        )
    return aliases[text]


def parse_field(name: str, raw: Any) -> Any:
    """Turn a user's value (often a string) into the field's type; validation follows.

    Numbers stay text here: the field's own check reads them, with its range.
    """
    if not isinstance(raw, str):
        return raw
    kind = _BY_NAME[name].kind if name in _BY_NAME else "bool"
    text = raw.strip()
    if kind == "bool":
        return as_bool(name, text)
    if kind == "float":
        return text
    if kind == "list":
        if text.lower() in ("", "none", "default"):
            return None
        return [part.strip() for part in text.split(",") if part.strip()]
    if text.lower() in ("none", "default", ""):
        return None
    return text


_MODULE_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def _as_module_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",") if p.strip()]
    field = "llm_int8_skip_modules"
    if not isinstance(value, (list, tuple)):
        raise SettingsError(
            f"llm_int8_skip_modules must be a list of module names, got {value!r}",
            'for example ["lm_head", "mlp.down_proj"]',
            field,
        )
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not _MODULE_NAME.match(item.strip()):
            raise SettingsError(
                f"{item!r} is not a module name",
                'names look like "lm_head" or "mlp.down_proj"',
                field,
            )
        if item.strip() not in names:
            names.append(item.strip())
    return names
