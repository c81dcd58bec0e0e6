"""The main flow works without a mouse: mnemonics, F10, Tab stops, focus after a load."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from core.model import catalog
from core.store import session as session_mod
from gui.main_window import MainWindow
from tests.gui.helpers import wait_threads


def _window(qtbot) -> MainWindow:  # type: ignore[no-untyped-def]
    window = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5_000)
    return window


def test_every_menu_has_its_own_mnemonic_and_f10_opens_the_bar(
    qtbot,  # type: ignore[no-untyped-def]
    config_dir: Path,
) -> None:
    window = _window(qtbot)
    titles = [a.text() for a in window.menuBar().actions()]
    assert titles == ["&File", "&Model", "&View", "&Help"]
    for menu in (
        window.file_menu,
        window.model_menu,
        window.view_menu,
        window.help_menu,
    ):
        texts = [a.text() for a in menu.actions() if not a.isSeparator()]
        assert all("&" in t for t in texts), texts
        keys = [t[t.index("&") + 1].lower() for t in texts]
        assert len(set(keys)) == len(keys), texts
    QTest.keyClick(window, Qt.Key.Key_F10)
    qtbot.waitUntil(
        lambda: window.menuBar().activeAction() is window.file_menu.menuAction(),
        timeout=5_000,
    )
    QTest.keyClick(window.menuBar(), Qt.Key.Key_Escape)
    window.close()


def test_the_estimate_table_is_one_tab_stop(
    qtbot,  # type: ignore[no-untyped-def]
    config_dir: Path,
) -> None:
    window = _window(qtbot)
    grid = window.estimate_view.grid
    grid.setRowCount(3)
    grid.setFocus(Qt.FocusReason.TabFocusReason)
    qtbot.waitUntil(grid.hasFocus, timeout=5_000)
    QTest.keyClick(grid, Qt.Key.Key_Tab)
    assert not grid.hasFocus()
    grid.setFocus(Qt.FocusReason.TabFocusReason)
    QTest.keyClick(grid, Qt.Key.Key_Backtab)
    assert not grid.hasFocus()
    window.close()


def test_after_a_load_typing_goes_to_the_message_box(
    qtbot,  # type: ignore[no-untyped-def]
    config_dir: Path,
    tiny_dir: Path,
) -> None:
    window = _window(qtbot)
    window.picker.setFocus()
    ref = catalog.resolve(str(tiny_dir))
    window.controller.import_libraries()
    qtbot.waitUntil(lambda: window.controller.ready, timeout=120_000)
    with qtbot.waitSignal(window.controller.model_loaded, timeout=120_000):
        window.request_load(ref)
    qtbot.waitUntil(lambda: window.chat.input.hasFocus(), timeout=5_000)
    assert QApplication.focusWidget() is window.chat.input
    window.close()
    assert wait_threads(5.0) == []
