"""What the checks know of a model, read from the estimate's meta-device build.

The one `module_names` (the Keep-unquantized check's), and `model_facts` for
core.checks; no weights are read.
"""

from __future__ import annotations

import logging
from typing import Any

from core.checks import Machine, ModelFacts, Problem, check, probe_machine
from core.settings import LoadOptions, QuantSettings

logger = logging.getLogger(__name__)


def module_names(
    model: Any, dtype: str = "float32", trust_remote_code: bool = False
) -> list[str]:
    """Every module name of `model` (a ModelRef, 'default', a folder, a config dict)
    from the estimate's meta-device build, parents included; [] when it cannot be
    built (the estimate and the load say why)."""
    from core.model import estimate

    try:
        struct = estimate.structure(
            estimate.read_source(model), dtype, trust_remote_code
        )
    except Exception as exc:
        logger.debug("no module names for %s: %s", model, exc)
        return []
    names: dict[str, None] = {}
    for module in (
        *struct.linears,
        *(t.module for t in (*struct.params, *struct.buffers)),
    ):
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            names[".".join(parts[:i])] = None
    return list(names)


def model_facts(
    ref: Any, trust_remote_code: bool = False, names: bool = True
) -> ModelFacts:
    """What the checks need to know of `ref`, from the estimate (no weights read).

    The size is estimated only when a check asks for it; the module names (a
    meta-device build) only with `names`.
    """
    from core.model import estimate

    def needed(quant: QuantSettings, options: LoadOptions) -> int | None:
        return estimate.estimate(ref, quant, options).model_bytes

    found = module_names(ref, "float32", trust_remote_code) if names else []
    return ModelFacts(tuple(found), needed)


def check_load(
    ref: Any,
    quant: QuantSettings,
    options: LoadOptions,
    machine: Machine | None = None,
) -> list[Problem]:
    """core.checks.check for a load of `ref` here: probes this machine (imports
    torch) and reads the model's structure."""
    machine = machine or probe_machine()
    # Only a Keep-unquantized list needs the module names: skip the build otherwise.
    wanted = quant.quantized and bool(quant.llm_int8_skip_modules)
    model = model_facts(ref, options.trust_remote_code, names=wanted)
    return check(quant, options, machine, model)
