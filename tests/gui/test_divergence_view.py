"""Show divergence: a quantized answer's tokens shaded by their KL vs the baseline,
from the side-by-side variants and the Compare tab's answers, run as a job."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PySide6.QtCore import QEvent
from PySide6.QtGui import QHelpEvent, QTextCursor
from PySide6.QtWidgets import QApplication, QToolTip

from core.lab import compare
from core.lab.divergence import Divergence, TokenDivergence
from core.model import catalog, estimate, fit
from core.model.fit import DeviceInfo
from core.settings import PRESETS, LoadOptions, QuantSettings, preset
from core.store.conversations import Message, Variant
from core.store.provenance import Provenance
from gui.divergence_view import DivergenceRequest, DivergenceView, token_color
from gui.variants_view import VariantsDialog

GiB = 2**30
CPU = LoadOptions(device_map="cpu")
TOP_B = [(" Paris", 0.61), (" Lyon", 0.12), (" the", 0.05), (" a", 0.03), ("\n", 0.01)]
TOP_Q = [(" Lyon", 0.40), (" Paris", 0.38), (" the", 0.06), (" a", 0.02), (".", 0.01)]


def _known() -> Divergence:
    tokens = [
        TokenDivergence(text, i, kl, TOP_B, TOP_Q)
        for i, (text, kl) in enumerate(
            [
                ("The", 0.0),
                (" capital", 0.25),
                (" is", 0.5),
                (" Paris", 1.0),
                ("!", 3.0),
            ]
        )
    ]
    return Divergence("float32", "nf4", "Where?", tokens, mean_kl=0.95, threshold=0.1)


def test_token_colours_follow_the_kl(qtbot) -> None:
    view = DivergenceView(controller=None)  # type: ignore[arg-type]
    qtbot.addWidget(view)
    view.show_divergence(_known())
    text = view.text
    assert text.toPlainText() == "The capital is Paris!"
    # Transparent at 0, darker in proportion, full red from KL 1 on.
    alphas = [text.background(i).alpha() for i in range(5)]
    assert alphas == [0, 64, 128, 255, 255]
    for i in range(1, 5):
        color = text.background(i)
        assert (color.red(), color.green(), color.blue()) == (220, 40, 40)
    assert alphas == [token_color(t.kl).alpha() for t in view.result.tokens]
    assert "80% of 5 tokens above KL 0.1" in view.summary.text()
    assert "mean KL 0.9500" in view.summary.text()
    assert view.html_button.isEnabled() and view.json_button.isEnabled()


def test_hovering_a_token_shows_both_top5_lists(qtbot) -> None:
    view = DivergenceView(controller=None)  # type: ignore[arg-type]
    qtbot.addWidget(view)
    view.resize(600, 300)
    view.show()
    qtbot.waitExposed(view)
    view.show_divergence(_known())
    text = view.text
    start, _end = text.spans[3]  # " Paris"
    cursor = QTextCursor(text.document())
    cursor.setPosition(start + 3)
    point = text.cursorRect(cursor).center()  # on the viewport
    assert text.index_at(point) == 3
    tip = text.tooltip(3)
    assert "KL 1.0000" in tip
    assert "baseline" in tip and "quantized" in tip
    assert tip.count("0.610") == 1 and tip.count("0.400") == 1  # both lists
    assert tip.index("Lyon") < tip.index("0.120")  # with their probabilities
    viewport = text.viewport()
    QApplication.sendEvent(
        viewport, QHelpEvent(QEvent.Type.ToolTip, point, viewport.mapToGlobal(point))
    )
    assert "KL 1.0000" in QToolTip.text()
    QToolTip.hideText()


def test_exports_write_the_page_and_the_json(qtbot, tmp_path: Path) -> None:
    view = DivergenceView(controller=None)  # type: ignore[arg-type]
    qtbot.addWidget(view)
    view.show_divergence(_known())
    page = view.export("html", tmp_path / "d.html").read_text(encoding="utf-8")
    assert page.count("data-kl=") == 5
    data = view.export("json", tmp_path / "d.json").read_text(encoding="utf-8")
    assert '"share_above_threshold": 0.8' in data


def _provenance(quant: QuantSettings, path: Path | None = None) -> Provenance:
    return Provenance(
        "tiny-llama",
        model_path=str(path) if path else None,
        quant=quant.to_dict(),
        options=CPU.to_dict(),
        stats={"new_tokens": 3, "tokens_per_s": 20.0, "stop_reason": "eos"},
    )


def test_the_variants_offer_divergence_for_quantized_answers_only(qtbot) -> None:
    nf4 = Variant(1, 0, "Paris.", 0.0, _provenance(preset("nf4").quant))
    full = Variant(2, 1, "It is Paris.", 0.0, _provenance(QuantSettings()))
    message = Message(7, 1, "assistant", "Paris.", 0.0, [nf4, full])
    asked: list[Variant] = []
    dialog = VariantsDialog(message, None, asked.append)
    qtbot.addWidget(dialog)
    assert list(dialog.divergence_buttons) == [0]
    dialog.divergence_buttons[0].click()
    assert asked == [nf4]
    plain = VariantsDialog(message)
    qtbot.addWidget(plain)
    assert plain.divergence_buttons == {}


def _result(answer: str) -> compare.CompareResult:
    base = compare.RowResult(
        "baseline", "baseline", QuantSettings().to_dict(), CPU.to_dict(), answer="Hi."
    )
    nf4 = compare.RowResult(
        "nf4", "nf4", preset("nf4").quant.to_dict(), CPU.to_dict(), answer=answer
    )
    config = {"prompt": "Say something.", "kl_threshold": 0.1}
    return compare.CompareResult("tiny-llama", [base, nf4], {}, config, 1.0, "")


def test_compare_answers_show_divergence_as_a_job(controller, qtbot, tiny_dir) -> None:
    from gui.compare_view import ANSWER_COLUMNS, CompareView

    ref = catalog.resolve(str(tiny_dir))
    view = CompareView(controller)
    qtbot.addWidget(view)
    answer = " the the of and a"
    result = _result(answer)
    view._run_ref = ref
    view.result = result
    view.show_result(result)
    assert list(view.divergence_buttons) == [1]  # the baseline has none
    column = ANSWER_COLUMNS.index("Divergence")
    assert view.answers.cellWidget(1, column) is view.divergence_buttons[1]
    with qtbot.waitSignal(controller.jobs_changed, timeout=10_000):
        view.divergence_buttons[1].click()
    dialog = view.divergence_dialogs[-1]
    qtbot.addWidget(dialog)
    assert controller.running("divergence") is not None
    with qtbot.waitSignal(dialog.view.finished, timeout=180_000) as done:
        pass
    shown = done.args[0]
    assert isinstance(shown, Divergence), dialog.view.error_label.text()
    shown_text = dialog.view.text.toPlainText()
    assert shown_text == "".join(t.text for t in shown.tokens)
    assert shown_text.split() == answer.split()
    n = len(shown.tokens)
    assert n > 0
    assert math.isclose(
        sum(t.kl for t in shown.tokens), shown.mean_kl * n, rel_tol=1e-4, abs_tol=1e-6
    )
    for i, token in enumerate(shown.tokens):
        assert dialog.view.text.background(i).alpha() == token_color(token.kl).alpha()
    assert "tokens above KL 0.1" in dialog.view.summary.text()
    qtbot.waitUntil(lambda: controller.running("divergence") is None, timeout=10_000)


def test_a_baseline_that_does_not_fit_offers_the_largest_preset_that_does(
    controller, qtbot, tiny_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    roomy = DeviceInfo([], 64 * GiB, 32 * GiB, cuda=False)
    dq = PRESETS["nf4-dq"]
    small = estimate.estimate(
        str(tiny_dir), dq.quant, dq.load_options(CPU), device=roomy
    ).judged_bytes
    tight = DeviceInfo([], 64 * GiB, small + 1, cuda=False)
    monkeypatch.setattr(fit, "probe_device", lambda: tight)
    largest = estimate.table(str(tiny_dir), None, CPU, device=tight).recommended
    assert largest is not None and largest != "fp32"

    view = DivergenceView(controller)
    qtbot.addWidget(view)
    request = DivergenceRequest(
        catalog.resolve(str(tiny_dir)),
        preset("nf4").quant,
        CPU,
        "Say something.",
        " the the of",
        "nf4",
    )
    with qtbot.waitSignal(view.finished, timeout=120_000) as done:
        view.start(request)
    assert done.args[0] is None
    assert "the baseline fp32 does not fit here" in view.error_label.text()
    assert not view.reference_button.isHidden()
    assert view.reference_button.text() == f"Use {largest} as the reference"
    with qtbot.waitSignal(view.finished, timeout=180_000) as again:
        view.reference_button.click()
    assert isinstance(again.args[0], Divergence)
    assert request.baseline == largest
    assert view.error_label.isHidden()
