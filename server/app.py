"""The OpenAI-compatible HTTP API (FastAPI): routes, the API key, body limits, CORS,
errors in OpenAI's shape, and the request log. The answers themselves are made in
server/handlers.py; server/runner.py runs it with uvicorn.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.generation.queue import GenerationQueue
from core.generation.switch import ModelSwitcher
from server.handlers import RequestRecord, Serving, client_of
from server.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    validation_error,
)
from server.runner import ServerConfig, is_loopback

logger = logging.getLogger(__name__)

_BODY_MODELS: dict[str, type[Any]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


class Server:
    """The API: its config, the answers it serves, and who is told of each request.

    Parameters
    ----------
    queue
        The generation queue over the loaded model (shared with the chat).
    config
        Bind address, key, names and limits.
    on_request
        Called with a RequestRecord after every API request (from the server's
        thread); the window logs them and marks them on the Monitor.
    switcher
        Loads any servable model a request names (see core.generation.switch);
        without one, only the model in the queue is served.
    """

    def __init__(
        self,
        queue: GenerationQueue,
        config: ServerConfig | None = None,
        on_request: Callable[[RequestRecord], Any] | None = None,
        switcher: ModelSwitcher | None = None,
    ) -> None:
        self.queue = queue
        self.config = config or ServerConfig()
        self.on_request = on_request
        self.serving = Serving(
            queue,
            self.record,
            served_model_name=self.config.served_model_name,
            log_prompts=self.config.log_prompts,
            switcher=switcher,
            default_max_tokens=self.config.default_max_tokens,
        )
        self.app = self._build_app()

    def cancel_jobs(self) -> None:
        """Stop this server's running and waiting answers (the chat's go on)."""
        self.serving.cancel_jobs()

    def model_names(self) -> list[str]:
        """What clients may put in 'model': the hub id or folder name, then the alias."""
        return self.serving.model_names()

    def status(self) -> dict[str, Any]:
        """Model, quantization, true bytes, and the running and waiting requests."""
        return self.serving.status()

    def key_matches(self, headers: dict[str, str]) -> bool:
        """Whether the request carries the key (compared in constant time)."""
        key = self.config.api_key
        if not key:
            return True
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            given = headers.get("x-api-key", "")
        return hmac.compare_digest(given.strip().encode(), key.encode())

    def host_allowed(self, headers: dict[str, str]) -> bool:
        """Whether a keyless loopback server may answer a request with this Host."""
        config = self.config
        if config.api_key or not is_loopback(config.host):
            return True
        host = headers.get("host", "").strip().lower()
        if host.startswith("["):
            name = host[1 : host.find("]")] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        allowed = {h.lower().strip("[]") for h in (config.allowed_hosts or [])}
        return (
            name in allowed
            or name == "localhost"
            or name.endswith(".localhost")
            or (bool(name) and is_loopback(name))
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

    # -- the app --

    def _build_app(self) -> FastAPI:
        # A body sent without a Content-Type is read as JSON, as it always was here.
        app = FastAPI(
            title="Nibble",
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
            strict_content_type=False,
        )
        app.add_middleware(_BodyLimit, server=self)
        app.add_middleware(_KeyCheck, server=self)
        if self.config.cors_origins:
            from fastapi.middleware.cors import CORSMiddleware

            app.add_middleware(
                CORSMiddleware,
                allow_origins=list(self.config.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
            )
        serving = self.serving

        def refused(request: Request, error: ApiError) -> JSONResponse:
            if not error.recorded and request.url.path in _BODY_MODELS:
                self.record(
                    client_of(request.scope),
                    request.url.path,
                    error.status,
                    started=request.scope.get("state", {}).get("started"),
                    error=error.message,
                )
            return JSONResponse(error.body(), error.status, headers=error.headers)

        @app.exception_handler(ApiError)
        async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
            return refused(request, exc)

        @app.exception_handler(HTTPException)
        async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
            message = {404: f"no route {request.url.path}", 405: "method not allowed"}
            text = message.get(exc.status_code, str(exc.detail))
            return refused(request, ApiError(exc.status_code, text))

        @app.exception_handler(RequestValidationError)
        async def on_invalid(request: Request, exc: RequestValidationError) -> Any:
            model = _BODY_MODELS.get(request.url.path)
            return refused(request, validation_error(list(exc.errors()), model))

        @app.get("/health")
        async def health() -> dict[str, Any]:
            return {"status": "ok", "model_loaded": self.queue.loaded is not None}

        @app.get("/nibble/status")
        async def status() -> dict[str, Any]:
            return serving.status()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return await serving.models()

        @app.get("/v1/models/{model_id:path}")
        async def model(model_id: str) -> dict[str, Any]:
            return await serving.model(model_id)

        @app.post("/v1/chat/completions")
        async def chat(body: ChatCompletionRequest, request: Request) -> Any:
            return await serving.chat(body, request)

        @app.post("/v1/completions")
        async def completions(body: CompletionRequest, request: Request) -> Any:
            return await serving.complete(body, request)

        return app


def _headers(scope: Any) -> dict[str, str]:
    return {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
    }


class _KeyCheck:
    """ASGI middleware: 401 unless the key matches (all paths but /health).

    A plain ASGI class, not BaseHTTPMiddleware, which would get between a
    streamed answer and the client's disconnect.
    """

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["started"] = time.perf_counter()
        if scope["type"] == "http" and not self.server.host_allowed(_headers(scope)):
            # A keyless server on this machine answers only to its own names: a web
            # page that re-points its domain at 127.0.0.1 (DNS rebinding) is refused.
            error = ApiError(
                403,
                "this server answers only requests addressed to this machine "
                "(Host: localhost or 127.0.0.1); set an API key to serve other names",
                code="host_not_allowed",
            )
            self.server.record(
                client_of(scope), scope["path"], 403, error=error.message
            )
            await JSONResponse(error.body(), 403)(scope, receive, send)
            return
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"
            and scope["path"] != "/health"
            and not self.server.key_matches(_headers(scope))
        ):
            error = ApiError(
                401,
                "a wrong or missing API key; send it as 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )
            self.server.record(
                client_of(scope), scope["path"], 401, error=error.message
            )
            await JSONResponse(error.body(), 401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _BodyLimit:
    """ASGI middleware: 413 for a body over the limit, before any of it is parsed.

    The body is read here (at most `max_body_bytes`) and handed on whole; after it,
    `receive` is the client's own, so a disconnect still reaches the answer.
    """

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.server.config.max_body_bytes
        declared = _headers(scope).get("content-length", "")
        chunks: list[bytes] = []
        size = 0
        too_big = declared.isdigit() and int(declared) > limit
        while not too_big:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app sees an empty body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            too_big = size > limit
            if not message.get("more_body", False):
                break
        if too_big:
            error = ApiError(
                413,
                f"the request body is larger than {limit} bytes",
                code="request_too_large",
            )
            self.server.record(
                client_of(scope), scope["path"], 413, error=error.message
            )
            await JSONResponse(error.body(), 413)(scope, receive, send)
            return
        body = b"".join(chunks)
        refusal = _refuse_body(_headers(scope), body)
        if refusal is not None:
            self.server.record(
                client_of(scope), scope["path"], refusal.status, error=refusal.message
            )
            await JSONResponse(refusal.body(), refusal.status)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


MAX_JSON_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_body(headers: dict[str, str], body: bytes) -> ApiError | None:
    """A 4xx for a POST body no answer can come from, before FastAPI parses it.

    JSON only (a form or text/plain POST is what a web page may send unasked);
    no nesting deeper than any request needs (`[` × 100000 would exhaust the
    parser's recursion); no lone surrogate (half of a UTF-16 pair) in any string,
    which neither the tokenizer nor an error message could encode.
    """
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        return ApiError(
            415,
            f"the body is {kind}, not JSON; send it with "
            "'Content-Type: application/json'",
            code="unsupported_media_type",
        )
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH or _SURROGATE_ESCAPE.search(
        body
    ):
        try:
            data = json.loads(body)
        except RecursionError:
            return _too_deep()
        except ValueError:
            return None  # FastAPI answers malformed JSON itself
        try:
            problem = _walk(data, 0)
        except RecursionError:
            problem = "depth"
        if problem == "depth":
            return _too_deep()
        if problem == "surrogate":
            return ApiError(
                400,
                "a string holds a lone surrogate (half of a UTF-16 pair, like "
                "\\ud800), which is not text; send valid Unicode",
                code="invalid_unicode",
            )
    return None


def _too_deep() -> ApiError:
    return ApiError(
        400,
        f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels",
        code="invalid_json",
    )


def _walk(value: Any, depth: int) -> str | None:
    """'depth' or 'surrogate' for the first problem in a parsed body, else None."""
    if depth > MAX_JSON_DEPTH:
        return "depth"
    if isinstance(value, str):
        return "surrogate" if _HAS_SURROGATE.search(value) else None
    items: Any = ()
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    for item in items:
        problem = _walk(item, depth + 1)
        if problem:
            return problem
    return None


_HAS_SURROGATE = re.compile("[\ud800-\udfff]")
