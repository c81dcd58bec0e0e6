"""Batched decoding: many answers advance together, one forward per step.

A `Batch` holds the running sequences over one model in a transformers `DynamicCache`
whose rows are left-padded to a common length. A newcomer is prefilled alone (its own
cache, no padding, exactly as it would be alone), then its cache is padded on the left
(or the batch's is) and concatenated along the batch dimension; from the next step on it
decodes with the others. A sequence that ends (EOS, max tokens, a stop string, cancelled)
leaves its row at once; columns that only padding still uses are trimmed.

Each sequence keeps its own sampling: greedy or temperature/top-k/top-p with its own
`torch.Generator` (seeded when a seed is set, so a seed gives the same answer alone or in
any batch), repetition/presence/frequency penalties, stop strings, max tokens and an
optional per-request logits processor (the hook for constrained decoding).

Why our own step over transformers' `ContinuousBatchingManager`: see docs/facts.md.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core import memory
from core.errors import GenerationError
from core.generation.decode import (
    STOP_EOS,
    STOP_ERROR,
    STOP_MAX,
    STOP_STOPPED,
    STOP_STRING,
    GenerationStats,
    Message,
    build_prompt,
    check_length,
    context_length,
    has_chat_template,
    is_compiled,
    vocab_width,
)
from core.model.loader import LoadedModel
from core.settings import GenerationSettings

logger = logging.getLogger(__name__)

LogitsHook = Callable[[Any, Any], Any]
"""`hook(input_ids, scores) -> scores`, the signature of a transformers LogitsProcessor:
input_ids is a (1, n) LongTensor of this request's prompt and answer so far, scores the
(1, vocab) float logits of its next token after the penalties and before temperature,
top-k and top-p. Return the new scores (e.g. -inf where a grammar forbids a token)."""

ATTENTION_THAT_PADS = ("sdpa", "eager")


def batching_blocker(loaded: LoadedModel) -> str | None:
    """Why this model cannot decode several answers in one batch, or None if it can.

    The batch keeps a left-padded DynamicCache and passes an attention mask and
    position ids; that needs every layer to be plain full attention with an
    attention implementation that takes a padding mask.
    """
    model = loaded.model
    if model is None:
        return "no model is loaded"
    if is_compiled(loaded):
        return (
            "fast decode is on (its compiled step is shaped for one answer; "
            "load without it to decode answers together)"
        )
    config = model.config
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if impl not in ATTENTION_THAT_PADS:
        return f"attention implementation {impl!r} is not batched here"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not batched here"
    types = getattr(config, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return "the model mixes sliding-window or linear layers with full attention"
    if getattr(config, "sliding_window", None) and getattr(
        config, "use_sliding_window", True
    ):
        return "sliding-window attention is not batched here"
    return None


def kv_bytes_per_token(loaded: LoadedModel) -> int | None:
    """Bytes of KV cache one token of one sequence takes, from the loaded config."""
    model = loaded.model
    if model is None:
        return None
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None)
    hidden = getattr(text, "hidden_size", None)
    if not (layers and heads and hidden):
        return None
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    itemsize = _compute_itemsize(model)
    return 2 * int(layers) * int(kv_heads) * int(head_dim) * itemsize


def _compute_itemsize(model: Any) -> int:
    import torch

    dtype = getattr(model, "dtype", None) or torch.float32
    if dtype in (torch.int8, torch.uint8):
        dtype = torch.float32
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class SequenceSpec:
    """What one sequence needs: the prompt and every per-request knob."""

    messages_or_prompt: str | Sequence[Message]
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    raw: bool = False
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logits_processor: LogitsHook | None = None
    constraint: Any = None  # core.generation.constrain.Constraint
    tools: Sequence[dict[str, Any]] | None = None


class _StopFilter:
    """Text chunks in, text out up to the first stop string (push form of
    decode._until_stop: holds back what may begin one)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.keep = max(len(s) for s in self.stops) - 1
        self.text = ""
        self.sent = 0

    def feed(self, chunk: str) -> tuple[str, bool]:
        self.text += chunk
        start = max(0, self.sent - self.keep)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            end = min(found)
            out = self.text[self.sent : end] if end > self.sent else ""
            self.sent = len(self.text)
            return out, True
        safe = len(self.text) - self.keep
        if safe > self.sent:
            out = self.text[self.sent : safe]
            self.sent = safe
            return out, False
        return "", False

    def flush(self) -> str:
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


