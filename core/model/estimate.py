"""Know before you load: the exact footprint of a model for given settings, and a verdict.

From config.json alone (never the weights) the model is built on the meta device with
the dtype the loader would use, and every parameter and buffer is counted. Linear and
Conv1D layers that bitsandbytes would replace (by transformers' own skip rules) are
counted with the byte formulas of the packed weight and its quantization state, so
weights + quantization state equal `core.model.loader.true_bytes` of the loaded model.

The KV cache follows the config (GQA/MQA heads, sliding windows); activations and the
CUDA context are a stated allowance (see OVERHEAD_NOTE). The verdict compares the total
with free VRAM (NVML) or, with no usable GPU, available host RAM.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from core.errors import NibbleError, SettingsError
from core.model.calibration import Calibration, device_key, for_device
from core.model.catalog import ConfigSource, ModelSpec, read_source
from core.model.fit import DeviceInfo, Fit, Need, Offload, Verdict, judge, probe_device
from core.settings import PRESETS, LoadOptions, QuantSettings, load_dtype

logger = logging.getLogger(__name__)

# Highest quality first: the recommendation is the first of these that fits.
QUALITY_ORDER: tuple[str, ...] = (
    "fp32",
    "bf16",
    "fp16",
    "int8",
    "nf4",
    "nf4-dq",
    "fp4",
)
CUDA_CONTEXT_BYTES = 500 * 2**20
OVERHEAD_NOTE = (
    "overhead = activations of one prefill (batch × context × (3·hidden + 2·intermediate) "
    "at the load dtype, fp32 logits of the last token, the largest 4-bit weight "
    "dequantized for a matmul, and eager attention scores of one layer) + 500 MiB CUDA "
    "context on a GPU"
)
DEFAULT_CONTEXT = 4096
# What quantizing one weight holds beside its result, in fp32 bytes of that weight:
# bitsandbytes 0.50.2 quantizes on the CPU in plain torch (a float copy, scaled
# values, bucket indices; fp4 also an int64 remap) (docs/facts.md, "What a quantizing
# load holds"). On a GPU the weight is materialized at the load dtype first.
QUANTIZE_TRANSIENT = {"nf4": 2.4, "fp4": 5.9, "int8": 2.25}
# Per quantized layer: its module, parameter wrappers and quantization state objects
# (measured: 27-30 KiB each on the default model and on small Llamas).
MODULE_ALLOWANCE_BYTES = 32 * 1024
PEAK_NOTE = (
    "peak during load = weights + quantization state, or, while the last weights are "
    "quantized, the quantized layers + what quantizing the largest one holds "
    "(2.25-5.9x its fp32 size), whichever is higher, + 32 KiB per quantized layer "
    "(+ CUDA context on a GPU)"
)
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "uint8": 1, "int8": 1}
_CORE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


class EstimateError(NibbleError):
    """The configuration cannot be read at all."""


# -- the model's structure, from a meta-device build --


@dataclass(frozen=True)
class Tensor:
    """One parameter or buffer of the meta model."""

    name: str
    module: str
    numel: int
    dtype: str
    kind: str  # embeddings, norms, lm_head, linear, other, buffers
    group: str  # the block it belongs to, for offload splits


@dataclass
class KVShape:
    """What the KV cache needs: per attention layer, kv heads × head dim and a window."""

    layers: list[tuple[int, int, int | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def bytes(self, tokens: int, batch: int, itemsize: int) -> int:
        total = 0
        for kv_heads, head_dim, window in self.layers:
            # transformers' sliding layers keep the last window - 1 tokens.
            kept = min(tokens, window - 1) if window else tokens
            total += 2 * kv_heads * head_dim * kept * batch * itemsize
        return total


@dataclass
class Structure:
    """Everything the byte counts need, built once per (config, dtype)."""

    architecture: str
    params: list[Tensor]
    buffers: list[Tensor]
    linears: dict[str, tuple[int, int]]  # module name → (in_features, out_features)
    default_skips: list[str]
    keep_in_fp32: list[str]
    keep_in_fp32_strict: list[str]
    hidden: int
    intermediate: int
    vocab: int
    heads: int


_cache: dict[tuple[str, str, bool], Structure] = {}
_cache_lock = threading.Lock()


def structure(
    source: ConfigSource, dtype: str, trust_remote_code: bool = False
) -> Structure:
    """Build the model on the meta device with `dtype` and record what it holds."""
    key = (source.key, dtype, trust_remote_code)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    built = _build(source, dtype, trust_remote_code)
    with _cache_lock:
        _cache[key] = built
    return built


def hf_config(source: ConfigSource, trust_remote_code: bool = False) -> Any:
    """A transformers config from the raw dict; EstimateError when it cannot be made."""
    from transformers import AutoConfig

    raw = dict(source.raw)
    model_type = raw.pop("model_type", None)
    if not model_type:
        raise EstimateError(
            f"config.json of {source.name} has no model_type",
            "add the model_type (e.g. llama) or use the model's original config.json",
        )
    if raw.get("auto_map") and trust_remote_code and source.path is not None:
        return AutoConfig.from_pretrained(
            str(source.path.parent), trust_remote_code=True
        )
    try:
        return AutoConfig.for_model(model_type, **raw)
    except Exception as exc:
        text = str(exc)
        if "Unrecognized" in text or "model_type" in text:
            raise EstimateError(
                f"architecture {model_type!r} is unknown to this transformers",
                "update transformers; the KV cache is still estimated from the config",
            ) from None
        cause = getattr(exc, "__cause__", None) or exc
        raise EstimateError(
            f"config.json of {source.name} is invalid: {cause}".splitlines()[0],
            "fix the config or use the model's original config.json",
        ) from None


def _build(source: ConfigSource, dtype: str, trust_remote_code: bool) -> Structure:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import get_keys_to_not_convert

    from core.stack import import_stack, model_build

    import_stack()
    config = hf_config(source, trust_remote_code)
    try:
        # No `dtype` argument: from_config would set torch's process-wide default
        # dtype, which a load running in another thread sets too (docs/facts.md,
        # "from_pretrained changes process-wide state"). The thread-local mode below gives every tensor
        # created without a dtype the load dtype instead, as the loader's default would.
        with (
            model_build(),
            torch.device("meta"),
            _default_dtype_mode(getattr(torch, dtype)),
        ):
            model = AutoModelForCausalLM.from_config(
                config, dtype=None, trust_remote_code=trust_remote_code
            )
    except Exception as exc:
        raise EstimateError(
            f"the model cannot be built from config.json: {exc}".splitlines()[0],
            "check the config's sizes; the KV cache is still estimated from it",
        ) from None
    # A concurrent from_pretrained replaces PreTrainedModel.tie_weights with a no-op
    # while it runs, so the build may come out untied: the tied copies are dropped
    # from the count by name rather than by relying on tying having happened.
    tied = set(model.get_expanded_tied_weights_keys(all_submodels=True))
    output = model.get_output_embeddings()
    kinds: dict[str, str] = {}
    linears: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            in_f, out_f = module.weight.shape
            linears[name] = (int(in_f), int(out_f))
            kinds[name] = "linear"
        elif type(module) is torch.nn.Linear:
            linears[name] = (module.in_features, module.out_features)
            kinds[name] = "linear"
        elif isinstance(module, torch.nn.Embedding):
            kinds[name] = "embeddings"
        elif "norm" in type(module).__name__.lower():
            kinds[name] = "norms"
        if output is not None and module is output:
            kinds[name] = "lm_head"

    def tensor(name: str, t: Any, kind: str | None = None) -> Tensor:
        module = name.rpartition(".")[0]
        return Tensor(
            name,
            module,
            int(t.numel()),
            str(t.dtype).removeprefix("torch."),
            kind or kinds.get(module, "other"),
            _group(module),
        )

    params = [tensor(n, p) for n, p in model.named_parameters() if n not in tied]
    buffers = [tensor(n, b, "buffers") for n, b in model.named_buffers()]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    intermediate = int(
        getattr(text, "intermediate_size", None)
        or getattr(text, "n_inner", None)
        or getattr(text, "ffn_dim", None)
        or 4 * hidden
    )
    return Structure(
        architecture=type(model).__name__,
        params=params,
        buffers=buffers,
        linears=linears,
        default_skips=list(get_keys_to_not_convert(model)),
        keep_in_fp32=sorted(model._keep_in_fp32_modules or []),
        keep_in_fp32_strict=sorted(model._keep_in_fp32_modules_strict or []),
        hidden=hidden,
        intermediate=intermediate,
        vocab=int(getattr(text, "vocab_size", 0) or 0),
        heads=heads,
    )


def _default_dtype_mode(dtype: Any) -> Any:
    """A thread-local stand-in for torch.set_default_dtype(dtype) (see _build)."""
    import torch
    from torch.overrides import TorchFunctionMode

    factories = {
        torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
        torch.arange, torch.linspace, torch.logspace, torch.tensor, torch.eye,
        torch.empty_strided,
    }  # fmt: skip

    class Mode(TorchFunctionMode):
        def __torch_function__(  # type: ignore[override]
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            kwargs = kwargs or {}
            result = func(*args, **kwargs)
            if (
                func in factories
                and kwargs.get("dtype") is None
                and isinstance(result, torch.Tensor)
                and result.is_floating_point()
                and result.dtype != dtype
            ):
                # Made with the default dtype, which inside from_pretrained is the
                # load dtype.
                result = result.to(dtype)
            return result

    return Mode()


def _group(module: str) -> str:
    """'model.layers.3.mlp.up_proj' → 'model.layers.3'; 'lm_head' → 'lm_head'."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return module


