"""The OpenAI API's side of a request: reading the body, refusing what is not
supported, and errors in OpenAI's shape. No server here (see server/app.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from core.errors import NibbleError, SettingsError
from core.generation.queue import NoModelError, QueueFullError
from core.settings import GenerationSettings, check_number, spec_of

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


# -- reading a request body ---------------------------------------------------


_MISSING = object()


def read_field(
    body: dict[str, Any],
    name: str,
    kinds: type | tuple[type, ...],
    default: Any = None,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """body[name] checked against `kinds` (bool is never a number) and a range."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    numeric = any(k in (int, float) for k in kinds)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(
            {"str": "a string", "int": "an integer", "float": "a number"}.get(
                k.__name__, k.__name__
            )
            for k in kinds
        )
        raise ApiError(400, f"'{name}' must be {names}, got {value!r}", param=name)
    if numeric:
        # NaN, ±inf (json reads them) and numbers past the range or 64 bits: the
        # same check as every other face's.
        try:
            value = check_number(
                f"'{name}'", value, integer=float not in kinds, low=low, high=high
            )
        except SettingsError as exc:
            raise ApiError(400, f"{exc.message}; {exc.hint}", param=name) from None
    return value


def setting_field(body: dict[str, Any], name: str, default: Any) -> Any:
    """body[name] checked by the GenerationSettings field of that name (its range)."""
    spec = spec_of(GenerationSettings, name)
    kinds: tuple[type, ...] = (int,) if spec.kind != "float" else (int, float)
    value = read_field(body, name, kinds, default)
    if value is None or value is default:
        return value
    try:
        return spec.check(value)
    except SettingsError as exc:
        raise ApiError(
            400, f"'{name}': {exc.message}; {exc.hint}", param=name
        ) from None


def _refuse(
    body: dict[str, Any], name: str, why: str, ok: Callable[[Any], bool]
) -> None:
    value = body.get(name)
    if value is not None and not ok(value):
        raise ApiError(400, f"'{name}' is not supported: {why}", param=name)


def stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    """`stop`: one string or up to MAX_STOP_STRINGS; empty ones are dropped."""
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    if len(value) > MAX_STOP_STRINGS:
        raise ApiError(
            400, f"'stop' has {len(value)} strings; at most {MAX_STOP_STRINGS}", "stop"
        )
    return tuple(s for s in value if s)


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """`messages` as {"role", "content"} texts; tool turns and images refused."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"'{where}' must be an object", where)
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            why = (
                "tool calls are not supported"
                if role in ("tool", "function")
                else "use system, user or assistant"
            )
            raise ApiError(400, f"'{where}.role' {role!r} is refused: {why}", where)
        if message.get("tool_calls"):
            raise ApiError(
                400, f"'{where}.tool_calls' is not supported: no tool calls", where
            )
        out.append({"role": role, "content": _content(message.get("content"), where)})
    return out


def _content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"'{where}.content' must be a string or a list", where)
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


def sampling(body: dict[str, Any], max_new: int) -> GenerationSettings:
    """GenerationSettings from OpenAI's fields (temperature 0 is greedy)."""
    temperature = setting_field(body, "temperature", 1.0)
    return GenerationSettings(
        max_new_tokens=max_new,
        temperature=float(temperature),
        top_p=float(setting_field(body, "top_p", 1.0)),
        top_k=setting_field(body, "top_k", 0),
        repetition_penalty=float(setting_field(body, "repetition_penalty", 1.0)),
        seed=setting_field(body, "seed", None),
        greedy=temperature == 0,
    )


def refuse_unsupported(body: dict[str, Any]) -> None:
    """400 for what this server does not do, rather than ignoring it."""
    _refuse(body, "n", "one choice per request", lambda v: v == 1)
    _refuse(body, "best_of", "one choice per request", lambda v: v == 1)
    _refuse(body, "logprobs", "no log probabilities", lambda v: not v)
    _refuse(body, "top_logprobs", "no log probabilities", lambda v: not v)
    _refuse(body, "echo", "the prompt is not repeated", lambda v: not v)
    _refuse(body, "suffix", "no fill-in-the-middle", lambda v: not v)
    _refuse(body, "logit_bias", "no logit bias", lambda v: not v)
    for name in ("tools", "functions"):
        _refuse(body, name, "no tool calls", lambda v: not v)
    for name in ("tool_choice", "function_call"):
        _refuse(body, name, "no tool calls", lambda v: v == "none")
    _refuse(body, "audio", "text only", lambda v: False)
    _refuse(
        body,
        "modalities",
        "text only",
        lambda v: isinstance(v, list) and all(m == "text" for m in v),
    )
    _refuse(
        body,
        "response_format",
        "only plain text answers",
        lambda v: isinstance(v, dict) and v.get("type") == "text",
    )
