"""The cost of quantization, token by token: a quantized answer shaded by its KL.

"Show divergence" (the side-by-side view of an answer's variants, and the Compare
tab's answers) runs core.lab.divergence as a controller job: the baseline is fed the
quantized answer teacher-forced, and each token is shaded by KL(baseline ||
quantized) at its position, darker where the quantized model's next-token
distribution moved further. Hovering a token shows both top-5 lists with their
probabilities. When the baseline does not fit, the view says so and offers the
largest preset that fits as the reference.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QPoint, Qt, Signal
from PySide6.QtGui import QColor, QHelpEvent, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTextEdit,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from core.errors import NibbleError
from core.lab.divergence import SHADE_FULL, BaselineDoesNotFit, Divergence
from gui import dialogs

if TYPE_CHECKING:
    from core.model.catalog import ModelRef
    from core.settings import LoadOptions, QuantSettings
    from gui.controller import Controller

logger = logging.getLogger(__name__)

SHADE_RGB = (220, 40, 40)  # the same red as the HTML export (core.lab.divergence)


def token_color(kl: float) -> QColor:
    """A token's background: transparent at KL 0, full red at SHADE_FULL and above."""
    alpha = max(0.0, min(kl / SHADE_FULL, 1.0))
    return QColor(*SHADE_RGB, round(alpha * 255))


def token_tooltip(token: Any) -> str:
    """Both top-5 lists with probabilities, side by side, as rich text."""

    def rows(top: list[tuple[str, float]]) -> list[str]:
        return [
            f"<td><code>{html.escape(_show(text))}</code></td>"
            f"<td align='right'>{p:.3f}</td>"
            for text, p in top
        ]

    left, right = rows(token.baseline_top), rows(token.quantized_top)
    body = "".join(
        f"<tr>{left[i] if i < len(left) else '<td></td><td></td>'}<td>&nbsp;&nbsp;</td>"
        f"{right[i] if i < len(right) else '<td></td><td></td>'}</tr>"
        for i in range(max(len(left), len(right)))
    )
    return (
        f"<b><code>{html.escape(_show(token.text))}</code></b> · KL {token.kl:.4f}"
        "<table cellspacing='0' cellpadding='1'>"
        "<tr><th colspan='2' align='left'>baseline</th><td></td>"
        "<th colspan='2' align='left'>quantized</th></tr>"
        f"{body}</table>"
    )


def _show(text: str) -> str:
    return repr(text)[1:-1] or "∅"


