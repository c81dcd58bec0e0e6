"""Fixtures shared by the window's tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication

from gui import workers


def wait_threads(timeout_s: float) -> list[str]:
    """Process events until every worker thread ended; names of those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        QCoreApplication.processEvents()
        alive = workers.running_threads()
        if not alive or time.monotonic() > deadline:
            return [t.objectName() for t in alive]
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def no_dangling_qthreads(qapp: object) -> Iterator[None]:
    """Fail any test that leaves a worker QThread running (threads get 1 s to end)."""
    yield
    left = wait_threads(1.0)
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
