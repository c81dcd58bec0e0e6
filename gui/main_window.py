"""The main window: the frame that composes Nibble's typed views around one Controller.

Left to right: the model picker, the settings column (settings panel, memory estimate,
load bar) and the tabs (Chat, Monitor, Compare, Server). Every view gets the `controller` and
follows its signals; the window itself starts no thread and owns no state beyond the
layout. Adding a view is a few typed lines in `_build` (or `build_tabs` for views that
import pyqtgraph, which are built after the first paint):

    self.server_view = ServerView(self.controller)
    self.tabs.addTab(self.server_view, "Server")

A panel beside the chat goes into `chat_splitter` (``insertWidget(0, panel)``).

`first_painted()` is emitted once the window is on screen; the ML stack is imported
after it, then the last model loads again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QFrame,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.app import JobKind
from core.chat import Turn
from core.errors import NibbleError
from core.lab.report import model_id
from core.model.catalog import ModelRef
from core.model.loader import LoadedModel
from core.paths import config_dir
from core.settings import GenerationSettings, LoadOptions, QuantSettings
from core.store import session as session_mod
from core.store.provenance import quant_label
from core.units import format_bytes, format_seconds
from gui import chat_history, dialogs, hub_dialog
from gui.chat_view import ChatView, json_error_text
from gui.controller import CLOSE_DEADLINE_S, Controller
from gui.estimate_view import EstimateView
from gui.ladder_view import LadderView
from gui.load_bar import LoadBar
from gui.model_picker import ModelPicker
from gui.settings_panel import SettingsPanel

logger = logging.getLogger(__name__)

DEFAULT_SIZE = (1340, 720)  # fits a 1366×768 screen with its panel and title bar
NARROW_SCREEN = 1280  # px of available width below which the conversation list hides
EXPORTS = (
    ("&Export conversation as Markdown…", "md"),
    ("Export conversation as &JSON…", "json"),
    ("Export &all conversations…", "all"),
)

if TYPE_CHECKING:
    from gui.compare_view import CompareView
    from gui.monitor_view import MemoryGauge, MonitorView
    from gui.server_view import ServerView


class MainWindow(QMainWindow):
    """Nibble's window; see the module docstring for how views plug in."""

    first_painted = Signal()

    def __init__(
        self,
        session: session_mod.Session | None = None,
        notice: str | None = None,
        auto_start: bool = True,
        auto_load: bool = True,
    ) -> None:
        super().__init__()
        self.setWindowTitle("Nibble")
        self.controller = Controller(session, self)
        self._auto_start = auto_start
        self._auto_load = auto_load
        self._painted = False
        self.last_error: NibbleError | None = None
        self.error_box: QMessageBox | None = None
        self.monitor_view: MonitorView | None = None
        self.memory_gauge: MemoryGauge | None = None
        self.compare_view: CompareView | None = None
        self.server_view: ServerView | None = None
        self.closed_by_signal = 0
        """The signal that closed the window (close_for_signal), else 0."""
        self.history: chat_history.ChatHistory | None = None  # after the first paint
        self._switch_failed = ""  # the model a client's switch could not load
        self._picker_made_room = False
        self._build()
        self._connect()
        self._restore()
        self.installEventFilter(self)
        self.first_painted.connect(
            self.install_history, Qt.ConnectionType.QueuedConnection
        )
        if notice:
            QTimer.singleShot(0, self, lambda: self.show_notice(notice))

    def fit_middle_column(self) -> None:
        """Widen the settings column to what its fields need, taking it from the tabs,
        so no button or field is cut at the right (the tabs keep their minimum); and
        to the whole estimate table where the tabs keep half the window."""
        sizes = self.splitter.sizes()
        if len(sizes) != 3 or sum(sizes) == 0:
            return
        scrollbar = self.settings_scroll.verticalScrollBar().sizeHint().width()
        wanted = self.settings_panel.sizeHint().width() + scrollbar + 4
        spare = sizes[2] - self.tabs.minimumSizeHint().width()
        grow = max(0, min(wanted - sizes[1], spare))
        keep = max(self.tabs.minimumSizeHint().width(), sum(sizes) // 2)
        table = self.estimate_view.full_width() - sizes[1]
        grow = max(grow, min(table, sizes[2] - keep))
        if grow > 0:
            self.splitter.setSizes([sizes[0], sizes[1] + grow, sizes[2] - grow])

    def fit_estimate(self) -> None:
        """Give the estimate the height it needs to show every row and line (the
        settings above it scroll), as far as the column allows."""
        sizes = self.middle_splitter.sizes()
        view = self.estimate_view
        # Wrapped lines need more height in a narrow column than the size hint says.
        need = max(view.minimumSizeHint().height(), view.heightForWidth(view.width()))
        if len(sizes) == 2 and 0 < sizes[1] < need:
            total = sum(sizes)
            settings = self.settings_scroll.minimumSizeHint().height()
            below = min(need, total - settings)
            self.middle_splitter.setSizes([total - below, below])

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        if event.size().width() > event.oldSize().width():
            # Once the splitter has shared out the new width.
            QTimer.singleShot(0, self, self.fit_middle_column)
        QTimer.singleShot(0, self, self.fit_estimate)

    def _on_first_estimate(self, _table: Any) -> None:
        self.estimate_view.estimated.disconnect(self._on_first_estimate)
        QTimer.singleShot(0, self, self.fit_middle_column)

    # -- building --
    def _build(self) -> None:
        c = self.controller
        self.picker = ModelPicker()
        self.picker.setMinimumWidth(200)
        self.settings_panel = SettingsPanel()
        self.settings_scroll = QScrollArea()
        self.settings_scroll.setWidgetResizable(True)
        self.settings_scroll.setWidget(self.settings_panel)
        self.settings_scroll.setMinimumWidth(340)
        self.settings_scroll.setHorizontalScrollBarPolicy(
            Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        )
        self.estimate_view = EstimateView(c)
        self.ladder_view = LadderView(c, self.estimate_view)
        self.ladder_view.apply_requested.connect(self.apply_rung)
        self.applied_step: str | None = None

        self.load_bar = LoadBar()
        self.load_button = self.load_bar.load_button
        self.load_button.clicked.connect(lambda: self.request_load())
        self.load_bar.cancel_button.clicked.connect(self.cancel_load)
        self.load_label = self.load_bar.label

        middle = QWidget()
        column = QVBoxLayout(middle)
        column.setContentsMargins(0, 0, 0, 0)
        # The estimate shares the column with the settings; the user sets the split.
        self.middle_splitter = QSplitter(Qt.Orientation.Vertical)
        self.middle_splitter.setChildrenCollapsible(False)
        self.middle_splitter.addWidget(self.settings_scroll)
        self.middle_splitter.addWidget(self.estimate_view)
        self.middle_splitter.setStretchFactor(0, 3)
        self.middle_splitter.setStretchFactor(1, 2)
        column.addWidget(self.middle_splitter, 1)
        # Between the estimate's verdict and the load bar's error line: the ladder
        # appears where either says the model does not fit.
        column.addWidget(self.ladder_view)
        column.addWidget(self.load_bar)

        self.chat = ChatView()
        self.chat_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.chat_splitter.setChildrenCollapsible(False)
        self.chat_splitter.addWidget(self.chat)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.chat_splitter, "Chat")

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.picker)
        self.splitter.addWidget(middle)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setStretchFactor(2, 1)
        self.splitter.setSizes([230, 470, 640])
        self.splitter.setContentsMargins(6, 6, 6, 0)
        self.setCentralWidget(self.splitter)

        self.model_status = QLabel("No model loaded")
        self.device_status = QLabel("Loading libraries…")
        self.size_status = QLabel()
        self.speed_status = QLabel()
        self.speed_status.setMinimumWidth(80)
        self.statusBar().setStyleSheet("QStatusBar::item { border: none; }")
        for widget in (
            self.model_status,
            self.device_status,
            self.size_status,
            self.speed_status,
        ):
            widget.setContentsMargins(8, 0, 8, 0)
            if widget is not self.model_status:
                self.statusBar().addPermanentWidget(_separator())
            self.statusBar().addPermanentWidget(widget)
        self._speed_timer = QTimer(self)
        self._speed_timer.setInterval(250)
        self._speed_timer.timeout.connect(self._show_progress)
        self._build_menus()
        self.hub_dialog = hub_dialog.attach(self)
        self.resize(*default_size())

    def _build_menus(self) -> None:
        bar = self.menuBar()
        self.file_menu = bar.addMenu("&File")
        self.model_menu = bar.addMenu("&Model")
        self.view_menu = bar.addMenu("&View")
        self.help_menu = bar.addMenu("&Help")

        self.open_action = QAction("&Open model folder…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.picker.choose_folder)
        self.save_action = QAction("&Save quantized model…", self)
        self.save_action.setShortcut(QKeySequence("Ctrl+Shift+S"))
        self.save_action.setStatusTip(
            "Save the selected model, quantized, with a model card"
        )
        self.save_action.triggered.connect(self.open_export)
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        self.file_menu.addAction(self.open_action)
        self.file_menu.addAction(self.save_action)
        self.file_menu.addSeparator()
        self.export_actions: list[QAction] = []
        for title, kind in EXPORTS:
            action = QAction(title, self)
            action.triggered.connect(lambda _=False, k=kind: self.export_chat(k))
            self.file_menu.addAction(action)
            self.export_actions.append(action)
        self.file_menu.addSeparator()
        self.file_menu.addAction(quit_action)

        self.load_action = QAction("&Load", self)
        self.load_action.setShortcut(QKeySequence("Ctrl+L"))
        self.load_action.triggered.connect(lambda: self.request_load())
        self.unload_action = QAction("&Unload", self)
        self.unload_action.triggered.connect(self.unload)
        self.model_menu.addAction(self.load_action)
        self.model_menu.addAction(self.unload_action)
        self.model_menu.addMenu(self.settings_panel.presets_menu).setText("&Presets")
        self.compare_action = QAction("&Compare settings…", self)
        self.compare_action.setToolTip(
            "Measure presets side by side on the picked model"
        )
        self.compare_action.triggered.connect(self.show_compare)
        self.model_menu.addAction(self.compare_action)

        self.picker_action = QAction("&Model list", self, checkable=True, checked=True)
        self.picker_action.toggled.connect(self.picker.setVisible)
        self.view_menu.addAction(self.picker_action)
        self.list_action = QAction("&Conversation list", self, checkable=True)
        self.list_action.setEnabled(False)  # until the history is installed
        self.view_menu.addAction(self.list_action)

        self.report_action = QAction("&Report…", self)
        self.report_action.setStatusTip(
            "Settings, versions, hardware and measured numbers"
        )
        self.report_action.triggered.connect(self.open_report)
        about = QAction("&About Nibble", self)
        about.triggered.connect(self.show_about)
        self.help_menu.addAction(self.report_action)
        self.help_menu.addAction(about)
        # F10 opens the menu bar, as on other desktops; Alt+letter opens one menu.
        menu_key = QAction(self)
        menu_key.setShortcut(QKeySequence(Qt.Key.Key_F10))
        menu_key.triggered.connect(self._open_menu_bar)
        self.addAction(menu_key)

    def _open_menu_bar(self) -> None:
        bar = self.menuBar()
        bar.setFocus(Qt.FocusReason.ShortcutFocusReason)
        bar.setActiveAction(self.file_menu.menuAction())

    def menu(self, name: str) -> QMenu:
        """The File, Model, View or Help menu."""
        return {
            "File": self.file_menu,
            "Model": self.model_menu,
            "View": self.view_menu,
            "Help": self.help_menu,
        }[name]

    def _connect(self) -> None:
        c = self.controller
        self.picker.selected.connect(self.select_model)
        self.picker.picked.connect(self._on_picked)
        self.picker.folder_chosen.connect(self.open_location)
        self.picker.hub_id_entered.connect(self.open_location)
        self.settings_panel.changed.connect(c.set_settings)
        self.settings_panel.validity_changed.connect(lambda *_: self._update_actions())
        self.chat.question_asked.connect(self.ask)
        self.chat.regenerate_requested.connect(self.ask_again)
        self.chat.stop_requested.connect(c.stop_answer)

        c.libraries_ready.connect(self._on_libraries)
        c.libraries_failed.connect(self._on_libraries_failed)
        c.catalog_scanned.connect(self._on_catalog)
        c.resolve_started.connect(
            lambda text: self.load_label.setText(f"Checking {text}…")
        )
        c.resolve_failed.connect(self._on_resolve_failed)
        c.model_selected.connect(self._on_selected)
        c.modules_found.connect(self.settings_panel.set_module_names)
        self.estimate_view.model_bytes_known.connect(
            self.settings_panel.set_model_bytes
        )
        # The first table says how wide the estimate wants to be; each one (and a
        # load's "estimated vs actual") how tall.
        self.estimate_view.estimated.connect(self._on_first_estimate)
        self.estimate_view.estimated.connect(
            lambda _t: QTimer.singleShot(0, self, self.fit_estimate)
        )
        c.settings_changed.connect(lambda *_s: self._update_actions())
        c.load_started.connect(self._on_load_started)
        c.load_progressed.connect(self.load_bar.report)
        c.model_loaded.connect(self._on_loaded)
        c.load_failed.connect(self._on_load_failed)
        c.load_cancelled.connect(self._on_load_cancelled)
        c.model_unloaded.connect(self._on_unloaded)
        c.model_switched.connect(self._on_model_switched)
        c.answer_started.connect(self._on_answer_started)
        c.answer_chunk.connect(self.chat.append_chunk)
        c.answer_finished.connect(self._on_answer)
        c.answer_failed.connect(self._on_answer_failed)
        c.answer_aborted.connect(self._on_answer_aborted)
        c.chat_error.connect(self.show_error)
        c.compare_started.connect(self._update_actions)
        c.compare_ended.connect(self._update_actions)
        c.jobs_changed.connect(self._update_actions)

    def build_tabs(self) -> None:
        """Build the Monitor and Compare tabs (pyqtgraph): after the first paint."""
        if self.monitor_view is not None:
            return
        from gui.compare_view import CompareView
        from gui.monitor_view import MemoryGauge, MonitorView

        c = self.controller
        self.monitor_view = MonitorView(c)
        self.memory_gauge = MemoryGauge()
        self.monitor_view.sampled.connect(self.memory_gauge.show_sample)
        self.memory_gauge.clicked.connect(self.show_monitor)
        self.tabs.addTab(self.monitor_view, "Monitor")
        bar = self.statusBar()
        index = bar.layout().indexOf(self.model_status)
        bar.insertPermanentWidget(max(index - 1, 0), self.memory_gauge)
        bar.insertPermanentWidget(max(index, 0), _separator())
        self.compare_view = CompareView(c)
        self.tabs.addTab(self.compare_view, "Compare")
        from gui.server_view import ServerView, marker_label

        # The server answers through the chat's queue; a model change switches it.
        self.server_view = ServerView(c)
        self.server_view.request_logged.connect(
            lambda r: self.monitor_view.add_marker_soon(marker_label(r), r.time, "api")
        )
        self.server_view.batch_changed.connect(self.monitor_view.mark_batch)
        self.tabs.addTab(self.server_view, "Server")

    def show_monitor(self) -> None:
        self.build_tabs()
        self.tabs.setCurrentWidget(self.monitor_view)

    def show_compare(self) -> None:
        self.build_tabs()
        self.tabs.setCurrentWidget(self.compare_view)

    # -- start-up --
    def _restore(self) -> None:
        c = self.controller
        s = c.session
        self.settings_panel.set_settings(s.quant, s.options)
        self.settings_panel.set_model_name(model_id(c.selected_ref))
        self.chat.set_generation_settings(s.generation)
        self.chat.system_edit.setPlainText(s.system_prompt)
        self.chat.raw_check.setChecked(s.raw_mode)
        self.picker.set_default(
            ModelRef("default", c.selected_ref.name)
            if c.selected_ref.kind == "default"
            else session_mod.ref_from_dict(None)
        )
        self.picker.set_recent(s.recent_folders)
        self.estimate_view.set_model(c.selected_ref)
        qs = self._qsettings()
        geometry = qs.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        for key, splitter in (
            ("splitter", self.splitter),
            ("middle_splitter", self.middle_splitter),
        ):
            state = qs.value(key)
            if state is not None:
                splitter.restoreState(state)
        self._update_actions()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # Watches only for the first paint, then removes itself so that no later
        # paint needs Python (or the GIL a loading thread may hold).
        if watched is self and event.type() == QEvent.Type.Paint and not self._painted:
            self._painted = True
            self.removeEventFilter(self)
            self.first_painted.emit()
            if self._auto_start:
                # Heavy imports only after the window is on screen.
                QTimer.singleShot(0, self, self.start_background)
        return super().eventFilter(watched, event)

    def start_background(self) -> None:
        """Import the ML stack and scan the model catalog on workers; build the tabs."""
        self.controller.import_libraries()
        self.controller.scan_catalog()
        if self._auto_start:
            QTimer.singleShot(0, self, self.build_tabs)

    def _on_libraries(self, device: str) -> None:
        self.device_status.setText(device)
        if self.controller.machine is not None:
            self.settings_panel.set_machine(self.controller.machine)
        self._update_actions()
        if self._auto_load and self.controller.loaded is None:
            self.request_load()

    def _on_libraries_failed(self, exc: Exception) -> None:
        self.device_status.setText("Libraries failed to load")
        self.show_error(exc, "The ML libraries could not be imported")

    def _on_catalog(self, default: ModelRef | None, cache: list[ModelRef]) -> None:
        if default is not None:
            self.picker.set_default(default)
        self.picker.set_cache(cache)
        loaded = self.controller.loaded
        self.picker.mark_current(loaded.ref if loaded else None)

    # -- model choice --
    @property
    def loaded(self) -> Any:
        """The loaded model (the controller's), or None."""
        return self.controller.loaded

    @property
    def selected_ref(self) -> ModelRef:
        return self.controller.selected_ref

    def select_model(self, ref: ModelRef) -> None:
        self.controller.select(ref)

    def _on_selected(self, ref: ModelRef) -> None:
        self.settings_panel.set_model_name(model_id(ref))
        self.settings_panel.set_module_names([])
        self._update_actions()

    def _on_picked(self, ref: ModelRef) -> None:
        self.select_model(ref)
        self.request_load(ref)

    def open_location(self, text: str) -> None:
        """Check a folder or hub id off the UI thread, then select and load it."""
        self.controller.open_location(text)

    def _on_resolve_failed(self, exc: Exception) -> None:
        self.load_label.setText("")
        self.show_error(exc, "Cannot open that model")

    # -- loading --
    def current_settings(self) -> tuple[QuantSettings, LoadOptions] | None:
        """The panel's settings, or None while they are invalid."""
        try:
            return self.settings_panel.settings()
        except NibbleError:
            return None

    def request_load(self, ref: ModelRef | None = None) -> None:
        """Load `ref` (default: the selected model) with the panel's settings."""
        c = self.controller
        reason = c.load_blocker() or self.settings_panel.error
        if reason:
            self.load_label.setText(reason)
            return
        settings = self.current_settings()
        if settings is None:
            return
        c.quant, c.options = settings
        c.load(ref)

    def apply_rung(self, rung: Any) -> None:
        """Apply a rung of the ladder to the settings panel (and the model and
        context it names), then load, saying which step was taken."""
        c = self.controller
        reason = c.load_blocker()
        if reason:
            self.load_label.setText(reason)
            return
        if rung.step == "smaller" and isinstance(rung.model, ModelRef):
            self.select_model(rung.model)
        self.settings_panel.set_settings(rung.quant, rung.options)
        if rung.context != self.estimate_view.context.value():
            self.estimate_view.set_context(rung.context)
            self._cap_answer_length(rung.context)
        ladder = self.ladder_view.ladder
        number = ladder.rungs.index(rung) + 1 if ladder and rung in ladder.rungs else 0
        step = f"step {number}, " if number else ""
        self.applied_step = f"{step}{rung.title}"
        self.ladder_view.dismiss()
        self.request_load()
        if c.running(JobKind.LOAD) is not None:
            self.load_label.setText(
                f"Applied {self.applied_step} of the ladder; loading "
                f"{c.selected_ref.name}…"
            )
            self.statusBar().showMessage(f"Applied {self.applied_step}", 8000)
        else:
            self.applied_step = None

    def _cap_answer_length(self, context: int) -> None:
        """A shorter context also caps the answer's length (as --fit auto does)."""
        try:
            settings = self.chat.generation_settings()
        except NibbleError:
            return
        if settings.max_new_tokens > context:
            self.chat.set_generation_settings(
                dataclasses.replace(settings, max_new_tokens=context)
            )

    def cancel_load(self) -> None:
        self.controller.cancel_load()
        if self.controller.running(JobKind.LOAD) is not None:
            self.load_label.setText("Cancelling…")

    def _on_load_started(self, ref: ModelRef, quant: QuantSettings) -> None:
        self.load_bar.begin(
            f"Loading {ref.name}", f"Loading {ref.name} ({quant.label()})…"
        )
        self._update_actions()

    def _on_loaded(self, loaded: LoadedModel) -> None:
        self.load_bar.end()
        self._save_session()
        report = loaded.report
        from core.generation.decode import has_chat_template, model_decode_mode

        mode, why = model_decode_mode(loaded)
        self.model_status.setText(
            f"{loaded.ref.name} · {loaded.quant.label()} · {mode} decode"
        )
        self.model_status.setToolTip(
            f"{loaded.ref.path or loaded.ref.repo_id}\nDecode mode: {mode}"
            + (f" ({why})" if why else "")
        )
        self.device_status.setText(report.device)
        self.size_status.setText(format_bytes(report.true_bytes))
        self.size_status.setToolTip(
            "Actual size in memory: parameters, buffers and quantization state"
        )
        self.speed_status.setText("")
        text = f"Loaded {loaded.ref.name} in {format_seconds(report.load_s)}."
        if self.applied_step:
            text += f" Applied {self.applied_step} of the ladder."
            self.applied_step = None
        if report.warnings:
            text += " " + " ".join(f"⚠ {w}." for w in report.warnings)
        self.load_label.setText(text)
        self.picker.mark_current(loaded.ref)
        self.picker.set_recent(self.controller.session.recent_folders)
        self.chat.set_chat_template(has_chat_template(loaded.tokenizer))
        self.chat.set_model_name(loaded.ref.name)
        self._update_actions()
        # Ready to ask: typing goes to the message box, not to the model list.
        self.chat.input.setFocus(Qt.FocusReason.OtherFocusReason)

    def _on_load_failed(self, exc: Exception) -> None:
        self.applied_step = None
        loaded = self.controller.loaded
        kept = f" {loaded.ref.name} stays loaded." if loaded else ""
        self.load_bar.end(f"Load failed.{kept}")
        self.picker.set_recent(self.controller.session.recent_folders)
        self.show_error(exc, "Loading failed")
        self._update_actions()

    def _on_load_cancelled(self) -> None:
        self.applied_step = None
        loaded = self.controller.loaded
        kept = f" {loaded.ref.name} stays loaded." if loaded else ""
        self.load_bar.end(f"Load cancelled.{kept}")
        self._update_actions()

    def unload(self) -> None:
        """Drop the loaded model (not while it answers)."""
        loaded = self.controller.loaded
        name = loaded.ref.name if loaded is not None else ""
        if self.controller.unload():
            self.load_label.setText(f"Unloaded {name}.")

    def _on_unloaded(self) -> None:
        if self.controller.loaded is None:
            self.model_status.setText("No model loaded")
            self.model_status.setToolTip("")
            self.size_status.setText("")
            self.picker.mark_current(None)
            self.chat.set_model_name("")
        self.speed_status.setText("")
        self._update_actions()

    def _on_model_switched(self, state: str, name: str) -> None:
        """A server client switches the model: the window follows and says so (in
        the chat, as a notice line, and beside the load bar)."""
        loaded = self.controller.loaded
        text = ""
        if state == "loading":
            self.load_label.setText(f"A server client asked for {name}: loading it…")
        elif state == "loaded" and loaded is not None:
            self.settings_panel.set_settings(loaded.quant, loaded.options)
            what = f"{loaded.ref.name} ({quant_label(loaded.quant, loaded.options)})"
            if self._switch_failed:
                text = f"{what} is loaded again."
            else:
                text = f"A server client switched the model to {what}."
            self._switch_failed = ""
        elif state == "failed":
            self._switch_failed = name
            text = f"A server client asked for {name}, which could not be loaded."
        elif state == "unloaded":
            text = f"The server unloaded {name} after it idled."
        if text:
            self.load_label.setText(text)
            self.chat.add_notice(text)
        self._update_actions()

    # -- generation --
    def ask(self, question: str) -> Turn | None:
        """Answer the question the chat just showed (kept in the history once the
        history is installed, a moment after the first paint)."""
        settings = self._sampling()
        if settings is None:
            self.chat.drop_last_question()
            return None
        try:
            constraint = self.chat.reply_constraint()
        except NibbleError as exc:
            self.chat.drop_last_question()
            self._show_reply_error(exc)
            return None
        if self.history is not None:
            return self.history.ask(question, settings, constraint)
        try:
            return self.controller.ask(
                question,
                settings,
                raw=self.chat.raw_check.isChecked(),
                system=self.chat.system_edit.toPlainText(),
                constraint=constraint,
            )
        except NibbleError as exc:
            self.chat.drop_last_question()
            self.show_error(exc, "Cannot answer")
            return None

    def ask_again(self) -> Turn | None:
        """Answer the last question again (the chat's Regenerate)."""
        settings = self._sampling()
        if settings is None or self.history is None:
            return None
        try:
            constraint = self.chat.reply_constraint()
        except NibbleError as exc:
            self.history.render()  # the answers Regenerate dropped come back
            self._show_reply_error(exc)
            return None
        return self.history.ask_again(settings, constraint)

    def _show_reply_error(self, exc: NibbleError) -> None:
        """A schema "Reply as JSON" cannot use: its one line shows under the
        schema (the sampling section opens) and in the status bar."""
        self.chat.sampling_toggle.setChecked(True)
        self.statusBar().showMessage(json_error_text(exc), 10000)

    def _sampling(self) -> GenerationSettings | None:
        try:
            return self.chat.generation_settings()
        except NibbleError as exc:
            self.show_error(exc)
            return None

    def install_history(self) -> None:
        """The conversation list beside the chat; the last conversation reopened."""
        if self.history is not None:
            return
        history = chat_history.install(self)
        self.history = history
        # On a narrow screen the list starts hidden (View ▸ Conversation list shows
        # it), so the window still fits; the chat's Clear then starts a new one.
        screen = self.screen()
        narrow = (
            screen is not None and screen.availableGeometry().width() < NARROW_SCREEN
        )
        self.list_action.setEnabled(True)
        self.list_action.setChecked(not narrow)
        self.list_action.toggled.connect(self._show_conversation_list)
        self._show_conversation_list(not narrow)
        self.chat.clear_starts_new = True
        # The list's width comes out of the chat, not out of the settings column.
        self.fit_middle_column()
        history.notice.connect(self.show_notice)
        history.error.connect(self.show_error)
        history.status.connect(lambda text: self.statusBar().showMessage(text, 5000))

    def _show_conversation_list(self, shown: bool) -> None:
        if self.history is not None:
            self.history.list.setVisible(shown)
        self._fit_screen(shown)

    def _fit_screen(self, list_shown: bool) -> None:
        """Keep the window on its screen when the conversation list shows: where the
        panes' minimums would not fit, the model list makes room (and comes back when
        the conversation list hides)."""
        screen = self.screen()
        if screen is None:
            return
        room = screen.availableGeometry().width()
        if list_shown and self.picker_action.isChecked():
            self.layout().activate()
            if self.minimumSizeHint().width() > room:
                self._picker_made_room = True
                self.picker_action.setChecked(False)
                self.statusBar().showMessage(
                    "The model list is hidden to make room (View ▸ Model list).", 6000
                )
        elif not list_shown and self._picker_made_room:
            self._picker_made_room = False
            self.picker_action.setChecked(True)
        if self.width() > room:
            self.resize(room, self.height())

    def export_chat(self, kind: str) -> None:
        """File ▸ Export: the open conversation ('md', 'json') or all ('all')."""
        if self.history is None:
            self.statusBar().showMessage("The history is still opening.", 4000)
            return
        self.history.export_current(kind)

    def _on_answer_started(self, _turn: Turn) -> None:
        self.chat.begin_answer()
        self._show_progress()
        self._speed_timer.start()
        self._update_actions()

    def _on_answer(self, turn: Turn) -> None:
        self._speed_timer.stop()
        stats = turn.stats
        self.chat.end_answer(stats.summary() if stats else "")
        if stats is not None and stats.tokens_per_s:
            mode = getattr(stats, "decode_mode", "plain")
            self.speed_status.setText(f"{stats.tokens_per_s:.1f} tok/s · {mode}")
            note = getattr(stats, "decode_note", "")
            self.speed_status.setToolTip(
                f"Decode mode: {mode}" + (f" ({note})" if note else "")
            )
            if note:  # the asked-for mode was not used, or the step recompiled
                self.statusBar().showMessage(f"{note[:1].upper()}{note[1:]}.", 15000)
        else:
            self.speed_status.setText("")
        self._update_actions()

    def _on_answer_failed(self, _turn: Turn, exc: Exception) -> None:
        self._speed_timer.stop()
        error = exc if isinstance(exc, NibbleError) else NibbleError(str(exc))
        self.chat.end_answer(error=error)
        self.speed_status.setText("")
        self.show_error(exc, "Generation failed")
        self._update_actions()

    def _on_answer_aborted(self, _turn: Turn) -> None:
        self._speed_timer.stop()
        self.chat.end_answer("stopped")
        self._update_actions()

    def _show_progress(self) -> None:
        """Every 250 ms while answering: what the answer waits for, else the live
        speed from the generator's own token count (nothing is tokenized here)."""
        c = self.controller
        waiting = c.waiting_line()
        self.chat.set_waiting(waiting)
        if waiting:
            self.speed_status.setText(waiting)
            return
        speed = c.answer_speed()
        if speed is not None:
            self.speed_status.setText(f"{speed:.1f} tok/s")
        elif c.first_token_at is None:
            self.speed_status.setText("Thinking…")

    # -- state --
    def _update_actions(self) -> None:
        c = self.controller
        loading = c.running(JobKind.LOAD) is not None
        generating = c.running(JobKind.ANSWER) is not None
        reason = ""
        if not c.ready:
            reason = "Waiting for torch, transformers and bitsandbytes to import…"
        elif self.settings_panel.error:
            reason = self.settings_panel.error
        else:
            reason = c.load_blocker()
        self.load_button.setEnabled(not reason)
        differs = c.differs_from_loaded() and c.loaded.ref == c.selected_ref
        self.load_button.setText("Reload with these settings" if differs else "Load")
        self.load_button.setToolTip(reason or f"Load {c.selected_ref.name}")
        self.load_action.setEnabled(not reason)
        switching = c.app.switching
        self.unload_action.setEnabled(
            c.loaded is not None and not generating and not switching
        )
        if switching:
            chat_reason = f"Wait: the server is loading {switching} for a client."
        elif c.loaded is None:
            chat_reason = "Load a model first."
        elif loading:
            chat_reason = "Wait for the model to load."
        else:
            chat_reason = ""
        self.chat.set_ready(not chat_reason, chat_reason)
        self.chat.set_paused(
            "Answers wait while a comparison measures (it would skew its timings)."
            if c.comparing
            else ""
        )

    # -- dialogs --
    def show_error(self, exc: BaseException, title: str = "Error") -> None:
        """Message + hint; the traceback only behind Details. Never blocks."""
        self.last_error = dialogs.as_nibble_error(exc)
        logger.info("%s: %s", title, self.last_error)
        self.error_box = dialogs.error_box(self, exc, title)

    def show_notice(self, text: str) -> None:
        self.statusBar().showMessage(text, 15000)
        dialogs.notice_box(self, text)

    def show_about(self) -> QMessageBox:
        box = dialogs.about_box(self)
        box.open()
        return box

    def open_export(self) -> None:
        from gui.export_dialog import ExportDialog

        current = self.current_settings()
        if current is None:
            self.statusBar().showMessage("Fix the settings first", 4000)
            return
        quant, options = current
        dialog = ExportDialog(self.controller, self.selected_ref, quant, options, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.saved.connect(self._on_exported)
        dialog.show()

    def _on_exported(self, path: Path) -> None:
        self.controller.add_recent(str(path))
        self.picker.set_recent(self.controller.session.recent_folders)

    def open_report(self) -> None:
        from gui.export_dialog import ReportDialog, report_data

        try:
            generation = self.chat.generation_settings()
        except NibbleError:
            generation = None
        data = report_data(self.controller, generation)
        dialog = ReportDialog(data, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()

    # -- closing --
    def _qsettings(self) -> QSettings:
        return QSettings(str(config_dir() / "window.ini"), QSettings.Format.IniFormat)

    def _save_session(self) -> None:
        s = self.controller.session
        s.system_prompt = self.chat.system_edit.toPlainText()
        s.raw_mode = self.chat.raw_check.isChecked()
        try:
            s.generation = self.chat.generation_settings()
        except NibbleError:
            pass
        try:
            session_mod.save_session(s)
        except OSError as exc:
            logger.warning("could not save the session: %s", exc)

    def running_workers(self) -> list[Any]:
        """Workers of jobs that have not finished yet."""
        return [worker for _, worker in self.controller.jobs()]

    def close_for_signal(self, signum: int) -> None:
        """Ctrl+C in the terminal or SIGTERM (a logout, `kill`): close as the close
        button does, keeping the session, the history and a stopped answer, without
        asking about a running download (it resumes next time)."""
        self.closed_by_signal = signum
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        """Save, keep the answer being written (marked stopped), stop every job, close.

        Jobs that stop within a step (an answer, an export, a download, the
        sampler) are waited for, CLOSE_DEADLINE_S in all; those that hold nothing
        beyond the process and may take long to stop (the library import, a load,
        a meta-device build, a call to the hub) are left to end with it, so the
        window never lingers for them.
        """
        # A download runs: the user may stay (not asked when a signal closes us).
        if not self.closed_by_signal and not self.hub_dialog.confirm_close():
            event.ignore()
            return
        qs = self._qsettings()
        qs.setValue("geometry", self.saveGeometry())
        qs.setValue("splitter", self.splitter.saveState())
        qs.setValue("middle_splitter", self.middle_splitter.saveState())
        qs.sync()
        self._save_session()
        self._speed_timer.stop()
        started = time.monotonic()
        if self.server_view is not None:
            self.server_view.shutdown(CLOSE_DEADLINE_S / 2)
        # One deadline for everything: what the server took is not given again.
        left = CLOSE_DEADLINE_S - (time.monotonic() - started)
        self.controller.close_quickly(max(0.2, left))
        if self.history is not None:
            self.history.close()
        event.accept()


def default_size() -> tuple[int, int]:
    """DEFAULT_SIZE, shrunk to the screen's free area where that is smaller."""
    width, height = DEFAULT_SIZE
    screen = QGuiApplication.primaryScreen()
    if screen is not None:
        free = screen.availableGeometry()
        width = min(width, free.width() - 16)
        height = min(height, free.height() - 40)
    return max(width, 640), max(height, 480)


def _separator() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.VLine)
    line.setFrameShadow(QFrame.Shadow.Plain)
    line.setForegroundRole(QPalette.ColorRole.Mid)
    return line
