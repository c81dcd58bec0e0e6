"""The chat: keys, code blocks with colour and Copy, undoable Clear, what it says."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtTest import QTest

from core.settings import GenerationSettings, fields_of
from gui.chat_view import ChatView, code_blocks, render_html

CODE = "Here:\n```python\ndef square(x):\n    return x * x\n```\nDone."


def make(qtbot) -> ChatView:
    chat = ChatView()
    qtbot.addWidget(chat)
    chat.set_ready(True)
    return chat


def test_enter_sends_and_shift_enter_adds_a_line(qtbot) -> None:
    chat = make(qtbot)
    sent = []
    chat.question_asked.connect(sent.append)
    chat.input.setPlainText("first line")
    chat.input.moveCursor(chat.input.textCursor().MoveOperation.End)
    QTest.keyClick(chat.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    QTest.keyClicks(chat.input, "second")
    assert sent == [] and chat.input.toPlainText() == "first line\nsecond"
    QTest.keyClick(chat.input, Qt.Key.Key_Return)
    assert sent == ["first line\nsecond"]
    assert chat.messages_widgets[-1].text == "first line\nsecond"
    assert chat.input.toPlainText() == ""
    assert "Enter sends" in chat.keys_hint.text()
    assert "Shift+Enter" in chat.keys_hint.text()


def test_code_is_coloured_and_each_block_has_copy(qtbot) -> None:
    html = render_html(CODE)
    assert "<span style=" in html and "square" in html  # Pygments' inline colours
    assert "href='copy:0'>Copy</a>" in html
    assert code_blocks(CODE) == ["def square(x):\n    return x * x"]
    chat = make(qtbot)
    message = chat.add_message("assistant", CODE)
    assert message.body.text() == "Here:"
    [block] = message.code_widgets
    assert block.language_label.text() == "python"
    assert "<span style=" in block.label.text()
    block.copy_button.click()
    assert QGuiApplication.clipboard().text() == "def square(x):\n    return x * x"
    assert block.copy_button.text() == "Copied"
    qtbot.waitUntil(lambda: block.copy_button.text() == "Copy", timeout=5000)
    assert message.parts[-1].text() == "Done."
    message.copy()
    assert message.copy_button.text() == "Copied"
    assert QGuiApplication.clipboard().text() == CODE


def test_clear_can_be_undone(qtbot) -> None:
    chat = make(qtbot)
    chat.add_message("user", "hi")
    chat.add_message("assistant", "hello").set_stats("3 tokens")
    chat.clear()
    assert chat.messages_widgets == [] and chat.undo_bar.isVisibleTo(chat)
    chat.undo_button.click()
    assert [(m.role, m.text) for m in chat.messages_widgets] == [
        ("user", "hi"),
        ("assistant", "hello"),
    ]
    assert chat.messages_widgets[1].stats_label.text() == "3 tokens"
    assert not chat.undo_bar.isVisibleTo(chat)


def test_the_empty_chat_knows_a_model_is_loaded(qtbot) -> None:
    """It said "Load a model, then ask it something." with a model loaded."""
    chat = ChatView()
    qtbot.addWidget(chat)
    assert chat.empty_label.text() == "Load a model, then ask it something."
    chat.set_model_name("SmolLM2-135M-Instruct")
    chat.set_ready(True)
    assert chat.empty_label.text() == "Ask SmolLM2-135M-Instruct something."
    chat.add_message("user", "hi")
    chat.clear()
    assert chat.empty_label.text() == "Ask SmolLM2-135M-Instruct something."
    chat.set_model_name("")
    chat.set_ready(False, "Load a model first.")
    assert chat.empty_label.text() == "Load a model, then ask it something."


def test_sampling_fields_come_from_the_metadata(qtbot) -> None:
    chat = make(qtbot)
    assert list(chat.sampling_fields) == [f.name for f in fields_of(GenerationSettings)]
    wanted = GenerationSettings(max_new_tokens=99, top_k=7, seed=5, greedy=True)
    chat.set_generation_settings(wanted)
    assert chat.generation_settings() == wanted
    assert chat.sampling_toggle.text() == "Sampling: 99 tokens · greedy"
    for spec in fields_of(GenerationSettings):
        assert spec.description in chat.sampling_fields[spec.name].toolTip()


def test_the_chat_follows_a_new_question_and_its_answer_at_the_bottom(qtbot) -> None:
    """A new question and its streaming answer stayed below the fold."""
    chat = make(qtbot)
    chat.resize(500, 400)
    chat.show()
    qtbot.waitExposed(chat)
    bar = chat.scroll.verticalScrollBar()
    for i in range(6):
        chat.add_message("user", f"question {i}\n" * 4)
        chat.add_message("assistant", f"answer {i}\n" * 6)
    qtbot.waitUntil(lambda: bar.maximum() > 0)
    bar.setValue(bar.maximum())
    chat.input.setPlainText("And now?")
    chat.send()
    chat.begin_answer()
    for _ in range(40):
        chat.append_chunk("more words of a long answer\n")
        chat.flush()
        qtbot.wait(5)
    qtbot.waitUntil(lambda: bar.value() == bar.maximum() and bar.maximum() > 0)
    assert chat.following
    end = bar.maximum()

    # Scrolled up to read, the chat stays where the user left it.
    bar.setValue(0)
    assert not chat.following
    for _ in range(20):
        chat.append_chunk("and more\n")
        chat.flush()
        qtbot.wait(5)
    qtbot.waitUntil(lambda: bar.maximum() > end)
    assert bar.value() == 0
    chat.end_answer("12 tokens · eos")


def test_an_answer_says_what_it_waits_for(qtbot) -> None:
    chat = make(qtbot)
    chat.input.setPlainText("hi")
    chat.send()
    chat.begin_answer()
    answer = chat.messages_widgets[-1]
    assert answer.body.text() == "…"
    chat.set_waiting("Waiting behind 1 server request (120 tokens so far)…")
    assert "Waiting behind 1 server request (120 tokens so far)" in answer.body.text()
    chat.set_waiting("")
    chat.append_chunk("Hello")
    chat.flush()
    assert answer.text == "Hello"
    chat.end_answer("1 tokens · eos")
    assert not chat.busy


def test_a_stopped_answer_without_text_says_so(qtbot) -> None:
    chat = make(qtbot)
    chat.input.setPlainText("hi")
    chat.send()
    chat.begin_answer()
    chat.end_answer("0 tokens · stopped")
    answer = chat.messages_widgets[-1]
    assert "Stopped before any text." in answer.body.text()
    assert answer.stats_label.text() == "0 tokens · stopped"


def test_long_code_and_stats_wrap_to_the_pane(qtbot) -> None:
    """A long code line pushed the whole chat wider, cutting every message's edge."""
    chat = make(qtbot)
    chat.resize(520, 500)
    chat.show()
    qtbot.waitExposed(chat)
    chat.add_message("user", "Write one long line")
    long_line = "x = [" + ", ".join(str(i) for i in range(200)) + "]"
    answer = chat.add_message("assistant", f"Here:\n```python\n{long_line}\n```\nDone.")
    answer.set_stats("31.6 tok/s · 0.41 s to first token · 96 tokens · eos · 165.1 MiB")
    answer.stats_label.show()
    qtbot.wait(50)
    viewport = chat.scroll.viewport().width()
    assert chat.scroll.widget().width() <= viewport
    for message in chat.messages_widgets:
        right = message.mapTo(chat.scroll.viewport(), message.rect().topRight()).x()
        assert right <= viewport, message.text[:20]
    assert answer.copy_button.isVisible()
    copy_right = answer.copy_button.mapTo(
        chat.scroll.viewport(), answer.copy_button.rect().topRight()
    )
    assert copy_right.x() <= viewport
    assert answer.stats_label.width() <= viewport


