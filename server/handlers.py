"""Serving: a validated OpenAI request in, a job in the core's GenerationQueue, and
the answer out as one JSON body or as server-sent events.

Every answer is a job in the same queue the window's chat submits to, so server
requests and chat messages share the model in arrival order. The model is read
from the queue on every request: loading another model switches what is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import GenerationError, ModelNotFoundError, NibbleError
from core.generation import tools as tools_core
from core.generation.constrain import GRAMMAR, Constraint, ConstraintError
from core.generation.decode import (
    STOP_MAX,
    STOP_STOPPED,
    GenerationStats,
    build_prompt,
    context_length,
    has_chat_template,
)
from core.generation.queue import GenerationQueue, GenerationRequest, Job, NoModelError
from core.generation.switch import ModelSwitcher, UnfitModelError
from core.settings import GenerationSettings
from server.protocol import (
    ApiError,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    FunctionCall,
    FunctionDelta,
    ModelCard,
    ModelList,
    NamedToolChoice,
    ResponseFormat,
    ToolCallDelta,
    ToolCallOut,
    Usage,
    check_numbers,
    dump,
    refuse_unsupported,
    stop_strings,
)

logger = logging.getLogger(__name__)

OWNER = "nibble"


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
    job_id: int | None = None
    """The generation job that answered (None when it was refused before one)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Record = Callable[..., None]
"""record(client, endpoint, status, *, started, error, **RequestRecord fields)."""


