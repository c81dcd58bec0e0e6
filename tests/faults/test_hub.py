"""Hub faults: a silent hub, a stalled download, a broken or foreign answer, bad numbers.

| fault                                            | expected                               |
|--------------------------------------------------|----------------------------------------|
| the hub accepts the connection, never answers    | one line within 30 s (search, pull,    |
|                                                  | estimate ORG/NAME)                     |
| the hub goes silent mid-file                     | "stalled", the partial kept, resumable |
| closed port, 500                                 | one line within 5 s, no retry warnings |
| an HTML page or JSON of another shape            | "not its API"                          |
| a read-only HF cache                             | where, and what to do                  |
| too little disk space                            | our words, no library UserWarning      |
| search --limit -1, estimate --context 0,         | exit 2 before any request              |
|   pull --context -5 --plan-only                  |                                        |
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cli import main as cli
from core import hubclient
from core.hub import api as hub
from core.hub import download as hub_download
from tests.fake_hub import REPO, FakeHub

ROOT = Path(__file__).resolve().parents[2]


class OddHub:
    """Answers every request with one fixed status, type and body."""

    def __init__(self, status: int, kind: str, body: bytes) -> None:
        self.count = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, head: bool) -> None:
                outer.count += 1
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(False)

            def do_HEAD(self) -> None:
                self._answer(True)

        outer = self
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def point_at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    """huggingface_hub in this process talks to `endpoint`, with an empty cache."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_manager

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def timed(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, float]:
    start = time.monotonic()
    code = cli.run(args)
    took = time.monotonic() - start
    return code, capsys.readouterr().err, took


COMMANDS = {
    "search": ["search", "llama"],
    "pull": ["pull", "some-org/some-model", "--plan-only"],
    "estimate": ["estimate", "some-org/some-model", "--quant", "nf4"],
}


# -- a hub that never answers --


def silent_hub() -> tuple[FakeHub, str]:
    """A hub that accepts connections and reads requests, never answers a byte."""
    hub_ = FakeHub()
    hub_.silent = True
    return hub_, hub_.start()


@pytest.fixture
def silent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    hub_, url = silent_hub()
    point_at(monkeypatch, tmp_path, url)
    monkeypatch.setattr(hubclient, "READ_S", 2.0)
    yield hub_
    hub_.stop()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_silent_hub_ends_with_one_line(
    silent: FakeHub, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, took = timed(COMMANDS[command], capsys)
    assert code == 2
    assert took < 15  # two silences of 2 s at most (the plan, then config.json)
    lines = err.splitlines()
    assert (
        len(lines) == 2
        and lines[0].startswith("error: ")
        and lines[1].startswith("hint: ")
    ), err
    if command != "estimate":
        assert "accepted the connection but did not answer within 2 s" in err


def test_a_silent_hub_with_the_real_limits_ends_within_30_s(tmp_path: Path) -> None:
    hub_, url = silent_hub()
    env = {
        **os.environ,
        "HF_ENDPOINT": url,
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "home"),
    }
    try:
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "main.py", "search", "llama"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        took = time.monotonic() - start
    finally:
        hub_.stop()
    assert done.returncode == 2
    assert took < 30
    assert done.stderr.startswith("error: the hub (")
    assert "did not answer within 15 s" in done.stderr


# -- a download that stalls --


