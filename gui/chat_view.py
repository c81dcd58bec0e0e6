"""The Chat tab: messages with roles, streaming answers, sampling parameters.

"Reply as JSON" in the sampling section holds the answer to JSON (any object, or one
matching the schema typed or opened there): `reply_constraint()` builds it through
core.generation.constrain, as the command line's --json-object / --json-schema do.
A notice line (`add_notice`) says what changed around the chat, e.g. a server client
switched the model.

The view does no generation and keeps no conversation: it shows one. It emits
`question_asked(text)` (and `regenerate_requested()`); the chat (core.chat, through the
controller) stores the question and streams the answer into `append_chunk`. Chunks are
buffered and painted at most every FLUSH_MS so a fast model never floods the event loop.
While the user is at the bottom, the view follows new messages and the answer as it
grows; scrolled up, it stays where the user left it.

Prose wraps to the pane. A fenced code block is a widget of its own whose lines never
wrap: a line wider than the pane scrolls inside its block, as in other chat apps, and
never widens the chat.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import (
    QFontDatabase,
    QGuiApplication,
    QKeySequence,
    QPalette,
    QShortcut,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.errors import NibbleError
from core.settings import GenerationSettings, fields_of
from gui import fields

if TYPE_CHECKING:
    from core.generation.constrain import Constraint

logger = logging.getLogger(__name__)

FLUSH_MS = 40
ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}
_FENCE = re.compile(r"```([^\n`]*)\n?(.*?)(?:```|\Z)", re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
COPIED_MS = 1500
SCHEMA_CHECK_MS = 300
MAX_SCHEMA_BYTES = 1024 * 1024  # a schema is a few KiB; more is not one


def json_error_text(exc: NibbleError) -> str:
    """A schema's error as the one line under the box: message; hint."""
    text = f"Reply as JSON: {exc.message}"
    if exc.hint:
        text += f"; {exc.hint}"
    return " ".join(text.split())


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a message, in order (what their Copy links copy)."""
    return [m.group(2).rstrip("\n") for m in _FENCE.finditer(text)]


def segments(text: str) -> list[tuple[str, str, str]]:
    """A message as its parts in order: ("prose", text, "") and ("code", code,
    language), starting and ending with prose (either may be empty)."""
    out: list[tuple[str, str, str]] = []
    pos = 0
    for match in _FENCE.finditer(text):
        out.append(("prose", text[pos : match.start()].strip("\n"), ""))
        out.append(("code", match.group(2).rstrip("\n"), match.group(1).strip()))
        pos = match.end()
    out.append(("prose", text[pos:].strip("\n") if out else text[pos:], ""))
    return out


def render_html(text: str, copied: int | None = None) -> str:
    """Chat text as rich text: fenced code coloured by Pygments with a Copy link,
    `inline code` in monospace. Block `copied` says "Copied" instead of "Copy"."""
    out: list[str] = []
    pos = 0
    for index, match in enumerate(_FENCE.finditer(text)):
        out.append(_render_prose(text[pos : match.start()]))
        language = match.group(1).strip()
        code = highlight_code(match.group(2).rstrip("\n"), language)
        link = "Copied" if index == copied else f"<a href='copy:{index}'>Copy</a>"
        out.append(
            f"<table width='100%' cellpadding='6' bgcolor='{_code_background()}'>"
            f"<tr><td><small>{html.escape(language)}</small></td>"
            f"<td align='right'><small>{link}</small></td></tr>"
            f"<tr><td colspan='2'><pre style='font-family: monospace; margin: 0; "
            "white-space: pre-wrap'>"
            f"{code}</pre></td></tr></table>"
        )
        pos = match.end()
    out.append(_render_prose(text[pos:]))
    return "".join(out)


def highlight_code(code: str, language: str = "") -> str:
    """HTML spans with inline colours for `code` (plain escaped text if unknown)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language or "text")
    except ClassNotFound:
        return html.escape(code)
    dark = QGuiApplication.palette().color(QPalette.ColorRole.Base).lightness() < 128
    formatter = HtmlFormatter(
        nowrap=True, noclasses=True, style="monokai" if dark else "default"
    )
    return highlight(code, lexer, formatter).rstrip("\n")


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


