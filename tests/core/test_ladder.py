"""The step-down ladder: when a model does not fit, which settings would, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.model import loader
from core.model.catalog import folder_ref
from core.model.estimate import estimate
from core.model.fit import DeviceInfo, Gpu
from core.model.ladder import family_of, ladder
from core.settings import PRESETS, QuantSettings

GiB = 2**30
MiB = 2**20
BIG = {
    "model_type": "llama",
    "_name_or_path": "acme/Tiny-1.1B-Chat",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
SMALL = {
    **BIG,
    "_name_or_path": "acme/Tiny-300M-Chat",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
}
STRANGER = {**SMALL, "_name_or_path": "other/Thing-100M"}


def test_family_names_drop_owner_and_size() -> None:
    assert family_of("acme/Tiny-1.1B-Chat") == family_of("Tiny-300M-Chat")
    assert family_of("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-instruct"
    assert family_of("other/Thing-100M") != family_of("acme/Tiny-1.1B-Chat")


def test_a_small_gpu_shows_every_rung_in_order() -> None:
    free = 900 * MiB
    device = DeviceInfo([Gpu(0, "Test GPU", 8 * GiB, free)], 64 * GiB, 32 * GiB, True)
    steps = ladder(BIG, device=device, family=[SMALL, STRANGER])
    assert steps.current.verdict == "does not fit"
    assert [r.step for r in steps.rungs] == ["nf4-dq", "context", "offload", "smaller"]
    nf4, context, offload, smaller = steps.rungs
    # Each rung builds on the one before and carries its own estimate and cost.
    assert (
        nf4.quant.bnb_4bit_use_double_quant and nf4.quant.bnb_4bit_quant_type == "nf4"
    )
    assert nf4.estimate.judged_bytes < steps.current.judged_bytes
    assert context.quant == nf4.quant and context.context < 4096
    assert context.estimate.kv_cache_bytes < nf4.estimate.kv_cache_bytes
    assert offload.quant.llm_int8_enable_fp32_cpu_offload
    assert offload.options.device_map == "auto"
    assert set(offload.options.max_memory) == {"0", "cpu"}
    assert offload.estimate.offload is not None
    assert smaller.model_name == "acme/Tiny-300M-Chat"
    assert smaller.estimate.weights_bytes < nf4.estimate.weights_bytes
    assert all(r.cost for r in steps.rungs)
    # Neither 4 bits nor the shortest context fit: offload is the first rung that
    # does, with the GPU's share within the free VRAM.
    assert (nf4.fits, context.fits, offload.fits) == (False, False, True)
    assert context.context == 256
    assert nf4.estimate.judged_bytes > free and context.estimate.judged_bytes > free
    assert steps.first_fit is offload
    assert offload.estimate.offload.gpu_bytes < free
    assert smaller.fits == (smaller.estimate.judged_bytes <= free)
    lines = steps.lines()
    assert lines[1].startswith("1. nf4 + double quant") and "does not fit" in lines[1]
    assert lines[4].startswith("4. smaller model: acme/Tiny-300M-Chat")


def test_without_a_gpu_the_ladder_is_judged_on_ram_and_has_no_offload() -> None:
    fp32 = estimate(BIG, device=DeviceInfo([], 64 * GiB, 32 * GiB, False))
    ram = fp32.judged_bytes // 2
    device = DeviceInfo([], 64 * GiB, ram, cuda=False)
    steps = ladder(BIG, device=device, family=[SMALL])
    assert [r.step for r in steps.rungs] == ["nf4-dq", "context", "smaller"]
    for rung in steps.rungs:
        # Judged on the higher of the steady total and the peak during load.
        assert rung.fits == (rung.estimate.judged_bytes <= ram)
    assert steps.first_fit is not None


def test_settings_already_at_nf4_dq_start_at_the_context() -> None:
    device = DeviceInfo([], 64 * GiB, 100 * MiB, cuda=False)
    dq = PRESETS["nf4-dq"]
    steps = ladder(BIG, dq.quant, dq.load_options(), device=device)
    assert [r.step for r in steps.rungs] == ["context"]
    assert steps.first_fit is None
    assert steps.rungs[0].context == 256


def test_an_out_of_memory_during_a_load_is_named(tiny_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    ref = folder_ref(tiny_dir)
    err = loader._explain(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        ref,
        QuantSettings(),
        None,
    )
    assert "ran out of GPU memory: needs" in err.message
    assert "was free" in err.message and "unknown amount" not in err.message
    assert "--fit auto" in err.hint
    cpu = loader._explain(MemoryError(), ref, QuantSettings(), None)
    assert "ran out of CPU memory: needs" in cpu.message
