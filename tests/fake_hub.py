"""A Hugging Face hub on 127.0.0.1 for tests: the HTTP layout `huggingface_hub` reads.

It serves what the real client calls: `GET /api/models` (search), `GET
/api/models/{repo}[/revision/{rev}]` (model info with siblings, blob ids, LFS sizes and
safetensors parameter counts), and `HEAD`/`GET /{repo}/resolve/{rev}/{file}` with
X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size and range requests. Errors carry the
hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).
It counts the bytes it sends and can cut a response off mid-file, or go silent: mid-file,
on search, or on every request (a hub that accepts connections and never answers).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

REPO = "nibble-test/tiny-llama"
CHUNK = (
    1 << 20
)  # huggingface_hub reads 10 MiB per chunk; 1 MiB gives the tests more steps
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
_BLOCK = 64 * 1024


@dataclass
class RepoFile:
    name: str
    path: Path
    size: int
    lfs: bool
    etag: str  # sha256 for LFS files, the git blob sha1 otherwise


@dataclass
class Repo:
    repo_id: str
    commit: str
    files: dict[str, RepoFile]
    gated: str | None = None
    tags: list[str] = field(default_factory=list)
    library_name: str = "transformers"
    downloads: int = 0
    likes: int = 0

    def safetensors(self) -> dict[str, Any] | None:
        counts: Counter[str] = Counter()
        for f in self.files.values():
            if f.name.endswith(".safetensors"):
                with f.path.open("rb") as fh:
                    (n,) = struct.unpack("<Q", fh.read(8))
                    header = json.loads(fh.read(n))
                for key, t in header.items():
                    if key != "__metadata__":
                        count = 1
                        for d in t["shape"]:
                            count *= d
                        counts[t["dtype"]] += count
        if not counts:
            return None
        return {"parameters": dict(counts), "total": sum(counts.values())}

    def info(self, blobs: bool) -> dict[str, Any]:
        siblings = []
        for f in self.files.values():
            entry: dict[str, Any] = {"rfilename": f.name}
            if blobs:
                entry["size"] = f.size
                entry["blobId"] = hashlib.sha1(f.name.encode()).hexdigest()
                if f.lfs:
                    entry["lfs"] = {
                        "size": f.size,
                        "sha256": f.etag,
                        "pointerSize": 134,
                    }
                else:
                    entry["blobId"] = f.etag
            siblings.append(entry)
        data: dict[str, Any] = {
            "id": self.repo_id,
            "modelId": self.repo_id,
            "sha": self.commit,
            "private": False,
            "gated": self.gated or False,
            "disabled": False,
            "downloads": self.downloads,
            "likes": self.likes,
            "lastModified": "2026-01-02T03:04:05.000Z",
            "tags": self.tags,
            "pipeline_tag": "text-generation",
            "library_name": self.library_name,
            "siblings": siblings,
        }
        st = self.safetensors()
        if st:
            data["safetensors"] = st
        return data


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class FakeHub:
    """Start with `start()`; add repos with `add_repo(repo_id, folder)`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.served: Counter[str] = Counter()  # body bytes sent per file name
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.cut_after: dict[
            str, int
        ] = {}  # file name → cut the next GET after N bytes
        self.stall_at: dict[str, int] = {}  # file → go silent at this offset
        self.released = threading.Event()  # ends every stall (set by stop())
        self.delay_s = 0.0  # sleep per 64 KiB block, to slow a download down
        self.delay_from = 0  # ... once a response has sent this many bytes
        self.search_stalls = False  # search answers only once `released` is set
        self.silent = False  # no request gets a byte of answer until `released`
        self.granted_tokens: set[str] = set()
        self._server: ThreadingHTTPServer | None = None

    # -- set-up --

    def add_repo(
        self, repo_id: str, folder: Path, commit: str | None = None, **extra: Any
    ) -> Repo:
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            lfs = name.endswith(LFS_SUFFIXES)
            etag = sha256_file(path) if lfs else git_blob_sha(path.read_bytes())
            files[name] = RepoFile(name, path, path.stat().st_size, lfs, etag)
        commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
        repo = Repo(repo_id, commit, files, **extra)
        self.repos[repo_id] = repo
        return repo

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def ranges(self, name: str) -> list[str | None]:
        """The Range header of every GET of `name`, in order."""
        return [
            h.get("range")
            for method, path, h in self.requests
            if method == "GET" and path.endswith("/" + name) and "/resolve/" in path
        ]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _route(self, head: bool) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.fake.requests.append(("HEAD" if head else "GET", path, headers))
        if self.fake.silent:
            self.fake.released.wait(120)  # the request read, the connection held open
            self.close_connection = True
            return
        try:
            if path == "/api/models":
                self._search(parse_qs(url.query))
            elif path.startswith("/api/models/"):
                self._info(path[len("/api/models/") :], parse_qs(url.query))
            elif "/resolve/" in path:
                self._resolve(path, head)
            else:
                self._error(404, "", "Not found")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _json(self, data: Any, status: int = 200) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(
        self, status: int, code: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _search(self, query: dict[str, list[str]]) -> None:
        if self.fake.search_stalls:
            self.fake.released.wait(60)
        text = (query.get("search") or [""])[0].lower()
        limit = int((query.get("limit") or ["1000"])[0])
        repos = [r for r in self.fake.repos.values() if text in r.repo_id.lower()]
        repos.sort(key=lambda r: r.downloads, reverse=True)
        out = []
        for repo in repos[:limit]:
            info = repo.info(blobs=False)
            info.pop("siblings")
            out.append(info)
        self._json(out)

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _info(self, rest: str, query: dict[str, list[str]]) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision and revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return
        self._json(repo.info(blobs=bool(query.get("blobs"))))

    def _resolve(self, path: str, head: bool) -> None:
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return
        commit = {"X-Repo-Commit": repo.commit}
        if repo.gated:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if not token:
                self._error(
                    401,
                    "GatedRepo",
                    "Access to model is restricted. You must have access to it and "
                    "be authenticated to access it. Please log in.",
                    commit,
                )
                return
            if token not in self.fake.granted_tokens:
                self._error(
                    403,
                    "GatedRepo",
                    "Access to model is restricted and you are not in the authorized list.",
                    commit,
                )
                return
        file = repo.files.get(name)
        if file is None:
            self._error(404, "EntryNotFound", "Entry not found", commit)
            return
        start = 0
        wanted = self.headers.get("Range")
        if wanted and not head:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{file.etag}"')
        if file.lfs:
            self.send_header("X-Linked-Etag", f'"{file.etag}"')
            self.send_header("X-Linked-Size", str(file.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(file.size - start))
        if start:
            self.send_header(
                "Content-Range", f"bytes {start}-{file.size - 1}/{file.size}"
            )
        self.end_headers()
        if head:
            return
        cut = self.fake.cut_after.pop(name, None)
        stall = self.fake.stall_at.get(name)
        sent = 0
        with file.path.open("rb") as fh:
            fh.seek(start)
            while block := fh.read(_BLOCK):
                if stall is not None and start + sent >= stall:
                    self.wfile.flush()
                    self.fake.released.wait(120)  # silent, the connection held open
                    self.close_connection = True
                    return
                if cut is not None and sent + len(block) > cut:
                    block = block[: cut - sent]
                self.wfile.write(block)
                sent += len(block)
                self.fake.served[name] += len(block)
                if cut is not None and sent >= cut:
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if self.fake.delay_s and sent >= self.fake.delay_from:
                    time.sleep(self.fake.delay_s)


# -- fixtures (import them into a test module) --


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """The tiny Llama as a hub repo: safetensors, a .bin duplicate, GGUF and ONNX extras."""
    from tests.conftest import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("repo") / "tiny", tokenizer_dir)
    (folder / "README.md").write_text("# tiny\n")
    (folder / "model.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"\0" * 100)
    (folder / "tf_model.h5").write_bytes(b"\0" * 100)
    return folder


@pytest.fixture
def fake(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, repo_dir: Path
) -> Iterator[FakeHub]:
    """A running fake hub with the tiny repo, and huggingface_hub pointed at it."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_manager

    server = FakeHub()
    server.add_repo(REPO, repo_dir, downloads=500, likes=7)
    endpoint = server.start()
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
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    yield server
    server.stop()
