"""The memory estimate beside the settings: every preset, the current row, a verdict.

The table is computed by a controller job (after the stack import finished); a
change while one runs is remembered and computed right after, so the table always
ends on the latest settings. After a load, an "estimated vs actual" line compares the
estimate with the loaded model's true bytes (and, on a GPU, torch and NVML), and a
loud warning appears when 4-bit or 8-bit was asked for but nothing was quantized.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.errors import NibbleError
from core.settings import PRESETS, LoadOptions, QuantSettings, preset_name_for
from core.units import format_bytes
from gui import workers

if TYPE_CHECKING:
    from gui.controller import Controller

logger = logging.getLogger(__name__)

# Verdict and Total first after the name, so a narrow column still shows them.
COLUMNS = (
    "Preset",
    "Verdict",
    "Total",
    "Load peak",
    "Weights",
    "Quant state",
    "KV cache",
    "Overhead",
)
# Shorter headers where the numbers are narrower than the name, so the added peak
# column does not widen the panel; the full name is the header's tooltip.
HEADERS = {"Quant state": "State", "KV cache": "KV", "Overhead": "Other"}
HEADER_TIPS = {
    "Total": "Weights + quantization state + KV cache + overhead, once loaded",
    "Load peak": "The most the load itself holds, before it settles; the verdict "
    "judges the higher of this and Total",
    "Quant state": "Quantization state: absmax and code per block of 64 weights",
    "KV cache": "KV cache for the context below",
    "Overhead": "Activations of one prefill, logits, a dequantized weight "
    "(+ the CUDA context on a GPU)",
}
VERDICT = COLUMNS.index("Verdict")
# Where the panel is narrower than the whole table, these columns hide, in this order,
# rather than show cut; each row's tooltip keeps every number.
HIDE_FIRST = ("Overhead", "KV cache", "Quant state", "Weights", "Load peak")
VERDICT_COLORS = {
    "fits": "#2e7d32",
    "fits with CPU offload": "#b26a00",
    "does not fit": "#c62828",
    "unknown": "#757575",
}
DEVICE_MAX_AGE_S = 5.0


class EstimateView(QWidget):
    """A table of every preset's footprint for the selected model, with verdicts.

    It follows the controller's selection, settings and loaded model, and runs its
    estimates as the controller's jobs (after the ML stack is imported).
    `estimated(Table)` is emitted each time the table is refreshed, and
    `model_bytes_known(QuantSettings, LoadOptions, int | None)` with what the model's
    weights need under the settings that table was computed for (the settings
    panel's memory-cap check reads it); `failed(NibbleError)` when the config cannot
    be read.
    """

    estimated = Signal(object)
    model_bytes_known = Signal(object, object, object)
    failed = Signal(object)

    def __init__(self, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.model: Any = None
        self.quant = QuantSettings()
        self.options = LoadOptions()
        self.table: Any = None
        self.device: Any = None
        self._device_at = 0.0
        self._worker: workers.FunctionWorker | None = None
        self._computing: tuple[QuantSettings, LoadOptions] | None = None
        self._pending = False
        self._loaded: Any = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)  # coalesce changes made in one event-loop turn
        self._timer.timeout.connect(self._start)

        title = QLabel("<b>Memory estimate</b>")
        self.context = QSpinBox()
        self.context.setRange(1, 1_048_576)
        self.context.setSingleStep(1024)
        self.context.setValue(4096)
        self.context.setSuffix(" tokens")
        self.context.setToolTip("Prompt + answer tokens held in the KV cache")
        self.context.valueChanged.connect(lambda _: self.refresh())
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(QLabel("Context"))
        head.addWidget(self.context)

        self.device_label = QLabel("Device: checking…")
        self.device_label.setWordWrap(True)
        self.grid = QTableWidget(0, len(COLUMNS))
        for column, name in enumerate(COLUMNS):
            header = QTableWidgetItem(HEADERS.get(name, name))
            header.setToolTip(HEADER_TIPS.get(name, ""))
            self.grid.setHorizontalHeaderItem(column, header)
        self.grid.verticalHeader().hide()
        # Compact rows: every preset shows without taking the settings' room.
        self.grid.verticalHeader().setMinimumSectionSize(
            self.fontMetrics().height() + 4
        )
        self.grid.verticalHeader().setDefaultSectionSize(
            self.fontMetrics().height() + 8
        )
        self.grid.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.grid.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.grid.horizontalHeader().setStretchLastSection(True)
        self.grid.setMinimumHeight(120)
        self.grid.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        # One Tab stop: Tab leaves the table, the arrows move inside it.
        self.grid.setTabKeyNavigation(False)
        self.status = QLabel("Pick a model to see what it needs.")
        self.status.setWordWrap(True)
        self.recommended = QLabel()
        # Whether the overhead and peak are learnt from this machine's loads.
        self.calibration = QLabel()
        self.calibration.setObjectName("hint")  # the app's dim text, legible in dark
        self.calibration.setWordWrap(True)
        small = QFont(self.calibration.font())
        if small.pointSizeF() > 0:
            small.setPointSizeF(small.pointSizeF() * 0.9)
        self.calibration.setFont(small)
        self.actual_label = QLabel()
        self.actual_label.setWordWrap(True)
        self.actual_label.hide()
        self.warning = QLabel()
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet(
            "QLabel { background: #c62828; color: white; font-weight: bold;"
            " padding: 6px; border-radius: 4px; }"
        )
        self.warning.hide()
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        self.notes.setObjectName("hint")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        layout.addLayout(head)
        layout.addWidget(self.device_label)
        layout.addWidget(self.grid)
        layout.addWidget(self.recommended)
        layout.addWidget(self.calibration)
        layout.addWidget(self.warning)
        layout.addWidget(self.actual_label)
        layout.addWidget(self.status)
        layout.addWidget(self.notes)
        layout.addStretch(1)

        self.quant, self.options = controller.quant, controller.options
        controller.model_selected.connect(self.set_model)
        controller.settings_changed.connect(self.on_settings_changed)
        controller.model_loaded.connect(self.show_loaded)
        controller.model_unloaded.connect(self.clear_loaded)

    # -- inputs --

    def set_model(self, model: Any) -> None:
        """Estimate `model` (a ModelRef, 'default', a folder or a config dict)."""
        self.model = model
        self.clear_loaded()
        self.refresh()

    def set_settings(self, quant: QuantSettings, options: LoadOptions) -> None:
        self.quant, self.options = quant, options
        self.refresh()

    def on_settings_changed(self, quant: QuantSettings, options: LoadOptions) -> None:
        """Slot for the controller's settings_changed(QuantSettings, LoadOptions)."""
        self.set_settings(quant, options)

    def set_context(self, tokens: int) -> None:
        self.context.setValue(tokens)

    def refresh(self) -> None:
        """Recompute soon (changes in the same event-loop turn are computed once)."""
        if self.model is None:
            return
        self._timer.start()

    # -- computing --

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _start(self) -> None:
        if self._worker is not None:
            self._pending = True
            return
        self._pending = False
        if time.monotonic() - self._device_at > DEVICE_MAX_AGE_S:
            self.device = None  # probe free memory again in the worker
        self._computing = (self.quant, self.options)
        worker = self.controller.estimate(
            self.model, self.quant, self.options, self.context.value(), self.device
        )
        worker.returned.connect(self._on_table)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        if self.table is None:
            self.status.setText("Estimating (waits for transformers to import)…")

    def _on_finished(self) -> None:
        self._worker = None
        if self._pending:
            self._start()

    def _on_error(self, exc: object) -> None:
        if isinstance(exc, NibbleError):
            text = exc.message + (f" — {exc.hint}" if exc.hint else "")
        else:
            text = f"The estimate failed: {exc}".splitlines()[0]
        self.grid.setRowCount(0)
        self.fit_columns()
        self.table = None
        self.recommended.clear()
        self.status.setText(text)
        self.failed.emit(exc)

    def _on_table(self, table: Any) -> None:
        if self.device is None:
            self._device_at = time.monotonic()
        self.device = table.device
        self.table = table
        self.device_label.setText(table.device.describe())
        self._fill(table)
        best = table.recommended
        self.recommended.setText(
            f"Recommended: <b>{best}</b> (the highest quality that fits)"
            if best
            else "<b>No preset fits</b> this device at this context length."
        )
        current = table.current
        self.calibration.setText(f"Overhead and peak: {table.calibration_text}")
        self.calibration.setToolTip(_calibration_tip(table.calibration))
        self.status.setText(f"Current settings: {current.verdict_text}")
        notes = table.notes
        self.notes.setText("\n".join(notes))
        self.notes.setToolTip(table.to_dict()["overhead"])
        self._update_actual()
        self.estimated.emit(table)
        if self._computing is not None:
            self.model_bytes_known.emit(*self._computing, table.current.model_bytes)

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.fit_columns()

    def full_width(self) -> int:
        """The width the table needs to show every column whole."""
        grid = self.grid
        widths = sum(self._column_width(c) for c in range(grid.columnCount()))
        return (
            widths + 2 * grid.frameWidth() + grid.verticalScrollBar().sizeHint().width()
        )

    def _column_width(self, column: int) -> int:
        grid = self.grid
        return max(
            grid.horizontalHeader().sectionSizeHint(column),
            grid.sizeHintForColumn(column),
        )

    def fit_columns(self) -> None:
        """Show every row, and the columns that fit whole (the others hide)."""
        grid = self.grid
        room = grid.width() - 2 * grid.frameWidth()
        shown = list(range(grid.columnCount()))
        widths = {c: self._column_width(c) for c in shown}
        for name in HIDE_FIRST:
            if sum(widths[c] for c in shown) <= room:
                break
            shown.remove(COLUMNS.index(name))
        for column in range(grid.columnCount()):
            grid.setColumnHidden(column, column not in shown)
        top = grid.horizontalHeader()
        header = max(top.sizeHint().height(), top.height() if top.isVisible() else 0)
        rows = sum(grid.rowHeight(r) for r in range(grid.rowCount()))
        height = header + rows + 2 * grid.frameWidth()
        if sum(widths[c] for c in shown) > room:  # even the first three do not fit
            height += grid.horizontalScrollBar().sizeHint().height()
        grid.setFixedHeight(max(height, 120))

    @property
    def hidden_columns(self) -> list[str]:
        return [n for c, n in enumerate(COLUMNS) if self.grid.isColumnHidden(c)]

    def _fill(self, table: Any) -> None:
        matching = preset_name_for(self.quant, self.options.dtype)
        self.grid.setRowCount(len(table.rows))
        bold = QFont(self.font())
        bold.setBold(True)
        highlight = QColor(self.palette().highlight().color())
        highlight.setAlpha(60)
        for i, row in enumerate(table.rows):
            if row.preset == "current":
                name = (
                    f"Current ({PRESETS[matching].title} preset)"
                    if matching
                    else f"Current (custom {row.label})"
                )
            else:
                name = row.preset
            if row.preset == table.recommended:
                name += " ★"
            by_column = {
                "Preset": name,
                "Verdict": row.verdict,
                "Total": format_bytes(row.total_bytes),
                "Load peak": format_bytes(row.load_peak_bytes),
                "Weights": format_bytes(row.weights_bytes),
                "Quant state": format_bytes(row.quant_state_bytes),
                "KV cache": format_bytes(row.kv_cache_bytes),
                "Overhead": format_bytes(row.overhead_bytes),
            }
            current = row.preset in ("current", matching)
            for column, title in enumerate(COLUMNS):
                item = QTableWidgetItem(by_column[title])
                if column > VERDICT:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                item.setToolTip(_tooltip(row))
                if current:
                    item.setFont(bold)
                    item.setBackground(QBrush(highlight))
                self.grid.setItem(i, column, item)
            verdict = self.grid.item(i, VERDICT)
            verdict.setForeground(QBrush(QColor(VERDICT_COLORS[row.verdict])))
        self.fit_columns()

    # -- after a load --

    def show_loaded(self, loaded: Any) -> None:
        """Add the 'estimated vs actual' line for the model that was just loaded."""
        self._loaded = loaded
        self.device = None  # free memory just changed
        self._update_actual()
        self.refresh()

    def clear_loaded(self) -> None:
        self._loaded = None
        self.actual_label.hide()
        self.warning.hide()

    def _update_actual(self) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        from core.model import estimate

        row = self.table.current if self.table is not None else None
        same = (
            row is not None
            and loaded.quant == self.quant
            and loaded.options == self.options
        )
        real = estimate.actual(loaded, row if same else None)
        head = f"<b>Estimated vs actual</b> ({loaded.quant.label()}): "
        parts = [head + f"actual {format_bytes(real.true_bytes)}"]
        if real.estimated_bytes is not None:
            diff = real.difference or 0
            verdict = "exact" if diff == 0 else f"off by {diff:+,} B"
            parts.append(f"estimated {format_bytes(real.estimated_bytes)} ({verdict})")
        if real.torch_allocated_bytes is not None:
            parts.append(f"torch allocated {format_bytes(real.torch_allocated_bytes)}")
        if real.nvml_process_bytes is not None:
            parts.append(f"NVML process {format_bytes(real.nvml_process_bytes)}")
        self.actual_label.setText(" · ".join(parts))
        self.actual_label.show()
        self.warning.setText(f"⚠ {real.warning}" if real.warning else "")
        self.warning.setVisible(bool(real.warning))


def _calibration_tip(cal: Any) -> str:
    if cal is None or not cal.calibrated:
        return (
            "Every load is recorded beside its estimate in the local history; after "
            "3 loads on this device the overhead and the load peak are learnt from "
            "them (python main.py estimate MODEL --explain shows the records)."
        )
    return (
        f"From this machine's last {cal.loads} loads on {cal.device}: the load peak "
        f"{'+' if cal.peak_offset_bytes >= 0 else '-'}"
        f"{format_bytes(abs(cal.peak_offset_bytes))} over the formulas, once loaded "
        f"{'+' if cal.steady_offset_bytes >= 0 else '-'}"
        f"{format_bytes(abs(cal.steady_offset_bytes))}. ± is the largest miss "
        "predicting each load from the others."
    )


def _tooltip(row: Any) -> str:
    lines = [
        row.verdict_text,
        f"Total {format_bytes(row.total_bytes)} = weights "
        f"{format_bytes(row.weights_bytes)} + quant state "
        f"{format_bytes(row.quant_state_bytes)} + KV cache "
        f"{format_bytes(row.kv_cache_bytes)} + overhead "
        f"{format_bytes(row.overhead_bytes)}; load peak "
        f"{format_bytes(row.load_peak_bytes)}",
    ]
    if row.offload is not None:
        lines.append(f"max_memory = {row.offload.max_memory}")
    if row.breakdown:
        lines.append("")
        lines += [f"{kind}: {format_bytes(n)}" for kind, n in row.breakdown.items()]
    if row.quantized_modules:
        lines.append(f"{row.quantized_modules} Linear layers quantized")
    return "\n".join(lines)
