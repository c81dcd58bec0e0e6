"""About, file dialogs that remember their folder, and Copy buttons that say so."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QPushButton, QWidget

from gui import dialogs


def test_about_names_version_licence_libraries_and_links(qtbot) -> None:
    parent = QWidget()
    qtbot.addWidget(parent)
    box = dialogs.about_box(parent)
    found = dialogs.versions()
    assert f"Nibble {found['nibble']}" in box.text()
    assert "Apache-2.0" in box.text()
    for name in ("torch", "transformers", "bitsandbytes", "PySide6-Essentials"):
        assert name in box.informativeText()
        assert found[name] in box.informativeText()
    assert "huggingface.co/docs/bitsandbytes" in box.informativeText()
    assert "README" in box.informativeText()
    box.close()


def test_file_dialogs_open_in_the_last_folder(config_dir, tmp_path: Path) -> None:
    assert dialogs.last_folder() == Path.home()
    dialogs.remember_folder(tmp_path)
    assert dialogs.last_folder() == tmp_path
    dialogs.remember_folder(tmp_path / "gone")
    assert dialogs.last_folder() == Path.home()  # a folder that vanished


def test_copy_buttons_say_copied(qtbot) -> None:
    button = QPushButton("Copy as Python")
    qtbot.addWidget(button)
    dialogs.say_copied(button, ms=50)
    assert button.text() == "Copied"
    qtbot.waitUntil(lambda: button.text() == "Copy as Python", timeout=2000)
