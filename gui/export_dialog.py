"""File ▸ Save quantized model… and Help ▸ Report…: the window's face on core.lab.export.

The main window opens both dialogs; the export runs as the controller's job, so
closing the window stops it with every other job.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from core.errors import NibbleError
from core.lab import report
from core.settings import LoadOptions, QuantSettings
from gui import dialogs, workers

if TYPE_CHECKING:
    from gui.controller import Controller

logger = logging.getLogger(__name__)

FRESH_COPY_NOTE = (
    "Nibble loads a fresh copy to save, so the model in the chat stays as it is; "
    "it then reloads the saved folder and checks that the logits are identical."
)


def default_folder_name(ref: Any, quant: QuantSettings) -> str:
    """'SmolLM2-135M-Instruct-nf4' for a model and its settings."""
    name = Path(str(getattr(ref, "name", "model"))).name.replace("/", "-")
    return f"{name}-{quant.label()}"


class ExportDialog(QDialog):
    """Pick a folder, save, watch the progress, read the verification result."""

    export_finished = Signal()  # after a result, an error or a cancel is shown
    saved = Signal(object)  # the Path of a verified export

    def __init__(
        self,
        controller: Controller,
        ref: Any,
        quant: QuantSettings,
        options: LoadOptions,
        parent: QWidget | None = None,
        start_dir: Path | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Save quantized model")
        self.controller = controller
        self.ref, self.quant, self.options = ref, quant, options
        self.worker: workers.FunctionWorker | None = None
        self.result: Any = None
        self.error: NibbleError | Exception | None = None
        start = start_dir or dialogs.last_folder()

        form = QFormLayout()
        form.addRow("Model:", QLabel(getattr(ref, "display", str(ref))))
        form.addRow("Settings:", QLabel(quant.label()))
        self.folder = QLineEdit(str(start / default_folder_name(ref, quant)))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form.addRow("Save to:", row)
        self.overwrite = QCheckBox("Replace the folder if it is not empty")
        form.addRow("", self.overwrite)

        note = QLabel(FRESH_COPY_NOTE)
        note.setWordWrap(True)
        note.setObjectName("hint")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
        )

        self.buttons = QDialogButtonBox()
        self.save_button = self.buttons.addButton(
            "Save", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.save_button.setObjectName("primary")
        self.open_button = self.buttons.addButton(
            "Open folder", QDialogButtonBox.ButtonRole.ActionRole
        )
        self.open_button.hide()
        self.close_button = self.buttons.addButton(
            QDialogButtonBox.StandardButton.Close
        )
        self.save_button.clicked.connect(self.start)
        self.open_button.clicked.connect(self._open_folder)
        self.close_button.clicked.connect(self.close)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self.resize(560, self.sizeHint().height())
        if not quant.quantized:
            self.save_button.setEnabled(False)
            self.status.setText(
                "These settings load the model unquantized: pick a 4-bit or 8-bit "
                "preset to save a quantized copy."
            )

    def _browse(self) -> None:
        current = Path(self.folder.text()).expanduser()
        parent = QFileDialog.getExistingDirectory(
            self, "Save into folder", str(current.parent)
        )
        if parent:
            dialogs.remember_folder(parent)
            self.folder.setText(str(Path(parent) / current.name))

    def start(self) -> None:
        """Start the export in a worker (Save button)."""
        if self.worker is not None:
            return
        self.result = self.error = None
        self.open_button.hide()
        self.status.setText("Starting…")
        self.progress.setRange(0, 0)
        self.save_button.setEnabled(False)
        self.folder.setEnabled(False)
        self.overwrite.setEnabled(False)
        self.close_button.setText("Cancel")
        worker = self.controller.export(
            self.ref,
            self.quant,
            self.options,
            self.folder.text().strip(),
            self.overwrite.isChecked(),
        )
        worker.progressed.connect(self._progressed)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.aborted.connect(self._aborted)
        worker.finished.connect(self._finished)
        self.worker = worker

    def _progressed(self, done: int, total: int, message: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.status.setText(message)

    def _returned(self, result: Any) -> None:
        self.result = result
        self.progress.setValue(self.progress.maximum())
        self.status.setText(
            f"Saved to {result.path}.\n{result.verification.summary().capitalize()}; "
            "a README.md with the code to load it is in the folder."
        )
        self.open_button.show()
        self.saved.emit(Path(result.path))

    def _errored(self, error: Exception) -> None:
        self.error = error
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        if isinstance(error, NibbleError):
            text = error.message + (f"\n{error.hint}" if error.hint else "")
        else:
            text = f"Saving failed: {type(error).__name__}: {error}"
        self.status.setText(text)

    def _aborted(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText("Cancelled; nothing was written.")

    def _finished(self) -> None:
        self.worker = None
        self.close_button.setText("Close")
        self.folder.setEnabled(True)
        self.overwrite.setEnabled(True)
        self.save_button.setEnabled(self.result is None)
        self.export_finished.emit()

    def _open_folder(self) -> None:
        if self.result is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.result.path)))

    def close(self) -> bool:  # Close / Cancel button and the window's close box
        if self.worker is not None:
            self.status.setText("Cancelling…")
            self.worker.cancel()
            return False
        return super().close()

    def reject(self) -> None:  # Escape
        if not self.close():
            return
        super().reject()

    def closeEvent(self, event: Any) -> None:
        if self.worker is not None:
            self.worker.cancel()
            event.ignore()
            return
        super().closeEvent(event)


class ReportDialog(QDialog):
    """The reproducibility report, with Copy as Python, Copy Markdown and Save."""

    def __init__(self, data: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Nibble report")
        self.data = data
        self.markdown = report.to_markdown(data)
        self.view = QTextBrowser()
        self.view.setMarkdown(self.markdown)
        self.view.setOpenExternalLinks(True)
        buttons = QDialogButtonBox()
        copy_python = buttons.addButton(
            "Copy as Python", QDialogButtonBox.ButtonRole.ActionRole
        )
        copy_python.setToolTip("The exact from_pretrained call for these settings")
        copy_md = buttons.addButton(
            "Copy Markdown", QDialogButtonBox.ButtonRole.ActionRole
        )
        save = buttons.addButton("Save…", QDialogButtonBox.ButtonRole.ActionRole)
        close = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        copy_python.clicked.connect(self.copy_python)
        copy_md.clicked.connect(self.copy_markdown)
        self.copy_python_button, self.copy_md_button = copy_python, copy_md
        save.clicked.connect(self._save)
        close.clicked.connect(self.close)
        self.saved: tuple[Path, Path] | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(self.view)
        layout.addWidget(buttons)
        self.resize(720, 640)

    def copy_python(self) -> None:
        QGuiApplication.clipboard().setText(self.data["python"])
        dialogs.say_copied(self.copy_python_button)

    def copy_markdown(self) -> None:
        QGuiApplication.clipboard().setText(self.markdown)
        dialogs.say_copied(self.copy_md_button)

    def _save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save report (Markdown and JSON)",
            str(dialogs.last_folder() / "nibble-report.md"),
            "Markdown (*.md)",
        )
        if path:
            dialogs.remember_folder(Path(path).parent)
            self.save_to(Path(path))

    def save_to(self, path: Path) -> tuple[Path, Path]:
        """Write PATH.md and PATH.json."""
        self.saved = report.save(self.data, path)
        return self.saved


def report_data(controller: Controller, generation: Any = None) -> dict:
    """The report for what the window shows: the loaded model, else the picked one."""
    loaded = controller.loaded
    stats = controller.last_stats
    if loaded is not None:
        ref, quant, options = loaded.ref, loaded.quant, loaded.options
        load_report = loaded.report
        estimate = report.estimate_bytes(ref, quant, options)
    else:
        ref, quant, options = (
            controller.selected_ref,
            controller.quant,
            controller.options,
        )
        load_report = estimate = None
        stats = generation = None
    return report.build(
        report.model_id(ref), quant, options, load_report, estimate, generation, stats
    )
