"""Nothing in the window is cut at 1024x700, 1366x768 and 1920x1080: the model list's
titles, the Presets button, the load step (it wraps), the estimate table (every row,
only whole columns)."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QFontMetrics

from core.settings import LoadOptions, preset
from tests.gui.test_estimate_view import TINY

SIZES = [(1024, 700), (1366, 768), (1920, 1080)]
IDS = [f"{w}x{h}" for w, h in SIZES]


@pytest.fixture(scope="module")
def estimate_table():
    from core.model import estimate

    return estimate.table(
        TINY, preset("nf4").quant, LoadOptions(device_map="cpu"), 4096
    )


@pytest.fixture
def window(qtbot, config_dir):
    from core.store import session as session_mod
    from gui.main_window import MainWindow

    made = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(made)
    made.show()
    qtbot.waitExposed(made)
    # The conversation list comes after the first paint and fits the window to the
    # screen: the sizes below are set after it.
    qtbot.waitUntil(lambda: made.history is not None, timeout=10_000)
    qtbot.wait(50)
    return made


def show_at(qtbot, window, size: tuple[int, int]) -> None:
    window.resize(*size)
    # The splitters have shared out the new width (margins and handles aside).
    qtbot.waitUntil(
        lambda: abs(sum(window.splitter.sizes()) - size[0]) < 40, timeout=5_000
    )
    qtbot.wait(50)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_the_model_list_titles_and_presets_are_whole(qtbot, window, size) -> None:
    """ "Hugging Face ca…", "No causal LMs in the c…" and "Presets" were cut at 1024."""
    window.picker.set_cache([])
    show_at(qtbot, window, size)
    tree = window.picker.tree
    from gui.model_picker import REF_ROLE

    checked = []
    for section in window.picker.sections.values():
        children = [section.child(i) for i in range(section.childCount())]
        for item in (section, *children):
            if item.data(0, REF_ROLE) is not None:
                continue  # a model's name may lose its middle; its tooltip has it
            room = tree.visualItemRect(item).width()
            needed = QFontMetrics(item.font(0)).horizontalAdvance(item.text(0))
            assert needed + 8 <= room, (item.text(0), needed, room)
            checked.append(item.text(0))
    assert "Hugging Face cache" in checked and "No causal LMs found" in checked
    button = window.settings_panel.presets_button
    assert button.isVisible()
    assert button.width() >= button.sizeHint().width()


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_the_load_step_wraps_instead_of_being_cut(qtbot, window, size) -> None:
    show_at(qtbot, window, size)
    bar = window.load_bar
    bar.begin("Loading", "Loading SmolLM2-135M-Instruct (4-bit nf4)…")
    bar.report(128, 272, "Loading weights of a model with a rather long step name")
    qtbot.wait(50)
    assert not bar.progress.isTextVisible()  # no text drawn over the bar to be cut
    label = bar.step_label
    assert (
        label.text().startswith("Loading weights of a model")
        and "128/272" in label.text()
    )
    assert label.wordWrap()
    assert label.height() >= label.heightForWidth(label.width())
    assert label.width() <= bar.width()
    bar.end("done")
    assert not label.isVisible()


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_the_estimate_shows_every_row_and_only_whole_columns(
    qtbot, window, size, estimate_table
) -> None:
    """The table showed about 3 rows and cut the KV cache and Overhead columns,
    even at 1920."""
    view = window.estimate_view
    show_at(qtbot, window, size)
    view._on_table(estimate_table)
    # After a load, two more lines: they must not push the table under its labels.
    view.actual_label.setText(
        "<b>Estimated vs actual</b> (nf4): actual 165.1 MiB · estimated 165.1 MiB "
        "(exact)"
    )
    view.actual_label.show()
    view.estimated.emit(estimate_table)
    qtbot.waitUntil(
        lambda: view.height() >= view.heightForWidth(view.width()), timeout=5_000
    )
    qtbot.wait(50)
    grid = view.grid
    assert grid.rowCount() == 8
    rows = sum(grid.rowHeight(r) for r in range(grid.rowCount()))
    assert grid.viewport().height() >= rows  # every row shows
    assert grid.verticalScrollBar().maximum() == 0
    assert grid.horizontalScrollBar().maximum() == 0  # no column is cut
    shown = [c for c in range(grid.columnCount()) if not grid.isColumnHidden(c)]
    for column in shown:
        assert grid.columnWidth(column) >= grid.sizeHintForColumn(column)
    assert not {"Preset", "Verdict", "Total"} & set(view.hidden_columns)
    if size[0] >= 1920:
        assert view.hidden_columns == []  # room for the whole table
    # Hidden numbers stay in each row's tooltip.
    tip = grid.item(1, 0).toolTip()
    assert "+ KV cache " in tip and "+ overhead " in tip and "load peak " in tip
    recommended = view.recommended
    assert recommended.geometry().top() >= grid.geometry().bottom()


def test_the_monitor_status_line_wraps_in_a_narrow_tab(qtbot) -> None:
    """ "Every 1 s · 277 samples · last 10 mi" was cut at the tab's right edge."""
    from gui.monitor_view import MonitorView

    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.resize(460, 600)
    view.show()
    qtbot.waitExposed(view)
    view.status_label.setText("Every 1 s · 277 samples · last 10 min")
    qtbot.wait(50)
    label = view.status_label
    assert label.wordWrap()
    assert label.geometry().right() <= view.width()
    assert label.height() >= label.heightForWidth(label.width())
