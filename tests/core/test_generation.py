"""Streaming: chunks then stats, stop within a token, errors that never hang."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.errors import GenerationError
from core.generation import decode
from core.generation.decode import GenerationStats
from core.model import catalog, loader
from core.settings import GenerationSettings, preset

GREEDY = GenerationSettings(greedy=True, max_new_tokens=12)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    loaded = loader.load(catalog.resolve(str(tiny_dir)), preset("nf4").quant)
    yield loaded
    loader.unload(loaded)


def run(loaded, prompt, settings=GREEDY, stop=None, raw=False):
    chunks, stats = [], None
    for item in decode.stream(loaded, prompt, settings, stop, raw=raw):
        if isinstance(item, GenerationStats):
            stats = item
        else:
            assert stats is None, "stats must come last"
            chunks.append(item)
    return chunks, stats


def test_stream_yields_text_then_stats(tiny) -> None:
    chunks, stats = run(tiny, "Hello there")
    assert chunks and all(isinstance(c, str) for c in chunks)
    assert stats.new_tokens == 12
    assert stats.stop_reason == "max tokens"
    assert stats.prompt_tokens > 5  # the chat template wraps the prompt
    assert stats.ttft_s is not None and stats.ttft_s > 0
    assert stats.tokens_per_s is not None and stats.tokens_per_s > 0


def test_greedy_is_deterministic(tiny) -> None:
    # Raw: through the chat template the random tiny model only says newlines, and
    # two empty answers would match whatever the decoding did.
    first, stats = run(tiny, "Once upon", raw=True)
    again, _ = run(tiny, "Once upon", raw=True)
    assert stats.new_tokens == GREEDY.max_new_tokens
    assert "".join(first).strip()
    assert "".join(again) == "".join(first)


def test_stop_takes_effect_within_a_token(tiny) -> None:
    stop = threading.Event()
    chunks, stats = [], None
    settings = GenerationSettings(greedy=True, max_new_tokens=200)
    tokens_at_stop = None
    for item in decode.stream(tiny, "Tell me a story", settings, stop):
        if isinstance(item, GenerationStats):
            stats = item
            continue
        chunks.append(item)
        if not stop.is_set():
            tokens_at_stop = len(
                tiny.tokenizer("".join(chunks), add_special_tokens=False)["input_ids"]
            )
            stop.set()
    assert stats.stop_reason == "stopped"
    assert stats.new_tokens < 200
    # The streamer may hold back a partial word; one more token may decode after stop.
    assert stats.new_tokens <= tokens_at_stop + 4


def test_raw_completion_without_chat_template(tiny) -> None:
    template = tiny.tokenizer.chat_template
    tiny.tokenizer.chat_template = None
    try:
        assert decode.build_prompt(tiny.tokenizer, "The sky is") == "The sky is"
        _chunks, stats = run(tiny, "The sky is")
        assert stats.prompt_tokens == len(tiny.tokenizer("The sky is")["input_ids"])
    finally:
        tiny.tokenizer.chat_template = template
    text = decode.build_prompt(tiny.tokenizer, [{"role": "user", "content": "Hi"}])
    assert "<|im_start|>user" in text and text.endswith("<|im_start|>assistant\n")


def test_empty_prompt(tiny) -> None:
    with pytest.raises(GenerationError, match="the prompt is empty"):
        run(tiny, "   ")
    with pytest.raises(GenerationError, match="the prompt is empty"):
        run(
            tiny,
            [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": ""},
            ],
        )


def test_prompt_longer_than_context(tiny) -> None:
    with pytest.raises(GenerationError) as info:
        run(tiny, "word " * 400)
    assert "longer than the model's context of 256" in info.value.message
    assert "shorten" in info.value.hint


def test_error_inside_generate_reaches_the_caller(tiny, monkeypatch) -> None:
    calls = {"n": 0}
    forward = tiny.model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated kernel failure")
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny.model, "forward", failing_forward)
    items = []
    with pytest.raises(GenerationError, match="simulated kernel failure"):
        for item in decode.stream(tiny, "Hello", GREEDY):
            items.append(item)
    assert isinstance(items[-1], GenerationStats)
    assert items[-1].stop_reason == "error"


def test_consumer_leaving_early_stops_the_thread(tiny) -> None:
    before = threading.active_count()
    gen = decode.stream(
        tiny, "Hello", GenerationSettings(greedy=True, max_new_tokens=200)
    )
    next(gen)
    gen.close()
    assert threading.active_count() == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fp32", "int8", "nf4-dq"])
def test_default_model_knows_paris(default_dir: Path, name: str) -> None:
    chosen = preset(name)
    loaded = loader.load(
        catalog.resolve("default"), chosen.quant, chosen.load_options()
    )
    try:
        text, stats = decode.generate_text(
            loaded,
            "What is the capital of France?",
            GenerationSettings(greedy=True, max_new_tokens=24),
        )
    finally:
        loader.unload(loaded)
    assert "Paris" in text
    assert stats.stop_reason in ("eos", "max tokens")
