"""Load + generate on the default model through Nibble's core and through bare transformers.

For fp32, int8, nf4 and nf4-dq: load seconds, peak RSS during load, time to first token and
decode tokens/s for 64 greedy tokens. Each measurement runs in a fresh process (so peak RSS
is that load's own), alternating ours / bare. Prints a table and the ratio ours/bare of
decode tok/s (our layer should cost nothing: ≥ 0.97).

    .venv/bin/python bench/generate.py [--repeats N] [--presets fp32,int8,nf4,nf4-dq]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from _common import ROOT, PeakRSS

PROMPT = "Write a detailed essay about the history of Paris."
TOKENS = 64


def measure_ours(name: str) -> dict[str, float]:
    # The same imports as the bare run makes before its clock starts.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from core.generation import decode
    from core.model import catalog, loader
    from core.settings import GenerationSettings, preset

    chosen = preset(name)
    ref = catalog.resolve("default")
    with PeakRSS() as peak:
        started = time.perf_counter()
        loaded = loader.load(ref, chosen.quant, chosen.load_options())
        load_s = time.perf_counter() - started
    _, stats = decode.generate_text(
        loaded, PROMPT, GenerationSettings(greedy=True, max_new_tokens=TOKENS)
    )
    return {
        "load_s": load_s,
        "peak_rss": peak.peak,
        "ttft_s": stats.ttft_s,
        "tok_s": stats.tokens_per_s,
        "tokens": stats.new_tokens,
    }


def measure_bare(name: str) -> dict[str, float]:
    """The plain transformers way, with nothing of Nibble in the path."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        TextIteratorStreamer,
    )

    from core.model import default_model

    path = str(default_model.ensure())
    configs = {
        "fp32": None,
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        "nf4-dq": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float16,
        ),
    }
    with PeakRSS() as peak:
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=configs[name],
            device_map="cpu",
            dtype=torch.float32,
        )
        load_s = time.perf_counter() - started
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    first: list[float] = []

    class Streamer(TextIteratorStreamer):
        def put(self, value):  # type: ignore[no-untyped-def]
            if not self.next_tokens_are_prompt:
                first or first.append(time.perf_counter())
            super().put(value)

    streamer = Streamer(tokenizer, skip_prompt=True)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=TOKENS, do_sample=False, streamer=streamer
        )
    ended = time.perf_counter()
    tokens = out.shape[1] - inputs["input_ids"].shape[1]
    return {
        "load_s": load_s,
        "peak_rss": peak.peak,
        "ttft_s": first[0] - started,
        "tok_s": (tokens - 1) / (ended - first[0]),
        "tokens": tokens,
    }


def child(impl: str, name: str) -> None:
    from core.stack import quiet_libraries

    quiet_libraries()
    result = (measure_ours if impl == "ours" else measure_bare)(name)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", default="fp32,int8,nf4,nf4-dq")
    parser.add_argument(
        "--child", nargs=2, metavar=("IMPL", "PRESET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from core.model import default_model

    default_model.ensure()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for name in args.presets.split(","):
        for _ in range(args.repeats):
            for impl in ("ours", "bare"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", impl, name],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    check=True,
                )
                results.setdefault((name, impl), []).append(
                    json.loads(out.stdout.splitlines()[-1])
                )
    print(
        f"default model, {TOKENS} greedy tokens, median of {args.repeats}, each in a fresh process"
    )
    header = f"{'preset':8} {'impl':5} {'load s':>7} {'peak RSS MiB':>13} {'TTFT s':>7} {'tok/s':>7}"
    print(header)
    print("-" * len(header))
    for name in args.presets.split(","):
        medians = {}
        for impl in ("ours", "bare"):
            rows = results[(name, impl)]
            m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            medians[impl] = m
            print(
                f"{name:8} {impl:5} {m['load_s']:7.2f} {m['peak_rss'] / 2**20:13.0f} "
                f"{m['ttft_s']:7.3f} {m['tok_s']:7.1f}"
            )
        ratio = medians["ours"]["tok_s"] / medians["bare"]["tok_s"]
        print(f"{name:8} ratio ours/bare decode tok/s: {ratio:.3f}")


if __name__ == "__main__":
    main()
