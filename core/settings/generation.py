"""GenerationSettings: the sampling of one answer, each range on its field.

The ranges are the widest any face stored before they were unified (answers already
kept in the history must stay reproducible), and they are the server's too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.settings.schema import as_bool, check_numbers, fields_of, setting

# How many tokens prompt lookup proposes per step (transformers' own default is 10).
PROMPT_LOOKUP_TOKENS = 10


@dataclass
class GenerationSettings:
    """Sampling parameters for one answer."""

    max_new_tokens: int = setting(
        256,
        "Max tokens",
        "The longest answer, in tokens.",
        kind="int",
        low=1,
        high=1_000_000,
    )
    temperature: float = setting(
        0.7,
        "Temperature",
        "Higher is more varied; 0 always picks the likeliest token.",
        kind="float",
        low=0.0,
        high=10.0,
        step=0.05,
    )
    top_p: float = setting(
        0.9,
        "Top-p",
        "Sample from the smallest set of tokens with this much probability.",
        kind="float",
        low=0.0,
        above=True,
        high=1.0,
        step=0.05,
        hint="0.9 is usual; 0 would allow no token",
    )
    top_k: int = setting(
        50,
        "Top-k",
        "Sample from the k likeliest tokens; 0 means all.",
        kind="int",
        low=0,
        high=1_000_000,
    )
    repetition_penalty: float = setting(
        1.0,
        "Repetition",
        "Penalty for repeating tokens; 1 is off.",
        kind="float",
        low=0.01,
        high=10.0,
        step=0.05,
    )
    seed: int | None = setting(
        None,
        "Random seed",
        "A number makes sampling repeatable: the same settings give the same answer "
        "again. Empty picks a new one each time.",
        kind="optional_int",
        placeholder="random",
    )
    greedy: bool = setting(
        False,
        "Greedy",
        "Always pick the likeliest token (ignores temperature, top-p and top-k).",
        kind="bool",
    )
    prompt_lookup: bool = setting(
        False,
        "Reuse text from the prompt",
        "Guess the next tokens by finding the answer's last words in the prompt and "
        "check the guess in one step: faster when the answer copies from the prompt "
        "(code edits, summaries). One request at a time; not with a grammar.",
        kind="bool",
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        self.greedy = as_bool("greedy", self.greedy)
        self.prompt_lookup = as_bool("prompt_lookup", self.prompt_lookup)

    @property
    def do_sample(self) -> bool:
        return not self.greedy and self.temperature > 0

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for model.generate."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(
                temperature=self.temperature, top_p=self.top_p, top_k=self.top_k
            )
        else:
            # Silence the "sampling flags set but do_sample=False" warnings.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.prompt_lookup:
            kwargs["prompt_lookup_num_tokens"] = PROMPT_LOOKUP_TOKENS
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict keyed by the field names."""
        return {f.name: getattr(self, f.name) for f in fields_of(GenerationSettings)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSettings:
        names = {f.name for f in fields_of(GenerationSettings)}
        return cls(**{k: v for k, v in data.items() if k in names})
