"""Checks before Load: what this machine cannot run, names that match no module."""

from __future__ import annotations

from core import checks
from core.checks import Machine, Problem
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


def test_cuda_device_map_without_a_gpu() -> None:
    problems = checks.check_options(LoadOptions("cuda:0"), NO_GPU)
    assert fields(problems) == ["device_map"]
    assert "needs an NVIDIA GPU" in problems[0].message
    assert problems[0].hint == "pick cpu or auto"
    assert checks.check_options(LoadOptions("cuda:0"), ONE_GPU) == []
    assert "1 GPU" in checks.check_options(LoadOptions("cuda:1"), ONE_GPU)[0].message


def test_flash_attention_needs_a_gpu_and_its_package() -> None:
    options = LoadOptions("auto", attn_implementation="flash_attention_2")
    assert "NVIDIA GPU" in checks.check_options(options, NO_GPU)[0].message
    assert "flash-attn" in checks.check_options(options, ONE_GPU)[0].message
    assert checks.check_options(options, Machine(1, True, "CUDA: x")) == []
    for attn in ("auto", "eager", "sdpa"):
        assert checks.check_options(LoadOptions(attn_implementation=attn), NO_GPU) == []


def test_gpu_memory_caps_without_a_gpu() -> None:
    problems = checks.check_options(LoadOptions(max_memory="0=4GiB"), NO_GPU)
    assert fields(problems) == ["max_memory"]


def test_matches_follows_the_library_rule() -> None:
    module = "model.layers.0.mlp.down_proj"
    assert checks.matches("mlp.down_proj", module)
    assert checks.matches("model.layers", module)
    assert checks.matches("model.layers.0", module)
    assert not checks.matches("model.layers.1", "model.layers.11.mlp")
    assert not checks.matches("mlp.gate", "model.layers.0.mlp.gate_proj")


def test_unknown_skip_module_names_get_the_nearest_real_ones() -> None:
    names = checks.module_names(TINY)
    assert "lm_head" in names and "model.layers.1.mlp.down_proj" in names
    quant = preset("nf4").quant.replace(
        llm_int8_skip_modules=["lm_head", "mlp.down_prj", "model.layers.1", "visual"]
    )
    problems = checks.unknown_skip_modules(quant, names)
    assert [p.message for p in problems] == [
        "Keep unquantized: 'mlp.down_prj' matches no module of this model",
        "Keep unquantized: 'visual' matches no module of this model",
    ]
    assert problems[0].hint.startswith("did you mean mlp.down_proj")
    # Unquantized settings skip nothing; an unknown structure checks nothing.
    assert checks.unknown_skip_modules(QuantSettings(), names) == []
    assert checks.unknown_skip_modules(quant, []) == []


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