def kv_shape(raw: dict[str, Any]) -> KVShape:
    """KV heads, head dim and window of every attention layer, from the raw config."""
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    shape = KVShape()

    def first(*names: str) -> Any:
        for name in names:
            if text.get(name) is not None:
                return text[name]
        return None

    layers = first("num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = first("num_attention_heads", "n_head", "num_heads", "n_heads")
    hidden = first("hidden_size", "n_embd", "d_model", "dim")
    if not (isinstance(layers, int) and isinstance(heads, int) and heads > 0):
        shape.notes.append(
            "KV cache not estimated: config.json lacks the layer or attention head count"
        )
        return shape
    kv_heads = first("num_key_value_heads", "n_head_kv", "num_kv_heads")
    if kv_heads is None:
        multi_query = text.get("multi_query") or text.get("multi_query_attention")
        kv_heads = 1 if multi_query else heads
    head_dim = first("head_dim")
    if head_dim is None:
        if not isinstance(hidden, int):
            shape.notes.append("KV cache not estimated: config.json lacks hidden_size")
            return shape
        head_dim = hidden // heads
    if text.get("kv_lora_rank"):
        shape.notes.append(
            "latent attention (kv_lora_rank) caches less than counted here"
        )
    window = text.get("sliding_window")
    if text.get("use_sliding_window") is False:
        window = None
    types = text.get("layer_types")
    if not isinstance(types, list) or len(types) != layers:
        types = ["sliding_attention" if window else "full_attention"] * layers
    skipped = 0
    for kind in types:
        if kind == "full_attention":
            shape.layers.append((int(kv_heads), int(head_dim), None))
        elif kind in ("sliding_attention", "chunked_attention"):
            size = (
                text.get("attention_chunk_size") if kind.startswith("chunk") else None
            )
            shape.layers.append((int(kv_heads), int(head_dim), size or window))
        else:
            skipped += 1
    if skipped:
        shape.notes.append(
            f"{skipped} layers are not attention layers ({types[0]}…): their state is "
            "not counted"
        )
    return shape


# -- the estimate --


@dataclass
class Estimate:
    """The footprint of one model with one set of settings."""

    model: str
    preset: str
    label: str
    dtype: str
    on_gpu: bool
    context: int
    batch: int
    weights_bytes: int | None
    quant_state_bytes: int | None
    kv_cache_bytes: int | None
    overhead_bytes: int | None
    quantized_modules: int = 0
    quantized: bool = False  # the settings ask for bitsandbytes
    breakdown: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verdict: Verdict = "unknown"
    verdict_text: str = ""
    offload: Offload | None = None
    groups: list[tuple[str, int, int]] = field(default_factory=list, repr=False)
    largest_quantized: int = field(default=0, repr=False)
    quantized_linear_bytes: int = field(default=0, repr=False)
    # Peak during the load on the device judged (RAM on the CPU, VRAM on a GPU), and
    # on a GPU the host RAM the load passes through.
    load_peak_bytes: int | None = None
    load_peak_ram_bytes: int | None = None
    # Each term of the overhead and of the peak, named as `estimate --explain` shows
    # them; the formulas' peak before this machine's calibration; the calibration.
    overhead_terms: dict[str, int] = field(default_factory=dict, repr=False)
    peak_terms: dict[str, int] = field(default_factory=dict, repr=False)
    formula_peak_bytes: int | None = None
    device_key: str = "cpu"
    calibration: Calibration | None = field(default=None, repr=False)
    parameters: int | None = None
    architecture: str | None = None

    @property
    def formula_steady_bytes(self) -> int | None:
        """What the formulas say the load holds once settled, before any calibration:
        weights + quantization state (+ the CUDA context on a GPU)."""
        if self.model_bytes is None:
            return None
        return self.model_bytes + (CUDA_CONTEXT_BYTES if self.on_gpu else 0)

    @property
    def calibration_text(self) -> str:
        """'calibrated on this machine from N loads (±x%)' or 'not calibrated yet'."""
        cal = self.calibration or Calibration(self.device_key)
        return cal.line()

    @property
    def model_bytes(self) -> int | None:
        """Weights + quantization state: what `loader.true_bytes` measures."""
        if self.weights_bytes is None or self.quant_state_bytes is None:
            return None
        return self.weights_bytes + self.quant_state_bytes

    @property
    def total_bytes(self) -> int | None:
        parts = (self.model_bytes, self.kv_cache_bytes, self.overhead_bytes)
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]

    @property
    def judged_bytes(self) -> int | None:
        """The higher of the steady total and the peak during load: what must fit."""
        if self.total_bytes is None:
            return None
        return max(self.total_bytes, self.load_peak_bytes or 0)

    @property
    def need(self) -> Need:
        """What the fit verdict judges."""
        return Need(
            total_bytes=self.total_bytes,
            load_peak_bytes=self.load_peak_bytes,
            on_gpu=self.on_gpu,
            quantized=self.quantized,
            kv_cache_bytes=self.kv_cache_bytes,
            overhead_bytes=self.overhead_bytes,
            groups=tuple(self.groups),
        )

    def set_fit(self, fit: Fit) -> None:
        """Record a verdict on this row."""
        self.verdict, self.verdict_text, self.offload = (
            fit.verdict,
            fit.text,
            fit.offload,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "label": self.label,
            "dtype": self.dtype,
            "weights_bytes": self.weights_bytes,
            "quant_state_bytes": self.quant_state_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "overhead_bytes": self.overhead_bytes,
            "total_bytes": self.total_bytes,
            "load_peak_bytes": self.load_peak_bytes,
            "load_peak_ram_bytes": self.load_peak_ram_bytes,
            "verdict": self.verdict,
            "verdict_text": self.verdict_text,
            "max_memory": self.offload.max_memory if self.offload else None,
            "quantized_modules": self.quantized_modules,
            "breakdown": self.breakdown,
            "overhead_terms": self.overhead_terms,
            "load_peak_terms": self.peak_terms,
            "formula_load_peak_bytes": self.formula_peak_bytes,
            "calibration": self.calibration_text,
            "notes": self.notes,
        }


