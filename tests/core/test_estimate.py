"""The estimate must equal what the loader really allocates, to the byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from cli.main import run
from core.model import catalog, estimate, loader
from core.model.fit import DeviceInfo, Gpu
from core.settings import LoadOptions, QuantSettings, preset

GiB = 2**30
NO_GPU = DeviceInfo([], 64 * GiB, 32 * GiB, cuda=False)
SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 128,
    "max_position_embeddings": 256,
}
ARCHS = {
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, **SMALL),
    "gpt2": lambda: transformers.GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        vocab_size=128,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=1,
    ),
    "opt": lambda: transformers.OPTConfig(
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=128,
        word_embed_proj_dim=64,
        max_position_embeddings=256,
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        num_key_value_heads=2, tie_word_embeddings=False, **SMALL
    ),
    "mistral": lambda: transformers.MistralConfig(
        num_key_value_heads=2, sliding_window=16, **SMALL
    ),
    "phi3": lambda: transformers.Phi3Config(
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **SMALL
    ),
    "gemma": lambda: transformers.GemmaConfig(
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **SMALL,
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**SMALL),
}
QUANTS = ["fp32", "int8", "nf4", "nf4-dq", "fp4"]


def _save_tokenizer(folder: Path) -> None:
    """A 128-token word-level tokenizer: loads in milliseconds, unlike a real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(128)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="t0", eos_token="t1"
    )
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    folders: dict[str, Path] = {}
    torch.manual_seed(0)
    for name, make in ARCHS.items():
        folder = root / name
        model = transformers.AutoModelForCausalLM.from_config(make())
        model.save_pretrained(folder)
        _save_tokenizer(folder)
        folders[name] = folder
    return folders


def _load_and_estimate(
    folder: Path, quant: QuantSettings, options: LoadOptions
) -> tuple[int, estimate.Estimate]:
    ref = catalog.folder_ref(folder)
    loaded = loader.load(ref, quant, options)
    measured = loader.true_bytes(loaded.model)
    quantized = loaded.report.quantized_count
    del loaded  # freed by reference counting; unload()'s gc pass costs 0.4 s
    row = estimate.estimate(folder, quant, options, context=64, device=NO_GPU)
    assert row.quantized_modules == quantized
    return measured, row


@pytest.mark.parametrize("arch", list(ARCHS))
def test_weights_and_quant_state_equal_true_bytes(
    tiny_models: dict[str, Path], arch: str
) -> None:
    for name in QUANTS:
        p = preset(name)
        options = p.load_options(LoadOptions(device_map="cpu"))
        measured, row = _load_and_estimate(tiny_models[arch], p.quant, options)
        assert row.model_bytes == measured, f"{arch} {name}"
        if p.quant.quantized:
            assert row.quantized_modules > 0
            assert row.quant_state_bytes > 0
        else:
            assert row.quant_state_bytes == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"bnb_4bit_quant_storage": "bfloat16"},
        {"bnb_4bit_quant_storage": "float32", "bnb_4bit_use_double_quant": True},
        {"llm_int8_skip_modules": ["mlp.down_proj"]},
        {"quantize_lm_head": True},
    ],
    ids=["storage-bf16", "storage-fp32-dq", "skip-down", "lm-head"],
)
def test_settings_that_change_what_is_quantized(
    tiny_models: dict[str, Path], changes: dict[str, object]
) -> None:
    quant = QuantSettings(mode="4bit", bnb_4bit_quant_type="nf4").replace(**changes)
    measured, row = _load_and_estimate(
        tiny_models["qwen2"], quant, LoadOptions(device_map="cpu")
    )
    assert row.model_bytes == measured


def test_int8_with_fp16_weight_and_bf16_load(tiny_models: dict[str, Path]) -> None:
    quant = QuantSettings(mode="8bit", llm_int8_has_fp16_weight=True)
    measured, row = _load_and_estimate(
        tiny_models["llama"], quant, LoadOptions(device_map="cpu")
    )
    assert row.model_bytes == measured
    options = LoadOptions(device_map="cpu", dtype="bfloat16")
    measured, row = _load_and_estimate(
        tiny_models["gemma"], preset("nf4").quant, options
    )
    assert row.dtype == "bfloat16"
    assert row.model_bytes == measured