class Row:
    """One answer in the batch: its tokens, sampling state, text and numbers."""

    def __init__(
        self,
        spec: SequenceSpec,
        emit: Callable[[str], Any],
        cancelled: Callable[[], bool],
    ) -> None:
        self.spec = spec
        self.emit = emit
        self.cancelled = cancelled
        self.prompt_ids: list[int] = []
        self.answer: list[int] = []
        self.next_token: int = 0
        self.position = 0  # of next_token
        self.max_new = spec.settings.max_new_tokens
        self.started = time.perf_counter()
        self.first: float | None = None
        self.ended: float | None = None
        self.stop_reason: str | None = None
        self.generator: Any = None
        self._streamer: Any = None
        self._filter = _StopFilter(spec.stop) if any(spec.stop) else None
        self._tail = max((len(s) for s in spec.stop), default=0) + 2
        self._hit = False
        self.on_token: Callable[[], Any] | None = None
        self.grammar: Any = None  # the constraint's processor, once prepared
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def stats(self) -> GenerationStats:
        ended = self.ended or time.perf_counter()
        stats = GenerationStats(
            prompt_tokens=len(self.prompt_ids),
            new_tokens=len(self.answer),
            total_s=ended - self.started,
            stop_reason=self.stop_reason or STOP_STOPPED,
        )
        if self.first is not None:
            stats.ttft_s = self.first - self.started
            if len(self.answer) > 1 and ended > self.first:
                stats.tokens_per_s = (len(self.answer) - 1) / (ended - self.first)
        return stats

    # -- text --

    def _text(self, text: str, stream_end: bool = False) -> None:
        if self._filter is None:
            if text:
                self.emit(text)
            return
        if self._hit:
            return
        out, hit = self._filter.feed(text)
        if out:
            self.emit(out)
        self._hit = hit

    def finish(self, reason: str) -> None:
        """End the answer: flush the text held back and record why it ended."""
        if self.done:
            return
        self.stop_reason = reason
        self.ended = time.perf_counter()
        if self._streamer is not None and not self._hit:
            self._streamer.end()
        if self._filter is not None and not self._hit:
            rest = self._filter.flush()
            if rest:
                self.emit(rest)


