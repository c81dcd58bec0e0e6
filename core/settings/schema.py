"""What every setting is, on the field itself: title, description, kind, range, mode.

A settings dataclass declares each field with `setting(...)`, which stores a `Spec`'s
parts in the dataclass field's metadata. `fields_of(cls)` reads them back. The
window's widgets, the CLI flags, the JSON keys and the server's ranges are all made
from these specs, so a title or a range has one home and cannot drift.

`check_number` is the one numeric check of every face (window, CLI flags, session
JSON, server request fields): NaN, ±inf, a bool, a fraction where a whole number is
wanted and a value outside the range are refused with the same words everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import SettingsError

SCHEMA_VERSION = 1

Kind = Literal["bool", "int", "float", "choice", "list", "text", "optional_int"]
Applies = Literal["8bit", "4bit", "both"]
APPLIES_TITLES = {"8bit": "8-bit", "4bit": "4-bit", "both": "8-bit and 4-bit"}
# What a whole number may be when a field names no range: what torch and SQLite take.
INT64 = (-(2**63), 2**63 - 1)
_META = "nibble"


@dataclass(frozen=True)
class Spec:
    """One setting as the window, the CLI, the JSON file and the server see it."""

    name: str
    title: str
    description: str
    kind: Kind
    default: Any
    applies: Applies | None = None  # the quantization modes it has an effect in
    bnb: bool = False  # a BitsAndBytesConfig argument of the same name
    choices: tuple[Any, ...] = ()
    editable: bool = False  # a choice that also takes typed values (cuda:N)
    low: float | None = None
    high: float | None = None
    above: bool = False  # `low` itself is refused (top_p 0 allows no token)
    step: float = 1.0
    placeholder: str = ""
    hint: str = ""  # added to the range hint: what the usual value is
    set_only: bool = False  # set on the command line by --set NAME=VALUE

    @property
    def flag(self) -> str:
        """How the command line sets it: --device-map, or --set mode=…"""
        if self.set_only:
            return f"--set {self.name}=…"
        return "--" + self.name.replace("_", "-")

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float", "optional_int")

    def applies_to(self, mode: str) -> bool:
        """Whether this field has an effect in quantization `mode`."""
        if self.applies is None:
            return True
        if mode == "none":
            return False
        return self.applies in ("both", mode)

    def reason_disabled(self, mode: str) -> str:
        """Why the field is greyed out in `mode`, or '' when it applies."""
        return reason_disabled(self.applies, mode)

    def check(self, value: Any) -> Any:
        """`value` as this numeric field's type, or a SettingsError naming the field."""
        if self.kind == "optional_int" and value in (None, ""):
            return None
        return check_number(
            self.name,
            value,
            integer=self.kind != "float",
            low=self.low,
            high=self.high,
            above=self.above,
            field=self.name,
            example=self.hint,
        )


def reason_disabled(applies: Applies | None, mode: str) -> str:
    """Why settings that apply to `applies` have no effect in `mode` ('' if they do)."""
    if applies is None or (mode != "none" and applies in ("both", mode)):
        return ""
    if mode == "none":
        return "Has no effect without quantization: pick 8-bit or 4-bit."
    return f"Applies to {APPLIES_TITLES[applies]} only."


def setting(
    default: Any = dataclasses.MISSING,
    title: str = "",
    description: str = "",
    *,
    kind: Kind,
    default_factory: Any = dataclasses.MISSING,
    **more: Any,
) -> Any:
    """A dataclass field whose metadata holds its Spec (see `fields_of`)."""
    meta = {_META: {"title": title, "description": description, "kind": kind, **more}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def fields_of(cls: type) -> tuple[Spec, ...]:
    """The Spec of every field of the settings dataclass `cls`, in declaration order."""
    specs = []
    for f in dataclasses.fields(cls):
        if _META not in f.metadata:
            continue
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        specs.append(Spec(name=f.name, default=default, **f.metadata[_META]))
    return tuple(specs)


def spec_of(cls: type, name: str) -> Spec:
    """The Spec of field `name` of `cls` (KeyError when there is none)."""
    for spec in fields_of(cls):
        if spec.name == name:
            return spec
    raise KeyError(name)


def check_numbers(settings: Any) -> None:
    """Check and convert every numeric field of a settings dataclass, in place."""
    for spec in fields_of(type(settings)):
        if spec.numeric:
            setattr(settings, spec.name, spec.check(getattr(settings, spec.name)))


def _shown(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def range_hint(
    low: float | None, high: float | None, integer: bool, above: bool = False
) -> str:
    """'use a value from 0 to 2', 'use a whole number above 0'..."""
    what = "a whole number" if integer else "a value"
    if low is not None and high is not None:
        start = f"above {_shown(low)} and up to" if above else f"from {_shown(low)} to"
        return f"use {what} {start} {_shown(high)}"
    if low is not None:
        return f"use {what} {'above' if above else 'of at least'} {_shown(low)}"
    if high is not None:
        return f"use {what} of at most {_shown(high)}"
    return f"use {what}"


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    field: str = "",
    example: str = "",
) -> Any:
    """`value` (a number or its text) as an int or float within the range, or a
    SettingsError.

    NaN and ±inf are never numbers here; a bool is not one either (JSON's true is
    no temperature). A whole number wanted takes 3 and 3.0, never 2.5, and without a
    range it must fit in 64 bits (a seed of 2**70 would overflow torch). `name` is
    how the face calls the value ('temperature', '--seconds'); `field` the setting
    it belongs to, for the face to mark.
    """
    if integer and low is None and high is None:
        low, high = INT64
    hint = range_hint(low, high, integer, above)
    if example:
        hint = f"{hint}; {example}"
    what = "a whole number" if integer else "a number"
    number = value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text) if integer else float(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = value
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise SettingsError(f"{name} must be {what}, got {value!r}", hint, field)
    if isinstance(number, float) and not math.isfinite(number):
        raise SettingsError(
            f"{name} must be a finite number, got {_shown(number)}", hint, field
        )
    if integer:
        if isinstance(number, float):
            if not number.is_integer():
                raise SettingsError(
                    f"{name} must be {what}, got {_shown(number)}", hint, field
                )
            number = int(number)
    elif isinstance(number, int):
        try:
            number = float(number)
        except OverflowError:
            raise SettingsError(
                f"{name} {number} is out of range", hint, field
            ) from None
    too_low = low is not None and (number <= low if above else number < low)
    if too_low or (high is not None and number > high):
        raise SettingsError(f"{name} {_shown(number)} is out of range", hint, field)
    return number


def as_bool(name: str, value: Any) -> bool:
    """A bool from True/False, 1/0 or the usual words ('yes', 'off'...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise SettingsError(
        f"{name} must be true or false, got {value!r}", "use true or false", name
    )
