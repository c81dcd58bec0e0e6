"""The cost of quantization, token by token.

The baseline (fp32 or bf16) is run teacher-forced on a quantized model's answer: at
every position of the answer, both models' next-token distributions are compared by
KL(baseline || quantized) over the full vocabulary, the direction the Compare lab's
mean KL uses. Each token keeps both top-5 lists with their probabilities, for the
hover of a divergence view; the summary is the mean KL, the share of tokens above a
KL threshold and top-1 agreement. Exports: JSON and a self-contained HTML page whose
shading follows the per-token KL.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import NibbleError

DEFAULT_THRESHOLD = 0.1  # nats: above it a token's distribution has visibly moved
TOP = 5
# The KL at which a token's shade is at its darkest; below it the shade grows linearly.
SHADE_FULL = 1.0


@dataclass
class TokenDivergence:
    """One token of the answer: its text, the KL at its position, both top-5 lists."""

    text: str
    token_id: int
    kl: float
    baseline_top: list[tuple[str, float]]
    quantized_top: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_id": self.token_id,
            "kl": self.kl,
            "baseline_top5": [[t, p] for t, p in self.baseline_top],
            "quantized_top5": [[t, p] for t, p in self.quantized_top],
        }


@dataclass
class Divergence:
    """Per-token KL of a quantized answer against the baseline, and its summary."""

    baseline: str
    quantized: str
    prompt: str
    tokens: list[TokenDivergence] = field(default_factory=list)
    mean_kl: float = 0.0  # computed over all positions at once, not from `tokens`
    top1_agreement: float = 0.0
    threshold: float = DEFAULT_THRESHOLD

    @property
    def share_above(self) -> float:
        """The share of the answer's tokens whose KL is above the threshold."""
        if not self.tokens:
            return 0.0
        return sum(t.kl > self.threshold for t in self.tokens) / len(self.tokens)

    def summary(self) -> str:
        return (
            f"{self.share_above:.0%} of {len(self.tokens)} tokens above KL "
            f"{self.threshold:g} · mean KL {self.mean_kl:.4f} · top-1 agreement "
            f"{self.top1_agreement:.0%}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "quantized": self.quantized,
            "prompt": self.prompt,
            "threshold": self.threshold,
            "mean_kl": self.mean_kl,
            "share_above_threshold": self.share_above,
            "top1_agreement": self.top1_agreement,
            "tokens": [t.to_dict() for t in self.tokens],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_html(self) -> str:
        """A self-contained page: the answer, each token shaded by its KL, the two
        top-5 lists as the token's tooltip."""
        spans = []
        for t in self.tokens:
            tip = "\n".join(
                [f"KL {t.kl:.4f}", "baseline:"]
                + [f"  {_show(s)} {p:.3f}" for s, p in t.baseline_top]
                + ["quantized:"]
                + [f"  {_show(s)} {p:.3f}" for s, p in t.quantized_top]
            )
            spans.append(
                f'<span style="background:{shade(t.kl)}" data-kl="{t.kl:.6f}" '
                f'title="{html.escape(tip)}">{html.escape(t.text)}</span>'
            )
        title = html.escape(f"{self.quantized} vs {self.baseline}")
        return (
            "<!doctype html>\n<html><head><meta charset='utf-8'>"
            f"<title>Divergence: {title}</title>"
            "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}"
            ".answer{white-space:pre-wrap;line-height:1.6}"
            "span[title]{cursor:help}</style></head><body>"
            f"<h1>{title}</h1><p>{html.escape(self.summary())}</p>"
            f"<p><b>Prompt:</b> {html.escape(self.prompt)}</p>"
            f"<div class='answer'>{''.join(spans)}</div>"
            "<p>Darker red: the quantized model's next-token distribution moved "
            f"further from the baseline's (KL ≥ {SHADE_FULL:g} is the darkest). "
            "Hover a token for both top-5 lists.</p></body></html>\n"
        )


def shade(kl: float) -> str:
    """The background of a token with this KL: transparent at 0, red at SHADE_FULL."""
    alpha = max(0.0, min(kl / SHADE_FULL, 1.0))
    return f"rgba(220, 40, 40, {alpha:.3f})"


def _show(text: str) -> str:
    return repr(text)[1:-1] or "∅"


def divergence(
    baseline: Any,
    quantized: Any,
    prompt_ids: list[int],
    answer_ids: list[int],
    threshold: float = DEFAULT_THRESHOLD,
    prompt: str = "",
) -> Divergence:
    """Teacher-force both models on prompt + answer and compare them per answer token.

    `baseline` and `quantized` are LoadedModels (model + tokenizer); the answer is
    the quantized model's. Position i of the answer compares the distributions that
    predicted answer token i.
    """
    import torch

    tokenizer = quantized.tokenizer
    ids = list(prompt_ids) + list(answer_ids)
    start, n = len(prompt_ids), len(answer_ids)
    out = Divergence(_name(baseline), _name(quantized), prompt, threshold=threshold)
    if n == 0:
        return out

    def logp(loaded: Any) -> Any:
        model = loaded.model
        x = torch.tensor([ids], device=model.device)
        with torch.inference_mode():
            logits = model(input_ids=x).logits[0, start - 1 : start + n - 1]
        return torch.log_softmax(logits.float().cpu(), dim=-1)

    p = logp(baseline)
    q = logp(quantized)
    per_token = (p.exp() * (p - q)).sum(-1)
    # The mean over all positions at once, as the lab's summary takes it.
    mean = torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean")
    out.mean_kl = float(mean)
    out.top1_agreement = float((p.argmax(-1) == q.argmax(-1)).float().mean())
    p_top = p.exp().topk(TOP, dim=-1)
    q_top = q.exp().topk(TOP, dim=-1)

    def listing(top: Any, i: int) -> list[tuple[str, float]]:
        return [
            (tokenizer.decode([int(t)]), float(v))
            for v, t in zip(top.values[i], top.indices[i], strict=True)
        ]

    for i, token in enumerate(answer_ids):
        out.tokens.append(
            TokenDivergence(
                tokenizer.decode([int(token)]),
                int(token),
                float(per_token[i]),
                listing(p_top, i),
                listing(q_top, i),
            )
        )
    return out


def _name(loaded: Any) -> str:
    quant = getattr(loaded, "quant", None)
    if quant is not None and quant.quantized:
        return quant.label()
    options = getattr(loaded, "options", None)
    dtype = getattr(getattr(loaded, "model", None), "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else str(options)


class BaselineDoesNotFit(NibbleError):
    """The baseline does not fit here; `largest` is the largest preset that does
    (None when none does), to offer as the reference instead."""

    def __init__(self, message: str, hint: str, largest: str | None) -> None:
        super().__init__(message, hint)
        self.largest = largest


def check_baseline(ref: Any, baseline: str, options: Any, device: Any = None) -> None:
    """Raise BaselineDoesNotFit when preset `baseline` does not fit this machine
    (the estimate's verdict, judged on its peak during the load)."""
    from core.model.estimate import table
    from core.model.fit import probe_device
    from core.settings import preset

    chosen = preset(baseline)
    rows = table(ref, None, options, device=device or probe_device())
    row = next((r for r in rows.rows if r.preset == chosen.name), None)
    if row is None or row.verdict != "does not fit":
        return
    largest = rows.recommended
    raise BaselineDoesNotFit(
        f"the baseline {chosen.name} does not fit here ({row.verdict_text})",
        f"use {largest}, the largest preset that fits, as the reference"
        if largest
        else "free memory, or pick a smaller model",
        largest,
    )


def answer_divergence(
    ref: Any,
    quant: Any,
    options: Any,
    prompt: str | Sequence[dict[str, Any]],
    answer: str,
    baseline: str = "fp32",
    threshold: float = DEFAULT_THRESHOLD,
    raw: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> Divergence:
    """The divergence of a kept answer: `answer` was written by `ref` loaded with
    `quant` / `options` to `prompt` (chat messages, or text when `raw`).

    Loads a fresh copy of both the quantized model and the baseline preset (which
    must fit: BaselineDoesNotFit otherwise), feeds both the prompt as the chat
    would and the answer's tokens, and compares them token by token.
    """
    from core.generation.decode import build_prompt, has_chat_template
    from core.model import loader
    from core.settings import preset

    check_baseline(ref, baseline, options)
    base_preset = preset(baseline)
    say = progress or (lambda done, total, message: None)

    def step(what: str) -> Callable[[int, int, str], None]:
        return lambda done, total, message: say(done, total, f"{what}: {message}")

    quantized = loader.load(ref, quant, options, step("quantized"), cancel)
    base = None
    try:
        base = loader.load(
            ref,
            base_preset.quant,
            base_preset.load_options(options),
            step(f"baseline {base_preset.name}"),
            cancel,
        )
        tokenizer = quantized.tokenizer
        text = build_prompt(tokenizer, prompt, raw)
        add_special = raw or not has_chat_template(tokenizer)
        prompt_ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not answer_ids:
            raise NibbleError("the answer is empty", "pick an answer with some text")
        say(0, 0, "Comparing token by token")
        shown = prompt if isinstance(prompt, str) else _last_question(prompt)
        return divergence(base, quantized, prompt_ids, answer_ids, threshold, shown)
    finally:
        if base is not None:
            loader.unload(base)
        loader.unload(quantized)


def _last_question(messages: Sequence[dict[str, Any]]) -> str:
    return next(
        (
            str(m.get("content") or "")
            for m in reversed(messages)
            if m["role"] == "user"
        ),
        "",
    )
