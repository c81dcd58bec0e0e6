"""Ctrl+C, SIGTERM and SIGKILL while a load, an export, an answer or a comparison
runs (rows of the fault matrix in tests/test_faults.py).

| fault                                         | expected                            |
|-----------------------------------------------|-------------------------------------|
| Ctrl+C during a load                          | exit 130, no abort                  |
| SIGKILL in an export                          | leftover swept at the next run      |
| SIGTERM during an export                      | temporary folder removed, exit 130  |
| Ctrl+C / SIGTERM during generate              | partial answer, "stopped", exit 130 |
| Ctrl+C during compare                         | finished rows printed + saved, 130  |

The real CLI runs in a subprocess and gets the signal at a known phase (a temporary
folder appears, a stage line or the first token is printed).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from core.lab import export
from core.model.catalog import folder_ref
from core.settings import preset
from tests.faults.cli_process import Child, temp_folders

# -- a load --


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_during_load_exits_cleanly(default_dir: Path, attempt: int) -> None:
    child = Child("generate", "default", "--quant", "nf4", "--prompt", "hi")
    child.wait_for(lambda: b"Loading tokenizer" in child.err, "load stage")
    time.sleep(0.2 * attempt)  # tokenizer, weights, quantization
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert "terminate called" not in child.stderr
    assert "Traceback" not in child.stderr


# -- an export --


def test_export_killed_outright_is_swept_at_the_next(
    tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    child = Child("export", str(tiny_dir), "--quant", "nf4", "--out", str(out))
    child.wait_for(lambda: bool(temp_folders(tmp_path)), "temporary folder")
    child.proc.kill()
    child.finish()
    assert temp_folders(tmp_path)
    export.export(folder_ref(tiny_dir), preset("nf4").quant, tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_sigterm_during_export_removes_the_temporary_folder(
    tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    child = Child("export", str(tiny_dir), "--quant", "nf4", "--out", str(out))
    child.wait_for(lambda: bool(temp_folders(tmp_path)), "temporary folder")
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 130, child.stderr
    assert list(tmp_path.iterdir()) == []


# -- 8. Ctrl+C during generate --

LONG_ANSWER = ("generate", "default", "--quant", "nf4", "--greedy",
               "--max-new-tokens", "3000", "--prompt",
               "Write a long story about a dragon who learns to bake bread.")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_signal_during_generate_keeps_the_answer(
    default_dir: Path, sig: signal.Signals
) -> None:
    child = Child(*LONG_ANSWER)
    child.wait_for(lambda: len(child.out.strip()) >= 8, "first tokens")
    child.proc.send_signal(sig)
    assert child.finish() == 130, child.stderr
    assert len(child.stdout.strip()) >= 8
    assert "tokens · stopped" in child.stderr
    assert "Traceback" not in child.stderr


@pytest.mark.slow
def test_ctrl_c_during_generate_json_keeps_stats(default_dir: Path) -> None:
    child = Child(*LONG_ANSWER, "--json")
    child.wait_for(lambda: b"\nLoaded\n" in child.err, "the end of the load")
    time.sleep(3)
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    data = json.loads(child.stdout)
    assert data["stats"]["stop_reason"] == "stopped"
    assert data["stats"]["new_tokens"] >= 1
    assert data["text"] or data["stats"]["new_tokens"] == 1


# -- compare, interrupted --


@pytest.mark.slow
def test_ctrl_c_during_compare_keeps_finished_rows(
    tiny_dir: Path, tmp_path: Path
) -> None:
    csv = tmp_path / "rows.csv"
    child = Child(
        "compare", str(tiny_dir), "--quant", "baseline,nf4,int8", "--tokens", "4",
        "--eval-tokens", "64", "--csv", str(csv),
    )  # fmt: skip
    child.wait_for(lambda: b"nf4: starting" in child.err, "the second row")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert "interrupted: 1 of 3 rows done" in child.stderr
    assert "baseline" in child.stdout
    lines = csv.read_text().splitlines()
    assert len(lines) == 2 and "baseline" in lines[1]
