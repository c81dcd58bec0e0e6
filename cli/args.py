"""The argument groups several commands share: quantization, loading and generation.

Every settings flag is made from its field's Spec (core.settings), and every number
a flag takes goes through core.settings.check_number, as the window's and the
server's numbers do.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from core.errors import SettingsError
from core.settings import (
    PRESETS,
    GenerationSettings,
    LoadOptions,
    QuantSettings,
    Spec,
    check_number,
    fields_of,
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
    fields = ", ".join(f.name for f in fields_of(QuantSettings))
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=set_help or f"set a BitsAndBytesConfig field (repeatable): {fields}",
    )
    add_option_args(group, fields_of(LoadOptions))


def add_option_args(group: Any, specs: tuple[Spec, ...]) -> None:
    """One flag per LoadOptions / GenerationSettings field, from its Spec.

    Flags default to None (a bool to False) so that "not given" can fall back to a
    preset's value; `option_values` collects what was given. Numbers are checked
    by the field itself (its range, NaN, ±inf) when the settings are made.
    """
    for spec in specs:
        help_text = spec.description.rstrip(".")
        if spec.kind == "bool":
            group.add_argument(
                spec.flag, dest=spec.name, action="store_true", help=help_text
            )
            continue
        if spec.choices:
            help_text += f" ({', '.join(spec.choices)}{', …' if spec.editable else ''})"
        if spec.default not in (None, "") and spec.default != {}:
            help_text += f"; default {spec.default}"
        group.add_argument(spec.flag, dest=spec.name, default=None, help=help_text)


def number(
    flag: str,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
) -> Callable[[str], Any]:
    """An argparse type for a numeric flag that is no setting (--seconds, --port):
    core.settings.check_number's rule. Its SettingsError passes through argparse
    (which catches only its own, TypeError and ValueError) to `cli.main.run`, which
    says it as every other bad value: `error:` and `hint:`, exit 2, no usage dump."""

    def parse(text: str) -> Any:
        return check_number(
            flag, text, integer=integer, low=low, high=high, above=above
        )

    parse.__name__ = "whole number" if integer else "number"
    return parse


def option_values(args: argparse.Namespace, specs: tuple[Spec, ...]) -> dict[str, Any]:
    """The fields of `specs` given on the command line (bools only when set)."""
    values = {spec.name: getattr(args, spec.name, None) for spec in specs}
    return {k: v for k, v in values.items() if v not in (None, False)}


def load_options_from_args(
    args: argparse.Namespace, dtype: str = "auto"
) -> LoadOptions:
    """LoadOptions from the loading flags; `dtype` when --dtype is not given."""
    return LoadOptions(
        **{"dtype": dtype, **option_values(args, fields_of(LoadOptions))}
    )


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
    add_option_args(
        parser.add_argument_group("generation"), fields_of(GenerationSettings)
    )


def generation_from_args(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(**option_values(args, fields_of(GenerationSettings)))


def check_before_load(
    ref: Any, quant: QuantSettings, options: LoadOptions
) -> list[str]:
    """core.checks' pipeline for a load of `ref` here: the first problem is raised
    (exit 2, with the window's words); the warnings are returned to print."""
    from core import checks
    from core.model import facts

    return [p.text() for p in checks.refuse(facts.check_load(ref, quant, options))]