def quantized_linear_bytes(
    n: int, out_features: int, quant: QuantSettings
) -> tuple[int, int]:
    """(packed weight, quantization state) bytes of one bitsandbytes layer of n weights."""
    if quant.mode == "8bit":
        return n, 4 * out_features
    size = _DTYPE_BYTES[quant.bnb_4bit_quant_storage or "uint8"]
    packed = (n + 1) // (2 * size) * size
    blocks = math.ceil(n / 64)
    code = 16 * 4
    if not quant.bnb_4bit_use_double_quant:
        return packed, 4 * blocks + code
    nested = 4 * math.ceil(blocks / 256) + 256 * 4 + 4  # absmax, code, offset
    return packed, blocks + nested + code


def skip_list(struct: Structure, quant: QuantSettings, device_map: Any) -> list[str]:
    """Module patterns transformers keeps unquantized (its get_modules_to_not_convert)."""
    custom = quant.effective_skip_modules()
    skips = list(struct.default_skips) if custom is None else []
    skips += custom or []
    skips += struct.keep_in_fp32
    if quant.llm_int8_enable_fp32_cpu_offload and isinstance(device_map, dict):
        skips += [k for k, v in device_map.items() if v in ("cpu", "disk")]
    return list(dict.fromkeys(skips))


def _converts(module: str, patterns: list[str]) -> bool:
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(module, patterns)


