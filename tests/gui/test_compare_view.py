"""The Compare tab: inputs, a run through CompareWorker, cancel, failed rows, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pyqtgraph as pg
import pytest
from PySide6.QtCore import QRectF
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QApplication

from core.errors import LoadError
from core.lab import compare
from core.model import catalog
from gui import workers
from gui.compare_view import ROW_STEPS, CompareView

LONG = 180_000  # ms: loads are slow on a busy 2-core machine


@pytest.fixture(scope="module")
def tiny_ref(tiny_dir: Path) -> catalog.ModelRef:
    return catalog.resolve(str(tiny_dir))


@pytest.fixture
def view(qtbot, controller, tiny_ref: catalog.ModelRef) -> CompareView:  # type: ignore[no-untyped-def]
    widget = CompareView(controller)
    widget.set_model(tiny_ref)
    qtbot.addWidget(widget)
    widget.set_rows(["baseline", "nf4"])
    widget.tokens.setValue(3)
    widget.eval_tokens.setValue(40)
    return widget


def test_defaults_and_the_memory_note(qtbot, controller) -> None:  # type: ignore[no-untyped-def]
    widget = CompareView(controller)
    widget.set_model(None)
    qtbot.addWidget(widget)
    assert widget.row_items() == list(compare.DEFAULT_ROWS)
    assert "memory holds both" in widget.findChild(object, "compareMemoryNote").text()
    assert "anonymous memory" in widget.table.horizontalHeaderItem(3).toolTip()
    assert "process RSS" in widget.table.horizontalHeaderItem(4).toolTip()
    note = widget.findChild(object, "compareMemoryNote").text()
    assert "anonymous: memory only this process holds" in note
    assert not widget.run_button.isEnabled()
    assert widget.start() is None
    assert widget.last_error.message == "no model picked"
    widget.set_model(catalog.ModelRef("folder", "m", path=Path("/nowhere")))
    assert widget.run_button.isEnabled()
    assert "m" in widget.model_label.text()


@pytest.mark.parametrize(
    ("rows", "variations", "message"),
    [
        ([], "", "no settings to compare"),
        (["baseline"], "q3+llm_int8_threshold=4", "unknown preset 'q3'"),
        (["baseline"], "nf4+bnb_4bit_quant_type=NF4", "must be 'nf4' or 'fp4'"),
    ],
)
def test_bad_rows_show_message_and_hint_without_starting(
    view: CompareView, rows: list[str], variations: str, message: str
) -> None:
    view.set_rows(rows, variations)
    assert view.start() is None
    assert not view.running
    assert message in view.error_label.text()
    assert "Hint: " in view.error_label.text()


def test_a_run_fills_table_charts_seed_table_and_exports(
    qtbot,  # type: ignore[no-untyped-def]
    view: CompareView,
    tmp_path: Path,
) -> None:
    view.set_rows(["baseline", "nf4"], "nf4+bnb_4bit_compute_dtype=bfloat16")
    events: list[str] = []
    with qtbot.waitSignal(view.run_finished, timeout=LONG) as done:
        worker = view.start()
        assert worker is not None and view.running
        assert not view.run_button.isEnabled() and view.cancel_button.isEnabled()
        for name in ("started", "row_finished", "returned", "finished"):
            getattr(worker, name).connect(lambda *a, n=name: events.append(n))
    qtbot.waitUntil(lambda: not view.running, timeout=LONG)
    assert [e for e in events if e != "started"] == [
        "row_finished",
        "row_finished",
        "row_finished",
        "returned",
        "finished",
    ]
    result = done.args[0]
    assert [r.name for r in result.rows] == [
        "baseline",
        "nf4",
        "nf4+bnb_4bit_compute_dtype=bfloat16",
    ]
    assert all(r.ok for r in result.rows)
    assert view.table.rowCount() == 3
    assert view.table.item(0, 9).text() == "0.00000"
    assert view.table.item(1, 1).text() == "4"
    assert view.seed.rowCount() == 3
    assert view.seed.item(0, 4).text().startswith("The reference")
    assert view.answers.item(1, 2).text() == result.rows[0].answer
    markdown = view.copy_seed_markdown()
    assert markdown.startswith("| Method | Bits | Memory savings |")
    assert QGuiApplication.clipboard().text() == markdown
    assert markdown.count("\n| ") == 4
    assert view.progress.value() == view.progress.maximum() == 3 * ROW_STEPS
    assert view.progress.text() == "Done: 3 rows"
    assert view.export_csv_button.isEnabled()

    csv_path = view.export("csv", tmp_path / "r.csv")
    assert csv_path.read_text().count("\n") == 4
    json_path = view.export("json", tmp_path / "r.json")
    saved = compare.CompareResult.from_dict(json.loads(json_path.read_text()))
    assert saved.rows[2].settings["bnb_4bit_compute_dtype"] == "bfloat16"
    png = view.export("png", tmp_path / "charts.png")
    image = QImage(str(png))
    assert not image.isNull() and image.width() >= 200


def test_cancel_stops_the_run_and_keeps_exports_off(
    qtbot,  # type: ignore[no-untyped-def]
    view: CompareView,
) -> None:
    with qtbot.waitSignal(view.run_finished, timeout=LONG) as done:
        worker = view.start()
        worker.progressed.connect(lambda *a: view.cancel())
    qtbot.waitUntil(lambda: not view.running, timeout=LONG)
    assert done.args == [None]
    assert view.status.text().startswith("Cancelled after 0 of 2 rows")
    assert view.progress.text() == "Cancelled after 0 of 2 rows"
    assert not view.export_csv_button.isEnabled()
    assert view.run_button.isEnabled()


def test_a_failed_row_is_shown_in_its_row(
    qtbot,  # type: ignore[no-untyped-def]
    view: CompareView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = compare.loader.load

    def load(ref, quant=None, options=None, progress=None, cancel=None):  # type: ignore[no-untyped-def]
        if quant is not None and quant.mode == "4bit":
            raise LoadError("does not fit", "pick a smaller preset")
        return real(ref, quant, options, progress, cancel)

    monkeypatch.setattr(compare.loader, "load", load)
    with qtbot.waitSignal(view.run_finished, timeout=LONG) as done:
        view.start()
    qtbot.waitUntil(lambda: not view.running, timeout=LONG)
    assert done.args[0].rows[1].status == "failed"
    assert view.table.item(1, 1).text() == (
        "failed: does not fit (hint: pick a smaller preset)"
    )
    assert view.table.columnSpan(1, 1) == view.table.columnCount() - 1
    assert "failed: nf4" in view.status.text()
    assert view.seed.item(1, 4).text() == "failed: does not fit"


def test_worker_work_runs_without_a_thread(tiny_ref: catalog.ModelRef) -> None:
    rows: list[str] = []
    worker = workers.CompareWorker(
        tiny_ref,
        "baseline",
        compare.CompareConfig(new_tokens=2, eval_tokens=24),
    )
    worker.row_finished.connect(lambda r: rows.append(r.name))
    result = worker.work()
    assert rows == ["baseline"] and result.rows[0].kl_vs_baseline == 0.0


def test_export_before_a_run_is_refused(view: CompareView, tmp_path: Path) -> None:
    with pytest.raises(compare.NibbleError, match="nothing to export"):
        view.export("csv", tmp_path / "x.csv")


def test_in_the_window_it_follows_the_picker_and_stops_on_close(
    qtbot,  # type: ignore[no-untyped-def]
    tiny_ref: catalog.ModelRef,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.store import session as session_mod
    from gui.main_window import MainWindow

    monkeypatch.setenv("NIBBLE_CONFIG_DIR", str(tmp_path))
    window = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    window.compare_action.trigger()
    view = window.compare_view
    assert window.tabs.tabText(window.tabs.indexOf(view)) == "Compare"
    assert window.tabs.currentWidget() is view
    assert view.ref == window.selected_ref
    window.controller.select(tiny_ref)
    assert view.ref is tiny_ref
    view.set_rows(["baseline", "nf4"])
    view.eval_tokens.setValue(40)
    view.tokens.setValue(3)
    with qtbot.waitSignal(view.run_finished, timeout=LONG) as done:
        view.start()
        window.close()
    assert done.args == [None]
    assert view.worker is None or not workers.running_threads()


def _fake_rows() -> list[compare.RowResult]:
    rows = []
    for name, size, ppl, speed in (
        ("baseline", 538e6, 9.1, 14.0),
        ("int8", 220e6, 9.2, 11.0),
        ("nf4", 166e6, 11.4, 26.0),
        ("nf4-dq", 158e6, 11.5, 25.0),
        ("fp4", 166e6, 13.9, 26.0),
    ):
        rows.append(
            compare.RowResult(
                name,
                name,
                {},
                {},
                true_bytes=int(size),
                peak_bytes=int(size * 1.8),
                perplexity=ppl,
                tokens_per_s=speed,
            )
        )
    return rows


def test_charts_fit_their_titles_points_and_legend(qtbot, controller) -> None:  # type: ignore[no-untyped-def]
    """Titles were cut ("peak d…"), the scatter missed the baseline point and the
    legend covered a bar."""
    from PySide6.QtGui import QFontMetrics

    view = CompareView(controller)
    qtbot.addWidget(view)
    rows = _fake_rows()
    view._draw(rows)
    plots = (view.memory_plot, view.speed_plot, view.ppl_plot, view.scatter_plot)
    for plot in plots:
        title = plot.plotItem.titleLabel
        width = QFontMetrics(title.item.font()).horizontalAdvance(title.text)
        assert width < plot.minimumWidth() - 40, title.text
    (x0, x1), (y0, y1) = view.scatter_plot.viewRange()
    mib = 1024 * 1024
    for r in rows:
        assert x0 < r.true_bytes / mib < x1 and y0 < r.perplexity < y1, r.name
    # The legend is one line in the headroom: no bar under it, on screen or in a PNG.
    view.resize(1366, 768)
    view.show()
    qtbot.waitExposed(view)
    view.results.setCurrentIndex(1)
    QApplication.processEvents()
    legend = view.memory_plot.plotItem.legend
    assert legend is not None and legend.columnCount == 3
    legend_rect = legend.sceneBoundingRect()
    bars = [
        i for i in view.memory_plot.plotItem.items if isinstance(i, pg.BarGraphItem)
    ]
    assert bars
    for item in bars:
        opts = item.opts
        for x, height in zip(opts["x"], opts["height"], strict=True):
            w = opts["width"]
            bar = item.mapRectToScene(QRectF(x - w / 2, 0, w, height))
            assert not legend_rect.intersects(bar), (legend_rect, bar)


def test_progress_moves_within_a_row(view: CompareView) -> None:
    from gui.compare_view import row_fraction

    assert row_fraction("nf4: Loading weights 15/30") == pytest.approx(0.2)
    assert row_fraction("nf4: Answering the prompt") == pytest.approx(0.4)
    assert row_fraction("nf4: Perplexity window 3/3") == pytest.approx(1.0)
    view._rows_total = 2
    view.progress.setRange(0, 2 * ROW_STEPS)
    view._on_progress(1, 2, "nf4: Perplexity window 1/2")
    assert view.progress.value() == round((1 + 0.775) * ROW_STEPS)
    assert view.progress.text().startswith("Row 2 of 2")
    assert view.eval_tokens.suffix() == " tokens"


def test_concurrent_streams_are_optional(qtbot, controller) -> None:  # type: ignore[no-untyped-def]
    from gui.compare_view import TABLE_COLUMNS, streams_text

    widget = CompareView(controller)
    qtbot.addWidget(widget)
    assert widget.config().streams == ()
    widget.streams_check.setChecked(True)
    assert widget.config().streams == (1, 4, 8)
    assert TABLE_COLUMNS[-1] == "Concurrent streams"
    measured = {
        "1": {"aggregate_tok_s": 30.0, "per_stream_tok_s": 30.0},
        "4": {"aggregate_tok_s": 80.25, "per_stream_tok_s": 20.0},
    }
    assert streams_text(measured) == "1: 30.0 · 4: 80.2 (20.0 each)"
    assert streams_text({}) == "—"


def test_decode_modes_add_each_checked_row_again(qtbot, controller) -> None:  # type: ignore[no-untyped-def]
    widget = CompareView(controller)
    qtbot.addWidget(widget)
    widget.set_rows(["baseline", "nf4"])
    widget.decode_checks["compiled"].setChecked(True)
    widget.decode_checks["prompt lookup"].setChecked(True)
    assert widget.row_items() == [
        "baseline",
        "nf4",
        "baseline+decode=compiled",
        "nf4+decode=compiled",
        "baseline+decode=lookup",
        "nf4+decode=lookup",
    ]
    widget.decode_checks["plain"].setChecked(False)
    widget.decode_checks["prompt lookup"].setChecked(False)
    assert widget.row_items() == ["baseline+decode=compiled", "nf4+decode=compiled"]
