"""The Server tab: start, a request from the openai client lands in the log, stop."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication

from core.generation.queue import GenerationQueue, GenerationRequest
from core.model import catalog, loader
from core.settings import GenerationSettings, preset
from gui.server_view import LOG_COLUMNS, ServerView, marker_label

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    loaded = loader.load(catalog.resolve(str(tiny_dir)), preset("nf4").quant)
    yield loaded
    loader.unload(loaded)


def serving_view(qtbot, loaded, queue: GenerationQueue | None = None) -> ServerView:
    """The Server tab over a controller that answers with `loaded`."""
    from gui.controller import Controller

    controller = Controller(queue=queue)
    controller.app.take_loaded(loaded)
    view = ServerView(controller)
    qtbot.addWidget(view)
    return view


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cell(view: ServerView, row: int, name: str) -> str:
    return view.log_table.item(row, LOG_COLUMNS.index(name)).text()


def test_start_a_request_in_the_log_then_stop(qtbot, tiny) -> None:
    view = serving_view(qtbot, tiny)
    queue = view.queue
    view.port_spin.setValue(free_port())
    assert view.stop_button.isEnabled() is False
    with qtbot.waitSignal(view.serving_changed, timeout=20_000) as started:
        view.start()
    assert started.args == [True]
    url = f"http://127.0.0.1:{view.port_spin.value()}/v1"
    assert view.url_edit.text() == url
    assert "Serving tiny-llama at" in view.status_label.text()
    assert view.port_spin.isEnabled() is False
    assert f"curl {url}/chat/completions" in view.snippet_edits["curl"].toPlainText()

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    with qtbot.waitSignal(view.request_logged, timeout=60_000) as logged:
        answer = client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            temperature=0,
        )
    assert answer.usage.completion_tokens == 4
    record = logged.args[0]
    assert marker_label(record).startswith("API chat ")
    assert view.log_table.rowCount() == 1
    assert cell(view, 0, "Endpoint") == "/v1/chat/completions"
    assert cell(view, 0, "Completion") == "4"
    assert cell(view, 0, "Status") == "200 OK"
    assert cell(view, 0, "Client").startswith("127.0.0.1:")

    # Unloaded, a request that names no model is 503 until a model loads, and one
    # that names a model the server cannot load is 404 with those it can; the log
    # shows both.
    view.set_model(None)
    queue.set_model(None)
    assert "no model is loaded" in view.status_label.text()
    assert view.model_label.text() == "Model: none loaded"
    connection = http.client.HTTPConnection("127.0.0.1", view.port_spin.value())
    with qtbot.waitSignal(view.request_logged, timeout=10_000):
        connection.request(
            "POST",
            "/v1/completions",
            json.dumps({"prompt": "Hi", "max_tokens": 2}),
            {"Content-Type": "application/json"},
        )
        status = connection.getresponse().status
    connection.close()
    assert status == 503
    assert cell(view, 1, "Status") == "503"
    with qtbot.waitSignal(view.request_logged, timeout=60_000):
        with pytest.raises(openai.NotFoundError) as err:
            client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=2)
    assert "the model 'tiny-llama' is not served here" in err.value.body["message"]
    assert cell(view, 2, "Status") == "404"

    with qtbot.waitSignal(view.serving_changed, timeout=20_000) as stopped:
        view.stop()
    assert stopped.args == [False]
    assert view.url_edit.text() == ""
    assert view.start_button.isEnabled()
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    assert queue.close()


def test_other_machines_need_a_key_and_snippets_copy(qtbot, tiny) -> None:
    view = serving_view(qtbot, tiny)
    view.remote_check.setChecked(True)
    view.start()
    assert "no API key is set" in view.status_label.text()
    assert not view.serving and view.worker is None
    view.new_key()
    key = view.key_edit.text()
    assert key.startswith("nb-") and len(key) > 20
    env = view.snippet_edits["Environment"].toPlainText()
    assert "export OPENAI_BASE_URL=http://127.0.0.1:8000/v1" in env
    assert f"export OPENAI_API_KEY={key}" in env
    python = view.snippet_edits["Python (openai)"].toPlainText()
    compile(python, "snippet", "exec")
    assert f'api_key="{key}"' in python
    view.snippets.setCurrentIndex(2)
    view._copy(view.snippet_edits["Environment"])
    assert QGuiApplication.clipboard().text() == env
    assert view.shutdown()
    view.queue.close()


def test_a_port_in_use_is_reported(qtbot, tiny) -> None:
    view = serving_view(qtbot, tiny)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        view.port_spin.setValue(port)
        view.start()
        qtbot.waitUntil(lambda: view.worker is None, timeout=20_000)
    assert not view.serving
    assert f"cannot listen on 127.0.0.1:{port}" in view.status_label.text()
    assert view.start_button.isEnabled()
    view.queue.close()


def test_the_window_has_a_server_tab_on_the_chat_queue(qtbot, config_dir, tiny) -> None:
    from core.store import session as session_mod
    from gui.main_window import MainWindow
    from server.handlers import RequestRecord

    window = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    window.build_tabs()
    titles = [window.tabs.tabText(i) for i in range(window.tabs.count())]
    assert titles[-1] == "Server"
    view = window.server_view
    assert view.queue is window.controller.generation_queue
    window.controller.model_changed.emit(tiny)
    assert "tiny-llama" in view.snippet_edits["curl"].toPlainText()
    before = len(window.monitor_view.markers)
    record = RequestRecord(
        time.time(), "127.0.0.1:5000", "/v1/chat/completions", 200,
        prompt_tokens=12, completion_tokens=64,
    )  # fmt: skip
    monitor = window.monitor_view
    view._record_arrived.emit(record)
    qtbot.waitUntil(lambda: len(monitor.markers) == before + 1)
    assert monitor.markers[-1].marker.label == "API chat 12+64 tok"
    view.batch_changed.emit(3, 1)  # three answers decode together, one waits
    view.batch_changed.emit(3, 0)  # only the waiting count moved: no new marker
    qtbot.waitUntil(lambda: len(monitor.markers) == before + 2)
    assert [e.marker.label for e in monitor.markers[before + 1 :]] == [
        "Batch 3 +1 waiting"
    ]
    # Eight clients ending together: one marker on each chart, all eight in its
    # tooltip; the batch, shrinking to 0 in the same burst, gets one marker too.
    for i in range(8):
        view._record_arrived.emit(
            RequestRecord(
                time.time(), "127.0.0.1:5000", "/v1/chat/completions", 200,
                prompt_tokens=12, completion_tokens=60 + i,
            )
        )  # fmt: skip
    for running in (2, 1, 0):
        view.batch_changed.emit(running, 0)
    qtbot.waitUntil(lambda: len(monitor.markers) == before + 4)
    api, batch = monitor.markers[before + 2 :]
    assert api.marker.label == "API chat 12+60 tok +7 more"
    assert "8 events:" in api.tooltip and "API chat 12+67 tok" in api.tooltip
    assert batch.marker.label == "Batch 0"
    assert len(monitor.ram_chart.marker_lines) == len(monitor.markers)
    window.close()


def test_the_batch_size_shows_live(qtbot, tiny) -> None:
    queue = GenerationQueue(tiny, max_batch=4)
    view = serving_view(qtbot, tiny, queue)
    queue.pause()
    story = GenerationSettings(greedy=True, max_new_tokens=200)
    jobs = [queue.submit(GenerationRequest("Tell me a story", story)) for _ in range(3)]
    view.refresh_batch()
    assert view.batch_label.text() == (
        "Batch: 0 answers decoding together (up to 4), 3 waiting"
    )
    with qtbot.waitSignal(
        view.batch_changed, timeout=20_000, check_params_cb=lambda r, w: r == 3
    ):
        queue.resume()
    assert view.batch_label.text().startswith("Batch: 3 answers decoding together")
    for job in jobs:
        job.cancel()
    assert queue.wait_idle(20)
    qtbot.waitUntil(
        lambda: (
            view.batch_label.text() == "Batch: 0 answers decoding together (up to 4)"
        ),
        timeout=5_000,
    )
    assert queue.close()


def test_a_request_shows_in_the_log_while_it_waits_and_runs(qtbot, tiny) -> None:
    """The log showed a request only once it ended: one that ran 13 minutes left
    it empty all that time."""
    import threading

    from server.handlers import RequestRecord

    queue = GenerationQueue(tiny)
    view = serving_view(qtbot, tiny, queue)
    release = threading.Event()
    calls = []

    eos = tiny.tokenizer.eos_token_id

    def hold_after_three(input_ids, scores):
        calls.append(1)
        if len(calls) > 3:
            release.wait(30)
        if eos is not None:
            scores[:, eos] = float("-inf")  # no early end
        return scores

    queue.pause()
    job = queue.submit(
        GenerationRequest(
            "Tell me a story",
            GenerationSettings(greedy=True, max_new_tokens=6),
            source="server",
            client="127.0.0.1:5000",
            endpoint="/v1/chat/completions",
            logits_processor=hold_after_three,
        )
    )
    chat = queue.submit(GenerationRequest("Hi", GenerationSettings(max_new_tokens=2)))
    view.refresh_running()
    assert view.log_table.rowCount() == 1  # the chat's own answer is not a request
    assert cell(view, 0, "Status") == "waiting"
    assert cell(view, 0, "Endpoint") == "/v1/chat/completions"
    assert cell(view, 0, "Client") == "127.0.0.1:5000"
    chat.cancel()
    queue.resume()
    qtbot.waitUntil(
        lambda: (
            cell(view, 0, "Status") == "running" and cell(view, 0, "Completion") == "3"
        ),
        timeout=30_000,
    )
    release.set()
    assert queue.wait_idle(30)
    record = RequestRecord(
        time.time(), "127.0.0.1:5000", "/v1/chat/completions", 200,
        prompt_tokens=9, completion_tokens=6, job_id=job.id,
    )  # fmt: skip
    with qtbot.waitSignal(view.request_logged):
        view._record_arrived.emit(record)
    view.refresh_running()
    assert view.log_table.rowCount() == 1  # the same row, filled in
    assert cell(view, 0, "Status") == "200 OK"
    assert (cell(view, 0, "Prompt"), cell(view, 0, "Completion")) == ("9", "6")
    assert queue.close()


def test_the_tab_shows_and_applies_the_default_max_tokens(qtbot, tiny) -> None:
    """A request without max_tokens once decoded the whole context; the tab says
    the bound the server applies, and it can be changed before starting."""
    view = serving_view(qtbot, tiny)
    assert view.max_tokens_spin.value() == 1024
    assert view.max_tokens_spin.text() == "1,024 tokens"
    view.max_tokens_spin.setValue(5)
    assert view.config().default_max_tokens == 5
    view.port_spin.setValue(free_port())
    with qtbot.waitSignal(view.serving_changed, timeout=20_000):
        view.start()
    assert "Chat answers stop at 5 tokens" in view.status_label.text()
    assert not view.max_tokens_spin.isEnabled()
    url = f"http://127.0.0.1:{view.port_spin.value()}/v1"
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    with qtbot.waitSignal(view.request_logged, timeout=60_000) as logged:
        answer = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Hi"}]
        )
    assert answer.usage.completion_tokens <= 5
    client.close()
    assert logged.args[0].job_id is not None
    assert view.log_table.rowCount() == 1
    assert cell(view, 0, "Status") == "200 OK"
    with qtbot.waitSignal(view.serving_changed, timeout=20_000):
        view.stop()
    assert view.max_tokens_spin.isEnabled()
    assert view.queue.close()


def test_a_client_switch_moves_the_window_and_the_chat_says_so(
    qtbot, config_dir, tiny_dir: Path
) -> None:
    """A client names another model through the window's server: the Server tab
    shows the load as it runs, then the model serving; the window selects and loads
    it (settings included) and the chat says so in a notice line."""
    from core.store import session as session_mod
    from gui.main_window import MainWindow

    own = loader.load(catalog.resolve(str(tiny_dir)), preset("nf4").quant)
    window = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    c = window.controller
    c.session.add_recent(str(tiny_dir))  # servable by its folder name
    c.app.take_loaded(own)
    c.model_loaded.emit(own)
    window.build_tabs()
    view = window.server_view
    assert view.model_label.text() == "Model: tiny-llama (nf4)"
    shown: list[tuple[str, str]] = []
    c.model_switched.connect(
        lambda state, _name: shown.append((state, view.model_label.text()))
    )
    view.port_spin.setValue(free_port())
    with qtbot.waitSignal(view.serving_changed, timeout=20_000):
        view.start()
    client = openai.OpenAI(base_url=view.url(), api_key="none", max_retries=0)
    listed = {m.id: m.model_dump().get("loaded") for m in client.models.list().data}
    assert listed["tiny-llama"] is True

    answer = client.chat.completions.create(
        model="tiny-llama:int8",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
    )
    assert answer.model == "tiny-llama:int8"
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=20_000)
    assert shown == [
        ("loading", "Model: tiny-llama (nf4) · loading tiny-llama for a client…"),
        ("loaded", "Model: tiny-llama (int8)"),
    ]
    int8 = preset("int8").quant
    assert c.loaded is c.generation_queue.loaded and c.loaded.quant == int8
    assert c.selected_ref.path == tiny_dir
    assert window.settings_panel.settings()[0] == int8
    assert window.model_status.text().startswith("tiny-llama · int8")
    notice = "A server client switched the model to tiny-llama (int8)."
    assert [label.text() for label in window.chat.notices] == [notice]
    assert window.chat.notices[0].isVisibleTo(window.chat)
    assert "Serving tiny-llama at" in view.status_label.text()

    with qtbot.waitSignal(view.serving_changed, timeout=20_000):
        view.stop()
    window.close()