def _fp32_patterns(struct: Structure, dtype: str) -> list[str]:
    patterns: list[str] = []
    if dtype == "float16":
        patterns += struct.keep_in_fp32
    if dtype in ("float16", "bfloat16"):
        patterns += struct.keep_in_fp32_strict
    return patterns


def _matches_any(name: str, patterns: list[str]) -> bool:
    return any(re.search(rf"(^|\.){p}(\.|$)", name) for p in patterns)


def estimate(
    model: ModelSpec,
    quant: QuantSettings | None = None,
    options: LoadOptions | None = None,
    context: int = DEFAULT_CONTEXT,
    batch: int = 1,
    device: DeviceInfo | None = None,
    preset: str = "current",
) -> Estimate:
    """The footprint of `model` with these settings, and its verdict on `device`.

    Parameters
    ----------
    model
        'default', a folder, a config.json, a hub id, a ModelRef or a config dict.
    quant, options
        The settings, as the loader would get them.
    context, batch
        Tokens (prompt + answer) and sequences held in the KV cache.
    device
        What to judge the fit against; probed when None.
    preset
        The row's name in tables.
    """
    quant = quant or QuantSettings()
    options = options or LoadOptions()
    check_sizes(context, batch)
    source = read_source(model)
    device = device or probe_device()
    on_gpu = _targets_gpu(options, device)
    dtype = load_dtype(
        options, source.raw.get("dtype") or source.raw.get("torch_dtype"), on_gpu
    )
    row = Estimate(
        model=source.name,
        preset=preset,
        label=quant.label() if quant.quantized else dtype,
        dtype=dtype,
        on_gpu=on_gpu,
        context=context,
        batch=batch,
        weights_bytes=None,
        quant_state_bytes=None,
        kv_cache_bytes=None,
        overhead_bytes=None,
        quantized=quant.quantized,
        device_key=device_key(on_gpu, device.gpus),
    )
    kv = kv_shape(source.raw)
    row.notes += kv.notes
    if kv.layers:
        row.kv_cache_bytes = kv.bytes(context, batch, _DTYPE_BYTES[dtype])
    if quant.quantized and source.raw.get("quantization_config"):
        row.notes.append(
            "the checkpoint is already quantized; the loader refuses to quantize it again"
        )
    try:
        struct = structure(source, dtype, options.trust_remote_code)
    except EstimateError as exc:
        row.notes.insert(0, f"weights not estimated: {exc.message}")
        row.calibration = for_device(row.device_key)
        row.set_fit(judge(row.need, device))
        return row
    row.notes += _missing_fields(source.raw)
    if source.raw.get("quantization_config") and not quant.quantized:
        row.notes.append(
            "the checkpoint is pre-quantized: weights are counted unquantized, an upper bound"
        )
    _count(row, struct, quant, options, on_gpu)
    row.parameters = sum(t.numel for t in struct.params)
    row.architecture = struct.architecture
    row.overhead_terms = overhead_terms(struct, row, quant, options, on_gpu)
    row.peak_terms, row.load_peak_ram_bytes = peak_terms(row, quant, on_gpu)
    row.formula_peak_bytes = sum(row.peak_terms.values())
    _calibrate(row, for_device(row.device_key))
    row.set_fit(judge(row.need, device))
    return row


