"""The settings panel: BitsAndBytesConfig and LoadOptions, built from their schema.

Every widget is made by ``gui.fields.make_editor`` from the field's Spec (title, kind,
range, choices, description as tooltip, the modes it applies to), so the panel can
never drift from the settings. On every edit the panel runs the one check pipeline
(``core.checks.check``) with what it knows of the machine and the selected model, and
shows each problem red on its field with the reason right under it. Problems are
reported through `validity_changed` before Load is pressed.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.checks import Machine, ModelFacts, Problem, check
from core.errors import NibbleError, SettingsError
from core.settings import (
    BNB_FIELDS,
    MODE_TITLES,
    MODES,
    PRESETS,
    LoadOptions,
    QuantSettings,
    fields_of,
    preset_name_for,
    reason_disabled,
    spec_of,
)
from gui import dialogs, fields

logger = logging.getLogger(__name__)

GROUPS = (("4bit", "4-bit"), ("8bit", "8-bit"), ("both", "8-bit and 4-bit"))


class SettingsPanel(QWidget):
    """Quantization + load options; emits `changed(quant, options)` on every edit."""

    changed = Signal(object, object)
    validity_changed = Signal(bool, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._updating = False
        self._model_name = "your-model-name"
        self._error = ""
        self._machine: Machine | None = None
        self._module_names: tuple[str, ...] = ()
        # What the estimate said the weights need, and under which settings.
        self._model_bytes: tuple[tuple[Any, ...], int] | None = None
        self._emitted: tuple[QuantSettings, LoadOptions] | None = None
        self.problems: list[Problem] = []
        self.editors: dict[str, QWidget] = {}
        self.labels: dict[str, QLabel] = {}
        self.field_errors: dict[str, fields.ReasonLabel] = {}  # the reason, under it
        self._forms: dict[str, QFormLayout] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        # -- mode + presets --
        head = QHBoxLayout()
        self.mode_group = QButtonGroup(self)
        self.mode_buttons: dict[str, QRadioButton] = {}
        for index, mode in enumerate(MODES):
            button = QRadioButton(MODE_TITLES[mode])
            self.mode_group.addButton(button, index)
            self.mode_buttons[mode] = button
            head.addWidget(button)
        head.addStretch(1)
        self.presets_button = QToolButton(text="Presets")
        self.presets_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.presets_menu = QMenu(self.presets_button)
        for p in PRESETS.values():
            action = self.presets_menu.addAction(f"{p.title} — {p.description}")
            action.setData(p.name)
            action.setCheckable(True)
            action.triggered.connect(lambda _c=False, n=p.name: self.apply_preset(n))
        self.presets_button.setMenu(self.presets_menu)
        mode_box = QGroupBox("Quantization")
        mode_layout = QVBoxLayout(mode_box)
        mode_layout.addLayout(head)
        # The preset's name and the Presets menu share a row of their own, so the
        # mode buttons never squeeze the menu's button in a narrow column.
        preset_row = QHBoxLayout()
        self.preset_label = QLabel()
        self.preset_label.setObjectName("hint")
        self.preset_label.setWordWrap(True)
        preset_row.addWidget(self.preset_label, 1)
        preset_row.addWidget(self.presets_button)
        mode_layout.addLayout(preset_row)
        layout.addWidget(mode_box)
        self.mode_group.idToggled.connect(self._on_edit)
        self.mode_group.idClicked.connect(self._on_mode_clicked)

        # -- one group per "applies" value, fields generated from the schema --
        self.groups: dict[str, QGroupBox] = {}
        self.group_reasons: dict[str, QLabel] = {}
        for applies, title in GROUPS:
            box = QGroupBox(title)
            form = QFormLayout(box)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
            reason = QLabel()
            reason.setObjectName("hint")
            reason.setWordWrap(True)
            form.addRow(reason)
            self.group_reasons[applies] = reason
            for spec in BNB_FIELDS:
                if spec.applies == applies:
                    editor = fields.make_editor(spec)
                    if isinstance(editor, QCheckBox):
                        editor.setText("")  # the label beside it says it
                    self._add_row(
                        form, spec.name, editor, fields.make_label(spec, editor)
                    )
                if spec.name == "llm_int8_skip_modules" and spec.applies == applies:
                    lm_head = spec_of(QuantSettings, "quantize_lm_head")
                    self.lm_head_check = fields.make_editor(lm_head)
                    self._add_row(form, lm_head.name, self.lm_head_check, QLabel())
            self.groups[applies] = box
            layout.addWidget(box)
        for editor in self.editors.values():
            fields.changed_signal(editor).connect(self._on_edit)

        # -- load options, generated from the schema --
        box = QGroupBox("Loading")
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        self.option_editors: dict[str, QWidget] = {}
        for option in fields_of(LoadOptions):
            editor = fields.make_editor(option)
            self.option_editors[option.name] = editor
            if isinstance(editor, QCheckBox):
                label = QLabel()  # its text is on the box itself
            else:
                label = fields.make_label(option, editor)
            self._add_row(form, option.name, editor, label, quant=False)
        self.device_map = self.option_editors["device_map"]
        self.max_memory = self.option_editors["max_memory"]
        self.dtype = self.option_editors["dtype"]
        self.attn = self.option_editors["attn_implementation"]
        self.trust = self.option_editors["trust_remote_code"]
        for name, editor in self.option_editors.items():
            if name == "trust_remote_code":
                self.trust.toggled.connect(self._on_trust_toggled)
            else:
                fields.changed_signal(editor).connect(self._on_edit)
        layout.addWidget(box)

        # -- inline validation + python --
        self.error_label = QLabel()
        self.error_label.setObjectName("error")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        layout.addWidget(self.error_label)
        code_box = QGroupBox("Python")
        code_layout = QVBoxLayout(code_box)
        self.python = QPlainTextEdit()
        self.python.setReadOnly(True)
        self.python.setFont(
            QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        )
        self.python.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.python.setMinimumHeight(150)
        self.python.setToolTip("The same settings as code you can run")
        code_layout.addWidget(self.python)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the snippet to the clipboard")
        self.copy_button.clicked.connect(self.copy_python)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.copy_button)
        code_layout.addLayout(row)
        layout.addWidget(code_box, 1)

        self.set_settings(QuantSettings(), LoadOptions())

    def _add_row(
        self,
        form: QFormLayout,
        name: str,
        editor: QWidget,
        label: QLabel,
        quant: bool = True,
    ) -> None:
        """A field's row, and under it the row that says what is wrong with it."""
        form.addRow(label, editor)
        if quant:
            self.editors[name] = editor
        self.labels[name] = label
        error = fields.ReasonLabel()
        form.addRow("", error)
        form.setRowVisible(error, False)
        self.field_errors[name] = error
        self._forms[name] = form

    # -- reading and writing --
    def mode(self) -> str:
        return MODES[max(0, self.mode_group.checkedId())]

    def raw_values(self) -> dict[str, Any]:
        """What the widgets hold, by QuantSettings field name."""
        values: dict[str, Any] = {"mode": self.mode()}
        for name, editor in self.editors.items():
            values[name] = fields.value(editor)
        return values

    def quant_settings(self) -> QuantSettings:
        """The panel as QuantSettings; raises SettingsError when it is invalid."""
        return QuantSettings(**self.raw_values())

    def load_options(self) -> LoadOptions:
        """The panel as LoadOptions; raises SettingsError when it is invalid."""
        values = {n: fields.value(e) for n, e in self.option_editors.items()}
        values["device_map"] = values["device_map"] or "auto"
        return LoadOptions(**values)

    def settings(self) -> tuple[QuantSettings, LoadOptions]:
        return self.quant_settings(), self.load_options()

    def set_settings(self, quant: QuantSettings, options: LoadOptions) -> None:
        """Show `quant` and `options` (emits `changed` once)."""
        self._updating = True
        try:
            self.mode_buttons[quant.mode].setChecked(True)
            for name, editor in self.editors.items():
                fields.set_value(editor, getattr(quant, name))
            for name, editor in self.option_editors.items():
                fields.set_value(editor, getattr(options, name))
        finally:
            self._updating = False
        self._on_edit()

    def apply_preset(self, name: str) -> None:
        p = PRESETS[name]
        options = self._options_or_default()
        self.set_settings(p.quant, p.load_options(options))

    def _options_or_default(self) -> LoadOptions:
        try:
            return self.load_options()
        except NibbleError:
            return LoadOptions()

    def set_model_name(self, name: str) -> None:
        """The model the snippet and the consent dialog name."""
        self._model_name = name
        self._on_edit()

    def set_machine(self, machine: Machine) -> None:
        """What this machine can run: settings it cannot are shown red."""
        self._machine = machine
        self._on_edit(quiet=True)

    def set_module_names(self, names: list[str] | None) -> None:
        """The selected model's module names, for the Keep-unquantized check; [] while
        they are not known (a new model: what the last one needed is dropped too)."""
        self._module_names = tuple(names or ())
        if not names:
            self._model_bytes = None
        self._on_edit(quiet=True)

    def set_model_bytes(
        self, quant: QuantSettings, options: LoadOptions, needed: int | None
    ) -> None:
        """What the selected model's weights need under these settings (from the
        estimate), for the check of a CPU memory cap."""
        self._model_bytes = (
            None if needed is None else (_bytes_key(quant, options), needed)
        )
        # Quietly: settings passed on again would start another estimate, and so on.
        self._on_edit(quiet=True)

    def model_facts(self) -> ModelFacts:
        """What the checks know of the selected model now."""
        known = self._model_bytes

        def needed(quant: QuantSettings, options: LoadOptions) -> int | None:
            if known is None or known[0] != _bytes_key(quant, options):
                return None
            return known[1]

        return ModelFacts(self._module_names, needed)

    @property
    def error(self) -> str:
        """The reason the current settings cannot be loaded, '' when they can."""
        return self._error

    # -- reactions --
    def _on_edit(self, *_args: Any, quiet: bool = False) -> None:
        """Check the settings; pass them on when they are valid (when `quiet`, only
        if they differ from the last ones passed on)."""
        if self._updating:
            return
        mode = self.mode()
        for applies, box in self.groups.items():
            why = reason_disabled(applies, mode)
            box.setEnabled(not why)
            self.group_reasons[applies].setText(why)
            self.group_reasons[applies].setVisible(bool(why))
        for spec in fields_of(QuantSettings):
            if spec.name in self.editors:
                tip = fields.tooltip(spec, reason_disabled(spec.applies, mode))
                self.editors[spec.name].setToolTip(tip)
                self.labels[spec.name].setToolTip(tip)
        problems: list[Problem] = []
        quant = options = None
        try:
            quant = self.quant_settings()
        except SettingsError as exc:
            problems.append(Problem.from_error(exc))
        try:
            options = self.load_options()
        except SettingsError as exc:
            problems.append(Problem.from_error(exc))
        if quant is not None and options is not None:
            problems += check(quant, options, self._machine, self.model_facts())
        self._show_problems(problems)
        if self._error or quant is None or options is None:
            self.python.setPlainText("# Fix the settings above to see the code.\n")
            self.preset_label.setText("")
            self._mark_preset(None)
            self.validity_changed.emit(False, self._error)
            return
        name = preset_name_for(quant, options.dtype)
        self.preset_label.setText(
            f"Preset: {PRESETS[name].title}"
            if name
            else f"Custom settings ({quant.label()})"
        )
        self._mark_preset(name)
        bar = self.python.horizontalScrollBar().value()
        self.python.setPlainText(quant.to_python(self._model_name, options))
        self.python.horizontalScrollBar().setValue(bar)
        self.validity_changed.emit(True, "")
        if not quiet or self._emitted != (quant, options):
            self._emitted = (quant, options)
            self.changed.emit(quant, options)

    def _on_mode_clicked(self, index: int) -> None:
        # 4-bit from the library's defaults means fp4; nf4 is the better start.
        if MODES[index] != "4bit":
            return
        untouched = all(
            fields.value(self.editors[spec.name]) == spec.default
            for spec in BNB_FIELDS
            if spec.applies == "4bit"
        )
        if untouched:
            fields.set_value(self.editors["bnb_4bit_quant_type"], "nf4")

    def _show_problems(self, problems: list[Problem]) -> None:
        """Paint each problem's field red and say why right under it; a problem of no
        field goes to the line under the panel. Warnings are said, never painted."""
        by_field: dict[str, list[Problem]] = {}
        loose: list[Problem] = []
        for problem in problems:
            if problem.field in self.field_errors:
                by_field.setdefault(problem.field, []).append(problem)
            else:
                loose.append(problem)
        for name, error in self.field_errors.items():
            mine = by_field.get(name, [])
            bad = any(not p.warning for p in mine)
            editor = self.editors.get(name) or self.option_editors[name]
            fields.mark_invalid(editor, bad)
            fields.mark_invalid(self.labels[name], bad)
            error.setText("\n".join(_line(p) for p in mine))
            error.setObjectName("error" if bad else "hint")
            error.style().unpolish(error)
            error.style().polish(error)
            self._forms[name].setRowVisible(error, bool(mine))
        blocking = [p for p in problems if not p.warning]
        self._error = " · ".join(p.text() for p in blocking)
        self.problems = problems
        self.error_label.setText("\n".join(_line(p) for p in loose))
        self.error_label.setVisible(bool(loose))

    def _mark_preset(self, name: str | None) -> None:
        for action in self.presets_menu.actions():
            action.setChecked(action.data() == name)

    def _on_trust_toggled(self, on: bool) -> None:
        if on and not self._updating and not self.ask_trust_consent():
            self.trust.blockSignals(True)
            self.trust.setChecked(False)
            self.trust.blockSignals(False)
        self._on_edit()

    def ask_trust_consent(self) -> bool:
        """Ask before enabling trust_remote_code; True when the user agrees."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Trust remote code?")
        box.setText(f"Run the code that ships with {self._model_name}?")
        box.setInformativeText(
            "trust_remote_code lets the model's own Python files run on this computer "
            "with your permissions when it loads. They can read and change your files. "
            "Only turn it on for models whose authors you trust."
        )
        box.setStandardButtons(
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel
        )
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.button(QMessageBox.StandardButton.Yes).setText("Trust and run its code")
        return box.exec() == QMessageBox.StandardButton.Yes

    def copy_python(self) -> None:
        QGuiApplication.clipboard().setText(self.python.toPlainText())
        dialogs.say_copied(self.copy_button)


def _bytes_key(quant: QuantSettings, options: LoadOptions) -> tuple[Any, ...]:
    """What the weights' size depends on (a memory cap does not change it)."""
    return (quant.effective(), options.dtype, options.device_map)


def _line(problem: Problem) -> str:
    return f"{'' if problem.warning else '⚠ '}{problem.text()}"
