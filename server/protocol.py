"""OpenAI's request and response shapes as pydantic models, and errors in its shape.

FastAPI validates request bodies against these models; `validation_error` turns the
first problem pydantic finds into the one-line message a client sees. Nothing here
runs a model (see server/handlers.py) or listens (see server/runner.py).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_serializer

from core.errors import NibbleError
from core.generation.queue import NoModelError, QueueFullError

MAX_STOP_STRINGS = 4

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.recorded = False
        """Set once the request log has this error (so it is logged once)."""

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    @classmethod
    def from_nibble(cls, exc: NibbleError) -> ApiError:
        text = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
        if isinstance(exc, QueueFullError):
            seconds = str(max(1, math.ceil(exc.retry_after_s)))
            return cls(429, text, code="queue_full", headers={"Retry-After": seconds})
        if isinstance(exc, NoModelError):
            return cls(503, text, code="no_model_loaded")
        return cls(400, text)


# -- field types ----------------------------------------------------------------

# Strict: a bool or a numeric string is not a number, as OpenAI answers.
Number = Annotated[float, Strict()]
Integer = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


def _number(
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    setting: bool = False,
) -> Any:
    """A numeric field whose range `check_numbers` enforces with core's one check.

    `setting`: it is also a GenerationSettings field, whose own range applies.
    """
    rule = {"low": low, "high": high, "integer": integer, "setting": setting}
    return Field(default=None, json_schema_extra={"number": rule})


class _Shape(BaseModel):
    """OpenAI sends fields this server does not read (user, metadata, store…)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _Open(BaseModel):
    """A shape whose extra fields are kept, e.g. a message's vendor fields."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# -- requests -------------------------------------------------------------------


class FunctionCall(_Open):
    name: Text
    arguments: Text = "{}"
    """The arguments as a JSON text, as OpenAI sends them."""


class ToolCall(_Open):
    id: Text = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    """One message of the history; the role and content are checked when it is read."""

    role: Text
    content: Text | list[Any] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Text | None = None


class FunctionDefinition(_Shape):
    name: Annotated[str, Strict(), Field(min_length=1, max_length=64)]
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: Flag | None = None


class Tool(_Shape):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Shape):
    name: Text


class NamedToolChoice(_Shape):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Shape):
    name: Text = "answer"
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: Flag | None = None


class ResponseFormat(_Shape):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Shape):
    include_usage: Flag | None = None


class _Sampling(_Shape):
    """The fields both endpoints share."""

    # NaN and ±inf reach `check_numbers`, which answers in core's words.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    model: Text | None = None
    stream: Flag | None = False
    stream_options: StreamOptions | None = None
    temperature: Number | None = _number(setting=True)
    top_p: Number | None = _number(setting=True)
    top_k: Integer | None = _number(integer=True, setting=True)
    repetition_penalty: Number | None = _number(setting=True)
    presence_penalty: Number | None = _number(-2.0, 2.0)
    frequency_penalty: Number | None = _number(-2.0, 2.0)
    seed: Integer | None = _number(integer=True, setting=True)
    # Nibble's own: decode with prompt lookup (GenerationSettings.prompt_lookup).
    prompt_lookup: Flag | None = None
    max_tokens: Integer | None = _number(1, 1_000_000, integer=True)
    stop: Text | list[Text] | None = None
    # Refused unless they ask for what is done anyway (see `refuse_unsupported`).
    n: Any = None
    best_of: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = None
    suffix: Any = None
    logit_bias: Any = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[
        list[ChatMessage],
        Field(min_length=1, json_schema_extra={"must_be": "a non-empty list"}),
    ]
    max_completion_tokens: Integer | None = _number(1, 1_000_000, integer=True)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: Flag | None = None
    response_format: ResponseFormat | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None


class CompletionRequest(_Sampling):
    prompt: Any = None
    """One string (a list of one string is accepted); checked when read."""
    response_format: ResponseFormat | None = None


# -- responses ------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class _Sparse(BaseModel):
    """A delta: only the keys that carry something are sent."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class FunctionDelta(_Sparse):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Sparse):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(_Sparse):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(_Sparse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    loaded: bool | None = None
    """Nibble's addition: whether this model is in memory now."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(shape: BaseModel) -> dict[str, Any]:
    """A response model as the JSON-ready dict OpenAI's clients expect."""
    return shape.model_dump(mode="json", by_alias=True)


# -- validation errors ------------------------------------------------------------

_KINDS = {
    "float_type": "a number",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "literal_error": "one of {expected}",
    "union_tag_invalid": "one of {expected_tags}",
}


_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_UNION_MEMBERS = {"str", "int", "float", "bool", "list", "dict"}


def _where(loc: tuple[Any, ...]) -> str:
    """('body', 'messages', 0, 'role') as 'messages[0].role'."""
    text = ""
    for i, part in enumerate(loc):
        if i == 0 and part == "body":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _FIELD_NAME.fullmatch(str(part)) or part in _UNION_MEMBERS:
            continue  # pydantic's name for a member of a union, not a field
        else:
            text += f".{part}" if text else str(part)
    return text


