"""Quantized export: round trips, the model card, and every way a target can be bad."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from cli.main import run
from core.errors import CancelledError, ExportError
from core.lab import export
from core.model import catalog, loader
from core.settings import preset
from core.units import format_bytes
from tests.unwritable import read_only


def _export(ref: catalog.ModelRef, name: str, out: Path, **kw: object):
    chosen = preset(name)
    return export.export(ref, chosen.quant, out, chosen.load_options(), **kw)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "nibble-" in p.name)


@pytest.fixture(scope="module")
def tiny_ref(tiny_dir: Path) -> catalog.ModelRef:
    return catalog.folder_ref(tiny_dir)


@pytest.fixture(scope="module")
def nf4_export(
    tiny_ref: catalog.ModelRef, tmp_path_factory: pytest.TempPathFactory
) -> export.ExportResult:
    """One nf4 export of the tiny model, shared by the tests that only read it."""
    return _export(tiny_ref, "nf4", tmp_path_factory.mktemp("nf4") / "tiny-nf4")


@pytest.mark.parametrize("name", ["nf4", "nf4-dq", "int8"])
def test_tiny_round_trip_reloads_identically(
    tiny_ref: catalog.ModelRef,
    nf4_export: export.ExportResult,
    tmp_path: Path,
    name: str,
) -> None:
    steps: list[tuple[int, int, str]] = []
    if name == "nf4":
        result, out = nf4_export, nf4_export.path
    else:
        out = tmp_path / f"tiny-{name}"
        if name == "int8":
            out.mkdir()  # an existing empty folder is used as it is
        result = _export(tiny_ref, name, out, progress=lambda *a: steps.append(a))
        assert steps[-1][0] == steps[-1][1] == export.STEPS
        assert _leftovers(tmp_path) == []

    assert result.verification.identical
    assert result.verification.max_abs_diff == 0.0
    assert result.path == out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert "nibble-export.json" in names
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["load_in_4bit"] is (name != "int8")
    assert qc["load_in_8bit"] is (name == "int8")
    if name == "nf4-dq":
        assert qc["bnb_4bit_use_double_quant"] is True
    # Shared files get the usual permissions (safetensors writes 0600).
    assert (out / "model.safetensors").stat().st_mode & 0o044 == 0o044
    # The picker shows the saved folder as a quantized model.
    assert catalog.folder_ref(out).quantized.startswith("bitsandbytes")
    record = export.read_record(out)
    assert record is not None and record["verification"]["identical"] is True
    assert record["size_bytes"] == sum(record["files"].values())
    extra = sum(
        (out / name).stat().st_size
        for name in ("README.md", "nibble-export.json", "serve-vllm.sh")
    )
    assert record["size_bytes"] == catalog.folder_size(out) - extra


def test_saved_model_matches_a_fresh_quantization(
    tiny_ref: catalog.ModelRef, nf4_export: export.ExportResult
) -> None:
    """Independently of export's own check: the folder gives the logits nf4 gives."""
    out = nf4_export.path
    chosen = preset("nf4")
    fresh = loader.load(tiny_ref, chosen.quant, chosen.load_options())
    saved = loader.load(catalog.folder_ref(out), options=chosen.load_options())
    try:
        expected, _ = export.probe_logits(fresh.model, fresh.tokenizer)
        got, _ = export.probe_logits(saved.model, saved.tokenizer)
        assert saved.report.quantized_linear_modules["Linear4bit"] > 0
        assert (got == expected).all()
    finally:
        loader.unload(fresh)
        loader.unload(saved)


def test_model_card_says_what_a_user_needs(
    tiny_ref: catalog.ModelRef, nf4_export: export.ExportResult
) -> None:
    result, out = nf4_export, nf4_export.path
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert f"- From: {tiny_ref.path}" in card
    assert 'bnb_4bit_quant_type="nf4"' in card
    assert "bnb_4bit_use_double_quant" not in card
    assert f"In memory: {format_bytes(result.true_bytes)}" in card
    assert f"({result.true_bytes:,} bytes" in card
    assert f"On disk: {format_bytes(result.size_bytes)}" in card
    assert "identical logits" in card
    versions = result.environment["packages"]
    assert f"- bitsandbytes {versions['bitsandbytes']}" in card
    assert f"- torch {versions['torch']}" in card
    code = card.split("```python\n")[2].split("```")[0]
    assert f'from_pretrained(\n    "{out}"' in code


def test_serve_vllm_script_and_the_config_vllm_reads(
    nf4_export: export.ExportResult,
) -> None:
    out = nf4_export.path
    script = out / "serve-vllm.sh"
    assert script.stat().st_mode & 0o111, "the script is executable"
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = script.read_text()
    assert 'exec vllm "${args[@]}" "$@"' in text
    assert f'serve "$here" --served-model-name {out.name}' in text
    assert "--pipeline-parallel-size" in text
    assert "refuses tensor parallelism for pre-quantized bitsandbytes" in text
    assert "--quantization" not in text.split("set -euo pipefail")[1]
    # What vLLM's bitsandbytes loader reads from config.json.
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes"
    assert qc["load_in_4bit"] is True and qc["load_in_8bit"] is False
    assert qc["bnb_4bit_quant_type"] == "nf4"
    for key in (
        "bnb_4bit_compute_dtype",
        "bnb_4bit_use_double_quant",
        "bnb_4bit_quant_storage",
        "llm_int8_skip_modules",
        "llm_int8_threshold",
    ):
        assert key in qc, key


