"""The window's Save quantized model… and Report… actions and their dialogs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ExportError
from core.model import catalog
from core.settings import QuantSettings, preset
from gui import workers


@pytest.fixture(scope="module")
def tiny_ref(tiny_dir: Path) -> catalog.ModelRef:
    return catalog.folder_ref(tiny_dir)


def test_export_job_signal_order(qtbot, controller, tiny_ref, tmp_path: Path) -> None:
    from core.lab import export

    chosen = preset("int8")
    steps: list[int] = []
    results: list = []

    def work(progress, cancel):
        return export.export(
            tiny_ref,
            chosen.quant,
            str(tmp_path / "out"),
            chosen.load_options(),
            progress=progress,
            cancel=cancel,
        )

    worker = workers.FunctionWorker(work, "export")
    worker.progressed.connect(lambda done, total, msg: steps.append(done))
    worker.returned.connect(results.append)
    with qtbot.waitSignals(
        [worker.started, worker.returned, worker.finished],
        order="strict",
        timeout=120_000,
    ):
        controller.start("export", worker)
    assert results[0].verification.identical
    assert steps[0] == 0 and steps[-1] == 6
    assert (tmp_path / "out" / "README.md").is_file()


def test_dialog_saves_and_reports_the_verification(
    qtbot, controller, tiny_ref, tmp_path: Path
) -> None:
    from gui.export_dialog import ExportDialog

    chosen = preset("nf4")
    dialog = ExportDialog(
        controller, tiny_ref, chosen.quant, chosen.load_options(), None, tmp_path
    )
    qtbot.addWidget(dialog)
    assert dialog.folder.text() == str(tmp_path / f"{tiny_ref.name}-nf4")
    with qtbot.waitSignal(dialog.export_finished, timeout=120_000):
        dialog.save_button.click()
        assert not dialog.save_button.isEnabled()
        assert dialog.close_button.text() == "Cancel"
    assert dialog.result is not None
    assert "Identical logits on" in dialog.status.text()
    assert dialog.open_button.isVisibleTo(dialog)
    assert dialog.close_button.text() == "Close"
    assert (tmp_path / f"{tiny_ref.name}-nf4" / "model.safetensors").is_file()


def test_dialog_shows_message_and_hint_for_a_bad_target(
    qtbot, controller, tiny_ref, tmp_path: Path
) -> None:
    from gui.export_dialog import ExportDialog

    target = tmp_path / "a-file"
    target.write_text("x")
    chosen = preset("nf4")
    dialog = ExportDialog(controller, tiny_ref, chosen.quant, chosen.load_options())
    qtbot.addWidget(dialog)
    dialog.folder.setText(str(target))
    with qtbot.waitSignal(dialog.export_finished, timeout=60_000):
        dialog.save_button.click()
    assert isinstance(dialog.error, ExportError)
    assert dialog.status.text() == (f"{dialog.error.message}\n{dialog.error.hint}")
    assert "is a file" in dialog.status.text()
    assert dialog.save_button.isEnabled()  # fix the folder and try again


def test_dialog_refuses_unquantized_settings(qtbot, controller, tiny_ref) -> None:
    from gui.export_dialog import ExportDialog

    dialog = ExportDialog(
        controller, tiny_ref, QuantSettings(), preset("fp32").load_options()
    )
    qtbot.addWidget(dialog)
    assert not dialog.save_button.isEnabled()
    assert "4-bit or 8-bit" in dialog.status.text()


def test_window_gets_save_and_report_actions(
    qtbot, tiny_ref, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from core.store import session as session_mod
    from gui.export_dialog import ExportDialog, ReportDialog
    from gui.main_window import MainWindow

    monkeypatch.setenv("NIBBLE_CONFIG_DIR", str(tmp_path))
    window = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    actions = {"save": window.save_action, "report": window.report_action}
    file_texts = [a.text().replace("&", "") for a in window.menu("File").actions()]
    assert "Save quantized model…" in file_texts
    assert file_texts.index("Save quantized model…") < file_texts.index("Quit")
    assert actions["report"] in window.menu("Help").actions()

    actions["save"].trigger()
    dialogs = [w for w in QApplication.topLevelWidgets() if isinstance(w, ExportDialog)]
    assert len(dialogs) == 1
    dialogs[0].close()

    actions["report"].trigger()
    reports = [w for w in QApplication.topLevelWidgets() if isinstance(w, ReportDialog)]
    assert len(reports) == 1
    dialog = reports[0]
    assert "## Versions" in dialog.markdown
    assert "Hardware" in dialog.view.toPlainText()
    dialog.copy_python()
    assert QGuiApplication.clipboard().text() == dialog.data["python"]
    assert "from_pretrained(" in QGuiApplication.clipboard().text()
    md, js = dialog.save_to(tmp_path / "report")
    assert md.read_text() == dialog.markdown
    assert json.loads(js.read_text())["python"] == dialog.data["python"]
    dialog.close()
