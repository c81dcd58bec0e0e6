"""The OpenAI-compatible server against in-process generation, and under concurrency.

On the default model (nf4 unless --preset), in one process:

1. Decode tok/s and time to first text through the server (streamed, `openai` client)
   against `decode.stream` in-process, both read where a consumer reads them (the
   first and last text chunk), alternating, --repeats times. Goals: ratio >= 0.95,
   TTFT added < 20 ms.
2. 1, 4 and 8 concurrent clients x 64 tokens through the server (one at a time on the
   model, in arrival order): aggregate tok/s, p50/p95 latency, p50/p95 queue wait.
3. transformers' continuous batching (`model.generate_batch`) on the same model with
   1, 4 and 8 prompts x 64 tokens: aggregate tok/s, and whether its greedy answers
   equal the one-at-a-time ones (--no-batching skips it).

    .venv/bin/python bench/serve.py [--model default] [--preset nf4] [--repeats 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Any

from _common import ROOT  # noqa: F401  (puts the project on sys.path)

PROMPT = "Write a detailed essay about the history of Paris."
QUESTIONS = [
    "Write a detailed essay about the history of Paris.",
    "Explain how a steam engine works, step by step.",
    "Describe the water cycle for a school class.",
    "Tell a long story about a lighthouse keeper.",
    "List the planets and say something about each.",
    "Explain why the sky is blue, in detail.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe how bread is made, from wheat to loaf.",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def decode_rate(tokens: int, first: float, last: float) -> float | None:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else None


def in_process(loaded: Any, tokens: int) -> dict[str, float | None]:
    from core.generation import decode
    from core.settings import GenerationSettings

    settings = GenerationSettings(greedy=True, max_new_tokens=tokens)
    started = time.perf_counter()
    first = last = None
    stats = None
    for item in decode.stream(loaded, PROMPT, settings):
        if isinstance(item, decode.GenerationStats):
            stats = item
        else:
            last = time.perf_counter()
            first = first or last
    assert stats is not None and first is not None and last is not None
    return {
        "ttft_s": first - started,
        "tok_s": decode_rate(stats.new_tokens, first, last),
        "tokens": stats.new_tokens,
    }


def through_server(client: Any, model: str, tokens: int) -> dict[str, float | None]:
    started = time.perf_counter()
    first = last = None
    used = 0
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
    assert first is not None and last is not None
    return {
        "ttft_s": first - started,
        "tok_s": decode_rate(used, first, last),
        "tokens": used,
    }


def concurrent(
    client: Any, model: str, records: list[Any], clients: int, tokens: int
) -> dict[str, float]:
    latencies: list[float] = []
    used: list[int] = []
    texts: dict[int, str] = {}
    before = len(records)

    def ask(i: int) -> None:
        started = time.perf_counter()
        answer = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            temperature=0,
            max_tokens=tokens,
        )
        latencies.append(time.perf_counter() - started)
        used.append(answer.usage.completion_tokens)
        texts[i] = answer.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    waits = [r.wait_s or 0.0 for r in records[before:] if r.status == 200]
    return {
        "clients": clients,
        "tokens": sum(used),
        "wall_s": wall,
        "aggregate_tok_s": sum(used) / wall,
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "wait_p50_s": percentile(waits, 0.5) if waits else 0.0,
        "wait_p95_s": percentile(waits, 0.95) if waits else 0.0,
        "answers": texts,
    }


def batched(
    loaded: Any, clients: int, tokens: int, alone: dict[int, str]
) -> dict[str, Any]:
    """transformers' continuous batching over the same model.

    `alone` holds the one-at-a-time greedy answers (through the server) to compare
    the batched answers with.
    """
    from transformers import GenerationConfig

    tokenizer, model = loaded.tokenizer, loaded.model
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(clients)
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    config = GenerationConfig(
        max_new_tokens=tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    row: dict[str, Any] = {"clients": clients}
    try:
        started = time.perf_counter()
        outputs = model.generate_batch(ids, config)
        wall = time.perf_counter() - started
    except Exception as exc:  # the evidence when it does not work here
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return row
    answers = [
        tokenizer.decode(out.generated_tokens, skip_special_tokens=True)
        for out in outputs.values()
    ]
    made = sum(len(out.generated_tokens) for out in outputs.values())
    row.update(tokens=made, wall_s=wall, aggregate_tok_s=made / wall)
    same = sum(1 for i in range(clients) if alone.get(i) in answers)
    row["same_as_one_at_a_time"] = f"{same}/{clients}"
    return row


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="default", help="'default', a folder or a hub id"
    )
    parser.add_argument("--preset", default="nf4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--no-batching", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import openai

    from core.generation.queue import GenerationQueue
    from core.model import catalog, loader
    from core.settings import preset
    from core.stack import import_stack
    from server.app import Server
    from server.runner import ServerConfig, ServerThread

    import_stack()
    chosen = preset(args.preset)
    loaded = loader.load(
        catalog.resolve(args.model), chosen.quant, chosen.load_options()
    )
    queue = GenerationQueue(loaded, limit=64)
    records: list[Any] = []
    server = Server(queue, ServerConfig(port=0), records.append)
    thread = ServerThread(server)
    thread.start()
    client = openai.OpenAI(base_url=thread.url, api_key="none", timeout=600)
    model = server.model_names()[0]
    result: dict[str, Any] = {
        "model": loaded.ref.name,
        "preset": args.preset,
        "device": loaded.report.device,
    }
    try:
        in_process(loaded, 8)  # warm both paths
        through_server(client, model, 8)
        ours, served = [], []
        for _ in range(args.repeats):
            ours.append(in_process(loaded, args.tokens))
            served.append(through_server(client, model, args.tokens))
            say(f"in-process {ours[-1]}  server {served[-1]}")
        rate_in = statistics.median(r["tok_s"] for r in ours)
        rate_out = statistics.median(r["tok_s"] for r in served)
        ttft_in = statistics.median(r["ttft_s"] for r in ours)
        ttft_out = statistics.median(r["ttft_s"] for r in served)
        result["single"] = {
            "in_process_tok_s": rate_in,
            "server_tok_s": rate_out,
            "ratio": rate_out / rate_in,
            "in_process_ttft_ms": ttft_in * 1e3,
            "server_ttft_ms": ttft_out * 1e3,
            "ttft_added_ms": (ttft_out - ttft_in) * 1e3,
            "runs": {"in_process": ours, "server": served},
        }
        counts = [int(c) for c in args.clients.split(",")]
        result["concurrent"] = []
        for n in counts:
            result["concurrent"].append(
                concurrent(client, model, records, n, args.tokens)
            )
            say(f"{n} clients: {result['concurrent'][-1]}")
        alone = result["concurrent"][-1].pop("answers")
        for row in result["concurrent"]:
            row.pop("answers", None)
        if not args.no_batching:
            result["continuous_batching"] = []
            for n in counts:
                result["continuous_batching"].append(
                    batched(loaded, n, args.tokens, alone)
                )
                say(f"{n} batched: {result['continuous_batching'][-1]}")
    finally:
        thread.stop()
        queue.close()
        loader.unload(loaded)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    single = result["single"]
    print(
        f"{result['model']} · {args.preset} · {result['device']} · {args.tokens} tokens"
    )
    print(
        f"decode tok/s: in-process {single['in_process_tok_s']:.2f}, "
        f"server {single['server_tok_s']:.2f}, ratio {single['ratio']:.3f} (goal >= 0.95)"
    )
    print(
        f"time to first text: in-process {single['in_process_ttft_ms']:.0f} ms, "
        f"server {single['server_ttft_ms']:.0f} ms, added "
        f"{single['ttft_added_ms']:.1f} ms (goal < 20 ms)"
    )
    print("\nclients  tokens  wall s  agg tok/s  p50 s  p95 s  wait p50  wait p95")
    for row in result["concurrent"]:
        print(
            f"{row['clients']:>7}  {row['tokens']:>6}  {row['wall_s']:>6.1f}  "
            f"{row['aggregate_tok_s']:>9.2f}  {row['latency_p50_s']:>5.1f}  "
            f"{row['latency_p95_s']:>5.1f}  {row['wait_p50_s']:>8.1f}  "
            f"{row['wait_p95_s']:>8.1f}"
        )
    if "continuous_batching" in result:
        print("\ncontinuous batching (transformers generate_batch, same model)")
        print("prompts  tokens  wall s  agg tok/s  same greedy answer as alone")
        for row in result["continuous_batching"]:
            if "error" in row:
                print(f"{row['clients']:>7}  fails: {row['error']}")
                continue
            print(
                f"{row['clients']:>7}  {row['tokens']:>6}  {row['wall_s']:>6.1f}  "
                f"{row['aggregate_tok_s']:>9.2f}  {row['same_as_one_at_a_time']}"
            )


if __name__ == "__main__":
    main()
