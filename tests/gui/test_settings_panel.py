"""The settings panel maps onto QuantSettings and LoadOptions one to one."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QApplication, QCheckBox, QComboBox, QDoubleSpinBox

from core.settings import (
    BNB_FIELDS,
    PRESETS,
    LoadOptions,
    QuantSettings,
)
from gui.fields import ModuleListEdit
from gui.settings_panel import SettingsPanel


def values_for(spec):
    """Every value worth trying for one field."""
    if spec.kind == "bool":
        return [True, False]
    if spec.kind == "float":
        return [0.0, 3.5, 6.0, 12.25]
    if spec.kind == "choice":
        return list(spec.choices)
    return [None, ["lm_head"], ["lm_head", "mlp.down_proj"]]


@pytest.fixture
def panel(qtbot):
    widget = SettingsPanel()
    qtbot.addWidget(widget)
    return widget


@pytest.mark.parametrize("spec", BNB_FIELDS, ids=lambda s: s.name)
def test_every_field_round_trips(panel, spec):
    for mode in ("8bit", "4bit"):
        for value in values_for(spec):
            quant = QuantSettings(mode=mode, **{spec.name: value})
            panel.set_settings(quant, LoadOptions())
            assert panel.quant_settings() == quant
            assert getattr(panel.quant_settings(), spec.name) == value


def test_widgets_write_quant_settings(panel, qtbot):
    panel.set_settings(QuantSettings(), LoadOptions())
    seen = []
    panel.changed.connect(lambda q, o: seen.append(q))
    panel.mode_buttons["4bit"].click()
    combo = panel.editors["bnb_4bit_quant_type"]
    assert isinstance(combo, QComboBox)
    combo.setCurrentIndex(combo.findData("nf4"))
    dq = panel.editors["bnb_4bit_use_double_quant"]
    assert isinstance(dq, QCheckBox)
    dq.setChecked(True)
    dtype = panel.editors["bnb_4bit_compute_dtype"]
    dtype.setCurrentIndex(dtype.findData("bfloat16"))
    threshold = panel.editors["llm_int8_threshold"]
    assert isinstance(threshold, QDoubleSpinBox)
    threshold.setValue(4.0)
    skip = panel.editors["llm_int8_skip_modules"]
    assert isinstance(skip, ModuleListEdit)
    skip.set_value(["mlp.down_proj"])
    skip.changed.emit()
    expected = QuantSettings(
        mode="4bit",
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype="bfloat16",
        llm_int8_threshold=4.0,
        llm_int8_skip_modules=["mlp.down_proj"],
    )
    assert seen[-1] == expected
    assert "bnb_4bit_use_double_quant=True" in panel.python.toPlainText()
    assert '"mlp.down_proj", "lm_head"' in panel.python.toPlainText()


def test_load_options_round_trip(panel):
    options = LoadOptions(
        device_map="cpu",
        max_memory={"cpu": "2GiB"},
        dtype="bfloat16",
        attn_implementation="eager",
    )
    panel.set_settings(QuantSettings(mode="8bit"), options)
    assert panel.load_options() == options


def test_fields_that_do_not_apply_are_disabled_with_reason(panel):
    panel.set_settings(QuantSettings(mode="4bit"), LoadOptions())
    assert panel.groups["4bit"].isEnabled()
    assert not panel.groups["8bit"].isEnabled()
    assert panel.group_reasons["8bit"].text() == "Applies to 8-bit only."
    assert "Applies to 8-bit only." in panel.editors["llm_int8_threshold"].toolTip()
    panel.set_settings(QuantSettings(), LoadOptions())
    for applies in ("4bit", "8bit", "both"):
        assert not panel.groups[applies].isEnabled()
        assert "without quantization" in panel.group_reasons[applies].text()


def test_every_field_has_its_description_as_tooltip(panel):
    for spec in BNB_FIELDS:
        assert spec.description in panel.editors[spec.name].toolTip()
        assert spec.name in panel.labels[spec.name].toolTip()


def test_invalid_combination_shown_inline(panel, qtbot):
    panel.set_settings(QuantSettings(mode="4bit"), LoadOptions())
    with qtbot.waitSignal(panel.validity_changed) as blocker:
        panel.max_memory.setText("0=4GiB,cpu=8GiB")
    assert blocker.args[0] is False
    assert "llm_int8_enable_fp32_cpu_offload" in blocker.args[1]
    under = panel.field_errors["max_memory"]
    assert not under.isHidden()  # the reason sits under its field
    assert "mixes a GPU with cpu/disk" in under.text()
    panel.editors["llm_int8_enable_fp32_cpu_offload"].setChecked(True)
    assert panel.error == ""
    assert under.isHidden()
    panel.max_memory.setText("lots")
    assert "has no '='" in panel.error


def test_bad_module_name_is_invalid(panel):
    panel.set_settings(QuantSettings(mode="8bit"), LoadOptions())
    panel.editors["llm_int8_skip_modules"].set_value(["lm head!"])
    panel.editors["llm_int8_skip_modules"].changed.emit()
    assert "is not a module name" in panel.error


def test_presets_menu_applies_each_preset(panel):
    for action in panel.presets_menu.actions():
        action.trigger()
        p = PRESETS[action.data()]
        assert panel.quant_settings() == p.quant
        assert panel.load_options().dtype == p.dtype
        assert panel.preset_label.text() == f"Preset: {p.title}"


def test_trust_remote_code_needs_consent(panel, monkeypatch):
    panel.set_model_name("someone/odd-model")
    asked = []
    monkeypatch.setattr(panel, "ask_trust_consent", lambda: asked.append(1) or False)
    panel.trust.setChecked(True)
    assert asked == [1]
    assert not panel.trust.isChecked()
    assert panel.load_options().trust_remote_code is False
    monkeypatch.setattr(panel, "ask_trust_consent", lambda: True)
    panel.trust.setChecked(True)
    assert panel.load_options().trust_remote_code is True
    assert "trust_remote_code=True" in panel.python.toPlainText()


def test_python_pane_copies_snippet(panel):
    panel.set_model_name("org/model")
    panel.apply_preset("nf4-dq")
    panel.copy_button.click()
    text = QApplication.clipboard().text()
    assert text == QuantSettings(**panel.raw_values()).to_python(
        "org/model", panel.load_options()
    )
    assert 'bnb_4bit_quant_type="nf4"' in text


def test_invalid_settings_disable_load_with_the_reason(qtbot, config_dir):
    from core.store.session import Session
    from gui.main_window import MainWindow

    window = MainWindow(Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    assert not window.load_button.isEnabled()
    assert "import" in window.load_button.toolTip()
    window.controller.import_libraries()
    qtbot.waitUntil(lambda: window.load_button.isEnabled(), timeout=120_000)
    window.settings_panel.max_memory.setText("0=4GiB,cpu=8GiB")
    assert not window.load_button.isEnabled()
    assert not window.load_action.isEnabled()
    assert "llm_int8_enable_fp32_cpu_offload" in window.load_button.toolTip()
    assert window.current_settings() is not None  # valid fields, bad combination
    window.request_load()
    assert window.controller.running("load") is None
    assert "mixes a GPU" in window.load_label.text()
    window.settings_panel.max_memory.setText("")
    assert window.load_button.isEnabled()


def _wheel(widget, delta: int = -120) -> None:
    from PySide6.QtCore import QPoint, QPointF, Qt
    from PySide6.QtGui import QWheelEvent

    center = QPointF(widget.rect().center())
    event = QWheelEvent(
        center,
        QPointF(widget.mapToGlobal(center.toPoint())),
        QPoint(0, 0),
        QPoint(0, delta),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


def test_wheel_over_an_unfocused_combo_changes_nothing(panel):
    """Scrolling the panel past Attention used to switch it to flash_attention_2."""
    panel.show()
    panel.set_settings(PRESETS["nf4"].quant, LoadOptions())
    for widget in (
        panel.attn,
        panel.dtype,
        panel.device_map,
        panel.editors["bnb_4bit_quant_type"],
        panel.editors["bnb_4bit_compute_dtype"],
    ):
        before = panel.settings()
        _wheel(widget)
        assert panel.settings() == before, widget.objectName()
    panel.attn.setFocus()
    QApplication.processEvents()
    if panel.attn.hasFocus():  # a focused combo still takes the wheel on purpose
        _wheel(panel.attn)
        assert panel.load_options().attn_implementation != "auto"


def test_what_this_machine_cannot_run_is_red_and_blocks_load(panel):
    from core.checks import Machine

    panel.set_machine(Machine(0, False, "CPU"))
    panel.device_map.setCurrentText("cuda:0")
    assert "Device map: cuda:0 needs an NVIDIA GPU" in panel.error
    assert panel.device_map.property("invalid") is True
    assert panel.labels["device_map"].property("invalid") is True
    panel.device_map.setCurrentText("cpu")
    panel.attn.setCurrentText("flash_attention_2")
    assert "runs only on an NVIDIA GPU" in panel.error
    assert panel.attn.property("invalid") and not panel.device_map.property("invalid")
    panel.attn.setCurrentText("sdpa")
    assert panel.error == "" and panel.field_errors["attn_implementation"].isHidden()


def test_keep_unquantized_names_that_match_nothing_are_flagged(panel):
    panel.set_settings(QuantSettings(mode="4bit"), LoadOptions())
    panel.set_module_names(["lm_head", "model", "model.layers.0.mlp.down_proj"])
    skip = panel.editors["llm_int8_skip_modules"]
    skip.set_value(["mlp.dwn_proj"])
    skip.changed.emit()
    assert "'mlp.dwn_proj' matches no module" in panel.error
    assert "did you mean mlp.down_proj" in panel.error
    assert skip.property("invalid") is True
    skip.set_value(["mlp.down_proj"])
    skip.changed.emit()
    assert panel.error == ""


def test_errors_use_the_label_words_and_mark_the_field(panel):
    panel.max_memory.setText("lots")
    assert panel.error.startswith("max memory entry 'lots' has no '='")
    assert "has no '='" in panel.field_errors["max_memory"].text()
    assert panel.max_memory.property("invalid") is True
    assert panel.labels["max_memory"].property("invalid") is True
    panel.max_memory.setText("")
    assert not panel.max_memory.property("invalid")


def test_mode_and_presets_agree(panel):
    """NF4 then 8-bit is INT8; 4-bit after INT8 is NF4; the menu marks the preset."""
    panel.apply_preset("nf4")
    panel.mode_buttons["8bit"].click()
    assert panel.preset_label.text() == "Preset: INT8"
    checked = [a.data() for a in panel.presets_menu.actions() if a.isChecked()]
    assert checked == ["int8"]
    panel.apply_preset("int8")
    panel.mode_buttons["4bit"].click()
    assert panel.quant_settings().bnb_4bit_quant_type == "nf4"
    assert panel.preset_label.text() == "Preset: NF4"
    panel.editors["bnb_4bit_use_double_quant"].setChecked(True)
    assert panel.preset_label.text() == "Custom settings (nf4-dq)"
    assert not any(a.isChecked() for a in panel.presets_menu.actions())


def test_the_window_flags_keep_unquantized_names_that_match_nothing(qtbot, config_dir):
    """A typo in Keep unquantized is red on the field with real names under it, and
    Load stays off; a bad memory cap says why under its own field too."""
    from core.store.session import Session
    from gui.main_window import MainWindow

    window = MainWindow(Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    window.controller.import_libraries()
    qtbot.waitUntil(
        lambda: window.load_button.isEnabled() and bool(window.controller.module_names),
        timeout=180_000,
    )
    panel = window.settings_panel
    panel.mode_buttons["4bit"].click()
    skip = panel.editors["llm_int8_skip_modules"]
    under = panel.field_errors["llm_int8_skip_modules"]
    for name, nearest in (
        ("lm_haed", "did you mean lm_head?"),
        ("not_a_module", "this model's names include lm_head, mlp.down_proj"),
    ):
        skip.set_value([name])
        skip.changed.emit()
        assert skip.property("invalid") is True
        assert panel.labels["llm_int8_skip_modules"].property("invalid") is True
        assert not under.isHidden()
        assert f"'{name}' matches no module of this model" in under.text()
        assert nearest in under.text()
        assert not window.load_button.isEnabled()
        window.request_load()
        assert window.controller.running("load") is None
    skip.set_value(["mlp.down_proj"])
    skip.changed.emit()
    assert under.isHidden() and window.load_button.isEnabled()

    panel.max_memory.setText("0=4GiB,cpu=8GiB")
    cap = panel.field_errors["max_memory"]
    assert not cap.isHidden() and "mixes a GPU with cpu/disk" in cap.text()
    assert "mixes a GPU" in window.load_button.toolTip()
    panel.max_memory.setText("")
    assert cap.isHidden()

    # A CPU cap below what the estimate says the model needs, as the CLI refuses it.
    with qtbot.waitSignal(
        window.estimate_view.model_bytes_known,
        timeout=180_000,
        check_params_cb=lambda quant, options, needed: options.device_map == "cpu",
    ):
        panel.device_map.setCurrentText("cpu")
    panel.max_memory.setText("cpu=1KiB")
    assert "Max memory: caps the CPU at 1KiB, but the model needs" in cap.text()
    assert panel.max_memory.property("invalid") is True
    assert not window.load_button.isEnabled()
    panel.max_memory.setText("cpu=64GiB")
    assert "has no effect, the model loads whole on the CPU" in cap.text()
    assert not panel.max_memory.property("invalid")
    assert window.load_button.isEnabled()
