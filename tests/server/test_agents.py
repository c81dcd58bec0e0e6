"""What agents and scripts use, through the official `openai` client on 127.0.0.1:
tool calls (a round trip, streamed and not), tool errors, and any model by name.

The model is a tiny random Qwen2 whose chat template (tests/server/data) takes
tools the Hermes way, so the call is forced by the grammar, parsed, and sent back
mechanically; its words mean nothing. A second tiny model is switched to by name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from core.generation.queue import GenerationQueue
from core.generation.switch import ModelSwitcher
from core.model import catalog
from server.app import Server
from server.runner import ServerConfig, ServerThread
from tests.conftest import build_tiny_model

openai = pytest.importorskip("openai")

DATA = Path(__file__).parent / "data"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    target = build_tiny_model(
        tmp_path_factory.mktemp("tools") / "tiny-qwen-tools",
        tokenizer_dir,
        "qwen2",
        max_position_embeddings=2048,
    )
    shutil.copy(DATA / "qwen_tools.jinja", target / "chat_template.jinja")
    return target


@pytest.fixture(scope="module")
def served(tools_dir: Path, tiny_dir: Path) -> Any:
    """A server that loads whichever of the two tiny models a request names."""

    def directory() -> dict[str, Any]:
        return {
            "tiny-qwen-tools": catalog.folder_ref(tools_dir),
            "tiny-llama": catalog.folder_ref(tiny_dir),
        }

    queue = GenerationQueue(None)
    switcher = ModelSwitcher(queue, directory=directory)
    changes: list[tuple[str, str]] = []
    switcher.on_change = lambda state, name: changes.append((state, name))
    server = Server(queue, ServerConfig(port=0), switcher=switcher)
    thread = ServerThread(server)
    thread.start()
    client = openai.OpenAI(base_url=thread.url, api_key="none", max_retries=0)
    yield client, queue, changes
    assert thread.stop()
    assert queue.close()


def test_tool_call_round_trip(served: Any) -> None:
    client, _, _ = served
    first = client.chat.completions.create(
        model="tiny-qwen-tools",
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        temperature=0.8,
        max_tokens=60,
        seed=3,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in ("get_weather", "get_time")
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(arguments) == {"city", "unit"}
        assert arguments["unit"] in ("celsius", "fahrenheit")
    else:
        assert -12 <= arguments["zone"] <= 14
    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
    ]
    final = client.chat.completions.create(
        model="tiny-qwen-tools", messages=history, tools=[WEATHER, TIME], max_tokens=6
    )
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.tool_calls is None
    assert isinstance(final.choices[0].message.content, str)


def test_streamed_tool_call_arrives_in_openai_chunks(served: Any) -> None:
    client, _, _ = served
    chunks = list(
        client.chat.completions.create(
            model="tiny-qwen-tools",
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    pieces = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert pieces[0].index == 0 and pieces[0].id.startswith("call_")
    assert pieces[0].function.name == "get_weather"
    assert all(p.index == 0 and p.id is None for p in pieces[1:])
    assert len(pieces) > 2, "the arguments come in pieces"
    arguments = json.loads("".join(p.function.arguments or "" for p in pieces))
    assert set(arguments) == {"city", "unit"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(d.content or "" for d in deltas), "the call is not text"
    call = {
        "id": pieces[0].id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
    }
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees"},
    ]
    answer = client.chat.completions.create(
        model="tiny-qwen-tools", messages=history, tools=[WEATHER], max_tokens=4,
        stream=True,
    )  # fmt: skip
    finishes = [c.choices[0].finish_reason for c in answer if c.choices]
    assert finishes[-1] in ("stop", "length")


@pytest.mark.parametrize(
    ("tools", "choice", "text"),
    [
        (
            [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"x": {"type": "strin"}}}}}],
            "auto",
            "tools[0].function.parameters",
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "if": {}, "then": {}}}}],
            "required",
            "Unimplemented keys",
        ),
        ([{"type": "function", "function": {"description": "no name"}}], "auto",
         "'tools[0].function.name' is required"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}},
         "names the function 'nope', which is not in 'tools'"),
    ],
)  # fmt: skip
def test_bad_tools_are_400_naming_the_problem(
    served: Any, tools: Any, choice: Any, text: str
) -> None:
    client, _, _ = served
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny-qwen-tools", messages=ASK, tools=tools, tool_choice=choice
        )
    assert text in err.value.body["message"]


def test_a_model_is_switched_by_name_and_listed(served: Any) -> None:
    client, queue, changes = served
    answer = client.chat.completions.create(
        model="tiny-llama:nf4", messages=ASK, max_tokens=2
    )
    assert answer.model == "tiny-llama:nf4"
    assert queue.loaded.ref.name == "tiny-llama"
    assert ("loaded", "tiny-llama") in changes
    listed = {m.id: m.model_dump().get("loaded") for m in client.models.list().data}
    assert listed == {"tiny-llama": True, "tiny-qwen-tools": False}
    again = client.chat.completions.create(
        model="tiny-qwen-tools", messages=ASK, max_tokens=2
    )
    assert again.usage.completion_tokens == 2
    assert queue.loaded.ref.name == "tiny-qwen-tools"


def test_an_unknown_model_is_404_and_an_unknown_preset_400(served: Any) -> None:
    client, _, _ = served
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert "the model 'gpt-4o' is not served here" in err.value.body["message"]
    assert "tiny-llama" in err.value.body["message"]
    assert err.value.body["code"] == "model_not_found"
    # A known model with a preset that does not exist: said as such, not "unknown
    # model 'tiny-llama:q3'".
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-llama:q3", messages=ASK)
    message = err.value.body["message"]
    assert "unknown preset 'q3' in 'tiny-llama:q3'" in message
    assert "fp32" in message and "nf4-dq" in message
