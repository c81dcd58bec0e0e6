"""The chat's "Reply as JSON": the answer is held to JSON (or a schema) through the
same core path as `generate --json-schema`, its provenance says so, and a schema
that cannot be used is one line in the window, never a traceback or a dialog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.model import catalog, loader
from core.settings import preset
from core.store.session import Session
from gui import fields
from gui.chat_view import ChatView
from gui.main_window import MainWindow
from tests.gui.helpers import wait_threads

# Bounded, so a sampled answer of the 135M model ends well within max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}


def matches(answer: object) -> bool:
    """Whether `answer` is valid against SCHEMA."""
    return (
        isinstance(answer, dict)
        and set(answer) == {"city", "country"}
        and all(isinstance(v, str) and len(v) <= 20 for v in answer.values())
    )


def window_with(qtbot, loaded) -> MainWindow:
    """A window whose controller answers with `loaded` (as after its own load)."""
    window = MainWindow(Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    window.show()
    c = window.controller
    qtbot.waitUntil(lambda: window.history is not None, timeout=10_000)
    c.import_libraries()  # answers wait for the stack (already imported here)
    qtbot.waitUntil(lambda: c.ready, timeout=120_000)
    c.app.take_loaded(loaded)
    c.model_loaded.emit(loaded)
    return window


@pytest.mark.slow
def test_reply_as_json_answers_parse_and_match_the_schema(
    qtbot, config_dir, default_dir
) -> None:
    loaded = loader.load(catalog.default_ref(), preset("nf4").quant)
    window = window_with(qtbot, loaded)
    c, chat = window.controller, window.chat
    try:
        chat.max_tokens.setValue(120)
        chat.temperature.setValue(0.8)
        fields.set_value(chat.seed, 3)
        chat.json_check.setChecked(True)
        chat.schema_edit.setPlainText(json.dumps(SCHEMA))
        assert chat.check_reply_json() == ""
        assert "JSON reply (schema)" in chat.sampling_toggle.text()
        chat.input.setPlainText("What is the capital of France? Answer as JSON.")
        with qtbot.waitSignal(c.answer_finished, timeout=180_000) as finished:
            chat.send()
        turn = finished.args[0]
        assert turn.stats.stop_reason == "eos", turn.text
        answer = json.loads(turn.text)
        assert matches(answer), answer
        provenance = turn.answer.provenance
        assert provenance.constraint == {"kind": "json_schema", "schema": SCHEMA}
        assert any(line.startswith("Reply as: JSON schema") for line in
                   provenance.describe())  # fmt: skip

        # Without a schema: any JSON object (an open one may ramble on: the first
        # tokens and the provenance tell enough here).
        chat.schema_edit.setPlainText("")
        chat.max_tokens.setValue(6)
        chat.input.setPlainText("Describe a cat in JSON.")
        with qtbot.waitSignal(c.answer_finished, timeout=180_000) as finished:
            chat.send()
        turn = finished.args[0]
        assert turn.text.startswith("{"), turn.text
        assert turn.answer.provenance.constraint == {"kind": "json_object"}
    finally:
        window.close()
        wait_threads(5.0)
        loader.unload(loaded)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ("{not json", "Reply as JSON: the JSON schema is not valid JSON"),
        ('{"type": "object", "if": {}, "then": {}}', "Unimplemented keys"),
        ("[1, 2]", "the JSON schema must be a JSON object"),
    ],
)
def test_a_bad_schema_is_one_line_in_the_window(
    qtbot, config_dir, schema: str, words: str
) -> None:
    window = MainWindow(Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(window)
    chat = window.chat
    chat.set_ready(True)
    chat.json_check.setChecked(True)
    chat.schema_edit.setPlainText(schema)
    chat.input.setPlainText("Hello")
    chat.send()
    assert chat.messages_widgets == [], "the question was not sent"
    assert chat.input.toPlainText() == "Hello", "it is back in the box"
    line = chat.json_error.text()
    assert words in line and "\n" not in line and "Traceback" not in line
    assert chat.json_error.isVisibleTo(chat) and chat.sampling_box.isVisibleTo(chat)
    assert words in window.statusBar().currentMessage()
    assert window.error_box is None, "no dialog"
    chat.json_check.setChecked(False)
    assert chat.json_error.isHidden()
    window.close()


def test_a_schema_file_fills_the_box_and_names_the_schema(
    qtbot, tmp_path: Path
) -> None:
    chat = ChatView()
    qtbot.addWidget(chat)
    path = tmp_path / "city.json"
    path.write_text(json.dumps(SCHEMA), "utf-8")
    assert chat.load_schema_file(path)
    assert chat.json_check.isChecked()
    constraint = chat.reply_constraint()
    assert (constraint.kind, constraint.name) == ("json_schema", "city")
    assert constraint.schema == SCHEMA
    assert not chat.load_schema_file(tmp_path / "missing.json")
    assert "Cannot read the JSON schema missing.json" in chat.json_error.text()
    chat.json_check.setChecked(False)
    assert chat.reply_constraint() is None
