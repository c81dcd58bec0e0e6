"""The main window: model picker, settings panel, tabs, status bar.

Other panels plug in without editing this module:

- ``add_tab(widget, title)`` adds a tab after Chat (Monitor, Compare, ...).
- ``set_estimate_widget(widget)`` puts a widget under the settings panel.
- ``menu(name) -> QMenu`` returns the File, Model, View or Help menu (or a new one).
- ``add_status_widget(widget)`` adds a permanent widget to the status bar.
- ``loaded`` is the current LoadedModel (or None), ``selected_ref`` the picked ModelRef,
  ``current_settings()`` the panel's (QuantSettings, LoadOptions) or None when invalid,
  ``load_worker`` the LoadWorker of a load in progress (its ``progressed`` signal).
- ``gui.app.PANELS`` lists the ``install_*(window)`` functions run after the first paint.

Signals, all emitted on the UI thread:

- ``model_selected(object)``: a ModelRef was picked (not loaded yet).
- ``settings_changed(object)``: a valid ``(QuantSettings, LoadOptions)`` tuple.
- ``load_started()``: a load began.
- ``model_loaded(object)``: the LoadedModel that is now current.
- ``model_unloaded()``: the previous model was dropped (before a new ``model_loaded``).
- ``first_token()``: the first text of an answer arrived.
- ``generation_finished(object)``: the GenerationStats of a finished or stopped answer.
- ``libraries_ready(str)``: torch and friends are imported; the device description.
- ``first_painted()``: the window is on screen (heavy work may start).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PySide6.QtCore import QEvent, QObject, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QPalette
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

from core import default_model
from core import session as session_mod
from core.catalog import ModelRef
from core.errors import NibbleError
from core.paths import config_dir
from core.settings import LoadOptions, QuantSettings
from core.units import format_bytes, format_seconds
from gui import dialogs, hub_dialog, workers
from gui.chat_view import ChatView
from gui.load_bar import LoadBar
from gui.model_picker import ModelPicker
from gui.settings_panel import SettingsPanel

logger = logging.getLogger(__name__)

MENUS = ("File", "Model", "View", "Help")
CLOSE_WAIT_MS = 2000


class MainWindow(QMainWindow):
    """Nibble's window; see the module docstring for how panels plug in."""

    model_selected = Signal(object)
    settings_changed = Signal(object)
    load_started = Signal()
    model_loaded = Signal(object)
    model_unloaded = Signal()
    first_token = Signal()
    generation_finished = Signal(object)
    libraries_ready = Signal(str)
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
        self.session = session or session_mod.Session()
        self.loaded: Any = None
        self.device = ""
        self.ready = False
        self.selected_ref: ModelRef = session_mod.ref_from_dict(self.session.model)
        self._auto_start = auto_start
        self._auto_load = auto_load
        self._painted = False
        self._pending_load = False
        self._load_worker: workers.LoadWorker | None = None
        self._gen_worker: workers.GenerateWorker | None = None
        self._others: list[workers.Worker] = []
        self._gen_first_at: float | None = None
        self._closing = False
        self.last_error: NibbleError | None = None
        self.error_box: QMessageBox | None = None
        self._menus: dict[str, QMenu] = {}
        self._build()
        self._restore()
        self.installEventFilter(self)
        if notice:
            QTimer.singleShot(0, self, lambda: self.show_notice(notice))

    # -- building --
    def _build(self) -> None:
        self.picker = ModelPicker()
        self.picker.setMinimumWidth(220)
        self.settings_panel = SettingsPanel()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.settings_panel)
        scroll.setMinimumWidth(340)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.estimate_holder = QWidget()
        self.estimate_holder.setLayout(QVBoxLayout())
        self.estimate_holder.layout().setContentsMargins(0, 0, 0, 0)
        self.estimate_holder.hide()

        self.load_bar = LoadBar()
        self.load_button = self.load_bar.load_button
        self.load_button.clicked.connect(lambda: self.request_load())
        self.load_bar.cancel_button.clicked.connect(self.cancel_load)
        self.progress, self.load_label = self.load_bar.progress, self.load_bar.label

        middle = QWidget()
        column = QVBoxLayout(middle)
        column.setContentsMargins(0, 0, 0, 0)
        # The estimate shares the column with the settings; the user sets the split.
        self.middle_splitter = QSplitter(Qt.Orientation.Vertical)
        self.middle_splitter.setChildrenCollapsible(False)
        self.middle_splitter.addWidget(scroll)
        self.middle_splitter.addWidget(self.estimate_holder)
        self.middle_splitter.setStretchFactor(0, 3)
        self.middle_splitter.setStretchFactor(1, 2)
        column.addWidget(self.middle_splitter, 1)
        column.addWidget(self.load_bar)

        self.chat = ChatView()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.chat, "Chat")

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.picker)
        self.splitter.addWidget(middle)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setStretchFactor(2, 1)
        self.splitter.setSizes([255, 520, 625])
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
        self._speed_timer.timeout.connect(self._show_speed)

        self._build_menus()
        self.picker.selected.connect(self.select_model)
        self.picker.picked.connect(self._on_picked)
        self.picker.folder_chosen.connect(self.open_location)
        self.picker.hub_id_entered.connect(self.open_location)
        self.hub_dialog = hub_dialog.attach(self)
        self.settings_panel.changed.connect(self._on_settings)
        self.settings_panel.validity_changed.connect(lambda *_: self._update_actions())
        self.chat.send_requested.connect(self.start_generation)
        self.chat.stop_requested.connect(self.stop_generation)
        self.resize(1400, 900)

    def _build_menus(self) -> None:
        for name in MENUS:
            self.menu(name)
        file_menu = self.menu("File")
        self.open_action = QAction("Open model folder…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.picker.choose_folder)
        file_menu.addAction(self.open_action)
        file_menu.addSeparator()
        quit_action = QAction("Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        model_menu = self.menu("Model")
        self.load_action = QAction("Load", self)
        self.load_action.setShortcut(QKeySequence("Ctrl+L"))
        self.load_action.triggered.connect(lambda: self.request_load())
        self.unload_action = QAction("Unload", self)
        self.unload_action.triggered.connect(self.unload)
        model_menu.addAction(self.load_action)
        model_menu.addAction(self.unload_action)
        model_menu.addMenu(self.settings_panel.presets_menu).setText("Presets")
        view_menu = self.menu("View")
        self.picker_action = QAction("Model list", self, checkable=True, checked=True)
        self.picker_action.toggled.connect(self.picker.setVisible)
        view_menu.addAction(self.picker_action)
        about = QAction("About Nibble", self)
        about.triggered.connect(self._about)
        self.menu("Help").addAction(about)

    # -- plug-in points --
    def menu(self, name: str) -> QMenu:
        """The menu called `name`, created (before Help) if it does not exist."""
        if name not in self._menus:
            menu = QMenu(name, self)
            help_menu = self._menus.get("Help")
            if help_menu is not None:
                self.menuBar().insertMenu(help_menu.menuAction(), menu)
            else:
                self.menuBar().addMenu(menu)
            self._menus[name] = menu
        return self._menus[name]

    def add_tab(self, widget: QWidget, title: str) -> int:
        """Add a tab after the existing ones; returns its index."""
        return self.tabs.addTab(widget, title)

    def set_estimate_widget(self, widget: QWidget) -> None:
        """Show `widget` under the settings panel (replaces any previous one)."""
        layout = self.estimate_holder.layout()
        while layout.count():
            old = layout.takeAt(0).widget()
            if old is not None:
                old.setParent(None)
        layout.addWidget(widget)
        self.estimate_holder.show()

    def add_status_widget(self, widget: QWidget) -> None:
        """Add a permanent widget to the status bar, left of the model name."""
        bar = self.statusBar()
        index = bar.layout().indexOf(self.model_status)
        bar.insertPermanentWidget(max(index - 1, 0), widget)
        bar.insertPermanentWidget(max(index, 0), _separator())

    def current_settings(self) -> tuple[QuantSettings, LoadOptions] | None:
        """The panel's settings, or None while they are invalid."""
        try:
            return self.settings_panel.settings()
        except NibbleError:
            return None

    # -- start-up --
    def _restore(self) -> None:
        s = self.session
        self.settings_panel.set_settings(s.quant, s.options)
        self.settings_panel.set_model_name(self._snippet_name(self.selected_ref))
        self.chat.set_generation_settings(s.generation)
        self.chat.system_edit.setPlainText(s.system_prompt)
        self.chat.raw_check.setChecked(s.raw_mode)
        self.picker.set_default(
            ModelRef("default", self.selected_ref.name)
            if self.selected_ref.kind == "default"
            else session_mod.ref_from_dict(None)
        )
        self.picker.set_recent(s.recent_folders)
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
        """Import the ML libraries and scan the model catalog in worker threads."""
        imports = workers.ImportWorker()
        imports.returned.connect(self._on_libraries)
        imports.errored.connect(self._on_libraries_failed)
        self._track(imports)
        scan = workers.CatalogWorker()
        scan.returned.connect(self._on_catalog)
        scan.errored.connect(lambda exc: self.picker.set_cache([]))
        self._track(scan)

    def _track(self, worker: workers.Worker) -> None:
        self._others.append(worker)
        worker.finished.connect(lambda: self._others.remove(worker))
        workers.start(worker)

    def _on_libraries(self, device: str) -> None:
        self.ready = True
        self.device = device
        self.device_status.setText(device)
        self._update_actions()
        self.libraries_ready.emit(device)
        if self._auto_load or self._pending_load:
            self.request_load()

    def _on_libraries_failed(self, exc: Exception) -> None:
        self.device_status.setText("Libraries failed to load")
        self.show_error(exc, "The ML libraries could not be imported")

    def _on_catalog(self, result: tuple[ModelRef, list[ModelRef]]) -> None:
        default, cache = result
        self.picker.set_default(default)
        self.picker.set_cache(cache)
        self.picker.mark_current(self.loaded.ref if self.loaded else None)

    # -- model choice --
    def select_model(self, ref: ModelRef) -> None:
        if self.selected_ref == ref:
            return
        self.selected_ref = ref
        self.settings_panel.set_model_name(self._snippet_name(ref))
        self.model_selected.emit(ref)
        self._update_actions()

    def _on_picked(self, ref: ModelRef) -> None:
        self.select_model(ref)
        self.request_load(ref)

    def open_location(self, text: str) -> None:
        """Check a folder or hub id off the UI thread, then select and load it."""
        worker = workers.ResolveWorker(text)
        worker.returned.connect(self._on_resolved)
        worker.errored.connect(self.show_error)
        self.load_label.setText(f"Checking {text}…")
        self._track(worker)

    def _on_resolved(self, ref: ModelRef) -> None:
        self.load_label.setText("")
        if ref.kind == "folder" and ref.path is not None:
            self.session.add_recent(ref.path)
            self.picker.set_recent(self.session.recent_folders)
        self.select_model(ref)
        self.request_load(ref)

    @staticmethod
    def _snippet_name(ref: ModelRef) -> str:
        if ref.kind == "default":
            return default_model.HUB_ID
        return ref.repo_id or str(ref.path or ref.name)

    # -- loading --
    def request_load(self, ref: ModelRef | None = None) -> None:
        """Load `ref` (default: the selected model) with the panel's settings."""
        ref = ref or self.selected_ref
        busy = self._load_worker is not None or self._gen_worker is not None
        if busy or self._closing:
            return
        if not self.ready:
            self._pending_load = True
            self.load_label.setText("The model loads when the libraries are ready…")
            return
        self._pending_load = False
        settings = self.current_settings()
        if settings is None or self.settings_panel.error:
            self.load_label.setText(self.settings_panel.error)
            return
        quant, options = settings
        worker = workers.LoadWorker(ref, quant, options)
        worker.progressed.connect(self.load_bar.report)
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(self._on_load_failed)
        worker.aborted.connect(self._on_load_aborted)
        self._load_worker = worker
        self.load_bar.begin(
            f"Loading {ref.name}", f"Loading {ref.name} ({quant.label()})…"
        )
        self._update_actions()
        self.load_started.emit()
        self._track(worker)

    @property
    def load_worker(self) -> workers.LoadWorker | None:
        """The LoadWorker of the load in progress, if any."""
        return self._load_worker

    def cancel_load(self) -> None:
        if self._load_worker is not None:
            self._load_worker.cancel()
            self.load_label.setText("Cancelling…")

    def _on_loaded(self, loaded: Any) -> None:
        from core import loader

        self._end_load()
        previous, self.loaded = self.loaded, None
        if previous is not None:
            loader.unload(previous)
            self.model_unloaded.emit()
        self.loaded = loaded
        self._update_actions()
        report = loaded.report
        self.session.model = session_mod.ref_to_dict(loaded.ref)
        self.session.quant, self.session.options = loaded.quant, loaded.options
        self._save_session()
        self.model_status.setText(f"{loaded.ref.name} · {loaded.quant.label()}")
        self.model_status.setToolTip(str(loaded.ref.path or loaded.ref.repo_id))
        self.device_status.setText(report.device)
        self.size_status.setText(format_bytes(report.true_bytes))
        self.size_status.setToolTip(
            "True size in memory: parameters, buffers and quantization state"
        )
        text = f"Loaded {loaded.ref.name} in {format_seconds(report.load_s)}."
        if report.warnings:
            text += " " + " ".join(f"⚠ {w}." for w in report.warnings)
        self.load_label.setText(text)
        self.picker.mark_current(loaded.ref)
        from core.generation import has_chat_template

        self.chat.set_chat_template(has_chat_template(loaded.tokenizer))
        self.model_loaded.emit(loaded)

    def _on_load_failed(self, exc: Exception) -> None:
        self._end_load()
        kept = f" {self.loaded.ref.name} stays loaded." if self.loaded else ""
        self.load_label.setText(f"Load failed.{kept}")
        self.show_error(exc, "Loading failed")

    def _on_load_aborted(self) -> None:
        self._end_load()
        kept = f" {self.loaded.ref.name} stays loaded." if self.loaded else ""
        self.load_label.setText(f"Load cancelled.{kept}")

    def _end_load(self) -> None:
        self._load_worker = None
        self.load_bar.end()
        self._update_actions()

    def unload(self) -> None:
        """Drop the loaded model (not while it answers)."""
        if self.loaded is None or self._gen_worker is not None:
            return
        from core import loader

        loader.unload(self.loaded)
        self.loaded = None
        self.model_status.setText("No model loaded")
        self.size_status.setText("")
        self.picker.mark_current(None)
        self._update_actions()
        self.model_unloaded.emit()

    # -- generation --
    def start_generation(self, messages: Any, raw: bool) -> None:
        if self.loaded is None or self._gen_worker is not None:
            return
        try:
            gen = self.chat.generation_settings()
        except NibbleError as exc:
            self.show_error(exc)
            return
        worker = workers.GenerateWorker(self.loaded, messages, gen, raw)
        worker.yielded.connect(self._on_chunk)
        worker.returned.connect(self._on_answer)
        worker.errored.connect(self._on_answer_failed)
        worker.aborted.connect(self._on_answer_aborted)
        self._gen_worker = worker
        self._gen_first_at = None
        self._gen_started_at = time.perf_counter()
        self.chat.begin_answer()
        self.speed_status.setText("Thinking…")
        self._update_actions()
        self._speed_timer.start()
        self._track(worker)

    def stop_generation(self) -> None:
        if self._gen_worker is not None:
            self._gen_worker.stop()

    def _on_chunk(self, chunk: str) -> None:
        if self._gen_first_at is None:
            self._gen_first_at = time.perf_counter()
            self.first_token.emit()
        self.chat.append_chunk(chunk)

    def _on_answer(self, stats: Any) -> None:
        self._end_generation()
        self.chat.end_answer(stats.summary() if stats else "")
        if stats is not None and stats.tokens_per_s:
            self.speed_status.setText(f"{stats.tokens_per_s:.1f} tok/s")
        else:
            self.speed_status.setText("")
        self.generation_finished.emit(stats)

    def _on_answer_failed(self, exc: Exception) -> None:
        self._end_generation()
        error = exc if isinstance(exc, NibbleError) else NibbleError(str(exc))
        self.chat.end_answer(error=error)
        self.speed_status.setText("")
        self.show_error(exc, "Generation failed")

    def _on_answer_aborted(self) -> None:
        self._end_generation()
        self.chat.end_answer("stopped")

    def _end_generation(self) -> None:
        self._gen_worker = None
        self._speed_timer.stop()
        self._update_actions()

    def _show_speed(self) -> None:
        if self._gen_worker is not None and self._gen_first_at is not None:
            tokenizer = self.loaded.tokenizer if self.loaded else None
            seconds = time.perf_counter() - self._gen_first_at
            if tokenizer is not None and seconds > 0.3:
                text = self.chat.current_answer()
                tokens = len(tokenizer.encode(text, add_special_tokens=False))
                self.speed_status.setText(f"{max(tokens - 1, 0) / seconds:.1f} tok/s")

    # -- state --
    def _update_actions(self) -> None:
        loading = self._load_worker is not None
        generating = self._gen_worker is not None
        reason = ""
        if not self.ready:
            reason = "Waiting for torch, transformers and bitsandbytes to import…"
        elif self.settings_panel.error:
            reason = self.settings_panel.error
        elif loading:
            reason = "A model is loading."
        elif generating:
            reason = "Wait for the answer to finish (or stop it)."
        self.load_button.setEnabled(not reason)
        self.load_button.setToolTip(reason or f"Load {self.selected_ref.name}")
        self.load_action.setEnabled(not reason)
        self.unload_action.setEnabled(self.loaded is not None and not generating)
        if self.loaded is None:
            chat_reason = "Load a model first."
        elif loading:
            chat_reason = "Wait for the model to load."
        else:
            chat_reason = ""
        self.chat.set_ready(not chat_reason, chat_reason)

    def _on_settings(self, quant: QuantSettings, options: LoadOptions) -> None:
        self.session.quant, self.session.options = quant, options
        self._update_actions()
        self.settings_changed.emit((quant, options))

    # -- errors and notices --
    def show_error(self, exc: BaseException, title: str = "Error") -> None:
        """Message + hint; the traceback only behind Details. Never blocks."""
        self.last_error = dialogs.as_nibble_error(exc)
        logger.info("%s: %s", title, self.last_error)
        self.error_box = dialogs.error_box(self, exc, title)

    def show_notice(self, text: str) -> None:
        self.statusBar().showMessage(text, 15000)
        dialogs.notice_box(self, text)

    def _about(self) -> None:
        QMessageBox.about(
            self,
            "About Nibble",
            "<b>Nibble</b><br>Run Hugging Face language models in 4-bit and 8-bit "
            "with bitsandbytes.",
        )

    # -- closing --
    def _qsettings(self) -> QSettings:
        return QSettings(str(config_dir() / "window.ini"), QSettings.Format.IniFormat)

    def _save_session(self) -> None:
        s = self.session
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

    def running_workers(self) -> list[workers.Worker]:
        """Workers whose thread has not finished yet."""
        return list(self._others)

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop every worker (at most CLOSE_WAIT_MS), save, then close."""
        if not self.hub_dialog.confirm_close():  # a download runs: the user may stay
            event.ignore()
            return
        self._closing = True
        qs = self._qsettings()
        qs.setValue("geometry", self.saveGeometry())
        qs.setValue("splitter", self.splitter.saveState())
        qs.setValue("middle_splitter", self.middle_splitter.saveState())
        qs.sync()
        self._save_session()
        pending = self.running_workers()
        for worker in pending:
            worker.cancel()
        deadline = time.monotonic() + CLOSE_WAIT_MS / 1000
        for worker in pending:  # one deadline for all, not CLOSE_WAIT_MS each
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not workers.stop_all([worker], left_ms):
                logger.warning("%s did not stop in time", type(worker).__name__)
        self._speed_timer.stop()
        if self.loaded is not None and not pending:
            from core import loader

            loader.unload(self.loaded)
            self.loaded = None
        event.accept()


def _separator() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.VLine)
    line.setFrameShadow(QFrame.Shadow.Plain)
    line.setForegroundRole(QPalette.ColorRole.Mid)
    return line
