"""The "Get a model…" dialog against a local hub: search, plan, download, pause, close."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox

from core.store import session as session_mod
from gui.hub_dialog import HubDialog
from gui.main_window import MainWindow
from tests.fake_hub import CHUNK, REPO, FakeHub


@pytest.fixture
def window(qtbot, config_dir: Path, fake: FakeHub) -> MainWindow:
    win = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(win)
    win.picker.set_cache([])
    return win


def _plan(qtbot, dialog: HubDialog) -> None:
    dialog.search_edit.setText("tiny")
    dialog.search_button.click()
    qtbot.waitUntil(lambda: dialog.results.rowCount() == 1, timeout=30_000)
    assert dialog.results.item(0, 0).text() == REPO
    assert dialog.results.item(0, 2).text() == "500"
    assert dialog.results.item(0, 1).text().endswith("F32")
    dialog.results.selectRow(0)
    qtbot.waitUntil(lambda: dialog.plan is not None, timeout=120_000)


def test_search_plan_download_then_the_picker_lists_and_loads_it(
    qtbot, window: MainWindow, fake: FakeHub
) -> None:
    window.picker.get_button.click()
    dialog = window.hub_dialog
    assert dialog.isVisible()
    _plan(qtbot, dialog)

    files = [dialog.files.item(r, 0).text() for r in range(dialog.files.rowCount())]
    assert "model.safetensors" in files and "model.gguf" not in files
    assert "to fetch" in dialog.disk_label.text()
    presets = [
        dialog.estimate.item(r, 0).text() for r in range(dialog.estimate.rowCount())
    ]
    assert {"fp32", "nf4", "int8"} <= set(presets)
    assert "fits" in dialog.estimate.item(0, 2).text()
    assert "Recommended:" in dialog.verdict_label.text()
    assert fake.served["model.safetensors"] == 0
    assert dialog.download_button.isEnabled() and not dialog.load_button.isEnabled()

    with qtbot.waitSignal(dialog.downloaded, timeout=120_000) as done:
        dialog.download_button.click()
    ref = done.args[0]
    assert ref.name == REPO and ref.kind == "cache"
    assert dialog.progress.value() == 1000
    qtbot.waitUntil(lambda: not dialog.downloading)
    assert REPO in [r.name for r in window.picker.refs() if r.kind == "cache"]
    assert window.selected_ref is not None and window.selected_ref.path == ref.path

    loads = []
    window.picker.picked.disconnect()
    window.picker.picked.connect(loads.append)
    dialog.load_button.click()
    assert loads == [ref]


def test_pause_keeps_the_partial_and_resume_continues(
    qtbot, window: MainWindow, fake: FakeHub
) -> None:
    dialog = window.hub_dialog
    _plan(qtbot, dialog)
    fake.delay_s = 0.01
    dialog.download_button.click()
    qtbot.waitUntil(lambda: dialog.progress.value() > 0, timeout=60_000)
    qtbot.waitUntil(lambda: "model.safetensors" in dialog.status.text(), timeout=60_000)
    dialog.close()  # hides it: the download goes on behind the window's tabs
    window.tabs.setCurrentIndex(window.tabs.count() - 1)
    assert dialog.downloading and not dialog.isVisible()
    window.picker.get_button.click()
    assert dialog.isVisible() and dialog.downloading
    dialog.pause_button.click()
    qtbot.waitUntil(lambda: not dialog.downloading, timeout=30_000)
    assert dialog.status.text().startswith("Paused:")
    assert dialog.resume_button.isEnabled() and not dialog.download_button.isEnabled()
    kept = dialog.plan.partial_bytes
    assert kept >= CHUNK

    fake.delay_s = 0
    with qtbot.waitSignal(dialog.downloaded, timeout=120_000):
        dialog.resume_button.click()
    assert fake.ranges("model.safetensors")[-1] == f"bytes={kept}-"
    qtbot.waitUntil(lambda: not dialog.downloading)


def test_cancel_removes_the_partial(qtbot, window: MainWindow, fake: FakeHub) -> None:
    dialog = window.hub_dialog
    _plan(qtbot, dialog)
    fake.delay_s = 0.01
    dialog.download_button.click()
    qtbot.waitUntil(lambda: "model.safetensors" in dialog.status.text(), timeout=60_000)
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: not dialog.downloading, timeout=30_000)
    assert dialog.status.text().startswith("Cancelled;")
    assert dialog.plan.partial_bytes == 0
    assert dialog.download_button.isEnabled()


def test_closing_the_window_asks_before_stopping_a_download(
    qtbot, window: MainWindow, fake: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialog = window.hub_dialog
    window.show()
    _plan(qtbot, dialog)
    fake.delay_s = 0.02
    dialog.download_button.click()
    qtbot.waitUntil(lambda: dialog.progress.value() > 0, timeout=60_000)
    answers = [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]
    asked = []

    def question(*args):
        asked.append(args[2])
        return answers.pop(0)

    monkeypatch.setattr(QMessageBox, "question", question)
    window.close()
    assert window.isVisible() and dialog.downloading  # "No": it keeps going
    window.close()
    assert not window.isVisible()
    assert "is still downloading" in asked[0] and len(asked) == 2
    qtbot.waitUntil(lambda: not dialog.downloading, timeout=10_000)


def test_errors_show_in_the_dialog(qtbot, fake: FakeHub, repo_dir: Path) -> None:
    fake.add_repo("nibble-test/gated", repo_dir, gated="manual")
    from gui.controller import Controller

    dialog = HubDialog(Controller())
    qtbot.addWidget(dialog)
    dialog.show_plan_for("nibble-test/gated")
    qtbot.waitUntil(lambda: "is gated" in dialog.status.text(), timeout=60_000)
    assert "hf auth login" in dialog.status.text()
    assert not dialog.download_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.plan_worker is None, timeout=10_000)


def test_a_slow_search_can_be_cancelled(qtbot, fake: FakeHub) -> None:
    """With a hub that does not answer, the search button cancels the search."""
    from gui.controller import Controller

    fake.search_stalls = True
    dialog = HubDialog(Controller())
    qtbot.addWidget(dialog)
    dialog.search_edit.setText("tiny")
    dialog.search()
    assert dialog.search_button.text() == "Cancel search"
    assert dialog.search_button.isEnabled()
    dialog.search_button.click()
    assert dialog.search_button.text() == "Search"
    assert dialog.status.text() == "Search cancelled."
    assert dialog.search_worker is None
    fake.released.set()  # the hub answers late: the answer is dropped
    from tests.gui.helpers import wait_threads

    assert wait_threads(10.0) == []
    assert dialog.results.rowCount() == 0
    assert dialog.status.text() == "Search cancelled."
