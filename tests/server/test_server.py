"""The OpenAI-compatible server, through the official `openai` client, on 127.0.0.1.

One real server serves the embedded default model in nf4 for the whole module; the
error tests that need another configuration start a second server on the same queue.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from core.errors import SettingsError
from core.generation.decode import _until_stop
from core.generation.queue import GenerationQueue
from core.model import catalog, loader
from core.settings import preset
from server.app import Server
from server.handlers import RequestRecord
from server.runner import ServerConfig, ServerThread

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[2]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Served:
    """A running server, its queue and the records of its requests."""

    def __init__(self, queue: GenerationQueue, **config: Any) -> None:
        self.records: list[RequestRecord] = []
        self.server = Server(queue, ServerConfig(port=0, **config), self.records.append)
        self.thread = ServerThread(self.server)
        self.thread.start()
        self.url = self.thread.url
        self.port = self.thread.port

    def client(self, **kwargs: Any) -> Any:
        kwargs.setdefault("api_key", "none")
        return openai.OpenAI(base_url=self.url, max_retries=0, **kwargs)

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, dict(response.getheaders()), json.loads(data)
        finally:
            conn.close()

    def post(self, path: str, payload: Any, **headers: str) -> tuple[int, dict, Any]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.raw(
            "POST", path, body, {"Content-Type": "application/json", **headers}
        )

    def stop(self) -> None:
        assert self.thread.stop()


@pytest.fixture(scope="module")
def queue(default_dir: Path):
    loaded = loader.load(catalog.default_ref(), preset("nf4").quant)
    queue = GenerationQueue(loaded, limit=16)
    yield queue
    assert queue.close()
    loader.unload(loaded)


@pytest.fixture(scope="module")
def served(queue: GenerationQueue):
    running = Served(queue, served_model_name="smol")
    yield running
    running.stop()


@pytest.fixture
def model_name(served: Served) -> str:
    return served.server.model_names()[0]


def assert_openai_error(body: Any, text: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert text in body["error"]["message"], body


def last_record(served: Served, status: int) -> RequestRecord:
    """The newest record, once one with `status` has arrived (records may lag)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if served.records and served.records[-1].status == status:
            break
        time.sleep(0.05)
    assert served.records and served.records[-1].status == status, served.records[-1:]
    return served.records[-1]


# -- answers ------------------------------------------------------------------


