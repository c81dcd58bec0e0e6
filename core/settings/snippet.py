"""The Python a user can copy: the same load as code, in the bitsandbytes guides' style."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from core.settings.quant import BNB_FIELDS

if TYPE_CHECKING:
    from core.settings.load import LoadOptions
    from core.settings.quant import QuantSettings


def py_literal(value: Any) -> str:
    """Python source for a value, with double-quoted strings as the guides write them."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


def config_lines(quant: QuantSettings) -> list[str]:
    """The `BitsAndBytesConfig(...)` arguments that differ from defaults, as code."""
    if not quant.quantized:
        return []
    lines = [f"load_in_{quant.mode}=True,"]
    for spec in BNB_FIELDS:
        if not spec.applies_to(quant.mode):
            continue
        if spec.name == "llm_int8_skip_modules":
            value = quant.effective_skip_modules()
        else:
            value = getattr(quant, spec.name)
        if value == spec.default:
            continue
        if spec.name == "bnb_4bit_compute_dtype":
            lines.append(f"{spec.name}=torch.{value},")
        else:
            lines.append(f"{spec.name}={py_literal(value)},")
    return lines


def to_python(
    quant: QuantSettings,
    model: str = "your-model-name",
    options: LoadOptions | None = None,
) -> str:
    """A runnable from_pretrained call for these settings."""
    from core.settings.load import LoadOptions

    options = options or LoadOptions()
    out = [
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
    ]
    if quant.quantized:
        out[-1] += ", BitsAndBytesConfig"
        out += ["", "bnb_config = BitsAndBytesConfig("]
        out += [f"    {line}" for line in config_lines(quant)]
        out.append(")")
    out += [
        "",
        "model = AutoModelForCausalLM.from_pretrained(",
        f"    {py_literal(model)},",
    ]
    if quant.quantized:
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