CALIBRATION_TERM = "calibration on this machine"


def _calibrate(row: Estimate, cal: Calibration) -> None:
    """Add this machine's learnt overhead terms (once it has enough records)."""
    row.calibration = cal
    if cal.calibrated:
        # Never below what the formulas hold for certain: the weights themselves.
        floor = row.model_bytes or 0
        peak = max(floor, (row.formula_peak_bytes or 0) + cal.peak_offset_bytes)
        row.peak_terms[CALIBRATION_TERM] = peak - (row.formula_peak_bytes or 0)
        formula = sum(row.overhead_terms.values())
        row.overhead_terms[CALIBRATION_TERM] = max(-formula, cal.steady_offset_bytes)
    row.overhead_bytes = sum(row.overhead_terms.values())
    row.load_peak_bytes = sum(row.peak_terms.values())


# Where each term comes from, as `estimate --explain` says it.
TERM_SOURCES = {
    "weights": "formula: every parameter of the meta-device build at the load dtype, "
    "quantized layers packed",
    "quantization state": "formula: absmax + code per block of 64 weights "
    "(int8: one scale per row)",
    "KV cache": "formula: 2 × kv heads × head dim × context × batch × dtype bytes, "
    "per attention layer",
    "activations of one prefill": "formula: batch × context × "
    "(3·hidden + 2·intermediate) × dtype bytes",
    "logits of the last token": "formula: batch × vocab × 4 bytes",
    "a dequantized weight": "formula: the largest 4-bit weight at the compute dtype",
    "attention scores of one layer": "formula: batch × heads × context² × 4 bytes "
    "(eager attention)",
    "CUDA context": "formula: a 500 MiB allowance",
    "weights + quantization state": "formula: the whole model as loaded",
    "quantized layers": "formula: every quantized layer, packed, with its state",
    "quantizing the largest weight": "formula: bitsandbytes' temporaries, 2.25× (int8) "
    "to 5.9× (fp4) the weight's fp32 bytes",
    "quantized layer objects": "formula: 32 KiB per quantized layer",
    CALIBRATION_TERM: "calibration: the median of (actual - formula) over this "
    "machine's loads",
}