def _must_be(model: type[BaseModel] | None, name: str) -> str | None:
    field = model.model_fields.get(name) if model else None
    extra = field.json_schema_extra if field else None
    return extra.get("must_be") if isinstance(extra, dict) else None  # type: ignore[return-value]


def _bounds(model: type[BaseModel] | None, name: str) -> tuple[Any, Any]:
    field = model.model_fields.get(name) if model else None
    low = high = None
    for meta in field.metadata if field else ():
        low = getattr(meta, "ge", low)
        high = getattr(meta, "le", high)
    return low, high


def validation_error(
    errors: list[dict[str, Any]], model: type[BaseModel] | None = None
) -> ApiError:
    """The first of pydantic's errors as a 400 that names the field and what it needs."""
    if not errors:
        return ApiError(400, "the request body is not valid")
    error = errors[0]
    kind = error.get("type", "")
    where = _where(tuple(error.get("loc", ())))
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "json_invalid":
        detail = ctx.get("error", error.get("msg", ""))
        return ApiError(400, f"the body is not valid JSON: {detail}")
    if not where:
        return ApiError(400, "the body must be a JSON object")
    name = where.split(".")[0].split("[")[0]
    must_be = _must_be(model, name) if name == where else None
    if kind == "missing":
        return ApiError(400, f"'{where}' is required", param=where)
    if kind in ("too_short", "list_type") and must_be:
        return ApiError(400, f"'{where}' must be {must_be}", param=where)
    if kind in (
        "greater_than_equal",
        "less_than_equal",
        "greater_than",
        "less_than",
    ):
        low, high = _bounds(model, name) if name == where else (None, None)
        if low is not None and high is not None:
            rule = f"it must be from {low} to {high}"
        else:
            rule = error.get("msg", "").replace("Input should be", "it must be")
        return ApiError(400, f"'{where}' is {value}; {rule}", param=where)
    if kind in ("finite_number",):
        return ApiError(
            400, f"'{where}' must be a finite number, got {value!r}", param=where
        )
    if kind in _KINDS:
        needed = _KINDS[kind].format(**{k: str(v) for k, v in ctx.items()})
        return ApiError(400, f"'{where}' must be {needed}, got {value!r}", param=where)
    message = str(error.get("msg", "is not valid"))
    return ApiError(400, f"'{where}': {message}", param=where)


# -- numbers ---------------------------------------------------------------------------


def check_numbers(request: BaseModel) -> None:
    """NaN, ±inf, ranges and 64 bits: the same check as every other face's.

    Each numeric field's range comes from its metadata (`_number`); a field that is
    also a GenerationSettings field is then checked against that field's own range.

    Raises
    ------
    ApiError
        400 naming the field, in core's words.
    """
    from core.errors import SettingsError
    from core.settings import GenerationSettings, check_number, spec_of

    for name, field in type(request).model_fields.items():
        extra = field.json_schema_extra
        rule = extra.get("number") if isinstance(extra, dict) else None
        value = getattr(request, name, None)
        if not isinstance(rule, dict) or value is None:
            continue
        try:
            value = check_number(
                f"'{name}'",
                value,
                integer=bool(rule["integer"]),
                low=rule["low"],  # type: ignore[arg-type]
                high=rule["high"],  # type: ignore[arg-type]
            )
            if rule["setting"]:
                try:
                    value = spec_of(GenerationSettings, name).check(value)
                except SettingsError as exc:
                    raise SettingsError(
                        f"'{name}': {exc.message}", exc.hint, name
                    ) from None
        except SettingsError as exc:
            raise ApiError(400, f"{exc.message}; {exc.hint}", param=name) from None
        setattr(request, name, value)


# -- what this server does not do -----------------------------------------------------


def _refuse(request: BaseModel, name: str, why: str, ok: Any) -> None:
    value = getattr(request, name, None)
    if value is not None and not ok(value):
        raise ApiError(400, f"'{name}' is not supported: {why}", param=name)


def refuse_unsupported(request: BaseModel) -> None:
    """400 for what this server does not do, rather than ignoring it."""
    _refuse(request, "n", "one choice per request", lambda v: v == 1)
    _refuse(request, "best_of", "one choice per request", lambda v: v == 1)
    _refuse(request, "logprobs", "no log probabilities", lambda v: not v)
    _refuse(request, "top_logprobs", "no log probabilities", lambda v: not v)
    _refuse(request, "echo", "the prompt is not repeated", lambda v: not v)
    _refuse(request, "suffix", "no fill-in-the-middle", lambda v: not v)
    _refuse(request, "logit_bias", "no logit bias", lambda v: not v)
    _refuse(request, "functions", "send 'tools' instead", lambda v: not v)
    _refuse(request, "function_call", "send 'tool_choice' instead", lambda v: not v)
    _refuse(request, "audio", "text only", lambda v: False)
    _refuse(
        request,
        "modalities",
        "text only",
        lambda v: isinstance(v, list) and all(m == "text" for m in v),
    )


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """`stop`: one string or up to MAX_STOP_STRINGS; empty ones are dropped."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(
            400, f"'stop' has {len(stop)} strings; at most {MAX_STOP_STRINGS}", "stop"
        )
    return tuple(s for s in stop if s)
