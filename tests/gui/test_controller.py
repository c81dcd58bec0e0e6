"""The controller: every job under one deadline, the stack imported before any job
that needs it, the chat's answers through the core's generation queue."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import CancelledError
from core.lab import compare
from core.model import catalog
from core.settings import GenerationSettings, LoadOptions, preset
from gui import workers
from tests.gui.helpers import wait_threads

LONG = 180_000


@pytest.fixture(scope="module")
def tiny_ref(tiny_dir: Path) -> catalog.ModelRef:
    return catalog.folder_ref(tiny_dir)


def _load(qtbot, controller, ref, quant_name: str = "nf4"):
    chosen = preset(quant_name)
    controller.set_settings(chosen.quant, chosen.load_options(LoadOptions("cpu")))
    with qtbot.waitSignal(controller.model_loaded, timeout=LONG) as loaded:
        controller.load(ref)
    return loaded.args[0]


@pytest.mark.slow
def test_stop_all_ends_every_job_within_one_deadline(
    qtbot, controller, tiny_ref, default_dir, tmp_path: Path
) -> None:
    loaded = _load(qtbot, controller, tiny_ref)
    assert controller.generation_queue.loaded is loaded
    with qtbot.waitSignal(controller.first_token, timeout=LONG):
        controller.ask(
            "Once upon a time", GenerationSettings(max_new_tokens=4000), raw=True
        )
    from core import monitor

    controller.sample(monitor.Sampler(), 0.25)
    controller.compare(
        tiny_ref,
        compare.parse_rows(["baseline", "nf4"]),
        compare.CompareConfig(new_tokens=2000, eval_tokens=24),
    )
    int8 = preset("int8")
    controller.export(tiny_ref, int8.quant, int8.load_options(), str(tmp_path / "x"))
    # A load job beside the answer (the window would refuse to start one): a
    # cooperative stand-in, since cancelling a real from_pretrained half-way can
    # leave transformers' global loading state behind for later tests.
    started_loading = []

    def load_default(progress, cancel):
        for step in range(10_000):
            if cancel.is_set():
                raise CancelledError("load cancelled")
            progress(step, 10_000, "Loading weights")
            time.sleep(0.01)

    worker = controller.run("load", load_default)
    worker.progressed.connect(lambda *_: started_loading.append(1))
    qtbot.waitUntil(lambda: bool(started_loading), timeout=LONG)
    kinds = {kind for kind, _ in controller.jobs()}
    assert {"answer", "sampler", "compare", "export", "load"} <= kinds
    began = time.monotonic()
    controller.stop_all(2.0)
    assert time.monotonic() - began < 2.5
    assert wait_threads(30.0) == []  # a step may end after the deadline on a busy box
    assert controller.closing


def test_no_job_that_needs_the_stack_starts_before_it_is_imported(qtbot) -> None:
    from gui.controller import Controller

    c = Controller()
    worker = c.estimate("default", preset("nf4").quant, LoadOptions("cpu"), 16)
    qtbot.wait(50)
    assert worker.thread_ is None and workers.running_threads() == []
    with qtbot.waitSignal(worker.returned, timeout=LONG) as done:
        c.import_libraries()
    assert c.ready and done.args[0].current.label == "nf4"
    assert c.stop_all(2.0)


def test_a_job_waiting_for_the_stack_ends_aborted_on_stop_all(qtbot) -> None:
    from gui.controller import Controller

    c = Controller()
    worker = c.estimate("default", preset("nf4").quant, LoadOptions("cpu"), 16)
    ended: list[str] = []
    worker.aborted.connect(lambda: ended.append("aborted"))
    worker.finished.connect(lambda: ended.append("finished"))
    assert c.stop_all(2.0)
    assert ended == ["aborted", "finished"] and c.jobs() == []


@pytest.mark.slow
def test_estimate_shown_during_the_start_up_load_equals_the_cli(
    qtbot, config_dir
) -> None:
    """The estimate runs while the default model loads, yet matches a lone one."""
    from core.store.session import Session
    from gui.main_window import MainWindow

    session = Session(quant=preset("nf4").quant, options=LoadOptions("cpu"))
    window = MainWindow(session)
    qtbot.addWidget(window)
    tables = []
    window.estimate_view.estimated.connect(tables.append)
    window.show()
    c = window.controller
    qtbot.waitUntil(lambda: c.loaded is not None, timeout=LONG)
    qtbot.waitUntil(
        lambda: bool(tables) and not window.estimate_view.busy, timeout=LONG
    )
    shown = window.estimate_view.table
    cli = subprocess.run(
        [
            *(sys.executable, "main.py", "estimate", "default", "--quant", "nf4"),
            *("--device-map", "cpu", "--context", str(shown.context), "--json"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    expected = [
        (r["preset"], r["weights_bytes"], r["quant_state_bytes"])
        for r in json.loads(cli.stdout)["rows"]
    ]
    assert [
        (r.preset, r.weights_bytes, r.quant_state_bytes) for r in shown.rows
    ] == expected
    assert "(exact)" in window.estimate_view.actual_label.text()
    window.close()


def test_cancel_while_compiling_keeps_the_loaded_model(
    qtbot, controller, tiny_ref, tmp_path: Path, monkeypatch
) -> None:
    """Cancel during the "Compiling the decode step" stage of a Fast decode load:
    the load ends cancelled without waiting for the compile, and the model loaded
    before stays loaded and answers."""
    import dataclasses
    import threading

    from core.generation.decode import GenerationStats
    from core.generation.queue import GenerationRequest
    from core.model import fast_decode

    monkeypatch.setenv("NIBBLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fast_decode, "blocker", lambda model: None)
    release = threading.Event()
    monkeypatch.setattr(fast_decode, "_warm", lambda *args: release.wait(300))
    before = _load(qtbot, controller, tiny_ref)
    stages: list[str] = []

    def on_progress(done: int, total: int, message: str) -> None:
        stages.append(message)
        if message.startswith("Compiling the decode step ("):
            controller.cancel_load()

    controller.load_progressed.connect(on_progress)
    fast = dataclasses.replace(controller.options, fast_decode=True)
    controller.set_settings(controller.quant, fast)
    try:
        with qtbot.waitSignal(controller.load_cancelled, timeout=LONG):
            controller.load(tiny_ref)
        assert any(m.startswith("Compiling the decode step (") for m in stages)
        assert fast_decode.abandoned(), "the load waited for the compile to end"
        assert controller.loaded is before
        assert controller.generation_queue.loaded is before
        settings = GenerationSettings(greedy=True, max_new_tokens=4)
        job = controller.generation_queue.submit(GenerationRequest("Hi", settings))
        stats = [item for item in job if isinstance(item, GenerationStats)]
        assert stats[-1].error is None and stats[-1].new_tokens > 0
        assert stats[-1].decode_mode == "plain"
    finally:
        release.set()
        assert fast_decode.wait_for_abandoned(60)
