"""The embedded default: converted once, atomically, and rebuilt when damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.model import default_model


def test_ready_copy_has_weights_tokenizer_and_chat_template(default_dir: Path) -> None:
    assert default_model.is_ready(default_dir)
    names = {p.name for p in default_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert (
        "chat_template.jinja" in names
        or "chat_template" in (default_dir / "tokenizer_config.json").read_text()
    )


def test_damage_is_detected(tmp_path: Path, default_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(default_dir, copy)
    assert default_model.is_ready(copy)
    weights = copy / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size - 4096)
    assert not default_model.is_ready(copy)
    assert "wrong size" in default_model._damage(copy)
    (copy / default_model.MANIFEST).unlink()
    assert default_model._damage(copy) == "no manifest"


@pytest.mark.slow
def test_interrupted_conversion_leaves_nothing_and_damage_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_dir: Path
) -> None:
    monkeypatch.setenv("NIBBLE_DATA_DIR", str(tmp_path))
    target = default_model.model_dir()

    def interrupt(done: int, total: int, message: str) -> None:
        if message == "Checking the copy":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        default_model.ensure(interrupt)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no half model, no temporary folder

    # A damaged copy (the one converted for the other tests, config.json changed) is
    # rebuilt by a full conversion: one conversion checks both.
    shutil.copytree(default_dir, target)
    (target / "config.json").write_text("{}")  # same file, wrong size
    assert not default_model.is_ready()
    steps: list[str] = []
    assert default_model.ensure(lambda d, t, m: steps.append(m)) == target
    assert steps[0] == "Reading the GGUF file"
    assert steps[-1] == "Default model ready"
    assert default_model.is_ready()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
