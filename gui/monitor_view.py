"""The Monitor tab: live VRAM, RAM and CPU charts with event markers, and the
status-bar memory gauge.

Samples come from a SamplerWorker on its own thread (NVML calls can take
milliseconds); this module only appends them to ring buffers and redraws.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import (
    QBoxLayout,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from core import memory, monitor
from core.monitor import History, Marker, Sample
from core.units import format_bytes
from gui import workers

if TYPE_CHECKING:
    from gui.controller import Controller

logger = logging.getLogger(__name__)

GIB = float(2**30)
COLORS = ("#4C9BE8", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#76B7B2")
MEMORY_MEANING = "\n".join(
    (memory.ANON_MEANING, memory.FILE_MEANING, memory.RSS_MEANING)
)
MARKER_COLOR = "#9A9A9A"
# Heights a marker's label may take along its line (fractions from the bottom); the
# legend keeps the bottom left, so labels use the upper part.
LABEL_SLOTS = tuple(round(0.95 - 0.05 * i, 2) for i in range(11))
LABEL_PAD_PX = 3
STACK_BELOW_PX = 820

# What the window's signals mean on the time line.
LOAD_STARTED = "Load started"
LOAD_FINISHED = "Load finished"
FIRST_TOKEN = "First token"
GENERATION_FINISHED = "Generation finished"
UNLOADED = "Unloaded"
_SHORT = {
    LOAD_STARTED: "load",
    LOAD_FINISHED: "loaded",
    FIRST_TOKEN: "1st token",
    GENERATION_FINISHED: "done",
    UNLOADED: "unload",
}


def batch_marker_label(running: int, waiting: int) -> str:
    """'Batch 3' (answers decoding together), '+2 waiting' when some wait."""
    return f"Batch {running}" + (f" +{waiting} waiting" if waiting else "")


def _color(index: int) -> str:
    return COLORS[index % len(COLORS)]


class Chart(pg.PlotWidget):
    """One plot: named curves over seconds since the monitor started, plus markers."""

    def __init__(self, title: str, unit: str, y_max: float | None = None) -> None:
        super().__init__(axisItems={"bottom": pg.DateAxisItem(orientation="bottom")})
        self.base_title = title
        self.setTitle(title, size="9pt")
        # Clock time on the axis: x is seconds since the epoch.
        self.setLabel("left", unit)
        self.setClipToView(True)
        self.setDownsampling(auto=True, mode="peak")
        # Thin pens: a 1.5 px pen doubled the cost of a redraw (bench/monitor.py).
        # The charts follow the clock together; Pause freezes them for a closer look.
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.setMinimumHeight(140)
        self.plot_item = self.getPlotItem()
        # Bottom left: the event labels use the top of the chart.
        self.plot_item.addLegend(
            offset=(4, -4), labelTextSize="8pt", brush=pg.mkBrush("#000000a0")
        )
        self.y_max = y_max
        if y_max is not None:
            self.setYRange(0, y_max, padding=0.02)
        else:
            self.plot_item.disableAutoRange(axis="y")
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.sources: dict[str, tuple[str, float]] = {}
        self.marker_lines: list[pg.InfiniteLine] = []
        self.label_rects: list[QRectF] = []  # where the shown labels sit, in pixels

    def add_curve(
        self,
        key: str,
        name: str,
        column: str,
        scale: float = 1.0,
        color: str = COLORS[0],
        style: str = "solid",
        fill: bool = False,
    ) -> None:
        """A curve named `name` drawing History column `column` divided by `scale`."""
        pen = pg.mkPen(
            color,
            width=1,
            style={
                "solid": Qt.PenStyle.SolidLine,
                "dash": Qt.PenStyle.DashLine,
                "dot": Qt.PenStyle.DotLine,
            }[style],
        )
        kwargs: dict[str, Any] = {"pen": pen, "name": name}
        if fill:
            kwargs.update(fillLevel=0, brush=pg.mkBrush(color + "40"))
        self.curves[key] = self.plot(**kwargs)
        self.sources[key] = (column, scale)

    def redraw(self, x: np.ndarray, history: History, first: int) -> None:
        self.setXRange(x[0], max(x[-1], x[0] + 1.0), padding=0.01)
        top = 0.0
        for key, curve in self.curves.items():
            column, scale = self.sources[key]
            y = history.column(column)[first:] / scale
            # A reading that was not available (None) is skipped, not drawn as a gap.
            known = np.isfinite(y)
            curve.setData(x[known], y[known])
            if known.any():
                top = max(top, float(np.max(y[known])))
        if self.y_max is None:  # the axis follows what is drawn, from zero
            self.setYRange(0, top * 1.15 if top > 0 else 1.0, padding=0)
        if self.marker_lines:
            self.place_labels()

    def add_marker(self, x: float, label: str) -> pg.InfiniteLine:
        position = LABEL_SLOTS[0]  # place_labels moves it clear of the others
        line = pg.InfiniteLine(
            pos=x,
            angle=90,
            pen=pg.mkPen(MARKER_COLOR, width=1, style=Qt.PenStyle.DashLine),
            # The hover pen's width sets the line's hit area: a few pixels either side.
            hoverPen=pg.mkPen(MARKER_COLOR, width=10),
            label=label,
            labelOpts={
                "position": position,
                "color": MARKER_COLOR,
                "rotateAxis": (1, 0),
            },
        )
        line.setZValue(20)
        self.addItem(line, ignoreBounds=True)
        self.marker_lines.append(line)
        self.place_labels()
        return line

    def place_labels(self) -> None:
        """Give each marker's label the highest height where it stays inside the chart
        and clear of the labels placed before it; a label with no such height is
        hidden (its line and tooltip stay)."""
        vb = self.plot_item.vb
        box = vb.mapRectToDevice(vb.boundingRect())
        if box is None or box.height() <= 0:
            return
        (left, right), (bottom, top) = self.viewRange()
        placed: list[QRectF] = []
        for line in sorted(self.marker_lines, key=lambda item: item.value()):
            label = line.label
            if not left <= line.value() <= right:
                label.setVisible(False)
                continue
            label.setVisible(True)
            # The text runs along the line, centred on its position: in pixels it is
            # as wide as a line of text and as tall as the text is long.
            size = label.boundingRect()
            for slot in LABEL_SLOTS:
                at = vb.mapViewToDevice(
                    QPointF(line.value(), bottom + slot * (top - bottom))
                )
                rect = QRectF(
                    at.x() - size.height() / 2,
                    at.y() - size.width() / 2,
                    size.height(),
                    size.width(),
                )
                padded = rect.adjusted(
                    -LABEL_PAD_PX, -LABEL_PAD_PX, LABEL_PAD_PX, LABEL_PAD_PX
                )
                if box.contains(rect) and not any(padded.intersects(r) for r in placed):
                    label.setPosition(slot)
                    placed.append(rect)
                    break
            else:
                label.setVisible(False)
        self.label_rects = placed

    def clear_markers(self) -> None:
        for line in self.marker_lines:
            self.removeItem(line)
        self.marker_lines.clear()


@dataclass
class _MarkerEntry:
    marker: Marker
    sample: Sample | None = None
    lines: list[pg.InfiniteLine] = field(default_factory=list)
    tooltip: str = ""
    events: list[str] = field(default_factory=list)
    """The events one marker stands for, when a burst was merged into it."""


BURST_MS = 250
"""Events of one kind this close together share one marker (see add_marker_soon)."""
MAX_LISTED = 12


class MonitorView(QWidget):
    """Live charts of GPU and host memory with event markers.

    Parameters
    ----------
    controller
        Runs the sampling job and says when loads and answers happen (markers);
        None for a view that is fed samples by hand.
    interval
        Seconds between samples (0.25 to 5).
    nvml
        The NVML binding the sampler uses; None means nvidia-ml-py.
    autostart
        Start sampling right away (with a controller); tests feed `show_sample`.
    """

    sampled = Signal(object)

    def __init__(
        self,
        controller: Controller | None = None,
        parent: QWidget | None = None,
        interval: float = 1.0,
        nvml: Any = None,
        autostart: bool = True,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.interval = monitor.check_interval(interval)
        self.nvml = nvml
        self.history = History()
        self.t0 = time.time()
        self.paused = False
        self.markers: list[_MarkerEntry] = []
        self._batch_marked = 0  # the latest batch size reported
        self._batch_drawn = 0  # the batch size the last batch marker shows
        # Bursts of events (a server's requests, batch changes) wait here for one
        # marker each (add_marker_soon).
        self._pending: dict[str, list[Marker]] = {}
        self._burst = QTimer(self)
        self._burst.setSingleShot(True)
        self._burst.setInterval(BURST_MS)
        self._burst.timeout.connect(self._flush_bursts)
        self.worker: workers.SamplerWorker | None = None
        self.gpu_indices: list[int] | None = None
        self.gpu_reason: str | None = None
        self._cpu_count = _cpu_count()
        self._build()
        if controller is not None:
            controller.load_started.connect(self.mark_load_started)
            controller.model_loaded.connect(self.mark_loaded)
            controller.first_token.connect(self.mark_first_token)
            controller.answer_finished.connect(self.mark_generation_finished)
            controller.model_unloaded.connect(self.mark_unloaded)
            if autostart:
                self.start()

    # -- layout --

    def _build(self) -> None:
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.setToolTip("Freeze the charts; sampling goes on")
        self.pause_button.toggled.connect(self.set_paused)
        self.interval_box = QDoubleSpinBox()
        self.interval_box.setRange(monitor.MIN_INTERVAL_S, monitor.MAX_INTERVAL_S)
        self.interval_box.setSingleStep(0.25)
        self.interval_box.setDecimals(2)
        self.interval_box.setSuffix(" s")
        self.interval_box.setValue(self.interval)
        self.interval_box.setToolTip("Time between samples")
        self.interval_box.valueChanged.connect(self.set_interval)
        self.clear_button = QPushButton("Clear markers")
        self.clear_button.clicked.connect(self.clear_markers)
        self.status_label = QLabel("Waiting for the first sample…")
        # Long status text must not widen the tab beyond the window: it wraps.
        self.status_label.setSizePolicy(
            QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred
        )
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
        )

        bar = QHBoxLayout()
        bar.addWidget(self.pause_button)
        bar.addWidget(QLabel("Interval"))
        bar.addWidget(self.interval_box)
        bar.addWidget(self.clear_button)
        bar.addSpacing(12)
        bar.addWidget(self.status_label, 1)

        self.gpu_reason_label = QLabel("Looking for NVIDIA GPUs…")
        self.gpu_reason_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.gpu_reason_label.setWordWrap(True)
        # One line until GPUs are found: no empty chart area on a machine without.
        self.gpu_charts = QWidget()
        self.gpu_stack = QStackedWidget()
        self.gpu_stack.addWidget(self.gpu_reason_label)
        self.gpu_stack.addWidget(self.gpu_charts)
        self.gpu_stack.setSizePolicy(
            QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding
        )

        self.vram_chart = Chart("VRAM", "GiB")
        self.util_chart = Chart("Utilization", "%", y_max=100)
        self.temp_chart = Chart("Temperature", "°C")
        self.power_chart = Chart("Power", "W")
        grid = QGridLayout(self.gpu_charts)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.vram_chart, 0, 0, 1, 3)
        grid.addWidget(self.util_chart, 1, 0)
        grid.addWidget(self.temp_chart, 1, 1)
        grid.addWidget(self.power_chart, 1, 2)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(1, 2)

        self.ram_chart = Chart("Host RAM", "GiB")
        self.ram_chart.add_curve("used", "used", "ram_used", GIB, COLORS[0])
        self.ram_chart.add_curve(
            "total", "total", "ram_total", GIB, COLORS[0], style="dash"
        )
        self.ram_chart.add_curve(
            "rss", "Nibble RSS", "process_rss", GIB, COLORS[1], fill=True
        )
        self.ram_chart.add_curve(
            "anon", "Nibble anonymous", "process_anon", GIB, COLORS[2]
        )
        self.ram_chart.add_curve(
            "file", "Nibble file-backed", "process_file", GIB, COLORS[2], style="dash"
        )
        self.ram_chart.setToolTip(MEMORY_MEANING)
        self.cpu_chart = Chart("CPU", f"% of {self._cpu_count} cores", y_max=100)
        self.cpu_chart.add_curve("cpu", "machine", "cpu_percent", 1.0, COLORS[0])
        self.cpu_chart.add_curve(
            "process",
            "Nibble",
            "process_cpu_percent",
            float(self._cpu_count),
            COLORS[1],
            fill=True,
        )
        host = self.host_layout = QBoxLayout(QBoxLayout.Direction.LeftToRight)
        host.addWidget(self.ram_chart, 1)
        host.addWidget(self.cpu_chart, 1)

        layout = self.main_layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.gpu_stack, 0)
        self.gpu_stack.setMaximumHeight(self.gpu_reason_label.sizeHint().height() + 24)
        layout.addLayout(host, 2)
        self.memory_note = QLabel(memory.MEANING_LINE)
        self.memory_note.setObjectName("monitorMemoryNote")
        self.memory_note.setEnabled(False)  # drawn as a quiet caption
        # Wrapped, so the caption never sets the tab's (and the window's) width.
        self.memory_note.setWordWrap(True)
        layout.addWidget(self.memory_note)

    def charts(self) -> list[Chart]:
        """Every chart, host charts first."""
        return [
            self.ram_chart,
            self.cpu_chart,
            self.vram_chart,
            self.util_chart,
            self.temp_chart,
            self.power_chart,
        ]

    def _build_gpu_curves(self, sample: Sample) -> None:
        self.gpu_indices = [g.index for g in sample.gpus]
        self.gpu_reason = sample.gpu_reason
        if not sample.gpus:
            reason = sample.gpu_reason or "No NVIDIA GPU found"
            self.gpu_reason_label.setText(
                f"<b>{reason}</b> · GPU charts need an NVIDIA GPU and its driver; "
                "the host charts below keep running."
            )
            self.gpu_stack.setCurrentWidget(self.gpu_reason_label)
            # A line of text, not a chart: give the room to the host charts.
            self.gpu_stack.setMaximumHeight(
                self.gpu_reason_label.sizeHint().height() + 24
            )
            self.main_layout.setStretch(1, 0)
            return
        for g in sample.gpus:
            i, color, key = g.index, _color(g.index), f"gpu{g.index}"
            vram = self.vram_chart
            vram.add_curve(
                f"{key}.used", f"GPU{i} used", f"{key}.memory_used", GIB, color
            )
            vram.add_curve(
                f"{key}.total",
                f"GPU{i} total",
                f"{key}.memory_total",
                GIB,
                color,
                style="dash",
            )
            vram.add_curve(
                f"{key}.ours",
                f"GPU{i} Nibble",
                f"{key}.process_memory",
                GIB,
                color,
                fill=True,
            )
            vram.add_curve(
                f"{key}.reserved",
                f"GPU{i} torch reserved",
                f"{key}.torch_reserved",
                GIB,
                color,
                style="dot",
            )
            self.util_chart.add_curve(key, f"GPU{i}", f"{key}.utilization", 1.0, color)
            self.temp_chart.add_curve(key, f"GPU{i}", f"{key}.temperature", 1.0, color)
            self.power_chart.add_curve(key, f"GPU{i}", f"{key}.power_w", 1.0, color)
            self.power_chart.add_curve(
                f"{key}.limit",
                f"GPU{i} limit",
                f"{key}.power_limit_w",
                1.0,
                color,
                style="dash",
            )
        # One legend column per GPU keeps the VRAM legend short.
        self.vram_chart.plot_item.legend.setColumnCount(len(sample.gpus))
        self.gpu_stack.setCurrentWidget(self.gpu_charts)
        self.gpu_stack.setMaximumHeight(16777215)
        self.main_layout.setStretch(1, 3)

    # -- sampling --

    def start(self) -> None:
        """Start sampling as the controller's job (no-op when running)."""
        if self.worker is not None or self.controller is None:
            return
        sampler = monitor.Sampler(nvml=self.nvml)
        worker = self.controller.sample(sampler, self.interval)
        worker.sampled.connect(self.show_sample)
        worker.finished.connect(self._worker_finished)
        self.worker = worker

    def stop(self, timeout_ms: int = 2000) -> None:
        """Stop sampling and wait for the worker thread."""
        worker, self.worker = self.worker, None
        if worker is not None:
            workers.stop_all([worker], timeout_ms)

    @Slot()
    def _worker_finished(self) -> None:
        if self.sender() is self.worker:
            self.worker = None

    @Slot(object)
    def show_sample(self, sample: Sample) -> None:
        """Append one sample; redraw unless paused."""
        if self.gpu_indices is None:
            self._build_gpu_curves(sample)
        self.history.append(sample)
        self._resolve_markers(sample)
        self.sampled.emit(sample)
        # A hidden tab costs nothing to keep: it redraws when it is shown again.
        if not self.paused and self.isVisible():
            self.redraw()

    def redraw(self) -> None:
        """Draw the last ten minutes of history and the current values."""
        if not len(self.history):
            return
        times = self.history.times()
        first = int(np.searchsorted(times, times[-1] - monitor.HISTORY_S))
        x = times[first:]
        for chart in self.charts():
            chart.redraw(x, self.history, first)
        self._update_titles()

    def _update_titles(self) -> None:
        sample = self.history.last
        if sample is None:
            return
        host = sample.host
        ours = format_bytes(host.process_rss)
        if host.process_anon is not None:
            ours = f"{format_bytes(host.process_anon)} anon of {ours} RSS"
        self.ram_chart.setTitle(
            f"RAM · {format_bytes(host.ram_used)} used · Nibble {ours}",
            size="9pt",
        )
        if host.cpu_percent is not None and host.process_cpu_percent is not None:
            self.cpu_chart.setTitle(
                f"{self.cpu_chart.base_title} · {host.cpu_percent:.0f}%"
                f" · Nibble {host.process_cpu_percent / 100:.2f} cores",
                size="9pt",
            )
        if sample.gpus:
            self.vram_chart.setTitle(
                "VRAM · " + " · ".join(_vram_text(g) for g in sample.gpus), size="9pt"
            )
            for chart, attr, fmt in (
                (self.util_chart, "utilization", "{:.0f}%"),
                (self.temp_chart, "temperature", "{:.0f} °C"),
                (self.power_chart, "power_w", "{:.0f} W"),
            ):
                values = [
                    f"GPU{g.index} " + fmt.format(getattr(g, attr))
                    for g in sample.gpus
                    if getattr(g, attr) is not None
                ]
                title = chart.base_title
                chart.setTitle(
                    " · ".join([title, *values]) if values else f"{title} · n/a",
                    size="9pt",
                )
        state = "Paused" if self.paused else f"Every {self.interval:g} s"
        self.status_label.setText(
            f"{state} · {len(self.history)} samples · last 10 min"
        )

    @Slot(bool)
    def set_paused(self, paused: bool) -> None:
        """Freeze (or thaw) the charts; samples keep filling the history."""
        self.paused = paused
        self.pause_button.blockSignals(True)
        self.pause_button.setChecked(paused)
        self.pause_button.blockSignals(False)
        self.pause_button.setText("Resume" if paused else "Pause")
        if not paused:
            self.redraw()
        else:
            self._update_titles()

    @Slot(float)
    def set_interval(self, seconds: float) -> None:
        """Sample every `seconds` (0.25 to 5)."""
        self.interval = monitor.check_interval(seconds)
        if self.interval_box.value() != self.interval:
            self.interval_box.setValue(self.interval)
        if self.worker is not None:
            self.worker.set_interval(self.interval)

    # -- markers --

    def add_marker(
        self, label: str, at: float | None = None, events: list[str] | None = None
    ) -> Marker:
        """Mark an event on every chart; its memory numbers come from the next
        sample, which is taken at once. `events`: the events a merged marker
        stands for (its tooltip lists them)."""
        marker = Marker(time.time() if at is None else at, label)
        entry = _MarkerEntry(marker, events=list(events or []))
        x = marker.time
        short = _SHORT.get(label, label)
        entry.lines = [chart.add_marker(x, short) for chart in self.charts()]
        self.markers.append(entry)
        last = self.history.last
        if last is not None and last.time >= marker.time:
            entry.sample = last
        self._update_tooltip(len(self.markers) - 1)
        if self.worker is not None:
            self.worker.sample_now()
        return marker

    def add_marker_soon(
        self, label: str, at: float | None = None, kind: str = ""
    ) -> None:
        """Mark an event that comes in bursts: the events of one kind within
        BURST_MS share one marker ("API chat 37+64 tok +7 more", every event in
        its tooltip). Eight clients ending together drew sixteen markers on six
        charts at about 6 ms each, and the window stalled for a tenth of a second.
        A "batch" burst keeps its last state, the one the batch ended in."""
        self._pending.setdefault(kind, []).append(
            Marker(time.time() if at is None else at, label)
        )
        if not self._burst.isActive():
            self._burst.start()

    def _flush_bursts(self) -> None:
        pending, self._pending = self._pending, {}
        for kind, events in pending.items():
            if kind == "batch":
                if self._batch_marked == self._batch_drawn:
                    continue  # the burst ended where the last marker stands
                self._batch_drawn = self._batch_marked
                label = events[-1].label
            elif len(events) == 1:
                label = events[0].label
            else:
                label = f"{events[0].label} +{len(events) - 1} more"
            self.add_marker(
                label,
                at=events[0].time,
                events=[e.label for e in events] if len(events) > 1 else [],
            )

    def clear_markers(self) -> None:
        for chart in self.charts():
            chart.clear_markers()
        self.markers.clear()

    def _resolve_markers(self, sample: Sample) -> None:
        for i, entry in enumerate(self.markers):
            if entry.sample is None and entry.marker.time <= sample.time:
                entry.sample = sample
                self._update_tooltip(i)
                if i + 1 < len(self.markers):
                    self._update_tooltip(i + 1)

    def _update_tooltip(self, i: int) -> None:
        entry = self.markers[i]
        text = marker_tooltip(
            entry.marker,
            entry.sample,
            self.markers[i - 1].marker if i else None,
            self.markers[i - 1].sample if i else None,
            self.t0,
        )
        if entry.events:
            listed = entry.events[:MAX_LISTED]
            more = len(entry.events) - len(listed)
            text += f"\n{len(entry.events)} events:\n" + "\n".join(listed)
            text += f"\n… and {more} more" if more else ""
        entry.tooltip = text
        for line in entry.lines:
            line.setToolTip(text)

    # -- hooks for the window's signals --

    @Slot(int, int)
    def mark_batch(self, running: int, waiting: int) -> None:
        """Mark a change of how many answers decode together (not of the waiting
        count alone, which would crowd the charts)."""
        if running == self._batch_marked:
            return
        self._batch_marked = running
        self.add_marker_soon(batch_marker_label(running, waiting), kind="batch")

    @Slot()
    def mark_load_started(self, *_args: object) -> None:
        self.add_marker(LOAD_STARTED)

    @Slot(object)
    def mark_loaded(self, _loaded: object = None) -> None:
        self.add_marker(LOAD_FINISHED)

    @Slot()
    def mark_first_token(self) -> None:
        self.add_marker(FIRST_TOKEN)

    @Slot(object)
    def mark_generation_finished(self, _stats: object = None) -> None:
        self.add_marker(GENERATION_FINISHED)

    @Slot()
    def mark_unloaded(self) -> None:
        self.add_marker(UNLOADED)

    def resizeEvent(self, event: Any) -> None:
        # Side by side the host charts' titles need room; narrow tabs stack them.
        narrow = event.size().width() < STACK_BELOW_PX
        self.host_layout.setDirection(
            QBoxLayout.Direction.TopToBottom
            if narrow
            else QBoxLayout.Direction.LeftToRight
        )
        super().resizeEvent(event)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if not self.paused:
            self.redraw()


