"""The argument groups several commands share: quantization, loading and generation."""

from __future__ import annotations

import argparse
from typing import Any

from core.errors import SettingsError
from core.settings import (
    EDITABLE_FIELDS,
    GENERATION_FIELDS,
    LOAD_FIELDS,
    PRESETS,
    GenerationSettings,
    LoadOptions,
    OptionSpec,
    QuantSettings,
    preset,
)


def add_quant_args(
    parser: argparse.ArgumentParser,
    quant_help: str | None = None,
    set_help: str | None = None,
) -> None:
    """--quant PRESET, --set FIELD=VALUE and the LoadOptions flags.

    `quant_help` and `set_help` replace the two flags' help where a command reads
    them differently (compare takes a list of rows).
    """
    group = parser.add_argument_group("quantization and loading")
    group.add_argument(
        "--quant",
        default=None,
        metavar="PRESET",
        help=quant_help
        or f"start from a preset: {', '.join(PRESETS)} (default: none, full precision)",
    )
    fields = ", ".join(["mode", *(f.name for f in EDITABLE_FIELDS), "quantize_lm_head"])
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=set_help or f"set a BitsAndBytesConfig field (repeatable): {fields}",
    )
    add_option_args(group, LOAD_FIELDS)


def add_option_args(group: Any, specs: tuple[OptionSpec, ...]) -> None:
    """One flag per LoadOptions / GenerationSettings field, from its metadata.

    Flags default to None (a bool to False) so that "not given" can fall back to a
    preset's value; `option_values` collects what was given.
    """
    types: dict[str, Any] = {"int": int, "float": float, "optional_int": int}
    for spec in specs:
        help_text = spec.description.rstrip(".")
        if spec.kind == "bool":
            group.add_argument(
                spec.flag, dest=spec.name, action="store_true", help=help_text
            )
            continue
        if spec.choices:
            help_text += f" ({', '.join(spec.choices)}{', …' if spec.editable else ''})"
        if spec.default not in (None, ""):
            help_text += f"; default {spec.default}"
        group.add_argument(
            spec.flag,
            dest=spec.name,
            default=None,
            type=types.get(spec.kind, str),
            help=help_text,
        )


def option_values(
    args: argparse.Namespace, specs: tuple[OptionSpec, ...]
) -> dict[str, Any]:
    """The fields of `specs` given on the command line (bools only when set)."""
    values = {spec.name: getattr(args, spec.name, None) for spec in specs}
    return {k: v for k, v in values.items() if v not in (None, False)}


def load_options_from_args(
    args: argparse.Namespace, dtype: str = "auto"
) -> LoadOptions:
    """LoadOptions from the loading flags; `dtype` when --dtype is not given."""
    return LoadOptions(**{"dtype": dtype, **option_values(args, LOAD_FIELDS)})


def settings_from_args(args: argparse.Namespace) -> tuple[QuantSettings, LoadOptions]:
    """QuantSettings + LoadOptions from --quant, --set and the loading flags."""
    quant, dtype = QuantSettings(), "auto"
    if args.quant:
        chosen = preset(args.quant)
        quant, dtype = chosen.quant, chosen.dtype
    quant = quant.with_values(set_values(args.set))
    return quant, load_options_from_args(args, dtype)


def set_values(items: list[str]) -> dict[str, str]:
    """FIELD -> VALUE from the --set FIELD=VALUE items."""
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(
                f"--set {item!r} has no '='", "write it as --set FIELD=VALUE"
            )
        values[name.strip()] = value
    return values


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    add_option_args(parser.add_argument_group("generation"), GENERATION_FIELDS)


def generation_from_args(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(**option_values(args, GENERATION_FIELDS))
