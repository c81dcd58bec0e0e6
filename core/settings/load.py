"""LoadOptions: where and how a model loads (device map, memory caps, dtype, attention)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import SettingsError
from core.settings.quant import FLOAT_DTYPES, canonical_dtype
from core.settings.schema import as_bool, fields_of, setting

DEVICE_MAPS: tuple[str, ...] = ("auto", "cpu", "cuda:0")
ATTENTION: tuple[str, ...] = ("auto", "eager", "sdpa", "flash_attention_2")

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_MEMORY = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE
)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass
class LoadOptions:
    """How and where to load: device map, memory caps, dtype, attention, remote code."""

    device_map: str = setting(
        "auto",
        "Device map",
        "auto puts the model on the GPU when there is one, else on the CPU; cpu or "
        "cuda:N pins it to one device.",
        kind="choice",
        choices=DEVICE_MAPS,
        editable=True,
    )
    max_memory: dict[str, str] = setting(
        title="Max memory",
        description="A cap per device; layers that do not fit go to the next device. "
        "Empty means no cap.",
        kind="text",
        default_factory=dict,
        placeholder="e.g. 0=6GiB,cpu=20GiB",
    )
    dtype: str = setting(
        "auto",
        "dtype",
        "The dtype of everything that is not quantized (embeddings, norms, the output "
        "head). auto: float32 on the CPU, the model's own on a GPU.",
        kind="choice",
        choices=("auto", *FLOAT_DTYPES),
    )
    attn_implementation: str = setting(
        "auto",
        "Attention",
        "How attention is computed. auto lets transformers choose (sdpa where it "
        "can); flash_attention_2 needs an NVIDIA GPU and the flash-attn package.",
        kind="choice",
        choices=ATTENTION,
    )
    trust_remote_code: bool = setting(
        False,
        "Trust remote code",
        "Run Python code shipped inside the model's folder or repository. Only for "
        "models whose authors you trust.",
        kind="bool",
    )
    fast_decode: bool = setting(
        False,
        "Fast decode",
        "Keep the KV cache at a fixed size and compile the decode step with "
        "torch.compile: faster tokens after a compile at load (cached for the next "
        "start). Answers decode one at a time. Falls back to plain decoding, and "
        "says why, where compile fails.",
        kind="bool",
    )

    def __post_init__(self) -> None:
        self.device_map = str(self.device_map).strip().lower()
        if not _DEVICE.match(self.device_map):
            raise SettingsError(
                f"device map {self.device_map!r} is not valid",
                "use auto, cpu or cuda:N",
                "device_map",
            )
        if self.dtype != "auto":
            self.dtype = canonical_dtype(self.dtype, FLOAT_DTYPES, "dtype") or "auto"
        if self.attn_implementation not in ATTENTION:
            raise SettingsError(
                f"attention implementation {self.attn_implementation!r} is not valid",
                "use " + ", ".join(ATTENTION),
                "attn_implementation",
            )
        self.trust_remote_code = as_bool("trust_remote_code", self.trust_remote_code)
        self.fast_decode = as_bool("fast_decode", self.fast_decode)
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
        """A JSON-ready dict keyed by the field names."""
        return {f.name: _copy(getattr(self, f.name)) for f in fields_of(LoadOptions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadOptions:
        names = {f.name for f in fields_of(LoadOptions)}
        return cls(**{k: v for k, v in data.items() if k in names})


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


def memory_amount(text: str) -> int:
    """'6GiB' → bytes, as accelerate reads it (KB is 10^3, KiB 2^10)."""
    match = _MEMORY.match(text)
    if match is None:
        raise SettingsError(
            f"max memory amount {text!r} is not valid",
            "for example 6GiB or 500MB",
            "max_memory",
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def parse_max_memory(value: Any) -> dict[str, str]:
    """'0=6GiB,cpu=20GiB' or {'0': '6GiB'} → {'0': '6GiB', 'cpu': '20GiB'}."""
    if not value:
        return {}
    field = "max_memory"
    if isinstance(value, str):
        items = []
        for part in value.split(","):
            if "=" not in part:
                raise SettingsError(
                    f"max memory entry {part.strip()!r} has no '='",
                    "write it as 0=6GiB,cpu=20GiB",
                    field,
                )
            key, _, amount = part.partition("=")
            items.append((key, amount))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise SettingsError(
            f"max memory {value!r} is not valid", "write it as 0=6GiB,cpu=20GiB", field
        )
    out: dict[str, str] = {}
    for key, amount in items:
        key = str(key).strip().lower().removeprefix("cuda:")
        if not (key.isdigit() or key in ("cpu", "disk", "mps")):
            raise SettingsError(
                f"max memory device {key!r} is not valid",
                "use a GPU index, cpu or disk",
                field,
            )
        if not _MEMORY.match(str(amount)):
            raise SettingsError(
                f"max memory amount {amount!r} for {key} is not valid",
                "for example 6GiB or 500MB",
                field,
            )
        out[key] = str(amount).strip().replace(" ", "")
    return out
