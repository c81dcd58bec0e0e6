"""The settings panel: BitsAndBytesConfig and LoadOptions, built from their metadata.

Every quantization widget is generated from ``core.settings.FIELDS`` (title, kind,
choices, description as tooltip, the modes it applies to), so the panel can never
drift from QuantSettings. Invalid combinations are shown inline and reported through
`validity_changed` before Load is pressed.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.checks import Machine, Problem, check_options, unknown_skip_modules
from core.errors import NibbleError
from core.settings import (
    EDITABLE_FIELDS,
    FIELD_BY_NAME,
    LOAD_FIELD_BY_NAME,
    LOAD_FIELDS,
    MODE_TITLES,
    MODES,
    PRESETS,
    FieldSpec,
    LoadOptions,
    QuantSettings,
    check_compatible,
    preset_name_for,
)
from gui import dialogs, fields

logger = logging.getLogger(__name__)

GROUPS = (("4bit", "4-bit"), ("8bit", "8-bit"), ("both", "8-bit and 4-bit"))
LIBRARY_DEFAULTS = {
    "bnb_4bit_compute_dtype": "float32",
    "bnb_4bit_quant_storage": "uint8",
}


class ModuleListEdit(QWidget):
    """An editable list of module names (llm_int8_skip_modules)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setMaximumHeight(72)
        self.list.itemChanged.connect(lambda _item: self.changed.emit())
        self.add_button = QToolButton(text="+")
        self.add_button.setToolTip("Add a module name")
        self.remove_button = QToolButton(text="−")
        self.remove_button.setToolTip("Remove the selected module name")
        self.add_button.clicked.connect(self._add)
        self.remove_button.clicked.connect(self._remove)
        buttons = QVBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)

    def _new_item(self, text: str) -> QListWidgetItem:
        item = QListWidgetItem(text)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        return item

    def _add(self) -> None:
        item = self._new_item("lm_head")
        self.list.addItem(item)
        self.list.setCurrentItem(item)
        self.list.editItem(item)
        self.changed.emit()

    def _remove(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self.changed.emit()

    def value(self) -> list[str] | None:
        names = [self.list.item(i).text().strip() for i in range(self.list.count())]
        names = [n for n in names if n]
        return names or None

    def set_value(self, names: list[str] | None) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for name in names or []:
            self.list.addItem(self._new_item(name))
        self.list.blockSignals(False)


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
        self._module_names: list[str] = []
        self.problems: list[Problem] = []
        self.editors: dict[str, QWidget] = {}
        self.labels: dict[str, QLabel] = {}
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
        head.addWidget(self.presets_button)
        mode_box = QGroupBox("Quantization")
        mode_layout = QVBoxLayout(mode_box)
        mode_layout.addLayout(head)
        self.preset_label = QLabel()
        self.preset_label.setObjectName("hint")
        mode_layout.addWidget(self.preset_label)
        layout.addWidget(mode_box)
        self.mode_group.idToggled.connect(self._on_edit)
        self.mode_group.idClicked.connect(self._on_mode_clicked)

        # -- one group per "applies" value, fields generated from FIELDS --
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
            for spec in EDITABLE_FIELDS:
                if spec.applies != applies:
                    continue
                editor = self._make_editor(spec)
                label = QLabel(spec.title)
                label.setToolTip(f"<b>{spec.name}</b><br>{spec.description}")
                editor.setToolTip(f"<b>{spec.name}</b><br>{spec.description}")
                label.setBuddy(editor)
                form.addRow(label, editor)
                self.editors[spec.name] = editor
                self.labels[spec.name] = label
                if spec.name == "llm_int8_skip_modules":
                    self.lm_head_check = QCheckBox("Quantize lm_head too")
                    self.lm_head_check.setToolTip(
                        "<b>quantize_lm_head</b><br>A custom skip list replaces the "
                        "library's, which would quantize the output head. Nibble keeps "
                        "lm_head unquantized unless this is ticked."
                    )
                    self.lm_head_check.toggled.connect(self._on_edit)
                    form.addRow("", self.lm_head_check)
            self.groups[applies] = box
            layout.addWidget(box)

        # -- load options, generated from LOAD_FIELDS --
        box = QGroupBox("Loading")
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        self.option_editors: dict[str, QWidget] = {}
        for option in LOAD_FIELDS:
            editor = fields.make_editor(option)
            self.option_editors[option.name] = editor
            if isinstance(editor, QCheckBox):
                form.addRow("", editor)
                self.labels[option.name] = QLabel()  # its text is on the box itself
            else:
                label = fields.make_label(option, editor)
                form.addRow(label, editor)
                self.labels[option.name] = label
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

    # -- widgets from metadata --
    def _make_editor(self, spec: FieldSpec) -> QWidget:
        if spec.kind == "bool":
            editor: QWidget = QCheckBox()
            editor.toggled.connect(self._on_edit)
        elif spec.kind == "float":
            editor = QDoubleSpinBox()
            editor.setRange(0.0, 1000.0)
            editor.setDecimals(2)
            editor.setSingleStep(0.5)
            editor.valueChanged.connect(self._on_edit)
            fields.guard_wheel(editor)
        elif spec.kind == "choice":
            editor = QComboBox()
            for choice in spec.choices:
                if choice is None:
                    shown = LIBRARY_DEFAULTS.get(spec.name, "library")
                    editor.addItem(f"default ({shown})", None)
                else:
                    editor.addItem(str(choice), choice)
            editor.currentIndexChanged.connect(self._on_edit)
            fields.guard_wheel(editor)
        elif spec.kind == "list":
            editor = ModuleListEdit()
            editor.changed.connect(self._on_edit)
        else:  # pragma: no cover - FIELDS only holds the kinds above
            raise ValueError(spec.kind)
        editor.setObjectName(spec.name)
        return editor

    def _field_value(self, spec: FieldSpec) -> Any:
        editor = self.editors[spec.name]
        if isinstance(editor, QCheckBox):
            return editor.isChecked()
        if isinstance(editor, QDoubleSpinBox):
            return editor.value()
        if isinstance(editor, QComboBox):
            return editor.currentData()
        if isinstance(editor, ModuleListEdit):
            return editor.value()
        raise TypeError(type(editor))

    def _set_field(self, spec: FieldSpec, value: Any) -> None:
        editor = self.editors[spec.name]
        if isinstance(editor, QCheckBox):
            editor.setChecked(bool(value))
        elif isinstance(editor, QDoubleSpinBox):
            editor.setValue(float(value))
        elif isinstance(editor, QComboBox):
            editor.setCurrentIndex(max(0, editor.findData(value)))
        elif isinstance(editor, ModuleListEdit):
            editor.set_value(value)

    # -- reading and writing --
    def mode(self) -> str:
        return MODES[max(0, self.mode_group.checkedId())]

    def raw_values(self) -> dict[str, Any]:
        """What the widgets hold, by QuantSettings field name."""
        values: dict[str, Any] = {"mode": self.mode()}
        for spec in EDITABLE_FIELDS:
            values[spec.name] = self._field_value(spec)
        values["quantize_lm_head"] = self.lm_head_check.isChecked()
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
            for spec in EDITABLE_FIELDS:
                self._set_field(spec, getattr(quant, spec.name))
            self.lm_head_check.setChecked(quant.quantize_lm_head)
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
        self._on_edit()

    def set_module_names(self, names: list[str]) -> None:
        """The selected model's module names, for the Keep-unquantized check."""
        self._module_names = list(names)
        self._on_edit()

    @property
    def error(self) -> str:
        """The reason the current settings cannot be loaded, '' when they can."""
        return self._error

    # -- reactions --
    def _on_edit(self, *_args: Any) -> None:
        if self._updating:
            return
        mode = self.mode()
        for applies, box in self.groups.items():
            spec_reason = FieldSpec("", "", "", "bool", applies, None).reason_disabled(
                mode
            )
            box.setEnabled(not spec_reason)
            self.group_reasons[applies].setText(spec_reason)
            self.group_reasons[applies].setVisible(bool(spec_reason))
            for spec in EDITABLE_FIELDS:
                if spec.applies == applies:
                    tip = f"<b>{spec.name}</b><br>{spec.description}"
                    if spec_reason:
                        tip += f"<br><i>{spec_reason}</i>"
                    self.editors[spec.name].setToolTip(tip)
                    self.labels[spec.name].setToolTip(tip)
        problems: list[Problem] = []
        quant = options = None
        try:
            quant, options = self.settings()
            check_compatible(quant, options)
        except NibbleError as exc:
            problems.append(_as_problem(exc))
        if quant is not None and options is not None:
            if self._machine is not None:
                problems += check_options(options, self._machine)
            problems += unknown_skip_modules(quant, self._module_names)
        self._show_problems(problems)
        if problems or quant is None or options is None:
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
        self.changed.emit(quant, options)

    def _on_mode_clicked(self, index: int) -> None:
        # 4-bit from the library's defaults means fp4; nf4 is the better start.
        if MODES[index] != "4bit":
            return
        untouched = all(
            self._field_value(spec) == spec.default
            for spec in EDITABLE_FIELDS
            if spec.applies == "4bit"
        )
        if untouched:
            self._set_field(FIELD_BY_NAME["bnb_4bit_quant_type"], "nf4")

    def _show_problems(self, problems: list[Problem]) -> None:
        """Say what is wrong in the label's words and paint those fields red."""
        bad = {p.field for p in problems}
        for name, editor in (*self.editors.items(), *self.option_editors.items()):
            fields.mark_invalid(editor, name in bad)
            fields.mark_invalid(self.labels[name], name in bad)
        self._error = " · ".join(p.text() for p in problems)
        self.problems = problems
        self.error_label.setText("\n".join(f"⚠ {p.text()}" for p in problems))
        self.error_label.setVisible(bool(problems))

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


# Words in a SettingsError that name the LoadOptions field it is about.
_OPTION_WORDS = {
    "device map": "device_map",
    "max memory": "max_memory",
    "attention": "attn_implementation",
    "dtype": "dtype",
    "trust_remote_code": "trust_remote_code",
}


def _as_problem(exc: NibbleError) -> Problem:
    """A settings error as a Problem on the field it names, in the label's words."""
    text = exc.message
    field = next((f.name for f in EDITABLE_FIELDS if f.name in text), "")
    if not field:
        field = next((n for w, n in _OPTION_WORDS.items() if w in text.lower()), "")
    if "mixes a GPU" in text:
        field = "max_memory"
    title = FIELD_BY_NAME[field].title if field in FIELD_BY_NAME else ""
    if field in LOAD_FIELD_BY_NAME:
        title = LOAD_FIELD_BY_NAME[field].title
    message = f"{title}: {text}" if title and not text.startswith(title) else text
    return Problem(field, message, exc.hint)