def _prose_label() -> QLabel:
    """A label for prose: rich text that wraps to the pane and never widens it."""
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setWordWrap(True)
    label.setTextInteractionFlags(
        Qt.TextInteractionFlag.TextSelectableByMouse
        | Qt.TextInteractionFlag.LinksAccessibleByMouse
    )
    # The pane's width decides the message's, never the longest line of its text.
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
    label.setMinimumWidth(120)
    return label


class CodeBlock(QFrame):
    """One fenced code block: its language, a Copy button, and the code, coloured,
    in lines that never wrap; a line wider than the block scrolls inside it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("code_block")
        self.code = ""
        self.language = ""
        self._shown: tuple[str, str, str] | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 2, 4, 6)
        layout.setSpacing(0)
        head = QHBoxLayout()
        self.language_label = QLabel()
        self.language_label.setObjectName("hint")
        head.addWidget(self.language_label)
        head.addStretch(1)
        self.copy_button = QToolButton(text="Copy")
        self.copy_button.setAutoRaise(True)
        self.copy_button.setToolTip("Copy this code")
        head.addWidget(self.copy_button)
        layout.addLayout(head)
        self.label = QLabel()
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setWordWrap(False)  # a code line stays one line
        self.label.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.scroll = QScrollArea()
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.label)
        self.scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.scroll.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.scroll.setMinimumWidth(100)
        # A click lets the arrows scroll the code; Tab does not stop at every block.
        self.scroll.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.scroll.viewport().setAutoFillBackground(False)
        self.label.setAutoFillBackground(False)
        self.scroll.horizontalScrollBar().rangeChanged.connect(self._fit)
        layout.addWidget(self.scroll)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.setMinimumWidth(120)

    @property
    def scrolls(self) -> bool:
        """Whether a line is wider than the block (its scroll bar shows)."""
        return self.scroll.horizontalScrollBar().maximum() > 0

    def set_code(self, code: str, language: str) -> None:
        """Show `code`, coloured as `language` (repaints only when it changed)."""
        background = _code_background()
        if (code, language, background) == self._shown:
            return
        if self._shown is None or self._shown[2] != background:
            self.setStyleSheet(
                f"QFrame#code_block {{ background: {background}; border-radius: 6px; }}"
            )
        self._shown = (code, language, background)
        self.code, self.language = code, language
        self.language_label.setText(language)
        self.label.setText(
            f"<pre style='margin: 0'>{highlight_code(code, language)}</pre>"
        )
        self._fit()

    def set_copied(self, copied: bool) -> None:
        self.copy_button.setText("Copied" if copied else "Copy")

    def _fit(self, *_range: int) -> None:
        """As tall as the code, plus the scroll bar when a line is wider."""
        height = self.label.sizeHint().height() + 2 * self.scroll.frameWidth()
        if self.scrolls:
            height += self.scroll.horizontalScrollBar().sizeHint().height()
        self.scroll.setFixedHeight(height)


class MessageWidget(QFrame):
    """One message: role, text, and for answers the stats line."""

    def __init__(self, role: str, text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.role = role
        self._text = text
        self.message_id: int | None = None
        """The stored message this widget shows (None until it is stored)."""
        self.badge: QWidget | None = None
        self.switcher: QWidget | None = None
        self.more_button: QWidget | None = None
        self._waiting = ""
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
        self._head = head
        layout.addLayout(head)
        self.body = _prose_label()
        """The text before the first code block (or what an empty answer waits for)."""
        self._copied: int | None = None
        self.parts: list[QWidget] = []
        """After `body`: a CodeBlock, then the prose after it, and so on."""
        self._layout = layout
        layout.addWidget(self.body)
        self.stats_label = QLabel()
        self.stats_label.setObjectName("hint")
        self.stats_label.setWordWrap(True)
        self.stats_label.hide()
        layout.addWidget(self.stats_label)
        self._render()

    @property
    def text(self) -> str:
        return self._text

    def append(self, chunk: str) -> None:
        self._text += chunk
        self._render()

    @property
    def code_widgets(self) -> list[CodeBlock]:
        """The message's code blocks, in order."""
        return [part for part in self.parts if isinstance(part, CodeBlock)]

    def _render(self) -> None:
        if not self._text:
            self._set_parts([])
            self.body.show()
            self.body.setText(html.escape(self._waiting) if self._waiting else "…")
            return
        first, *rest = segments(self._text)
        self.body.setText(_render_prose(first[1]))
        self.body.setVisible(bool(first[1]) or not rest)
        self._set_parts(rest)

    def _set_parts(self, rest: list[tuple[str, str, str]]) -> None:
        """Make `parts` show `rest`, reusing the widgets an answer already has."""
        code_index = 0
        for i, (kind, content, language) in enumerate(rest):
            want = CodeBlock if kind == "code" else QLabel
            part = self.parts[i] if i < len(self.parts) else None
            if part is None or type(part) is not want:
                for old in self.parts[i:]:
                    old.setParent(None)
                    old.deleteLater()
                del self.parts[i:]
                part = CodeBlock() if kind == "code" else _prose_label()
                if isinstance(part, CodeBlock):
                    part.copy_button.clicked.connect(
                        lambda _=False, n=code_index: self.copy_code(n)
                    )
                self._layout.insertWidget(self._layout.indexOf(self.stats_label), part)
                self.parts.append(part)
            if isinstance(part, CodeBlock):
                part.set_code(content, language)
                part.set_copied(code_index == self._copied)
                code_index += 1
            else:
                part.setText(_render_prose(content))
                part.setVisible(bool(content))
        for old in self.parts[len(rest) :]:
            old.setParent(None)
            old.deleteLater()
        del self.parts[len(rest) :]

    def set_waiting(self, text: str) -> None:
        """What an answer with no text yet waits for ('' shows "…")."""
        if text != self._waiting:
            self._waiting = text
            if not self._text:
                self._render()

    def set_empty_text(self, text: str) -> None:
        """What an answer that ended without text says instead."""
        if not self._text:
            self.body.setText(f"<i>{html.escape(text)}</i>")

    def set_decorations(
        self, badge: QWidget | None, switcher: QWidget | None, more: QWidget
    ) -> None:
        """Put the badge after the role, the variant switcher before Copy and the
        message's menu after it (replacing earlier ones)."""
        for old in (self.badge, self.switcher, self.more_button):
            if old is not None:
                old.setParent(None)
                old.deleteLater()
        self.badge, self.switcher, self.more_button = badge, switcher, more
        head = self._head
        if badge is not None:
            head.insertWidget(1, badge)
        if switcher is not None:
            head.insertWidget(head.indexOf(self.copy_button), switcher)
        head.insertWidget(head.indexOf(self.copy_button) + 1, more)

    def has_stats(self) -> bool:
        return bool(self.stats_label.text())

    def set_stats(self, text: str) -> None:
        self.stats_label.setText(text)
        self.stats_label.setVisible(bool(text))

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self._text)
        self.copy_button.setText("Copied")
        QTimer.singleShot(COPIED_MS, self, lambda: self.copy_button.setText("Copy"))

    def copy_code(self, index: int) -> str:
        """Copy code block `index`; its link says "Copied" for a moment."""
        code = code_blocks(self._text)[index]
        QGuiApplication.clipboard().setText(code)
        self._copied = index
        self._render()
        QTimer.singleShot(COPIED_MS, self, self._end_copied)
        return code

    def _end_copied(self) -> None:
        self._copied = None
        self._render()