def marker_tooltip(
    marker: Marker,
    sample: Sample | None,
    previous: Marker | None,
    previous_sample: Sample | None,
    t0: float,
) -> str:
    """What hovering a marker shows: the memory change since the previous marker."""
    # The axis shows the clock, so the tooltip does too (seconds since the start
    # of the monitor matched nothing on screen).
    clock = time.strftime("%H:%M:%S", time.localtime(marker.time))
    head = f"{marker.label} at {clock}"
    if sample is None:
        return f"{head}\n(memory numbers arrive with the next sample)"
    if previous is None or previous_sample is None:
        lines = [
            f"GPU{g.index} VRAM (ours) {format_bytes(g.process_memory)}"
            for g in sample.gpus
        ]
        lines.append(f"Process RSS {format_bytes(sample.host.process_rss)}")
        lines.append(f"Host RAM used {format_bytes(sample.host.ram_used)}")
        return "\n".join([head, *lines])
    delta = monitor.memory_delta(previous_sample, sample)
    since = f"since {previous.label} ({marker.time - previous.time:.1f} s earlier):"
    return "\n".join([head, since, *delta.lines()])


def _vram_text(g: monitor.GpuSample) -> str:
    text = (
        f"GPU{g.index} {format_bytes(g.memory_used)} / {format_bytes(g.memory_total)}"
    )
    if g.process_memory is not None:
        text += f" (Nibble {format_bytes(g.process_memory)})"
    return text


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _compact(used: float | None, total: float | None) -> str:
    """'1.2/80.0 GiB': both numbers in the unit of the total."""
    if used is None or not total:
        return "—"
    unit, scale = "GiB", GIB
    if total < GIB:
        unit, scale = "MiB", float(2**20)
    return f"{used / scale:.1f}/{total / scale:.1f} {unit}"


