"""Server faults: a hostile or careless client, and a server that cannot listen.

| fault                                               | expected                        |
|-----------------------------------------------------|---------------------------------|
| `[` × 100000; a lone surrogate in content, prompt,  | 400 in OpenAI's shape           |
|   model                                             |                                 |
| text/plain or form POST (a web page's simple POST)  | 415                             |
| keyless loopback server, Host: another name         | 403 (DNS rebinding)             |
| 3.9 MiB prompt, 20 times                            | 400 before tokenizing; RSS flat |
| no max_tokens                                       | the server's default, "length"  |
| headers trickled, an idle socket                    | closed after the header timeout |
| port taken, address not ours, [::1]                 | said before the model loads     |
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from cli import main as cli
from core.generation.queue import GenerationQueue
from core.model import catalog, loader
from core.settings import LoadOptions, QuantSettings
from server import runner
from server.app import Server
from server.runner import ServerConfig, ServerThread


class Served:
    def __init__(self, queue: GenerationQueue, **config: Any) -> None:
        self.server = Server(queue, ServerConfig(port=0, **config))
        self.thread = ServerThread(self.server)
        self.thread.start()
        self.port = self.thread.port
        self.model = self.server.model_names()[0]

    def post(
        self, path: str, body: bytes | dict[str, Any], **headers: str
    ) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(
                "POST", path, data, {"Content-Type": "application/json", **headers}
            )
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw


@pytest.fixture(scope="module")
def queue(tiny_dir: Path):
    loaded = loader.load(
        catalog.folder_ref(tiny_dir), QuantSettings(), LoadOptions(device_map="cpu")
    )
    q = GenerationQueue(loaded, limit=8)
    yield q
    assert q.close()
    loader.unload(loaded)


@pytest.fixture(scope="module")
def served(queue: GenerationQueue):
    running = Served(queue, default_max_tokens=5)
    yield running
    assert running.thread.stop()


def openai_error(status: int, body: Any, expected: int, text: str) -> None:
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert text in body["error"]["message"], body


# -- bodies no answer can come from --


def test_deeply_nested_json_is_a_400(served: Served) -> None:
    status, body = served.post("/v1/chat/completions", b"[" * 100_000)
    openai_error(status, body, 400, "nested deeper than")
    deep = {"model": served.model, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(200):
        deep = {"x": deep}
    status, body = served.post("/v1/chat/completions", deep)
    openai_error(status, body, 400, "nested deeper than")


@pytest.mark.parametrize("where", ["content", "prompt", "model"])
def test_a_lone_surrogate_is_a_400(served: Served, where: str) -> None:
    lone = "\\ud800"
    if where == "content":
        text = json.dumps(
            {"model": served.model, "messages": [{"role": "user", "content": "X"}]}
        ).replace('"X"', f'"a{lone}b"')
        path = "/v1/chat/completions"
    elif where == "prompt":
        text = json.dumps({"model": served.model, "prompt": "X"}).replace(
            '"X"', f'"{lone}"'
        )
        path = "/v1/completions"
    else:
        text = json.dumps(
            {"model": "X", "messages": [{"role": "user", "content": "hi"}]}
        ).replace('"X"', f'"m{lone}"')
        path = "/v1/chat/completions"
    status, body = served.post(path, text.encode())
    openai_error(status, body, 400, "lone surrogate")


def test_a_surrogate_pair_is_text(served: Served) -> None:
    text = json.dumps(
        {
            "model": served.model,
            "messages": [{"role": "user", "content": "X"}],
            "max_tokens": 2,
        }
    ).replace('"X"', '"smile \\ud83d\\ude00"')
    status, body = served.post("/v1/chat/completions", text.encode())
    assert status == 200, body


@pytest.mark.parametrize(
    "kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_only_json_bodies_are_read(served: Served, kind: str) -> None:
    payload = {"model": served.model, "messages": [{"role": "user", "content": "hi"}]}
    status, body = served.post(
        "/v1/chat/completions", payload, **{"Content-Type": kind}
    )
    openai_error(status, body, 415, "not JSON")


# -- who may call a keyless server --


def _get(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", "/v1/models", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:{port}", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("app.localhost:{port}", 200),
        ("evil.example:{port}", 403),
        ("evil.example", 403),
        ("127.0.0.1.evil.example", 403),
        ("", 403),
    ],
)
def test_a_keyless_server_answers_only_its_own_names(
    served: Served, host: str, status: int
) -> None:
    assert _get(served.port, host.format(port=served.port)) == status


def test_configured_names_and_a_key_open_the_door(queue: GenerationQueue) -> None:
    named = Served(queue, allowed_hosts=["nibble.lan"])
    keyed = Served(queue, api_key="k")
    try:
        assert _get(named.port, "nibble.lan:8000") == 200
        assert _get(named.port, "evil.example") == 403
        assert _get(keyed.port, "evil.example") == 401  # the key decides now
    finally:
        named.thread.stop()
        keyed.thread.stop()


# -- long prompts and long answers --


def test_huge_prompts_are_refused_before_tokenizing(served: Served) -> None:
    me = psutil.Process()
    prompt = "lorem ipsum " * (3_900_000 // 12)  # 3.9 MB
    payload = {"model": served.model, "messages": [{"role": "user", "content": prompt}]}
    status, body = served.post("/v1/chat/completions", payload)  # warm up
    openai_error(status, body, 400, "far more than the model's context")
    start = me.memory_info().rss
    began = time.monotonic()
    for _ in range(20):
        status, body = served.post("/v1/chat/completions", payload)
        assert status == 400
    took = time.monotonic() - began
    grown = me.memory_info().rss - start
    assert grown < 50 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
    assert took < 60


def test_a_request_without_max_tokens_gets_the_default(served: Served) -> None:
    status, body = served.post(
        "/v1/chat/completions",
        {
            "model": served.model,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "temperature": 0,
        },
    )
    assert status == 200, body
    assert body["usage"]["completion_tokens"] <= 5
    if body["usage"]["completion_tokens"] == 5:
        assert body["choices"][0]["finish_reason"] == "length"


def test_the_default_is_a_setting_that_refuses_nonsense() -> None:
    assert ServerConfig().default_max_tokens == 1024
    with pytest.raises(Exception, match="answer tokens is not valid"):
        ServerConfig(default_max_tokens=0)


# -- slow and idle connections --


def test_trickled_headers_are_cut_off(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "HEADER_TIMEOUT_S", 1.0)
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n")
        began = time.monotonic()
        closed = False
        while time.monotonic() - began < 30:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            sock.settimeout(0.5)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:  # reset by the server: cut off as well
                closed = True
                break
    # Uvicorn alone keeps such a connection open for good; 1 s is the limit set here,
    # and the rest is room for a busy machine.
    assert closed, "a connection trickling its headers stayed open for 30 s"


def test_uvicorn_limits_are_set(served: Served) -> None:
    config = runner._uvicorn_config(served.server)
    assert config.limit_concurrency == runner.MAX_CONNECTIONS
    assert config.timeout_keep_alive <= 5


# -- where it listens --


def test_a_taken_port_is_said_before_the_model_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        started = time.monotonic()
        code = cli.run(["serve", "default", "--port", str(port)])
        took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: cannot listen on 127.0.0.1:{port}: the port is in use" in err
    assert "Loading" not in err
    assert took < 10


def test_an_address_that_is_not_ours_is_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.run(["serve", "default", "--host", "192.0.2.1", "--api-key", "k"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot listen on 192.0.2.1:8000: this machine has no such address" in err


def test_ipv6_loopback_in_brackets_is_understood() -> None:
    config = ServerConfig(host="[::1]", port=0)
    assert config.host == "::1"
    assert config.base_url == "http://[::1]:0/v1"
    try:
        runner.check_can_listen("::1", 0)
    except Exception as exc:  # IPv6 off here: then the reason is named
        assert "IPv6" in str(exc) or "no such address" in str(exc)


# -- stopping the server mid-answer --


def test_an_answer_cut_by_stopping_the_server_is_not_a_stop(
    queue: GenerationQueue,
) -> None:
    import threading

    running = Served(queue, default_max_tokens=100_000)
    got: dict[str, Any] = {}

    def ask() -> None:
        try:
            got["answer"] = running.post(
                "/v1/chat/completions",
                {
                    "model": running.model,
                    "messages": [{"role": "user", "content": "Ramble on."}],
                    "max_tokens": 4000,
                    "temperature": 1.0,
                    "seed": 1,
                },
            )
        except (OSError, http.client.HTTPException) as exc:
            got["error"] = exc

    asker = threading.Thread(target=ask)
    asker.start()
    deadline = time.monotonic() + 60
    while queue.running is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # some tokens written, many to go
    running.thread.stop()
    asker.join(60)
    assert "answer" in got, got  # the client is told, not left with a dropped line
    status, body = got["answer"]
    openai_error(status, body, 503, "cut off before its end")
