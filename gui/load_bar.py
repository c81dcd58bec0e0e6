"""The strip under the settings: what the last load did, progress, Cancel and Load."""

from __future__ import annotations

import logging
import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from core.units import format_seconds

logger = logging.getLogger(__name__)


class LoadBar(QWidget):
    """Load / Cancel buttons, a progress bar, and above it the step in words (weights
    n/N and the elapsed time), which wraps in a narrow column instead of being cut."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._started = 0.0
        self._message = "Loading"
        self.label = QLabel()
        self.label.setObjectName("hint")
        self.label.setWordWrap(True)
        self.step_label = QLabel()
        self.step_label.setWordWrap(True)
        self.step_label.hide()
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)  # the step label says it, whole
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop loading; the current model stays")
        self.cancel_button.hide()
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("primary")
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        row.addWidget(self.load_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.step_label)
        layout.addLayout(row)
        # Elapsed time keeps counting while a step reports nothing.
        self._timer = QTimer(self)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._tick)

    def begin(self, title: str, text: str) -> None:
        self._started = time.perf_counter()
        self._message = title
        self.progress.setRange(0, 0)
        self._show_step(title)
        self.progress.show()
        self.cancel_button.show()
        self.label.setText(text)
        self._timer.start()

    def report(self, done: int, total: int, message: str) -> None:
        """Show one progress report of the loader."""
        self._message = message
        elapsed = self.elapsed_text()
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self._show_step(f"{message}: {done}/{total} · {elapsed}")
        else:
            self.progress.setRange(0, 0)
            self._show_step(f"{message} · {elapsed}")

    @property
    def step_text(self) -> str:
        """The step shown while loading, e.g. 'Loading weights: 128/272 · 3.2 s'."""
        return self.step_label.text()

    def _show_step(self, text: str) -> None:
        self.step_label.setText(text)
        self.step_label.show()

    def end(self, text: str | None = None) -> None:
        self._timer.stop()
        self.progress.hide()
        self.step_label.hide()
        self.cancel_button.hide()
        if text is not None:
            self.label.setText(text)

    def elapsed_text(self) -> str:
        return format_seconds(time.perf_counter() - self._started)

    def _tick(self) -> None:
        if not self.progress.maximum():
            self._show_step(f"{self._message} · {self.elapsed_text()}")
