"""Constrained decoding: how often a sampled answer is schema-valid JSON, and what the
grammar costs in decode speed.

Loads the default model once (nf4 unless --preset), then for each seed asks for a
person as JSON at temperature 0.8 with the schema enforced, and checks the answer
against the schema. The same seeds run without the constraint, alternating, so
both see the same machine load; the overhead is 1 - constrained/unconstrained
decode tok/s (medians), plus the grammar's own time per token measured inside
the logits processor.

    .venv/bin/python bench/structured.py [--seeds 20] [--preset nf4] [--tokens 160]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {
            "type": "array",
            "items": {"type": "string", "maxLength": 30},
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
PROMPT = [{"role": "user", "content": "Invent a person and describe them as JSON."}]


def valid(text: str) -> bool:
    """Whether `text` is JSON that matches SCHEMA (checked by hand: no extra deps)."""
    try:
        data = json.loads(text)
    except ValueError:
        return False
    if not isinstance(data, dict) or set(data) != set(SCHEMA["required"]):
        return False
    hobbies = data["hobbies"]
    return (
        isinstance(data["name"], str)
        and len(data["name"]) <= 40
        and isinstance(data["age"], int)
        and 0 <= data["age"] <= 130
        and isinstance(data["city"], str)
        and len(data["city"]) <= 40
        and isinstance(hobbies, list)
        and len(hobbies) <= 3
        and all(isinstance(h, str) and len(h) <= 30 for h in hobbies)
    )


def run(loaded: Any, seed: int, tokens: int, constraint: Any) -> tuple[str, Any, float]:
    from core.generation import constrain
    from core.generation.decode import GenerationStats, stream
    from core.settings import GenerationSettings

    spent = [0.0]
    original = constrain.GrammarProcessor.__call__

    def timed(self: Any, input_ids: Any, scores: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, input_ids, scores)
        finally:
            spent[0] += time.perf_counter() - started

    constrain.GrammarProcessor.__call__ = timed  # type: ignore[method-assign]
    try:
        settings = GenerationSettings(
            max_new_tokens=tokens, temperature=0.8, top_p=1.0, top_k=0, seed=seed
        )
        chunks, stats = [], None
        for item in stream(loaded, PROMPT, settings, constraint=constraint):
            if isinstance(item, GenerationStats):
                stats = item
            else:
                chunks.append(item)
    finally:
        constrain.GrammarProcessor.__call__ = original  # type: ignore[method-assign]
    return "".join(chunks), stats, spent[0]


def grammar_cost(tokenizer: Any, vocab: int, repeats: int = 5) -> float:
    """Milliseconds per token the grammar adds, without the model: a schema-valid
    answer is fed token by token through the processor over a (1, vocab) row."""
    import torch

    from core.generation.constrain import Constraint, processor

    answer = (
        '{"name": "Ada Lovelace", "age": 36, "city": "London", '
        '"hobbies": ["mathematics", "poetry", "engines"]}'
    )
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    constraint = Constraint.json_schema(SCHEMA, "person")
    processor(constraint, tokenizer, vocab, 0)  # the tokenizer is converted once
    best = float("inf")
    for _ in range(repeats):
        grammar = processor(constraint, tokenizer, vocab, 0)
        scores = torch.zeros(1, vocab)
        started = time.perf_counter()
        for i in range(len(ids) + 1):
            grammar(torch.tensor([ids[:i]], dtype=torch.long), scores)
        best = min(best, (time.perf_counter() - started) / (len(ids) + 1))
        assert grammar.complete, "the answer is valid, so the grammar is complete"
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--preset", default="nf4")
    parser.add_argument("--tokens", type=int, default=160)
    args = parser.parse_args()

    from core.generation.constrain import Constraint
    from core.model import catalog, loader
    from core.settings import preset
    from core.stack import import_stack

    import_stack()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(catalog.default_ref().path)
    print(
        f"grammar alone, per token (best of 5): "
        f"{grammar_cost(tokenizer, len(tokenizer)):.2f} ms",
        flush=True,
    )
    chosen = preset(args.preset)
    loaded = loader.load(catalog.default_ref(), chosen.quant, chosen.load_options())
    constraint = Constraint.json_schema(SCHEMA, "person")
    run(loaded, 0, 8, constraint)  # warm: llguidance's tokenizer is built once
    ok, free_ok = 0, 0
    with_tps, without_tps, per_token_ms = [], [], []
    print(
        f"default model, {args.preset}, temperature 0.8, {args.tokens} tokens max",
        flush=True,
    )
    print("seed  valid  tokens  tok/s  | free: valid  tok/s")
    for seed in range(args.seeds):
        text, stats, spent = run(loaded, seed, args.tokens, constraint)
        free_text, free_stats, _ = run(loaded, seed, args.tokens, None)
        good, free_good = valid(text), valid(free_text)
        ok += good
        free_ok += free_good
        if stats.tokens_per_s:
            with_tps.append(stats.tokens_per_s)
            per_token_ms.append(1000 * spent / max(1, stats.new_tokens))
        if free_stats.tokens_per_s:
            without_tps.append(free_stats.tokens_per_s)
        print(
            f"{seed:4d}  {good!s:5}  {stats.new_tokens:6d}  "
            f"{stats.tokens_per_s or 0:5.1f}  |       {free_good!s:5}  "
            f"{free_stats.tokens_per_s or 0:5.1f}",
            flush=True,
        )
        if not good:
            print(f"      {text[:200]!r}")
    loader.unload(loaded)
    constrained = statistics.median(with_tps)
    free = statistics.median(without_tps)
    print()
    print(f"schema-valid with the constraint:    {ok}/{args.seeds}")
    print(f"schema-valid without it:             {free_ok}/{args.seeds}")
    print(f"decode tok/s, median: constrained {constrained:.1f}, free {free:.1f}")
    print(f"overhead: {100 * (1 - constrained / free):.1f}% of decode tok/s")
    print(
        f"grammar time per token (mask + advance), median: "
        f"{statistics.median(per_token_ms):.2f} ms"
    )


if __name__ == "__main__":
    main()