def _real_cache_bytes(folder: Path, tokens: int) -> int:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.arange(tokens).remainder(100).unsqueeze(0) + 3
    with torch.no_grad():
        out = model(ids, use_cache=True)
    total = 0
    for layer in out.past_key_values.layers:
        total += layer.keys.nbytes + layer.values.nbytes
    return total


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma", "phi3", "mistral"])
def test_kv_cache_matches_a_real_forward(
    tiny_models: dict[str, Path], arch: str
) -> None:
    # Mistral's window (16) is below the prompt length, so the cache is capped.
    tokens = 40
    row = estimate.estimate(tiny_models[arch], context=tokens, device=NO_GPU)
    assert row.kv_cache_bytes == _real_cache_bytes(tiny_models[arch], tokens)


def test_gqa_mqa_and_sliding_windows_from_config() -> None:
    base = {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512}
    full = estimate.kv_shape(base).bytes(1000, 1, 2)
    assert full == 4 * 2 * 8 * 64 * 1000 * 2
    gqa = estimate.kv_shape({**base, "num_key_value_heads": 2}).bytes(1000, 1, 2)
    assert gqa == full // 4
    mqa = estimate.kv_shape({**base, "multi_query": True}).bytes(1000, 1, 2)
    assert mqa == full // 8
    mixed = {
        **base,
        "sliding_window": 100,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
    }
    # A sliding layer keeps its last window - 1 tokens, as transformers' cache does.
    assert estimate.kv_shape(mixed).bytes(1000, 3, 2) == 3 * (
        2 * 2 * 8 * 64 * 99 * 2 + 2 * 2 * 8 * 64 * 1000 * 2
    )
    off = {**base, "sliding_window": 100, "use_sliding_window": False}
    assert estimate.kv_shape(off).bytes(1000, 1, 2) == full


def test_default_model_matches_measured_true_bytes() -> None:
    # Measured with loader.true_bytes on the CPU (float32 for unquantized parts).
    measured = {
        "fp32": 538060288,
        "int8": 220177408,
        "nf4": 173120128,
        "nf4-dq": 168385528,
    }
    result = estimate.table("default", device=NO_GPU, context=2048)
    rows = {r.preset: r for r in result.rows}
    for name, true in measured.items():
        assert rows[name].model_bytes == true, name
    assert rows["nf4"].quantized_modules == 30 * 7


def test_actual_beside_estimate_and_the_unquantized_warning(
    tiny_models: dict[str, Path],
) -> None:
    quant = preset("nf4").quant
    options = LoadOptions(device_map="cpu")
    row = estimate.estimate(tiny_models["llama"], quant, options, device=NO_GPU)
    loaded = loader.load(catalog.folder_ref(tiny_models["llama"]), quant, options)
    real = estimate.actual(loaded, row)
    assert real.true_bytes == row.model_bytes and real.difference == 0
    assert real.warning == "" and real.torch_allocated_bytes is None
    # A skip list that names every block: nothing gets quantized.
    offload = quant.replace(llm_int8_skip_modules=["model.layers"])
    row = estimate.estimate(tiny_models["llama"], offload, options, device=NO_GPU)
    assert row.quantized_modules == 0
    loaded = loader.load(catalog.folder_ref(tiny_models["llama"]), offload, options)
    real = estimate.actual(loaded, row)
    assert real.difference == 0
    assert "no Linear layer was quantized" in real.warning


