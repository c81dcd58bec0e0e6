"""The packaged app's faults: a failing step named, an error named for what failed.

The bundle itself is built and exercised by `make bundle` (minutes: not in `make
test`); these check the parts of that path that run the same from source.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cli import main as cli
from cli import selftest
from core import stack
from core.errors import write_error

KERNELS = "Cannot load dependency data, is `kernels` correctly installed?"


def test_a_library_missing_its_own_file_is_not_a_failed_write() -> None:
    assert write_error(FileNotFoundError(KERNELS), "/data") is None
    full = OSError(errno.ENOSPC, "No space left on device")
    assert "ran out of space" in str(write_error(full, "/data"))


def test_the_cli_names_what_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.store import conversations

    def broken(*args: object) -> None:
        raise FileNotFoundError(KERNELS)  # as a library raises it at import

    monkeypatch.setattr(conversations, "ConversationStore", broken)
    assert cli.run(["chats", "list"]) == 2
    err = capsys.readouterr().err
    assert f"error: a file was not found: {KERNELS}" in err
    assert "writing to" not in err and "disk" not in err


def test_the_self_test_names_the_failing_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise FileNotFoundError(KERNELS)

    monkeypatch.setattr(stack, "import_stack", broken)
    said: list[str] = []
    assert selftest.run(said.append) is False
    assert said[0].startswith("Nibble ")  # the version line comes first
    assert said[1] == (
        f"FAIL at importing the model libraries: a file was not found: {KERNELS}"
    )
    assert said[2].startswith("hint: ")


def test_the_spec_leaves_out_hub_kernels() -> None:
    spec = (
        Path(__file__).resolve().parents[2] / "packaging" / "nibble.spec"
    ).read_text()
    assert '"kernels",' in spec.split("excludes=[", 1)[1].split("]", 1)[0]


def test_the_bundle_switches_hub_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    import main

    monkeypatch.setenv("USE_HUB_KERNELS", "unset below")  # restored after the test
    monkeypatch.delenv("USE_HUB_KERNELS")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "argv", ["nibble", "snippet", "default"])
    with pytest.raises(SystemExit):
        main.main(["--help"])
    assert os.environ["USE_HUB_KERNELS"] == "NO"
