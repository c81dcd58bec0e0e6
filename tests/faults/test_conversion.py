"""The first conversion of the default model, interrupted (rows of the fault matrix
in tests/test_faults.py).

| fault                                         | expected                            |
|-----------------------------------------------|-------------------------------------|
| Ctrl+C / SIGTERM in the first conversion      | exit 130, temporary folder removed  |
| SIGKILL in a conversion                       | leftover swept at the next run      |

The real CLI runs in a subprocess and gets the signal once its temporary folder
appears. Apart from tests/faults/test_interrupts.py: each file runs whole on one
worker, and both hold minutes of conversions and loads.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from core.model import default_model
from tests.faults.cli_process import Child, nibble, temp_folders

TEMP = default_model.DEFAULT_NAME


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_signal_during_first_conversion(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "data"
    child = Child(
        "generate", "default", "--prompt", "hi", "--max-new-tokens", "1",
        env={"NIBBLE_DATA_DIR": str(data)},
    )  # fmt: skip
    models = data / "models"
    child.wait_for(lambda: bool(temp_folders(models)), "temporary folder")
    child.proc.send_signal(sig)
    assert child.finish() == 130, child.stderr
    assert "interrupted" in child.stderr
    assert "terminate called" not in child.stderr
    assert "Traceback" not in child.stderr
    assert "\r" not in child.stderr  # the conversion's stages as lines, no bars
    assert "Writing safetensors\n" in child.stderr
    assert list(models.iterdir()) == []


@pytest.mark.slow
def test_conversion_killed_outright_is_swept_at_the_next(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"NIBBLE_DATA_DIR": str(data)}
    child = Child("generate", "default", "--prompt", "hi", env=env)
    models = data / "models"
    child.wait_for(lambda: bool(temp_folders(models)), "temporary folder")
    child.proc.kill()
    child.finish()
    assert temp_folders(models), "SIGKILL leaves the folder: nothing can remove it"
    done = nibble(
        "generate", "default", "--prompt", "hi", "--max-new-tokens", "1", env=env
    )
    assert done.returncode == 0, done.stderr.decode()
    assert [p.name for p in models.iterdir()] == [TEMP]
