"""The window end to end: loading in a worker, streaming chat, stop, errors, closing."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtTest import QTest

from core.store import session as session_mod
from core.store.conversations import ConversationStore
from gui import workers
from gui.chat_view import ChatView, render_html
from gui.main_window import MainWindow
from tests.gui.helpers import wait_threads

PROMPT = "What is the capital of France?"


class Recorder:
    """Every signal a worker emits, in emission order (recorded on its own thread)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def attach(self, worker: workers.Worker) -> None:
        for name in ("started", "progressed", "yielded", "returned", "errored"):
            getattr(worker, name).connect(
                lambda *args, n=name: self._add(n, args),
                Qt.ConnectionType.DirectConnection,
            )
        for name in ("aborted", "finished"):
            getattr(worker, name).connect(
                lambda n=name: self._add(n, ()), Qt.ConnectionType.DirectConnection
            )

    def _add(self, name: str, args: tuple) -> None:
        with self.lock:
            self.events.append((name, args))

    def names(self) -> list[str]:
        with self.lock:
            return [n for n, _ in self.events]

    def chunks(self) -> list[str]:
        with self.lock:
            return [a[0] for n, a in self.events if n == "yielded"]


def wait_for(condition, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        QCoreApplication.processEvents()
        time.sleep(0.005)


@pytest.fixture(scope="module")
def recorders():
    """Load and answer workers that record their signals, by job kind."""
    made: dict[str, list[Recorder]] = {"load": [], "generate": []}

    class RecordingFunction(workers.FunctionWorker):
        def __init__(self, fn, name):
            super().__init__(fn, name)
            made.setdefault(name, []).append(Recorder())
            made[name][-1].attach(self)

    class RecordingJob(workers.JobWorker):
        def __init__(self, job, items=None):
            super().__init__(job, items)
            made["generate"].append(Recorder())
            made["generate"][-1].attach(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(workers, "FunctionWorker", RecordingFunction)
        mp.setattr(workers, "JobWorker", RecordingJob)
        yield made


@pytest.fixture(scope="module")
def window(qapp, recorders, tmp_path_factory):
    """A window that loaded the default model in nf4 once for every test here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIBBLE_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
        win = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
        events: list[str] = []
        c = win.controller
        c.load_started.connect(lambda *_: events.append("load_started"))
        c.model_loaded.connect(lambda m: events.append("model_loaded"))
        c.libraries_ready.connect(lambda d: events.append("libraries_ready"))
        win.show()
        win.start_background()
        wait_for(lambda: c.ready)
        win.request_load()
        wait_for(lambda: win.loaded is not None and not win.running_workers())
        win.events = events  # type: ignore[attr-defined]
        yield win
        win.close()
        wait_threads(5.0)
        win.deleteLater()


@pytest.mark.slow
def test_loading_default_nf4_emits_signals_in_order(window, recorders):
    names = recorders["load"][0].names()
    assert names[0] == "started"
    assert names[-2:] == ["returned", "finished"]
    assert set(names[1:-2]) == {"progressed"}
    weights = [a for n, a in recorders["load"][0].events if n == "progressed" and a[1]]
    assert weights[-1][0] == weights[-1][1]  # n/N reached N
    assert window.events == ["libraries_ready", "load_started", "model_loaded"]
    report = window.loaded.report
    assert report.quantized_count > 0
    assert window.loaded.quant.bnb_4bit_quant_type == "nf4"
    assert "SmolLM2-135M-Instruct · nf4" in window.model_status.text()
    assert window.size_status.text().endswith("MiB")
    assert window.load_button.isEnabled()
    assert window.chat.send_button.isEnabled()


@pytest.mark.slow
def test_answer_streams_into_chat(window, recorders, qtbot):
    chat = window.chat
    chat.greedy.setChecked(True)
    chat.max_tokens.setValue(24)
    chat.input.setPlainText(PROMPT)
    with (
        qtbot.waitSignal(window.controller.first_token, timeout=60_000),
        qtbot.waitSignal(window.controller.answer_finished, timeout=60_000) as done,
    ):
        QTest.keyClick(
            chat.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier
        )
    stats = done.args[0].stats
    answer = chat.messages_widgets[-1]
    assert [m.role for m in chat.messages_widgets] == ["user", "assistant"]
    assert chat.messages_widgets[0].text == PROMPT
    chunks = recorders["generate"][-1].chunks()
    assert len(chunks) > 1
    assert answer.text == "".join(chunks)
    assert "Paris" in answer.text
    assert stats.new_tokens > 0
    assert answer.stats_label.text() == stats.summary()
    assert "tok/s" in answer.stats_label.text()
    # `finished` comes from the worker thread right after `returned`.
    qtbot.waitUntil(lambda: "finished" in recorders["generate"][-1].names())
    assert recorders["generate"][-1].names()[-2:] == ["returned", "finished"]
    assert chat.send_button.text() == "Send"


@pytest.mark.slow
def test_stop_ends_the_answer(window, recorders, qtbot):
    chat = window.chat
    chat.greedy.setChecked(True)
    chat.max_tokens.setValue(300)
    chat.input.setPlainText("Write a very long story about a dragon and a knight.")
    window.controller.first_token.connect(chat.stop)
    try:
        with qtbot.waitSignal(
            window.controller.answer_finished, timeout=60_000
        ) as done:
            chat.send()
    finally:
        window.controller.first_token.disconnect(chat.stop)
    stats = done.args[0].stats
    assert stats.stop_reason == "stopped"
    assert stats.new_tokens < 30
    assert chat.messages_widgets[-1].stats_label.text().endswith("stopped")
    assert not chat.busy


def test_escape_is_the_stop_key(qtbot):
    chat = ChatView()
    qtbot.addWidget(chat)
    assert chat.esc.key().toString() == "Esc"
    asked = []
    chat.stop_requested.connect(lambda: asked.append(1))
    chat.set_ready(True)
    chat.begin_answer()
    chat.esc.activated.emit()
    assert asked == [1]
    chat.end_answer()


@pytest.mark.slow
def test_bad_folder_shows_error_and_keeps_model(window, tmp_path, qtbot):
    before = window.loaded
    messages = [m.text for m in window.chat.messages_widgets]
    window.last_error = None
    window.open_location(str(tmp_path / "no-such-model"))
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=10_000)
    assert window.last_error.message.startswith("folder not found")
    assert window.error_box.text() == window.last_error.message
    assert window.error_box.informativeText().startswith("Hint: ")
    window.error_box.close()
    assert window.loaded is before
    assert [m.text for m in window.chat.messages_widgets] == messages


@pytest.mark.slow
def test_failed_load_keeps_previous_model_and_chat(window, tiny_dir, tmp_path, qtbot):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["hidden_size"] = 128  # the weights no longer fit the architecture
    (broken / "config.json").write_text(json.dumps(config))
    before = window.loaded
    messages = [m.text for m in window.chat.messages_widgets]
    window.last_error = None
    window.open_location(str(broken))
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=60_000)
    wait_for(lambda: not window.running_workers())
    assert "broken" in window.last_error.message
    assert "Traceback" in window.error_box.detailedText()
    assert "Traceback" not in window.error_box.text()
    window.error_box.close()
    assert window.loaded is before
    assert window.loaded.model is not None
    assert "stays loaded" in window.load_label.text()
    assert [m.text for m in window.chat.messages_widgets] == messages
    assert str(broken) in window.controller.session.recent_folders


@pytest.mark.slow
def test_no_stale_status_after_errors_unload_and_reload(window, tmp_path, qtbot):
    """ "Checking …" stayed after an error; Unload said "Load cancelled"; the status
    bar kept an old model's tok/s."""
    c = window.controller
    window.open_location(str(tmp_path / "nothing-xyz"))
    assert window.load_label.text().startswith("Checking ")
    qtbot.waitUntil(lambda: c.running("resolve") is None, timeout=10_000)
    window.error_box.close()
    assert "Checking" not in window.load_label.text()
    window.speed_status.setText("12.3 tok/s")
    ref = window.loaded.ref
    name = ref.name
    window.unload()
    assert window.load_label.text() == f"Unloaded {name}."
    assert window.model_status.text() == "No model loaded"
    assert window.speed_status.text() == "" and window.size_status.text() == ""
    assert window.chat.empty_label.text() == "Load a model, then ask it something."
    assert c.generation_queue.loaded is None
    with qtbot.waitSignal(c.model_loaded, timeout=180_000):
        window.request_load(ref)  # the broken folder of the test before is selected
    qtbot.waitUntil(lambda: c.running("load") is None, timeout=10_000)
    assert c.selected_ref == ref
    assert window.speed_status.text() == ""
    assert c.generation_queue.loaded is window.loaded
    assert window.chat.empty_label.text() == f"Ask {name} something."


@pytest.mark.slow
def test_load_says_reload_when_the_panel_differs(window):
    assert window.load_button.text() == "Load"
    window.settings_panel.apply_preset("int8")
    assert window.load_button.text() == "Reload with these settings"
    window.settings_panel.apply_preset("nf4")
    assert window.load_button.text() == "Load"


@pytest.mark.slow
def test_the_chat_says_what_it_waits_behind_and_stop_frees_it(
    window, qtbot, monkeypatch
):
    """A served request held the model for minutes while the chat showed "…";
    Stop took the chat's request out of the queue, yet the chat stayed at "…"."""
    from core.generation.queue import GenerationRequest
    from core.settings import GenerationSettings

    c = window.controller
    queue = c.generation_queue
    # The batch is full: the chat's answer cannot join the served one.
    monkeypatch.setattr(queue, "max_batch", 1)
    server = queue.submit(
        GenerationRequest(
            "Once upon a time",
            GenerationSettings(max_new_tokens=2000, greedy=True),
            raw=True,
            source="server",
        )
    )
    try:
        qtbot.waitUntil(lambda: server.tokens > 0, timeout=60_000)
        chat = window.chat
        chat.input.setPlainText("Are you there?")
        chat.send()
        answer = chat.messages_widgets[-1]
        assert answer.role == "assistant"
        qtbot.waitUntil(lambda: "tokens so far)" in answer.body.text(), timeout=10_000)
        assert "Waiting behind 1 server request (" in answer.body.text()
        assert window.speed_status.text().startswith("Waiting behind 1 server")
        chat.stop()
        qtbot.waitUntil(lambda: not chat.busy, timeout=5_000)
        assert queue.running is server  # the served request goes on
        assert "Stopped before any text." in answer.body.text()
        assert chat.send_button.text() == "Send"
        assert window.speed_status.text() == ""
    finally:
        queue.cancel(server)
        for _ in server:
            pass


@pytest.mark.slow
def test_close_during_generation_keeps_the_partial_answer(window, qtbot):
    """Closing mid-answer lost the partial and left the question orphaned."""
    chat = window.chat
    chat.max_tokens.setValue(300)
    chat.input.setPlainText("Tell me everything about the history of Rome.")
    with qtbot.waitSignal(window.controller.first_token, timeout=60_000):
        chat.send()
    qtbot.waitUntil(lambda: bool(chat.messages_widgets[-1].text), timeout=10_000)
    conversation_id = window.controller.chat.id
    path = window.controller.chat.store.path
    started = time.monotonic()
    window.close()
    assert time.monotonic() - started < 2.5
    assert wait_threads(10.0) == []  # a token can take seconds on a busy machine
    with ConversationStore(path) as store:
        messages = store.get(conversation_id).messages
    assert [m.role for m in messages][-2:] == ["user", "assistant"]
    question, answer = messages[-2:]
    assert question.text == "Tell me everything about the history of Rome."
    assert answer.text  # what was written before the window closed
    assert answer.provenance.stats["stop_reason"] == "stopped"


@pytest.mark.slow
def test_close_during_load_exits_cleanly(qtbot, config_dir):
    win = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(win)
    win.show()
    win.start_background()
    qtbot.waitUntil(
        lambda: win.controller.ready and not win.running_workers(), timeout=60_000
    )
    progress = []
    win.controller.load_progressed.connect(lambda d, t, m: progress.append((d, t)))
    win.request_load()
    qtbot.waitUntil(lambda: any(t > 0 for _, t in progress), timeout=60_000)
    started = time.monotonic()
    win.close()
    assert time.monotonic() - started < 2.5
    assert wait_threads(10.0) == []  # a token can take seconds on a busy machine
    assert win.loaded is None


def test_chat_view_appends_streamed_chunks(qtbot):
    chat = ChatView()
    qtbot.addWidget(chat)
    chat.set_ready(True)
    chat.input.setPlainText("hi")
    sent = []
    chat.question_asked.connect(sent.append)
    chat.regenerate_requested.connect(lambda: sent.append("again"))
    chat.send()
    assert sent == ["hi"]
    chat.begin_answer()
    assert chat.send_button.text() == "Stop"
    for chunk in ("Here ", "is ", "```python\nprint(1)\n```"):
        chat.append_chunk(chunk)
    qtbot.waitUntil(lambda: chat.messages_widgets[-1].text.startswith("Here is"))
    chat.end_answer("12.0 tok/s · 3 tokens · eos")
    answer = chat.messages_widgets[-1]
    assert answer.text == "Here is ```python\nprint(1)\n```"
    assert answer.body.text() == "Here is "
    assert [(b.language, b.code) for b in answer.code_widgets] == [
        ("python", "print(1)")
    ]
    assert answer.stats_label.text() == "12.0 tok/s · 3 tokens · eos"
    chat.regenerate()
    assert [m.role for m in chat.messages_widgets] == ["user"]
    assert sent == ["hi", "again"]
    chat.clear()
    assert chat.messages_widgets == []


def test_render_html_escapes_and_monospaces_code():
    out = render_html("a <b> `x`\n```\n<tag>\n```")
    assert "&lt;b&gt;" in out
    assert "<code style='font-family: monospace'>x</code>" in out
    assert "&lt;tag&gt;" in out and "<pre" in out


def test_raw_mode_is_forced_only_while_there_is_no_chat_template(qtbot):
    chat = ChatView()
    qtbot.addWidget(chat)
    chat.set_chat_template(False)
    assert chat.raw_check.isChecked() and not chat.raw_check.isEnabled()
    chat.set_chat_template(True)
    assert not chat.raw_check.isChecked() and chat.raw_check.isEnabled()
    chat.raw_check.setChecked(True)
    chat.set_chat_template(False)
    chat.set_chat_template(True)
    assert chat.raw_check.isChecked()


def test_picker_lists_cache_with_size_and_quantized_badge(qtbot, tmp_path):
    from core.model.catalog import ModelRef
    from gui.model_picker import ModelPicker

    picker = ModelPicker()
    qtbot.addWidget(picker)
    plain = ModelRef("cache", "org/plain", path=tmp_path, size_bytes=3 * 1024**3)
    quantized = ModelRef(
        "cache", "org/q4", path=tmp_path / "q", size_bytes=1024**2, quantized="gptq"
    )
    picker.set_cache([plain, quantized])
    picker.set_recent([str(tmp_path / "mine")])
    section = picker.sections["cache"]
    rows = [(section.child(i).text(0), section.child(i).text(1)) for i in range(2)]
    assert rows == [("org/plain", "3.0 GiB"), ("org/q4  ◆ quantized", "1.0 MiB")]
    assert "Already quantized: gptq" in section.child(1).toolTip(0)
    assert [r.name for r in picker.refs()][-3:] == ["mine", "org/plain", "org/q4"]
    with qtbot.waitSignal(picker.picked) as picked:
        picker.tree.itemActivated.emit(section.child(1), 0)
    assert picked.args[0] is quantized
    with qtbot.waitSignal(picker.hub_id_entered) as entered:
        picker.hub_edit.setText("Qwen/Qwen2.5-0.5B")
        picker.hub_button.click()
    assert entered.args == ["Qwen/Qwen2.5-0.5B"]


CLOSE_DURING_IMPORT = r"""
import sys, time
from PySide6.QtCore import QTimer
from gui import app as gui_app
from gui.main_window import MainWindow

close_event = MainWindow.closeEvent
start_background = MainWindow.start_background

def closing(self, event):
    began = time.monotonic()
    close_event(self, event)
    print(f"close took {time.monotonic() - began:.3f}", flush=True)
    print(f"hidden at {time.time():.6f}", flush=True)

def starting(self):
    start_background(self)
    QTimer.singleShot(300, self, self.close)  # torch is still importing

MainWindow.closeEvent = closing
MainWindow.start_background = starting
sys.exit(gui_app.run_app([]))
"""


def test_the_process_exits_at_once_when_closed_during_the_import(tmp_path) -> None:
    """The window held 2 s on close during the library import; the process then
    lingered 2-4 s after the window went."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "NIBBLE_CONFIG_DIR": str(tmp_path / "config"),
        "NIBBLE_DATA_DIR": str(tmp_path / "data"),
    }
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLOSE_DURING_IMPORT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    lines: list[str] = []
    hidden = exited = 0.0
    with proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            for line in proc.stdout:
                lines.append(line.strip())
                if line.startswith("hidden at"):
                    hidden = float(line.split()[-1])
                    break
            proc.wait(30)
            exited = time.time()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        errors = proc.stderr.read()
    assert proc.returncode == 0, errors
    took = float(lines[0].split()[-1])
    assert took < 1.2, lines  # it waited 1.9 s for the import before
    assert exited - hidden < 1.0, lines


def test_the_status_bar_names_the_decode_mode(qtbot, config_dir, tiny_dir):
    """The loaded model's decode mode (and why fast decode is off), then each
    answer's mode, and its note (a recompile, a mode not used) as a message."""
    import dataclasses
    from types import SimpleNamespace

    from core.generation.decode import GenerationStats
    from core.model import catalog, loader
    from core.model.fast_decode import FastDecode

    win = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(win)
    plain = loader.load(catalog.resolve(str(tiny_dir)))
    try:
        win._on_loaded(plain)
        assert win.model_status.text().endswith("· plain decode")
        compiled = dataclasses.replace(plain, fast_decode=FastDecode(active=True))
        win._on_loaded(compiled)
        assert win.model_status.text().endswith("· compiled decode")
        why = "fast decode is off: compile failed (no backend)"
        win._on_loaded(dataclasses.replace(plain, fast_decode=FastDecode(note=why)))
        assert win.model_status.text().endswith("· plain decode")
        assert win.model_status.toolTip().endswith(f"Decode mode: plain ({why})")
        win.chat.begin_answer()
        stats = GenerationStats(
            new_tokens=5,
            tokens_per_s=12.5,
            decode_mode="compiled",
            decode_note="recompiled the decode step for a 1,024-token cache",
        )
        win._on_answer(SimpleNamespace(stats=stats))
        assert win.speed_status.text() == "12.5 tok/s · compiled"
        assert win.statusBar().currentMessage() == (
            "Recompiled the decode step for a 1,024-token cache."
        )
    finally:
        loader.unload(plain)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_closes_the_window_and_keeps_the_session(qtbot, config_dir, name):
    """Ctrl+C in the terminal did nothing; SIGTERM ended the process unsaved."""
    import signal

    from gui.app import close_on_signals

    window = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    window.chat.system_edit.setPlainText("Answer briefly.")  # typed, not saved yet
    undo = close_on_signals(window)
    try:
        os.kill(os.getpid(), getattr(signal, name))
        qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    finally:
        undo()
    assert window.closed_by_signal == getattr(signal, name)
    saved = json.loads((config_dir / session_mod.FILE_NAME).read_text())
    assert saved["system_prompt"] == "Answer briefly."
