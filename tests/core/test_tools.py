"""Tool-call formats and constraints, without a model: reading each family's calls,
the grammars that force them, and what a schema may not ask for."""

from __future__ import annotations

import json

import pytest

from core.generation import tools
from core.generation.constrain import Constraint, ConstraintError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [
        (tools.HermesFormat(), 'Let me look.\n<tool_call>\n{"name": "get_weather", '
         '"arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "f", '
         '"arguments": {}}\n</tool_call>', "Let me look.",
         [("get_weather", {"city": "Paris"}), ("f", {})]),
        (tools.HermesFormat(), "No call here.", "No call here.", []),
        (tools.Llama3Format(), '<|python_tag|>{"name": "get_weather", "parameters": '
         '{"city": "Oslo"}}', "", [("get_weather", {"city": "Oslo"})]),
        (tools.Llama3Format(), '{"name": "a", "parameters": {}}; {"name": "b", '
         '"parameters": {"x": 1}}', "", [("a", {}), ("b", {"x": 1})]),
        (tools.MistralFormat(), '[TOOL_CALLS] [{"name": "get_weather", "arguments": '
         '{"city": "Rome"}}]', "", [("get_weather", {"city": "Rome"})]),
        (tools.MistralFormat(), "Just words [not a call]", "Just words [not a call]", []),
    ],
)  # fmt: skip
def test_each_family_reads_its_calls(
    fmt: tools.ToolFormat, text: str, content: str, calls: list
) -> None:
    got_content, got = fmt.parse(text)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert len({c.id for c in got}) == len(got)


@pytest.mark.parametrize(
    "fmt", [tools.HermesFormat(), tools.Llama3Format(), tools.MistralFormat()]
)
def test_forcing_grammars_compile(fmt: tools.ToolFormat) -> None:
    for parallel in (False, True):
        Constraint.lark(fmt.grammar([WEATHER], parallel), "call").check()


def test_a_template_is_matched_to_its_family() -> None:
    class Tok:
        chat_template = "{% if tools %}...<tool_call>...{% endif %}"

    assert tools.detect(Tok()).name == "hermes"
    assert tools.supports_tools(Tok())
    Tok.chat_template = "{{ messages }}"
    with pytest.raises(tools.ToolsError, match="has no tool support"):
        tools.check_tools(Tok(), "m")


def test_history_arguments_become_dicts_for_templates() -> None:
    history = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"a": 1}'},
                }
            ],
        }
    ]
    (message,) = tools.history_for_template(history)
    assert message["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert history[0]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        (
            {"type": "object", "if": {}, "then": {}},
            'Unimplemented keys: ["if", "then"]',
        ),
        ({"type": "string", "pattern": "(?=a)"}, "look-around"),
        ({"type": "strin"}, "strin"),
    ],
)
def test_what_cannot_be_enforced_is_named(schema: dict, text: str) -> None:
    with pytest.raises(ConstraintError) as err:
        Constraint.json_schema(schema, "x").check()
    assert text in err.value.message
    assert 'JSON schema "x" cannot be enforced' in err.value.message
