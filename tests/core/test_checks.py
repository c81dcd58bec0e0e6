"""Checks before Load: what this machine cannot run, names that match no module."""

from __future__ import annotations

import pytest

from core import checks
from core.checks import Machine, ModelFacts, Problem
from core.errors import SettingsError
from core.model import facts
from core.settings import LoadOptions, QuantSettings, preset

NO_GPU = Machine(0, False, "CPU")
ONE_GPU = Machine(1, False, "CUDA: test")
TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "_name_or_path": "tiny-llama",
}


def fields(problems: list[Problem]) -> list[str]:
    return [p.field for p in problems]


NF4 = QuantSettings(mode="4bit", bnb_4bit_quant_type="nf4")


def run(options: LoadOptions, machine: Machine, quant: QuantSettings = NF4):
    return checks.check(quant, options, machine)


def test_cuda_device_map_without_a_gpu() -> None:
    problems = run(LoadOptions("cuda:0"), NO_GPU)
    assert fields(problems) == ["device_map"]
    assert problems[0].message == (
        "Device map: cuda:0 needs an NVIDIA GPU and this machine has none"
    )
    assert problems[0].hint == "pick cpu or auto"
    assert run(LoadOptions("cuda:0"), ONE_GPU) == []
    assert "1 GPU (cuda:0)" in run(LoadOptions("cuda:1"), ONE_GPU)[0].message
    assert run(LoadOptions("cuda:0"), None) == []  # machine not probed yet


def test_flash_attention_needs_a_gpu_and_its_package() -> None:
    options = LoadOptions("auto", attn_implementation="flash_attention_2")
    assert "NVIDIA GPU" in run(options, NO_GPU)[0].message
    assert "flash-attn" in run(options, ONE_GPU)[0].message
    assert run(options, Machine(1, True, "CUDA: x")) == []
    for attn in ("auto", "eager", "sdpa"):
        assert run(LoadOptions(attn_implementation=attn), ONE_GPU) == []


def test_gpu_memory_caps_without_a_gpu() -> None:
    problems = run(LoadOptions(max_memory="0=4GiB"), NO_GPU)
    assert fields(problems)[0] == "max_memory" and not problems[0].warning
    assert run(LoadOptions(max_memory="0=4GiB"), ONE_GPU) == []


def test_fp32_offload_with_the_whole_model_on_the_cpu() -> None:
    quant = NF4.replace(llm_int8_enable_fp32_cpu_offload=True)
    problems = run(LoadOptions("cpu"), ONE_GPU, quant)
    assert fields(problems) == ["llm_int8_enable_fp32_cpu_offload"]
    assert "would quantize nothing" in problems[0].message
    assert fields(run(LoadOptions("auto"), NO_GPU, quant)) == fields(problems)
    assert run(LoadOptions("auto"), ONE_GPU, quant) == []


def test_a_cpu_cap_below_the_model_stops_and_any_cpu_cap_warns() -> None:
    model = ModelFacts((), lambda quant, options: 10_000)
    small = checks.check(NF4, LoadOptions("cpu", "cpu=1KiB"), NO_GPU, model)
    assert fields(small) == ["max_memory"] and not small[0].warning
    assert "caps the CPU at 1KiB, but the model needs 9.8 KiB" in small[0].message
    roomy = checks.check(NF4, LoadOptions("cpu", "cpu=1GiB"), NO_GPU, model)
    assert [p.warning for p in roomy] == [True]
    assert checks.refuse(roomy) == roomy
    with pytest.raises(SettingsError) as info:
        checks.refuse(small)
    assert info.value.field == "max_memory"
    assert info.value.message == small[0].message


def test_matches_follows_the_library_rule() -> None:
    module = "model.layers.0.mlp.down_proj"
    assert checks.matches("mlp.down_proj", module)
    assert checks.matches("model.layers", module)
    assert checks.matches("model.layers.0", module)
    assert not checks.matches("model.layers.1", "model.layers.11.mlp")
    assert not checks.matches("mlp.gate", "model.layers.0.mlp.gate_proj")


def test_unknown_skip_module_names_get_the_nearest_real_ones() -> None:
    names = facts.module_names(TINY)
    assert "lm_head" in names and "model.layers.1.mlp.down_proj" in names
    quant = preset("nf4").quant.replace(
        llm_int8_skip_modules=["lm_head", "mlp.down_prj", "model.layers.1", "visual"]
    )
    problems = checks.check(quant, LoadOptions(), None, ModelFacts(tuple(names)))
    assert [p.message for p in problems] == [
        "Keep unquantized (llm_int8_skip_modules): 'mlp.down_prj' matches no "
        "module of this model",
        "Keep unquantized (llm_int8_skip_modules): 'visual' matches no module of "
        "this model",
    ]
    assert problems[0].hint.startswith("did you mean mlp.down_proj")
    # Nothing close: the hint still names real modules to pick from.
    assert problems[1].hint == (
        "this model's names include lm_head, mlp.down_proj, mlp.gate_proj"
    )
    # Unquantized settings skip nothing; an unknown structure checks nothing.
    assert checks.check(QuantSettings(), LoadOptions(), None, ModelFacts(names)) == []
    assert checks.check(quant, LoadOptions(), None, ModelFacts()) == []


def test_load_errors_name_what_to_do() -> None:
    """The flash-attention error used to say only 'see Details for more'."""
    from core.model.catalog import ModelRef
    from core.model.loader import _explain

    ref = ModelRef("default", "SmolLM2-135M-Instruct")
    flash = ImportError(
        "FlashAttention2 has been toggled on, but it cannot be used due to the "
        "following error: the package for FlashAttention2 doesn't seem to be installed."
    )
    error = _explain(flash, ref)
    assert "flash_attention_2" in error.message
    assert error.hint.startswith("set Attention to auto or sdpa")
    cuda = AssertionError("Torch not compiled with CUDA enabled")
    assert _explain(cuda, ref).hint == "set Device map to auto or cpu"
    other = _explain(RuntimeError("something odd"), ref)
    assert other.hint.startswith("try the nf4 preset")
    for exc in (flash, cuda, RuntimeError("x")):
        assert not _explain(exc, ref).hint.startswith("see Details")
