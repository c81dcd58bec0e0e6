"""The dark theme: checked boxes and radio buttons stand out from unchecked ones."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QCheckBox, QRadioButton

from gui import app as app_mod


@pytest.fixture
def dark(qapp, monkeypatch):
    before_palette, before_style = qapp.palette(), qapp.styleSheet()
    monkeypatch.setenv("NIBBLE_THEME", "dark")
    app_mod.apply_theme(qapp)
    yield qapp
    qapp.setPalette(before_palette)
    qapp.setStyleSheet(before_style)


def _indicator_brightness(widget) -> float:
    QApplication.processEvents()
    image: QImage = widget.grab().toImage()
    size = min(image.height(), 16)
    values = [
        image.pixelColor(x, y).lightness()
        for x in range(size)
        for y in range(image.height() // 2 - size // 2, image.height() // 2 + size // 2)
    ]
    return sum(values) / len(values)


@pytest.mark.parametrize("cls", [QCheckBox, QRadioButton])
def test_checked_indicators_are_clearly_visible_on_dark(dark, qtbot, cls) -> None:
    off, on = cls("off"), cls("on")
    on.setChecked(True)
    for widget in (off, on):
        qtbot.addWidget(widget)
        widget.show()
    assert "QRadioButton::indicator:checked" in dark.styleSheet()
    # The checked indicator is much brighter than the unchecked one.
    assert _indicator_brightness(on) - _indicator_brightness(off) > 25