def explain(row: Estimate) -> list[tuple[str, str, int | None, str]]:
    """(section, term, bytes, where it comes from) for every term of `row`."""
    out: list[tuple[str, str, int | None, str]] = []
    steady = (
        ("weights", row.weights_bytes),
        ("quantization state", row.quant_state_bytes),
        ("KV cache", row.kv_cache_bytes),
    )
    for name, value in steady:
        out.append(("steady", name, value, TERM_SOURCES[name]))
    for name, value in row.overhead_terms.items():
        out.append(("overhead", name, value, TERM_SOURCES.get(name, "formula")))
    for name, value in row.peak_terms.items():
        out.append(("peak", name, value, TERM_SOURCES.get(name, "formula")))
    return out


def check_sizes(context: int, batch: int) -> None:
    """Raise a SettingsError unless context and batch are positive token counts."""
    for name, value in (("context", context), ("batch", batch)):
        if not isinstance(value, int) or value < 1 or value > 10_000_000:
            raise SettingsError(
                f"{name} {value!r} is not valid", "use a whole number of 1 or more"
            )


def _count(
    row: Estimate,
    struct: Structure,
    quant: QuantSettings,
    options: LoadOptions,
    on_gpu: bool,
) -> None:
    device_map: Any = options.device_map_value() if on_gpu else {"": "cpu"}
    patterns = skip_list(struct, quant, device_map) if quant.quantized else []
    converted = (
        {m for m in struct.linears if _converts(m, patterns)}
        if quant.quantized
        else set()
    )
    if quant.quantized and quant.llm_int8_enable_fp32_cpu_offload and not on_gpu:
        row.notes.append(
            "fp32 CPU offload with everything on the CPU keeps every Linear unquantized"
        )
    fp32 = _fp32_patterns(struct, row.dtype)
    weights = state = quantized_total = 0
    breakdown: dict[str, int] = {}
    groups: dict[str, list[int]] = {}
    for t in [*struct.params, *struct.buffers]:
        itemsize = _DTYPE_BYTES.get(t.dtype, 4)
        if fp32 and t.kind != "buffers" and _matches_any(t.name, fp32):
            itemsize = 4
        plain = t.numel * itemsize
        if t.module in converted and t.name.endswith(".weight"):
            _, out_f = struct.linears[t.module]
            packed, extra = quantized_linear_bytes(t.numel, out_f, quant)
            if quant.mode == "8bit" and quant.llm_int8_has_fp16_weight:
                # The weight stays as loaded; int8 copies appear at the first forward.
                packed, extra = plain, 0
            kind = "quantized linear"
            quantized_total += packed + extra
        else:
            packed, extra = plain, 0
            kind = t.kind
        weights += packed
        state += extra
        breakdown[kind] = breakdown.get(kind, 0) + packed + extra
        sizes = groups.setdefault(t.group, [0, 0])
        sizes[0] += packed + extra
        sizes[1] += plain
    row.weights_bytes = weights
    row.quant_state_bytes = state
    row.quantized_modules = len(converted)
    row.quantized_linear_bytes = quantized_total
    row.largest_quantized = max(
        (struct.linears[m][0] * struct.linears[m][1] for m in converted), default=0
    )
    row.breakdown = dict(sorted(breakdown.items(), key=lambda kv: -kv[1]))
    row.groups = [(name, q, p) for name, (q, p) in groups.items()]


