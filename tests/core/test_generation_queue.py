"""The generation queue: many callers, one model, arrival order, cancel, swap."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.errors import GenerationError
from core.generation.decode import GenerationStats
from core.generation.queue import (
    GenerationQueue,
    GenerationRequest,
    NoModelError,
    QueueFullError,
)
from core.model import catalog, loader
from core.settings import GenerationSettings, preset

GREEDY = GenerationSettings(greedy=True, max_new_tokens=8)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    loaded = loader.load(catalog.resolve(str(tiny_dir)), preset("nf4").quant)
    yield loaded
    loader.unload(loaded)


def collect(job) -> tuple[str, GenerationStats]:
    chunks, stats = [], None
    for item in job:
        if isinstance(item, GenerationStats):
            stats = item
        else:
            assert stats is None, "stats must come last"
            chunks.append(item)
    return "".join(chunks), stats


def test_a_job_yields_what_stream_yields(tiny) -> None:
    from core.generation.decode import generate_text

    queue = GenerationQueue(tiny)
    try:
        text, stats = collect(queue.submit(GenerationRequest("Hello there", GREEDY)))
        assert (text, stats.new_tokens) == (
            generate_text(tiny, "Hello there", GREEDY)[0],
            8,
        )
        assert stats.stop_reason == "max tokens"
    finally:
        assert queue.close()


def test_jobs_beyond_the_batch_wait_and_start_in_arrival_order(tiny) -> None:
    queue = GenerationQueue(tiny, max_batch=2)
    jobs = [queue.submit(GenerationRequest(f"Count to {i}", GREEDY)) for i in range(5)]
    answers: dict[int, str] = {}

    def consume(job) -> None:
        answers[job.id] = collect(job)[0]

    threads = [threading.Thread(target=consume, args=(j,)) for j in reversed(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(answers) == [j.id for j in jobs], "a job was lost"
    assert sorted(jobs, key=lambda j: j.started_at) == jobs
    for job in jobs:  # never more than two at once
        overlapping = [j for j in jobs if j.started_at <= job.started_at < j.ended_at]
        assert len(overlapping) <= 2, "more jobs ran than the batch allows"
    assert queue.close()


def test_full_queue_is_refused_with_retry_after(tiny) -> None:
    queue = GenerationQueue(tiny, limit=2)
    queue.pause()
    a = queue.submit(GenerationRequest("a", GREEDY))
    queue.submit(GenerationRequest("b", GREEDY))
    with pytest.raises(QueueFullError) as err:
        queue.submit(GenerationRequest("c", GREEDY))
    assert err.value.retry_after_s >= 1
    assert "2 requests are already waiting" in err.value.message
    a.cancel()  # a cancelled waiting job frees its place
    queue.submit(GenerationRequest("c", GREEDY))
    assert queue.waiting == 2
    assert queue.close()


def test_a_cancelled_waiting_job_is_dropped_without_running(tiny) -> None:
    queue = GenerationQueue(tiny)
    queue.pause()
    job = queue.submit(GenerationRequest("never", GREEDY))
    assert queue.position(job) == 1
    job.cancel()
    queue.resume()
    text, stats = collect(job)
    assert (text, stats.new_tokens, stats.stop_reason) == ("", 0, "stopped")
    assert job.started_at is None
    assert queue.close()


def test_a_consumer_that_leaves_stops_the_generation(tiny) -> None:
    queue = GenerationQueue(tiny)
    long = GenerationSettings(greedy=True, max_new_tokens=400)
    job = queue.submit(GenerationRequest("Tell me a long story", long))
    for item in job:
        assert isinstance(item, str)
        break  # the client went away after its first chunk
    assert queue.wait_idle(10)
    assert job.stats is not None and job.stats.stop_reason == "stopped"
    assert job.stats.new_tokens < 400
    assert queue.close()


def test_no_model_is_refused_and_a_swap_takes_effect(tiny) -> None:
    queue = GenerationQueue(None)
    with pytest.raises(NoModelError):
        queue.submit(GenerationRequest("Hi", GREEDY))
    queue.set_model(tiny)
    _, stats = collect(queue.submit(GenerationRequest("Hi", GREEDY)))
    assert stats.new_tokens == 8
    queue.set_model(None)
    job = queue.submit(GenerationRequest("Hi", GREEDY), require_model=False)
    with pytest.raises(GenerationError, match="no model is loaded"):
        collect(job)
    assert queue.close()


def test_bad_input_reaches_the_consumer_as_an_error(tiny) -> None:
    queue = GenerationQueue(tiny)
    with pytest.raises(GenerationError, match="the prompt is empty"):
        collect(queue.submit(GenerationRequest("   ", GREEDY)))
    # the queue goes on after a failed job
    assert collect(queue.submit(GenerationRequest("Hi", GREEDY)))[1].new_tokens == 8
    assert queue.close()


# -- decode modes in the queue (docs/facts.md, "what combines") --


def test_fast_decode_answers_one_at_a_time_and_says_why(tiny) -> None:
    import dataclasses

    from core.model.fast_decode import FastDecode

    compiled = dataclasses.replace(tiny, fast_decode=FastDecode(active=True))
    why = (
        "one at a time: fast decode is on (its compiled step is shaped for one "
        "answer; load without it to decode answers together)"
    )
    for queue in (GenerationQueue(compiled), GenerationQueue(compiled, max_batch=4)):
        try:
            assert (queue.max_batch, queue.batch_reason) == (1, why)
            status = queue.status()
            assert status["batching"] is False
            assert status["batching_note"] == why.removeprefix("one at a time: ")
        finally:
            assert queue.close()
    plain = GenerationQueue(tiny, max_batch=4)
    try:
        assert plain.max_batch == 4 and plain.status()["batching"] is True
    finally:
        assert plain.close()


def test_prompt_lookup_decodes_alone_and_plain_inside_a_batch(tiny) -> None:
    lookup = GenerationSettings(greedy=True, max_new_tokens=8, prompt_lookup=True)
    long = GenerationSettings(greedy=True, max_new_tokens=48)
    queue = GenerationQueue(tiny, max_batch=4)
    try:
        text, stats = collect(queue.submit(GenerationRequest("Hello there", lookup)))
        assert (stats.decode_mode, stats.decode_note) == ("prompt lookup", "")
        queue.pause()  # both start at the same step: the second joins the first
        running = queue.submit(GenerationRequest("Once upon a time", long))
        joined = queue.submit(GenerationRequest("Hello there", lookup))
        queue.resume()
        joined_text, joined_stats = collect(joined)
        collect(running)
        assert joined_stats.decode_mode == "plain"
        assert joined_stats.decode_note == (
            "prompt lookup is off while other answers decode in the same batch"
        )
        assert joined_text == text  # greedy: the same answer either way
    finally:
        assert queue.close()
