"""The window keeps its chats: the last one comes back, answers say what wrote them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication

from core.settings import LoadOptions, preset
from core.store import conversations
from core.store.conversations import ConversationStore
from core.store.provenance import Provenance
from core.store.session import Session
from gui.main_window import MainWindow
from tests.gui.helpers import wait_threads


def wait_for(condition, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        QCoreApplication.processEvents()
        time.sleep(0.005)


def open_window(qtbot) -> MainWindow:
    window = MainWindow(Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    window.show()
    wait_for(lambda: window.history is not None, 10)
    return window


@pytest.fixture
def history_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One history file shared by the windows of a test."""
    path = tmp_path / "conversations.db"
    monkeypatch.setattr(conversations, "database_path", lambda: path)
    return path


def test_the_last_conversation_comes_back_after_a_restart(
    qtbot, config_dir, history_file
) -> None:
    with ConversationStore(history_file) as store:
        older = store.create()
        store.add_message(older, "user", "What is the capital of France?")
        store.add_answer(
            older,
            "Paris.",
            Provenance(
                "SmolLM2-135M-Instruct",
                quant=preset("nf4").quant.to_dict(),
                options=LoadOptions().to_dict(),
                stats={"new_tokens": 3, "tokens_per_s": 21.0, "stop_reason": "eos"},
            ),
        )
        newer = store.create()
        store.add_message(newer, "user", "Name a colour")

    first = open_window(qtbot)
    assert first.chat_splitter.widget(0) is first.history.list
    assert first.history.list.ids() == [newer, older]
    assert first.chat.messages_widgets == []  # nothing was open before
    first.history.list.opened.emit(older)
    assert [w.text for w in first.chat.messages_widgets] == [
        "What is the capital of France?",
        "Paris.",
    ]
    first.close()

    second = open_window(qtbot)
    chat = second.chat
    assert [w.text for w in chat.messages_widgets] == [
        "What is the capital of France?",
        "Paris.",
    ]
    answer = chat.messages_widgets[1]
    assert answer.badge.text() == "nf4 · SmolLM2-135M"
    assert "21.0 tok/s · 3 tokens · eos" in answer.stats_label.text()
    assert second.history.list.current_id == older
    second.close()


@pytest.mark.slow
def test_regenerate_with_int8_and_back_in_the_window(
    qtbot, config_dir, history_file
) -> None:
    window = open_window(qtbot)
    c = window.controller
    try:
        window.start_background()
        wait_for(lambda: c.ready)
        window.request_load()
        wait_for(lambda: c.loaded is not None and c.running("load") is None)
        assert c.loaded.quant == preset("nf4").quant
        chat = window.chat
        chat.max_tokens.setValue(8)
        chat.input.setPlainText("What is the capital of France?")
        with qtbot.waitSignal(c.answer_finished, timeout=120_000):
            chat.send()
        wait_for(lambda: hasattr(chat.messages_widgets[-1], "badge"), 10)
        answer_id = chat.messages_widgets[-1].message_id

        with qtbot.waitSignal(c.answer_finished, timeout=180_000):
            window.history.regenerate_with(answer_id, "int8")
        wait_for(lambda: not window.history.busy and c.running("load") is None, 10)
        assert c.loaded.quant == preset("int8").quant
        wait_for(lambda: getattr(chat.messages_widgets[-1], "switcher", None), 10)
        widget = chat.messages_widgets[-1]
        assert widget.switcher.label.text() == "2/2"
        assert widget.badge.text() == "int8 · SmolLM2-135M"
        bar = window.history.restore_bar
        assert bar.back_button.text() == "Back to nf4"

        with qtbot.waitSignal(c.model_loaded, timeout=180_000):
            bar.back_button.click()
        assert c.loaded.quant == preset("nf4").quant
        assert window.settings_panel.settings()[0] == preset("nf4").quant

        with ConversationStore(history_file) as store:
            [info] = store.list()
            message = store.get(info.id).messages[1]
        nf4, int8 = (v.provenance for v in message.variants)
        assert nf4.badge() == "nf4 · SmolLM2-135M"
        assert int8.badge() == "int8 · SmolLM2-135M"
        assert nf4.seed == int8.seed
        assert nf4.generation == int8.generation
        assert nf4.true_bytes < int8.true_bytes
    finally:
        window.close()
        wait_threads(5.0)


def test_file_menu_exports_the_open_conversation(
    qtbot, config_dir, history_file, tmp_path, monkeypatch
) -> None:
    from gui import chat_history

    with ConversationStore(history_file) as store:
        cid = store.create()
        store.add_message(cid, "user", "Hello")
        store.set_last_open(cid)
    window = open_window(qtbot)
    target = tmp_path / "out.md"
    monkeypatch.setattr(chat_history, "export_path", lambda *a: str(target))
    titles = [a.text().replace("&", "") for a in window.menu("File").actions()]
    assert titles.index("Export conversation as Markdown…") < titles.index("Quit")
    action = next(
        a
        for a in window.menu("File").actions()
        if a.text() == "Export conversation as Markdown…"
    )
    action.trigger()
    assert target.read_text().startswith("# Hello\n")
    window.close()
