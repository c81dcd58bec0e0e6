"""Tool calls: how a model family writes them, how to read them back, and the
grammar that forces a call when one is required.

A model learns one way of writing a call in training, and its chat template shows
it the tools in that way. Nibble knows these families:

- "hermes" (Qwen2/2.5/3, Hermes, many fine-tunes):
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one per call;
- "llama3" (Llama 3.1/3.2/3.3): the answer is ``{"name": ..., "parameters": {...}}``,
  optionally after ``<|python_tag|>``; several calls are joined with ";";
- "mistral": ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``.

Where the tokenizer ships transformers' own response parser (a
``response_template``), that parser reads the calls instead.

To add a family: subclass `ToolFormat`, set `name` and `markers` (strings that
only its templates contain), write `parse` and `grammar`, and call `register()`
with an instance. `detect` picks the first registered family whose markers the
chat template contains.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import GenerationError

# Constrained calls are compact JSON, as `constrain` writes answers.
_GUIDANCE = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


class ToolsError(GenerationError):
    """Tools that this model cannot be asked to call."""


@dataclass
class ToolCall:
    """One call the model made: a function name and its arguments as JSON text."""

    name: str
    arguments: str = "{}"
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _arguments_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def _decode_objects(text: str) -> list[Any]:
    """Every JSON value that starts at a '{' or '[' in `text`, left to right."""
    decoder = json.JSONDecoder()
    found, i = [], 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            found.append(value)
            i = end
        else:
            i += 1
    return found


def _calls_from(values: Sequence[Any], arguments_key: str) -> list[ToolCall]:
    calls = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            args = item.get(
                arguments_key, item.get("arguments", item.get("parameters"))
            )
            calls.append(ToolCall(item["name"], _arguments_text(args)))
    return calls


def _call_schema(tools: Sequence[dict[str, Any]], arguments_key: str) -> dict[str, Any]:
    """A schema that accepts one call of any of `tools`, with that tool's arguments."""
    options = []
    for tool in tools:
        function = tool.get("function", tool)
        parameters = function.get("parameters") or {"type": "object"}
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": function["name"]},
                    arguments_key: parameters,
                },
                "required": ["name", arguments_key],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": _GUIDANCE}


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(schema, ensure_ascii=False)


class ToolFormat:
    """How one family of models writes tool calls."""

    name = ""
    markers: tuple[str, ...] = ()
    """Text only this family's chat templates contain."""
    starts: tuple[str, ...] = ()
    """What a call begins with in the answer (text before it is the content)."""

    def matches(self, template: str) -> bool:
        return any(marker in template for marker in self.markers)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """The answer's content (text outside calls) and its calls."""
        raise NotImplementedError

    def grammar(self, tools: Sequence[dict[str, Any]], parallel: bool) -> str:
        """A Lark grammar (llguidance) that accepts only calls of `tools`."""
        raise NotImplementedError

    def call_start(self, text: str) -> int:
        """Where the first call begins in `text`, or -1."""
        found = [i for i in (text.find(s) for s in self.starts) if i >= 0]
        return min(found) if found else -1


class HermesFormat(ToolFormat):
    name = "hermes"
    markers = ("<tool_call>",)
    starts = ("<tool_call>",)
    _call = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = self.call_start(text)
        if start < 0:
            return text, []
        calls: list[ToolCall] = []
        for body in self._call.findall(text[start:]):
            calls.extend(_calls_from(_decode_objects(body)[:1], "arguments"))
        return text[:start].strip(), calls

    def grammar(self, tools: Sequence[dict[str, Any]], parallel: bool) -> str:
        call = (
            f"call: {json.dumps('<tool_call>' + chr(10))} body "
            f"{json.dumps(chr(10) + '</tool_call>')}\n"
        )
        more = f" ({json.dumps(chr(10))} call)*" if parallel else ""
        return f"start: call{more}\n{call}body: {_lark_json(_call_schema(tools, 'arguments'))}\n"


