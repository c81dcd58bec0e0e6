"""The Compare tab: pick rows, run them in a worker, read the table and the charts.

The run loads its own copy of the model for each row, one at a time; the model in the
chat stays loaded, and the panel says so, since memory then holds both.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core import memory
from core.errors import NibbleError
from core.lab import compare
from core.model.catalog import ModelRef
from core.settings import PRESETS, LoadOptions, QuantSettings
from core.units import format_bytes, format_seconds
from gui import dialogs, workers

if TYPE_CHECKING:
    from gui.controller import Controller

logger = logging.getLogger(__name__)

MEMORY_NOTE = (
    "Each row loads its own copy of the model, one at a time, and unloads it before "
    "the next. The model in the chat stays loaded, so memory holds both while this runs."
)
TABLE_COLUMNS = (
    "Row",
    "Bits",
    "Load",
    "Peak during load",
    "Peak RSS",
    "Actual size",
    "First token",
    "Decode",
    "Perplexity",
    "KL vs baseline",
    "Tokens above KL",
    "Top-1 agreement",
    "Answer",
    "Concurrent streams",
)
COLUMN_TIPS = {
    "Peak during load": "The highest anonymous memory of the process while loading "
    "(on a GPU, the highest VRAM allocated): what it really holds. It includes what "
    "the process held before the load, such as the chat's model.",
    "Peak RSS": "The highest process RSS while loading: anonymous memory plus mapped "
    "files (the checkpoint, libraries) the OS can drop and read again.",
    "Actual size": "Parameters, buffers and quantization state of the loaded model.",
    "First token": "Time to the first new token of the prompt's answer.",
    "Decode": "Tokens per second after the first, over a fixed count of greedy tokens.",
    "Perplexity": "On the bundled text, strided 512-token windows; lower is better.",
    "KL vs baseline": "Mean KL divergence of this row's next-token distribution from "
    "the baseline's on the same text; 0 for the baseline.",
    "Tokens above KL": "The share of the text's tokens whose KL vs the baseline is "
    "above the threshold (0.1 nats by default): how often the distribution visibly "
    "moved, where the mean KL can hide a few large moves.",
    "Top-1 agreement": "How often this row's likeliest next token is the baseline's.",
}
ANSWER_COLUMNS = ("Row", "Answer", "Baseline's answer", "Divergence")
DECODE_TIPS = {
    "plain": "Each row decodes as transformers does by default.",
    "compiled": "Each checked preset again, loaded with Fast decode (static cache "
    "and a compiled decode step; the compile is part of its load time).",
    "prompt lookup": "Each checked preset again, decoding with prompt lookup "
    "(guesses copied from the prompt, checked in one step).",
}
FRONT_BRUSH = pg.mkBrush("#d9534f")
ROW_STEPS = 1000  # progress-bar steps per row
CHART_MIN_WIDTH = 300
_STEP = re.compile(r"(\d+)/(\d+)")
OTHER_BRUSH = pg.mkBrush("#5b8ff9")


class CompareView(QWidget):
    """Choose presets and variations, run them, and read, chart and export the rows."""

    run_started = Signal()
    run_finished = Signal(object)  # the CompareResult, or None if cancelled or failed

    def __init__(self, controller: Controller, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller
        ref = controller.selected_ref
        self.ref: ModelRef | None = ref
        self.result: compare.CompareResult | None = None
        self.rows: list[compare.RowResult] = []
        self.worker: workers.CompareWorker | None = None
        self._rows_total = 0
        self._started_at = 0.0
        self.last_error: NibbleError | None = None
        self._build()
        self.set_model(ref)
        controller.model_selected.connect(self.set_model)

    # -- building --
    def _build(self) -> None:
        self.model_label = QLabel()
        self.model_label.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
        )
        rows_box = QGroupBox("Rows (the first checked is the baseline)")
        rows_layout = QGridLayout(rows_box)
        self.row_checks: dict[str, QCheckBox] = {}
        for i, name in enumerate(compare.row_names()):
            check = QCheckBox(name)
            check.setChecked(name in compare.DEFAULT_ROWS)
            if name == compare.BASELINE:
                check.setToolTip(
                    "Unquantized in the model's own dtype (float32 on the CPU): "
                    "the reference for KL and agreement."
                )
            else:
                check.setToolTip(PRESETS[name].description)
            rows_layout.addWidget(check, i // 4, i % 4)
            self.row_checks[name] = check
        self.decode_checks: dict[str, QCheckBox] = {}
        decode_row = QHBoxLayout()
        for mode, tip in DECODE_TIPS.items():
            check = QCheckBox(mode)
            check.setChecked(mode == "plain")
            check.setToolTip(tip)
            decode_row.addWidget(check)
            self.decode_checks[mode] = check
        decode_row.addStretch(1)
        self.variations = QLineEdit()
        self.variations.setPlaceholderText(
            "nf4+bnb_4bit_compute_dtype=bfloat16, int8+llm_int8_threshold=4"
        )
        self.variations.setToolTip(
            "Extra rows, comma-separated: a preset, then +FIELD=VALUE for any "
            "BitsAndBytesConfig field (or +dtype=..., +decode=compiled|lookup)."
        )
        self.tokens = QSpinBox()
        self.tokens.setRange(2, 1024)
        self.tokens.setValue(32)
        self.tokens.setSuffix(" tokens")
        self.eval_tokens = QSpinBox()
        self.eval_tokens.setRange(0, 100_000)
        self.eval_tokens.setSingleStep(256)
        self.eval_tokens.setSpecialValueText("the whole text")
        self.eval_tokens.setSuffix(" tokens")
        self.eval_tokens.setToolTip(compare.EVAL_SOURCE)
        self.prompt = QLineEdit(compare.DEFAULT_PROMPT)
        self.streams_check = QCheckBox("Also time 1, 4 and 8 answers decoding together")
        self.streams_check.setToolTip(
            "Per row: aggregate tok/s of n greedy answers decoded together by the "
            "generation queue, and each answer's own tok/s (in brackets)"
        )
        form = QFormLayout()
        form.addRow("Decode modes", decode_row)
        form.addRow("Variations", self.variations)
        form.addRow("Timed answer", self.tokens)
        form.addRow("Evaluation text", self.eval_tokens)
        form.addRow("Prompt", self.prompt)
        form.addRow("Concurrent streams", self.streams_check)
        note = QLabel(f"{MEMORY_NOTE}\nMemory, {memory.MEANING_LINE}.")
        note.setWordWrap(True)
        note.setObjectName("compareMemoryNote")

        self.run_button = QPushButton("Run comparison")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel("Pick rows and run.")
        self.status.setWordWrap(True)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c0392b;")
        self.error_label.hide()
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.progress, 1)

        self.table = _table(TABLE_COLUMNS)
        for column, tip in COLUMN_TIPS.items():
            self.table.horizontalHeaderItem(TABLE_COLUMNS.index(column)).setToolTip(tip)
        self.seed = _table(compare.SEED_COLUMNS)
        self.answers = _table(ANSWER_COLUMNS)
        answers_header = self.answers.horizontalHeader()
        answers_header.setStretchLastSection(False)
        for column in (1, 2):  # the two answers share the width; the button fits
            answers_header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        self.divergence_buttons: dict[int, QPushButton] = {}  # by row
        self.divergence_dialogs: list[QWidget] = []
        self._run_ref: ModelRef | None = None
        self.charts = QWidget()
        grid = QGridLayout(self.charts)
        self.memory_plot = _plot("Memory (MiB)")
        self.memory_plot.setToolTip(
            "Actual size in memory, the anonymous peak during load and the RSS peak"
        )
        self.speed_plot = _plot("Decode (tokens/s)")
        self.ppl_plot = _plot("Perplexity")
        self.ppl_plot.setToolTip("On the bundled text; lower is better")
        self.scatter_plot = _plot("Memory vs perplexity")
        self.scatter_plot.setToolTip("Red points: the Pareto front")
        self.scatter_plot.setLabel("bottom", "actual size (MiB)")
        self.scatter_plot.setLabel("left", "perplexity")
        for i, plot in enumerate(
            (self.memory_plot, self.speed_plot, self.ppl_plot, self.scatter_plot)
        ):
            grid.addWidget(plot, i // 2, i % 2)
        self.results = QTabWidget()
        self.results.addTab(self.table, "Table")
        charts_scroll = QScrollArea()
        charts_scroll.setWidgetResizable(True)
        charts_scroll.setWidget(self.charts)
        self.results.addTab(charts_scroll, "Charts")
        seed_page = QWidget()
        seed_layout = QVBoxLayout(seed_page)
        seed_layout.setContentsMargins(0, 0, 0, 0)
        caption = QLabel(
            "FP16 vs INT8 vs NF4 at a glance, with this model's numbers: memory savings are "
            "of the actual size in memory; the accuracy hit is measured against the "
            f"first row on {compare.EVAL_SOURCE}."
        )
        caption.setWordWrap(True)
        self.copy_seed_button = QPushButton("Copy as Markdown")
        self.copy_seed_button.setEnabled(False)
        self.copy_seed_button.clicked.connect(self.copy_seed_markdown)
        top = QHBoxLayout()
        top.addWidget(caption, 1)
        top.addWidget(self.copy_seed_button)
        seed_layout.addLayout(top)
        seed_layout.addWidget(self.seed)
        self.results.addTab(seed_page, "At a glance")
        self.results.addTab(self.answers, "Answers")

        self.export_csv_button = QPushButton("Export CSV…")
        self.export_json_button = QPushButton("Export JSON…")
        self.export_png_button = QPushButton("Export charts PNG…")
        self.export_csv_button.clicked.connect(lambda: self._export("csv"))
        self.export_json_button.clicked.connect(lambda: self._export("json"))
        self.export_png_button.clicked.connect(lambda: self._export("png"))
        exports = QHBoxLayout()
        exports.addStretch(1)
        for button in self._export_buttons():
            button.setEnabled(False)
            exports.addWidget(button)

        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(rows_box)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.error_label)
        layout.addWidget(self.results, 1)
        layout.addLayout(exports)

    def _export_buttons(self) -> tuple[QPushButton, ...]:
        return (
            self.export_csv_button,
            self.export_json_button,
            self.export_png_button,
        )

    # -- inputs --
    def set_model(self, ref: ModelRef | None) -> None:
        """Compare settings of this model (from the window's picker)."""
        self.ref = ref
        name = ref.name if ref is not None else "no model picked"
        self.model_label.setText(f"<b>Model:</b> {name}")
        self._sync_buttons()

    def set_rows(self, names: list[str], variations: str = "") -> None:
        """Check exactly these rows and set the variations line."""
        for name, check in self.row_checks.items():
            check.setChecked(name in names)
        self.variations.setText(variations)

    def row_items(self) -> list[str]:
        """The rows to run, in table order: checked presets, then variations."""
        presets = [n for n, check in self.row_checks.items() if check.isChecked()]
        modes = [m for m, check in self.decode_checks.items() if check.isChecked()]
        items = compare.with_decode_modes(presets, modes)
        items += [v.strip() for v in self.variations.text().split(",") if v.strip()]
        return items

    def config(self) -> compare.CompareConfig:
        return compare.CompareConfig(
            prompt=self.prompt.text(),
            new_tokens=self.tokens.value(),
            eval_tokens=self.eval_tokens.value() or None,
            streams=(1, 4, 8) if self.streams_check.isChecked() else (),
        )

    # -- running --
    def start(self) -> workers.CompareWorker | None:
        """Check the inputs and start the run; None (and an error shown) if invalid."""
        if self.running:
            return self.worker
        self._show_error(None)
        try:
            if self.ref is None:
                raise NibbleError("no model picked", "pick a model in the list first")
            specs = compare.parse_rows(self.row_items())
            config = self.config()
        except NibbleError as exc:
            self._show_error(exc)
            return None
        self.result = None
        self.rows = []
        self._clear()
        self._rows_total = len(specs)
        self._started_at = time.monotonic()
        self.progress.setRange(0, len(specs) * ROW_STEPS)
        self.progress.setValue(0)
        self.progress.setFormat(f"0 of {len(specs)} rows")
        self.status.setText(f"Starting {len(specs)} rows on {self.ref.name}…")
        self._run_ref = self.ref
        worker = self.controller.compare(self.ref, specs, config)
        worker.progressed.connect(self._on_progress)
        worker.row_finished.connect(self._on_row)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._sync_buttons()
        self.run_started.emit()
        return worker

    @property
    def running(self) -> bool:
        return self.worker is not None

    def cancel(self) -> None:
        """Stop the run at the next weight, token, window or row."""
        if self.worker is not None:
            self.worker.cancel()
            self.status.setText("Cancelling…")
            self.cancel_button.setEnabled(False)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        """Move within the row: loading, answering, then the perplexity windows."""
        fraction = row_fraction(message)
        value = round((done + (fraction if done < total else 0.0)) * ROW_STEPS)
        self.progress.setValue(min(value, self.progress.maximum()))
        overall = value / max(self.progress.maximum(), 1)
        text = f"Row {min(done + 1, total)} of {total}"
        elapsed = time.monotonic() - self._started_at
        if 0.02 < overall < 1.0 and elapsed > 2.0:
            left = elapsed / overall * (1.0 - overall)
            text += f" · about {format_seconds(left)} left"
        self.progress.setFormat(text)
        self.status.setText(message)

    def _on_row(self, row: compare.RowResult) -> None:
        self.rows.append(row)
        self.progress.setValue(len(self.rows) * ROW_STEPS)
        self._fill_table(self.rows)

    def _on_returned(self, result: compare.CompareResult) -> None:
        self.result = result
        self.rows = list(result.rows)
        self.show_result(result)
        failed = [r.name for r in result.rows if not r.ok]
        text = (
            f"{len(result.rows)} rows in {format_seconds(result.total_s)} on "
            f"{result.environment.get('cpu') or 'this machine'}"
        )
        if result.environment.get("gpus"):
            text += f" + {', '.join(result.environment['gpus'])}"
        if failed:
            text += f"; failed: {', '.join(failed)} (see the table)"
        self.status.setText(text + ".")
        self._end_progress(
            f"Done: {len(result.rows)} rows"
            + (f", {len(failed)} failed" if failed else "")
        )
        self.run_finished.emit(result)

    def _on_errored(self, exc: object) -> None:
        if not isinstance(exc, NibbleError):
            exc = NibbleError(
                f"the comparison failed: {type(exc).__name__}: {exc}",
                "run it again with --debug from the command line for details",
            )
        self._show_error(exc)
        self.status.setText("The comparison stopped.")
        self._end_progress("Stopped")
        self.run_finished.emit(None)

    def _on_aborted(self) -> None:
        done = len(self.rows)
        self.status.setText(
            f"Cancelled after {done} of {self._rows_total} rows; "
            "export needs a complete run."
        )
        if self.rows:
            self._draw(self.rows)
        self._end_progress(f"Cancelled after {done} of {self._rows_total} rows")
        self.run_finished.emit(None)

    def _end_progress(self, text: str) -> None:
        """The bar says how the run ended instead of its last row's counter."""
        self.progress.setValue(len(self.rows) * ROW_STEPS)
        self.progress.setFormat(text)

    def _on_finished(self) -> None:
        self.worker = None
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        running = self.worker is not None
        self.run_button.setEnabled(not running and self.ref is not None)
        self.cancel_button.setEnabled(running)
        for button in self._export_buttons():
            button.setEnabled(not running and self.result is not None)
        self.copy_seed_button.setEnabled(not running and self.result is not None)

    def _show_error(self, exc: NibbleError | None) -> None:
        self.last_error = exc
        if exc is None:
            self.error_label.hide()
            return
        text = exc.message + (f"\nHint: {exc.hint}" if exc.hint else "")
        self.error_label.setText(text)
        self.error_label.show()

    # -- showing --
    def show_result(self, result: compare.CompareResult) -> None:
        """Fill the table, charts, at-a-glance table and answers from `result`."""
        self._fill_table(result.rows)
        self._draw(result.rows)
        _fill(self.seed, [list(r.values()) for r in compare.seed_table(result)])
        base = result.baseline
        _fill(
            self.answers,
            [
                [
                    r.name,
                    r.answer or f"failed: {r.error}",
                    base.answer if base else "—",
                    "",
                ]
                for r in result.rows
            ],
        )
        self.divergence_buttons = {}
        for i, row in enumerate(result.rows):
            if row.ok and row.answer and _quantized(row):
                button = QPushButton("Show divergence")
                button.setToolTip(
                    "Shade each token of this answer by its KL vs full precision "
                    "(fp32), with both top-5 lists on hover"
                )
                button.clicked.connect(lambda _=False, i=i: self.show_divergence(i))
                self.answers.setCellWidget(
                    i, ANSWER_COLUMNS.index("Divergence"), button
                )
                self.divergence_buttons[i] = button
        self._sync_buttons()

    def show_divergence(self, index: int) -> QWidget | None:
        """Shade row `index`'s answer by its KL vs fp32, in a dialog of its own."""
        from gui.divergence_view import DivergenceDialog, DivergenceRequest

        result = self.result
        ref = self._run_ref or self.ref
        if result is None or ref is None or not 0 <= index < len(result.rows):
            return None
        row = result.rows[index]
        threshold = result.config.get("kl_threshold")
        request = DivergenceRequest(
            ref,
            QuantSettings.from_dict(row.settings),
            LoadOptions.from_dict(row.options),
            str(result.config.get("prompt") or compare.DEFAULT_PROMPT),
            row.answer or "",
            row.name,
            threshold=float(threshold) if threshold is not None else None,
        )
        dialog = DivergenceDialog(self.controller, request, self)
        self.divergence_dialogs = [
            d for d in self.divergence_dialogs if d.isVisible()
        ] + [dialog]
        dialog.show()
        return dialog

    def _clear(self) -> None:
        for table in (self.table, self.seed, self.answers):
            table.setRowCount(0)
        for plot in (self.memory_plot, self.speed_plot, self.ppl_plot):
            plot.clear()
        self.scatter_plot.clear()

    def _fill_table(self, rows: list[compare.RowResult]) -> None:
        cells = []
        for r in rows:
            if not r.ok:
                text = f"failed: {r.error}" + (f" (hint: {r.hint})" if r.hint else "")
                cells.append([r.name, text])
                continue
            cells.append(
                [
                    r.name,
                    str(r.bits or "—"),
                    format_seconds(r.load_s),
                    format_bytes(r.peak_bytes),
                    format_bytes(r.peak_rss_bytes),
                    format_bytes(r.true_bytes),
                    format_seconds(r.ttft_s),
                    _speed(r),
                    _num(r.perplexity, "{:.3f}"),
                    _num(r.kl_vs_baseline, "{:.5f}"),
                    _num(r.kl_share_above, "{:.1%}"),
                    _num(r.top1_agreement, "{:.1%}"),
                    compare.one_line(r.answer),
                    streams_text(r.streams),
                ]
            )
        _fill(self.table, cells)

    def _draw(self, rows: list[compare.RowResult]) -> None:
        done = [r for r in rows if r.ok]
        names = [r.name for r in done]
        mib = 1024 * 1024
        true = [(r.true_bytes or 0) / mib for r in done]
        peak = [(r.peak_bytes or 0) / mib for r in done]
        rss = [(r.peak_rss_bytes or 0) / mib for r in done]
        _bars(
            self.memory_plot,
            names,
            [true, peak, rss],
            ["#5b8ff9", "#f6bd16", "#e8684a"],
            ["actual size", "peak during load", "peak RSS"],
        )
        _bars(self.speed_plot, names, [[r.tokens_per_s or 0 for r in done]], None)
        ppl = [r.perplexity for r in done]
        _bars(
            self.ppl_plot,
            names,
            [[p if p is not None and math.isfinite(p) else 0 for p in ppl]],
            ["#5ad8a6"],
        )
        self.scatter_plot.clear()
        front = set(compare.pareto_front(done))
        points = [
            (r.name, (r.true_bytes or 0) / mib, r.perplexity)
            for r in done
            if r.perplexity is not None and math.isfinite(r.perplexity)
        ]
        if not points:
            return
        self.scatter_plot.addItem(
            pg.ScatterPlotItem(
                x=[p[1] for p in points],
                y=[p[2] for p in points],
                size=12,
                brush=[FRONT_BRUSH if p[0] in front else OTHER_BRUSH for p in points],
                pen=None,
            )
        )
        line = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
        if len(line) > 1:
            self.scatter_plot.plot(
                [p[1] for p in line],
                [p[2] for p in line],
                pen=pg.mkPen("#d9534f", width=2, style=Qt.PenStyle.DashLine),
            )
        for name, x, y in points:
            label = pg.TextItem(name, anchor=(0, 1), color="#444")
            label.setPos(x, y)
            self.scatter_plot.addItem(label)
        # Every point and its label inside the view, with room on each side.
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        x_pad = max((max(xs) - min(xs)) * 0.15, max(xs) * 0.05, 1.0)
        y_pad = max((max(ys) - min(ys)) * 0.15, max(ys) * 0.05, 0.1)
        self.scatter_plot.setXRange(min(xs) - x_pad, max(xs) + x_pad * 2, padding=0)
        self.scatter_plot.setYRange(min(ys) - y_pad, max(ys) + y_pad * 2, padding=0)

    # -- exports --
    def copy_seed_markdown(self) -> str:
        """Put the at-a-glance table on the clipboard as Markdown; returns the text."""
        if self.result is None:
            return ""
        text = compare.seed_markdown(self.result)
        QGuiApplication.clipboard().setText(text)
        dialogs.say_copied(self.copy_seed_button)
        self.status.setText("Copied the table as Markdown.")
        return text

    def _export(self, kind: str) -> None:
        filters = {
            "csv": "CSV (*.csv)",
            "json": "JSON (*.json)",
            "png": "PNG image (*.png)",
        }
        stem = (self.result.model if self.result else "compare").replace("/", "_")
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export",
            str(dialogs.last_folder() / f"{stem}-compare.{kind}"),
            filters[kind],
        )
        if not path:
            return
        dialogs.remember_folder(Path(path).parent)
        try:
            self.export(kind, path)
        except NibbleError as exc:
            self._show_error(exc)
        else:
            self.status.setText(f"Saved {path}")

    def export(self, kind: str, path: str | Path) -> Path:
        """Write the last result as csv, json, or the charts as png."""
        if self.result is None:
            raise NibbleError("nothing to export yet", "run a comparison first")
        path = Path(path)
        if kind == "csv":
            return self.result.save_csv(path)
        if kind == "json":
            return self.result.save_json(path)
        if self.charts.width() < 200 or self.charts.height() < 200:
            self.charts.resize(1000, 700)
        if not self.charts.grab().save(str(path), "PNG"):
            raise NibbleError(f"cannot write {path}", "pick a folder you can write to")
        return path


