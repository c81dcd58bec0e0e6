"""Load + generate on the default model through Nibble's core and through bare transformers.

For fp32, int8, nf4 and nf4-dq: load seconds, peak RSS during load, time to first token and
decode tokens/s for 64 greedy tokens. Each measurement runs in a fresh process (so peak RSS
is that load's own), alternating the decode modes and bare transformers' default
`generate`. Prints a table and the ratio of each mode's decode tok/s to bare's, measured
in the same run:

- plain: Nibble as it decodes by default (should cost nothing: ≥ 0.97);
- compiled: loaded with Fast decode (static cache + compiled decode step);
- lookup: prompt lookup, on a prompt asking for type hints on a 40-line function
  (its bare row answers the same prompt).

    .venv/bin/python bench/generate.py [--repeats N] [--presets fp32,nf4]
        [--modes plain,compiled,lookup]
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
FUNCTION = "\n".join(
    ["def summarize(orders, customers, since, currency, rate, limit):"]
    + ["    totals = {}", "    counts = {}", "    skipped = []"]
    + [
        line
        for i in range(6)
        for line in (
            f"    for order in orders[{i}::6]:",
            "        if order['date'] < since:",
            "            skipped.append(order['id'])",
            "            continue",
            f"        key = customers.get(order['customer'], 'unknown_{i}')",
            "        totals[key] = totals.get(key, 0) + order['amount'] * rate",
        )
    ]
    + ["    ranked = sorted(totals.items(), key=lambda kv: -kv[1])"]
    + ["    return ranked[:limit], counts, skipped, currency"]
)
CODE_PROMPT = (
    "Add type hints to this Python function. Reply with the whole function and "
    f"nothing else.\n\n```python\n{FUNCTION}\n```"
)
PROMPTS = {"essay": PROMPT, "code": CODE_PROMPT}
MODES = ("plain", "compiled", "lookup")


def measure_ours(
    name: str, mode: str = "plain", prompt: str = PROMPT
) -> dict[str, float]:
    # The same imports as the bare run makes before its clock starts.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from core.generation import decode
    from core.model import catalog, loader
    from core.settings import GenerationSettings, preset

    chosen = preset(name)
    ref = catalog.resolve("default")
    options = chosen.load_options()
    options.fast_decode = mode == "compiled"
    with PeakRSS() as peak:
        started = time.perf_counter()
        loaded = loader.load(ref, chosen.quant, options)
        load_s = time.perf_counter() - started
    if options.fast_decode and not loaded.fast_decode.active:
        print(loaded.fast_decode.note, file=sys.stderr)
    settings = GenerationSettings(
        greedy=True, max_new_tokens=TOKENS, prompt_lookup=mode == "lookup"
    )
    _, stats = decode.generate_text(loaded, prompt, settings)
    return {
        "load_s": load_s,
        "peak_rss": peak.peak,
        "ttft_s": stats.ttft_s,
        "tok_s": stats.tokens_per_s,
        "tokens": stats.new_tokens,
    }


def measure_bare(name: str, prompt: str = PROMPT) -> dict[str, float]:
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
        [{"role": "user", "content": prompt}],
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


def child(impl: str, name: str, prompt: str) -> None:
    from core.stack import quiet_libraries

    quiet_libraries()
    if impl == "bare":
        result = measure_bare(name, PROMPTS[prompt])
    else:
        result = measure_ours(name, impl, PROMPTS[prompt])
    print(json.dumps(result))


def runs(modes: list[str]) -> list[tuple[str, str]]:
    """(impl, prompt) in the order one repeat runs them, bare beside each prompt."""
    order: list[tuple[str, str]] = []
    if any(m != "lookup" for m in modes):
        order.append(("bare", "essay"))
        order += [(m, "essay") for m in modes if m != "lookup"]
    if "lookup" in modes:
        order += [("bare", "code"), ("lookup", "code")]
    return order


def main() -> None:
    global TOKENS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", default="fp32,int8,nf4,nf4-dq")
    parser.add_argument("--modes", default="plain", help="plain,compiled,lookup")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument(
        "--child", nargs=4, metavar=("IMPL", "PRESET", "PROMPT", "TOKENS"),
        help=argparse.SUPPRESS,
    )  # fmt: skip
    args = parser.parse_args()
    if args.child:
        TOKENS = int(args.child[3])
        child(*args.child[:3])
        return
    TOKENS = args.tokens
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode {sorted(unknown)[0]!r}: use {', '.join(MODES)}")
    from core.model import default_model

    default_model.ensure()
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for name in args.presets.split(","):
        for _ in range(args.repeats):
            for impl, prompt in runs(modes):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", impl, name, prompt,
                     str(TOKENS)],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    check=False,
                )  # fmt: skip
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{impl} {name} {prompt} failed")
                results.setdefault((name, impl, prompt), []).append(
                    json.loads(out.stdout.splitlines()[-1])
                )
    print(
        f"default model, {TOKENS} greedy tokens, median of {args.repeats}, each in a "
        "fresh process, alternated; ratio = decode tok/s / bare's on the same prompt"
    )
    header = (
        f"{'preset':8} {'impl':8} {'prompt':6} {'load s':>7} {'peak RSS MiB':>13} "
        f"{'TTFT s':>7} {'tok/s':>7} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for name in args.presets.split(","):
        medians = {}
        for impl, prompt in runs(modes):
            rows = results[(name, impl, prompt)]
            medians[(impl, prompt)] = {
                k: statistics.median(r[k] for r in rows) for k in rows[0]
            }
        for (impl, prompt), m in medians.items():
            ratio = m["tok_s"] / medians[("bare", prompt)]["tok_s"]
            print(
                f"{name:8} {impl:8} {prompt:6} {m['load_s']:7.2f} "
                f"{m['peak_rss'] / 2**20:13.0f} {m['ttft_s']:7.3f} {m['tok_s']:7.1f} "
                f"{ratio:6.3f}"
            )


if __name__ == "__main__":
    main()
