"""The same bad setting gives the same Problem (field, words, hint) in core, the
window's settings panel and the CLI (whose `serve` refuses through the same call)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main as cli
from core import checks
from core.model import facts
from core.settings import LoadOptions, preset

NF4 = preset("nf4").quant
CASES = {
    "unknown keep-unquantized name": (
        NF4.replace(llm_int8_skip_modules=["mlp.down_prj"]),
        LoadOptions("cpu"),
        ["--set", "llm_int8_skip_modules=mlp.down_prj", "--device-map", "cpu"],
    ),
    "fp32 offload with everything on the cpu": (
        NF4.replace(llm_int8_enable_fp32_cpu_offload=True),
        LoadOptions("cpu"),
        ["--set", "llm_int8_enable_fp32_cpu_offload=true", "--device-map", "cpu"],
    ),
    "gpu mixed with cpu without offload": (
        NF4,
        LoadOptions("auto", "0=1GiB,cpu=2GiB"),
        ["--max-memory", "0=1GiB,cpu=2GiB"],
    ),
    "cpu cap below the model": (
        NF4,
        LoadOptions("cpu", "cpu=1KiB"),
        ["--device-map", "cpu", "--max-memory", "cpu=1KiB"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_problem_in_core_window_and_cli(
    case: str, tiny_dir: Path, qtbot, capsys
) -> None:
    from gui.settings_panel import SettingsPanel

    quant, options, flags = CASES[case]
    machine = checks.probe_machine()
    model = facts.model_facts(tiny_dir)
    first = next(
        p for p in checks.check(quant, options, machine, model) if not p.warning
    )

    panel = SettingsPanel()
    qtbot.addWidget(panel)
    panel.set_machine(machine)
    panel.set_module_names(list(model.module_names))
    # The window learns the weights' size from its estimate, for these settings.
    panel.set_model_bytes(quant, options, model.needed_bytes(quant, options))
    panel.set_settings(quant, options)
    assert first in panel.problems
    assert first.text() in panel.field_errors[first.field].text()
    assert first.text() in panel.error

    for command in (["generate", "-p", "hi"], ["serve", "--port", "0"]):
        argv = [command[0], str(tiny_dir), *command[1:], "--quant", "nf4", *flags]
        assert cli.run(argv) == 2
        err = capsys.readouterr().err
        assert f"error: {first.message}\nhint: {first.hint}\n" in err


def test_the_windows_numbers_take_the_same_check(qtbot) -> None:
    """The sampling widgets get their ranges from the fields; what a spin box cannot
    hold back (a typed seed) is refused with the words the CLI and server use."""
    from core.errors import SettingsError
    from core.settings import GenerationSettings, fields_of
    from gui.chat_view import ChatView

    chat = ChatView()
    qtbot.addWidget(chat)
    for spec in fields_of(GenerationSettings):
        editor = chat.sampling_fields[spec.name]
        if spec.kind in ("int", "float"):
            assert editor.maximum() == spec.high
            assert editor.minimum() >= spec.low
    for typed, words in (
        (str(2**70), f"seed {2**70} is out of range"),
        ("nan", "seed must be a finite number, got nan"),
        ("1.5", "seed must be a whole number, got 1.5"),
    ):
        chat.seed.setText(typed)
        with pytest.raises(SettingsError) as info:
            chat.generation_settings()
        assert info.value.field == "seed" and words in info.value.message
        assert words in chat.sampling_toggle.text()
    chat.seed.setText("42")
    assert chat.generation_settings().seed == 42