class ChatView(QWidget):
    """Messages, the input box and the sampling parameters."""

    question_asked = Signal(str)
    """The user sent this question (its message is already shown)."""
    regenerate_requested = Signal()
    """Answer the last question again (the answers after it are no longer shown)."""
    clear_requested = Signal()
    """Clear was pressed while `clear_starts_new` is set: start a new conversation."""
    stop_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.messages_widgets: list[MessageWidget] = []
        self.notices: list[QLabel] = []
        self._undo: Callable[[], None] | None = None
        self._pending = ""
        self._current: MessageWidget | None = None
        self._busy = False
        self._raw_choice = False
        self._ready_reason = "Load a model first."
        self._model_name = ""
        self._cleared: list[tuple[str, str, str]] = []
        self._follow = True  # the view is at the bottom: new text scrolls into view
        self.clear_starts_new = False
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
        self.clear_button.setToolTip("Remove every message (Undo brings them back)")
        self.clear_button.clicked.connect(self._on_clear_clicked)
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
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
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
        self.undo_bar = QWidget()
        undo_row = QHBoxLayout(self.undo_bar)
        undo_row.setContentsMargins(0, 0, 0, 0)
        undo_row.addStretch(1)
        undo_row.addWidget(QLabel("Conversation cleared."))
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Bring the cleared messages back")
        self.undo_button.clicked.connect(self.undo_clear)
        undo_row.addWidget(self.undo_button)
        undo_row.addStretch(1)
        self.undo_bar.hide()
        self.list_layout.addWidget(self.undo_bar)
        self.list_layout.addStretch(1)
        self.scroll.setWidget(holder)
        bar = self.scroll.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range_changed)
        layout.addWidget(self.scroll, 1)

        # -- sampling, generated from the schema (collapsible) --
        self.sampling_toggle = QToolButton()
        self.sampling_toggle.setCheckable(True)
        self.sampling_toggle.setAutoRaise(True)
        self.sampling_toggle.setToolButtonStyle(
            Qt.ToolButtonStyle.ToolButtonTextBesideIcon
        )
        self.sampling_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.sampling_toggle.setToolTip("Show the sampling parameters")
        self.sampling_toggle.toggled.connect(self._toggle_sampling)
        self.sampling_box = QWidget()
        box_layout = QVBoxLayout(self.sampling_box)
        box_layout.setContentsMargins(0, 0, 0, 0)
        grid = QGridLayout()
        box_layout.addLayout(grid)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(8)
        self.sampling_fields: dict[str, QWidget] = {}
        for i, spec in enumerate(fields_of(GenerationSettings)):
            editor = fields.make_editor(spec)
            self.sampling_fields[spec.name] = editor
            fields.changed_signal(editor).connect(self._update_sampling_summary)
            row, column = i // 2, (i % 2) * 2
            if spec.kind == "bool":
                grid.addWidget(editor, row, column + 1)
            else:
                editor.setMinimumWidth(80)
                grid.addWidget(fields.make_label(spec, editor), row, column)
                grid.addWidget(editor, row, column + 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        self.sampling_box.hide()
        self.max_tokens = self.sampling_fields["max_new_tokens"]
        self.temperature = self.sampling_fields["temperature"]
        self.top_p = self.sampling_fields["top_p"]
        self.top_k = self.sampling_fields["top_k"]
        self.repetition = self.sampling_fields["repetition_penalty"]
        self.seed = self.sampling_fields["seed"]
        self.greedy = self.sampling_fields["greedy"]
        self._build_json_reply(box_layout)
        layout.addWidget(self.sampling_toggle)
        layout.addWidget(self.sampling_box)

        # -- input --
        self.paused_label = QLabel()
        self.paused_label.setObjectName("hint")
        self.paused_label.setWordWrap(True)
        self.paused_label.hide()
        layout.addWidget(self.paused_label)
        row_layout = QHBoxLayout()
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Message")
        self.input.setMaximumHeight(80)
        row_layout.addWidget(self.input, 1)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setMinimumWidth(80)
        self.send_button.clicked.connect(self._on_send_clicked)
        row_layout.addWidget(self.send_button)
        layout.addLayout(row_layout)
        self.keys_hint = QLabel(
            "Enter sends · Shift+Enter adds a line · Esc stops the answer"
        )
        self.keys_hint.setObjectName("hint")
        layout.addWidget(self.keys_hint)
        self.input.installEventFilter(self)
        self.esc = QShortcut(QKeySequence(Qt.Key.Key_Escape), self)
        self.esc.setContext(Qt.ShortcutContext.WindowShortcut)
        self.esc.activated.connect(self.stop)
        self._update_sampling_summary()
        self._update_buttons()

    def _build_json_reply(self, box: QVBoxLayout) -> None:
        """The "Reply as JSON" row, the optional schema (typed or opened from a
        file) and the line that says what is wrong with it."""
        row = QHBoxLayout()
        self.json_check = QCheckBox("Reply as JSON")
        self.json_check.setToolTip(
            "Hold the answer to JSON while it is written: any JSON object, or one "
            "that matches the schema below. The answer's badge records it."
        )
        row.addWidget(self.json_check)
        row.addStretch(1)
        self.schema_button = QPushButton("Open schema…")
        self.schema_button.setToolTip("Read a JSON schema from a .json file")
        self.schema_button.clicked.connect(self._open_schema_dialog)
        row.addWidget(self.schema_button)
        box.addLayout(row)
        self.schema_edit = QPlainTextEdit()
        self.schema_edit.setPlaceholderText(
            'Optional JSON schema, e.g. {"type": "object", "properties": '
            '{"city": {"type": "string"}}}. Empty: any JSON object.'
        )
        self.schema_edit.setFont(
            QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        )
        self.schema_edit.setMaximumHeight(80)
        box.addWidget(self.schema_edit)
        self.json_error = QLabel()
        self.json_error.setObjectName("error")
        self.json_error.setWordWrap(True)
        self.json_error.hide()
        box.addWidget(self.json_error)
        self._schema_name = ""
        self._schema_file_text: str | None = None
        self._schema_timer = QTimer(self)
        self._schema_timer.setSingleShot(True)
        self._schema_timer.setInterval(SCHEMA_CHECK_MS)
        self._schema_timer.timeout.connect(self.check_reply_json)
        self.json_check.toggled.connect(self._on_json_changed)
        self.schema_edit.textChanged.connect(self._on_json_changed)
        self._on_json_changed()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Enter (or Ctrl+Enter) sends; Shift+Enter adds a line."""
        if (
            watched is self.input
            and event.type() == QEvent.Type.KeyPress
            and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        ):
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.input.insertPlainText("\n")
            else:
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
            self.send_button.setToolTip(self._ready_reason or "Send (Enter)")
        has_user = any(m.role == "user" for m in self.messages_widgets)
        self.regenerate_button.setEnabled(
            not self._busy and has_user and not self._ready_reason
        )
        self.clear_button.setEnabled(not self._busy and bool(self.messages_widgets))

    def generation_settings(self) -> GenerationSettings:
        """The sampling fields; raises SettingsError when one is invalid."""
        return GenerationSettings(
            **{n: fields.value(e) for n, e in self.sampling_fields.items()}
        )

    def set_generation_settings(self, gen: GenerationSettings) -> None:
        for name, editor in self.sampling_fields.items():
            fields.set_value(editor, getattr(gen, name))

    # -- reply as JSON --
    def reply_constraint(self) -> Constraint | None:
        """What the answer is held to: None unless "Reply as JSON" is on, else any
        JSON object, or JSON matching the schema in the box.

        Raises
        ------
        ConstraintError
            The schema is not JSON or cannot be enforced (also shown, on one
            line, under the box).
        """
        if not self.json_check.isChecked():
            self._show_json_error("")
            return None
        from core.generation.constrain import reply_constraint

        text = self.schema_edit.toPlainText().strip()
        try:
            constraint = reply_constraint(text or None, self._schema_name)
        except NibbleError as exc:
            self._show_json_error(json_error_text(exc))
            raise
        self._show_json_error("")
        return constraint

    def check_reply_json(self) -> str:
        """Check the schema now; the error line it shows ('' when all is well)."""
        try:
            self.reply_constraint()
        except NibbleError:
            pass
        return self.json_error.text() if not self.json_error.isHidden() else ""

    def load_schema_file(self, path: str | Path) -> bool:
        """Put the schema in `path` in the box (named after the file) and turn
        "Reply as JSON" on; False, with the error line, when it cannot be read."""
        path = Path(path)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_SCHEMA_BYTES + 1)
            if len(data) > MAX_SCHEMA_BYTES:
                raise ValueError(f"it is larger than {MAX_SCHEMA_BYTES} bytes")
            text = data.decode("utf-8")
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._show_json_error(
                f"Cannot read the JSON schema {path.name}: {why}; "
                "pick a UTF-8 .json file that holds the schema."
            )
            return False
        self.schema_edit.setPlainText(text)
        self._schema_name, self._schema_file_text = path.stem, text
        self.json_check.setChecked(True)
        self.check_reply_json()
        return True

    def _open_schema_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a JSON schema", "", "JSON schema (*.json);;All files (*)"
        )
        if path:
            self.load_schema_file(path)

    def _on_json_changed(self, *_args: Any) -> None:
        on = self.json_check.isChecked()
        self.schema_edit.setEnabled(on)
        if self.schema_edit.toPlainText() != self._schema_file_text:
            self._schema_name = ""  # typed: no longer the file's schema
        self._update_sampling_summary()
        if on:
            self._schema_timer.start()
        else:
            self._schema_timer.stop()
            self._show_json_error("")

    def _show_json_error(self, text: str) -> None:
        self.json_error.setText(text)
        self.json_error.setVisible(bool(text))

    def _update_sampling_summary(self, *_args: Any) -> None:
        try:
            gen = self.generation_settings()
        except NibbleError as exc:
            text = f"Sampling: {exc.message}"
        else:
            how = (
                "greedy"
                if not gen.do_sample
                else f"temperature {gen.temperature:g} · top-p {gen.top_p:g}"
                f" · top-k {gen.top_k}"
            )
            text = f"Sampling: {gen.max_new_tokens} tokens · {how}"
        json_check = getattr(self, "json_check", None)
        if json_check is not None and json_check.isChecked():
            schema = self.schema_edit.toPlainText().strip()
            text += " · JSON reply" + (" (schema)" if schema else "")
        self.sampling_toggle.setText(text)

    def _toggle_sampling(self, on: bool) -> None:
        self.sampling_box.setVisible(on)
        self.sampling_toggle.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow
        )

    # -- messages --
    def add_message(self, role: str, text: str = "") -> MessageWidget:
        widget = MessageWidget(role, text)
        self.empty_label.hide()
        self.undo_bar.hide()
        self.list_layout.insertWidget(self.list_layout.count() - 1, widget)
        self.messages_widgets.append(widget)
        self._update_buttons()
        self._scroll_to_end()
        return widget

    def add_notice(self, text: str) -> QLabel:
        """A line in the chat (not a message) saying what changed around it, e.g.
        that a server client switched the model; gone when the chat is cleared."""
        label = QLabel(text)
        label.setObjectName("hint")
        label.setWordWrap(True)
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.list_layout.insertWidget(self.list_layout.count() - 1, label)
        self.notices.append(label)
        self._scroll_to_end()
        return label

    def _drop_notices(self) -> None:
        for label in self.notices:
            label.setParent(None)
            label.deleteLater()
        self.notices.clear()

    def last_message(self, role: str) -> MessageWidget | None:
        """The last shown message of `role`, if any."""
        return next(
            (w for w in reversed(self.messages_widgets) if w.role == role), None
        )

    def _on_clear_clicked(self) -> None:
        if self.clear_starts_new:
            self.clear_requested.emit()
        else:
            self.clear()

    def clear(self) -> None:
        """Remove every message; Undo (under the empty chat) brings them back."""
        self._cleared = [
            (w.role, w.text, w.stats_label.text()) for w in self.messages_widgets
        ]
        for widget in self.messages_widgets:
            widget.setParent(None)
            widget.deleteLater()
        self.messages_widgets.clear()
        self._drop_notices()
        self.empty_label.show()
        self.undo_bar.setVisible(bool(self._cleared))
        self._update_buttons()

    def reset(self) -> None:
        """Remove every message with no Undo (another conversation is shown)."""
        self.clear()
        self._cleared = []
        self._undo = None
        self.undo_bar.hide()

    def offer_undo(self, undo: Callable[[], None]) -> None:
        """Show the Undo bar under the empty chat; Undo calls `undo` (e.g. reopen the
        conversation that Clear put aside)."""
        self._undo = undo
        self.undo_bar.show()

    def undo_clear(self) -> None:
        """Bring back what the last Clear removed."""
        undo, self._undo = self._undo, None
        if undo is not None:
            self.undo_bar.hide()
            undo()
            return
        cleared, self._cleared = self._cleared, []
        self.undo_bar.hide()
        for role, text, stats in cleared:
            self.add_message(role, text).set_stats(stats)

    def send(self) -> None:
        """Send what is in the input box (Enter)."""
        if self._busy or self._ready_reason:
            return
        text = self.input.toPlainText().strip()
        if not text:
            return
        self.input.clear()
        self._follow = True  # the user's own question always comes into view
        self.add_message("user", text)
        self.question_asked.emit(text)

    def regenerate(self) -> None:
        """Drop the last answer and ask again."""
        if self._busy or self._ready_reason:
            return
        self.drop_after_last_question()
        if self.messages_widgets:
            self.regenerate_requested.emit()

    def drop_last_question(self) -> None:
        """Take back a question that could not be sent: it returns to the input."""
        if self.messages_widgets and self.messages_widgets[-1].role == "user":
            widget = self.messages_widgets.pop()
            self.input.setPlainText(widget.text)
            widget.setParent(None)
            widget.deleteLater()
            self.empty_label.setVisible(not self.messages_widgets)
            self._update_buttons()

    def drop_after_last_question(self) -> None:
        """Stop showing the answers after the last question."""
        while self.messages_widgets and self.messages_widgets[-1].role != "user":
            widget = self.messages_widgets.pop()
            widget.setParent(None)
            widget.deleteLater()
        self._update_buttons()

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
            self._current.append(self._pending)
            self._pending = ""

    def set_waiting(self, text: str) -> None:
        """What the answer being written waits for ('' once it runs)."""
        if self._current is not None:
            self._current.set_waiting(text)

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
            stopped = error is None and stats_text.endswith("stopped")
            self._current.set_empty_text(
                "Stopped before any text." if stopped else "No answer."
            )
        self._current = None
        self._busy = False
        self._update_buttons()

    @property
    def answer_widget(self) -> MessageWidget | None:
        """The answer being written, if any."""
        return self._current

    def _on_scrolled(self, value: int) -> None:
        bar = self.scroll.verticalScrollBar()
        self._follow = value >= bar.maximum() - 4

    def _on_range_changed(self, _low: int, high: int) -> None:
        # The content grew (a message, a chunk): stay at the bottom if we were.
        if self._follow:
            self.scroll.verticalScrollBar().setValue(high)

    @property
    def following(self) -> bool:
        """Whether new text scrolls into view (the user is at the bottom)."""
        return self._follow

    def _scroll_to_end(self) -> None:
        if self._follow:
            self._to_end()

    def _to_end(self) -> None:
        bar = self.scroll.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _toggle_system(self, on: bool) -> None:
        self.system_edit.setVisible(on)
        self.system_toggle.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow
        )
