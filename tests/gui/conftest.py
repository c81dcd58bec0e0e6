"""Fixtures of the window's tests: no worker thread outlives a test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gui import workers
from tests.gui.helpers import wait_threads


@pytest.fixture(autouse=True)
def no_dangling_qthreads(qapp: object) -> Iterator[None]:
    """Fail any test that leaves a worker QThread running.

    The one check for every test of the window (no module keeps its own). A thread
    quits right after its worker's `finished`; on a busy machine that can take a
    moment, so threads get 5 s to end, which costs nothing when none is left.
    """
    yield
    left = wait_threads(5.0)
    if left:
        for thread in workers.running_threads():
            thread.quit()
            thread.wait(5000)
        pytest.fail(f"test left QThreads running: {', '.join(left)}")


@pytest.fixture(name="config_dir")
def config_dir_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private config dir, so tests never touch the user's session or geometry."""
    folder = tmp_path / "config"
    monkeypatch.setenv("NIBBLE_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(name="controller")
def controller_fixture(qtbot: object) -> Iterator[object]:
    """A Controller whose ML stack import has finished; every job stopped after."""
    from gui.controller import Controller

    made = Controller()
    made.import_libraries()
    qtbot.waitUntil(lambda: made.ready, timeout=120_000)  # type: ignore[attr-defined]
    yield made
    made.stop_all(5.0)