def test_a_download_that_stalls_says_so_and_keeps_the_partial(
    fake: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    plan = hub.plan(REPO)
    size = fake.repos[REPO].files["model.safetensors"].size
    fake.stall_at["model.safetensors"] = size // 3
    start = time.monotonic()
    with pytest.raises(hub.HubError) as info:
        hub_download.download(plan)
    assert time.monotonic() - start < 15
    assert "the download of model.safetensors stalled" in info.value.message
    assert "are kept" in info.value.message
    assert "run the same pull again" in info.value.hint
    assert "cannot be reached" not in info.value.message
    kept = hub.plan(REPO)
    arrived = kept.partial_bytes
    assert 0 < arrived <= size // 3  # whole chunks, written as they came
    fake.stall_at.clear()
    hub_download.download(kept)
    assert fake.ranges("model.safetensors")[-1] == f"bytes={arrived}-"


# -- quick, quiet failures --


@pytest.mark.parametrize("kind", ["closed port", "500"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_failures_are_one_line_within_5_s(
    kind: str,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    odd = None
    if kind == "closed port":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        odd = OddHub(500, "application/json", b'{"error": "boom"}')
        url = odd.url
    point_at(monkeypatch, tmp_path, url)
    try:
        code, err, took = timed(COMMANDS[command], capsys)
    finally:
        if odd is not None:
            odd.close()
    assert code == 2
    assert took < 5
    assert len(err.splitlines()) == 2, err  # error + hint, no retry warnings
    if odd is not None:
        assert odd.count <= 4  # at most one retry per request


# -- an answer that is not the hub's API --


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("text/html", b"<html><body>Welcome to the hotel wifi</body></html>"),
        ("application/json", b'[{"name": "no id here"}]'),
        ("application/json", b'{"unexpected": true}'),
    ],
    ids=["html", "list without ids", "object"],
)
@pytest.mark.parametrize("command", ["search", "pull"])
def test_a_foreign_answer_is_named(
    kind: str,
    body: bytes,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    odd = OddHub(200, kind, body)
    point_at(monkeypatch, tmp_path, odd.url)
    try:
        code, err, _ = timed(COMMANDS[command], capsys)
    finally:
        odd.close()
    assert code == 2
    assert "error: the hub answered something that is not its API" in err, err
    assert "JSONDecodeError" not in err and "KeyError" not in err


# -- the cache and the disk --


def test_a_read_only_cache_says_where_and_what_to_do(fake: FakeHub) -> None:
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        blocker = subprocess.run(["chattr", "+i", str(cache)], capture_output=True)
        if blocker.returncode:
            pytest.skip("chattr +i is not allowed here")
    else:
        cache.chmod(0o555)
    env = {**os.environ, "HF_HOME": str(cache.parent / "hf-home")}
    env.pop("HF_TOKEN", None)
    try:
        done = subprocess.run(
            [sys.executable, "main.py", "pull", REPO],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        code, err = done.returncode, done.stderr
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(cache)], check=True)
        else:
            cache.chmod(0o755)
    assert code == 2
    assert f"error: the Hugging Face cache {cache} cannot be written to" in err
    assert "HF_HUB_CACHE" in err
    assert "unexpected" not in err


def test_too_little_disk_is_said_in_words(
    fake: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hub, "free_disk_bytes", lambda path: 1000)
    code, err, _ = timed(["pull", REPO], capsys)  # warnings are errors in this suite
    assert code == 2
    assert "error: not enough disk space" in err


# -- bad numbers --


@pytest.mark.parametrize(
    ("args", "value"),
    [
        (["search", "llama", "--limit", "-1"], "--limit -1"),
        (["search", "llama", "--limit", "0"], "--limit 0"),
        (["estimate", REPO, "--context", "0"], "--context 0"),
        (["pull", REPO, "--context", "-5", "--plan-only"], "--context -5"),
    ],
)
def test_bad_numbers_are_exit_2_before_any_request(
    fake: FakeHub,
    args: list[str],
    value: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = len(fake.requests)
    try:
        code = cli.run(args)
    except SystemExit as exc:  # refused by the argument parser
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    assert value in err and "out of range" in err
    assert "Traceback" not in err
    assert len(fake.requests) == before


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hub.search("llama", limit=-1), "a search limit of -1 is not valid"),
        (lambda: hub.plan(REPO, context=0), "context 0 is not valid"),
        (lambda: hub.plan(REPO, context=-5), "context -5 is not valid"),
    ],
    ids=["search", "plan 0", "plan -5"],
)
def test_core_refuses_bad_numbers_from_any_face(
    fake: FakeHub, call: Any, message: str
) -> None:
    from core.errors import SettingsError

    before = len(fake.requests)
    with pytest.raises(SettingsError, match=message):
        call()
    assert len(fake.requests) == before


def test_search_json_still_lists(
    fake: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(["search", "tiny", "--json", "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["repo_id"] == REPO
