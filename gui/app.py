"""The QApplication: theme, icon, the window first, heavy imports after it paints."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
ICON_SVG = RESOURCES / "nibble.svg"
ICON_PNG = RESOURCES / "nibble.png"

STYLE = """
QLabel#heading { font-weight: bold; padding: 2px 0 4px 0; }
QLabel#hint { color: palette(placeholder-text); }
QLabel#error { color: #d9534f; font-weight: bold; padding: 4px; }
QLabel#role { font-weight: bold; }
QFrame#message_user { background: palette(alternate-base); border-radius: 8px; }
QFrame#message_assistant { background: palette(base); border-radius: 8px; }
QPushButton#primary { font-weight: bold; min-width: 90px; padding: 5px 14px; }
QGroupBox { font-weight: bold; margin-top: 6px; }
QGroupBox QLabel, QGroupBox QCheckBox, QGroupBox QRadioButton { font-weight: normal; }
QGroupBox QComboBox, QGroupBox QLineEdit, QGroupBox QListWidget { font-weight: normal; }
QGroupBox QPlainTextEdit, QGroupBox QPushButton, QGroupBox QToolButton,
QGroupBox QDoubleSpinBox, QGroupBox QSpinBox { font-weight: normal; }
QComboBox[invalid="true"], QLineEdit[invalid="true"], QListWidget[invalid="true"],
QDoubleSpinBox[invalid="true"], QSpinBox[invalid="true"] {
    border: 1px solid #d9534f; border-radius: 3px; }
QLabel[invalid="true"], QCheckBox[invalid="true"] { color: #d9534f; }
"""


# Fusion draws checked boxes and radio buttons in dark grey on the dark palette:
# on dark, indicators get a light outline and a filled, marked checked state.
DARK_INDICATORS = """
QCheckBox::indicator, QRadioButton::indicator, QGroupBox::indicator {
    width: 13px; height: 13px; border: 1px solid #9aa0a8; background: #1e1f22; }
QRadioButton::indicator { border-radius: 7px; }
QCheckBox::indicator, QGroupBox::indicator { border-radius: 3px; }
QCheckBox::indicator:checked, QGroupBox::indicator:checked {
    background: #2f8196; border-color: #cfeff6; image: url(CHECK); }
QRadioButton::indicator:checked { border-color: #cfeff6; background: qradialgradient(
    cx: 0.5, cy: 0.5, radius: 0.5, fx: 0.5, fy: 0.5,
    stop: 0 #ffffff, stop: 0.42 #ffffff, stop: 0.5 #2f8196, stop: 1 #2f8196); }
QCheckBox::indicator:disabled, QRadioButton::indicator:disabled { border-color: #5a5e64; }
QCheckBox::indicator:checked:disabled { background: #3e5a61; }
QRadioButton::indicator:checked:disabled { border-color: #5a5e64; }
"""
CHECK_SVG = RESOURCES / "check-dark.svg"


def icon() -> QIcon:
    """Nibble's icon (the SVG where Qt can render it, the PNG otherwise)."""
    result = QIcon()
    for path in (ICON_SVG, ICON_PNG):
        if path.is_file():
            result.addFile(str(path))
    return result


def dark_palette() -> QPalette:
    """A dark Fusion palette (used when the system asks for dark, or NIBBLE_THEME)."""
    p = QPalette()
    base, window, text = QColor(30, 31, 34), QColor(43, 45, 48), QColor(223, 225, 229)
    roles = {
        QPalette.ColorRole.Window: window,
        QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base,
        QPalette.ColorRole.AlternateBase: QColor(50, 53, 58),
        QPalette.ColorRole.ToolTipBase: window,
        QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: QColor(53, 56, 60),
        QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.BrightText: QColor(255, 90, 90),
        QPalette.ColorRole.Highlight: QColor(47, 129, 150),
        QPalette.ColorRole.HighlightedText: QColor(255, 255, 255),
        QPalette.ColorRole.Link: QColor(86, 182, 194),
        QPalette.ColorRole.PlaceholderText: QColor(140, 145, 152),
        QPalette.ColorRole.Mid: QColor(70, 73, 78),
    }
    for role, color in roles.items():
        p.setColor(role, color)
    for role in (
        QPalette.ColorRole.WindowText,
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
    ):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(110, 114, 120))
    return p


def apply_theme(app: QApplication) -> None:
    """Fusion everywhere; dark when the system (or NIBBLE_THEME=dark) asks for it."""
    app.setStyle("Fusion")
    theme = os.environ.get("NIBBLE_THEME", "system").lower()
    scheme = QGuiApplication.styleHints().colorScheme()
    style = STYLE
    if theme == "dark" or (theme == "system" and scheme == Qt.ColorScheme.Dark):
        app.setPalette(dark_palette())
        style += DARK_INDICATORS.replace("CHECK", CHECK_SVG.as_posix())
    elif theme == "light":
        app.setPalette(app.style().standardPalette())
    app.setStyleSheet(style)


def make_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication with Nibble's name, icon and theme."""
    app = QApplication.instance() or QApplication(["nibble", *(argv or [])])
    app.setApplicationName("Nibble")
    app.setOrganizationName("Nibble")
    app.setDesktopFileName("nibble")
    app.setWindowIcon(icon())
    apply_theme(app)
    return app


def close_on_signals(window: Any) -> Callable[[], None]:
    """Let Ctrl+C and SIGTERM close `window` as its close button does.

    Python runs a signal's handler only when the interpreter gets control, which
    Qt's event loop never gives it: Ctrl+C did nothing, and SIGTERM killed the
    process before the session was saved. The signal now also writes to a socket
    that Qt watches, which brings the interpreter in. Returns how to undo it.
    """
    import signal
    import socket

    from PySide6.QtCore import QSocketNotifier, QTimer

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read)

    def drain() -> None:
        with contextlib.suppress(OSError):
            reader.recv(64)

    notifier.activated.connect(drain)

    def handle(signum: int, _frame: Any) -> None:
        QTimer.singleShot(0, lambda: window.close_for_signal(signum))

    names = [signal.SIGINT, signal.SIGTERM]
    previous = {n: signal.signal(n, handle) for n in names}
    old_fd = signal.set_wakeup_fd(writer.fileno())

    def undo() -> None:
        signal.set_wakeup_fd(old_fd)
        for n, handler in previous.items():
            signal.signal(n, handler)
        notifier.setEnabled(False)
        reader.close()
        writer.close()

    # Kept with the window: a collected socket would free its descriptor for reuse.
    window._signal_wakeup = (reader, writer, notifier, undo)
    return undo


def run_app(argv: list[str] | None = None) -> int:
    """Open the window on the last session (or the default model) and run."""
    logging.basicConfig(
        level=logging.INFO if "--verbose" in (argv or []) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    app = make_app(argv)
    from core.store import calibration
    from core.store.session import load_session

    calibration.install()  # every load is recorded beside its estimate
    from gui import workers
    from gui.main_window import MainWindow

    session, notice = load_session()
    window = MainWindow(session, notice)
    close_on_signals(window)
    window.show()
    code = app.exec()
    if window.closed_by_signal:  # as a shell reports a process a signal ended
        code = 128 + window.closed_by_signal
    # Everything is saved by now (session, geometry, the history, a stopped answer).
    # Leave without the interpreter's shutdown: tearing down torch and the threads
    # told to stop (the library import, a load) took seconds after the window went.
    if workers.running_threads():
        logger.info("exiting with work still running")
    logging.shutdown()
    from core import interrupt

    interrupt.exit_now(code)
    return code
