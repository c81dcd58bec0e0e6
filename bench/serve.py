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

4. --clients-only: the 1/4/8-client table alone (streamed, so each client's own decode
   rate and time to first text are read), plus a newcomer's time to first text while
   7 others decode. --before REF runs that table on a `git worktree` of REF (e.g. the
   commit before batching) and on this tree, back to back, and prints both with
   ratios: on a loaded machine, only ratios taken back to back mean anything.

    .venv/bin/python bench/serve.py --before 8389a58 [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ROOT  # puts the project on sys.path

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
    row = stream_one(client, model, PROMPT, tokens)
    assert row["ttft_s"] is not None
    return {key: row[key] for key in ("ttft_s", "tok_s", "tokens")}


def at_once(ask: Callable[[int], None], clients: int) -> float:
    """Run ask(0) .. ask(clients - 1) on threads at once; the wall seconds."""
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


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

    wall = at_once(ask, clients)
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


def stream_one(client: Any, model: str, question: str, tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    first = last = None
    used = 0
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
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
    return {
        "tokens": used,
        "ttft_s": (first - started) if first else None,
        "tok_s": decode_rate(used, first or 0.0, last or 0.0),
        "end": last or time.perf_counter(),
        "start": started,
    }


def clients_round(client: Any, model: str, n: int, tokens: int) -> dict[str, Any]:
    """n streamed clients at once: aggregate tok/s and each client's own rate."""
    rows: list[dict[str, Any]] = []

    def ask(i: int) -> None:
        rows.append(stream_one(client, model, QUESTIONS[i % len(QUESTIONS)], tokens))

    wall = at_once(ask, n)
    rates = [r["tok_s"] for r in rows if r["tok_s"]]
    ttfts = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
    return {
        "clients": n,
        "tokens": sum(r["tokens"] for r in rows),
        "wall_s": wall,
        "aggregate_tok_s": sum(r["tokens"] for r in rows) / wall,
        "per_client_tok_s_min": min(rates) if rates else None,
        "per_client_tok_s_median": statistics.median(rates) if rates else None,
        "ttft_p50_s": percentile(ttfts, 0.5) if ttfts else None,
        "ttft_p95_s": percentile(ttfts, 0.95) if ttfts else None,
    }


def newcomer_ttft(client: Any, model: str, tokens: int, repeats: int) -> dict[str, Any]:
    """Time to first text of a newcomer while 7 other clients decode."""
    busy = threading.Event()
    started: list[int] = []
    done = threading.Event()

    def background(i: int) -> None:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            temperature=0,
            max_tokens=4096,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                started.append(i)
                if len(set(started)) >= 7:
                    busy.set()
            if done.is_set():
                stream.close()  # the client goes away; its slot frees
                return

    threads = [threading.Thread(target=background, args=(i,)) for i in range(7)]
    for thread in threads:
        thread.start()
    ttfts: list[float] = []
    try:
        busy.wait(600)
        for _ in range(repeats):
            row = stream_one(client, model, "Say hello.", tokens)
            if row["ttft_s"] is not None:
                ttfts.append(row["ttft_s"])
    finally:
        done.set()
        for thread in threads:
            thread.join(600)
    return {
        "repeats": len(ttfts),
        "ttft_p50_s": percentile(ttfts, 0.5) if ttfts else None,
        "ttft_p95_s": percentile(ttfts, 0.95) if ttfts else None,
        "all_decoding": busy.is_set(),
    }


def clients_only(args: argparse.Namespace) -> dict[str, Any]:
    """Part 4 in this process, on whichever code is first on sys.path."""
    import inspect

    import openai

    from core.generation.queue import GenerationQueue
    from core.model import catalog, loader
    from core.settings import preset
    from core.stack import import_stack
    from server.app import Server

    try:
        from server.runner import ServerConfig, ServerThread
    except ImportError:  # the layout before server/runner.py
        from server.app import ServerConfig, ServerThread  # type: ignore

    import_stack()
    chosen = preset(args.preset)
    loaded = loader.load(
        catalog.resolve(args.model), chosen.quant, chosen.load_options()
    )
    kwargs: dict[str, Any] = {"limit": 64}
    if "max_batch" in inspect.signature(GenerationQueue).parameters:
        kwargs["max_batch"] = args.max_batch
    queue = GenerationQueue(loaded, **kwargs)
    server = Server(queue, ServerConfig(port=0), lambda record: None)
    thread = ServerThread(server)
    thread.start()
    client = openai.OpenAI(base_url=thread.url, api_key="none", timeout=1200)
    model = server.model_names()[0]
    result: dict[str, Any] = {"batching": "max_batch" in kwargs, "rounds": []}
    try:
        stream_one(client, model, "Hi", 4)  # warm
        for n in [int(c) for c in args.clients.split(",")]:
            result["rounds"].append(clients_round(client, model, n, args.tokens))
            say(f"{n} clients: {result['rounds'][-1]}")
        if args.newcomers and result["batching"]:  # one at a time: it waits for all 7
            result["newcomer"] = newcomer_ttft(
                client, model, args.tokens, args.newcomers
            )
            say(f"newcomer while 7 decode: {result['newcomer']}")
    finally:
        thread.stop()
        queue.close()
        loader.unload(loaded)
    return result


def before_after(args: argparse.Namespace) -> None:
    """Part 4 on a worktree of --before, then on this tree, back to back."""
    import subprocess
    import tempfile

    here = Path(__file__).resolve()
    tree = Path(tempfile.mkdtemp(prefix="nibble-before-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before],
        check=True,
        capture_output=True,
    )
    common = [
        "--clients-only",
        "--json",
        f"--model={args.model}",
        f"--preset={args.preset}",
        f"--tokens={args.tokens}",
        f"--clients={args.clients}",
        f"--newcomers={args.newcomers}",
    ]
    results: dict[str, Any] = {}
    try:
        for name, code in (("before", tree), ("after", ROOT)):
            say(f"-- {name}: {code}")
            out = subprocess.run(
                [sys.executable, str(here), *common, f"--code={code}"],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout
            results[name] = json.loads(out)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
        )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{args.model} · {args.preset} · {args.tokens} greedy tokens per client, streamed"
    )
    print(
        "clients | before agg tok/s | after agg tok/s | after/before | "
        "after per-client min / median | after TTFT p95"
    )
    for b, a in zip(
        results["before"]["rounds"], results["after"]["rounds"], strict=True
    ):
        print(
            f"{a['clients']:>7} | {b['aggregate_tok_s']:>15.2f} | "
            f"{a['aggregate_tok_s']:>15.2f} | "
            f"{a['aggregate_tok_s'] / b['aggregate_tok_s']:>12.2f} | "
            f"{a['per_client_tok_s_min'] or 0:.2f} / {a['per_client_tok_s_median'] or 0:.2f}"
            f" | {a['ttft_p95_s'] or 0:.2f} s"
        )
    for name in ("before", "after"):
        rounds = results[name]["rounds"]
        solo = rounds[0]["per_client_tok_s_median"] if rounds else None
        last = rounds[-1] if rounds else None
        if solo and last:
            print(
                f"{name}: {last['clients']} clients aggregate = "
                f"{last['aggregate_tok_s'] / solo:.2f}x one client's rate; each client "
                f">= {(last['per_client_tok_s_min'] or 0) / solo:.0%} of solo"
            )
        if "newcomer" in results[name]:
            n = results[name]["newcomer"]
            print(
                f"{name}: newcomer time to first text while 7 decode: p50 "
                f"{n['ttft_p50_s']} s, p95 {n['ttft_p95_s']} s ({n['repeats']} tries)"
            )
    b1, a1 = results["before"]["rounds"][0], results["after"]["rounds"][0]
    if b1["clients"] == 1 and b1["per_client_tok_s_median"]:
        print(
            f"lone client: after/before decode tok/s = "
            f"{a1['per_client_tok_s_median'] / b1['per_client_tok_s_median']:.3f}"
        )


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
    parser.add_argument("--clients-only", action="store_true")
    parser.add_argument("--before", default=None, metavar="REF")
    parser.add_argument("--code", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--newcomers", type=int, default=5)
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, args.code)
    if args.before:
        before_after(args)
        return
    if args.clients_only:
        result = clients_only(args)
        print(json.dumps(result, indent=2))
        return

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
