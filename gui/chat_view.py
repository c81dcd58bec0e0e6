"""The Chat tab: messages with roles, streaming answers, sampling parameters.

The view does no generation itself: it emits `send_requested(messages, raw)` and the
controller streams the answer from its generation queue into `append_chunk`. Chunks are
buffered and painted at most every FLUSH_MS so a fast model never floods the event loop.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence, QPalette, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.errors import NibbleError
from core.settings import GenerationSettings

logger = logging.getLogger(__name__)

FLUSH_MS = 40
ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}
_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")


def render_html(text: str) -> str:
    """Chat text as rich text: fenced code blocks and `inline code` in monospace."""
    out: list[str] = []
    pos = 0
    for match in _FENCE.finditer(text):
        out.append(_render_prose(text[pos : match.start()]))
        code = html.escape(match.group(1).rstrip("\n"))
        out.append(
            f"<table width='100%' cellpadding='8' bgcolor='{_code_background()}'>"
            f"<tr><td><pre style='font-family: monospace; margin: 0'>{code}</pre>"
            "</td></tr></table>"
        )
        pos = match.end()
    out.append(_render_prose(text[pos:]))
    return "".join(out)


def _code_background() -> str:
    """A shade between the window and the base colour, readable in light and dark."""
    palette = QGuiApplication.palette()
    base = palette.color(QPalette.ColorRole.Base)
    window = palette.color(QPalette.ColorRole.Window)
    mixed = [
        (a + b) // 2
        for a, b in zip(base.getRgb()[:3], window.getRgb()[:3], strict=True)
    ]
    return "#{:02x}{:02x}{:02x}".format(*mixed)


def _render_prose(text: str) -> str:
    escaped = html.escape(text)
    escaped = _INLINE.sub(r"<code style='font-family: monospace'>\1</code>", escaped)
    return escaped.replace("\n", "<br>")


class MessageWidget(QFrame):
    """One message: role, text, and for answers the stats line."""

    def __init__(self, role: str, text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.role = role
        self._text = text
        self.setObjectName(f"message_{role}")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 8)
        layout.setSpacing(4)
        head = QHBoxLayout()
        self.role_label = QLabel(ROLE_TITLES.get(role, role.title()))
        self.role_label.setObjectName("role")
        head.addWidget(self.role_label)
        head.addStretch(1)
        self.copy_button = QToolButton(text="Copy")
        self.copy_button.setAutoRaise(True)
        self.copy_button.setToolTip("Copy this message")
        self.copy_button.clicked.connect(self.copy)
        head.addWidget(self.copy_button)
        layout.addLayout(head)
        self.body = QLabel()
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setWordWrap(True)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.setSizePolicy(
            QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum
        )
        layout.addWidget(self.body)
        self.stats_label = QLabel()
        self.stats_label.setObjectName("hint")
        self.stats_label.hide()
        layout.addWidget(self.stats_label)
        self._render()

    @property
    def text(self) -> str:
        return self._text

    def append(self, chunk: str) -> None:
        self._text += chunk
        self._render()

    def _render(self) -> None:
        self.body.setText(render_html(self._text) if self._text else "…")

    def set_stats(self, text: str) -> None:
        self.stats_label.setText(text)
        self.stats_label.setVisible(bool(text))

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self._text)


class ChatView(QWidget):
    """Messages, the input box and the sampling parameters."""

    send_requested = Signal(object, bool)  # messages (or a raw prompt), raw mode
    stop_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.messages_widgets: list[MessageWidget] = []
        self._pending = ""
        self._current: MessageWidget | None = None
        self._busy = False
        self._raw_choice = False
        self._ready_reason = "Load a model first."
        self._model_name = ""
        self._flush = QTimer(self)
        self._flush.setInterval(FLUSH_MS)
        self._flush.timeout.connect(self.flush)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        # -- system prompt (collapsible) --
        self.system_toggle = QToolButton(text="System prompt")
        self.system_toggle.setCheckable(True)
        self.system_toggle.setToolButtonStyle(
            Qt.ToolButtonStyle.ToolButtonTextBesideIcon
        )
        self.system_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.system_toggle.setAutoRaise(True)
        self.system_toggle.toggled.connect(self._toggle_system)
        self.system_edit = QPlainTextEdit()
        self.system_edit.setPlaceholderText("You are a helpful assistant.")
        self.system_edit.setMaximumHeight(70)
        self.system_edit.hide()
        top = QHBoxLayout()
        top.addWidget(self.system_toggle)
        top.addStretch(1)
        self.raw_check = QCheckBox("Raw completion")
        self.raw_check.setToolTip(
            "Feed your text to the model as it is, without the chat template, and "
            "let it continue the text."
        )
        top.addWidget(self.raw_check)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Remove every message")
        self.clear_button.clicked.connect(self.clear)
        top.addWidget(self.clear_button)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("Answer the last message again")
        self.regenerate_button.clicked.connect(self.regenerate)
        top.addWidget(self.regenerate_button)
        layout.addLayout(top)
        layout.addWidget(self.system_edit)

        # -- messages --
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        holder = QWidget()
        holder.setObjectName("chat_holder")
        self.list_layout = QVBoxLayout(holder)
        self.list_layout.setContentsMargins(2, 2, 8, 2)
        self.list_layout.setSpacing(8)
        self.empty_label = QLabel("Load a model, then ask it something.")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setObjectName("hint")
        self.list_layout.addWidget(self.empty_label)
        self.list_layout.addStretch(1)
        self.scroll.setWidget(holder)
        layout.addWidget(self.scroll, 1)

        # -- sampling --
        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        self.max_tokens = _spin(QSpinBox(), 1, 32768, 256)
        self.temperature = _spin(QDoubleSpinBox(), 0.0, 5.0, 0.7, 0.05)
        self.top_p = _spin(QDoubleSpinBox(), 0.01, 1.0, 0.9, 0.05)
        self.top_k = _spin(QSpinBox(), 0, 1000, 50)
        self.repetition = _spin(QDoubleSpinBox(), 0.5, 3.0, 1.0, 0.05)
        self.seed = QLineEdit()
        self.seed.setPlaceholderText("random")
        self.seed.setMaximumWidth(80)
        self.greedy = QCheckBox("Greedy")
        self.greedy.setToolTip("Always pick the most likely token (ignores sampling)")
        fields: list[tuple[str, QWidget, str]] = [
            ("Max tokens", self.max_tokens, "The longest answer, in tokens"),
            ("Temperature", self.temperature, "Higher is more varied; 0 is greedy"),
            ("Top-p", self.top_p, "Sample from the smallest set with this mass"),
            ("Top-k", self.top_k, "Sample from the k most likely tokens; 0 = all"),
            ("Repetition", self.repetition, "Penalty for repeating tokens; 1 = off"),
            ("Seed", self.seed, "Fix it to get the same answer again"),
        ]
        for i, (title, widget, tip) in enumerate(fields):
            label = QLabel(title)
            label.setToolTip(tip)
            widget.setToolTip(tip)
            grid.addWidget(label, 0, i)
            grid.addWidget(widget, 1, i)
        grid.addWidget(self.greedy, 1, len(fields))
        layout.addLayout(grid)

        # -- input --
        self.paused_label = QLabel()
        self.paused_label.setObjectName("hint")
        self.paused_label.setWordWrap(True)
        self.paused_label.hide()
        layout.addWidget(self.paused_label)
        row = QHBoxLayout()
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Message  (Ctrl+Enter to send, Esc to stop)")
        self.input.setMaximumHeight(80)
        row.addWidget(self.input, 1)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setMinimumWidth(80)
        self.send_button.clicked.connect(self._on_send_clicked)
        row.addWidget(self.send_button)
        layout.addLayout(row)
        self.input.installEventFilter(self)
        self.esc = QShortcut(QKeySequence(Qt.Key.Key_Escape), self)
        self.esc.setContext(Qt.ShortcutContext.WindowShortcut)
        self.esc.activated.connect(self.stop)
        self._update_buttons()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Ctrl+Enter in the input box sends."""
        if (
            watched is self.input
            and event.type() == QEvent.Type.KeyPress
            and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and event.modifiers() & Qt.KeyboardModifier.ControlModifier
        ):
            self.send()
            return True
        return super().eventFilter(watched, event)

    # -- state --
    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Whether a model is loaded to answer; `reason` explains why not."""
        self._ready_reason = "" if ready else (reason or "Load a model first.")
        self._update_buttons()

    def set_chat_template(self, available: bool) -> None:
        """Force raw mode for models without a chat template."""
        if available:
            if not self.raw_check.isEnabled():  # we forced raw for the last model
                self.raw_check.setChecked(self._raw_choice)
            self.raw_check.setEnabled(True)
            self.raw_check.setToolTip(
                "Feed your text to the model as it is, without the chat template."
            )
        else:
            if self.raw_check.isEnabled():
                self._raw_choice = self.raw_check.isChecked()
            self.raw_check.setChecked(True)
            self.raw_check.setEnabled(False)
            self.raw_check.setToolTip("This model has no chat template: raw only.")

    def set_model_name(self, name: str) -> None:
        """The loaded model's name ('' when none): the empty chat invites to ask it."""
        self._model_name = name
        self._update_empty_text()

    def _update_empty_text(self) -> None:
        if self._model_name and not self._ready_reason:
            text = f"Ask {self._model_name} something."
        elif self._model_name:
            text = self._ready_reason
        else:
            text = "Load a model, then ask it something."
        self.empty_label.setText(text)

    def set_paused(self, reason: str) -> None:
        """Say why answers wait ('' when they do not)."""
        self.paused_label.setText(reason)
        self.paused_label.setVisible(bool(reason))

    @property
    def busy(self) -> bool:
        return self._busy

    def _update_buttons(self) -> None:
        self._update_empty_text()
        if self._busy:
            self.send_button.setText("Stop")
            self.send_button.setEnabled(True)
            self.send_button.setToolTip("Stop the answer (Esc)")
        else:
            self.send_button.setText("Send")
            self.send_button.setEnabled(not self._ready_reason)
            self.send_button.setToolTip(self._ready_reason or "Send (Ctrl+Enter)")
        has_user = any(m.role == "user" for m in self.messages_widgets)
        self.regenerate_button.setEnabled(
            not self._busy and has_user and not self._ready_reason
        )
        self.clear_button.setEnabled(not self._busy and bool(self.messages_widgets))

    def generation_settings(self) -> GenerationSettings:
        """The sampling fields; raises SettingsError when the seed is not a number."""
        seed = self.seed.text().strip()
        return GenerationSettings(
            max_new_tokens=self.max_tokens.value(),
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            repetition_penalty=self.repetition.value(),
            seed=seed or None,
            greedy=self.greedy.isChecked(),
        )

    def set_generation_settings(self, gen: GenerationSettings) -> None:
        self.max_tokens.setValue(gen.max_new_tokens)
        self.temperature.setValue(gen.temperature)
        self.top_p.setValue(gen.top_p)
        self.top_k.setValue(gen.top_k)
        self.repetition.setValue(gen.repetition_penalty)
        self.seed.setText("" if gen.seed is None else str(gen.seed))
        self.greedy.setChecked(gen.greedy)

    # -- messages --
    def add_message(self, role: str, text: str = "") -> MessageWidget:
        widget = MessageWidget(role, text)
        self.empty_label.hide()
        self.list_layout.insertWidget(self.list_layout.count() - 1, widget)
        self.messages_widgets.append(widget)
        self._update_buttons()
        self._scroll_to_end()
        return widget

    def history(self) -> list[dict[str, str]]:
        """The conversation as chat messages, system prompt first."""
        out = []
        system = self.system_edit.toPlainText().strip()
        if system:
            out.append({"role": "system", "content": system})
        for widget in self.messages_widgets:
            if widget.text:
                out.append({"role": widget.role, "content": widget.text})
        return out

    def clear(self) -> None:
        for widget in self.messages_widgets:
            widget.setParent(None)
            widget.deleteLater()
        self.messages_widgets.clear()
        self.empty_label.show()
        self._update_buttons()

    def send(self) -> None:
        """Send what is in the input box (Ctrl+Enter)."""
        if self._busy or self._ready_reason:
            return
        text = self.input.toPlainText().strip()
        if not text:
            return
        self.input.clear()
        self.add_message("user", text)
        self._request()

    def regenerate(self) -> None:
        """Drop the last answer and ask again."""
        if self._busy or self._ready_reason:
            return
        while self.messages_widgets and self.messages_widgets[-1].role != "user":
            widget = self.messages_widgets.pop()
            widget.setParent(None)
            widget.deleteLater()
        if self.messages_widgets:
            self._request()

    def _request(self) -> None:
        raw = self.raw_check.isChecked()
        payload: Any = self.history()
        if raw:
            payload = self.messages_widgets[-1].text
        self.send_requested.emit(payload, raw)

    def _on_send_clicked(self) -> None:
        if self._busy:
            self.stop()
        else:
            self.send()

    def stop(self) -> None:
        """Stop the answer being written (Esc)."""
        if self._busy:
            self.stop_requested.emit()

    # -- streaming --
    def begin_answer(self) -> None:
        self._busy = True
        self._pending = ""
        self._current = self.add_message("assistant")
        self._flush.start()
        self._update_buttons()

    def append_chunk(self, chunk: str) -> None:
        self._pending += chunk

    def flush(self) -> None:
        """Paint the buffered chunks (called on a timer while streaming)."""
        if self._pending and self._current is not None:
            bar = self.scroll.verticalScrollBar()
            at_end = bar.value() >= bar.maximum() - 4
            self._current.append(self._pending)
            self._pending = ""
            if at_end:
                self._scroll_to_end()

    def end_answer(
        self, stats_text: str = "", error: NibbleError | None = None
    ) -> None:
        """The answer is over: paint what is left and show its stats."""
        self.flush()
        self._flush.stop()
        if self._current is not None:
            if error is not None:
                stats_text = f"error: {error.message}"
            self._current.set_stats(stats_text)
            if not self._current.text and error is not None:
                self._current.body.setText("<i>No answer.</i>")
        self._current = None
        self._busy = False
        self._update_buttons()

    def current_answer(self) -> str:
        """The text of the answer being written, buffered chunks included."""
        if self._current is None:
            return ""
        return self._current.text + self._pending

    def _scroll_to_end(self) -> None:
        QTimer.singleShot(0, self, self._to_end)

    def _to_end(self) -> None:
        bar = self.scroll.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _toggle_system(self, on: bool) -> None:
        self.system_edit.setVisible(on)
        self.system_toggle.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow
        )


def _spin(widget: Any, low: float, high: float, value: float, step: float = 1) -> Any:
    widget.setRange(low, high)
    if isinstance(widget, QDoubleSpinBox):
        widget.setDecimals(2)
    widget.setSingleStep(step)
    widget.setValue(value)
    widget.setMinimumWidth(70)
    return widget