def load_peak(
    row: Estimate, quant: QuantSettings, on_gpu: bool
) -> tuple[int | None, int | None]:
    """(peak on the device judged, host RAM on a GPU) while the model loads, by the
    formulas alone (see peak_terms)."""
    terms, ram = peak_terms(row, quant, on_gpu)
    return (sum(terms.values()) if terms else None), ram


def peak_terms(
    row: Estimate, quant: QuantSettings, on_gpu: bool
) -> tuple[dict[str, int], int | None]:
    """The terms of the peak on the device judged, and host RAM on a GPU.

    Weights are read one tensor at a time (transformers loads sequentially when it
    quantizes on the fly) and each one's temporaries are returned at once (the
    loader's `memory.heap_for_loading`), so the load holds what is loaded so far plus
    one tensor's temporaries: the peak is either the end of the load or the moment
    the largest weight is quantized with (nearly) everything else already packed.
    """
    model = row.model_bytes
    if model is None:
        return {}, None
    largest = row.largest_quantized
    terms: dict[str, int] = {}
    transient = 0
    if row.quantized and largest:
        if on_gpu:
            # Materialized on the GPU at the load dtype; int8 also makes an fp16 copy.
            itemsize = _DTYPE_BYTES[row.dtype] + (2 if quant.mode == "8bit" else 0)
            transient = largest * itemsize
        else:
            kind = "int8" if quant.mode == "8bit" else quant.bnb_4bit_quant_type
            factor = QUANTIZE_TRANSIENT.get(kind, max(QUANTIZE_TRANSIENT.values()))
            transient = int(factor * largest * 4)
    if transient and row.quantized_linear_bytes + transient > model:
        terms["quantized layers"] = row.quantized_linear_bytes
        terms["quantizing the largest weight"] = transient
    else:
        terms["weights + quantization state"] = model
    allowance = MODULE_ALLOWANCE_BYTES * row.quantized_modules
    if allowance:
        terms["quantized layer objects"] = allowance
    if not on_gpu:
        return terms, None
    terms["CUDA context"] = CUDA_CONTEXT_BYTES
    # On the host a GPU load passes one tensor at a time (int8 copies each back).
    return terms, transient + allowance


def overhead_terms(
    struct: Structure,
    row: Estimate,
    quant: QuantSettings,
    options: LoadOptions,
    on_gpu: bool,
) -> dict[str, int]:
    """The terms of the overhead by the formulas (OVERHEAD_NOTE), zero ones left out."""
    act = _DTYPE_BYTES[row.dtype]
    tokens = row.batch * row.context
    terms = {
        "activations of one prefill": tokens
        * (3 * struct.hidden + 2 * struct.intermediate)
        * act,
        "logits of the last token": row.batch * struct.vocab * 4,
    }
    if quant.mode == "4bit":
        compute = _DTYPE_BYTES[quant.bnb_4bit_compute_dtype or "float32"]
        terms["a dequantized weight"] = row.largest_quantized * compute
    if options.attn_implementation == "eager":
        # Without a fused kernel one layer's scores exist at once, in fp32.
        terms["attention scores of one layer"] = (
            row.batch * struct.heads * row.context * row.context * 4
        )
    if on_gpu:
        terms["CUDA context"] = CUDA_CONTEXT_BYTES
    return {name: n for name, n in terms.items() if n}


def _missing_fields(raw: dict[str, Any]) -> list[str]:
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    aliases = {
        "hidden_size": ("n_embd", "d_model", "dim"),
        "num_hidden_layers": ("n_layer", "num_layers", "n_layers"),
        "num_attention_heads": ("n_head", "num_heads", "n_heads"),
        "vocab_size": (),
    }
    missing = [
        name
        for name in _CORE_FIELDS
        if name not in text and not any(a in text for a in aliases[name])
    ]
    if not missing:
        return []
    return [
        f"config.json does not give {', '.join(missing)}: the architecture's defaults "
        "were used, so the numbers may not match the real model"
    ]


