"""Widgets made from a setting's metadata (core.settings.OptionSpec), and the small
behaviours every settings widget shares: no wheel changes unless focused, a red
highlight for an invalid field.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from core.settings import OptionSpec

logger = logging.getLogger(__name__)

INVALID = "invalid"  # the dynamic property the style sheet paints red


class _WheelGuard(QObject):
    """Lets the wheel scroll the panel past combos and spin boxes that have no focus."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            event.type() == QEvent.Type.Wheel
            and isinstance(watched, QWidget)
            and not watched.hasFocus()
        ):
            event.ignore()  # the scroll area behind it gets the wheel instead
            return True
        return super().eventFilter(watched, event)


_guard: _WheelGuard | None = None


def guard_wheel(*widgets: QWidget) -> None:
    """Combos and spin boxes take the wheel only once clicked or tabbed into."""
    global _guard
    if _guard is None:
        _guard = _WheelGuard()
    for widget in widgets:
        widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        widget.installEventFilter(_guard)


def tooltip(spec: OptionSpec, extra: str = "") -> str:
    text = f"<b>{spec.name}</b> ({spec.flag})<br>{spec.description}"
    return text + (f"<br><i>{extra}</i>" if extra else "")


class OptionalIntEdit(QLineEdit):
    """A number or nothing (the random seed)."""

    changed = Signal()

    def __init__(self, placeholder: str = "") -> None:
        super().__init__()
        self.setPlaceholderText(placeholder)
        self.textChanged.connect(lambda _t: self.changed.emit())


def make_editor(spec: OptionSpec) -> QWidget:
    """The widget for `spec`, with its range, choices and tooltip."""
    editor: QWidget
    if spec.kind == "bool":
        editor = QCheckBox(spec.title)
    elif spec.kind == "int":
        editor = QSpinBox()
        editor.setRange(int(spec.low), int(spec.high))
        editor.setSingleStep(int(spec.step))
    elif spec.kind == "float":
        editor = QDoubleSpinBox()
        editor.setRange(spec.low, spec.high)
        editor.setDecimals(2)
        editor.setSingleStep(spec.step)
    elif spec.kind == "choice":
        editor = QComboBox()
        editor.setEditable(spec.editable)
        editor.addItems(list(spec.choices))
    elif spec.kind == "optional_int":
        editor = OptionalIntEdit(spec.placeholder)
    else:
        editor = QLineEdit()
        editor.setPlaceholderText(spec.placeholder)
    if isinstance(editor, (QComboBox, QAbstractSpinBox)):
        guard_wheel(editor)
    editor.setObjectName(spec.name)
    editor.setToolTip(tooltip(spec))
    set_value(editor, spec.default)
    return editor


def make_label(spec: OptionSpec, editor: QWidget) -> QLabel:
    label = QLabel(spec.title)
    label.setToolTip(tooltip(spec))
    label.setBuddy(editor)
    return label


def changed_signal(editor: QWidget) -> Any:
    """The signal an editor emits on every edit."""
    if isinstance(editor, QCheckBox):
        return editor.toggled
    if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        return editor.valueChanged
    if isinstance(editor, QComboBox):
        return editor.currentTextChanged
    if isinstance(editor, OptionalIntEdit):
        return editor.changed
    return editor.textChanged


def value(editor: QWidget) -> Any:
    """What the editor holds, as the field's type (text for text fields)."""
    if isinstance(editor, QCheckBox):
        return editor.isChecked()
    if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        return editor.value()
    if isinstance(editor, QComboBox):
        return editor.currentText().strip()
    if isinstance(editor, OptionalIntEdit):
        return editor.text().strip() or None
    if isinstance(editor, QLineEdit):
        return editor.text().strip()
    raise TypeError(type(editor))


def set_value(editor: QWidget, new: Any) -> None:
    if isinstance(editor, QCheckBox):
        editor.setChecked(bool(new))
    elif isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        editor.setValue(new)
    elif isinstance(editor, QComboBox):
        editor.setCurrentText(str(new))
    elif isinstance(editor, QLineEdit):
        if isinstance(new, dict):
            new = ",".join(f"{k}={v}" for k, v in new.items())
        editor.setText("" if new is None else str(new))


def mark_invalid(widget: QWidget, invalid: bool) -> None:
    """Paint `widget` (an editor or its label) red while it holds the problem."""
    if bool(widget.property(INVALID)) == invalid:
        return
    widget.setProperty(INVALID, invalid)
    widget.style().unpolish(widget)
    widget.style().polish(widget)
