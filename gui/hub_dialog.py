"""The "Get a model…" dialog: search the hub, see the plan and the fit, download.

The dialog is created once per window and only hidden when closed, so a download keeps
running (on its worker) while the user works in other tabs; reopening shows its
progress. A finished download is added to the picker's HF cache section and selected.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.errors import NibbleError
from core.units import format_bytes, format_count, format_params
from gui import workers

if TYPE_CHECKING:
    from gui.controller import Controller

logger = logging.getLogger(__name__)

RESULT_ROLE = Qt.ItemDataRole.UserRole


class HubDialog(QDialog):
    """Search results on the left, the selected model's plan and download on the right.

    `downloaded(ModelRef)` when a download finished; `load_requested(ModelRef)` when
    the user clicks "Load now".
    """

    downloaded = Signal(object)
    load_requested = Signal(object)

    def __init__(self, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Get a model")
        self.resize(1000, 620)
        self.plan: Any = None
        self.ref: Any = None
        self.search_worker: workers.Worker | None = None
        self.plan_worker: workers.Worker | None = None
        self.download_worker: workers.HubDownloadWorker | None = None
        self.controller = controller  # runs the jobs (closing stops them in time)
        self._discard_after_stop = False

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search text-generation models, e.g. qwen")
        self.search_edit.returnPressed.connect(self._search_again)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        row.addWidget(self.search_edit, 1)
        row.addWidget(self.search_button)
        layout.addLayout(row)

        split = QSplitter()
        self.results = QTableWidget(0, 4)
        self.results.setTabKeyNavigation(False)
        self.results.setHorizontalHeaderLabels(["Model", "Size", "Downloads", ""])
        self.results.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.results.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.results.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.results.verticalHeader().setVisible(False)
        header = self.results.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2, 3):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.results.itemSelectionChanged.connect(self._on_result)
        split.addWidget(self.results)

        detail = QWidget()
        side = QVBoxLayout(detail)
        side.setContentsMargins(6, 0, 0, 0)
        self.title = QLabel("Search, then pick a model to see what it takes.")
        self.title.setWordWrap(True)
        self.title.setObjectName("heading")
        side.addWidget(self.title)
        self.files = QTableWidget(0, 3)
        self.files.setTabKeyNavigation(False)
        self.files.setHorizontalHeaderLabels(["File", "Size", ""])
        self.files.verticalHeader().setVisible(False)
        self.files.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.files.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.Stretch
        )
        side.addWidget(self.files, 1)
        self.disk_label = QLabel()
        self.disk_label.setWordWrap(True)
        side.addWidget(self.disk_label)
        self.estimate = QTableWidget(0, 3)
        self.estimate.setTabKeyNavigation(False)
        self.estimate.setHorizontalHeaderLabels(["Preset", "Needs", "On this machine"])
        self.estimate.verticalHeader().setVisible(False)
        self.estimate.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.estimate.horizontalHeader().setSectionResizeMode(
            2, QHeaderView.ResizeMode.Stretch
        )
        side.addWidget(self.estimate, 1)
        self.verdict_label = QLabel()
        self.verdict_label.setWordWrap(True)
        side.addWidget(self.verdict_label)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        side.addWidget(self.progress)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
        )
        side.addWidget(self.status)
        buttons = QHBoxLayout()
        self.download_button = QPushButton("Download")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.cancel_button = QPushButton("Cancel")
        self.load_button = QPushButton("Load now")
        self.cancel_button.setToolTip("Stop and delete what this download fetched")
        self.pause_button.setToolTip("Stop; what arrived stays and Resume continues")
        for button, slot in (
            (self.download_button, self.start_download),
            (self.pause_button, self.pause),
            (self.resume_button, self.start_download),
            (self.cancel_button, self.cancel_download),
            (self.load_button, self._load_now),
        ):
            button.clicked.connect(slot)
            buttons.addWidget(button)
        side.addLayout(buttons)
        split.addWidget(detail)
        split.setSizes([420, 580])
        layout.addWidget(split, 1)
        self._update_buttons()

    # -- state --
    @property
    def downloading(self) -> bool:
        return self.download_worker is not None

    def _update_buttons(self) -> None:
        plan = self.plan
        partial = bool(plan is not None and plan.partial_bytes)
        ready = plan is not None and not self.downloading
        self.download_button.setEnabled(
            ready and not plan.complete and not partial and plan.fits_disk is not False
        )
        self.resume_button.setEnabled(ready and partial and plan.fits_disk is not False)
        self.pause_button.setEnabled(self.downloading)
        self.cancel_button.setEnabled(self.downloading or partial)
        self.load_button.setEnabled(self.ref is not None and not self.downloading)
        self.results.setEnabled(not self.downloading)
        searching = self.search_worker is not None
        self.search_button.setText("Cancel search" if searching else "Search")

    # -- search --
    def search(self) -> None:
        """Search the hub; while a search runs, the same button cancels it."""
        if self.search_worker is not None:
            self._cancel_search()
            return
        worker = self.controller.search_hub(self.search_edit.text())
        worker.returned.connect(self._on_results)
        worker.errored.connect(self._show_error)
        worker.finished.connect(self._search_ended)
        self.search_worker = worker
        self.status.setText("Searching the hub…")
        self._update_buttons()

    def _search_again(self) -> None:
        """Enter in the field searches for what it says now, dropping a running search."""
        self._cancel_search()
        self.search()

    def _cancel_search(self) -> None:
        """Drop the running search's answer; its thread ends when the hub answers or
        its read timeout passes."""
        worker = self.search_worker
        if worker is None:
            return
        worker.cancel()
        worker.returned.disconnect(self._on_results)
        worker.errored.disconnect(self._show_error)
        self.search_worker = None
        self.status.setText("Search cancelled.")
        self._update_buttons()

    def _search_ended(self) -> None:
        if self.search_worker is self.sender():
            self.search_worker = None
        self._update_buttons()

    def _on_results(self, results: list[Any]) -> None:
        self.results.setRowCount(0)
        for r in results:
            row = self.results.rowCount()
            self.results.insertRow(row)
            name = QTableWidgetItem(r.repo_id)
            name.setData(RESULT_ROLE, r)
            tip = [
                r.repo_id,
                f"{r.likes or 0} likes · updated {r.last_modified or '?'}",
            ]
            if r.gated:
                tip.append("Gated: accept its terms on the model page first")
            if r.note:
                tip.append(r.note)
            name.setToolTip("\n".join(tip))
            size = format_params(r.parameters) + (f" {r.dtype}" if r.dtype else "")
            badge = r.quantized or ""
            if r.gated:
                badge = ", ".join(b for b in (badge, "gated") if b)
            cells = [
                name,
                QTableWidgetItem(size),
                QTableWidgetItem(format_count(r.downloads)),
            ]
            cells.append(QTableWidgetItem(badge))
            if not r.loadable:
                cells[3].setForeground(Qt.GlobalColor.darkRed)
            for column, cell in enumerate(cells):
                self.results.setItem(row, column, cell)
        self.status.setText(
            f"{len(results)} models" if results else "No text-generation models match."
        )

    # -- plan --
    def _on_result(self) -> None:
        items = self.results.selectedItems()
        if not items or self.downloading:
            return
        result = self.results.item(items[0].row(), 0).data(RESULT_ROLE)
        self.show_plan_for(result.repo_id)

    def show_plan_for(self, repo_id: str) -> None:
        """Plan `repo_id` on a worker and show it (files, disk, estimate)."""
        if self.plan_worker is not None:
            self.plan_worker.cancel()  # its result is dropped
        self.plan, self.ref = None, None
        self.title.setText(f"{repo_id}: reading the file list and config.json…")
        worker = self.controller.plan_download(repo_id)
        worker.returned.connect(self._on_plan)
        worker.errored.connect(self._show_error)
        # A bound method, not a lambda: it must run on the UI thread.
        worker.finished.connect(self._plan_ended)
        self.plan_worker = worker
        self._update_buttons()

    def _plan_ended(self) -> None:
        if self.plan_worker is self.sender():
            self.plan_worker = None

    def _on_plan(self, plan: Any) -> None:
        self.plan = plan
        self.ref = None
        self.title.setText(f"{plan.repo_id} @ {plan.commit[:12]}")
        self._fill_files()
        table = plan.table
        self.estimate.setRowCount(0)
        if table is not None:
            for r in table.rows:
                if r.preset == "current":
                    continue
                row = self.estimate.rowCount()
                self.estimate.insertRow(row)
                for column, text in enumerate(
                    (r.preset, format_bytes(r.total_bytes), r.verdict_text or r.verdict)
                ):
                    self.estimate.setItem(row, column, QTableWidgetItem(text))
            best = table.recommended
            self.verdict_label.setText(
                f"{table.device.describe()}\n"
                + (f"Recommended: {best}" if best else "None of the presets fits.")
            )
        else:
            self.verdict_label.setText(plan.estimate_error or "No estimate")
        notes = [*plan.warnings]
        if plan.complete:
            notes.insert(0, "Already in your cache.")
        self.status.setText("\n".join(notes))
        self.progress.setValue(int(self._fraction(plan) * 1000))
        self._update_buttons()

    def _fill_files(self) -> None:
        plan = self.plan
        self.files.setRowCount(0)
        for f in plan.files:
            row = self.files.rowCount()
            self.files.insertRow(row)
            state = (
                "cached"
                if f.cached
                else f"{format_bytes(f.partial_bytes)} here"
                if f.partial_bytes
                else ""
            )
            for column, text in enumerate((f.name, format_bytes(f.size), state)):
                self.files.setItem(row, column, QTableWidgetItem(text))
        self.disk_label.setText(plan.disk_text())

    @staticmethod
    def _fraction(plan: Any) -> float:
        total = plan.total_bytes
        return (plan.cached_bytes + plan.partial_bytes) / total if total else 0.0

    # -- download --
    def start_download(self) -> None:
        if self.plan is None or self.downloading:
            return
        worker = self.controller.download(self.plan)
        worker.fetched.connect(self._on_progress)
        worker.returned.connect(self._on_downloaded)
        worker.errored.connect(self._show_error)
        worker.aborted.connect(self._on_paused)
        worker.finished.connect(self._download_ended)
        self.download_worker = worker
        self.status.setText(f"Downloading {self.plan.repo_id}…")
        self._update_buttons()

    def pause(self) -> None:
        if self.download_worker is not None:
            self.download_worker.cancel()

    def cancel_download(self) -> None:
        """Stop and delete the partial files (Pause keeps them)."""
        if self.download_worker is not None:
            self._discard_after_stop = True
            self.download_worker.cancel()
        else:
            self._discard()

    def _discard(self) -> None:
        from core.hub import download as hub_download

        if self.plan is None:
            return
        freed = hub_download.discard(self.plan)
        self._discard_after_stop = False
        self._fill_files()
        self.progress.setValue(int(self._fraction(self.plan) * 1000))
        self.status.setText(
            f"Cancelled; {format_bytes(freed)} of partial files removed"
        )
        self._update_buttons()

    def _on_progress(self, p: Any) -> None:
        self.progress.setValue(int(p.fraction * 1000))
        self.status.setText(p.text())

    def _on_paused(self) -> None:
        if self._discard_after_stop:
            return  # _download_ended discards once the worker let go of the files
        from core.hub import download as hub_download

        plan = hub_download.refresh(self.plan)
        self._fill_files()
        self.status.setText(
            f"Paused: {format_bytes(plan.partial_bytes + plan.cached_bytes)} kept; "
            "Resume continues from there"
        )

    def _on_downloaded(self, ref: Any) -> None:
        self.ref = ref
        self._fill_files()
        self.progress.setValue(1000)
        self.status.setText(f"Downloaded to {ref.path}")
        self.downloaded.emit(ref)

    def _download_ended(self) -> None:
        self.download_worker = None
        if self._discard_after_stop:
            self._discard()
        self._update_buttons()

    def _load_now(self) -> None:
        if self.ref is not None:
            self.load_requested.emit(self.ref)

    def _show_error(self, exc: BaseException) -> None:
        if isinstance(exc, NibbleError):
            text = exc.message + (f"\n{exc.hint}" if exc.hint else "")
        else:
            text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.status.setText(text)
        if self.plan is None:
            self.title.setText("No plan")

    # -- closing --
    def stop(self, timeout_ms: int = 2000) -> bool:
        """Pause any download (its partial is kept) and wait for the workers."""
        running = [
            w
            for w in (self.download_worker, self.plan_worker, self.search_worker)
            if w is not None
        ]
        return workers.stop_all(running, timeout_ms)

    def confirm_close(self) -> bool:
        """Ask whether to stop a download in progress; True when the window may close."""
        if not self.downloading:
            return True
        answer = QMessageBox.question(
            self.parentWidget() or self,
            "Download in progress",
            f"{self.plan.repo_id} is still downloading. Stop it and quit?\n"
            "What arrived is kept; downloading it again continues from there.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes


def attach(window: Any) -> HubDialog:
    """Create the dialog for `window`, opened from its picker's "Get a model…" button.

    A finished download is listed in the picker's HF cache section and selected;
    "Load now" loads it as a double-click in the picker does.
    """
    dialog = HubDialog(window.controller, window)
    picker = window.picker

    def show() -> None:
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()

    def finished(ref: Any) -> None:
        cache = [r for r in picker.refs() if r.kind == "cache" and r.name != ref.name]
        picker.set_cache([ref, *cache])
        picker.select(ref)

    picker.get_model_requested.connect(show)
    dialog.downloaded.connect(finished)
    dialog.load_requested.connect(picker.picked.emit)
    return dialog
