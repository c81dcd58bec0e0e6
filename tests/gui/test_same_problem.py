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
    panel.set_module_names(model)
    panel.set_settings(quant, options)
    assert first in panel.problems
    assert first.text() in panel.field_errors[first.field].text()
    assert first.text() in panel.error

    code = cli.run(["generate", str(tiny_dir), "--quant", "nf4", "-p", "hi", *flags])
    assert code == 2
    assert f"error: {first.message}\nhint: {first.hint}\n" in capsys.readouterr().err
