"""Message boxes: errors as message + hint with the traceback behind Details."""

from __future__ import annotations

import logging
import traceback

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

from core.errors import NibbleError

logger = logging.getLogger(__name__)


def as_nibble_error(exc: BaseException) -> NibbleError:
    """`exc` itself when it is a NibbleError, else one wrapping its first line."""
    if isinstance(exc, NibbleError):
        return exc
    return NibbleError(f"{type(exc).__name__}: {exc}", "see Details for the traceback")


def error_box(parent: QWidget, exc: BaseException, title: str) -> QMessageBox:
    """Open (without blocking) a warning with message, hint and Details."""
    error = as_nibble_error(exc)
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(error.message)
    if error.hint:
        box.setInformativeText(f"Hint: {error.hint}")
    if exc.__traceback__ is not None:
        box.setDetailedText("".join(traceback.format_exception(exc)))
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


def notice_box(parent: QWidget, text: str) -> QMessageBox:
    """Open (without blocking) an information box."""
    box = QMessageBox(QMessageBox.Icon.Information, "Nibble", text, parent=parent)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box
