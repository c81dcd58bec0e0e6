"""`estimate --explain` and `report --include-load-records`: what a user reads back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import main as cli
from core.model import calibration
from core.store import calibration as store
from core.store import conversations as conv
from tests.load_records import records


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The user's history, where this process's CLI finds it, and its journal."""
    path = tmp_path / conv.FILE_NAME
    monkeypatch.setattr(conv, "database_path", lambda: path)
    previous = calibration.use_journal(store.LoadJournal(path))
    try:
        yield path
    finally:
        calibration.use_journal(previous)


def with_loads(path: Path, n: int) -> None:
    kept = store.LoadJournal(path)
    for record in records(n):
        kept.add(record)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.run(args)
    return code, capsys.readouterr().out


def estimate_explain(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    """`estimate TINY --quant nf4 --device-map cpu --explain` (and `extra`)."""
    return run(
        ["estimate", str(tiny_dir), "--quant", "nf4", "--device-map", "cpu",
         *extra, "--explain"],
        capsys,
    )  # fmt: skip


def test_explain_before_any_load(
    history: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = estimate_explain(tiny_dir, capsys)
    assert code == 0
    assert "Overhead and peak: not calibrated yet (0 of 3 loads on cpu)" in out
    assert "How the current row (nf4) is worked out, on cpu:" in out
    assert "No load on cpu recorded yet" in out
    assert "calibration on this machine" not in out


def test_explain_names_each_term_its_source_and_the_records(
    history: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_loads(history, 3)
    code, out = estimate_explain(tiny_dir, capsys)
    assert code == 0
    assert "Overhead and peak: calibrated on this machine from 3 loads (±" in out
    lines = out.splitlines()

    def term(name: str) -> str:
        return next(line for line in lines if line.strip().startswith(name))

    for name in ("weights", "quantization state", "KV cache"):
        assert "formula:" in term(name)
    assert "batch × context" in term("activations of one prefill")
    assert "the whole model as loaded" in term("weights + quantization state")
    assert "32 KiB per quantized layer" in term("quantized layer objects")
    calibrated = [line for line in lines if "calibration on this machine" in line]
    assert len(calibrated) == 2  # one in the overhead, one in the peak
    assert all("calibration: the median" in line for line in calibrated)
    assert term("= load peak") and term("= total once loaded")
    assert "Records behind it (newest first):" in out
    table = lines[lines.index("Records behind it (newest first):") + 1 :]
    assert table[0].split()[:4] == ["#", "when", "model", "preset"]
    assert [row.split()[4] for row in table[2:5]] == ["nf4", "int8", "float32"]
    assert all(row.split()[-1].endswith("%") for row in table[2:5])


def test_explain_as_json(
    history: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_loads(history, 3)
    code, out = estimate_explain(tiny_dir, capsys, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["calibration"]["calibrated"] is True
    assert data["calibration"]["loads"] == 3
    assert data["calibration"]["text"].startswith("calibrated on this machine from 3")
    assert all(
        row["calibration"] == data["calibration"]["text"] for row in data["rows"]
    )
    explain = data["explain"]
    assert [r["label"] for r in explain["records"]] == ["nf4", "int8", "float32"]
    sources = {t["term"]: t["source"] for t in explain["terms"]}
    assert sources["weights"].startswith("formula:")
    assert sources["calibration on this machine"].startswith("calibration:")


def test_report_leaves_load_records_out_unless_asked(
    history: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_loads(history, 3)
    code, out = run(["report", "--json"], capsys)
    assert code == 0
    assert "load_records" not in json.loads(out)
    code, out = run(["report"], capsys)
    assert "Load records" not in out

    code, out = run(["report", "--json", "--include-load-records"], capsys)
    assert code == 0
    kept = json.loads(out)["load_records"]
    assert [r["label"] for r in kept] == ["nf4", "int8", "float32"]
    assert kept[0]["peak_ram_bytes"] == records(3)[2].peak_ram_bytes
    code, out = run(["report", "--include-load-records"], capsys)
    assert "## Load records" in out
    assert "| SmolLM2-135M-Instruct | nf4 |" in out
