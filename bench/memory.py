"""What a load really costs in host memory: anonymous, file-backed and RSS growth.

Each load runs in a fresh process (growth needs a clean one): the stack and the
tokenizer are imported first, then /proc/self/status is read before the load, after
it, after one forward of 8 tokens, and (bare transformers only) after `malloc_trim(0)`.

Three ways to load the default model on the CPU:
- `bare`: `AutoModelForCausalLM.from_pretrained(..., device_map="cpu")` as a user would;
- `before`: Nibble's loader with the checkpoint left mapped and no heap trim after the
  load (what the loader did before it copied the unquantized rest out of the file);
- `nibble`: Nibble's loader as it is.

Goal: RSS growth after a quantized load ≤ 1.25 × the model's true bytes + 32 MiB.

    .venv/bin/python bench/memory.py [--quant fp32,nf4,nf4-dq,fp4,int8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import ROOT  # also puts the project on sys.path

MiB = 2**20
WAYS = ("bare", "before", "nibble")


def one(way: str, quant_name: str) -> dict[str, object]:
    """Load once in this process and report the growth at each step, in bytes."""
    import ctypes

    from core.stack import import_stack

    import_stack()
    import torch
    from transformers import AutoModelForCausalLM

    from core import memory
    from core.model import catalog, default_model, loader
    from core.settings import preset

    path = default_model.ensure()
    p = preset(quant_name)
    loader._tokenizer(str(path), False)  # the same imports and caches on every path
    if way == "before":
        memory.detach_from_checkpoint = lambda model: 0  # type: ignore[assignment]
        loader.free_memory = lambda: None  # type: ignore[assignment]
    base = memory.process_memory()
    assert base is not None, "needs /proc (Linux)"

    def growth() -> dict[str, int]:
        now = memory.process_memory()
        assert now is not None
        return {
            "anon": (now.anon or 0) - (base.anon or 0),
            "file": (now.file or 0) - (base.file or 0),
            "rss": now.rss - base.rss,
        }

    if way == "bare":
        kwargs: dict[str, object] = {"device_map": "cpu", "dtype": torch.float32}
        if p.quant.quantized:
            kwargs["quantization_config"] = p.quant.to_bnb_config()
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        true_bytes = loader.true_bytes(model)
    else:
        loaded = loader.load(catalog.default_ref(), p.quant, p.load_options())
        model = loaded.model
        true_bytes = loaded.report.true_bytes
    steps = {"load": growth()}
    with torch.no_grad():
        model(torch.arange(8).unsqueeze(0))
    steps["forward"] = growth()
    if way == "bare":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        steps["trim"] = growth()
    return {
        "way": way,
        "quant": quant_name,
        "true_bytes": true_bytes,
        "steps": steps,
        "goal_bytes": int(1.25 * true_bytes) + 32 * MiB,
    }


def run(way: str, quant_name: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", way, quant_name],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| load | way | true size | RssAnon growth | RssFile growth | RSS growth "
        "| RSS after a forward | goal ≤ 1.25 × true + 32 MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        steps: dict[str, dict[str, int]] = r["steps"]  # type: ignore[assignment]
        load, fwd = steps["load"], steps["forward"]
        anon = f"{load['anon'] / MiB:+.0f} MiB"
        if "trim" in steps:
            anon += f" ({steps['trim']['anon'] / MiB:+.0f} after malloc_trim)"
        true = int(r["true_bytes"])  # type: ignore[call-overload]
        goal = int(r["goal_bytes"])  # type: ignore[call-overload]
        meets = "yes" if load["rss"] <= goal else f"no (> {goal / MiB:.0f} MiB)"
        lines.append(
            f"| {r['quant']} | {r['way']} | {true / MiB:.1f} MiB | {anon} "
            f"| {load['file'] / MiB:+.0f} MiB | {load['rss'] / MiB:+.0f} MiB "
            f"| {fwd['rss'] / MiB:+.0f} MiB | {meets} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="fp32,nf4,nf4-dq,fp4,int8")
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--one", nargs=2, metavar=("WAY", "QUANT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    results = [
        run(way, q) for q in args.quant.split(",") for way in args.ways.split(",")
    ]
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
