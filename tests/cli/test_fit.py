"""--fit on generate: refuse with the ladder, or apply its first rung that fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main as cli
from core.model import fit
from core.model.estimate import estimate
from core.model.fit import DeviceInfo
from core.settings import PRESETS

GiB = 2**30


@pytest.fixture
def tight_ram(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Available RAM forced between what nf4 + double quant and full precision need."""
    roomy = DeviceInfo([], 64 * GiB, 32 * GiB, cuda=False)
    full = estimate(str(tiny_dir), device=roomy).judged_bytes
    dq = PRESETS["nf4-dq"]
    small = estimate(str(tiny_dir), dq.quant, dq.load_options(), device=roomy)
    assert small.judged_bytes < full
    ram = (small.judged_bytes + full) // 2
    monkeypatch.setattr(
        fit, "probe_device", lambda: DeviceInfo([], 64 * GiB, ram, cuda=False)
    )
    return ram


def test_generate_refuses_with_the_ladder(
    tiny_dir: Path, tight_ram: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run(["generate", str(tiny_dir), "--device-map", "cpu", "-p", "Hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit here" in err
    assert "1. nf4 + double quant" in err and "fits; cost:" in err
    assert "2. context of" in err
    assert "--fit auto" in err


def test_fit_auto_applies_the_first_rung_and_answers(
    tiny_dir: Path, tight_ram: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run([
        "generate", str(tiny_dir), "--device-map", "cpu", "--fit", "auto", "--greedy",
        "--max-new-tokens", "3", "-p", "Hi", "--json",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "applying nf4 + double quant" in err
    data = json.loads(out)
    assert data["settings"]["bnb_4bit_use_double_quant"] is True
    assert data["report"]["quantized_linear_modules"]["Linear4bit"] == 14
    assert data["stats"]["new_tokens"] == 3


def test_divergence_exports_json_and_a_page(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "div.html"
    code = cli.run([
        "divergence", str(tiny_dir), "--device-map", "cpu", "-p", "Hi",
        "--max-new-tokens", "4", "--html", str(page), "--json",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert len(data["tokens"]) == 4
    total = sum(t["kl"] for t in data["tokens"])
    assert abs(total - data["mean_kl"] * 4) < 1e-5
    assert page.read_text(encoding="utf-8").count("data-kl=") == 4


def test_divergence_shades_the_answer_generate_gives(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The question went to the model without its chat template, so the shaded
    answer was a plain-text continuation, not the answer a user had seen."""
    common = [str(tiny_dir), "--device-map", "cpu", "-p", "What is the capital?"]
    code = cli.run(
        ["generate", *common, "--quant", "nf4", "--greedy", "--max-new-tokens", "6",
         "--json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    answer = json.loads(out)["text"]
    code = cli.run(["divergence", *common, "--max-new-tokens", "6", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    tokens = json.loads(out)["tokens"]
    assert len(tokens) == 6
    assert "".join(t["text"] for t in tokens) == answer


@pytest.mark.parametrize(
    "args",
    [
        ["divergence", "MODEL", "-p", "Hi", "--html", "MISSING/page.html"],
        ["report", "MODEL", "-p", "Hi", "--save", "MISSING/report"],
        ["compare", "MODEL", "--save-json", "MISSING/rows.json"],
    ],
    ids=["divergence", "report", "compare"],
)
def test_an_output_in_a_missing_folder_is_refused_before_any_load(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    missing = tmp_path / "nodir"
    argv = [
        a.replace("MODEL", str(tiny_dir)).replace("MISSING", str(missing)) for a in args
    ]
    code = cli.run(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: the folder {missing} for --" in err
    assert "hint: create it first, or pick another path" in err
    assert "Loading" not in err


def test_divergence_refuses_a_baseline_that_does_not_fit(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    roomy = DeviceInfo([], 64 * GiB, 32 * GiB, cuda=False)
    dq = PRESETS["nf4-dq"]
    small = estimate(str(tiny_dir), dq.quant, dq.load_options(), device=roomy)
    ram = small.judged_bytes + 1
    monkeypatch.setattr(
        fit, "probe_device", lambda: DeviceInfo([], 64 * GiB, ram, cuda=False)
    )
    code = cli.run(["divergence", str(tiny_dir), "--device-map", "cpu", "-p", "Hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the baseline fp32 does not fit here" in err
    assert "--baseline" in err
