"""The OpenAI-compatible HTTP API over the one loaded model (FastAPI + uvicorn).

Every answer is a job in the core's GenerationQueue, the same queue the window's chat
submits to, so server requests and chat messages share the model in arrival order.
The app reads the model from the queue on every request: loading another model
switches what is served, and no model answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import GenerationError, NibbleError, SettingsError
from core.generation.decode import (
    STOP_MAX,
    STOP_STOPPED,
    GenerationStats,
    build_prompt,
    context_length,
    has_chat_template,
)
from core.generation.queue import GenerationQueue, GenerationRequest, Job, NoModelError
from server.protocol import (
    ApiError,
    chat_messages,
    read_field,
    refuse_unsupported,
    sampling,
    stop_strings,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000
MAX_BODY_BYTES = 4 * 1024 * 1024
OWNER = "nibble"


@dataclass
class ServerConfig:
    """How the server listens and whom it answers."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    served_model_name: str | None = None
    """Another name the model answers to, besides its hub id or folder name."""
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = MAX_BODY_BYTES
    log_prompts: bool = False

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise SettingsError(
                f"port {self.port} is out of range", "use a port from 1024 to 65535"
            )
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None
        check_bind(self.host, self.api_key)

    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"


def lan_address() -> str | None:
    """This machine's address on its local network, as other machines reach it."""
    import socket

    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.connect(("10.255.255.255", 1))  # UDP: picks a route, sends nothing
        address = sock.getsockname()[0]
        if not address.startswith("127."):
            return address
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without a key.

    Raises
    ------
    SettingsError
        `host` is not a loopback address and no key is set.
    """
    if not is_loopback(host) and not api_key:
        raise SettingsError(
            f"serving on {host} lets other machines use the model, and no API key is set",
            "pass --api-key KEY (clients send it as a Bearer token), "
            "or serve on 127.0.0.1",
        )


@dataclass
class RequestRecord:
    """One answered (or refused) request, for the window's log and the Monitor."""

    time: float
    client: str
    endpoint: str
    status: int
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    wait_s: float | None = None
    total_s: float = 0.0
    finish_reason: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the app --------------------------------------------------------------------