# -- small helpers --


def _table(columns: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setStretchLastSection(True)
    table.setWordWrap(True)
    table.setTabKeyNavigation(False)  # one Tab stop; the arrows move inside
    return table


def streams_text(streams: dict[str, dict[str, float | None]]) -> str:
    """'1: 30.1 · 4: 80.2 (20.1 each) · 8: …' (aggregate tok/s), or '—'."""
    parts = []
    for n, m in streams.items():
        agg, each = m.get("aggregate_tok_s"), m.get("per_stream_tok_s")
        text = f"{n}: {agg:.1f}" if agg else f"{n}: —"
        if each and n != "1":
            text += f" ({each:.1f} each)"
        parts.append(text)
    return " · ".join(parts) if parts else "—"


def _fill(table: QTableWidget, rows: list[list[str]]) -> None:
    table.setRowCount(len(rows))
    columns = table.columnCount()
    for i, cells in enumerate(rows):
        if len(cells) < columns:  # a failed row: its message spans the rest
            table.setSpan(i, 1, 1, columns - 1)
        elif table.columnSpan(i, 1) > 1:
            table.setSpan(i, 1, 1, 1)
        for j, text in enumerate(cells):
            item = QTableWidgetItem(str(text))
            item.setToolTip(str(text))
            table.setItem(i, j, item)
    # Wrapped cells (the last column stretches to the pane) get the height they need,
    # instead of being cut at one line.
    table.resizeRowsToContents()


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def _plot(title: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(title=title)
    plot.setBackground("w")
    plot.showGrid(y=True, alpha=0.3)
    plot.setMouseEnabled(x=False, y=False)
    plot.setMinimumSize(CHART_MIN_WIDTH, 200)
    plot.getViewBox().sigResized.connect(lambda *_: _fit_headroom(plot))
    return plot


def row_fraction(message: str) -> float:
    """How far one row is (0 to 1) from its progress message: loading the weights
    is the first 40 %, the timed answer 40-55 %, the perplexity windows the rest."""
    match = _STEP.search(message)
    done, total = (int(match[1]), int(match[2])) if match else (0, 0)
    part = done / total if total else 0.0
    if "Perplexity window" in message:
        return 0.55 + 0.45 * part
    if "Answering" in message:
        return 0.40
    if "Loading" in message or "weights" in message.lower():
        return 0.40 * part
    return 0.0


def _bars(
    plot: pg.PlotWidget,
    names: list[str],
    series: list[list[float]],
    colors: list[str] | None,
    labels: list[str] | None = None,
) -> None:
    plot.clear()
    if labels and plot.plotItem.legend is None:
        # One line across the top, in the headroom left above the bars, so it never
        # stacks down over them (on screen and in the exported PNG).
        legend = plot.addLegend(offset=(10, 5), labelTextSize="8pt")
        legend.setColumnCount(len(labels))
    colors = colors or ["#5b8ff9"]
    width = 0.8 / len(series)
    for k, values in enumerate(series):
        x = [i - 0.4 + width * (k + 0.5) for i in range(len(values))]
        plot.addItem(
            pg.BarGraphItem(
                x=x,
                height=values,
                width=width * 0.9,
                brush=colors[k % len(colors)],
                name=labels[k] if labels else None,
            )
        )
    plot.getAxis("bottom").setTicks([list(enumerate(names))])
    plot.setXRange(-0.6, max(len(names) - 0.4, 0.6), padding=0)
    _fit_headroom(plot)


def _fit_headroom(plot: pg.PlotWidget) -> None:
    """Leave room above the tallest bar for the legend's line at the current size."""
    bars = [i for i in plot.plotItem.items if isinstance(i, pg.BarGraphItem)]
    if not bars:
        return
    top = max((float(max(b.opts["height"], default=0.0)) for b in bars), default=0.0)
    legend = plot.plotItem.legend
    height = plot.getViewBox().height()
    share = 0.0
    if legend is not None and height > 0:
        share = min((legend.boundingRect().height() + 12) / height, 0.6)
    plot.setYRange(0, (top or 1.0) * 1.1 / (1.0 - share), padding=0)


def _quantized(row: compare.RowResult) -> bool:
    try:
        return QuantSettings.from_dict(row.settings).quantized
    except NibbleError:
        return False


def _speed(row: compare.RowResult) -> str:
    """'31.6 tok/s', with the decode mode when it is not plain."""
    if not row.tokens_per_s:
        return "—"
    mode = "" if row.decode_mode == "plain" else f" · {row.decode_mode}"
    return f"{row.tokens_per_s:.1f} tok/s{mode}"
