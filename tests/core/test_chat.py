"""The conversation turn and the application layer, without Qt: a question is stored,
its answer streams and is kept with its provenance, interrupted answers are kept
"stopped", and a chat waiting behind a server request says so and can leave."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.app import EXCLUSIVE, App, JobKind
from core.chat import Chat
from core.generation.decode import GenerationStats
from core.generation.queue import GenerationQueue, GenerationRequest
from core.model import catalog, loader
from core.model.loader import LoadedModel
from core.settings import GenerationSettings, preset
from core.store.conversations import ConversationStore

GREEDY = GenerationSettings(greedy=True, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Iterator[LoadedModel]:
    loaded = loader.load(catalog.resolve(str(tiny_dir)), preset("nf4").quant)
    yield loaded
    loader.unload(loaded)


@pytest.fixture
def app(tiny: LoadedModel, tmp_path: Path) -> Iterator[App]:
    made = App()
    made.take_loaded(tiny)
    made.open_history(ConversationStore(tmp_path / "conversations.db"))
    yield made
    made.close()
    assert made.let_go(10.0)
    made.chat.store.close()


def answer(app: App, question: str, settings: GenerationSettings = GREEDY):
    turn = app.ask(question, settings, system="Be brief.")
    chunks = [c for c in turn.follow() if isinstance(c, str)]
    app.end_answer(turn, turn.stats)
    return turn, "".join(chunks)


def test_a_turn_stores_the_question_then_the_answer_with_provenance(app: App) -> None:
    turn, streamed = answer(app, "What is the capital of France?")
    store = app.chat.store
    stored = store.get(turn.conversation_id)
    assert stored.system_prompt == "Be brief."
    assert [(m.role, m.text) for m in stored.messages] == [
        ("user", "What is the capital of France?"),
        ("assistant", streamed),
    ]
    assert streamed  # the tiny model writes something in 6 greedy tokens
    provenance = stored.messages[1].provenance
    assert provenance is not None and provenance.seed == turn.settings.seed
    assert provenance.stats["new_tokens"] == 6
    assert provenance.stats["stop_reason"] == "max tokens"
    # The chat in memory is what the store holds: nothing needs reading back.
    mine = app.chat.conversation
    assert [(m.id, m.role, m.text) for m in mine.messages] == [
        (m.id, m.role, m.text) for m in stored.messages
    ]
    assert turn.answer is not None and turn.answer.id == stored.messages[1].id


def test_the_live_token_count_is_the_generators_own(app: App) -> None:
    turn = app.ask("Count slowly", GenerationSettings(greedy=True, max_new_tokens=12))
    seen = []
    for item in turn.follow():
        if isinstance(item, str):
            seen.append(turn.tokens)
    app.end_answer(turn, turn.stats)
    assert seen and seen[-1] >= 1
    assert seen == sorted(seen)  # it only grows while the answer streams
    assert turn.tokens == turn.stats.new_tokens == 12


def test_a_stopped_answer_is_kept_and_the_next_question_gets_its_own(
    app: App,
) -> None:
    first = app.ask("Tell me a long story.", GenerationSettings(max_new_tokens=200))
    items = first.follow()
    partial = next(i for i in items if isinstance(i, str))
    first.stop()  # what closing the window does mid-answer
    assert not app.chat.busy
    stored = app.chat.store.get(first.conversation_id).messages
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].text.startswith(partial)
    assert stored[1].provenance.stats["stop_reason"] == "stopped"
    for _ in items:  # the generator ends within a token
        pass

    second = app.ask("What is 2+2?", GREEDY)
    assert second.prompt[-1] == {"role": "user", "content": "What is 2+2?"}
    assert [m["role"] for m in second.prompt] == ["user", "assistant", "user"]
    assert second.prompt[1]["content"] == stored[1].text
    for _ in second.follow():
        pass
    app.end_answer(second, second.stats)
    roles = [m.role for m in app.chat.store.get(second.conversation_id).messages]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_an_answer_that_never_started_still_closes_its_question(app: App) -> None:
    turn = app.ask("Hello?", GREEDY)
    turn.stop()  # before the first token: an empty answer, marked stopped
    messages = app.chat.store.get(turn.conversation_id).messages
    assert [(m.role, m.text) for m in messages] == [
        ("user", "Hello?"),
        ("assistant", ""),
    ]
    assert messages[1].provenance.stats["stop_reason"] == "stopped"


def test_regenerating_keeps_a_second_variant(app: App) -> None:
    first, _ = answer(app, "Name a colour")
    again = app.ask_again(GenerationSettings(max_new_tokens=4, seed=7))
    assert again is not None and again.variant_of == first.answer.id
    for _ in again.follow():
        pass
    app.end_answer(again, again.stats)
    message = app.chat.store.get(first.conversation_id).messages[1]
    assert len(message.variants) == 2 and message.active == 1
    assert app.chat.messages[1].text == message.text
    assert len(app.chat.messages) == 2


def test_the_chat_waits_behind_a_server_request_and_can_leave(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    # One answer at a time (a model that cannot batch, or a full batch).
    app = App(queue=GenerationQueue(tiny, max_batch=1))
    app.take_loaded(tiny)
    app.open_history(ConversationStore(tmp_path / "conversations.db"))
    queue = app.generation_queue
    server = queue.submit(
        GenerationRequest(
            "Once upon a time",
            GenerationSettings(max_new_tokens=400, greedy=True),
            raw=True,
            source="server",
        )
    )
    try:
        served = iter(server)
        next(served)  # the server request holds the model
        turn = app.ask("Are you there?", GREEDY)
        deadline = time.monotonic() + 30
        while "tokens so far" not in app.waiting_line(turn):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        line = app.waiting_line(turn)
        assert line.startswith("Waiting behind 1 server request (")
        began = time.monotonic()
        app.stop_answer()
        items = list(turn.follow())  # ends now, not when the server request does
        assert time.monotonic() - began < 2.0
        assert queue.running is server
        assert items[-1].stop_reason == "stopped"
        app.end_answer(turn, turn.stats)
        stored = app.chat.store.get(turn.conversation_id).messages
        assert [(m.role, m.text) for m in stored] == [
            ("user", "Are you there?"),
            ("assistant", ""),
        ]
        server.cancel()
        for _ in served:
            pass
    finally:
        app.close()
        assert app.let_go(10.0)
        app.chat.store.close()


def test_the_history_unwritable_still_answers(tiny: LoadedModel) -> None:
    class Refusing(ConversationStore):
        def add_message(self, *args, **kwargs):
            from core.store.conversations import HistoryWriteError

            raise HistoryWriteError("the disk is full", "free some space")

    store = Refusing(":memory:")
    chat = Chat(store)
    turn = chat.ask("Hi", GREEDY, loaded=tiny)
    assert turn.unsaved is not None and "disk is full" in turn.unsaved.message
    assert turn.prompt == [{"role": "user", "content": "Hi"}]
    assert turn.finish(GenerationStats(new_tokens=1)) is None
    store.close()


def test_model_builds_run_one_at_a_time() -> None:
    app = App()
    app.ready = True
    load = app.add_job(JobKind.LOAD, object())
    estimate = app.add_job(JobKind.ESTIMATE, object())
    answer_job = app.add_job(JobKind.ANSWER, object())
    assert app.may_start(load)
    load.started = True
    assert not app.may_start(estimate)  # from_pretrained changes global state
    assert app.may_start(answer_job)
    app.end_job(load.handle)
    assert app.may_start(estimate)
    # Everything that builds a model: loads, meta-device builds, and the ladder's
    # estimates and the divergence's two loads.
    assert {
        JobKind.LOAD,
        JobKind.ESTIMATE,
        JobKind.LADDER,
        JobKind.MODULES,
        JobKind.DIVERGENCE,
    } == EXCLUSIVE
    app.ready = False
    assert not app.may_start(estimate)  # it needs the stack imported first


def test_a_question_left_without_an_answer_is_not_answered_by_the_next(
    tmp_path: Path,
) -> None:
    """A process killed mid-answer left "What is 2+2?" to be answered with the
    essay the question before it asked for."""
    with ConversationStore(tmp_path / "c.db") as store:
        cid = store.create()
        store.add_message(cid, "user", "Write a long essay about Rome.")
        chat = Chat(store)
        chat.open(cid)
        turn = chat.ask("What is 2+2?", GREEDY)
        assert turn.prompt == [{"role": "user", "content": "What is 2+2?"}]
