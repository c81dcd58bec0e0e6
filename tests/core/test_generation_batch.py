"""Batched decoding in the generation queue: answers join and leave a running batch
and each keeps its own answer, settings and cancellation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.generation.decode import GenerationStats, generate_text
from core.generation.queue import GenerationQueue, GenerationRequest
from core.model import catalog, loader
from core.settings import GenerationSettings, preset

PROMPTS = {
    "long": "Write a detailed essay about the history of Paris, from the Romans to "
    "the present day, with its kings, its revolutions and its artists.",
    "short": "Hi",
    "mid": "Explain how a steam engine works, step by step.",
    "late": "List the planets and say something about each.",
}


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    loaded = loader.load(catalog.resolve(str(tiny_dir)), preset("nf4").quant)
    yield loaded
    loader.unload(loaded)


def greedy(tokens: int) -> GenerationSettings:
    return GenerationSettings(greedy=True, max_new_tokens=tokens)


def collect(job) -> tuple[str, GenerationStats]:
    chunks, stats = [], None
    for item in job:
        if isinstance(item, GenerationStats):
            stats = item
        else:
            chunks.append(item)
    return "".join(chunks), stats


def test_greedy_answers_in_a_batch_equal_each_alone(tiny) -> None:
    tokens = {"long": 24, "short": 6, "mid": 20, "late": 12}
    alone = {k: generate_text(tiny, PROMPTS[k], greedy(tokens[k]))[0] for k in tokens}
    queue = GenerationQueue(tiny, max_batch=8)
    sizes: list[int] = []
    queue.on_batch_change.append(lambda running, waiting: sizes.append(running))
    queue.pause()  # the first three start together
    jobs = {
        k: queue.submit(GenerationRequest(PROMPTS[k], greedy(tokens[k])))
        for k in ("long", "short", "mid")
    }
    doomed = queue.submit(GenerationRequest("Tell me a long story", greedy(200)))
    queue.resume()
    results: dict[str, tuple[str, GenerationStats]] = {}

    def consume(key: str, job) -> None:
        results[key] = collect(job)

    threads = [threading.Thread(target=consume, args=kv) for kv in jobs.items()]
    for thread in threads:
        thread.start()
    for item in doomed:  # the client goes away after its first chunk
        assert isinstance(item, str)
        break
    # one more joins while the long answer is still decoding
    late = queue.submit(GenerationRequest(PROMPTS["late"], greedy(tokens["late"])))
    results["late"] = collect(late)
    for thread in threads:
        thread.join(120)
    assert queue.close()

    for key in tokens:
        text, stats = results[key]
        assert text == alone[key], f"{key}: the batched answer differs from alone"
        assert (stats.new_tokens, stats.stop_reason) == (tokens[key], "max tokens")
    assert doomed.stats.stop_reason == "stopped"
    assert doomed.stats.new_tokens < 200
    assert jobs["short"].ended_at < jobs["long"].ended_at  # it left early
    assert late.started_at < jobs["long"].ended_at, "the newcomer did not join"
    assert max(sizes) >= 3 and sizes[-1] == 0


def test_each_request_keeps_its_seed_and_logits_hook(tiny) -> None:
    import torch

    sampled = GenerationSettings(max_new_tokens=10, temperature=0.9, seed=7)
    forced = tiny.tokenizer.convert_tokens_to_ids("Paris")

    def only_paris(input_ids, scores):
        mask = torch.full_like(scores, -float("inf"))
        mask[:, forced] = 0
        return scores + mask

    queue = GenerationQueue(tiny, max_batch=1)
    alone = collect(queue.submit(GenerationRequest(PROMPTS["mid"], sampled)))[0]
    assert queue.close()

    queue = GenerationQueue(tiny, max_batch=4)
    queue.pause()
    seeded = queue.submit(GenerationRequest(PROMPTS["mid"], sampled))
    plain = queue.submit(GenerationRequest(PROMPTS["short"], greedy(8)))
    hooked = queue.submit(
        GenerationRequest(PROMPTS["short"], greedy(5), logits_processor=only_paris)
    )
    queue.resume()
    texts = {}
    threads = [
        threading.Thread(target=lambda k=k, j=j: texts.__setitem__(k, collect(j)[0]))
        for k, j in (("seeded", seeded), ("plain", plain), ("hooked", hooked))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert queue.close()
    assert texts["hooked"].split() == ["Paris"] * 5 or texts["hooked"] == "Paris" * 5
    assert texts["plain"] == generate_text(tiny, PROMPTS["short"], greedy(8))[0]
    assert texts["seeded"] == alone  # same seed, same answer in the batch


def test_stop_strings_and_status_in_a_batch(tiny) -> None:
    full = generate_text(tiny, PROMPTS["mid"], greedy(16))[0]
    assert len(full) > 8, full
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    queue = GenerationQueue(tiny, max_batch=4)
    queue.pause()
    stopped = queue.submit(GenerationRequest(PROMPTS["mid"], greedy(16), stop=(stop,)))
    other = queue.submit(GenerationRequest(PROMPTS["long"], greedy(16)))
    status = queue.status()
    assert [w["id"] for w in status["waiting_requests"]] == [stopped.id, other.id]
    assert status["batching"] and status["max_batch"] == 4
    queue.resume()
    text, stats = collect(stopped)
    collect(other)
    assert queue.close()
    assert text == full[: full.index(stop)]
    assert stats.stop_reason == "stop string"


def test_a_constrained_answer_keeps_its_grammar_in_a_batch(tiny) -> None:
    import json

    from core.generation.constrain import JSON_SCHEMA, Constraint
    from core.generation.decode import stream

    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    constraint = Constraint(JSON_SCHEMA, schema=schema)
    alone = "".join(
        item
        for item in stream(tiny, PROMPTS["mid"], greedy(40), constraint=constraint)
        if isinstance(item, str)
    )
    queue = GenerationQueue(tiny, max_batch=4)
    queue.pause()
    plain = queue.submit(GenerationRequest(PROMPTS["long"], greedy(20)))
    shaped = queue.submit(
        GenerationRequest(PROMPTS["mid"], greedy(40), constraint=constraint)
    )
    queue.resume()
    other = threading.Thread(target=collect, args=(plain,))
    other.start()
    text, stats = collect(shaped)
    other.join(60)
    assert queue.close()
    assert json.loads(text)["city"] in schema["properties"]["city"]["enum"]
    assert text == alone and stats.stop_reason == "eos"


def test_one_at_a_time_says_why_and_still_answers(tiny) -> None:
    from transformers import AutoConfig

    from core.generation.batch import batching_blocker

    queue = GenerationQueue(tiny, max_batch=1)
    status = queue.status()
    assert (status["batching"], status["batching_note"]) == (
        False,
        "the batch size is 1",
    )
    text, _ = collect(queue.submit(GenerationRequest(PROMPTS["mid"], greedy(6))))
    assert text == generate_text(tiny, PROMPTS["mid"], greedy(6))[0]
    assert queue.close()

    class Sliding:  # what batching_blocker reads: the loaded model's config
        model = type(
            "M", (), {"config": AutoConfig.for_model("mistral", sliding_window=64)}
        )

    assert "sliding-window" in batching_blocker(Sliding)
