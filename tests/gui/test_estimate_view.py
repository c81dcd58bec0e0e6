"""The estimate table in the window: rows, highlight, refresh off the UI thread."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PySide6.QtGui import QFont

from core.model import catalog, loader
from core.settings import LoadOptions, QuantSettings, preset
from gui import workers
from gui.estimate_view import COLUMNS, EstimateView

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "_name_or_path": "tiny-llama",
}


def _view(qtbot, controller) -> EstimateView:
    view = EstimateView(controller)
    qtbot.addWidget(view)
    return view


def _cells(view: EstimateView, row: int) -> dict[str, str]:
    return {name: view.grid.item(row, c).text() for c, name in enumerate(COLUMNS)}


def _wait_table(qtbot, view: EstimateView, action) -> object:
    with qtbot.waitSignal(view.estimated, timeout=60_000) as blocker:
        action()
    qtbot.waitUntil(lambda: not view.busy, timeout=10_000)
    return blocker.args[0]


def test_every_preset_with_the_current_row_highlighted(controller, qtbot) -> None:
    view = _view(qtbot, controller)
    view.set_settings(preset("nf4").quant, LoadOptions(device_map="cpu"))
    table = _wait_table(qtbot, view, lambda: view.set_model(TINY))
    assert view.grid.rowCount() == 8
    names = [_cells(view, i)["Preset"].removesuffix(" ★") for i in range(8)]
    assert names == [
        "Current (NF4 preset)",
        "fp32",
        "bf16",
        "fp16",
        "int8",
        "nf4",
        "nf4-dq",
        "fp4",
    ]
    current = _cells(view, 0)
    assert current["Verdict"] == "fits"
    assert current["Total"] != "—" and current["Quant state"] != "0 B"
    assert COLUMNS[:3] == ("Preset", "Verdict", "Total")  # seen in a narrow column
    bold = [view.grid.item(i, 0).font().weight() == QFont.Weight.Bold for i in range(8)]
    # The current row, and the preset row equal to the current settings (nf4).
    assert bold == [True, False, False, False, False, True, False, False]
    assert table.recommended == "fp32"
    assert "★" in _cells(view, 1)["Preset"]
    assert "Recommended: <b>fp32</b>" in view.recommended.text()
    assert "RAM" in view.device_label.text()
    fp32 = preset("fp32")
    _wait_table(
        qtbot,
        view,
        lambda: view.set_settings(fp32.quant, fp32.load_options(LoadOptions())),
    )
    assert view.grid.item(1, 0).font().weight() == QFont.Weight.Bold
    assert view.grid.item(5, 0).font().weight() != QFont.Weight.Bold


def test_changes_refresh_without_blocking_and_end_on_the_latest(
    controller, qtbot
) -> None:
    view = _view(qtbot, controller)
    _wait_table(qtbot, view, lambda: view.set_model(TINY))
    started = time.perf_counter()
    with qtbot.waitSignal(view.estimated, timeout=10_000):
        view.set_settings(QuantSettings(mode="8bit"), LoadOptions(device_map="cpu"))
        view.set_context(2048)
        view.set_settings(preset("nf4-dq").quant, LoadOptions(device_map="cpu"))
        # set_* only schedule the work: the UI thread is free at once.
        assert time.perf_counter() - started < 0.05
    qtbot.waitUntil(lambda: not view.busy, timeout=10_000)
    assert view.table.current.label == "nf4-dq"
    assert view.table.context == 2048
    assert _cells(view, 0)["Preset"].startswith("Current (NF4 + double quant preset)")
    assert view.table.current.kv_cache_bytes == 2 * 2 * 2 * 16 * 2048 * 4


def test_context_spin_box_changes_the_kv_cache(controller, qtbot) -> None:
    view = _view(qtbot, controller)
    first = _wait_table(qtbot, view, lambda: view.set_model(TINY))
    second = _wait_table(qtbot, view, lambda: view.context.setValue(8192))
    assert second.current.kv_cache_bytes == 2 * first.current.kv_cache_bytes


def test_unreadable_model_says_what_and_what_to_do(
    controller, qtbot, tmp_path: Path
) -> None:
    view = _view(qtbot, controller)
    with qtbot.waitSignal(view.failed, timeout=60_000):
        view.set_model(str(tmp_path / "nowhere"))
    qtbot.waitUntil(lambda: not view.busy, timeout=10_000)
    assert "folder not found" in view.status.text()
    assert "check the path" in view.status.text()
    assert view.grid.rowCount() == 0


def test_unknown_architecture_still_shows_the_kv_cache(controller, qtbot) -> None:
    view = _view(qtbot, controller)
    config = {**TINY, "model_type": "brand-new-arch"}
    table = _wait_table(qtbot, view, lambda: view.set_model(config))
    assert _cells(view, 0)["Weights"] == "—" and _cells(view, 0)["KV cache"] != "—"
    assert _cells(view, 0)["Verdict"] == "unknown"
    assert "brand-new-arch" in view.notes.text()
    assert table.recommended is None


def test_estimated_vs_actual_and_the_unquantized_warning(
    controller, qtbot, tiny_dir: Path
) -> None:
    view = _view(qtbot, controller)
    options = LoadOptions(device_map="cpu")
    quant = preset("nf4").quant
    view.set_settings(quant, options)
    _wait_table(qtbot, view, lambda: view.set_model(catalog.folder_ref(tiny_dir)))
    loaded = loader.load(catalog.folder_ref(tiny_dir), quant, options)
    _wait_table(qtbot, view, lambda: view.show_loaded(loaded))
    text = view.actual_label.text()
    assert "Estimated vs actual" in text and "(exact)" in text
    assert view.warning.isHidden()
    # A skip list that names every block: nothing gets quantized.
    offload = quant.replace(llm_int8_skip_modules=["model.layers"])
    _wait_table(qtbot, view, lambda: view.set_settings(offload, options))
    loaded = loader.load(catalog.folder_ref(tiny_dir), offload, options)
    _wait_table(qtbot, view, lambda: view.show_loaded(loaded))
    assert not view.warning.isHidden()
    assert "no Linear layer was quantized" in view.warning.text()
    assert "(exact)" in view.actual_label.text()
    view.clear_loaded()
    assert view.warning.isHidden() and view.actual_label.isHidden()


def test_controller_job_returns_a_table(controller, qtbot) -> None:
    worker = controller.estimate(TINY, QuantSettings(), LoadOptions("cpu"), 16)
    with qtbot.waitSignal(worker.returned, timeout=60_000) as done:
        pass
    table = done.args[0]
    assert table.current.preset == "current"
    assert table.current.kv_cache_bytes == 2 * 2 * 2 * 16 * 16 * 4


def test_in_the_window_it_follows_the_controller(
    qtbot, tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIBBLE_CONFIG_DIR", str(tmp_path))
    from gui.main_window import MainWindow

    window = MainWindow(auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    view = window.estimate_view
    c = window.controller
    assert view.isVisibleTo(window)
    # No estimate runs before the ML stack is imported.
    qtbot.wait(100)
    assert c.running("estimate") is not None and workers.running_threads() == []
    c.import_libraries()
    qtbot.waitUntil(lambda: view.table is not None and not view.busy, timeout=60_000)
    assert view.table.model == window.selected_ref.name
    int8 = preset("int8")
    _wait_table(qtbot, view, lambda: c.set_settings(int8.quant, LoadOptions("cpu")))
    assert view.table.current.label == "int8"
    _wait_table(qtbot, view, lambda: c.select(catalog.folder_ref(tiny_dir)))
    assert view.table.model == "tiny-llama"
    window.close()


def test_a_small_line_says_whether_the_estimate_is_calibrated(
    controller, qtbot, tmp_path: Path
) -> None:
    from core.model import calibration
    from core.store import calibration as store
    from tests.load_records import records

    journal = store.LoadJournal(tmp_path / "history.db")
    previous = calibration.use_journal(journal)
    try:
        view = _view(qtbot, controller)
        view.set_settings(preset("nf4").quant, LoadOptions(device_map="cpu"))
        _wait_table(qtbot, view, lambda: view.set_model(TINY))
        assert view.calibration.text() == (
            "Overhead and peak: not calibrated yet (0 of 3 loads on cpu)"
        )
        assert "after 3 loads" in view.calibration.toolTip()
        for record in records(3):
            journal.add(record)
        _wait_table(qtbot, view, view.refresh)
        assert view.calibration.text().startswith(
            "Overhead and peak: calibrated on this machine from 3 loads (±"
        )
        assert "over the formulas" in view.calibration.toolTip()
    finally:
        calibration.use_journal(previous)