def client_of(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


class Serving:
    """The answers: names, status, chat and text completions over one queue.

    Parameters
    ----------
    queue
        The generation queue over the loaded model (shared with the chat).
    served_model_name
        Another name the model answers to, besides its hub id or folder name.
    record
        Logs one request (see `Server.record`).
    log_prompts
        Log each prompt at INFO (off by default: prompts may be private).
    switcher
        Loads any servable model a request names; without one, only the loaded
        model is served.
    default_max_tokens
        A chat answer's length when the request names none: without it, one
        request could ramble through the whole context while the chat waits.
    """

    def __init__(
        self,
        queue: GenerationQueue,
        record: Record,
        served_model_name: str | None = None,
        log_prompts: bool = False,
        switcher: ModelSwitcher | None = None,
        default_max_tokens: int = 1024,
    ) -> None:
        self.default_max_tokens = default_max_tokens
        self.switcher = switcher
        self._switching = asyncio.Lock()  # a request's model stays until it is queued
        self.queue = queue
        self.record = record
        self.served_model_name = served_model_name
        self.log_prompts = log_prompts
        self.started = int(time.time())
        self.jobs: weakref.WeakSet[Job] = weakref.WeakSet()  # not the chat's

    def cancel_jobs(self) -> None:
        """Stop this server's running and waiting answers (the chat's go on)."""
        for job in list(self.jobs):
            job.cancel()

    # -- names --

    def model_names(self) -> list[str]:
        """What clients may put in 'model': the hub id or folder name, then the alias."""
        loaded = self.queue.loaded
        if loaded is None:
            return []
        ref = loaded.ref
        names = [ref.repo_id or ref.name]
        alias = self.served_model_name
        if alias and alias not in names:
            names.append(alias)
        return names

    def served_names(self) -> list[str]:
        """What /v1/models lists: the loaded model's names, then what can be loaded."""
        names = self.model_names()
        if self.switcher is not None:
            names += [n for n in self.switcher.directory() if n not in names]
        return names

    async def models(self) -> dict[str, Any]:
        names = await asyncio.to_thread(self.served_names)
        loaded = set(self.model_names())
        cards = [
            self.model_card(n, n in loaded if self.switcher else None) for n in names
        ]
        return dump(ModelList(data=cards))

    def model_card(self, name: str, loaded: bool | None = None) -> ModelCard:
        card = ModelCard(id=name, created=self.started, owned_by=OWNER)
        if loaded is not None:
            card.loaded = loaded
        return card

    async def model(self, model_id: str) -> dict[str, Any]:
        names = await asyncio.to_thread(self.served_names)
        if model_id not in names:
            served = ", ".join(names) if names else "none (no model is loaded)"
            raise ApiError(
                404,
                f"the model '{model_id}' is not served here; served: {served}",
                param="model",
                code="model_not_found",
            )
        loaded = model_id in self.model_names() if self.switcher else None
        return dump(self.model_card(model_id, loaded))

    async def pick_model(self, wanted: str | None) -> str:
        """The name to answer with, once the model it names is loaded."""
        names = self.model_names()
        if self.switcher is not None and wanted is not None and wanted not in names:
            await self._switch(wanted)
            return wanted
        if not names:
            raise ApiError(
                503, "no model is loaded; load a model first", code="no_model_loaded"
            )
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

    async def _switch(self, wanted: str) -> None:
        assert self.switcher is not None
        try:
            target = self.switcher.resolve(wanted)
        except ModelNotFoundError as exc:
            raise ApiError(
                404,
                f"{exc.message}; {exc.hint}",
                param="model",
                code="model_not_found",
            ) from None
        except NibbleError as exc:
            raise ApiError(400, f"{exc.message}; {exc.hint}", param="model") from None
        if self.switcher.is_loaded(target):
            return
        try:
            await asyncio.to_thread(self.switcher.ensure, target)
        except UnfitModelError as exc:
            raise ApiError(
                400, f"{exc.message}; {exc.hint}", param="model", code="model_unfit"
            ) from None
        except NibbleError as exc:
            raise ApiError(
                400,
                f"{target.name} could not be loaded: {exc.message}",
                param="model",
                code="model_load_failed",
            ) from None

    def status(self) -> dict[str, Any]:
        """Model, quantization, true bytes, and the running and waiting requests."""
        loaded = self.queue.loaded
        data: dict[str, Any] = {
            "model": None,
            "served_names": self.model_names(),
            "loading": self.switcher.loading if self.switcher else None,
            "queue": self.queue.status(),
        }
        if loaded is not None:
            data["model"] = loaded.ref.repo_id or loaded.ref.name
            data["quantization"] = loaded.quant.label()
            data["true_bytes"] = loaded.report.true_bytes
            data["device"] = loaded.report.device
            data["context_length"] = context_length(loaded.model)
        return data

    # -- answers --

    async def chat(self, body: ChatCompletionRequest, request: Any) -> Any:
        return await self._complete(body, request, chat=True)

    async def complete(self, body: CompletionRequest, request: Any) -> Any:
        return await self._complete(body, request, chat=False)

    async def _complete(self, body: Any, request: Any, chat: bool) -> Any:
        started = request.scope.get("state", {}).get("started", time.perf_counter())
        try:
            check_numbers(body)
            refuse_unsupported(body)
            stream = bool(body.stream)
            include_usage = bool(
                stream and body.stream_options and body.stream_options.include_usage
            )
            async with self._switching:
                model_name = await self.pick_model(body.model)
                job, prompt_tokens, plan = await self._submit(
                    request, body, chat, model_name
                )
        except NibbleError as exc:
            raise ApiError.from_nibble(exc) from None
        answer = _Answer(self, request, job, model_name, chat, started, plan)
        answer.prompt_tokens = prompt_tokens
        first = await answer.first()
        if stream:
            return _sse_response(answer.sse(first, include_usage), job)
        from starlette.responses import JSONResponse

        return JSONResponse(await answer.whole(first))

    async def _submit(
        self, request: Any, body: Any, chat: bool, model_name: str
    ) -> tuple[Job, int, ToolPlan | None]:
        loaded = self.queue.loaded
        if loaded is None:
            raise NoModelError()
        tokenizer = loaded.tokenizer
        plan = tool_plan(body, tokenizer, model_name) if chat else None
        if chat:
            messages: Any = chat_messages(body.messages)
            raw = not has_chat_template(tokenizer)
        else:
            messages, raw = completion_prompt(body.prompt), True
        constraint = response_constraint(body.response_format)
        if plan is not None and plan.constraint is not None:
            constraint = plan.constraint
        if constraint is not None:
            await asyncio.to_thread(_check_constraint, constraint)
        tools = plan.tools if plan is not None else None
        stop = stop_strings(body.stop)
        limit = context_length(loaded.model)
        if limit is not None:
            _refuse_by_length(tokenizer, messages, limit, chat)
        prompt_tokens = await asyncio.to_thread(
            _count_prompt_tokens, tokenizer, messages, raw, tools
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
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if asked is None:
            # OpenAI's default for completions; a bounded answer for chats.
            asked = self.default_max_tokens if chat else 16
        settings = sampling(body, min(asked or left, left, 1_000_000))
        if self.log_prompts:
            logger.info("prompt from %s: %r", client_of(request.scope), messages)
        job = self.queue.submit(
            GenerationRequest(
                messages,
                settings,
                raw=raw,
                source="server",
                client=client_of(request.scope),
                endpoint=request.url.path,
                stop=stop,
                presence_penalty=float(body.presence_penalty or 0),
                frequency_penalty=float(body.frequency_penalty or 0),
                constraint=constraint,
                tools=tools,
            )
        )
        self.jobs.add(job)
        return job, prompt_tokens, plan


# -- reading a request ---------------------------------------------------------------


def sampling(body: Any, max_new: int) -> GenerationSettings:
    """GenerationSettings from OpenAI's fields (temperature 0 is greedy).

    A field the request leaves out takes the default the window and `generate` use
    (temperature 0.7, top-p 0.9, top-k 50), not OpenAI's 1.0 / 1.0 / all: a small
    model sampled from its whole distribution answered "Say hi" with
    "SODIARIA-LIMINA".
    """
    usual = GenerationSettings()
    temperature = usual.temperature if body.temperature is None else body.temperature
    top_p = usual.top_p if body.top_p is None else body.top_p
    return GenerationSettings(
        max_new_tokens=max_new,
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=usual.top_k if body.top_k is None else body.top_k,
        repetition_penalty=float(body.repetition_penalty or 1.0),
        seed=body.seed,
        greedy=temperature == 0,
        prompt_lookup=bool(body.prompt_lookup),
    )


def completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(
            400,
            "'prompt' must be one string (several prompts and token ids "
            "are not supported)",
            "prompt",
        )
    return prompt


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """`messages` as the chat template reads them: texts, calls and tool results."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.role
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            why = (
                "send tool results with role 'tool'"
                if role == "function"
                else "use system, user, assistant or tool"
            )
            raise ApiError(400, f"'{where}.role' {role!r} is refused: {why}", where)
        item: dict[str, Any] = {
            "role": role,
            "content": message_text(message.content, where),
        }
        if message.tool_calls:
            if role != "assistant":
                raise ApiError(
                    400, f"'{where}.tool_calls' belongs to an assistant message", where
                )
            item["tool_calls"] = [
                call.model_dump(include={"id", "type", "function"})
                for call in message.tool_calls
            ]
        if role == "tool":
            item["tool_call_id"] = message.tool_call_id or ""
            if message.name:
                item["name"] = message.name
        out.append(item)
    return out


def message_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image", "input_audio", "file"):
            raise ApiError(
                400,
                f"'{where}.content' has an {kind} part: this model reads text only",
                where,
                code="unsupported_content",
            )
        else:
            raise ApiError(400, f"'{where}.content' has a part of type {kind!r}", where)
    return "".join(texts)


def response_constraint(response_format: ResponseFormat | None) -> Constraint | None:
    """`response_format` as a Constraint (None for plain text)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return Constraint.json_object()
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise ApiError(
            400,
            "'response_format.json_schema.schema' is required for type json_schema",
            "response_format",
        )
    return Constraint.json_schema(spec.schema_, spec.name)


def _check_constraint(constraint: Constraint) -> None:
    try:
        constraint.check()
    except ConstraintError as exc:
        param = "tools" if constraint.kind == GRAMMAR else "response_format"
        raise ApiError(400, f"{exc.message}; {exc.hint}", param) from None


@dataclass
class ToolPlan:
    """How this request's tools are offered and read back."""

    tools: tuple[dict[str, Any], ...]
    fmt: tools_core.ToolFormat
    constraint: Constraint | None
    """A grammar that forces a call ('required' or a named function), else None."""
    parallel: bool


def tool_plan(
    body: ChatCompletionRequest, tokenizer: Any, model_name: str
) -> ToolPlan | None:
    """The tools to show the model and how to read its calls (None: no tools).

    Raises
    ------
    ApiError
        The template has no tool support, a tool's parameters schema cannot be
        enforced, or tool_choice names a function that is not in 'tools'.
    """
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none", "auto"):
            raise ApiError(400, "'tool_choice' needs 'tools'", "tool_choice")
        return None
    if choice == "none":
        return None
    try:
        fmt = tools_core.check_tools(tokenizer, model_name)
    except tools_core.ToolsError as exc:
        raise ApiError(400, f"{exc.message}; {exc.hint}", "tools") from None
    specs = [tool.model_dump(exclude_none=True) for tool in body.tools]
    for i, tool in enumerate(body.tools):
        schema = tool.function.parameters or {"type": "object"}
        try:
            Constraint.json_schema(schema, tool.function.name).check()
        except ConstraintError as exc:
            raise ApiError(
                400,
                f"'tools[{i}].function.parameters': {exc.message}",
                f"tools[{i}].function.parameters",
            ) from None
    parallel = body.parallel_tool_calls is not False
    forced: list[dict[str, Any]] | None = None
    if choice == "required":
        forced = specs
    elif isinstance(choice, NamedToolChoice):
        forced = [s for s in specs if s["function"]["name"] == choice.function.name]
        if not forced:
            names = ", ".join(s["function"]["name"] for s in specs)
            raise ApiError(
                400,
                f"'tool_choice' names the function '{choice.function.name}', which is "
                f"not in 'tools' ({names})",
                "tool_choice",
            )
        parallel = False
    constraint = None
    if forced is not None:
        constraint = Constraint.lark(fmt.grammar(forced, parallel), "tool call")
    return ToolPlan(tuple(specs), fmt, constraint, parallel)


def _text_chars(value: Any) -> int:
    """Characters in every string of a prompt or a list of messages."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_text_chars(v) for v in value)
    return 0


_LONGEST_TOKEN: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_LONGEST_TOKEN_LOCK = threading.Lock()


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of this tokenizer stands for (an upper bound).

    Worked out once per tokenizer: reading the vocabulary holds the GIL for about
    25 ms, and 8 clients arriving at once each did it while the window painted.
    """
    with _LONGEST_TOKEN_LOCK:
        known = _LONGEST_TOKEN.get(tokenizer)
        if known is None:
            vocab = tokenizer.get_vocab()
            known = _LONGEST_TOKEN[tokenizer] = max(map(len, vocab), default=1) or 1
        return known


def _refuse_by_length(tokenizer: Any, messages: Any, limit: int, chat: bool) -> None:
    """A prompt that cannot fit, refused before the tokenizer sees it.

    Tokenizing a few MiB costs hundreds of MB that the allocator keeps; no token
    stands for more characters than the longest in the vocabulary (byte-level
    tokens even stand for bytes, of which a character has one or more), so a
    prompt of more than `limit` × that many characters (twice that, for margin)
    is too long for certain.
    """
    chars = _text_chars(messages)
    bound = 2 * limit * longest_token_chars(tokenizer)
    if chars > bound:
        raise ApiError(
            400,
            f"the prompt has {chars} characters, far more than the model's context "
            f"of {limit} tokens can hold",
            "messages" if chat else "prompt",
            code="context_length_exceeded",
        )


def _count_prompt_tokens(
    tokenizer: Any, messages: Any, raw: bool, tools: Any = None
) -> int:
    try:
        text = build_prompt(tokenizer, messages, raw, tools)
    except GenerationError as exc:
        raise ApiError(400, f"{exc.message}; {exc.hint}") from None
    return len(tokenizer(text, add_special_tokens=raw)["input_ids"])


# -- one answer ------------------------------------------------------------------------


CUT_OFF = "the answer was cut off before its end: the server stopped serving"


def _finish_reason(stats: GenerationStats) -> str:
    return "length" if stats.stop_reason == STOP_MAX else "stop"


_pending: set[asyncio.Task[None]] = set()  # records waiting for their job's end


class _Answer:
    """One job's output, read on the event loop without blocking it."""

    def __init__(
        self,
        serving: Serving,
        request: Any,
        job: Job,
        model: str,
        chat: bool,
        started: float,
        plan: ToolPlan | None = None,
    ) -> None:
        self.plan = plan
        self.serving = serving
        self.request = request
        self.job = job
        self.model = model
        self.chat = chat
        self.started = started
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

    def _usage(self) -> Usage:
        stats = self.stats or GenerationStats()
        prompt = stats.prompt_tokens or self.prompt_tokens
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=stats.new_tokens,
            total_tokens=prompt + stats.new_tokens,
        )

    def _calls(self, text: str) -> tuple[str, list[ToolCallOut]]:
        """The answer's content and the tool calls in it."""
        assert self.plan is not None
        loaded = self.serving.queue.loaded
        tokenizer = loaded.tokenizer if loaded is not None else None
        content, calls = tools_core.parse_calls(
            tokenizer, self.plan.fmt, text, tools=self.plan.tools
        )
        if not self.plan.parallel:
            calls = calls[:1]
        return content, [
            ToolCallOut(
                id=call.id,
                function=FunctionCall(name=call.name, arguments=call.arguments),
            )
            for call in calls
        ]

    def _record(
        self, status: int, error: str | None = None, finish: str | None = None
    ) -> None:
        stats = self.stats or GenerationStats()
        self.serving.record(
            client_of(self.request.scope),
            self.request.url.path,
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
            finish_reason=finish or (_finish_reason(stats) if self.stats else None),
            job_id=self.job.id,
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
            exc.recorded = True
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        stats = self.stats or GenerationStats()
        finish = _finish_reason(stats)
        content: str | None = text
        calls: list[ToolCallOut] | None = None
        if self.plan is not None:
            content, found = self._calls(text)
            if found:
                calls, finish = found, "tool_calls"
                content = content or None
        if stats.stop_reason == STOP_STOPPED:
            # The client left, or the server is stopping: a client still there
            # learns the answer was cut, never a finish_reason of "stop".
            self._record(499, "the answer was stopped before its end")
            error = ApiError(503, CUT_OFF, code="server_stopped")
            error.recorded = True
            raise error
        self._record(200, finish=finish)
        if self.chat:
            return dump(
                ChatCompletion(
                    id=self.id,
                    created=self.created,
                    model=self.model,
                    choices=[
                        ChatChoice(
                            message=AssistantMessage(content=content, tool_calls=calls),
                            finish_reason=finish,
                        )
                    ],
                    usage=self._usage(),
                )
            )
        return dump(
            Completion(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[CompletionChoice(text=text, finish_reason=finish)],
                usage=self._usage(),
            )
        )

    def _chunk(
        self, text: str | None, finish: str | None, usage: bool, role: bool = False
    ) -> str:
        """One event; with `usage` every chunk has the key, null but in the last."""
        if self.chat:
            choices = [
                ChunkChoice(
                    delta=Delta(role="assistant" if role else None, content=text),
                    finish_reason=finish,
                )
            ]
            shape: Any = ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=choices
            )
        else:
            shape = Completion(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[CompletionChoice(text=text or "", finish_reason=finish)],
            )
        return self._event(shape, usage)

    def _usage_chunk(self) -> str:
        shape: Any = (
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[]
            )
            if self.chat
            else Completion(
                id=self.id, created=self.created, model=self.model, choices=[]
            )
        )
        shape.usage = self._usage()
        return self._event(shape, True)

    @staticmethod
    def _event(shape: Any, usage: bool) -> str:
        data = dump(shape)
        if not usage:
            data.pop("usage", None)
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def sse(self, first: Any, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: deltas, a chunk with finish_reason, usage, [DONE].

        With tools, text that may begin a call is held back; the calls follow as
        `tool_calls` deltas (id and name first, then the arguments in pieces).
        """
        status, error = 499, "the client went away"
        held = _Held(self.plan)
        try:
            if self.chat:
                yield self._chunk("", None, include_usage, role=True)
            async for text in self._items(first):
                shown = held.feed(text)
                if shown:
                    yield self._chunk(shown, None, include_usage)
            stats = self.stats or GenerationStats()
            if stats.stop_reason == STOP_STOPPED:
                error = ApiError(503, CUT_OFF, code="server_stopped")
                yield f"data: {json.dumps(error.body())}\n\n"
                return
            finish = _finish_reason(stats)
            if self.plan is not None:
                rest, calls = self._calls(held.text)
                tail = rest[held.shown :] if rest.startswith(held.sent) else ""
                if tail:
                    yield self._chunk(tail, None, include_usage)
                for index, call in enumerate(calls):
                    for delta in _call_deltas(index, call):
                        yield self._delta_event(delta, include_usage)
                if calls:
                    finish = "tool_calls"
            yield self._chunk(None if self.chat else "", finish, include_usage)
            if include_usage:
                yield self._usage_chunk()
            yield "data: [DONE]\n\n"
            status, error = 200, None
        except ApiError as exc:  # headers are sent: the error goes in the stream
            status, error = exc.status, exc.message
            yield f"data: {json.dumps(exc.body())}\n\n"
        finally:
            self.job.cancel()  # no-op once done; stops it if the client left
            self._record_when_done(status, error)

    def _delta_event(self, delta: Delta, usage: bool) -> str:
        shape = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(delta=delta)],
        )
        return self._event(shape, usage)


ARGUMENT_PIECE = 16
"""Characters of a call's arguments per streamed delta."""


def _call_deltas(index: int, call: ToolCallOut) -> list[Delta]:
    """OpenAI's stream of one call: id, type and name first, then the arguments."""
    deltas = [
        Delta(
            tool_calls=[
                ToolCallDelta(
                    index=index,
                    id=call.id,
                    type="function",
                    function=FunctionDelta(name=call.function.name, arguments=""),
                )
            ]
        )
    ]
    arguments = call.function.arguments
    for start in range(0, len(arguments), ARGUMENT_PIECE):
        piece = arguments[start : start + ARGUMENT_PIECE]
        deltas.append(
            Delta(
                tool_calls=[
                    ToolCallDelta(index=index, function=FunctionDelta(arguments=piece))
                ]
            )
        )
    return deltas


class _Held:
    """The streamed text of an answer that may call tools.

    Text is shown as it comes until a call may begin: from the first character
    that could start a call marker, it is held until the answer ends and is parsed.
    A forced call (a grammar) shows nothing as text.
    """

    def __init__(self, plan: ToolPlan | None) -> None:
        self.plan = plan
        self.text = ""
        self.sent = ""
        self.stopped = plan is not None and plan.constraint is not None

    @property
    def shown(self) -> int:
        return len(self.sent)

    def feed(self, chunk: str) -> str:
        self.text += chunk
        if self.plan is None:
            self.sent += chunk
            return chunk
        if self.stopped:
            return ""
        fmt = self.plan.fmt
        start = fmt.call_start(self.text)
        if start >= 0:
            self.stopped = True
            safe = start
        else:
            safe = len(self.text) - _partial_marker(self.text, fmt.starts)
        out = self.text[len(self.sent) : safe] if safe > len(self.sent) else ""
        self.sent += out
        return out


def _partial_marker(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could begin one of `markers`."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), 0, -1):
            if marker.startswith(text[-size:]):
                longest = max(longest, size)
                break
    return longest


def _sse_response(content: Any, job: Job) -> Any:
    from starlette.responses import StreamingResponse

    class SseResponse(StreamingResponse):
        """Streams a job's events; whatever ends the response ends the job."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                job.cancel()

    return SseResponse(
        content,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
