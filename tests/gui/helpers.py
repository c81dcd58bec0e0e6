"""Helpers of the window's tests."""

from __future__ import annotations

import time

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