LONG_CODE = (
    "Look:\n```python\nvalues = ["
    + ", ".join(str(n) for n in range(120))
    + "]\nprint(values)\n```\nThat is all."
)


def test_a_long_code_line_scrolls_in_its_block_and_never_widens_the_chat(
    qtbot,
) -> None:
    """Long code lines wrapped, or pushed the whole chat wider than its pane."""
    chat = make(qtbot)
    chat.resize(480, 600)
    chat.show()
    qtbot.waitExposed(chat)
    message = chat.add_message("assistant", LONG_CODE)
    [block] = message.code_widgets
    bar = block.scroll.horizontalScrollBar()
    # The bar's range is set at once; the scroll area shows the bar at its next
    # layout pass, which a busy machine can delay.
    qtbot.waitUntil(lambda: block.scrolls and bar.isVisible())
    assert not block.label.wordWrap()
    lines = block.label.fontMetrics().lineSpacing()
    assert block.label.height() < 3 * lines  # two lines of code, each kept whole
    # The block grows to hold its code and the bar under it: nothing hidden.
    qtbot.waitUntil(
        lambda: block.scroll.viewport().height() >= block.label.sizeHint().height()
    )
    holder = chat.scroll.widget()
    assert holder.width() <= chat.scroll.viewport().width()
    assert message.geometry().right() < holder.width()
    assert block.geometry().right() <= message.width()
    copy = message.copy_button
    assert copy.mapTo(message, copy.rect().topRight()).x() < message.width()
    assert message.parts[-1].text() == "That is all."


def test_a_streamed_code_block_is_built_once_and_grows(qtbot) -> None:
    chat = make(qtbot)
    chat.begin_answer()
    chat.append_chunk("Sure:\n```py")
    chat.flush()
    answer = chat.answer_widget
    [block] = answer.code_widgets
    for chunk in ("thon\ndef f():\n", "    return 1\n", "```\nDone"):
        chat.append_chunk(chunk)
        chat.flush()
    assert answer.code_widgets == [block]
    assert (block.language, block.code) == ("python", "def f():\n    return 1")
    assert answer.parts[-1].text() == "Done"
    chat.end_answer("3 tokens")
