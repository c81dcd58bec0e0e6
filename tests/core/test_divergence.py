"""The cost of quantization token by token: nf4 against fp32 on the default model."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.lab.divergence import Divergence, divergence, shade
from core.model import catalog, loader
from core.settings import LoadOptions, preset

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def diverged(default_dir: Path) -> Iterator[Divergence]:
    import torch

    ref = catalog.resolve(str(default_dir))
    cpu = LoadOptions(device_map="cpu", dtype="float32")
    base = loader.load(ref, options=cpu)
    nf4 = loader.load(ref, preset("nf4").quant, cpu)
    try:
        prompt_ids = nf4.tokenizer(PROMPT)["input_ids"]
        with torch.inference_mode():
            out = nf4.model.generate(
                torch.tensor([prompt_ids]),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=nf4.tokenizer.eos_token_id,
            )
        answer = out[0, len(prompt_ids) :].tolist()
        yield divergence(base, nf4, prompt_ids, answer, prompt=PROMPT)
    finally:
        loader.unload(nf4)
        loader.unload(base)


def test_per_token_kls_sum_to_the_mean_kl_times_tokens(diverged: Divergence) -> None:
    n = len(diverged.tokens)
    assert n == 8
    total = sum(t.kl for t in diverged.tokens)
    assert math.isclose(total, diverged.mean_kl * n, rel_tol=1e-5, abs_tol=1e-6)
    assert diverged.mean_kl > 0  # nf4 is not fp32
    assert all(t.kl > -1e-5 for t in diverged.tokens)
    above = sum(t.kl > diverged.threshold for t in diverged.tokens) / n
    assert diverged.share_above == above
    assert 0.0 <= diverged.top1_agreement <= 1.0


def test_each_token_carries_both_top5_lists(diverged: Divergence) -> None:
    for t in diverged.tokens:
        assert len(t.baseline_top) == len(t.quantized_top) == 5
        for top in (t.baseline_top, t.quantized_top):
            probs = [p for _, p in top]
            assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-5
    # Greedy nf4: every answer token is the quantized model's top-1 at its position.
    assert all(t.quantized_top[0][0] == t.text for t in diverged.tokens)
    text = "".join(t.text for t in diverged.tokens)
    assert text.strip()


def test_json_and_html_exports_follow_the_values(diverged: Divergence) -> None:
    data = json.loads(diverged.to_json())
    assert [t["kl"] for t in data["tokens"]] == [t.kl for t in diverged.tokens]
    assert data["share_above_threshold"] == diverged.share_above
    page = diverged.to_html()
    assert page.startswith("<!doctype html>") and "<script" not in page
    shown = re.findall(
        r'background:rgba\(220, 40, 40, ([0-9.]+)\)" data-kl="([0-9.e-]+)"', page
    )
    assert len(shown) == len(diverged.tokens)
    pairs = sorted((float(k), float(a)) for a, k in shown)
    alphas = [a for _, a in pairs]
    assert alphas == sorted(alphas)  # a higher KL is never lighter
    assert shade(0.0).endswith("0.000)") and shade(5.0).endswith("1.000)")


def test_the_compare_labs_share_above_the_threshold_is_the_divergences(
    tiny_dir: Path,
) -> None:
    """The Compare lab's 'tokens above KL' counts what the divergence view shades:
    on a text that fits one window, with the whole vocabulary kept, both see the
    same per-token KLs of the same two models."""
    from core.lab import compare, measure

    ref = catalog.resolve(str(tiny_dir))
    cpu = LoadOptions(device_map="cpu")
    base = loader.load(ref, options=cpu)
    nf4 = loader.load(ref, preset("nf4").quant, cpu)
    config = compare.CompareConfig(
        new_tokens=2, eval_tokens=64, window=128, stride=64, top_k=49152
    )
    try:
        ids = compare.tokenize_eval(nf4.tokenizer, config)
        # On AVX512-BF16 CPUs the first forward of a 4-bit model repacks its weights
        # and later forwards compute in another kernel: compare those.
        import torch

        with torch.inference_mode():
            nf4.model(ids)
        per_token = divergence(base, nf4, ids[0, :1].tolist(), ids[0, 1:].tolist())
        kls = sorted(t.kl for t in per_token.tokens)
        # A threshold in the widest gap between two KLs of the middle third, so
        # that about half are above it and float rounding cannot move one across.
        third = len(kls) // 3
        gap = max(range(third, 2 * third), key=lambda i: kls[i + 1] - kls[i])
        threshold = (kls[gap] + kls[gap + 1]) / 2
        window = (config.window, config.stride, config.top_k)
        reference = measure.evaluation(base.model, ids, None, *window).reference
        lab = measure.evaluation(
            nf4.model, ids, reference, *window, threshold=threshold
        )
    finally:
        loader.unload(nf4)
        loader.unload(base)
    per_token.threshold = threshold
    assert lab.share_above == per_token.share_above
    assert 0.3 < lab.share_above < 0.7
    assert lab.mean_kl == pytest.approx(per_token.mean_kl, rel=1e-3)
    assert lab.top1_agreement == pytest.approx(per_token.top1_agreement)

    # The lab's rows carry it, at the comparison's threshold.
    config.kl_threshold = 0.0
    result = compare.run(ref, "baseline,nf4", config)
    baseline_row, nf4_row = result.rows
    assert nf4_row.ok, nf4_row.error
    assert baseline_row.kl_share_above == 0.0  # the baseline against itself
    assert nf4_row.kl_share_above > 0.5  # nf4 moved (almost) every token a little
    assert result.to_dict()["rows"][1]["kl_share_above"] == nf4_row.kl_share_above
    assert result.config["kl_threshold"] == 0.0