def test_fit_verdicts_and_recommendation() -> None:
    source = estimate.read_source("default")
    # 200 MiB free VRAM is less than the CUDA context alone: nothing can run there.
    gpu = [Gpu(0, "Test GPU", 8 * GiB, 200 * 2**20)]
    device = DeviceInfo(gpu, 64 * GiB, 32 * GiB, cuda=True)
    result = estimate.table(source, context=256, device=device)
    rows = {r.preset: r for r in result.rows}
    assert rows["fp32"].on_gpu and rows["fp32"].dtype == "float32"
    assert rows["nf4"].dtype == "float16"  # the loader: a float32 config → fp16 on GPU
    assert {r.verdict for r in result.rows} == {"does not fit"}
    assert result.recommended is None
    big = DeviceInfo([Gpu(0, "Big", 80 * GiB, 70 * GiB)], 64 * GiB, 32 * GiB, True)
    assert estimate.table(source, device=big).recommended == "fp32"
    tiny = DeviceInfo([Gpu(0, "Small", 2 * GiB, 900 * 2**20)], 8 * GiB, 4 * GiB, True)
    fitted = estimate.table(source, context=512, device=tiny)
    by = {r.preset: r for r in fitted.rows}
    assert by["fp32"].verdict == "fits with CPU offload"
    assert set(by["fp32"].offload.max_memory) == {"0", "cpu"}
    assert by["fp32"].offload.cpu_bytes > 0
    assert "max_memory" in by["fp32"].verdict_text
    assert fitted.recommended in ("bf16", "fp16")
    assert by["nf4"].verdict == "fits"
    none = DeviceInfo([], 1 * GiB, 100 * 2**20, False)
    starved = estimate.table(source, context=512, device=none)
    assert {r.verdict for r in starved.rows} == {"does not fit"}
    assert starved.recommended is None


def test_no_gpu_judges_against_ram() -> None:
    row = estimate.estimate("default", preset("nf4").quant, device=NO_GPU)
    assert not row.on_gpu and row.dtype == "float32"
    assert row.verdict == "fits"
    assert row.total_bytes == (
        row.weights_bytes
        + row.quant_state_bytes
        + row.kv_cache_bytes
        + row.overhead_bytes
    )


def test_partial_and_unknown_configs(tmp_path: Path) -> None:
    unknown = {
        "model_type": "not-a-real-arch",
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_size": 64,
    }
    row = estimate.estimate(unknown, device=NO_GPU, context=10)
    assert row.weights_bytes is None and row.total_bytes is None
    assert row.kv_cache_bytes == 2 * 2 * 4 * 16 * 10 * 4
    assert row.verdict == "unknown"
    assert "not-a-real-arch" in row.notes[0]
    partial = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128}
    row = estimate.estimate(partial, device=NO_GPU, context=10)
    assert row.weights_bytes is not None
    assert any("num_hidden_layers" in n for n in row.notes)
    assert any("KV cache not estimated" in n for n in row.notes)
    bad = {"model_type": "llama", "hidden_size": 60, "num_attention_heads": 7}
    row = estimate.estimate(bad, device=NO_GPU)
    assert row.weights_bytes is None or row.notes


def test_cli_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", **SMALL}))
    code = run(
        ["estimate", str(tmp_path), "--quant", "nf4", "--context", "32", "--json"]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][0]["preset"] == "current"
    assert [r["preset"] for r in data["rows"][1:]] == list(estimate.QUALITY_ORDER)
    keys = {
        "preset",
        "weights_bytes",
        "quant_state_bytes",
        "kv_cache_bytes",
        "overhead_bytes",
        "total_bytes",
        "verdict",
    }
    for row in data["rows"]:
        assert keys <= set(row)
        assert row["total_bytes"] == sum(
            row[k]
            for k in (
                "weights_bytes",
                "quant_state_bytes",
                "kv_cache_bytes",
                "overhead_bytes",
            )
        )
    assert data["rows"][0]["quant_state_bytes"] == data["rows"][5]["quant_state_bytes"]
    assert "ram_available_bytes" in data["device"]


