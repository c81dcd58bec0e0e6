"""The window's step-down ladder: where the verdict or the out-of-memory error is,
every rung in order with its estimate and cost, and one click that applies the
first rung that fits and loads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import OutOfMemoryError
from core.model import catalog, estimate, fit
from core.model.fit import DeviceInfo
from core.settings import PRESETS, LoadOptions, QuantSettings
from core.store import session as session_mod
from gui.ladder_view import LadderView
from gui.main_window import MainWindow
from tests.gui.helpers import wait_threads

GiB = 2**30
CPU = LoadOptions(device_map="cpu")


@pytest.fixture
def tight_ram(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Available RAM forced between what nf4 + double quant and full precision need."""
    roomy = DeviceInfo([], 64 * GiB, 32 * GiB, cuda=False)
    full = estimate.estimate(str(tiny_dir), options=CPU, device=roomy).judged_bytes
    dq = PRESETS["nf4-dq"]
    small = estimate.estimate(
        str(tiny_dir), dq.quant, dq.load_options(CPU), device=roomy
    ).judged_bytes
    assert small < full
    ram = (small + full) // 2
    tight = DeviceInfo([], 64 * GiB, ram, cuda=False)
    monkeypatch.setattr(fit, "probe_device", lambda: tight)
    monkeypatch.setattr(estimate, "probe_device", lambda: tight)
    return ram


@pytest.fixture
def window(qtbot, config_dir, tiny_dir):
    session = session_mod.Session(
        model=session_mod.ref_to_dict(catalog.resolve(str(tiny_dir))),
        quant=QuantSettings(),
        options=CPU,
    )
    win = MainWindow(session, auto_start=False, auto_load=False)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()
    wait_threads(5.0)


def test_a_model_that_does_not_fit_shows_every_rung_and_one_click_loads_the_first(
    window, qtbot, tight_ram
) -> None:
    ladder_view = window.ladder_view
    with qtbot.waitSignal(ladder_view.shown, timeout=120_000):
        window.controller.import_libraries()
    assert ladder_view.isVisible() and ladder_view.reason == "verdict"
    assert "Does not fit" in ladder_view.title.text()
    ladder = ladder_view.ladder
    assert ladder.current.verdict == "does not fit"
    steps = [r.step for r in ladder.rungs]
    assert steps[:2] == ["nf4-dq", "context"]  # in the ladder's order, no offload
    assert "offload" not in steps  # no GPU to offload from
    texts = [label.text() for label in ladder_view.rung_labels]
    assert len(texts) == len(ladder.rungs)
    assert texts[0].startswith("1. <b>nf4 + double quant</b>")
    assert texts[1].startswith("2. <b>context of ")
    for rung, text in zip(ladder.rungs, texts, strict=True):
        assert rung.cost.split(":")[0] in text  # its cost, under it
        assert ("fits" if rung.fits else "does not fit") in text
    first = ladder.first_fit
    assert first is ladder.rungs[0]
    assert first.estimate.judged_bytes <= tight_ram
    assert ladder_view.apply_button.isVisible()
    assert "nf4 + double quant" in ladder_view.apply_button.text()

    c = window.controller
    with qtbot.waitSignal(c.model_loaded, timeout=120_000):
        ladder_view.apply_button.click()
        assert "Applied step 1, nf4 + double quant" in window.load_label.text()
    quant, options = window.settings_panel.settings()
    assert quant.mode == "4bit"
    assert quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_use_double_quant is True
    assert quant == first.quant
    assert options == first.options and options.device_map == "cpu"
    assert c.loaded.quant.bnb_4bit_use_double_quant is True
    assert (
        "Applied step 1, nf4 + double quant of the ladder" in window.load_label.text()
    )
    # The new settings fit: the verdict's ladder goes away.
    qtbot.waitUntil(lambda: not ladder_view.isVisible(), timeout=60_000)


def test_an_out_of_memory_load_shows_the_ladder_where_the_error_is(
    controller, qtbot, tiny_dir
) -> None:
    from gui.estimate_view import EstimateView

    view = EstimateView(controller)
    ladder_view = LadderView(controller, view)
    qtbot.addWidget(view)
    qtbot.addWidget(ladder_view)
    ref = catalog.resolve(str(tiny_dir))
    controller.options = CPU
    controller.load_started.emit(ref, QuantSettings())
    error = OutOfMemoryError(
        f"loading {ref.name} ran out of CPU memory: needs 9 MiB, 1 MiB was free",
        "pick nf4 + double quant",
        needed=9 * 2**20,
        free=2**20,
    )
    with qtbot.waitSignal(ladder_view.shown, timeout=120_000):
        controller.load_failed.emit(error)
    assert ladder_view.reason == "out of memory"
    assert "ran out of CPU memory" in ladder_view.title.text()
    assert ladder_view.ladder.rungs[0].step == "nf4-dq"
    assert ladder_view.rung_labels[0].text().startswith("1. <b>nf4 + double quant")
    applied = []
    ladder_view.apply_requested.connect(applied.append)
    ladder_view.apply_button.click()
    assert applied == [ladder_view.ladder.first_fit]


def test_other_load_errors_show_no_ladder(controller, qtbot, tiny_dir) -> None:
    from core.errors import LoadError
    from gui.estimate_view import EstimateView

    view = EstimateView(controller)
    ladder_view = LadderView(controller, view)
    qtbot.addWidget(view)
    qtbot.addWidget(ladder_view)
    controller.load_started.emit(catalog.resolve(str(tiny_dir)), QuantSettings())
    controller.load_failed.emit(LoadError("the weights are damaged", "download again"))
    assert not ladder_view.busy and ladder_view.isHidden()
