"""Measurements for the Compare lab: peak memory, strided perplexity with KL and
top-1 agreement against a reference, timed greedy decoding, and the environment.

The reference's next-token distributions are kept as their top-K log-probs plus one
bucket for the rest of the vocabulary (about 140 MB for 4,400 tokens at K=4096), so the
KL is taken over K + 1 outcomes: a lower bound on the full-vocabulary KL that misses only
the divergence inside the reference's unlikely tail. On the default model, nf4 against
fp32, K=4096 recovers 99.6% of the full KL (K=256: 93.8%; K=1024: 98.0%).
"""

from __future__ import annotations

import logging
import math
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import machine, memory
from core.errors import CancelledError, NibbleError
from core.lab.divergence import DEFAULT_THRESHOLD
from core.model.loader import LoadedModel

logger = logging.getLogger(__name__)


def environment() -> dict[str, Any]:
    """Library versions, CPU, GPUs and driver: what a row needs to be reproduced."""
    host = machine.host()
    versions = machine.versions()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": machine.os_name(),
        "cpu": host["cpu"],
        "cpu_count": host["cores_logical"],
        "ram_bytes": host["ram_total"],
    }
    for name in ("nibble", "torch", "transformers", "bitsandbytes", "accelerate"):
        env[name] = versions[name]
    env["cuda"], env["gpus"], env["driver"] = None, [], machine.driver_version()
    try:
        import torch

        if torch.cuda.is_available():
            env["cuda"] = torch.version.cuda
            env["gpus"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    except Exception as exc:  # a broken CUDA install still gets its row data
        logger.debug("no CUDA info: %s", exc)
    return env


class PeakMemory:
    """Samples the process's memory in a background thread (and CUDA peak) while open.

    Both the RSS peak and the anonymous peak (core.memory): on a CPU the RSS counts
    mapped checkpoint pages the OS can drop, the anonymous memory is what stays.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        import psutil

        self.interval_s = interval_s
        self.process = psutil.Process()
        self.before = 0
        self.peak_rss = 0
        self.anon_before: int | None = None
        self.peak_anon: int | None = None
        self.peak_vram: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cuda = False

    def _read(self) -> tuple[int, int | None]:
        now = memory.process_memory()
        if now is None:
            return int(self.process.memory_info().rss), None
        return now.rss, now.anon

    def _sample(self) -> None:
        rss, anon = self._read()
        self.peak_rss = max(self.peak_rss, rss)
        if anon is not None:
            self.peak_anon = max(self.peak_anon or 0, anon)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.before, self.anon_before = self._read()
        self.peak_rss, self.peak_anon = self.before, self.anon_before
        self._thread = threading.Thread(
            target=self._loop, name="nibble-rss", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_vram = int(torch.cuda.max_memory_allocated())


@dataclass
class Reference:
    """The baseline's next-token distributions on the eval text (top-K + rest)."""

    top_logp: Any  # [N, K] float32
    top_ids: Any  # [N, K] int32
    rest_logp: Any  # [N] float32, log of the mass outside the top K
    argmax: Any  # [N] int64


def _rest_logp(top_logp: Any) -> Any:
    import torch

    mass = torch.logsumexp(top_logp, dim=-1).clamp(max=0.0)
    return torch.log(-torch.expm1(mass))


@dataclass
class Evaluation:
    """What one pass over the evaluation text measured against the reference."""

    perplexity: float
    reference: Reference
    mean_kl: float
    top1_agreement: float
    share_above: float
    """The share of scored tokens whose KL is above `threshold` (as the divergence
    view counts them, core.lab.divergence)."""
    threshold: float


def evaluation(
    model: Any,
    input_ids: Any,
    reference: Reference | None = None,
    window: int = 512,
    stride: int = 256,
    top_k: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> Evaluation:
    """Perplexity over strided windows, and KL / top-1 agreement against `reference`.

    Every token after the first is scored exactly once, with up to `window - stride`
    tokens of context from the previous window. With no reference, this run's own
    distributions become it (and its KL is 0 and its agreement 1 by construction).
    `threshold` (nats) is what a token's KL must exceed to count in `share_above`.
    """
    import torch

    n = int(input_ids.shape[1])
    limit = _context_length(model)
    window = min(window, limit) if limit else window
    stride = min(stride, window)
    starts = list(range(0, max(n - 1, 1), stride))
    nll_sum, count = 0.0, 0
    tops, ids, rests, argmaxes = [], [], [], []
    kl_sum, agree, above = 0.0, 0, 0
    prev_end = 1  # token 0 has nothing before it to predict it from
    device = model.device
    for i, begin in enumerate(starts):
        if cancel is not None and cancel.is_set():
            raise CancelledError("Comparison cancelled")
        end = min(begin + window, n)
        if end <= prev_end:
            break
        chunk = input_ids[:, begin:end].to(device)
        with torch.inference_mode():
            logits = model(chunk).logits[0].float()
        # logits[t] predicts token begin + t + 1; score only targets not seen yet.
        first = prev_end - begin - 1
        logp = torch.log_softmax(logits[first : end - begin - 1], dim=-1).cpu()
        targets = input_ids[0, prev_end:end]
        nll_sum -= float(logp.gather(1, targets[:, None]).sum())
        count += int(targets.numel())
        top_logp, top_ids = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)
        # With the whole vocabulary kept there is no rest: the bucket would only
        # hold float32 noise of the log-sum (1e-6), as large as a small KL.
        whole = top_logp.shape[-1] == logp.shape[-1]
        rest = _rest_logp(top_logp).clamp(min=-100.0)
        if whole:
            rest = torch.full_like(rest, -100.0)
        top = logp.argmax(dim=-1)
        if reference is None:
            p_top, p_ids, p_rest, p_arg = top_logp, top_ids, rest, top
            tops.append(top_logp)
            ids.append(top_ids.to(torch.int32))
            rests.append(rest)
            argmaxes.append(top)
        else:
            sl = slice(count - int(targets.numel()), count)
            p_top, p_ids = reference.top_logp[sl], reference.top_ids[sl].long()
            p_rest, p_arg = reference.rest_logp[sl], reference.argmax[sl]
        q_top = logp.gather(1, p_ids)
        q_rest = _rest_logp(q_top).clamp(min=-100.0)
        if whole:
            q_rest = torch.full_like(q_rest, -100.0)
        kl = (p_top.exp() * (p_top - q_top)).sum(-1)
        p_rest_prob = p_rest.exp()
        kl += torch.where(
            p_rest_prob > 0, p_rest_prob * (p_rest - q_rest), torch.zeros_like(kl)
        )
        kl_sum += float(kl.sum())
        above += int((kl > threshold).sum())
        agree += int((top == p_arg).sum())
        prev_end = end
        del logits, logp
        if progress is not None:
            progress(i + 1, len(starts))
        if end == n:
            break
    if count == 0:
        raise NibbleError(
            "the evaluation text is too short to score",
            "use at least 16 tokens of text",
        )
    if reference is None:
        reference = Reference(
            torch.cat(tops), torch.cat(ids), torch.cat(rests), torch.cat(argmaxes)
        )
    elif int(reference.argmax.shape[0]) != count:
        raise NibbleError(
            f"this row scored {count} tokens, the baseline {reference.argmax.shape[0]}",
            "compare settings of one model only: the tokenizer must not change",
        )
    return Evaluation(
        math.exp(nll_sum / count),
        reference,
        max(kl_sum / count, 0.0),
        agree / count,
        above / count,
        threshold,
    )


def _context_length(model: Any) -> int | None:
    from core.generation.decode import context_length

    return context_length(model)


def measure_generation(
    loaded: LoadedModel,
    prompt: str,
    new_tokens: int,
    cancel: threading.Event | None = None,
    prompt_lookup: bool = False,
) -> tuple[str, float | None, float | None, int]:
    """Greedy decode exactly `new_tokens` tokens: (answer, TTFT s, tok/s, tokens).

    `prompt_lookup` decodes with prompt lookup; a model loaded with fast decode
    decodes compiled (its static cache sized to its bucket).

    End-of-sequence does not stop the run, so every row decodes the same count; the
    answer is the text up to the first end-of-sequence token, as a chat would show it.
    """
    import copy

    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    from core.generation import decode

    model, tokenizer = loaded.model, loaded.tokenizer
    text = decode.build_prompt(tokenizer, prompt)
    inputs = tokenizer(
        text,
        return_tensors="pt",
        add_special_tokens=not decode.has_chat_template(tokenizer),
    )
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    prompt_len = int(inputs["input_ids"].shape[1])
    limit = decode.context_length(model)
    if limit is not None:
        new_tokens = max(min(new_tokens, limit - prompt_len), 1)
    stamps: list[float] = []

    class _Clock(BaseStreamer):
        def put(self, value: Any) -> None:
            stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            flag = cancel is not None and cancel.is_set()
            return torch.full((input_ids.shape[0],), flag, dtype=torch.bool)

    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    config = copy.deepcopy(model.generation_config)
    # None would fall back to the model's own eos; an empty list means none.
    config.eos_token_id = []
    config.pad_token_id = tokenizer.pad_token_id or next(iter(eos_ids), 0)
    config.do_sample = False
    config.temperature = config.top_p = config.top_k = None
    config.max_new_tokens = new_tokens  # with no eos, exactly this many
    config.max_length = None
    if prompt_lookup:
        from core.settings.generation import PROMPT_LOOKUP_TOKENS

        config.prompt_lookup_num_tokens = PROMPT_LOOKUP_TOKENS
    if decode.is_compiled(loaded):
        config.max_cache_len, _ = loaded.fast_decode.claim(prompt_len + new_tokens)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            generation_config=config,
            streamer=_Clock(),
            stopping_criteria=StoppingCriteriaList([_Cancel()]),
        )
    if cancel is not None and cancel.is_set():
        raise CancelledError("Comparison cancelled")
    new = out[0, prompt_len:].tolist()
    cut = next((i for i, t in enumerate(new) if t in eos_ids), len(new))
    answer = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
    # stamps[0] is the prompt, stamps[1] the first new token.
    ttft = stamps[1] - started if len(stamps) > 1 else None
    speed = None
    # Tokens, not streamer calls: prompt lookup hands over several at a time.
    if len(new) > 1 and len(stamps) > 2 and stamps[-1] > stamps[1]:
        speed = (len(new) - 1) / (stamps[-1] - stamps[1])
    return answer, ttft, speed, len(new)