def test_cli_text_and_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert run(["estimate", str(tmp_path), "--context", "16"]) == 0
    out = capsys.readouterr().out
    assert "current" in out and "nf4-dq" in out and "Recommended" in out
    assert run(["estimate", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hint: " in err


def test_dtype_rule_is_the_loaders() -> None:
    from types import SimpleNamespace

    from core import settings

    # One rule, called by both.
    assert estimate.load_dtype is settings.load_dtype is loader.load_dtype
    for wanted in ("auto", "float32", "bfloat16", "float16"):
        for config_dtype in (None, "float32", "bfloat16", "float16"):
            for on_gpu in (False, True):
                options = LoadOptions(dtype=wanted)
                config = SimpleNamespace(dtype=config_dtype)
                expected = str(loader.resolve_dtype(options, config, on_gpu))
                assert settings.load_dtype(
                    options, config_dtype, on_gpu
                ) == expected.removeprefix("torch.")


def test_the_fit_verdict_is_its_own_result() -> None:
    from core.model.fit import Fit, Need, judge

    need = Need(total_bytes=3 * GiB, on_gpu=False, quantized=True)
    assert judge(need, NO_GPU) == Fit("fits", "fits in RAM (29.0 GiB to spare)")
    starved = DeviceInfo([], 64 * GiB, 2 * GiB, cuda=False)
    assert judge(need, starved).verdict == "does not fit"
    assert judge(Need(None, False, False), NO_GPU).verdict == "unknown"
    row = estimate.estimate({"model_type": "llama", **SMALL}, device=NO_GPU)
    assert (row.verdict, row.verdict_text) == (
        judge(row.need, NO_GPU).verdict,
        judge(row.need, NO_GPU).text,
    )


def test_the_verdict_is_judged_on_the_peak_during_load_when_it_is_higher() -> None:
    row = estimate.estimate(
        "default", preset("nf4").quant, context=16, device=NO_GPU, preset="nf4"
    )
    assert row.load_peak_bytes is not None and row.model_bytes is not None
    assert row.load_peak_bytes > row.model_bytes  # plus one layer's temporaries
    # With 16 tokens of context the steady total is below the peak of the load, so
    # RAM between the two fits once loaded but not while loading.
    assert row.total_bytes is not None and row.total_bytes < row.load_peak_bytes
    between = (row.total_bytes + row.load_peak_bytes) // 2
    tight = DeviceInfo([], 64 * GiB, between, False)
    judged = estimate.estimate(
        "default", preset("nf4").quant, context=16, device=tight, preset="nf4"
    )
    assert judged.verdict == "does not fit"
    assert "while loading" in judged.verdict_text
    assert judged.to_dict()["load_peak_bytes"] == row.load_peak_bytes


PEAK = """
import json, sys
sys.path[:0] = [{root!r}, {root!r} + "/bench"]
from load_memory import peak_load
out = [peak_load("nibble", q, p) for p, q in {runs!r}]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_load_peak_matches_a_measured_load(tmp_path: Path, default_dir: Path) -> None:
    """The estimate's peak within 10% of a sampled load on three small Llamas."""
    import os
    import subprocess
    import sys

    from tests.conftest import build_tiny_model

    shapes = {
        "small": (256, 1024, 4),
        "medium": (512, 1536, 4),
        "large": (512, 2048, 8),
    }
    runs = []
    for name, (hidden, inter, layers) in shapes.items():
        folder = build_tiny_model(
            tmp_path / name, default_dir, vocab_size=8192, hidden_size=hidden,
            intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        )  # fmt: skip
        runs += [(str(folder), "nf4")] + ([(str(folder), "int8")] * (name == "large"))
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", PEAK.format(root=root, runs=runs)],
        capture_output=True, text=True, check=True, env=os.environ.copy(), timeout=600,
    )  # fmt: skip
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    for (folder, quant), m in zip(runs, measured, strict=True):
        p = preset(quant)
        row = estimate.estimate(folder, p.quant, p.load_options(), device=NO_GPU)
        # What the load needs at its highest: its anonymous peak, or at the end what
        # it holds plus the unquantized rest it keeps in the checkpoint's pages.
        need = max(m["peak"], m["after"] + m["mapped"])
        assert row.model_bytes == m["true"]
        assert abs(row.load_peak_bytes - need) <= 0.10 * need, (folder, quant, m)
