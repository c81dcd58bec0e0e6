"""Every way a model can be named, and every way a folder can be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.errors import ModelNotFoundError
from core.model import catalog


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_default_ref(default_dir: Path) -> None:
    ref = catalog.resolve("default")
    assert ref.kind == "default"
    assert ref.name == "SmolLM2-135M-Instruct"
    assert ref.path == default_dir
    assert ref.size_bytes and ref.size_bytes > 500_000_000


def test_local_folder(tiny_dir: Path) -> None:
    ref = catalog.resolve(str(tiny_dir))
    assert ref.kind == "folder"
    assert ref.name == "tiny-llama"
    assert ref.quantized is None and ref.warnings == []


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "folder not found"),
        ("file", "is a file, not a model folder"),
        ("no_config", "no config.json"),
        ("corrupt_config", "config.json in .* is corrupt"),
        ("bert", "not a causal language model"),
        ("no_tokenizer", "no tokenizer"),
        ("truncated", "model.safetensors is damaged or truncated"),
        ("no_weights", "no weights"),
    ],
)
def test_bad_folders(tmp_path: Path, tiny_dir: Path, setup: str, message: str) -> None:
    folder = tmp_path / "model"
    if setup == "file":
        folder.write_text("hello")
    elif setup != "missing":
        copy_model(tiny_dir, folder)
    if setup == "no_config":
        (folder / "config.json").unlink()
    elif setup == "corrupt_config":
        (folder / "config.json").write_text('{"model_type": "llama",')
    elif setup == "bert":
        (folder / "config.json").write_text(
            json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]})
        )
    elif setup == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    elif setup == "truncated":
        weights = folder / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif setup == "no_weights":
        (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=message) as info:
        catalog.resolve(str(folder))
    assert info.value.hint


def test_encoder_only_without_architectures(tmp_path: Path, tiny_dir: Path) -> None:
    folder = copy_model(tiny_dir, tmp_path / "bert")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelNotFoundError, match="not a causal language model"):
        catalog.resolve(str(folder))


def test_pickled_weights_warn(tmp_path: Path, tiny_dir: Path) -> None:
    folder = copy_model(tiny_dir, tmp_path / "pickled")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    ref = catalog.resolve(str(folder))
    assert ref.warnings == [catalog.PICKLE_WARNING]
    assert "can run code" in ref.warnings[0]


def test_already_quantized_badge(tmp_path: Path, tiny_dir: Path) -> None:
    folder = copy_model(tiny_dir, tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
    }
    (folder / "config.json").write_text(json.dumps(config))
    assert catalog.resolve(str(folder)).quantized == "bitsandbytes 4-bit (nf4)"


def test_hub_id_offline_and_not_cached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        catalog.resolve("someone/some-model")
    assert info.value.message == (
        "someone/some-model is not in your Hugging Face cache and the hub cannot be reached"
    )
    assert "internet" in info.value.hint


def make_cache_entry(cache: Path, repo_id: str, source: Path) -> Path:
    """Lay out a model the way huggingface_hub stores it: blobs, snapshots, refs."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for i, file in enumerate(sorted(source.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
    return snapshot


def test_hf_cache_scan_and_cached_hub_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_dir: Path
) -> None:
    cache = tmp_path / "hub"
    snapshot = make_cache_entry(cache, "acme/tiny-llama", tiny_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    refs = catalog.scan_cache()
    assert [r.name for r in refs] == ["acme/tiny-llama"]
    assert refs[0].size_bytes == sum(f.stat().st_size for f in tiny_dir.iterdir())
    assert refs[0].quantized is None
    ref = catalog.resolve("acme/tiny-llama")
    assert ref.kind == "cache" and ref.path == snapshot
