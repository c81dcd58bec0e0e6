"""How a request's sampling fields become the answer's settings."""

from __future__ import annotations

from core.settings import GenerationSettings
from server.handlers import sampling
from server.protocol import ChatCompletionRequest

MESSAGES = [{"role": "user", "content": "Say hi"}]


def test_fields_a_request_leaves_out_take_the_windows_defaults() -> None:
    """OpenAI's 1.0 / 1.0 made the default model answer "Say hi" with gibberish."""
    usual = GenerationSettings()
    chosen = sampling(ChatCompletionRequest(model="m", messages=MESSAGES), 64)
    assert (chosen.temperature, chosen.top_p, chosen.top_k) == (
        usual.temperature,
        usual.top_p,
        usual.top_k,
    )
    assert not chosen.greedy and chosen.max_new_tokens == 64


def test_fields_a_request_gives_are_kept() -> None:
    body = ChatCompletionRequest(
        model="m", messages=MESSAGES, temperature=1.0, top_p=1.0, top_k=0, seed=3
    )
    chosen = sampling(body, 16)
    assert (chosen.temperature, chosen.top_p, chosen.top_k, chosen.seed) == (
        1.0,
        1.0,
        0,
        3,
    )
    greedy = sampling(
        ChatCompletionRequest(model="m", messages=MESSAGES, temperature=0), 8
    )
    assert greedy.greedy