class Server:
    """The API's state: the queue it submits to, its config, and who listens.

    Parameters
    ----------
    queue
        The generation queue over the loaded model (shared with the chat).
    config
        Bind address, key, names and limits.
    on_request
        Called with a RequestRecord after every API request (from the server's
        thread); the window logs them and marks them on the Monitor.
    """

    def __init__(
        self,
        queue: GenerationQueue,
        config: ServerConfig | None = None,
        on_request: Callable[[RequestRecord], Any] | None = None,
    ) -> None:
        self.queue = queue
        self.config = config or ServerConfig()
        self.on_request = on_request
        self.started = int(time.time())
        self._jobs: weakref.WeakSet[Job] = weakref.WeakSet()  # not the chat's
        self.app = self._build_app()

    def cancel_jobs(self) -> None:
        """Stop this server's running and waiting answers (the chat's go on)."""
        for job in list(self._jobs):
            job.cancel()

    # -- names --

    def model_names(self) -> list[str]:
        """What clients may put in 'model': the hub id or folder name, then the alias."""
        loaded = self.queue.loaded
        if loaded is None:
            return []
        ref = loaded.ref
        names = [ref.repo_id or ref.name]
        alias = self.config.served_model_name
        if alias and alias not in names:
            names.append(alias)
        return names

    def _model_entry(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": self.started,
            "owned_by": OWNER,
        }

    def _pick_model(self, body: dict[str, Any]) -> str:
        names = self.model_names()
        if not names:
            raise ApiError(
                503, "no model is loaded; load a model first", code="no_model_loaded"
            )
        wanted = read_field(body, "model", str, None)
        if wanted is None:
            return names[0]
        if wanted not in names:
            raise ApiError(
                404,
                f"the model '{wanted}' is not served here; served: {', '.join(names)}",
                param="model",
                code="model_not_found",
            )
        return wanted

    # -- building the app --

    def _build_app(self) -> Any:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from starlette.exceptions import HTTPException

        app = FastAPI(title="Nibble", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_middleware(_KeyCheck, server=self)
        if self.config.cors_origins:
            from fastapi.middleware.cors import CORSMiddleware

            app.add_middleware(
                CORSMiddleware,
                allow_origins=list(self.config.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
            )

        def error_response(exc: ApiError) -> JSONResponse:
            return JSONResponse(exc.body(), exc.status, headers=exc.headers)

        @app.exception_handler(ApiError)
        async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
            return error_response(exc)

        @app.exception_handler(HTTPException)
        async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
            message = {404: f"no route {request.url.path}", 405: "method not allowed"}
            text = message.get(exc.status_code, str(exc.detail))
            return error_response(ApiError(exc.status_code, text))

        @app.exception_handler(RequestValidationError)
        async def on_invalid(request: Request, exc: RequestValidationError) -> Any:
            return error_response(ApiError(400, str(exc.errors()[:1])))

        @app.get("/health")
        async def health() -> dict[str, Any]:
            return {"status": "ok", "model_loaded": self.queue.loaded is not None}

        @app.get("/nibble/status")
        async def status() -> dict[str, Any]:
            return self.status()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {
                "object": "list",
                "data": [self._model_entry(n) for n in self.model_names()],
            }

        @app.get("/v1/models/{model_id:path}")
        async def model(model_id: str) -> dict[str, Any]:
            names = self.model_names()
            if model_id not in names:
                served = ", ".join(names) if names else "none (no model is loaded)"
                raise ApiError(
                    404,
                    f"the model '{model_id}' is not served here; served: {served}",
                    param="model",
                    code="model_not_found",
                )
            return self._model_entry(model_id)

        # Plain Starlette routes: the raw Request, no FastAPI body validation.
        async def chat(request: Request) -> Any:
            return await self._complete(request, chat=True)

        async def completions(request: Request) -> Any:
            return await self._complete(request, chat=False)

        app.add_route("/v1/chat/completions", chat, methods=["POST"])
        app.add_route("/v1/completions", completions, methods=["POST"])

        return app

    def status(self) -> dict[str, Any]:
        """Model, quantization, true bytes, and the running and waiting requests."""
        loaded = self.queue.loaded
        data: dict[str, Any] = {
            "model": None,
            "served_names": self.model_names(),
            "queue": self.queue.status(),
        }
        if loaded is not None:
            data["model"] = loaded.ref.repo_id or loaded.ref.name
            data["quantization"] = loaded.quant.label()
            data["true_bytes"] = loaded.report.true_bytes
            data["device"] = loaded.report.device
            data["context_length"] = context_length(loaded.model)
        return data

    def key_matches(self, headers: dict[str, str]) -> bool:
        """Whether the request carries the key (compared in constant time)."""
        key = self.config.api_key
        if not key:
            return True
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            given = headers.get("x-api-key", "")
        return hmac.compare_digest(given.strip().encode(), key.encode())

    # -- answers --

    async def _read_json(self, request: Any) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        too_big = ApiError(
            413,
            f"the request body is larger than {limit} bytes",
            code="request_too_large",
        )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    async def _complete(self, request: Any, chat: bool) -> Any:
        endpoint = request.url.path
        started = time.perf_counter()
        try:
            body = await self._read_json(request)
            refuse_unsupported(body)
            model_name = self._pick_model(body)
            stream = read_field(body, "stream", bool, False)
            options = body.get("stream_options")
            if options is not None and not isinstance(options, dict):
                raise ApiError(
                    400, "'stream_options' must be an object", "stream_options"
                )
            include_usage = bool(stream and (options or {}).get("include_usage"))
            job, prompt_tokens = await self._submit(request, body, chat)
        except ApiError as exc:
            self._record(request, exc.status, error=exc.message, started=started)
            raise
        except NibbleError as exc:
            error = ApiError.from_nibble(exc)
            self._record(request, error.status, error=error.message, started=started)
            raise error from None
        answer = _Answer(self, request, job, model_name, chat, started, endpoint)
        answer.prompt_tokens = prompt_tokens
        try:
            first = await answer.first()
        except ApiError as exc:
            self._record(request, exc.status, error=exc.message, started=started)
            raise
        if stream:
            return _sse_response(answer.sse(first, include_usage), job)
        from starlette.responses import JSONResponse

        return JSONResponse(await answer.whole(first))

    async def _submit(
        self, request: Any, body: dict[str, Any], chat: bool
    ) -> tuple[Job, int]:
        loaded = self.queue.loaded
        if loaded is None:
            raise NoModelError()
        tokenizer = loaded.tokenizer
        if chat:
            messages: Any = chat_messages(body)
            raw = not has_chat_template(tokenizer)
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ApiError(
                    400,
                    "'prompt' must be one string (several prompts and token ids "
                    "are not supported)",
                    "prompt",
                )
            messages, raw = prompt, True
        stop = stop_strings(body)
        presence = float(read_field(body, "presence_penalty", (int, float), 0, -2, 2))
        frequency = float(read_field(body, "frequency_penalty", (int, float), 0, -2, 2))
        limit = context_length(loaded.model)
        prompt_tokens = await asyncio.to_thread(
            _count_prompt_tokens, tokenizer, messages, raw
        )
        if limit is not None and prompt_tokens >= limit:
            raise ApiError(
                400,
                f"the prompt is {prompt_tokens} tokens, longer than the model's "
                f"context of {limit} tokens",
                "messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        left = (limit - prompt_tokens) if limit is not None else 1_000_000
        asked = read_field(body, "max_completion_tokens", int, None, 1, 1_000_000)
        if asked is None:
            asked = read_field(body, "max_tokens", int, None, 1, 1_000_000)
        if asked is None and not chat:
            asked = 16  # OpenAI's default for completions
        settings = sampling(body, min(asked or left, left, 1_000_000))
        if self.config.log_prompts:
            logger.info("prompt from %s: %r", _client(request.scope), messages)
        job = self.queue.submit(
            GenerationRequest(
                messages,
                settings,
                raw=raw,
                source="server",
                client=_client(request.scope),
                stop=stop,
                presence_penalty=presence,
                frequency_penalty=frequency,
            )
        )
        self._jobs.add(job)
        return job, prompt_tokens

    def _record(
        self,
        request: Any,
        status: int,
        *,
        started: float | None = None,
        error: str | None = None,
        **values: Any,
    ) -> None:
        self.record(
            _client(request.scope),
            request.url.path,
            status,
            started=started,
            error=error,
            **values,
        )

    def record(
        self,
        client: str,
        endpoint: str,
        status: int,
        *,
        started: float | None = None,
        error: str | None = None,
        **values: Any,
    ) -> None:
        """Log one request and tell `on_request`."""
        record = RequestRecord(
            time=time.time(),
            client=client,
            endpoint=endpoint,
            status=status,
            total_s=time.perf_counter() - started if started else 0.0,
            error=error,
            **values,
        )
        logger.info(
            "%s %s %d %s",
            record.client,
            record.endpoint,
            status,
            error or f"{record.prompt_tokens}+{record.completion_tokens} tokens",
        )
        if self.on_request is not None:
            try:
                self.on_request(record)
            except Exception:  # a listener's bug must not fail the request
                logger.debug("request listener failed", exc_info=True)


def _count_prompt_tokens(tokenizer: Any, messages: Any, raw: bool) -> int:
    try:
        text = build_prompt(tokenizer, messages, raw)
    except GenerationError as exc:
        raise ApiError(400, f"{exc.message}; {exc.hint}") from None
    return len(tokenizer(text, add_special_tokens=raw)["input_ids"])


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


class _KeyCheck:
    """ASGI middleware: 401 unless the key matches (all paths but /health).

    A plain ASGI class, not BaseHTTPMiddleware, which would get between a
    streamed answer and the client's disconnect.
    """

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"
            and scope["path"] != "/health"
        ):
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1")
                for k, v in scope["headers"]
            }
            if not self.server.key_matches(headers):
                from starlette.responses import JSONResponse

                error = ApiError(
                    401,
                    "a wrong or missing API key; send it as 'Authorization: Bearer KEY'",
                    code="invalid_api_key",
                )
                self.server.record(
                    _client(scope), scope["path"], 401, error=error.message
                )
                await JSONResponse(error.body(), 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _finish_reason(stats: GenerationStats) -> str:
    return "length" if stats.stop_reason == STOP_MAX else "stop"


_pending: set[asyncio.Task[None]] = set()  # records waiting for their job's end


class _Answer:
    """One job's output, read on the event loop without blocking it."""

    def __init__(
        self,
        server: Server,
        request: Any,
        job: Job,
        model: str,
        chat: bool,
        started: float,
        endpoint: str,
    ) -> None:
        self.server = server
        self.request = request
        self.job = job
        self.model = model
        self.chat = chat
        self.started = started
        self.endpoint = endpoint
        self.prompt_tokens = 0
        self.created = int(time.time())
        prefix = "chatcmpl" if chat else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.stats: GenerationStats | None = None
        self.first_token_at: float | None = None
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._wake.set)

        job.on_item = wake

    async def next(self) -> str | GenerationStats | None:
        """The job's next item (None at the end); GenerationError as ApiError."""
        while True:
            self._wake.clear()
            try:
                item = self.job.next_item(timeout=0)
            except TimeoutError:
                await self._wake.wait()
                continue
            except NoModelError as exc:
                raise ApiError.from_nibble(exc) from None
            except GenerationError as exc:
                raise ApiError(
                    500, f"{exc.message}", code="generation_failed"
                ) from None
            if isinstance(item, GenerationStats):
                self.stats = item
            elif isinstance(item, str) and self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            return item

    async def first(self) -> str | GenerationStats | None:
        """Wait for the job's first item; a client that leaves meanwhile cancels it."""
        watcher = asyncio.create_task(self._watch_disconnect())
        try:
            return await self.next()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                self.job.cancel()
                return

    async def _items(self, first: Any) -> AsyncIterator[str]:
        item = first
        while item is not None:
            if isinstance(item, str):
                yield item
            item = await self.next()

    def _usage(self) -> dict[str, int]:
        stats = self.stats or GenerationStats()
        prompt = stats.prompt_tokens or self.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": stats.new_tokens,
            "total_tokens": prompt + stats.new_tokens,
        }

    def _record(self, status: int, error: str | None = None) -> None:
        stats = self.stats or GenerationStats()
        self.server._record(
            self.request,
            status,
            started=self.started,
            error=error,
            model=self.model,
            prompt_tokens=stats.prompt_tokens or self.prompt_tokens,
            completion_tokens=stats.new_tokens,
            ttft_s=(self.first_token_at - self.started)
            if self.first_token_at
            else None,
            tokens_per_s=stats.tokens_per_s,
            wait_s=self.job.wait_s,
            finish_reason=_finish_reason(stats) if self.stats else None,
        )

    def _record_when_done(self, status: int, error: str | None) -> None:
        """Record now, or once a cancelled job has told how many tokens it made."""
        if self.stats is not None:
            self._record(status, error)
            return

        async def drain() -> None:
            with contextlib.suppress(ApiError):
                while await self.next() is not None:
                    pass
            self._record(status, error)

        task = asyncio.get_running_loop().create_task(drain())
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    async def whole(self, first: Any) -> dict[str, Any]:
        """The non-streamed answer; a client that leaves stops the generation."""
        watcher = asyncio.create_task(self._watch_disconnect())
        try:
            text = "".join([chunk async for chunk in self._items(first)])
        except ApiError as exc:
            self._record(exc.status, exc.message)
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        stats = self.stats or GenerationStats()
        if stats.stop_reason == STOP_STOPPED:
            self._record(499, "the client went away")
        else:
            self._record(200)
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(stats)}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = None
        else:
            choice["text"] = text
            choice["logprobs"] = None
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self._usage(),
        }

    def _chunk(self, choice: dict[str, Any] | None, usage: bool) -> str:
        data: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice] if choice is not None else [],
        }
        if usage:
            data["usage"] = self._usage() if choice is None else None
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _piece(self, text: str | None, finish: str | None, role: bool = False) -> dict:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
        return {
            "index": 0,
            "text": text or "",
            "logprobs": None,
            "finish_reason": finish,
        }

    async def sse(self, first: Any, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: deltas, a chunk with finish_reason, usage, [DONE]."""
        status, error = 499, "the client went away"
        try:
            if self.chat:
                yield self._chunk(self._piece("", None, role=True), include_usage)
            async for text in self._items(first):
                yield self._chunk(self._piece(text, None), include_usage)
            stats = self.stats or GenerationStats()
            if stats.stop_reason == STOP_STOPPED:
                return
            finish = self._piece(None if self.chat else "", _finish_reason(stats))
            yield self._chunk(finish, include_usage)
            if include_usage:
                yield self._chunk(None, True)
            yield "data: [DONE]\n\n"
            status, error = 200, None
        except ApiError as exc:  # headers are sent: the error goes in the stream
            status, error = exc.status, exc.message
            yield f"data: {json.dumps(exc.body())}\n\n"
        finally:
            self.job.cancel()  # no-op once done; stops it if the client left
            self._record_when_done(status, error)


@functools.cache
def _sse_response_class() -> Any:
    from starlette.responses import StreamingResponse

    class SseResponse(StreamingResponse):
        """Streams a job's events; whatever ends the response ends the job."""

        def __init__(self, content: Any, job: Job) -> None:
            super().__init__(
                content,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            self.job = job

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.job.cancel()

    return SseResponse


def _sse_response(content: Any, job: Job) -> Any:
    return _sse_response_class()(content, job)


# -- running it -------------------------------------------------------------------


class ServerThread:
    """uvicorn on a background thread: start(), url, stop(). For the window and tests."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Listen; returns once the socket accepts connections.

        Raises
        ------
        NibbleError
            The port is taken or the address cannot be bound.
        """
        import uvicorn

        config = self.server.config
        self._uvicorn = uvicorn.Server(_uvicorn_config(self.server))
        self._uvicorn.install_signal_handlers = lambda: None  # only the main thread may

        def run() -> None:
            try:
                self._uvicorn.run()
            except BaseException as exc:  # SystemExit on a bind failure
                self.error = exc

        self._thread = threading.Thread(target=run, name="nibble-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise NibbleError(
                    f"cannot listen on {config.host}:{config.port}",
                    "the port may be in use; pick another with --port",
                )
            time.sleep(0.02)

    @property
    def port(self) -> int:
        """The port it listens on (the real one when the config asked for 0)."""
        servers = getattr(self._uvicorn, "servers", None) or []
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.server.config.port

    @property
    def url(self) -> str:
        config = self.server.config
        return ServerConfig(config.host, self.port, config.api_key).base_url

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop listening; running answers are cancelled. False if it outlived timeout."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        self.server.cancel_jobs()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._uvicorn.force_exit = True
                thread.join(1.0)
            return not thread.is_alive()
        return True


def curl_line(base_url: str, model: str, api_key: str | None = None) -> str:
    """One line a user can paste to check the server."""
    key = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Hello!"}]}
    )
    return (
        f"curl {base_url}/chat/completions -H 'Content-Type: application/json'{key} "
        f"-d '{body}'"
    )


def python_snippet(base_url: str, model: str, api_key: str | None = None) -> str:
    """The same request through the official openai package."""
    return (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}", api_key="{api_key or "none"}")\n'
        "answer = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        '    messages=[{"role": "user", "content": "Hello!"}],\n'
        ")\n"
        "print(answer.choices[0].message.content)\n"
    )


def env_snippet(base_url: str, api_key: str | None = None) -> str:
    """The variables many OpenAI-speaking tools read."""
    return f"export OPENAI_BASE_URL={base_url}\nexport OPENAI_API_KEY={api_key or 'none'}\n"


def _uvicorn_config(server: Server) -> Any:
    import uvicorn

    return uvicorn.Config(
        server.app,
        host=server.config.host,
        port=server.config.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )


def serve_forever(server: Server, ready: Callable[[str], Any] | None = None) -> None:
    """Serve on this (main) thread until Ctrl+C; answers in flight are stopped.

    Raises
    ------
    NibbleError
        The address cannot be bound (e.g. the port is in use).
    """
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and ready is not None:
                ready(server.config.base_url)

        async def shutdown(self, sockets: Any = None) -> None:
            server.cancel_jobs()  # streams end within a token, not at max_tokens
            await super().shutdown(sockets)

    runner = _Server(_uvicorn_config(server))
    try:
        runner.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled
        pass
    except SystemExit:
        runner.started = False
    if not runner.started:
        raise NibbleError(
            f"cannot listen on {server.config.host}:{server.config.port}",
            "the port may be in use; pick another with --port",
        )
