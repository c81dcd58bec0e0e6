"""Time the full Compare lab run on the default model: per row and in total.

Usage: .venv/bin/python bench/compare.py [--rows baseline,int8,nf4,nf4-dq,fp4]
[--tokens 32] [--eval-tokens N] [--save FILE.json]. Prints numbers; never fails on timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli import render
from core.lab import compare
from core.model import catalog
from core.units import format_bytes, format_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default=",".join(compare.DEFAULT_ROWS))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=None)
    parser.add_argument("--save", default=None)
    parser.add_argument(
        "--check-kl",
        type=int,
        default=0,
        metavar="N",
        help="instead: compare the top-4096 KL with the full-vocabulary KL on N tokens",
    )
    args = parser.parse_args()
    if args.check_kl:
        check_kl(args.check_kl)
        return
    config = compare.CompareConfig(new_tokens=args.tokens, eval_tokens=args.eval_tokens)
    last = {"row": -1}

    def progress(done: int, total: int, message: str) -> None:
        if done != last["row"]:
            last["row"] = done
            print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = compare.run(catalog.resolve("default"), args.rows, config, progress)
    wall = time.perf_counter() - started
    env = result.environment
    print(f"model: {result.model}")
    print(
        f"machine: {env['cpu']} ({env['cpu_count']} threads), torch {env['torch']}, "
        f"transformers {env['transformers']}, bitsandbytes {env['bitsandbytes']}"
    )
    print(
        f"evaluation: {result.rows[0].eval_tokens} tokens, window "
        f"{config.window}, stride {config.stride}; {config.new_tokens} greedy tokens"
    )
    print()
    print(render.compare_table(result))
    print()
    print(f"{'row':10} {'row time':>10} {'load':>8} {'peak RSS':>10}  answer")
    for row in result.rows:
        if row.ok:
            print(
                f"{row.name:10} {format_seconds(row.row_s):>10} "
                f"{format_seconds(row.load_s):>8} {format_bytes(row.peak_rss_bytes):>10}"
                f"  {compare.one_line(row.answer)}"
            )
        else:
            print(f"{row.name:10} failed: {row.error}")
    print()
    print(render.compare_summary(result))
    print(f"\ntotal: {wall:.1f} s for {len(result.rows)} rows")
    if args.save:
        result.save_json(args.save)


def check_kl(tokens: int) -> None:
    """How far the stored top-4096 + rest KL is from the full-vocabulary KL (fp32 → nf4)."""
    import torch

    from core.lab import measure
    from core.model import loader
    from core.settings import preset

    ref = catalog.resolve("default")
    logps, kls = {}, {}
    reference = None
    for name in ("fp32", "nf4"):
        chosen = preset(name)
        loaded = loader.load(ref, chosen.quant, chosen.load_options())
        ids = compare.tokenize_eval(
            loaded.tokenizer, compare.CompareConfig(eval_tokens=tokens)
        )
        with torch.inference_mode():
            logits = loaded.model(ids).logits[0, :-1].float()
        logps[name] = torch.log_softmax(logits, dim=-1)
        done = measure.evaluation(
            loaded.model, ids, reference, window=tokens, stride=tokens
        )
        reference, kls[name] = done.reference, done.mean_kl
        loader.unload(loaded)
    p, q = logps["fp32"], logps["nf4"]
    full = float((p.exp() * (p - q)).sum(-1).mean())
    print(
        f"nf4 vs fp32 on {tokens} tokens: full-vocabulary KL {full:.5f}, "
        f"top-4096 + rest KL {kls['nf4']:.5f} ({kls['nf4'] / full:.2%} of it)"
    )


if __name__ == "__main__":
    main()