class Batch:
    """The running sequences over one model; `step()` advances all of them by a token.

    Not thread-safe: one thread (the generation queue's) calls everything.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        if loaded.model is None:
            raise GenerationError("no model is loaded", "load a model first")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None  # (rows, columns) 1 = a real token, 0 = left padding
        self.limit = context_length(self.model)
        self.eos = self._eos_ids()
        # transformers 5.x renamed past_key_values to cache (the old name warns)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def __len__(self) -> int:
        return len(self.rows)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        config = getattr(self.model, "generation_config", None)
        value = getattr(config, "eos_token_id", None)
        if value is None:
            value = self.tokenizer.eos_token_id
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
        return ids

    # -- joining --

    def prepare(self, seq: Row) -> None:
        """Tokenize and check the prompt (raises GenerationError on bad input)."""
        spec = seq.spec
        text = build_prompt(
            self.tokenizer, spec.messages_or_prompt, spec.raw, spec.tools
        )
        add_special = spec.raw or not has_chat_template(self.tokenizer)
        if self.limit is not None:
            check_length(self.tokenizer, text, self.limit)
        ids = self.tokenizer(text, add_special_tokens=add_special)["input_ids"]
        if self.limit is not None and len(ids) >= self.limit:
            raise GenerationError(
                f"the prompt is {len(ids)} tokens, longer than the model's context "
                f"of {self.limit}",
                "shorten the prompt or clear the chat",
            )
        seq.prompt_ids = list(ids)
        if spec.constraint is not None:
            from core.generation import constrain

            seq.grammar = constrain.processor(
                spec.constraint, self.tokenizer, vocab_width(self.model), len(ids)
            )
        if self.limit is not None:
            seq.max_new = min(seq.max_new, self.limit - len(ids))

    def add(self, seq: Row) -> None:
        """Prefill `seq` alone, sample its first token and merge it into the batch."""
        import torch
        from transformers import DynamicCache, TextStreamer

        tokenizer = self.tokenizer

        class _Text(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                seq._text(text, stream_end)

        seq._streamer = _Text(tokenizer, skip_prompt=False, skip_special_tokens=True)
        seq.generator = torch.Generator(device=self.model.device)
        if seq.spec.settings.seed is not None:
            seq.generator.manual_seed(seq.spec.settings.seed)
        else:
            seq.generator.seed()
        device = self.model.device
        ids = torch.tensor([seq.prompt_ids], device=device)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                use_cache=True,
                **{self._cache_kw: cache},
                logits_to_keep=1,
            )
        # The model has run a forward (a 4-bit model repacked its weights then): the
        # decode steps may keep their heap blocks (docs/facts.md, "Decoding wants ...").
        memory.heap_for_decoding()
        for layer in cache.layers:
            if type(layer).__name__ != "DynamicLayer":
                raise GenerationError(
                    f"the model's cache layer {type(layer).__name__} cannot be batched",
                    "answers run one at a time on this model",
                )
        seq.position = len(seq.prompt_ids) - 1  # the last prompt token's
        self._merge(cache, len(seq.prompt_ids))
        self.rows.append(seq)
        self._advance([seq], out.logits[:, -1, :])

    def _merge(self, cache: Any, length: int) -> None:
        import torch

        device = self.model.device
        if not self.rows:
            self.cache = cache
            self.mask = torch.ones((1, length), dtype=torch.long, device=device)
            return
        width = self.mask.shape[1]
        new_mask = torch.ones((1, length), dtype=torch.long, device=device)
        if length < width:
            _pad_left(cache, width - length)
            new_mask = _pad_mask(new_mask, width - length)
        elif length > width:
            _pad_left(self.cache, length - width)
            self.mask = _pad_mask(self.mask, length - width)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self.mask = torch.cat([self.mask, new_mask], dim=0)

    # -- leaving --

    def drop_finished(self) -> list[Row]:
        """Remove ended and cancelled sequences; returns them (ended)."""
        gone: list[Row] = []
        keep: list[int] = []
        for i, seq in enumerate(self.rows):
            if not seq.done and seq.cancelled():
                seq.finish(STOP_STOPPED)
            if seq.done:
                gone.append(seq)
            else:
                keep.append(i)
        if not gone:
            return gone
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache = self.mask = None
            return gone
        import torch

        index = torch.tensor(keep, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        used = self.mask.sum(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:, :]
            layer.values = layer.values.index_select(0, index)[:, :, first:, :]
        return gone

    # -- decoding --

    def step(self) -> None:
        """One forward for every running sequence, then each samples its token."""
        import torch

        if not self.rows:
            return
        device = self.model.device
        ids = torch.tensor([[s.next_token] for s in self.rows], device=device)
        positions = torch.tensor([[s.position] for s in self.rows], device=device)
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=self.mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_kw: self.cache},
            )
        self._advance(self.rows, out.logits[:, -1, :])

    def _advance(self, rows: list[Row], logits: Any) -> None:
        import torch

        now = time.perf_counter()
        for i, seq in enumerate(rows):
            try:
                with torch.inference_mode():
                    token = self._pick(seq, logits[i : i + 1].float())
            except Exception as exc:  # one request's hook fails: only it ends
                logger.debug("sampling failed for one answer", exc_info=True)
                seq.error = exc
                seq.finish(STOP_ERROR)
                continue
            if seq.first is None:
                seq.first = now
            seq.answer.append(token)
            if seq.on_token is not None:
                seq.on_token()
            seq.next_token = token
            seq.position += 1
            if token in self.eos:
                seq.finish(STOP_EOS)
                continue
            seq._streamer.put(torch.tensor([token]))
            if seq._hit or self._stop_in_tail(seq):
                seq.finish(STOP_STRING)
            elif len(seq.answer) >= seq.max_new:
                seq.finish(STOP_MAX)

    def _stop_in_tail(self, seq: Row) -> bool:
        if seq._filter is None:
            return False
        tail = self.tokenizer.decode(seq.answer[-seq._tail :], skip_special_tokens=True)
        if not any(s in tail for s in seq._filter.stops):
            return False
        seq._streamer.end()  # the held-back words reach the filter, which cuts there
        return True

    @staticmethod
    def _pick(seq: Row, scores: Any) -> int:
        """This sequence's next token from its (1, vocab) float logits."""
        import torch

        spec = seq.spec
        settings = spec.settings
        hooked = spec.logits_processor is not None or seq.grammar is not None
        if settings.repetition_penalty != 1.0 or hooked:
            ids = torch.tensor([seq.prompt_ids + seq.answer], device=scores.device)
        if settings.repetition_penalty != 1.0:
            taken = scores.gather(1, ids)
            penalty = settings.repetition_penalty
            taken = torch.where(taken < 0, taken * penalty, taken / penalty)
            scores = scores.scatter(1, ids, taken)
        if (spec.presence_penalty or spec.frequency_penalty) and seq.answer:
            answer = torch.tensor([seq.answer], device=scores.device)
            counts = torch.zeros_like(scores)
            counts.scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
            scores = (
                scores
                - spec.frequency_penalty * counts
                - spec.presence_penalty * (counts > 0).to(scores)
            )
        if seq.grammar is not None:
            scores = seq.grammar(ids, scores)
        if spec.logits_processor is not None:
            scores = spec.logits_processor(ids, scores)
        if not settings.do_sample:
            return int(scores.argmax(dim=-1))
        scores = scores / settings.temperature
        if 0 < settings.top_k < scores.shape[-1]:
            kth = torch.topk(scores, settings.top_k)[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if settings.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - settings.top_p)
            remove[..., -1:] = False
            scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))
        probs = scores.softmax(dim=-1)
        return int(torch.multinomial(probs, 1, generator=seq.generator))


def _pad_left(cache: Any, columns: int) -> None:
    import torch

    for layer in cache.layers:
        b, h, _, d = layer.keys.shape
        pad = layer.keys.new_zeros((b, h, columns, d))
        layer.keys = torch.cat([pad, layer.keys], dim=2)
        pad = layer.values.new_zeros((b, layer.values.shape[1], columns, d))
        layer.values = torch.cat([pad, layer.values], dim=2)


def _pad_mask(mask: Any, columns: int) -> Any:
    import torch

    pad = mask.new_zeros((mask.shape[0], columns))
    return torch.cat([pad, mask], dim=1)
