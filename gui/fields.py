"""Widgets made from a setting's Spec (core.settings.schema), and the small behaviours
every settings widget shares: no wheel changes unless focused, a red highlight for an
invalid field. `make_editor` is the one factory of the settings panel and the chat's
sampling fields.
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
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.settings import Spec

logger = logging.getLogger(__name__)

INVALID = "invalid"  # the dynamic property the style sheet paints red
# What "default" means where a choice may be None (the library picks).
LIBRARY_DEFAULTS = {
    "bnb_4bit_compute_dtype": "float32",
    "bnb_4bit_quant_storage": "uint8",
}
DECIMALS = 2


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


def tooltip(spec: Spec, extra: str = "") -> str:
    text = f"<b>{spec.name}</b> ({spec.flag})<br>{spec.description}"
    return text + (f"<br><i>{extra}</i>" if extra else "")


class OptionalIntEdit(QLineEdit):
    """A number or nothing (the random seed)."""

    changed = Signal()

    def __init__(self, placeholder: str = "") -> None:
        super().__init__()
        self.setPlaceholderText(placeholder)
        self.textChanged.connect(lambda _t: self.changed.emit())


class ModuleListEdit(QWidget):
    """An editable list of module names (llm_int8_skip_modules)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setMaximumHeight(72)
        self.list.itemChanged.connect(lambda _item: self.changed.emit())
        self.add_button = QToolButton(text="+")
        self.add_button.setToolTip("Add a module name")
        self.remove_button = QToolButton(text="−")
        self.remove_button.setToolTip("Remove the selected module name")
        self.add_button.clicked.connect(self._add)
        self.remove_button.clicked.connect(self._remove)
        buttons = QVBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)

    def _new_item(self, text: str) -> QListWidgetItem:
        item = QListWidgetItem(text)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        return item

    def _add(self) -> None:
        item = self._new_item("lm_head")
        self.list.addItem(item)
        self.list.setCurrentItem(item)
        self.list.editItem(item)
        self.changed.emit()

    def _remove(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self.changed.emit()

    def value(self) -> list[str] | None:
        names = [self.list.item(i).text().strip() for i in range(self.list.count())]
        names = [n for n in names if n]
        return names or None

    def set_value(self, names: list[str] | None) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for name in names or []:
            self.list.addItem(self._new_item(name))
        self.list.blockSignals(False)


class ReasonLabel(QLabel):
    """The line under a field that says what is wrong with it, wrapped to the form's
    width: its minimum height follows its text, so a form never clips it."""

    def __init__(self) -> None:
        super().__init__()
        self.setWordWrap(True)
        self.setObjectName("error")

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self._fit()

    def setText(self, text: str) -> None:
        super().setText(text)
        self._fit()

    def _fit(self) -> None:
        height = self.heightForWidth(self.width()) if self.text() else 0
        if height != self.minimumHeight():
            self.setMinimumHeight(max(height, 0))


def make_editor(spec: Spec) -> QWidget:
    """The widget for `spec`, with its range, choices and tooltip."""
    editor: QWidget
    if spec.kind == "bool":
        editor = QCheckBox(spec.title)
    elif spec.kind == "int":
        editor = QSpinBox()
        low = int(spec.low) + int(spec.above) if spec.low is not None else -(2**31)
        high = int(spec.high) if spec.high is not None else 2**31 - 1
        editor.setRange(low, high)
        editor.setSingleStep(int(spec.step))
    elif spec.kind == "float":
        editor = QDoubleSpinBox()
        editor.setDecimals(DECIMALS)
        low = spec.low if spec.low is not None else -1e9
        if spec.above:
            low += 10**-DECIMALS
        editor.setRange(low, spec.high if spec.high is not None else 1e9)
        editor.setSingleStep(spec.step)
    elif spec.kind == "choice":
        editor = QComboBox()
        editor.setEditable(spec.editable)
        for choice in spec.choices:
            if choice is None:
                shown = LIBRARY_DEFAULTS.get(spec.name, "library")
                editor.addItem(f"default ({shown})", None)
            else:
                editor.addItem(str(choice), choice)
    elif spec.kind == "optional_int":
        editor = OptionalIntEdit(spec.placeholder)
    elif spec.kind == "list":
        editor = ModuleListEdit()
    else:
        editor = QLineEdit()
        editor.setPlaceholderText(spec.placeholder)
    if isinstance(editor, (QComboBox, QAbstractSpinBox)):
        guard_wheel(editor)
    editor.setObjectName(spec.name)
    editor.setToolTip(tooltip(spec))
    set_value(editor, spec.default)
    return editor


def make_label(spec: Spec, editor: QWidget) -> QLabel:
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
    if isinstance(editor, (OptionalIntEdit, ModuleListEdit)):
        return editor.changed
    return editor.textChanged


def value(editor: QWidget) -> Any:
    """What the editor holds, as the field's type (text for text fields)."""
    if isinstance(editor, QCheckBox):
        return editor.isChecked()
    if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        return editor.value()
    if isinstance(editor, QComboBox):
        if editor.isEditable():
            return editor.currentText().strip()
        return editor.currentData()
    if isinstance(editor, ModuleListEdit):
        return editor.value()
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
        index = editor.findData(new)
        if index >= 0:
            editor.setCurrentIndex(index)
        elif editor.isEditable():
            editor.setCurrentText(str(new))
        else:
            editor.setCurrentIndex(0)
    elif isinstance(editor, ModuleListEdit):
        editor.set_value(new)
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
