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
    QLineEdit,
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

from core.errors import NibbleError
from core.settings import (
    EDITABLE_FIELDS,
    FLOAT_DTYPES,
    MODE_TITLES,
    MODES,
    PRESETS,
    FieldSpec,
    LoadOptions,
    QuantSettings,
    check_compatible,
    preset_name_for,
)

logger = logging.getLogger(__name__)

GROUPS = (("4bit", "4-bit"), ("8bit", "8-bit"), ("both", "8-bit and 4-bit"))
LIBRARY_DEFAULTS = {
    "bnb_4bit_compute_dtype": "float32",
    "bnb_4bit_quant_storage": "uint8",
}
DEVICE_MAPS = ("auto", "cpu", "cuda:0")
ATTN = ("auto", "eager", "sdpa", "flash_attention_2")


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
        self._machine = ""
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

        # -- load options --
        box = QGroupBox("Loading")
        form = QFormLayout(box)
        self.device_map = QComboBox()
        self.device_map.setEditable(True)
        self.device_map.addItems(DEVICE_MAPS)
        self.device_map.setToolTip(
            "<b>device_map</b><br>auto puts the model on the GPU when there is one, "
            "else on the CPU; cpu or cuda:N pins it to one device."
        )
        self.device_map.currentTextChanged.connect(self._on_edit)
        form.addRow("Device map", self.device_map)
        self.max_memory = QLineEdit()
        self.max_memory.setPlaceholderText("e.g. 0=6GiB,cpu=20GiB")
        self.max_memory.setToolTip(
            "<b>max_memory</b><br>A cap per device; layers that do not fit go to the "
            "next device. Empty means no cap."
        )
        self.max_memory.textChanged.connect(self._on_edit)
        form.addRow("Max memory", self.max_memory)
        self.dtype = QComboBox()
        self.dtype.addItems(["auto", *FLOAT_DTYPES])
        self.dtype.setToolTip(
            "<b>dtype</b><br>The dtype of everything that is not quantized (embeddings, "
            "norms, the output head). auto: float32 on the CPU, the model's own on a "
            "GPU."
        )
        self.dtype.currentTextChanged.connect(self._on_edit)
        form.addRow("dtype", self.dtype)
        self.attn = QComboBox()
        self.attn.addItems(ATTN)
        self.attn.setToolTip(
            "<b>attn_implementation</b><br>auto lets transformers choose (sdpa "
            "where it can)."
        )
        self.attn.currentTextChanged.connect(self._on_edit)
        form.addRow("Attention", self.attn)
        self.trust = QCheckBox("Trust remote code")
        self.trust.setToolTip(
            "<b>trust_remote_code</b><br>Run Python code shipped inside the model's "
            "folder or repository. Only for models whose authors you trust."
        )
        self.trust.toggled.connect(self._on_trust_toggled)
        form.addRow("", self.trust)
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
        elif spec.kind == "choice":
            editor = QComboBox()
            for choice in spec.choices:
                if choice is None:
                    shown = LIBRARY_DEFAULTS.get(spec.name, "library")
                    editor.addItem(f"default ({shown})", None)
                else:
                    editor.addItem(str(choice), choice)
            editor.currentIndexChanged.connect(self._on_edit)
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
        return LoadOptions(
            device_map=self.device_map.currentText().strip() or "auto",
            max_memory=self.max_memory.text().strip(),
            dtype=self.dtype.currentText(),
            attn_implementation=self.attn.currentText(),
            trust_remote_code=self.trust.isChecked(),
        )

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
            self.device_map.setCurrentText(options.device_map)
            self.max_memory.setText(
                ",".join(f"{k}={v}" for k, v in options.max_memory.items())
            )
            self.dtype.setCurrentText(options.dtype)
            self.attn.setCurrentText(options.attn_implementation)
            self.trust.setChecked(options.trust_remote_code)
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

    def set_machine(self, device: str) -> None:
        """What this machine can run ("CPU" or "CUDA: <name>"), for the checks."""
        self._machine = device
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
        try:
            quant, options = self.settings()
            check_compatible(quant, options)
        except NibbleError as exc:
            self._error = exc.message + (f" — {exc.hint}" if exc.hint else "")
            self.error_label.setText("⚠ " + self._error)
            self.error_label.show()
            self.python.setPlainText("# Fix the settings above to see the code.\n")
            self.preset_label.setText("")
            self.validity_changed.emit(False, self._error)
            return
        self._error = ""
        self.error_label.hide()
        name = preset_name_for(quant, options.dtype)
        self.preset_label.setText(
            f"Preset: {PRESETS[name].title}" if name else "Custom settings"
        )
        bar = self.python.horizontalScrollBar().value()
        self.python.setPlainText(quant.to_python(self._model_name, options))
        self.python.horizontalScrollBar().setValue(bar)
        self.validity_changed.emit(True, "")
        self.changed.emit(quant, options)

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