class DivergenceText(QTextEdit):
    """The answer, each token on a background shaded by its KL; hover for the lists."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMouseTracking(True)
        self.divergence: Divergence | None = None
        self.spans: list[tuple[int, int]] = []  # each token's characters

    def set_divergence(self, result: Divergence) -> None:
        self.divergence = result
        self.spans = []
        self.clear()
        cursor = QTextCursor(self.document())
        for token in result.tokens:
            fmt = QTextCharFormat()
            fmt.setBackground(token_color(token.kl))
            start = cursor.position()
            cursor.insertText(token.text, fmt)
            self.spans.append((start, cursor.position()))
        self.moveCursor(QTextCursor.MoveOperation.Start)

    def token_at(self, position: int) -> int | None:
        """The index of the token holding character `position`, if any."""
        for i, (start, end) in enumerate(self.spans):
            if start <= position < end:
                return i
        return None

    def background(self, index: int) -> QColor:
        """The background the token at `index` is drawn on (transparent if empty)."""
        start, end = self.spans[index]
        if end <= start:
            return QColor(0, 0, 0, 0)
        cursor = QTextCursor(self.document())
        cursor.setPosition(start + 1)  # the format of the character before it
        return cursor.charFormat().background().color()

    def tooltip(self, index: int) -> str:
        assert self.divergence is not None
        return token_tooltip(self.divergence.tokens[index])

    def viewportEvent(self, event: QEvent) -> bool:
        # The text is drawn on the viewport, which gets the hover's ToolTip event.
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            index = self.index_at(event.pos())
            if index is not None:
                QToolTip.showText(event.globalPos(), self.tooltip(index), self)
            else:
                QToolTip.hideText()
                event.ignore()
            return True
        return super().viewportEvent(event)

    def index_at(self, point: QPoint) -> int | None:
        """The token under `point` (viewport coordinates), if any."""
        cursor = self.cursorForPosition(point)
        rect = self.cursorRect(cursor)
        # cursorForPosition gives the nearest gap between characters; the token is
        # the character on the side of the gap the pointer is on.
        position = cursor.position() - (1 if point.x() < rect.x() else 0)
        return self.token_at(position)


@dataclass
class DivergenceRequest:
    """What to compare: an answer, the prompt it answered, the settings behind it."""

    ref: ModelRef
    quant: QuantSettings
    options: LoadOptions
    prompt: Any  # chat messages, or text when raw
    answer: str
    label: str  # e.g. 'nf4', for the title
    baseline: str = "fp32"
    raw: bool = False
    threshold: float | None = None


class DivergenceView(QWidget):
    """Runs one divergence as a controller job and shows it; exports HTML and JSON.

    `finished(Divergence | None)` when the job ended (None: failed or cancelled).
    """

    finished = Signal(object)

    def __init__(self, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.request: DivergenceRequest | None = None
        self.result: Divergence | None = None
        self.worker: Any = None
        self.last_error: NibbleError | None = None
        self.reference_offer: str | None = None

        self.summary = QLabel("Pick an answer to compare.")
        self.summary.setWordWrap(True)
        self.legend = QLabel(
            "Each token is shaded by KL(baseline ‖ quantized) at its position: "
            f"darker red, further moved (KL ≥ {SHADE_FULL:g} is the darkest). "
            "Hover a token for both top-5 lists."
        )
        self.legend.setObjectName("hint")
        self.legend.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.hide()
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setObjectName("error")
        self.error_label.hide()
        self.reference_button = QPushButton()
        self.reference_button.hide()
        self.reference_button.clicked.connect(self._use_offered_reference)
        self.text = DivergenceText()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.html_button = QPushButton("Export HTML…")
        self.json_button = QPushButton("Export JSON…")
        self.html_button.clicked.connect(lambda: self._export("html"))
        self.json_button.clicked.connect(lambda: self._export("json"))
        for button in (self.html_button, self.json_button):
            button.setEnabled(False)
        errors = QHBoxLayout()
        errors.addWidget(self.error_label, 1)
        errors.addWidget(self.reference_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.progress, 1)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(0)
        buttons.addWidget(self.html_button)
        buttons.addWidget(self.json_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addLayout(errors)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.legend)
        layout.addLayout(buttons)

    # -- running --

    def start(self, request: DivergenceRequest) -> Any:
        """Load both models and compare (a controller job); returns the worker."""
        if self.worker is not None:
            return self.worker
        self.request = request
        self.result = None
        self._show_error(None)
        self.summary.setText(
            f"Comparing {html.escape(request.label)} with {request.baseline} on "
            f"{html.escape(request.ref.name)}: loading both…"
        )
        worker = self.controller.divergence(
            request.ref,
            request.quant,
            request.options,
            request.prompt,
            request.answer,
            request.baseline,
            request.raw,
            request.threshold,
        )
        worker.progressed.connect(self._on_progress)
        worker.returned.connect(self.show_divergence)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.progress.show()
        self.cancel_button.show()
        for button in (self.html_button, self.json_button):
            button.setEnabled(False)
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.summary.setText("Cancelling…")

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        else:
            self.progress.setRange(0, 0)
        self.progress.setFormat(message)
        self.progress.setTextVisible(True)

    def _on_finished(self) -> None:
        self.worker = None
        self.progress.hide()
        self.cancel_button.hide()
        if self.result is None:
            if self.last_error is None:
                self.summary.setText("Cancelled.")
            self.finished.emit(None)

    def _on_error(self, exc: object) -> None:
        error = dialogs.as_nibble_error(exc)
        self.summary.setText("The divergence could not be computed.")
        self._show_error(error)
        if isinstance(exc, BaselineDoesNotFit) and exc.largest:
            self.reference_offer = exc.largest
            self.reference_button.setText(f"Use {exc.largest} as the reference")
            self.reference_button.show()

    def _use_offered_reference(self) -> None:
        if self.request is None or self.reference_offer is None:
            return
        request = self.request
        request.baseline = self.reference_offer
        self.start(request)

    def _show_error(self, exc: NibbleError | None) -> None:
        self.last_error = exc
        self.reference_offer = None
        self.reference_button.hide()
        if exc is None:
            self.error_label.hide()
            return
        self.error_label.setText(exc.message + (f" — {exc.hint}" if exc.hint else ""))
        self.error_label.show()

    # -- showing --

    def show_divergence(self, result: Divergence) -> None:
        """Shade `result`'s tokens and show its summary."""
        self.result = result
        label = self.request.label if self.request is not None else result.quantized
        self.summary.setText(
            f"<b>{html.escape(label)} vs {html.escape(result.baseline)}</b>: "
            f"{html.escape(result.summary())}"
        )
        self.text.set_divergence(result)
        for button in (self.html_button, self.json_button):
            button.setEnabled(True)
        self.finished.emit(result)

    def _export(self, kind: str) -> None:
        if self.result is None:
            return
        stem = f"divergence-{self.result.quantized}".replace("/", "_")
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export divergence",
            str(dialogs.last_folder() / f"{stem}.{kind}"),
            "HTML page (*.html)" if kind == "html" else "JSON (*.json)",
        )
        if not path:
            return
        dialogs.remember_folder(Path(path).parent)
        try:
            self.export(kind, path)
        except NibbleError as exc:
            self._show_error(exc)

    def export(self, kind: str, path: str | Path) -> Path:
        """Write the shown divergence as a self-contained HTML page or JSON."""
        if self.result is None:
            raise NibbleError("nothing to export yet", "wait for the divergence")
        path = Path(path)
        text = self.result.to_html() if kind == "html" else self.result.to_json()
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise NibbleError(
                f"cannot write {path}: {exc.strerror or exc}",
                "pick a folder you can write to",
            ) from None
        return path


class DivergenceDialog(QDialog):
    """A window of its own for one divergence; closing it cancels the job."""

    def __init__(
        self,
        controller: Controller,
        request: DivergenceRequest,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Divergence: {request.label} vs {request.baseline}")
        self.view = DivergenceView(controller, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.view)
        self.resize(720, 460)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        self.view.start(request)

    def done(self, result: int) -> None:
        self.view.cancel()
        super().done(result)