def _targets_gpu(options: LoadOptions, device: DeviceInfo) -> bool:
    if options.device_map == "cpu":
        return False
    return device.cuda


# -- every preset at once --


@dataclass
class Table:
    """Every preset plus the current settings for one model, and the recommendation."""

    model: str
    rows: list[Estimate]
    device: DeviceInfo
    recommended: str | None
    context: int
    batch: int

    @property
    def current(self) -> Estimate:
        return next(r for r in self.rows if r.preset == "current")

    @property
    def notes(self) -> list[str]:
        return list(dict.fromkeys(n for r in self.rows for n in r.notes))

    @property
    def calibration(self) -> Calibration | None:
        """The calibration every row of this device shares (the current row's)."""
        return self.current.calibration

    @property
    def calibration_text(self) -> str:
        return self.current.calibration_text

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "context": self.context,
            "batch": self.batch,
            "rows": [r.to_dict() for r in self.rows],
            "recommended": self.recommended,
            "device": self.device.to_dict(),
            "overhead": OVERHEAD_NOTE,
            "load_peak": PEAK_NOTE,
            "calibration": (
                self.calibration.to_dict()
                if self.calibration is not None
                else {"text": self.calibration_text, "calibrated": False}
            ),
            "notes": self.notes,
        }


def table(
    model: ModelSpec,
    quant: QuantSettings | None = None,
    options: LoadOptions | None = None,
    context: int = DEFAULT_CONTEXT,
    batch: int = 1,
    device: DeviceInfo | None = None,
) -> Table:
    """Estimate the current settings and every preset with the same placement."""
    options = options or LoadOptions()
    source = read_source(model)
    device = device or probe_device()
    rows = [estimate(source, quant, options, context, batch, device, "current")]
    for name in QUALITY_ORDER:
        p = PRESETS[name]
        rows.append(
            estimate(
                source, p.quant, p.load_options(options), context, batch, device, name
            )
        )
    return Table(source.name, rows, device, recommend(rows), context, batch)


def recommend(rows: list[Estimate]) -> str | None:
    """The highest-quality preset that fits; failing that, the best one with offload."""
    presets = [r for r in rows if r.preset in QUALITY_ORDER]
    for verdict in ("fits", "fits with CPU offload"):
        for row in presets:
            if row.verdict == verdict:
                return row.preset
    return None


# -- estimated vs actual --


@dataclass
class Actual:
    """What a loaded model really takes, beside what was estimated."""

    true_bytes: int
    estimated_bytes: int | None
    quantized_modules: int
    torch_allocated_bytes: int | None = None
    nvml_process_bytes: int | None = None
    warning: str = ""

    @property
    def difference(self) -> int | None:
        if self.estimated_bytes is None:
            return None
        return self.true_bytes - self.estimated_bytes


def actual(loaded: Any, estimated: Estimate | None = None) -> Actual:
    """Measure `loaded` (a LoadedModel): true bytes, torch allocated and NVML usage."""
    report = loaded.report
    result = Actual(
        true_bytes=report.true_bytes,
        estimated_bytes=estimated.model_bytes if estimated else None,
        quantized_modules=report.quantized_count,
    )
    if loaded.quant.quantized and report.quantized_count == 0:
        result.warning = (
            f"You asked for {loaded.quant.label()}, but no Linear layer was quantized: "
            "the model runs in full precision and takes its full size"
        )
    if "cuda" in report.device:
        import torch

        result.torch_allocated_bytes = int(torch.cuda.memory_allocated())
        result.nvml_process_bytes = process_gpu_bytes()
    return result


def process_gpu_bytes() -> int | None:
    """GPU memory NVML reports for this process (None without NVML or on WDDM)."""
    from core.monitor import Sampler

    sampler = Sampler()
    try:
        used = [g.process_memory for g in sampler.sample().gpus]
    finally:
        sampler.close()
    known = [u for u in used if u is not None]
    return sum(known) if known else None
