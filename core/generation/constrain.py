"""Constrained decoding: an answer that must be JSON (any object, or one matching a
JSON schema) or must follow a grammar, enforced token by token with llguidance.

A `Constraint` is plain data (it travels in a GenerationRequest and into the
provenance). `processor()` turns it into a logits processor for one answer: each
answer has its own grammar state, so answers decoded side by side never share one.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from core.errors import GenerationError

logger = logging.getLogger(__name__)

JSON_OBJECT = "json_object"
JSON_SCHEMA = "json_schema"
GRAMMAR = "grammar"

# Compact JSON: with free whitespace a sampled small model can pad an answer with
# newlines until it runs out of tokens; one space after ',' and ':' reads well.
_JSON_OPTIONS = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


class ConstraintError(GenerationError):
    """A schema or grammar that constrained decoding cannot enforce."""


@dataclass(frozen=True)
class Constraint:
    """What an answer must be.

    Parameters
    ----------
    kind
        "json_object" (any JSON object), "json_schema" (JSON matching `schema`), or
        "grammar" (an llguidance Lark grammar in `grammar`).
    schema
        The JSON schema, for "json_schema".
    grammar
        The Lark grammar text, for "grammar" (it may embed `%json { schema }`).
    name
        What the schema is called (OpenAI's json_schema.name); shown, never enforced.
    """

    kind: str = JSON_OBJECT
    schema: dict[str, Any] | None = None
    grammar: str | None = None
    name: str = ""

    @classmethod
    def json_object(cls) -> Constraint:
        return cls(JSON_OBJECT)

    @classmethod
    def json_schema(cls, schema: dict[str, Any], name: str = "") -> Constraint:
        return cls(JSON_SCHEMA, schema=schema, name=name)

    @classmethod
    def lark(cls, grammar: str, name: str = "") -> Constraint:
        return cls(GRAMMAR, grammar=grammar, name=name)

    def label(self) -> str:
        """'JSON object', 'JSON schema "person"', 'grammar "get_weather"'."""
        if self.kind == JSON_OBJECT:
            return "JSON object"
        what = "JSON schema" if self.kind == JSON_SCHEMA else "grammar"
        return f'{what} "{self.name}"' if self.name else what

    def to_dict(self) -> dict[str, Any]:
        """For the provenance: the kind, the name and the schema itself."""
        data: dict[str, Any] = {"kind": self.kind}
        if self.name:
            data["name"] = self.name
        if self.schema is not None:
            data["schema"] = self.schema
        if self.grammar is not None:
            data["grammar"] = self.grammar
        return data

    def llguidance_grammar(self) -> str:
        """The grammar text llguidance compiles."""
        from llguidance import LLMatcher

        if self.kind == JSON_OBJECT:
            return LLMatcher.grammar_from_json_schema(
                {"type": "object"}, defaults=_JSON_OPTIONS
            )
        if self.kind == JSON_SCHEMA:
            if not isinstance(self.schema, dict):
                raise ConstraintError(
                    "the JSON schema must be an object", 'e.g. {"type": "object"}'
                )
            try:
                return LLMatcher.grammar_from_json_schema(
                    self.schema, defaults=_JSON_OPTIONS
                )
            except ValueError as exc:
                raise ConstraintError(
                    f"the JSON schema cannot be read: {exc}", "check the schema"
                ) from None
        if self.kind == GRAMMAR and self.grammar:
            return LLMatcher.grammar_from_lark(self.grammar)
        raise ConstraintError(
            f"unknown constraint {self.kind!r}", "use json_object or json_schema"
        )

    def check(self) -> None:
        """Refuse what cannot be enforced, naming it, before anything is decoded.

        Raises
        ------
        ConstraintError
            An unsupported schema feature (e.g. 'Unimplemented keys: ["if"]'), an
            invalid schema, or a grammar that does not compile.
        """
        from llguidance import LLMatcher

        failed, messages = LLMatcher.validate_grammar_with_warnings(
            self.llguidance_grammar()
        )
        if failed:
            problem = " ".join((messages or ["it does not compile"])[0].split())
            raise ConstraintError(
                f"the {self.label()} cannot be enforced: {problem}",
                "remove or rewrite that part of the schema",
            )


def constraint_from_dict(data: dict[str, Any] | None) -> Constraint | None:
    """The inverse of `Constraint.to_dict` (None stays None)."""
    if not data:
        return None
    return Constraint(
        kind=data.get("kind", JSON_OBJECT),
        schema=data.get("schema"),
        grammar=data.get("grammar"),
        name=data.get("name", ""),
    )


def load_schema(text: str) -> dict[str, Any]:
    """A JSON schema from its text, or ConstraintError that says what is wrong."""
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConstraintError(
            f"the JSON schema is not valid JSON: {exc}",
            "check its quotes, commas and brackets",
        ) from None
    if not isinstance(schema, dict):
        raise ConstraintError(
            "the JSON schema must be a JSON object", 'e.g. {"type": "object"}'
        )
    return schema


def reply_constraint(schema_text: str | None = None, name: str = "") -> Constraint:
    """What "reply as JSON" holds an answer to, checked before anything is decoded:
    any JSON object without `schema_text`, else JSON matching that schema.

    The command line (`--json-object`, `--json-schema FILE`) and the window's chat
    ("Reply as JSON") both come here, so the same schema gives the same words.

    Raises
    ------
    ConstraintError
        The schema is not JSON, not an object, or holds what cannot be enforced.
    """
    if schema_text is None:
        constraint = Constraint.json_object()
    else:
        constraint = Constraint.json_schema(load_schema(schema_text), name)
    constraint.check()
    return constraint


# -- the tokenizer as llguidance sees it (about a second to build: kept per tokenizer)

_tokenizers: weakref.WeakKeyDictionary[Any, dict[int, Any]] = (
    weakref.WeakKeyDictionary()
)
_tokenizers_lock = threading.Lock()


def _ll_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    import llguidance.hf

    with _tokenizers_lock:
        per_size = _tokenizers.setdefault(tokenizer, {})
        if vocab_size not in per_size:
            try:
                per_size[vocab_size] = llguidance.hf.from_tokenizer(
                    tokenizer, n_vocab=vocab_size
                )
            except ValueError as exc:
                raise ConstraintError(
                    f"this model's tokenizer cannot be constrained: {exc}",
                    "JSON answers need a fast (Rust) tokenizer",
                ) from None
        return per_size[vocab_size]


def processor(
    constraint: Constraint, tokenizer: Any, vocab_size: int, prompt_tokens: int
) -> GrammarProcessor:
    """A logits processor for one answer that allows only what the grammar accepts.

    Parameters
    ----------
    constraint
        What the answer must be.
    tokenizer
        The model's (fast) tokenizer.
    vocab_size
        The width of the model's logits (may exceed the tokenizer's vocabulary).
    prompt_tokens
        Where the answer starts in `input_ids`: tokens before it are not checked.

    Raises
    ------
    ConstraintError
        The grammar does not compile, or the tokenizer cannot be used.
    """
    from llguidance import LLMatcher

    matcher = LLMatcher(
        _ll_tokenizer(tokenizer, vocab_size),
        constraint.llguidance_grammar(),
        log_level=0,
    )
    if matcher.is_error():
        raise ConstraintError(
            f"the {constraint.label()} cannot be enforced: {matcher.get_error()}",
            "remove or rewrite that part of the schema",
        )
    return GrammarProcessor(matcher, prompt_tokens)


class GrammarProcessor:
    """Feeds each sampled token to the grammar, then masks the next logits.

    A transformers logits processor (any callable(input_ids, scores) is one) for
    one sequence: row 0 of what it is given. A batched decoder gives each row its
    own processor and calls it with that row's slices.
    """

    def __init__(self, matcher: Any, prompt_tokens: int) -> None:
        self.matcher = matcher
        self.consumed = prompt_tokens

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np
        import torch

        for token in input_ids[0, self.consumed :].tolist():
            self.matcher.consume_token(token)
        self.consumed = int(input_ids.shape[1])
        if self.matcher.is_error():
            raise GenerationError(
                f"constrained decoding failed: {self.matcher.get_error()}",
                "see the log",
            )
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        width = scores.shape[-1]
        # Logits past the tokenizer's vocabulary are never allowed.
        allowed = np.flatnonzero(np.unpackbits(bits, bitorder="little")[:width])
        if scores.device.type == "cpu" and scores.dtype in (
            torch.float32,
            torch.float64,
            torch.float16,
        ):
            # In numpy, on this thread: torch's masked_fill_ over a 49k-wide row
            # starts a parallel region, which took 90 ms a token on a busy 2-core
            # machine against 0.1 ms here (see docs/facts.md).
            row = scores[0].numpy()
            kept = row[allowed]
            row.fill(-np.inf)
            row[allowed] = kept
            return scores
        keep = torch.zeros(width, dtype=torch.bool)
        keep[torch.from_numpy(allowed)] = True
        scores[0].masked_fill_(~keep.to(scores.device), float("-inf"))
        return scores

    @property
    def complete(self) -> bool:
        """Whether what was decoded so far is a whole match."""
        return bool(self.matcher.is_accepting())
