"""The one settings schema: QuantSettings, LoadOptions, GenerationSettings, presets.

Each field's title, description, kind, range and the modes it applies to live on the
field itself (`schema.setting`); `fields_of(cls)` reads them for the window's widgets,
the CLI flags, the JSON keys and the server's ranges. `check_number` is the one
numeric check of every face.
"""

from __future__ import annotations

from core.settings.generation import GenerationSettings
from core.settings.load import (
    ATTENTION,
    DEVICE_MAPS,
    LoadOptions,
    load_dtype,
    memory_amount,
    parse_max_memory,
)
from core.settings.presets import (
    PRESETS,
    Preset,
    preset,
    preset_name_for,
    settings_label,
)
from core.settings.quant import (
    BNB_FIELDS,
    FLOAT_DTYPES,
    MODE_TITLES,
    MODES,
    STORAGE_DTYPES,
    QuantSettings,
    canonical_dtype,
)
from core.settings.schema import (
    SCHEMA_VERSION,
    Spec,
    as_bool,
    check_number,
    fields_of,
    reason_disabled,
    spec_of,
)
from core.settings.snippet import py_literal

__all__ = [
    "ATTENTION",
    "BNB_FIELDS",
    "DEVICE_MAPS",
    "FLOAT_DTYPES",
    "MODES",
    "MODE_TITLES",
    "PRESETS",
    "SCHEMA_VERSION",
    "STORAGE_DTYPES",
    "GenerationSettings",
    "LoadOptions",
    "Preset",
    "QuantSettings",
    "Spec",
    "as_bool",
    "canonical_dtype",
    "check_number",
    "fields_of",
    "load_dtype",
    "memory_amount",
    "parse_max_memory",
    "preset",
    "preset_name_for",
    "py_literal",
    "reason_disabled",
    "settings_label",
    "spec_of",
]