class MemoryGauge(QWidget):
    """A compact VRAM / RAM gauge for the status bar; click it to open the charts."""

    clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.vram_label = QLabel("VRAM")
        self.vram_bar = _small_bar()
        self.ram_label = QLabel("RAM")
        self.ram_bar = _small_bar()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        layout.setSpacing(4)
        for widget in (self.vram_label, self.vram_bar, self.ram_label, self.ram_bar):
            layout.addWidget(widget)
        self.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Memory: waiting for the first sample")

    @Slot(object)
    def show_sample(self, sample: Sample) -> None:
        host = sample.host
        _set_bar(self.ram_bar, host.ram_used, host.ram_total)
        tips = [
            f"Host RAM {format_bytes(host.ram_used)} of {format_bytes(host.ram_total)}"
            f" · Nibble RSS {format_bytes(host.process_rss)}"
        ]
        if host.process_anon is not None and host.process_file is not None:
            tips.append(
                f"Nibble anonymous {format_bytes(host.process_anon)} · file-backed "
                f"{format_bytes(host.process_file)}"
            )
        if sample.gpus:
            used = _sum(g.memory_used for g in sample.gpus)
            total = _sum(g.memory_total for g in sample.gpus)
            _set_bar(self.vram_bar, used, total)
            self.vram_bar.setVisible(True)
            self.vram_label.setText("VRAM" if len(sample.gpus) == 1 else "VRAM Σ")
            self.vram_label.setEnabled(True)
            tips[:0] = [g.summary() for g in sample.gpus]
        else:
            self.vram_bar.setVisible(False)
            self.vram_label.setText("No GPU")
            self.vram_label.setEnabled(False)
            tips.insert(0, f"GPU: {sample.gpu_reason or 'No NVIDIA GPU found'}")
        self.setToolTip("\n".join(tips))

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()
        super().mousePressEvent(event)


def _small_bar() -> QProgressBar:
    bar = QProgressBar()
    bar.setRange(0, 1000)
    bar.setFixedWidth(120)
    bar.setMaximumHeight(16)
    bar.setTextVisible(True)
    bar.setFormat("—")
    return bar


def _set_bar(bar: QProgressBar, used: float | None, total: float | None) -> None:
    fraction = used / total if used is not None and total else 0.0
    bar.setValue(round(min(max(fraction, 0.0), 1.0) * 1000))
    bar.setFormat(_compact(used, total))


def _sum(values: Any) -> float | None:
    items = list(values)
    return None if not items or any(v is None for v in items) else float(sum(items))