def test_chat_answers_paris_with_usage(served: Served, model_name: str) -> None:
    answer = served.client().chat.completions.create(
        model=model_name, messages=QUESTION, temperature=0, max_tokens=24
    )
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.object == "chat.completion"
    usage = answer.usage
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_chat_reassembles_with_finish_and_usage(
    served: Served, model_name: str
) -> None:
    client = served.client()
    whole = client.chat.completions.create(
        model=model_name, messages=QUESTION, temperature=0, max_tokens=24
    )
    chunks = list(
        client.chat.completions.create(
            model=model_name,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done(served: Served, model_name: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    body = {"model": model_name, "messages": QUESTION, "max_tokens": 4, "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body).encode())
    response = conn.getresponse()
    assert response.getheader("content-type").startswith("text/event-stream")
    events = response.read().decode().strip().split("\n\n")
    conn.close()
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_stop_strings_end_the_answer_before_them(
    served: Served, model_name: str
) -> None:
    client = served.client()
    answer = client.chat.completions.create(
        model=model_name, messages=QUESTION, temperature=0, max_tokens=24, stop="Paris"
    )
    text = answer.choices[0].message.content
    assert "Paris" not in text and text.strip(), text
    assert answer.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=model_name,
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stop=["Paris", "London"],
        stream=True,
    )
    chunks = [c for c in streamed if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        (["The cap", "ital of Fr", "ance is Pa", "ris."], ["Paris"], "The capital of France is "),
        (["ab", "c"], ["x"], "abc"),
        (["Paris", " at once"], ["Paris"], ""),
        (["a<|e", "nd|>b"], ["<|end|>", "zz"], "a"),
    ],
)  # fmt: skip
def test_until_stop_trims_and_holds_back(
    text: list[str], stops: list[str], expected: str
) -> None:
    hits: list[bool] = []
    out = list(_until_stop(iter(text), stops, lambda: hits.append(True)))
    assert "".join(out) == expected
    assert bool(hits) == any(s in "".join(text) for s in stops)
    for piece in out[:-1]:
        assert piece, "no empty chunks"


def test_completions_streamed_and_not(served: Served, model_name: str) -> None:
    client = served.client()
    prompt = "The capital of France is"
    whole = client.completions.create(
        model=model_name, prompt=prompt, max_tokens=8, temperature=0
    )
    assert whole.object == "text_completion"
    assert "Paris" in whole.choices[0].text
    assert whole.usage.completion_tokens == 8
    assert whole.choices[0].finish_reason == "length"
    chunks = list(
        client.completions.create(
            model=model_name, prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_seed_repeats_a_sampled_answer(served: Served, model_name: str) -> None:
    client = served.client()
    story = [{"role": "user", "content": "Tell me a story about a cat."}]
    ask = {"model": model_name, "messages": story, "max_tokens": 12}

    def answer(seed: int) -> str:
        done = client.chat.completions.create(**ask, seed=seed, temperature=1.0)
        return done.choices[0].message.content

    first = answer(7)
    assert first
    assert answer(7) == first
    assert answer(8) != first  # the seed, not a greedy fallback, fixed the answer


def test_models_list_and_retrieve(served: Served, model_name: str) -> None:
    client = served.client()
    models = client.models.list().data
    assert [m.id for m in models] == [model_name, "smol"]
    for entry in models:
        assert entry.object == "model"
        assert isinstance(entry.created, int) and entry.created > 0
        assert entry.owned_by
    assert client.models.retrieve("smol").id == "smol"
    answer = client.chat.completions.create(
        model="smol", messages=QUESTION, max_tokens=2
    )
    assert answer.model == "smol"


def test_health_and_status(served: Served, model_name: str) -> None:
    status, _, body = served.raw("GET", "/health")
    assert (status, body["status"]) == (200, "ok")
    status, _, body = served.raw("GET", "/nibble/status")
    assert status == 200
    assert body["model"] == model_name
    assert body["quantization"] and body["true_bytes"] > 1_000_000
    assert body["queue"]["waiting"] == body["queue"]["running"] == 0
    assert body["queue"]["batching"] is True and body["queue"]["max_batch"] >= 1


# -- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b"{not json", "not valid JSON"),
        ({"messages": "hi"}, "'messages' must be a non-empty list"),
        ({"messages": QUESTION, "temperature": "hot"}, "'temperature' must be"),
        ({"messages": QUESTION, "max_tokens": 0}, "'max_tokens' 0 is out of range"),
        ({"messages": QUESTION, "presence_penalty": float("nan")}, "'presence_penalty' must be a finite number, got nan"),
        ({"messages": QUESTION, "frequency_penalty": float("-inf")}, "'frequency_penalty' must be a finite number"),
        ({"messages": QUESTION, "temperature": float("nan")}, "'temperature' must be a finite number"),
        ({"messages": QUESTION, "top_p": 0}, "top_p 0 is out of range"),
        ({"messages": QUESTION, "seed": 2**70}, f"'seed' {2**70} is out of range"),
        ({"messages": QUESTION, "top_k": 1.5}, "'top_k' must be an integer"),
        ({"messages": QUESTION, "n": 2}, "'n' is not supported"),
        ({"messages": QUESTION, "logprobs": True}, "'logprobs' is not supported"),
        (
            {"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}]},
            "has no tool support",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "data:,"}},
                        ],
                    }
                ]
            },
            "image_url part",
        ),
        ({"messages": [{"role": "user", "content": "Paris " * 9000}]}, "context of 8192"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_in_openai_shape(
    served: Served, payload: Any, text: str
) -> None:
    status, _, body = served.post("/v1/chat/completions", payload)
    assert status == 400
    assert_openai_error(body, text)
    assert body["error"]["type"] == "invalid_request_error"


def test_long_prompt_says_both_numbers(served: Served) -> None:
    long = [{"role": "user", "content": "Paris " * 9000}]
    _, _, body = served.post("/v1/chat/completions", {"messages": long})
    message = body["error"]["message"]
    assert "the prompt is 90" in message and "context of 8192 tokens" in message


def test_openai_client_raises_on_refused_fields(
    served: Served, model_name: str
) -> None:
    with pytest.raises(openai.BadRequestError, match="one choice per request"):
        served.client().chat.completions.create(
            model=model_name, messages=QUESTION, n=2
        )


def test_unknown_model_is_404_listing_the_served(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        served.client().chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert err.value.status_code == 404
    assert "served: SmolLM2-135M-Instruct, smol" in err.value.body["message"]
    status, _, body = served.raw("GET", "/v1/models/gpt-4o")
    assert status == 404
    assert_openai_error(body, "not served here")


def test_body_too_large_is_413(queue: GenerationQueue) -> None:
    small = Served(queue, max_body_bytes=1000)
    try:
        status, _, body = small.post(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x" * 2000}]},
        )
        assert status == 413
        assert_openai_error(body, "larger than 1000 bytes")
    finally:
        small.stop()


def test_full_queue_is_429_with_retry_after(queue: GenerationQueue) -> None:
    small = GenerationQueue(queue.loaded, limit=1)
    busy = Served(small)
    small.pause()
    try:
        waiting = threading.Thread(
            target=busy.post,
            args=("/v1/completions", {"prompt": "Hello", "max_tokens": 2}),
        )
        waiting.start()
        deadline = time.monotonic() + 30
        while small.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, headers, body = busy.post(
            "/v1/completions", {"prompt": "Hello", "max_tokens": 2}
        )
        assert status == 429
        assert int(headers["retry-after"]) >= 1
        assert_openai_error(body, "1 requests are already waiting")
        with pytest.raises(openai.RateLimitError):
            busy.client().completions.create(
                model=busy.server.model_names()[0], prompt="Hello", max_tokens=2
            )
        small.resume()
        waiting.join(60)
    finally:
        small.resume()
        busy.stop()
        small.close()


def test_no_model_is_503_until_one_loads(queue: GenerationQueue) -> None:
    swapped = GenerationQueue(None)
    empty = Served(swapped)
    try:
        status, _, body = empty.post(
            "/v1/chat/completions", {"model": "x", "messages": QUESTION}
        )
        assert status == 503
        assert_openai_error(body, "no model is loaded")
        assert empty.client().models.list().data == []
        swapped.set_model(queue.loaded)
        answer = empty.client().completions.create(
            model="SmolLM2-135M-Instruct", prompt="Hi", max_tokens=2
        )
        assert answer.usage.completion_tokens == 2
    finally:
        empty.stop()
        swapped.close()


def test_a_key_is_required_when_set(queue: GenerationQueue) -> None:
    keyed = Served(queue, api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError) as err:
            keyed.client(api_key="wrong").models.list()
        assert err.value.status_code == 401
        status, _, body = keyed.raw("GET", "/v1/models")
        assert status == 401
        assert_openai_error(body, "wrong or missing API key")
        assert keyed.client(api_key="s3cret").models.list().data
        assert keyed.raw("GET", "/health")[0] == 200
        assert [r.status for r in keyed.records] == [401, 401]
    finally:
        keyed.stop()


def test_non_loopback_bind_is_refused_without_a_key() -> None:
    with pytest.raises(SettingsError, match="no API key is set"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(SettingsError):
        ServerConfig(host="192.168.1.20", api_key="  ")
    assert ServerConfig(host="0.0.0.0", api_key="k").host == "0.0.0.0"
    assert ServerConfig(host="localhost").host == "localhost"
    assert ServerConfig(host="::1").base_url == "http://[::1]:8000/v1"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "serve",
            "default",
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "NIBBLE_API_KEY"},
    )
    assert result.returncode == 2
    assert "no API key is set" in result.stderr
    assert "hint: pass --api-key" in result.stderr


# -- many clients -----------------------------------------------------------------


def test_eight_concurrent_clients_in_arrival_order(
    served: Served, queue: GenerationQueue, model_name: str
) -> None:
    queue.pause()
    answers: dict[int, tuple[float, int]] = {}

    def ask(i: int) -> None:
        answer = served.client(timeout=300).chat.completions.create(
            model=model_name,
            messages=[{"role": "user", "content": f"Say the number {i}."}],
            temperature=0,
            max_tokens=4,
        )
        answers[i] = (time.perf_counter(), answer.usage.completion_tokens)

    threads = []
    try:
        for i in range(8):
            threads.append(threading.Thread(target=ask, args=(i,)))
            threads[-1].start()
            deadline = time.monotonic() + 30
            while queue.waiting < i + 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert queue.waiting == 8
    finally:
        queue.resume()
    sizes = []
    deadline = time.monotonic() + 300
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        sizes.append(queue.batch_size)
        time.sleep(0.005)
    for thread in threads:
        thread.join(1)
    assert sorted(answers) == list(range(8)), "a request was lost"
    assert all(tokens > 0 for _, tokens in answers.values())
    if queue.max_batch == 1:
        finished = sorted(answers, key=lambda i: answers[i][0])
        assert finished == list(range(8)), "answered out of arrival order"
    else:  # the waiting clients decode together instead of one after another
        assert max(sizes, default=0) > 1, queue.batch_reason


def test_a_client_that_leaves_mid_stream_frees_the_model(
    served: Served, queue: GenerationQueue, model_name: str
) -> None:
    stream = served.client().chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        max_tokens=400,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()  # the client goes away after its first words
    assert queue.wait_idle(30)
    record = last_record(served, 499)
    assert 0 < record.completion_tokens < 40
    answer = served.client().completions.create(
        model=model_name, prompt="Hi", max_tokens=2
    )
    assert answer.usage.completion_tokens == 2


def test_a_waiting_client_that_leaves_is_dropped(
    served: Served, queue: GenerationQueue, model_name: str
) -> None:
    queue.pause()
    try:
        with pytest.raises(openai.APITimeoutError):
            served.client(timeout=1.0).chat.completions.create(
                model=model_name, messages=QUESTION, max_tokens=4
            )
        deadline = time.monotonic() + 10
        while queue.waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue.waiting == 0
    finally:
        queue.resume()
    assert queue.wait_idle(30)
    record = last_record(served, 499)
    assert (record.completion_tokens, record.ttft_s) == (0, None)


# -- the command ------------------------------------------------------------------


def test_serve_command_prints_url_and_curl_then_stops_on_ctrl_c(
    tiny_dir: Path,
) -> None:
    # The tiny model: the command is under test here; the answers of the real model
    # are checked above, through the same Server.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "serve", str(tiny_dir), "--quant", "nf4",
         "--port", str(port), "--served-model-name", "smol"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    try:
        first = process.stdout.readline()
        assert f"at http://127.0.0.1:{port}/v1" in first, process.stderr.read()
        curl = process.stdout.readline()
        assert curl.startswith(f"curl http://127.0.0.1:{port}/v1/chat/completions")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        answer = client.chat.completions.create(
            model="smol", messages=QUESTION, temperature=0, max_tokens=16
        )
        assert answer.model == "smol"
        assert answer.usage.completion_tokens == 16
        assert answer.choices[0].finish_reason == "length"
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "the model is unloaded" in err
    # One line per request, as an access log: client, endpoint, status, tokens.
    [line] = [x for x in err.splitlines() if "/v1/chat/completions 200" in x]
    assert line.endswith(" s") and "+16 tokens, length" in line, line


def test_cors_is_opt_in(queue: GenerationQueue, served: Served) -> None:
    preflight = {
        "Origin": "http://editor.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("OPTIONS", "/v1/chat/completions", headers=preflight)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.getheader("access-control-allow-origin") is None
    web = Served(queue, cors_origins=["http://editor.example"], api_key="k")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
        conn.request("OPTIONS", "/v1/chat/completions", headers=preflight)
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200
        allowed = response.getheader("access-control-allow-origin")
        assert allowed == "http://editor.example"
    finally:
        web.stop()


def test_prompts_are_logged_only_when_asked(
    queue: GenerationQueue, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="server")
    ask = {"prompt": "Zanzibar quokka", "max_tokens": 1}
    assert served.post("/v1/completions", ask)[0] == 200
    assert "/v1/completions 200" in caplog.text
    assert "quokka" not in caplog.text
    talkative = Served(queue, log_prompts=True)
    try:
        assert talkative.post("/v1/completions", ask)[0] == 200
        assert "Zanzibar quokka" in caplog.text
    finally:
        talkative.stop()


def test_presence_and_frequency_penalties_count_only_the_answer() -> None:
    import torch

    from core.generation.decode import _penalties

    (penalize,) = _penalties(2, presence=0.5, frequency=1.0)
    ids = torch.tensor([[0, 1, 3, 3, 4]])  # prompt 0 1, answer 3 3 4
    scores = penalize(ids, torch.zeros(1, 5))
    assert scores.tolist() == [[0.0, 0.0, 0.0, -2.5, -1.5]]


# -- JSON answers -------------------------------------------------------------------


def test_parse_fills_a_pydantic_model(served: Served, model_name: str) -> None:
    from pydantic import BaseModel, Field

    class City(BaseModel):  # bounded, so a sampled answer ends within max_tokens
        name: str = Field(max_length=24)
        country: str = Field(max_length=24)
        population: int = Field(ge=0, le=100_000_000)

    answer = served.client().chat.completions.parse(
        model=model_name,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        temperature=0.8,
        seed=5,
        max_tokens=200,
    )
    city = answer.choices[0].message.parsed
    assert isinstance(city, City), answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"


def test_json_object_answers_are_json_objects(
    served: Served, model_name: str, queue: GenerationQueue
) -> None:
    from core.generation import constrain
    from core.generation.decode import vocab_width

    answer = served.client().chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        response_format={"type": "json_object"},
        temperature=0.8,
        seed=2,
        max_tokens=64,
    )
    text = answer.choices[0].message.content
    assert text.startswith("{"), text
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
        return
    # A sampled open object may outgrow max_tokens: what was cut is still the start
    # of a JSON object, which a fresh matcher takes token by token.
    assert answer.choices[0].finish_reason == "length"
    loaded = queue.loaded
    check = constrain.processor(
        constrain.Constraint.json_object(),
        loaded.tokenizer,
        vocab_width(loaded.model),
        0,
    )
    for token in loaded.tokenizer(text, add_special_tokens=False)["input_ids"]:
        check.matcher.consume_token(token)
        assert not check.matcher.is_error(), (text, check.matcher.get_error())


def test_sampled_json_schema_answers_are_all_schema_valid(
    served: Served, model_name: str
) -> None:
    from pydantic import BaseModel, ConfigDict, Field

    class Pet(BaseModel):  # bounded, so every sampled answer ends within max_tokens
        model_config = ConfigDict(extra="forbid")  # no keys beyond these three

        name: str = Field(max_length=16)
        species: str = Field(max_length=16)
        age: int = Field(ge=0, le=40)

    format_ = {
        "type": "json_schema",
        "json_schema": {
            "name": "pet",
            "schema": Pet.model_json_schema(),
            "strict": True,
        },
    }
    client = served.client()
    for seed in range(5):
        answer = client.chat.completions.create(
            model=model_name,
            messages=[{"role": "user", "content": "Describe a pet as JSON."}],
            response_format=format_,
            temperature=0.8,
            seed=seed,
            max_tokens=120,
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", (seed, choice.message.content)
        Pet.model_validate_json(choice.message.content)  # raises unless valid


@pytest.mark.parametrize(
    ("response_format", "text"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "if": {"required": ["a"]}}}}, 'Unimplemented keys: ["if"]'),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema' is required"),
        ({"type": "xml"}, "'response_format.type' must be one of"),
    ],
)  # fmt: skip
def test_schemas_that_cannot_be_enforced_are_400(
    served: Served, model_name: str, response_format: Any, text: str
) -> None:
    status, _, body = served.post(
        "/v1/chat/completions",
        {"model": model_name, "messages": QUESTION, "response_format": response_format},
    )
    assert status == 400
    assert_openai_error(body, text)
