"""The Monitor tab and the status-bar gauge: samples and markers reach the charts."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QHelpEvent
from PySide6.QtWidgets import QApplication, QToolTip

from core.monitor import GpuSample, HostSample, Sample
from gui import workers
from gui.monitor_view import (
    GIB,
    LOAD_FINISHED,
    LOAD_STARTED,
    Chart,
    MemoryGauge,
    MonitorView,
)

MIB = 2**20


def gpu_sample(t: float, ours: int, rss: int, util: float = 40.0) -> Sample:
    gpu = GpuSample(
        index=0,
        name="NVIDIA H100 80GB HBM3",
        memory_used=ours + 512 * MIB,
        memory_total=80 * GIB,
        process_memory=ours,
        utilization=util,
        temperature=51.0,
        power_w=210.0,
        power_limit_w=700.0,
        torch_allocated=ours // 2,
        torch_reserved=ours - 300 * MIB,
    )
    host = HostSample(6 * GIB, 32 * GIB, 25.0, rss, 150.0)
    return Sample(t, (gpu,), host)


def host_sample(t: float, rss: int = 200 * MIB) -> Sample:
    host = HostSample(3 * GIB, 16 * GIB, 12.0, rss, 80.0)
    return Sample(t, (), host, "No NVIDIA driver found")


def last_y(chart: Chart, key: str) -> float:
    return float(chart.curves[key].getOriginalDataset()[1][-1])


def hover_text(chart: Chart, x: float) -> str:
    """What a tooltip shows when the mouse rests on `chart` at time `x`."""
    QApplication.processEvents()  # lay the chart and its marker lines out
    view_box = chart.plot_item.vb
    y_low, y_high = view_box.viewRange()[1]
    scene = view_box.mapViewToScene(QPointF(x, (y_low + y_high) / 2))
    pos = chart.mapFromScene(scene)
    viewport = chart.viewport()
    QToolTip.hideText()
    event = QHelpEvent(QEvent.Type.ToolTip, pos, viewport.mapToGlobal(pos))
    QApplication.sendEvent(viewport, event)
    return QToolTip.text()


def test_gpu_samples_and_markers_reach_every_chart(qtbot) -> None:
    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.resize(1100, 800)
    view.show()
    qtbot.waitExposed(view)
    t0 = view.t0
    view.show_sample(gpu_sample(t0 + 1.0, ours=0, rss=300 * MIB))
    view.add_marker(LOAD_STARTED, at=t0 + 1.5)
    view.show_sample(gpu_sample(t0 + 1.6, ours=400 * MIB, rss=320 * MIB))
    view.show_sample(gpu_sample(t0 + 2.6, ours=GIB, rss=800 * MIB))
    view.add_marker(LOAD_FINISHED, at=t0 + 3.0)
    assert "arrive with the next sample" in view.markers[1].tooltip
    view.show_sample(gpu_sample(t0 + 3.2, ours=3 * GIB // 2, rss=900 * MIB, util=95))

    assert view.gpu_stack.currentWidget() is view.gpu_charts
    x, y = view.vram_chart.curves["gpu0.ours"].getOriginalDataset()
    assert np.allclose(x - view.t0, [1.0, 1.6, 2.6, 3.2])
    assert np.allclose(y, [0, 400 / 1024, 1.0, 1.5])
    assert last_y(view.vram_chart, "gpu0.total") == 80.0
    assert last_y(view.vram_chart, "gpu0.used") == pytest.approx(2.0)
    assert last_y(view.vram_chart, "gpu0.reserved") == pytest.approx(1.5 - 300 / 1024)
    assert last_y(view.util_chart, "gpu0") == 95.0
    assert last_y(view.temp_chart, "gpu0") == 51.0
    assert last_y(view.power_chart, "gpu0.limit") == 700.0
    assert last_y(view.ram_chart, "rss") == pytest.approx(900 / 1024)
    assert last_y(view.cpu_chart, "cpu") == 25.0
    # Process CPU is drawn as a share of all cores, like the machine's.
    assert last_y(view.cpu_chart, "process") == pytest.approx(150 / view._cpu_count)
    title = view.vram_chart.plot_item.titleLabel.text
    assert "GPU0 2.0 GiB / 80.0 GiB (Nibble 1.5 GiB)" in title
    assert "GPU0 95%" in view.util_chart.plot_item.titleLabel.text

    for chart in view.charts():
        assert [line.value() - view.t0 for line in chart.marker_lines] == [1.5, 3.0]
    tip = view.markers[1].tooltip
    clock = time.strftime("%H:%M:%S", time.localtime(view.t0 + 3.0))
    assert tip.splitlines()[:2] == [
        f"Load finished at {clock}",
        "since Load started (1.5 s earlier):",
    ]
    # From the sample after "started" (400 MiB, RSS 320) to the one after "finished".
    assert "GPU0 VRAM (ours) +1.1 GiB" in tip
    assert "Process RSS +580.0 MiB" in tip
    started = time.strftime("%H:%M:%S", time.localtime(view.t0 + 1.5))
    assert view.markers[0].tooltip.startswith(f"Load started at {started}\nGPU0 VRAM")
    for chart in (view.vram_chart, view.ram_chart):
        assert hover_text(chart, view.t0 + 3.0) == tip

    view.clear_markers()
    assert all(not chart.marker_lines for chart in view.charts())


def test_no_gpu_shows_the_reason_and_host_charts_run(qtbot) -> None:
    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.show()
    for i in range(3):
        view.show_sample(host_sample(view.t0 + i, rss=(200 + i) * MIB))
    assert view.gpu_stack.currentWidget() is view.gpu_reason_label
    assert "No NVIDIA driver found" in view.gpu_reason_label.text()
    assert view.gpu_reason_label.isVisible()
    assert view.vram_chart.curves == {}
    assert len(view.ram_chart.curves["used"].getOriginalDataset()[0]) == 3
    assert last_y(view.ram_chart, "rss") == pytest.approx(202 / 1024)
    view.add_marker("Unloaded", at=view.t0 + 2.5)
    view.show_sample(host_sample(view.t0 + 3, rss=150 * MIB))
    assert "Process RSS 150.0 MiB" in view.markers[0].tooltip


def test_pause_freezes_the_charts_not_the_history(qtbot) -> None:
    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.show()
    view.show_sample(host_sample(view.t0 + 1))
    view.pause_button.click()
    assert view.paused and view.pause_button.text() == "Resume"
    view.show_sample(host_sample(view.t0 + 2))
    view.show_sample(host_sample(view.t0 + 3))
    assert len(view.history) == 3
    assert len(view.ram_chart.curves["used"].getOriginalDataset()[0]) == 1
    view.pause_button.click()
    assert not view.paused and view.pause_button.text() == "Pause"
    assert len(view.ram_chart.curves["used"].getOriginalDataset()[0]) == 3


def test_history_shows_the_last_ten_minutes(qtbot) -> None:
    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.show()
    for t in range(0, 700, 5):
        view.show_sample(host_sample(view.t0 + t))
    x, _ = view.ram_chart.curves["used"].getOriginalDataset()
    assert x[0] - view.t0 == 95 and x[-1] - view.t0 == 695


def test_a_hidden_view_redraws_when_shown(qtbot) -> None:
    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    for t in range(3):
        view.show_sample(host_sample(view.t0 + t))
    assert view.ram_chart.curves["used"].getOriginalDataset()[0] is None
    view.show()
    assert len(view.ram_chart.curves["used"].getOriginalDataset()[0]) == 3


def test_real_sampling_thread_feeds_view_and_gauge(qtbot) -> None:
    from gui.controller import Controller

    view = MonitorView(Controller(), interval=0.25)
    qtbot.addWidget(view)
    gauge = MemoryGauge()
    qtbot.addWidget(gauge)
    view.sampled.connect(gauge.show_sample)
    with qtbot.waitSignal(view.sampled, timeout=5000):
        pass
    assert view.worker is not None and view.worker.interval == 0.25
    view.interval_box.setValue(0.5)
    assert view.worker.interval == 0.5
    with qtbot.waitSignal(view.sampled, timeout=5000):
        view.add_marker(LOAD_STARTED)
    qtbot.waitUntil(lambda: view.markers[0].sample is not None, timeout=5000)
    assert len(view.history) >= 2
    assert "/" in gauge.ram_bar.format() and gauge.ram_bar.value() > 0
    assert "Host RAM" in gauge.toolTip()
    view.stop()
    assert view.worker is None


def test_gauge_with_and_without_gpu(qtbot) -> None:
    gauge = MemoryGauge()
    qtbot.addWidget(gauge)
    gauge.show()
    gauge.show_sample(gpu_sample(0.0, ours=GIB, rss=100 * MIB))
    assert gauge.vram_bar.isVisible() and gauge.vram_label.text() == "VRAM"
    assert gauge.vram_bar.format() == "1.5/80.0 GiB"
    assert gauge.vram_bar.value() == round(1.5 / 80 * 1000)
    assert gauge.ram_bar.format() == "6.0/32.0 GiB"
    assert gauge.toolTip().startswith("GPU0 NVIDIA H100 80GB HBM3 · VRAM 1.5 GiB")
    gauge.show_sample(host_sample(1.0))
    assert not gauge.vram_bar.isVisible() and gauge.vram_label.text() == "No GPU"
    assert gauge.toolTip().startswith("GPU: No NVIDIA driver found")
    with qtbot.waitSignal(gauge.clicked, timeout=1000):
        qtbot.mouseClick(gauge, Qt.MouseButton.LeftButton, pos=QPoint(2, 2))


def test_in_the_window_with_markers_from_the_controller(
    qtbot, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("NIBBLE_CONFIG_DIR", str(tmp_path))
    from gui.main_window import MainWindow

    window = MainWindow(auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    window.build_tabs()
    view = window.monitor_view
    view.set_interval(0.25)
    window.show()
    assert window.tabs.tabText(window.tabs.indexOf(view)) == "Monitor"
    gauge = window.memory_gauge
    assert gauge.isVisible() and gauge.window() is window
    with qtbot.waitSignal(view.sampled, timeout=5000):
        pass
    qtbot.mouseClick(gauge, Qt.MouseButton.LeftButton)
    assert window.tabs.currentWidget() is view
    window.close()
    assert workers.running_threads() == []


def test_markers_follow_the_controller(qtbot) -> None:
    from gui.controller import Controller

    c = Controller()
    view = MonitorView(c, interval=0.25)
    qtbot.addWidget(view)
    view.show()
    with qtbot.waitSignal(view.sampled, timeout=5000):
        pass
    # The controller emits these as a load and an answer go by.
    c.load_started.emit(object(), object())
    c.model_loaded.emit(object())
    c.first_token.emit()
    c.answer_finished.emit(object())
    c.model_unloaded.emit()
    labels = [entry.marker.label for entry in view.markers]
    assert labels == [
        "Load started",
        "Load finished",
        "First token",
        "Generation finished",
        "Unloaded",
    ]
    assert all(len(chart.marker_lines) == 5 for chart in view.charts())
    qtbot.waitUntil(lambda: view.markers[-1].sample is not None, timeout=5000)
    assert "since First token" in view.markers[3].tooltip
    assert c.stop_all(2.0)
    assert workers.running_threads() == []


def test_event_labels_do_not_overlap_and_axes_follow_the_data(qtbot) -> None:
    """Labels sat at one height over each other and the legend; RAM stayed scaled
    to old values; the axis showed seconds, not the clock."""
    import pyqtgraph as pg

    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.show()
    t0 = view.t0
    for i in range(4):
        view.show_sample(host_sample(t0 + i, rss=(200 + i) * MIB))
    for i, label in enumerate(("Load started", "Load finished", "First token")):
        view.add_marker(label, at=t0 + 1 + i * 0.1)
    positions = [line.label.orthoPos for line in view.ram_chart.marker_lines]
    assert len(set(positions)) == 3
    legend = view.ram_chart.plot_item.legend
    assert legend.opts["offset"][1] < 0  # anchored at the bottom, labels at the top
    assert min(positions) > 0.5
    assert isinstance(view.ram_chart.getAxis("bottom"), pg.DateAxisItem)
    top = view.ram_chart.viewRange()[1][1]
    drawn = max(
        float(np.nanmax(curve.getOriginalDataset()[1]))
        for curve in view.ram_chart.curves.values()
        if curve.getOriginalDataset()[1] is not None  # a series with nothing drawn
    )
    assert drawn < top <= drawn * 1.2


def test_no_gpu_leaves_no_empty_chart_area(qtbot) -> None:
    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.resize(900, 600)
    view.show()
    assert view.gpu_stack.maximumHeight() < 100  # before the first sample too
    view.show_sample(host_sample(view.t0 + 1))
    assert view.gpu_stack.height() < 100
    assert view.ram_chart.height() > 300


def test_anonymous_and_file_backed_memory_beside_rss(qtbot) -> None:
    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.show()
    for i in range(2):
        host = HostSample(
            3 * GIB, 16 * GIB, 12.0, 600 * MIB, 80.0, 180 * MIB, 420 * MIB
        )
        view.show_sample(Sample(view.t0 + i, (), host, "No NVIDIA driver found"))
    assert last_y(view.ram_chart, "anon") == pytest.approx(180 / 1024)
    assert last_y(view.ram_chart, "file") == pytest.approx(420 / 1024)
    assert "180.0 MiB anon of 600.0 MiB RSS" in view.ram_chart.plot_item.titleLabel.text
    note = view.memory_note.text()
    assert note.startswith("anonymous: memory only this process holds")
    assert "file-backed" in note and "RSS: both" in note
    view.add_marker("Loaded", at=view.t0 + 0.5)
    host = HostSample(3 * GIB, 16 * GIB, 12.0, 700 * MIB, 80.0, 230 * MIB, 470 * MIB)
    view.show_sample(Sample(view.t0 + 2, (), host, "No NVIDIA driver found"))
    view.add_marker("Unloaded", at=view.t0 + 2.5)
    view.show_sample(host_sample(view.t0 + 3))
    assert "Process anonymous" not in view.markers[1].tooltip  # no split: not shown
    gauge = MemoryGauge()
    qtbot.addWidget(gauge)
    gauge.show_sample(Sample(view.t0, (), host, "No NVIDIA driver found"))
    assert "Nibble anonymous 230.0 MiB · file-backed 470.0 MiB" in gauge.toolTip()


def test_close_markers_never_pile_their_labels(qtbot) -> None:
    """Labels of events close together piled into unreadable text, cut at the top."""
    view = MonitorView(autostart=False)
    qtbot.addWidget(view)
    view.resize(900, 600)
    view.show()
    qtbot.waitExposed(view)
    t0 = view.t0
    for i in range(30):
        view.show_sample(host_sample(t0 + i, rss=(200 + i) * MIB))
    labels = ("Load started", "Load finished", "First token", "Generation finished")
    for i in range(12):
        view.add_marker(labels[i % 4], at=t0 + 10 + i * 0.3)
    view.show_sample(host_sample(t0 + 31, rss=230 * MIB))
    chart = view.ram_chart
    rects = chart.label_rects
    shown = [line for line in chart.marker_lines if line.label.isVisible()]
    assert len(rects) == len(shown) >= 4
    box = chart.plot_item.vb.mapRectToDevice(chart.plot_item.vb.boundingRect())
    for i, rect in enumerate(rects):
        assert box.contains(rect)
        assert not any(rect.intersects(other) for other in rects[i + 1 :])
