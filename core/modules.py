"""Module names a user types (llm_int8_skip_modules) checked against the real model.

transformers silently ignores a name that matches no module, so a typo would quantize
what the user meant to keep. The model's module names come from the meta-device build
the estimate makes anyway (no weights read); the window and the CLI ask the same
function.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.errors import SettingsError
from core.model.estimate import ModelSpec, Structure


@dataclass(frozen=True)
class UnknownModule:
    """A name that matches no module, with the nearest real names."""

    name: str
    suggestions: tuple[str, ...]

    def describe(self) -> str:
        if not self.suggestions:
            return repr(self.name)
        return f"{self.name!r} (did you mean {' or '.join(self.suggestions)}?)"


def module_names(struct: Structure) -> list[str]:
    """Every module of the model that holds a parameter or buffer, and their parents."""
    names: set[str] = set(struct.linears)
    for tensor in (*struct.params, *struct.buffers):
        module = tensor.module
        while module:
            names.add(module)
            module = module.rpartition(".")[0]
    return sorted(names)


def _matches(pattern: str, names: Iterable[str]) -> bool:
    """Whether the skip entry keeps any of `names` unquantized, by transformers' rule."""
    from core.checks import matches

    return any(matches(pattern, name) for name in names)


def unknown_modules(
    struct: Structure, wanted: Sequence[str], limit: int = 3
) -> list[UnknownModule]:
    """The entries of `wanted` that match no module, each with its nearest names."""
    names = module_names(struct)
    # Suggest what users write: the short names (q_proj, lm_head) and the full ones.
    short = {name.rpartition(".")[2] for name in names}
    short = {s for s in short if not s.isdigit()}
    candidates = sorted(short | set(names))
    unknown = []
    for entry in wanted:
        if _matches(entry, names):
            continue
        near = difflib.get_close_matches(entry, candidates, n=limit, cutoff=0.6)
        unknown.append(UnknownModule(entry, tuple(near)))
    return unknown


def check_skip_modules(
    model: ModelSpec,
    wanted: Sequence[str] | None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> None:
    """Raise SettingsError when an llm_int8_skip_modules entry names no module."""
    if not wanted:
        return
    from core.model import estimate

    source = estimate.read_source(model)
    struct = estimate.structure(source, dtype, trust_remote_code)
    unknown = unknown_modules(struct, [w for w in wanted if w != "lm_head"])
    if not unknown:
        return
    listed = "; ".join(u.describe() for u in unknown)
    raise SettingsError(
        f"llm_int8_skip_modules names no module of {source.name}: {listed}",
        "use the names of the model's modules, e.g. lm_head or mlp.down_proj",
    )