class Llama3Format(ToolFormat):
    name = "llama3"
    markers = ("<|python_tag|>", '"parameters": dictionary of argument name')
    starts = ("<|python_tag|>", '{"name"', '{ "name"')

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = self.call_start(text)
        if start < 0:
            return text, []
        body = text[start:].replace("<|python_tag|>", "")
        calls = _calls_from(_decode_objects(body), "parameters")
        return (text[:start].strip(), calls) if calls else (text, [])

    def grammar(self, tools: Sequence[dict[str, Any]], parallel: bool) -> str:
        more = ' ("; " call)*' if parallel else ""
        schema = _call_schema(tools, "parameters")
        return f"start: call{more}\ncall: {_lark_json(schema)}\n"


class MistralFormat(ToolFormat):
    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    starts = ("[TOOL_CALLS]", '[{"name"')

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = self.call_start(text)
        if start < 0:
            return text, []
        body = text[start:].replace("[TOOL_CALLS]", "")
        calls = _calls_from(_decode_objects(body), "arguments")
        return (text[:start].strip(), calls) if calls else (text, [])

    def grammar(self, tools: Sequence[dict[str, Any]], parallel: bool) -> str:
        one = _call_schema(tools, "arguments")
        items: dict[str, Any] = {
            "type": "array",
            "items": {k: v for k, v in one.items() if k != "x-guidance"},
            "minItems": 1,
            "x-guidance": _GUIDANCE,
        }
        if not parallel:
            items["maxItems"] = 1
        return f"start: {_lark_json(items)}\n"


FORMATS: list[ToolFormat] = [HermesFormat(), MistralFormat(), Llama3Format()]


def register(fmt: ToolFormat) -> None:
    """Teach Nibble another family (checked before the built-in ones)."""
    FORMATS.insert(0, fmt)


def template_text(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates
        template = template.get("tool_use") or template.get("default") or ""
    return template if isinstance(template, str) else ""


def supports_tools(tokenizer: Any) -> bool:
    """Whether the model's chat template shows it the tools at all."""
    return "tools" in template_text(tokenizer)


def detect(tokenizer: Any) -> ToolFormat | None:
    """The family whose way of writing calls this model's chat template teaches."""
    template = template_text(tokenizer)
    for fmt in FORMATS:
        if fmt.matches(template):
            return fmt
    return None


def check_tools(tokenizer: Any, model_name: str) -> ToolFormat:
    """The model's tool format, or ToolsError that says why it cannot take tools."""
    if not supports_tools(tokenizer):
        raise ToolsError(
            f"the chat template of {model_name} has no tool support",
            "use a model whose template takes tools (e.g. Qwen2.5-Instruct, "
            "Llama 3.1+, Mistral) or leave 'tools' out",
        )
    fmt = detect(tokenizer)
    if fmt is None:
        raise ToolsError(
            f"the chat template of {model_name} takes tools, but Nibble does not "
            "know how it writes calls",
            "the known families are hermes, llama3 and mistral (see core/generation/"
            "tools.py to add one)",
        )
    return fmt


def parse_calls(
    tokenizer: Any,
    fmt: ToolFormat,
    text: str,
    prompt: str = "",
    tools: Sequence[dict[str, Any]] = (),
) -> tuple[str, list[ToolCall]]:
    """The answer's content and calls: transformers' parser when the tokenizer has
    one, else the family's own."""
    if getattr(tokenizer, "response_template", None) is not None:
        try:
            message = tokenizer.parse_response(text, prefix=prompt, tools=list(tools))
        except Exception:  # a parser that cannot read this answer: ours may
            message = None
        if isinstance(message, dict):
            calls = []
            for call in message.get("tool_calls") or []:
                function = call.get("function", call)
                if isinstance(function.get("name"), str):
                    calls.append(
                        ToolCall(
                            function["name"], _arguments_text(function.get("arguments"))
                        )
                    )
            return str(message.get("content") or ""), calls
    return fmt.parse(text)


def history_for_template(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's history as chat templates read it: a call's arguments as a dict."""
    out = []
    for message in messages:
        message = dict(message)
        calls = message.get("tool_calls")
        if calls:
            message["tool_calls"] = [_template_call(call) for call in calls]
        out.append(message)
    return out


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function", {}))
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments or "{}")
        except ValueError:
            pass  # a template that prints it prints the text as it came
    return {"id": call.get("id", ""), "type": "function", "function": function}
