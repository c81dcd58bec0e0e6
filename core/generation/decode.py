"""Streaming generation: text chunks as they decode, then the numbers of the run."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from core import memory
from core.errors import GenerationError
from core.generation.constrain import Constraint
from core.model.loader import LoadedModel
from core.settings import GenerationSettings

logger = logging.getLogger(__name__)

Message = dict[str, Any]
STOP_EOS = "eos"
STOP_MAX = "max tokens"
STOP_STOPPED = "stopped"
STOP_ERROR = "error"
STOP_STRING = "stop string"
MODE_PLAIN = "plain"
MODE_COMPILED = "compiled"
MODE_LOOKUP = "prompt lookup"
DECODE_MODES = (MODE_PLAIN, MODE_COMPILED, MODE_LOOKUP)


@dataclass
class GenerationStats:
    """What one answer took: tokens in and out, time to first token, decode speed."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    total_s: float = 0.0
    stop_reason: str = STOP_EOS
    error: str | None = None
    decode_mode: str = MODE_PLAIN
    """How the tokens were produced: plain, compiled or prompt lookup."""
    decode_note: str = ""
    """Why the asked-for mode was not used, when it was not ('' otherwise)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("ttft_s", "tokens_per_s", "total_s"):
            if data[key] is not None:
                data[key] = round(data[key], 4)
        return data

    def summary(self) -> str:
        """'24.1 tok/s · 0.12 s to first token · 32 tokens · eos'."""
        parts = []
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        if self.ttft_s is not None:
            parts.append(f"{self.ttft_s:.2f} s to first token")
        parts.append(f"{self.new_tokens} tokens")
        parts.append(self.stop_reason)
        if self.decode_mode != MODE_PLAIN:
            parts.append(self.decode_mode)
        return " · ".join(parts)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(
    tokenizer: Any,
    messages_or_prompt: str | Sequence[Message],
    raw: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """The text fed to the model: the chat template when there is one, else raw text.

    `tools` (OpenAI's function definitions) are shown to the model by its template.
    """
    if isinstance(messages_or_prompt, str):
        if not messages_or_prompt.strip():
            raise GenerationError(
                "the prompt is empty", "type a question or some text first"
            )
        messages: list[Message] = [{"role": "user", "content": messages_or_prompt}]
    else:
        messages = [dict(m) for m in messages_or_prompt]
        if not any(
            (m.get("content") or "").strip()
            for m in messages
            if m.get("role") == "user"
        ):
            raise GenerationError(
                "the prompt is empty", "type a question or some text first"
            )
    if raw or not has_chat_template(tokenizer):
        if isinstance(messages_or_prompt, str):
            return messages_or_prompt
        return "\n\n".join(m["content"] for m in messages if m.get("content"))
    if tools:
        from core.generation.tools import history_for_template

        return tokenizer.apply_chat_template(
            history_for_template(messages),
            tools=list(tools),
            tokenize=False,
            add_generation_prompt=True,
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def context_length(model: Any) -> int | None:
    config = model.config
    for name in (
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
    ):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# A token rarely spans more characters than this; a prefix this long tells whether
# a huge prompt can fit before all of it is tokenized (20 MB took 3.4 GB and 26 s).
MAX_CHARS_PER_TOKEN = 32


def check_length(tokenizer: Any, text: str, limit: int) -> None:
    """Refuse a prompt longer than the context, tokenizing at most a bounded prefix."""
    prefix = text[: limit * MAX_CHARS_PER_TOKEN]
    if len(prefix) == len(text):
        return  # short enough to tokenize whole; the exact check follows
    tokens = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    if tokens >= limit:
        raise GenerationError(
            f"the prompt is over {limit} tokens ({len(text):,} characters), longer "
            f"than the model's context of {limit}",
            "shorten the prompt or clear the chat",
        )


def stream(
    loaded: LoadedModel,
    messages_or_prompt: str | Sequence[Message],
    settings: GenerationSettings | None = None,
    stop_event: threading.Event | None = None,
    raw: bool = False,
    *,
    stop_strings: Sequence[str] = (),
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    constraint: Constraint | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    logits_processor: Callable[[Any, Any], Any] | None = None,
) -> Iterator[str | GenerationStats]:
    """Yield text chunks as they decode, then one GenerationStats.

    Parameters
    ----------
    loaded
        The model to answer with.
    messages_or_prompt
        A prompt string, or chat messages ({"role", "content"}).
    settings
        Sampling parameters.
    stop_event
        Set it to stop; generation ends within one token.
    raw
        Feed the text as a plain completion even when the model has a chat template.
    stop_strings
        End the answer as soon as its text contains one of these; the text yielded
        stops just before it and the stop reason is "stop string".
    presence_penalty, frequency_penalty
        OpenAI's additive penalties (-2 to 2) on the logits of tokens already in the
        answer: once for being there, and per occurrence.
    constraint
        Allow only answers this constraint accepts (JSON, a JSON schema, a grammar).
    tools
        Function definitions (OpenAI's shape) the chat template shows the model.
    logits_processor
        A per-request hook `(input_ids, scores) -> scores` (a transformers
        LogitsProcessor's signature); see GenerationRequest.

    Raises
    ------
    GenerationError
        Bad input (empty, longer than the context, a schema that cannot be enforced)
        before anything runs, or an error inside generate, after a final
        GenerationStats with stop_reason 'error'.
    """
    import torch
    from transformers import (
        StoppingCriteria,
        StoppingCriteriaList,
        TextIteratorStreamer,
    )

    settings = settings or GenerationSettings()
    if loaded.model is None:
        raise GenerationError("no model is loaded", "load a model first")
    tokenizer, model = loaded.tokenizer, loaded.model
    text = build_prompt(tokenizer, messages_or_prompt, raw, tools)
    add_special = raw or not has_chat_template(tokenizer)
    limit = context_length(model)
    if limit is not None:
        check_length(tokenizer, text, limit)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    if limit is not None and prompt_tokens >= limit:
        raise GenerationError(
            f"the prompt is {prompt_tokens} tokens, longer than the model's context "
            f"of {limit}",
            "shorten the prompt or clear the chat",
        )
    max_new = settings.max_new_tokens
    if limit is not None:
        max_new = min(max_new, limit - prompt_tokens)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    stop = stop_event or threading.Event()
    halt = threading.Event()  # set when our consumer goes away early
    timing: dict[str, float] = {}

    class _Streamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                if "first" not in timing:
                    # The prompt's forward has run (and repacked a 4-bit model's
                    # weights): the decode steps may keep their heap blocks.
                    memory.heap_for_decoding()
                timing.setdefault("first", time.perf_counter())
            super().put(value)

    stops = tuple(s for s in stop_strings if s)
    # Enough tokens to spell the longest stop string, even one character per token.
    tail = max((len(s) for s in stops), default=0) + 2
    hit = threading.Event()

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            flag = stop.is_set() or halt.is_set()
            if stops and not flag and input_ids.shape[1] > prompt_tokens:
                last = tokenizer.decode(
                    input_ids[0, max(prompt_tokens, input_ids.shape[1] - tail) :],
                    skip_special_tokens=True,
                )
                if any(s in last for s in stops):
                    hit.set()
                    flag = True
            return torch.full((input_ids.shape[0],), flag, dtype=torch.bool)

    streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, Any] = {}
    kwargs = settings.generate_kwargs()
    kwargs["max_new_tokens"] = max_new
    mode, note = decode_mode(loaded, settings, constraint or logits_processor)
    if mode != MODE_LOOKUP:
        kwargs.pop("prompt_lookup_num_tokens", None)
    if mode == MODE_COMPILED:
        note = _cache_bucket(loaded, kwargs, prompt_tokens + max_new, note)
    if tokenizer.pad_token_id is None:
        kwargs["pad_token_id"] = tokenizer.eos_token_id
    processors = request_processors(
        loaded, prompt_tokens, presence_penalty, frequency_penalty, constraint
    )
    if logits_processor is not None:
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList([*(processors or []), logits_processor])
    if processors:
        kwargs["logits_processor"] = processors

    def run() -> None:
        try:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Stop()]),
                    **kwargs,
                )
            result["new_tokens"] = int(out.shape[1]) - prompt_tokens
        except BaseException as exc:  # reaches the caller; a silent death would hang it
            result["error"] = exc
            streamer.end()

    started = time.perf_counter()
    thread = threading.Thread(target=run, name="nibble-generate", daemon=True)
    thread.start()
    try:
        if stops:
            yield from _until_stop(
                streamer, stops, on_hit=lambda: (hit.set(), halt.set())
            )
        else:
            for chunk in streamer:
                if chunk:
                    yield chunk
    finally:
        halt.set()
        thread.join()
    ended = time.perf_counter()
    stats = GenerationStats(
        prompt_tokens=prompt_tokens,
        total_s=ended - started,
        decode_mode=mode,
        decode_note=note,
    )
    first = timing.get("first")
    if first is not None:
        stats.ttft_s = first - started
    error = result.get("error")
    if error is not None:
        stats.stop_reason = STOP_ERROR
        stats.error = str(error).splitlines()[0] if str(error) else type(error).__name__
        yield stats
        raise GenerationError(
            f"generation failed: {stats.error}", "see Details"
        ) from error
    stats.new_tokens = result.get("new_tokens", 0)
    if first is not None and stats.new_tokens > 1 and ended > first:
        stats.tokens_per_s = (stats.new_tokens - 1) / (ended - first)
    if stop.is_set():
        stats.stop_reason = STOP_STOPPED
    elif hit.is_set():
        stats.stop_reason = STOP_STRING
    elif stats.new_tokens >= max_new:
        stats.stop_reason = STOP_MAX
    else:
        stats.stop_reason = STOP_EOS
    yield stats


LOOKUP_OFF_FOR_GRAMMAR = "prompt lookup is off for answers held to a grammar"


def decode_mode(
    loaded: LoadedModel,
    settings: GenerationSettings,
    constraint: Any = None,
) -> tuple[str, str]:
    """The mode one request decodes in, and why it is not the one asked for ('').

    Prompt lookup checks several guessed tokens in one forward pass; a grammar's
    state cannot be rolled back over rejected guesses, and a compiled decode step
    is shaped for one token at a time, so both decode without it. `constraint` is
    the request's grammar or own logits processor (either may keep state).
    """
    compiled = is_compiled(loaded)
    if settings.prompt_lookup:
        if constraint is not None:
            mode = MODE_COMPILED if compiled else MODE_PLAIN
            return mode, LOOKUP_OFF_FOR_GRAMMAR
        if compiled:
            return MODE_COMPILED, "prompt lookup is off while fast decode is on"
        return MODE_LOOKUP, ""
    return (MODE_COMPILED if compiled else MODE_PLAIN), ""


def model_decode_mode(loaded: LoadedModel) -> tuple[str, str]:
    """How the loaded model decodes (compiled or plain; prompt lookup is chosen per
    answer) and, when fast decode was asked for and is off, why ('' otherwise)."""
    fast = getattr(loaded, "fast_decode", None)
    if fast:
        return MODE_COMPILED, ""
    return MODE_PLAIN, fast.note if fast is not None else ""


def is_compiled(loaded: LoadedModel) -> bool:
    """Whether the model decodes with a static cache and a compiled step."""
    return bool(getattr(loaded, "fast_decode", None))


def _cache_bucket(
    loaded: LoadedModel, kwargs: dict[str, Any], needed: int, note: str
) -> str:
    """Size the static cache to its bucket; a new bucket recompiles, and says so."""
    bucket, line = loaded.fast_decode.claim(needed)
    kwargs["max_cache_len"] = bucket
    if not line:
        return note
    return f"{note}; {line}" if note else line


def _until_stop(
    chunks: Iterator[str], stops: Sequence[str], on_hit: Callable[[], Any]
) -> Iterator[str]:
    """The chunks up to the first stop string, holding back what may begin one."""
    text, sent, keep = "", 0, max(len(s) for s in stops) - 1
    for chunk in chunks:
        text += chunk
        found = [
            i for i in (text.find(s, max(0, sent - keep)) for s in stops) if i >= 0
        ]
        if found:
            on_hit()
            if min(found) > sent:
                yield text[sent : min(found)]
            for _ in chunks:  # let the generation end; it stops within a token
                pass
            return
        safe = len(text) - keep
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if len(text) > sent:
        yield text[sent:]


def request_processors(
    loaded: LoadedModel,
    prompt_tokens: int,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    constraint: Constraint | None = None,
) -> Any:
    """One answer's own logits processors (penalties, grammar), or None if it has none.

    They run before sampling's temperature and top-p, so a grammar narrows what the
    model may say and sampling picks among what is left.
    """
    from transformers import LogitsProcessorList

    processors = LogitsProcessorList()
    if presence_penalty or frequency_penalty:
        processors.extend(
            _penalties(prompt_tokens, presence_penalty, frequency_penalty)
        )
    if constraint is not None:
        from core.generation import constrain

        processors.append(
            constrain.processor(
                constraint, loaded.tokenizer, vocab_width(loaded.model), prompt_tokens
            )
        )
    return processors or None


def vocab_width(model: Any) -> int:
    """How many logits the model gives per step (may exceed the tokenizer's vocab)."""
    config = model.config
    with contextlib.suppress(AttributeError, TypeError):
        config = config.get_text_config()
    return int(config.vocab_size)


def _penalties(prompt_tokens: int, presence: float, frequency: float) -> Any:
    """A LogitsProcessorList with OpenAI's presence and frequency penalties."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Penalties(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            answer = input_ids[:, prompt_tokens:]
            if answer.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores)
            counts.scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores)

    return LogitsProcessorList([_Penalties()])


def generate_text(
    loaded: LoadedModel,
    messages_or_prompt: str | Sequence[Message],
    settings: GenerationSettings | None = None,
    raw: bool = False,
) -> tuple[str, GenerationStats]:
    """The whole answer and its stats (a convenience over `stream`)."""
    chunks: list[str] = []
    stats = GenerationStats()
    for item in stream(loaded, messages_or_prompt, settings, raw=raw):
        if isinstance(item, GenerationStats):
            stats = item
        else:
            chunks.append(item)
    return "".join(chunks), stats