def test_serve_vllm_script_runs_vllm_with_pipeline_parallel(
    nf4_export: export.ExportResult, tmp_path: Path
) -> None:
    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    script = str(nf4_export.path / "serve-vllm.sh")
    one = subprocess.run([script], capture_output=True, text=True, env=env)
    assert one.stdout.split() == [
        "serve", str(nf4_export.path), "--served-model-name", nf4_export.path.name,
        "--port", "8000",
    ]  # fmt: skip
    two = subprocess.run(
        [script, "--max-model-len", "256"],
        capture_output=True,
        text=True,
        env={**env, "GPUS": "2", "PORT": "9000"},
    )
    assert two.stdout.split()[-5:] == [
        "9000", "--pipeline-parallel-size", "2", "--max-model-len", "256",
    ]  # fmt: skip


def test_card_code_loads_the_model(nf4_export: export.ExportResult) -> None:
    out = nf4_export.path
    card = (out / "README.md").read_text()
    code = card.split("```python\n")[2].split("```")[0]
    scope: dict[str, object] = {}
    exec(code, scope)
    model = scope["model"]
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert scope["tokenizer"]("Paris")["input_ids"]


def test_unquantized_export_is_refused(
    tiny_ref: catalog.ModelRef, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="unquantized") as info:
        _export(tiny_ref, "fp32", tmp_path / "out")
    assert "nf4" in info.value.hint
    assert list(tmp_path.iterdir()) == []


def test_already_quantized_source_is_refused(
    nf4_export: export.ExportResult, tmp_path: Path
) -> None:
    again = catalog.folder_ref(nf4_export.path)
    with pytest.raises(ExportError, match="already quantized"):
        _export(again, "nf4", tmp_path / "second")


def test_target_that_is_a_file_is_refused(
    tiny_ref: catalog.ModelRef, tmp_path: Path
) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="is a file"):
        _export(tiny_ref, "nf4", target, force=True)
    assert target.read_bytes() == b"keep me"


def test_non_empty_target_needs_force(
    tiny_ref: catalog.ModelRef, tmp_path: Path
) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty") as info:
        _export(tiny_ref, "nf4", target)
    assert "--force" in info.value.hint
    assert (target / "notes.txt").read_text() == "mine"


def test_read_only_target_is_refused_before_loading(
    tiny_ref: catalog.ModelRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(
        loader, "load", lambda *a, **k: pytest.fail("loaded despite read-only")
    )
    with read_only(locked), pytest.raises(ExportError, match="read-only") as info:
        _export(tiny_ref, "nf4", locked / "out")
    assert "write" in info.value.hint
    assert list(locked.iterdir()) == []


def test_full_disk_is_refused_and_nothing_is_left(
    tiny_ref: catalog.ModelRef, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="not enough disk space") as info:
        _export(tiny_ref, "nf4", tmp_path / "out", free_bytes=lambda path: 1024)
    assert "1.0 KiB free" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_keeps_the_target_untouched(
    tiny_ref: catalog.ModelRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved copy that does not match what was in memory is never moved in place."""
    original = export._save

    def save_then_drift(loaded, tmp, progress):
        original(loaded, tmp, progress)
        import torch

        with torch.no_grad():
            loaded.model.get_input_embeddings().weight.add_(1e-2)

    monkeypatch.setattr(export, "_save", save_then_drift)
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous export")
    with pytest.raises(ExportError, match="does not reload identically"):
        _export(tiny_ref, "nf4", target, force=True)
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert _leftovers(tmp_path) == []


def test_cancel_leaves_nothing(tiny_ref: catalog.ModelRef, tmp_path: Path) -> None:
    cancel = threading.Event()

    def progress(done: int, total: int, message: str) -> None:
        if done >= 2:
            cancel.set()

    with pytest.raises(CancelledError):
        _export(tiny_ref, "nf4", tmp_path / "out", progress=progress, cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_replaces_only_with_force(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["export", str(tiny_dir), "--quant", "fp4", "--out", str(out)]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} is not empty\nhint: ")
    assert (out / "notes.txt").read_text() == "mine"
    assert run([*argv, "--force", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verification"]["identical"] is True
    assert data["label"] == "fp4"
    assert not (out / "notes.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


def test_cli_export_unquantized_exits_2(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["export", str(tiny_dir), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "nothing to export" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nf4", "nf4-dq", "int8"])
def test_default_model_round_trip(default_dir: Path, tmp_path: Path, name: str) -> None:
    result = _export(catalog.resolve("default"), name, tmp_path / name)
    assert result.verification.identical
    assert result.verification.tokens >= 10
    card = (tmp_path / name / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    # 4-bit SmolLM2 is about a third of its fp32 size on disk, int8 under half.
    limit = 0.5 if name == "int8" else 0.36
    assert result.size_bytes < limit * catalog.folder_size(default_dir)
