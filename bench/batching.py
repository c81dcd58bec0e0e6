"""transformers' ways to decode several answers at once, against each other.

On the default model (nf4 unless --preset), in one process, for 1, 4 and 8 prompts x
--tokens greedy tokens:

- `ours`: Nibble's batch (core.generation.batch): a DynamicCache whose rows are
  left-padded, each answer prefilled alone and merged in (what the queue runs);
- `static`: one left-padded `model.generate` over all prompts (no joining mid-way);
- `generate_batch`: transformers' continuous batching (`ContinuousBatchingManager`
  behind `model.generate_batch`, paged cache).

Prints aggregate tok/s and how many greedy answers equal the same prompt decoded alone
(`decode.generate_text`). It measures and prints; nothing passes or fails.

    .venv/bin/python bench/batching.py [--preset nf4] [--tokens 32] [--sizes 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from _common import ROOT  # noqa: F401  (puts the project on sys.path)
from serve import QUESTIONS


def ours(loaded: Any, prompts: list[str], tokens: int) -> tuple[list[str], float, int]:
    from core.generation.batch import Batch, Row, SequenceSpec
    from core.settings import GenerationSettings

    settings = GenerationSettings(greedy=True, max_new_tokens=tokens)
    texts: list[list[str]] = [[] for _ in prompts]
    rows = [
        Row(SequenceSpec(p, settings), texts[i].append, lambda: False)
        for i, p in enumerate(prompts)
    ]
    batch = Batch(loaded)
    started = time.perf_counter()
    for row in rows:
        batch.prepare(row)
        batch.add(row)
    while batch.rows:
        batch.drop_finished()
        batch.step()
    batch.drop_finished()
    wall = time.perf_counter() - started
    return ["".join(t) for t in texts], wall, sum(len(r.answer) for r in rows)


def static(
    loaded: Any, prompts: list[str], tokens: int
) -> tuple[list[str], float, int]:
    import torch

    tok, model = loaded.tokenizer, loaded.model
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    tok.padding_side = "left"
    inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    wall = time.perf_counter() - started
    new = out[:, inputs["input_ids"].shape[1] :]
    answers, made = [], 0
    for row in new:
        ids = row.tolist()
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id) + 1]
        made += len(ids)
        answers.append(tok.decode(ids, skip_special_tokens=True))
    return answers, wall, made


def generate_batch(
    loaded: Any, prompts: list[str], tokens: int
) -> tuple[list[str], float, int]:
    from transformers import GenerationConfig

    tok, model = loaded.tokenizer, loaded.model
    ids = [
        tok(
            tok.apply_chat_template(
                [{"role": "user", "content": p}],
                tokenize=False,
                add_generation_prompt=True,
            ),
            add_special_tokens=False,
        )["input_ids"]
        for p in prompts
    ]
    config = GenerationConfig(
        max_new_tokens=tokens,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    started = time.perf_counter()
    outputs = model.generate_batch(ids, config)
    wall = time.perf_counter() - started
    ordered = [
        outputs[k] for k in sorted(outputs, key=lambda k: int(str(k).split("_")[-1]))
    ]
    answers = [
        tok.decode(o.generated_tokens, skip_special_tokens=True) for o in ordered
    ]
    return answers, wall, sum(len(o.generated_tokens) for o in ordered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--preset", default="nf4")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from core.generation.decode import generate_text
    from core.model import catalog, loader
    from core.settings import GenerationSettings, preset
    from core.stack import import_stack

    import_stack()
    chosen = preset(args.preset)
    loaded = loader.load(
        catalog.resolve(args.model), chosen.quant, chosen.load_options()
    )
    sizes = [int(s) for s in args.sizes.split(",")]
    settings = GenerationSettings(greedy=True, max_new_tokens=args.tokens)
    rows: list[dict[str, Any]] = []

    def run() -> None:  # a short-lived thread, as the queue runs (OpenMP, see README)
        alone = {
            q: generate_text(loaded, q, settings)[0] for q in QUESTIONS[: max(sizes)]
        }
        for size in sizes:
            prompts = QUESTIONS[:size]
            for name, fn in (
                ("ours", ours),
                ("static", static),
                ("generate_batch", generate_batch),
            ):
                row: dict[str, Any] = {"way": name, "prompts": size}
                try:
                    answers, wall, made = fn(loaded, prompts, args.tokens)
                except Exception as exc:  # the evidence when one does not work here
                    row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                else:
                    same = sum(
                        1
                        for p, a in zip(prompts, answers, strict=True)
                        if alone[p] == a
                    )
                    row.update(
                        tokens=made,
                        wall_s=round(wall, 2),
                        aggregate_tok_s=round(made / wall, 2),
                        same_as_alone=f"{same}/{size}",
                    )
                rows.append(row)
                print(json.dumps(row), flush=True)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    loader.unload(loaded)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("\nway | prompts | agg tok/s | greedy answers equal alone")
    for row in rows:
        if "error" in row:
            print(f"{row['way']} | {row['prompts']} | fails: {row['error']}")
        else:
            print(
                f"{row['way']} | {row['prompts']} | {row['aggregate_tok_s']} | "
                f"{row['same_as_alone']}"
            )


if __name__ == "__main__":
    main()
