"""The reproducibility report (Markdown + JSON), its Python snippet, and --self-test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import run
from core.generation import decode
from core.lab import report
from core.model import catalog, loader
from core.settings import GenerationSettings, preset


@pytest.fixture(scope="module")
def measured(tiny_dir: Path) -> dict:
    """A report of the tiny model in nf4-dq after one short answer."""
    chosen = preset("nf4-dq")
    ref = catalog.folder_ref(tiny_dir)
    loaded = loader.load(ref, chosen.quant, chosen.load_options())
    gen = GenerationSettings(max_new_tokens=4, greedy=True)
    try:
        _, stats = decode.generate_text(loaded, "Hello", gen, raw=True)
        estimate = report.estimate_bytes(ref, chosen.quant, chosen.load_options())
        return report.build(
            report.model_id(ref),
            chosen.quant,
            chosen.load_options(),
            loaded.report,
            estimate,
            gen,
            stats,
        )
    finally:
        loader.unload(loaded)


def test_report_holds_settings_versions_hardware_and_numbers(measured: dict) -> None:
    assert measured["label"] == "nf4-dq"
    assert measured["settings"]["bnb_4bit_use_double_quant"] is True
    packages = measured["environment"]["packages"]
    assert packages["bitsandbytes"] and packages["torch"] and packages["transformers"]
    assert measured["hardware"]["ram_total"] > 0
    assert measured["hardware"]["cores_logical"] >= 1
    memory = measured["memory"]
    assert memory["actual_bytes"] == measured["load"]["true_bytes"] > 0
    # Byte-exact: docs/facts.md, "Byte formulas".
    assert memory["estimate_bytes"] == memory["actual_bytes"]
    assert memory["error_pct"] == 0.0
    assert measured["last_generation"]["new_tokens"] == 4
    assert measured["generation"]["greedy"] is True
    assert json.loads(report.to_json(measured)) == measured


def test_markdown_reads_like_a_bug_report(measured: dict) -> None:
    text = report.to_markdown(measured)
    for heading in (
        "## Settings",
        "## Memory",
        "## Last generation",
        "## Versions",
        "## Hardware",
    ):
        assert heading in text
    assert "- Quantization: nf4-dq" in text
    assert "`bnb_4bit_use_double_quant` = `true`" in text
    assert "Estimate error: +0.00 %" in text
    assert f"- bitsandbytes {measured['environment']['packages']['bitsandbytes']}" in (
        text
    )
    assert "4 new tokens" in text
    assert "```python\nimport torch" in text


def test_copy_as_python_loads_the_same_model(measured: dict) -> None:
    """The snippet in the report runs as it is and gives a 4-bit double-quant model."""
    scope: dict = {}
    exec(measured["python"], scope)
    layer = scope["model"].model.layers[0].mlp.down_proj
    assert type(layer).__name__ == "Linear4bit"
    assert layer.weight.quant_state.nested  # double quant
    assert layer.weight.quant_state.quant_type == "nf4"


def test_save_writes_markdown_and_json(measured: dict, tmp_path: Path) -> None:
    md, js = report.save(measured, tmp_path / "report.md")
    assert (md.name, js.name) == ("report.md", "report.json")
    assert md.read_text().startswith("# Nibble report: ")
    assert json.loads(js.read_text())["label"] == "nf4-dq"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]


def test_default_model_snippet_names_the_hub_id() -> None:
    assert report.model_id(catalog.default_ref()) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_cli_report_without_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["report", "--quant", "int8"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Nibble report: no model loaded")
    assert "load_in_8bit=True" in text
    assert "## Hardware" in text
    assert run(["report", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["memory"]["actual_bytes"] is None
    assert data["label"] == "none"


def test_cli_report_with_a_model_and_prompt(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["report", str(tiny_dir), "--quant", "int8", "--prompt", "Hi"]
    argv += ["--max-new-tokens", "3", "--greedy", "--save", str(tmp_path / "r")]
    assert run(argv) == 0
    captured = capsys.readouterr()
    assert "## Last generation" in captured.out
    assert "wrote " in captured.err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["model"] == str(tiny_dir)
    assert data["load"]["quantized_linear_modules"]["Linear8bitLt"] > 0


# The real self-test runs in tests/test_install.py, through the installed launcher.
def test_main_self_test_flag_runs_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import main
    from cli import selftest

    calls: list[bool] = []
    monkeypatch.setattr(
        selftest, "check", lambda: calls.append(True) or "the window check"
    )
    assert main.main(["--self-test"]) == 1
    assert calls == [True]
