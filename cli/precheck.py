"""Settings the loader would silently ignore, refused before a load starts.

transformers accepts an llm_int8_skip_modules entry that matches no module, and
accelerate ignores max_memory when the whole model goes to the CPU: both would leave
the user believing a setting took effect. The CLI calls `check_settings` before every
load; the window can call the same.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import NibbleError, SettingsError
from core.settings import LoadOptions, QuantSettings
from core.units import format_bytes

NO_EFFECT = "max memory has no effect: the model loads whole on the CPU"


def check_settings(ref: Any, quant: QuantSettings, options: LoadOptions) -> list[str]:
    """Refuse settings the loader would silently ignore; return warnings to print.

    Unknown llm_int8_skip_modules names, and a max_memory cap that cannot apply
    because the model loads whole on the CPU.
    """
    from core import modules

    if quant.quantized and quant.llm_int8_skip_modules:
        try:
            modules.check_skip_modules(
                ref, quant.llm_int8_skip_modules, "float32", options.trust_remote_code
            )
        except SettingsError:
            raise
        except NibbleError:
            pass  # the config cannot be read: the load says why
    return check_max_memory(ref, quant, options)


def memory_amount(text: str) -> int:
    """'6GiB' → bytes, as accelerate reads it (KB is 10^3, KiB 2^10)."""
    number, unit = re.match(r"([\d.]+)\s*([A-Za-z]+)", text).groups()  # type: ignore[union-attr]
    unit = unit.upper()
    powers = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    powers |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    return int(float(number) * powers[unit])


def check_max_memory(ref: Any, quant: QuantSettings, options: LoadOptions) -> list[str]:
    """max_memory on a machine without a GPU: refuse a cap the model exceeds."""
    if not options.max_memory:
        return []
    from core.model import loader

    device_map = loader.resolve_device_map(options)
    if device_map != {"": "cpu"} and options.device_map != "cpu":
        return []
    cap = options.max_memory.get("cpu")
    if cap is None:
        return [NO_EFFECT]
    from core.model import estimate

    try:
        needed = estimate.estimate(ref, quant, options).model_bytes
    except NibbleError:
        needed = None
    if needed is not None and memory_amount(cap) < needed:
        raise SettingsError(
            f"max memory caps the CPU at {cap}, but the model needs "
            f"{format_bytes(needed)} there (there is no GPU to put the rest on)",
            "raise the cpu cap or leave max memory out",
        )
    return [NO_EFFECT]
