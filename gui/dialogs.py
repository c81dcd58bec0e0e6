"""Message boxes: errors as message + hint with the traceback behind Details."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QMessageBox, QWidget

from core import machine
from core.errors import NibbleError

logger = logging.getLogger(__name__)

README = Path(__file__).resolve().parent.parent / "README.md"


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


ABOUT_LIBRARIES = (
    "torch",
    "transformers",
    "bitsandbytes",
    "accelerate",
    "PySide6-Essentials",
    "pyqtgraph",
)
ABOUT_LINKS = (
    ("README", README.as_uri()),
    ("bitsandbytes docs", "https://huggingface.co/docs/bitsandbytes"),
    (
        "Transformers quantization docs",
        "https://huggingface.co/docs/transformers/quantization/bitsandbytes",
    ),
    ("Default model", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"),
)


def versions() -> dict[str, str]:
    """Nibble's version and those of the libraries it runs on (from metadata)."""
    found = machine.versions()
    return {
        name: found.get(name) or "not installed"
        for name in ("nibble", *ABOUT_LIBRARIES)
    }


def about_box(parent: QWidget) -> QMessageBox:
    """Help ▸ About: version, licence, library versions and links."""
    found = versions()
    libraries = "".join(
        f"<tr><td>{name}</td><td>&nbsp;{found[name]}</td></tr>"
        for name in ABOUT_LIBRARIES
    )
    links = " · ".join(f"<a href='{url}'>{text}</a>" for text, url in ABOUT_LINKS)
    box = QMessageBox(parent)
    box.setWindowTitle("About Nibble")
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(
        f"<b>Nibble {found['nibble']}</b><br>Run Hugging Face language models in "
        "4-bit and 8-bit with bitsandbytes.<br>Licence: Apache-2.0"
    )
    box.setInformativeText(f"<table>{libraries}</table><p>{links}</p>")
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    return box


def _settings() -> QSettings:
    from core.paths import config_dir

    return QSettings(str(config_dir() / "window.ini"), QSettings.Format.IniFormat)


def last_folder() -> Path:
    """Where file dialogs open: the last folder used, else the home folder."""
    saved = _settings().value("last_folder")
    folder = Path(str(saved)) if saved else Path.home()
    return folder if folder.is_dir() else Path.home()


def remember_folder(folder: str | Path) -> None:
    """Make `folder` the one the next file dialog opens in."""
    settings = _settings()
    settings.setValue("last_folder", str(folder))
    settings.sync()


def say_copied(button: Any, ms: int = 1500) -> None:
    """A Copy button says "Copied" for a moment."""
    from PySide6.QtCore import QTimer

    text = button.text()
    if text == "Copied":
        return
    button.setText("Copied")
    QTimer.singleShot(ms, button, lambda: button.setText(text))
