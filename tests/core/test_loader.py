"""Loading: reports that match the model, progress, cancel, errors that keep nothing half-done."""

from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path

import psutil
import pytest
import torch

from core.errors import CancelledError, LoadError, SettingsError
from core.model import catalog, loader
from core.settings import LoadOptions, QuantSettings, preset

# Linear layers of the tiny Llama: per layer q(64x64) k(32x64) v(32x64) o(64x64)
# gate(128x64) up(128x64) down(64x128); lm_head is tied to the embedding and stays.
LINEARS = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)] * 2


def unquantized_bytes(model: object) -> int:
    # Embedding (49152 x 64) + 5 norms of 64, all float32, + the rotary buffers.
    return (49152 * 64 + 5 * 64) * 4 + sum(b.nbytes for b in model.buffers())


def test_fp32_report(tiny_dir: Path) -> None:
    loaded = loader.load(
        catalog.resolve(str(tiny_dir)), options=LoadOptions(device_map="cpu")
    )
    report = loaded.report
    params = sum(p.numel() for p in loaded.model.parameters())
    buffers = sum(b.nbytes for b in loaded.model.buffers())  # rotary frequencies
    assert report.true_bytes == report.footprint_bytes == params * 4 + buffers
    assert report.quantized_linear_modules == {"Linear4bit": 0, "Linear8bitLt": 0}
    assert report.dtypes == {"float32": params}
    assert report.device == "cpu"
    assert report.load_s > 0
    loader.unload(loaded)
    assert loaded.model is None


@pytest.mark.parametrize("name", ["nf4", "fp4", "nf4-dq", "int8"])
def test_quantized_true_bytes_follow_the_formulas(tiny_dir: Path, name: str) -> None:
    chosen = preset(name)
    loaded = loader.load(
        catalog.resolve(str(tiny_dir)), chosen.quant, chosen.load_options()
    )
    report = loaded.report
    expected = unquantized_bytes(loaded.model)
    for out_f, in_f in LINEARS:
        n = out_f * in_f
        blocks = math.ceil(n / 64)
        if name == "int8":
            expected += n + 4 * out_f
        elif name == "nf4-dq":
            expected += (
                math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256) + 1024 + 68
            )
        else:
            expected += math.ceil(n / 2) + 4 * blocks + 64
    assert report.true_bytes == expected
    kind = "Linear8bitLt" if name == "int8" else "Linear4bit"
    assert report.quantized_linear_modules[kind] == 14
    assert report.warnings == []
    assert report.footprint_bytes < report.true_bytes  # absmax is not in the footprint
    loader.unload(loaded)


def test_progress_reports_weights(tiny_dir: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    loaded = loader.load(
        catalog.resolve(str(tiny_dir)),
        preset("nf4").quant,
        progress=lambda d, t, m: seen.append((d, t, m)),
    )
    weights = [s for s in seen if s[2] == "Loading weights"]
    assert weights[0][0] == 0 and weights[-1][0] == weights[-1][1] > 0
    assert seen[-1] == (1, 1, "Loaded")
    loader.unload(loaded)


def test_cancel_during_weights(tiny_dir: Path) -> None:
    cancel = threading.Event()

    def progress(done: int, total: int, message: str) -> None:
        if message == "Loading weights" and done >= 3:
            cancel.set()

    with pytest.raises(CancelledError):
        loader.load(
            catalog.resolve(str(tiny_dir)),
            preset("nf4").quant,
            progress=progress,
            cancel=cancel,
        )


def test_cancel_after_an_uninterruptible_call(tiny_dir: Path) -> None:
    calls = {"n": 0}

    def cancelled() -> bool:  # becomes true only once from_pretrained has returned
        calls["n"] += 1
        return calls["n"] > 1_000_000 or getattr(cancelled, "late", False)

    def progress(done: int, total: int, message: str) -> None:
        if message == "Loading weights" and done == total and total:
            cancelled.late = True  # type: ignore[attr-defined]

    with pytest.raises(CancelledError):
        loader.load(catalog.resolve(str(tiny_dir)), progress=progress, cancel=cancelled)


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="this machine has a CUDA GPU: asking for one is no error here",
)
def test_no_cuda_here_is_a_clear_error(tiny_dir: Path) -> None:
    with pytest.raises(SettingsError, match="cuda:0 needs an NVIDIA GPU"):
        loader.load(
            catalog.resolve(str(tiny_dir)), options=LoadOptions(device_map="cuda:0")
        )


def test_cpu_offload_on_a_cpu_only_load_is_refused(tiny_dir: Path) -> None:
    quant = QuantSettings(mode="4bit", llm_int8_enable_fp32_cpu_offload=True)
    with pytest.raises(SettingsError, match="would quantize nothing") as info:
        loader.load(
            catalog.resolve(str(tiny_dir)), quant, LoadOptions(device_map="cpu")
        )
    assert info.value.field == "llm_int8_enable_fp32_cpu_offload"


def test_already_quantized_model_is_not_quantized_again(
    tmp_path: Path, tiny_dir: Path
) -> None:
    folder = tmp_path / "q"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="already quantized"):
        loader.load(catalog.resolve(str(folder)), QuantSettings(mode="8bit"))


def test_weights_damaged_after_resolve(tmp_path: Path, tiny_dir: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    ref = catalog.resolve(str(folder))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LoadError) as info:
        loader.load(ref)
    assert "damaged" in info.value.message or "failed" in info.value.message
    assert info.value.hint


@pytest.mark.slow
def test_unload_gives_memory_back(default_dir: Path) -> None:
    process = psutil.Process()
    ref = catalog.resolve("default")
    chosen = preset("nf4")
    # One load first so imports and one-time allocations are not counted as leaks.
    loader.unload(loader.load(ref, chosen.quant, chosen.load_options()))
    before = process.memory_info().rss
    for _ in range(5):
        loaded = loader.load(ref, chosen.quant, chosen.load_options())
        assert loaded.report.quantized_count == 210
        loader.unload(loaded)
        del loaded
    after = process.memory_info().rss
    assert after < before * 1.10, (
        f"RSS grew from {before >> 20} MiB to {after >> 20} MiB"
    )


def test_reload_reuses_the_tokenizer_until_its_files_change(
    tmp_path: Path, tiny_dir: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    ref = catalog.resolve(str(folder))
    first = loader.load(ref, preset("nf4").quant)
    second = loader.load(ref, preset("int8").quant)
    assert second.tokenizer is first.tokenizer
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 128
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    third = loader.load(ref)
    assert third.tokenizer is not first.tokenizer
    assert third.tokenizer.model_max_length == 128
    for loaded in (first, second, third):
        loader.unload(loaded)
