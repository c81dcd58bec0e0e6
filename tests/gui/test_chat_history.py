"""The chat's history in the window: the list, badges, variants, edit and resend,
Regenerate with..., export, and the last chat coming back after a restart.

Most tests play the model with a stand-in controller that has the real one's signals,
so they check what the history does with questions and answers without loading
anything. The tests at the end open the whole window; one of them loads the real
default model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QCoreApplication, QObject, Signal

from core.chat import Chat, Turn
from core.generation.decode import GenerationStats
from core.model.catalog import ModelRef
from core.settings import GenerationSettings, LoadOptions, preset
from core.store import conversations
from core.store.conversations import ConversationStore
from core.store.provenance import Provenance
from core.store.session import Session
from gui.chat_history import ChatHistory
from gui.chat_view import ChatView
from gui.conversation_list import ConversationList
from gui.main_window import MainWindow
from tests.gui.helpers import wait_threads

REF = ModelRef("default", "SmolLM2-135M-Instruct")


@dataclass
class FakeReport:
    true_bytes: int
    device: str = "cpu"
    load_s: float = 1.0


@dataclass
class FakeLoaded:
    ref: ModelRef
    quant: Any
    options: LoadOptions
    report: FakeReport
    model: Any = None


def loaded_with(name: str) -> FakeLoaded:
    size = {"nf4": 166_000_000, "int8": 220_000_000}.get(name, 538_000_000)
    chosen = preset(name)
    return FakeLoaded(
        REF, chosen.quant, chosen.load_options(LoadOptions()), FakeReport(size)
    )


class FakeController(QObject):
    """The controller's chat, answer and load signals, and what was asked of it.

    The chat is the real core one; only the model is played: `answer()` streams
    text into the turn and the view as the generation queue would.
    """

    answer_started = Signal(Turn)
    answer_chunk = Signal(str)
    answer_finished = Signal(Turn)
    answer_failed = Signal(Turn, Exception)
    answer_aborted = Signal(Turn)
    chat_error = Signal(Exception, str)
    model_loaded = Signal(object)
    load_failed = Signal(Exception)
    load_cancelled = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.chat = Chat(None)
        self.loaded: Any = loaded_with("nf4")
        self.quant, self.options = self.loaded.quant, self.loaded.options
        self.sent: list[tuple[Any, bool, GenerationSettings]] = []
        self.loads: list[ModelRef] = []
        self.turn: Turn | None = None

    def ask(
        self,
        question: str,
        settings: GenerationSettings,
        *,
        raw=False,
        system="",
        constraint=None,
    ) -> Turn:
        turn = self.chat.ask(
            question,
            settings,
            raw=raw,
            system=system,
            loaded=self.loaded,
            constraint=constraint,
        )
        return self._start(turn)

    def ask_again(
        self, settings, *, raw=False, answer_id=None, constraint=None
    ) -> Turn | None:
        turn = self.chat.again(
            settings,
            raw=raw,
            loaded=self.loaded,
            answer_id=answer_id,
            constraint=constraint,
        )
        return self._start(turn) if turn is not None else None

    def _start(self, turn: Turn) -> Turn:
        self.sent.append((turn.prompt, turn.raw, turn.settings))
        self.turn = turn
        self.answer_started.emit(turn)
        return turn

    def load(self, ref: ModelRef) -> object:
        self.loads.append(ref)
        return object()

    def set_settings(self, quant: Any, options: Any) -> None:
        self.quant, self.options = quant, options

    def answer(self, text: str, tokens: int = 5, speed: float = 20.0) -> None:
        """Stream `text` and end the answer, as the controller would."""
        turn = self.turn
        assert turn is not None
        for i, word in enumerate(text.split(" ")):
            chunk = word if i == 0 else " " + word
            turn.add(chunk)
            self.answer_chunk.emit(chunk)
        turn.finish(
            GenerationStats(new_tokens=tokens, tokens_per_s=speed, stop_reason="eos")
        )
        self.answer_finished.emit(turn)


@pytest.fixture
def setup(qtbot, tmp_path: Path):
    chat = ChatView()
    qtbot.addWidget(chat)
    controller = FakeController()
    store = ConversationStore(tmp_path / "conversations.db")
    history = ChatHistory(chat, controller, controller.set_settings, store)
    qtbot.addWidget(history.list)
    chat.set_ready(True)

    # What the window does: the history stores the question, then the answer streams.
    chat.question_asked.connect(
        lambda text: history.ask(text, chat.generation_settings())
    )
    chat.regenerate_requested.connect(
        lambda: history.ask_again(chat.generation_settings())
    )
    controller.answer_started.connect(lambda _turn: chat.begin_answer())
    controller.answer_chunk.connect(chat.append_chunk)
    controller.answer_finished.connect(lambda t: chat.end_answer(t.stats.summary()))
    yield chat, controller, history, store
    history.close()


def variants_shown(chat: ChatView) -> str:
    """'2/2' when the last message shows its arrows, else ''."""
    switcher = chat.messages_widgets[-1].switcher
    return switcher.label.text() if switcher and not switcher.isHidden() else ""


def ask(qtbot, chat: ChatView, controller: FakeController, question: str, answer: str):
    chat.input.setPlainText(question)
    chat.send()
    controller.answer(answer)
    qtbot.waitUntil(lambda: chat.messages_widgets[-1].badge is not None)


def test_question_and_answer_are_kept_with_a_badge(qtbot, setup) -> None:
    chat, controller, history, store = setup
    chat.system_edit.setPlainText("Be brief.")
    ask(qtbot, chat, controller, "What is the capital of France?", "Paris.")
    [info] = store.list()
    assert info.title == "What is the capital of France?"
    stored = store.get(info.id)
    assert stored.system_prompt == "Be brief."
    assert [(m.role, m.text) for m in stored.messages] == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris."),
    ]
    provenance = stored.messages[1].provenance
    assert provenance is not None
    assert provenance.seed is not None
    assert controller.sent[0][2].seed == provenance.seed  # the seed it ran with
    answer = chat.messages_widgets[-1]
    assert answer.badge.text() == "nf4 · SmolLM2-135M"
    assert "bnb_4bit_quant_type='nf4'" in answer.badge.toolTip()
    assert "Hub id: HuggingFaceTB/SmolLM2-135M-Instruct" in answer.badge.toolTip()
    assert "158.3 MiB" in answer.badge.toolTip()
    assert history.list.ids() == [info.id]


def test_regenerate_with_int8_keeps_two_variants_and_offers_the_way_back(
    qtbot, setup
) -> None:
    chat, controller, history, store = setup
    ask(qtbot, chat, controller, "Capital of France?", "Paris.")
    answer_id = chat.messages_widgets[-1].message_id
    first_seed = controller.sent[0][2].seed

    history.regenerate_with(answer_id, "int8")
    assert controller.loads == [REF]
    assert controller.quant == preset("int8").quant  # the panel shows int8
    controller.loaded = loaded_with("int8")
    controller.model_loaded.emit(controller.loaded)
    messages, _raw, settings = controller.sent[-1]
    assert messages == [{"role": "user", "content": "Capital of France?"}]
    assert settings.seed == first_seed
    controller.answer("It is Paris.", tokens=4, speed=11.0)
    qtbot.waitUntil(lambda: variants_shown(chat) == "2/2")

    message = store.get(history.current.id).messages[1]
    assert [v.text for v in message.variants] == ["Paris.", "It is Paris."]
    nf4, int8 = (v.provenance for v in message.variants)
    assert (nf4.badge(), int8.badge()) == ("nf4 · SmolLM2-135M", "int8 · SmolLM2-135M")
    assert nf4.quant != int8.quant and nf4.true_bytes != int8.true_bytes
    widget = chat.messages_widgets[-1]
    assert widget.text == "It is Paris."
    assert widget.badge.text() == "int8 · SmolLM2-135M"
    assert widget.switcher.label.text() == "2/2"

    assert history.restore_bar.isVisibleTo(chat)
    assert history.restore_bar.back_button.text() == "Back to nf4"
    history.restore_bar.back_button.click()
    assert controller.quant == preset("nf4").quant
    assert controller.loads == [REF, REF]

    widget.switcher.previous.click()
    qtbot.waitUntil(lambda: chat.messages_widgets[-1].text == "Paris.")
    assert chat.messages_widgets[-1].badge.text() == "nf4 · SmolLM2-135M"
    assert store.get(history.current.id).history()[-1]["content"] == "Paris."

    dialog = history.show_side_by_side(answer_id)
    qtbot.addWidget(dialog)
    columns = [{k: v.text() for k, v in c.items()} for c in dialog.columns]
    assert "nf4 · SmolLM2-135M" in columns[0]["badge"]
    assert "(shown)" in columns[0]["badge"]
    assert columns[1]["tokens"] == "4 tokens · eos"
    assert columns[1]["speed"] == "11.0 tok/s"
    assert columns[1]["size"] == "209.8 MiB in memory"
    assert columns[0]["size"] == "158.3 MiB in memory"
    assert not dialog.show_buttons[0].isEnabled()  # the one shown
    dialog.show_buttons[1].click()
    qtbot.waitUntil(lambda: chat.messages_widgets[-1].text == "It is Paris.")


def test_a_failed_regenerate_load_puts_the_settings_back(qtbot, setup) -> None:
    chat, controller, history, store = setup
    ask(qtbot, chat, controller, "Hi", "Hello.")
    history.regenerate_with(chat.messages_widgets[-1].message_id, "fp32")
    assert controller.quant == preset("fp32").quant
    controller.load_failed.emit(RuntimeError("out of memory"))
    assert controller.quant == preset("nf4").quant
    assert not history.busy
    assert len(store.get(history.current.id).messages[1].variants) == 1


def test_chat_regenerate_adds_a_variant(qtbot, setup) -> None:
    chat, controller, history, store = setup
    ask(qtbot, chat, controller, "Hi", "Hello.")
    chat.regenerate()
    controller.answer("Hey there.")
    qtbot.waitUntil(lambda: variants_shown(chat) == "2/2")
    message = store.get(history.current.id).messages[1]
    assert [v.text for v in message.variants] == ["Hello.", "Hey there."]
    assert len(store.get(history.current.id).messages) == 2


def test_edit_and_resend_then_delete(qtbot, setup) -> None:
    chat, controller, history, store = setup
    ask(qtbot, chat, controller, "Capital of Italy?", "Rome.")
    ask(qtbot, chat, controller, "And of Spain?", "Madrid.")
    second = chat.messages_widgets[2].message_id
    history.edit_and_resend(second, "And of Portugal?")
    assert controller.sent[-1][0][-1] == {"role": "user", "content": "And of Portugal?"}
    controller.answer("Lisbon.")
    qtbot.waitUntil(lambda: chat.messages_widgets[-1].badge is not None)
    texts = [m.text for m in store.get(history.current.id).messages]
    assert texts == ["Capital of Italy?", "Rome.", "And of Portugal?", "Lisbon."]
    history.delete_message(chat.messages_widgets[1].message_id)
    assert [w.text for w in chat.messages_widgets] == [
        "Capital of Italy?",
        "And of Portugal?",
        "Lisbon.",
    ]


def test_list_new_open_search_delete_undo(qtbot, setup) -> None:
    chat, controller, history, store = setup
    ask(qtbot, chat, controller, "Tell me about nf4", "It is 4-bit.")
    first = history.current.id
    history.list.new_button.click()
    assert chat.messages_widgets == []
    ask(qtbot, chat, controller, "Colours of the rainbow?", "Seven.")
    second = history.current.id
    assert history.list.ids() == [second, first]

    history.list.opened.emit(first)
    assert [w.text for w in chat.messages_widgets] == [
        "Tell me about nf4",
        "It is 4-bit.",
    ]
    assert chat.messages_widgets[1].badge.text() == "nf4 · SmolLM2-135M"

    history.list.search_edit.setText("seven")
    qtbot.waitUntil(lambda: history.list.ids() == [second])
    history.list.search_edit.setText("")
    qtbot.waitUntil(lambda: len(history.list.ids()) == 2)

    history.list.rename(second, "Rainbow")
    assert store.info(second).title == "Rainbow"
    history.list.delete(first)
    assert history.list.ids() == [second]
    assert chat.messages_widgets == []  # the open conversation went
    assert history.list.undo_bar.isVisibleTo(history.list)
    history.list.undo_button.click()
    assert history.list.ids() == [second, first]


def test_clear_starts_a_new_conversation_that_undo_takes_back(qtbot, setup) -> None:
    """With the history, Clear had no Undo: the cleared chat was only in the list."""
    chat, controller, history, _store = setup
    chat.clear_starts_new = True  # as in the window, where the history is installed
    ask(qtbot, chat, controller, "Tell me about nf4", "It is 4-bit.")
    first = history.current.id
    chat.clear_button.click()
    assert chat.messages_widgets == []
    assert history.chat.id is None
    assert chat.undo_bar.isVisibleTo(chat)
    chat.undo_button.click()
    assert history.current.id == first
    assert [w.text for w in chat.messages_widgets] == [
        "Tell me about nf4",
        "It is 4-bit.",
    ]
    assert not chat.undo_bar.isVisibleTo(chat)
    # A new question after Clear ends the offer: the cleared one stays in the list.
    chat.clear_button.click()
    ask(qtbot, chat, controller, "Colours of the rainbow?", "Seven.")
    assert not chat.undo_bar.isVisibleTo(chat)
    assert first in history.list.ids()


def test_export_markdown_has_the_badges(qtbot, setup, tmp_path: Path) -> None:
    chat, controller, history, _store = setup
    ask(qtbot, chat, controller, "Capital of France?", "Paris.")
    path = history.export(history.current.id, "md", tmp_path / "chat.md")
    text = path.read_text()
    assert "## Answer · `nf4 · SmolLM2-135M`" in text
    assert "Paris." in text
    every = history.export(0, "all", tmp_path / "all.json").read_text()
    assert '"nibble-conversations"' in every


def test_a_damaged_history_is_set_aside_with_a_notice(qtbot, tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    path.write_bytes(b"garbage" * 1000)
    chat = ChatView()
    qtbot.addWidget(chat)
    controller = FakeController()
    history = ChatHistory(
        chat, controller, controller.set_settings, ConversationStore(path)
    )
    qtbot.addWidget(history.list)
    with qtbot.waitSignal(history.notice) as blocker:
        pass
    assert "could not be read" in blocker.args[0]
    assert isinstance(history.list, ConversationList)
    history.close()


# -- the whole window ----------------------------------------------------------


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
        wait_for(lambda: chat.messages_widgets[-1].badge is not None, 10)
        answer_id = chat.messages_widgets[-1].message_id

        with qtbot.waitSignal(c.answer_finished, timeout=180_000):
            window.history.regenerate_with(answer_id, "int8")
        wait_for(lambda: not window.history.busy and c.running("load") is None, 10)
        assert c.loaded.quant == preset("int8").quant
        wait_for(lambda: chat.messages_widgets[-1].switcher is not None, 10)
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
        if a.text().replace("&", "") == "Export conversation as Markdown…"
    )
    action.trigger()
    assert target.read_text().startswith("# Hello\n")
    window.close()


def test_the_conversation_list_keeps_the_window_on_its_screen(qtbot) -> None:
    """Showing the list widened the window past a 1024 px screen; hiding it did not
    shrink it back. Clear is there with or without the list."""
    window = open_window(qtbot)
    room = window.screen().availableGeometry().width()
    window.resize(min(1024, room), 700)
    window.list_action.setChecked(False)
    assert window.chat.clear_button.isVisibleTo(window)
    picker_before = window.picker_action.isChecked()
    before = window.width()
    window.list_action.setChecked(True)
    QCoreApplication.processEvents()
    assert window.history.list.isVisibleTo(window)
    assert window.width() <= max(room, before)
    assert window.chat.clear_button.isVisibleTo(window)
    window.list_action.setChecked(False)
    QCoreApplication.processEvents()
    assert window.picker_action.isChecked() == picker_before
    window.close()
