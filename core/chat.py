"""The conversation turn: the one truth of a chat.

A `Chat` is one conversation as the history keeps it. `ask()` stores the question
(creating the conversation with its system prompt on the first one) and returns a
`Turn`; the turn records the answer's text as it streams, from whichever thread reads
the generator (`follow`), and `finish()` stores it once, with its provenance. An
interrupted answer is kept, marked "stopped", and so is an empty one: a stored
question always has its answer, so the next question never gets the previous one's.

The window and `generate --save-to-chat` both walk this path; neither keeps a copy of
the conversation of its own. `Chat.conversation` follows every write in memory, so
nothing needs reading back from SQLite after an answer.

A Chat (and its store) belongs to the thread that made it, SQLite's rule: only
`Turn.follow` / `Turn.add` may run on another thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import NibbleError
from core.settings import GenerationSettings
from core.store import conversations as conv
from core.store.provenance import Provenance, with_seed

if TYPE_CHECKING:
    from core.generation.decode import GenerationStats, Message
    from core.generation.queue import Job
    from core.model.loader import LoadedModel

logger = logging.getLogger(__name__)


@dataclass
class Turn:
    """One answer on its way: what it answers, how, and the text so far.

    Attributes
    ----------
    conversation_id
        Where the answer is stored (None when the history could not be written).
    prompt
        What the model is fed: chat messages, or the question alone in raw mode.
    variant_of
        The stored answer this one becomes another variant of, or None.
    unsaved
        Why the question could not be stored (the answer still comes, unkept).
    constraint
        What the answer is held to (a core.generation.constrain.Constraint, e.g.
        JSON matching a schema); the queue enforces it and the provenance keeps it.
    answer
        The stored answer once `finish()` ran (for a variant: its message).
    """

    conversation_id: int | None
    prompt: str | list[Message]
    settings: GenerationSettings
    raw: bool
    loaded: LoadedModel | None
    question: conv.Message | None = None
    variant_of: int | None = None
    unsaved: NibbleError | None = None
    constraint: Any = None
    chunks: list[str] = field(default_factory=list)
    stats: GenerationStats | None = None
    job: Job | None = None
    answer: conv.Message | None = None
    done: bool = False
    _chat: Chat | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self.chunks)

    @property
    def tokens(self) -> int:
        """Tokens decoded so far, as the generator counts them (no tokenizing)."""
        if self.stats is not None and self.stats.new_tokens:
            return self.stats.new_tokens
        return self.job.tokens if self.job is not None else 0

    def add(self, chunk: str) -> None:
        """Keep a chunk of the answer (safe from the thread that reads the stream)."""
        self.chunks.append(chunk)

    def follow(
        self, items: Iterable[str | GenerationStats] | None = None
    ) -> Iterator[str | GenerationStats]:
        """Pass `items` (default: this turn's queue job) through, keeping the text
        and the final stats as they go by."""
        from core.generation.decode import GenerationStats

        source: Iterable[str | GenerationStats] | None = items
        if source is None:
            source = self.job
        if source is None:
            raise ValueError("this turn has no generation job to follow")
        for item in source:
            if isinstance(item, GenerationStats):
                self.stats = item
            else:
                self.add(item)
            yield item

    def finish(self, stats: GenerationStats | None = None) -> conv.Message | None:
        """Store the answer with its provenance (once; later calls return the same).

        Without stats (and none seen while following) the answer was interrupted:
        it is kept as far as it got, marked "stopped".

        Raises
        ------
        NibbleError
            The history refused the write (disk full, the conversation deleted
            meanwhile); the turn is over all the same.
        """
        if self.done:
            return self.answer
        self.done = True
        from core.generation.decode import STOP_STOPPED, GenerationStats

        stats = stats or self.stats or GenerationStats(stop_reason=STOP_STOPPED)
        if self.stats is None or stats is not self.stats:
            self.stats = stats
        chat = self._chat
        if chat is not None and chat.turn is self:
            chat.turn = None
        if chat is None or self.conversation_id is None or self.loaded is None:
            return None
        provenance = Provenance.from_loaded(
            self.loaded, self.settings, stats, self.raw, self.constraint
        )
        self.answer = chat._store_answer(self, provenance)
        return self.answer

    def stop(self) -> conv.Message | None:
        """End it now as "stopped", keeping the text so far (closing, Ctrl+C)."""
        from core.generation.decode import STOP_STOPPED, GenerationStats

        if self.job is not None:
            self.job.cancel()
        if self.done:
            return self.answer
        # Stats already seen mean the generator had ended: its own reason stands.
        stats = self.stats or GenerationStats(
            new_tokens=self.tokens, stop_reason=STOP_STOPPED
        )
        return self.finish(stats)


class Chat:
    """One conversation of the history, and the answer on its way (`turn`).

    Parameters
    ----------
    store
        The history; None keeps nothing (answers still come).
    """

    def __init__(self, store: conv.ConversationStore | None) -> None:
        self.store = store
        self.conversation: conv.Conversation | None = None
        self.turn: Turn | None = None

    # -- which conversation --

    @property
    def id(self) -> int | None:
        return self.conversation.id if self.conversation is not None else None

    @property
    def messages(self) -> list[conv.Message]:
        return self.conversation.messages if self.conversation is not None else []

    @property
    def busy(self) -> bool:
        """An answer is on its way."""
        return self.turn is not None and not self.turn.done

    def open(self, conversation_id: int) -> conv.Conversation:
        """Make the stored conversation `conversation_id` the current one."""
        if self.store is None:
            raise NibbleError("the conversation history is not available", "")
        self.conversation = self.store.get(conversation_id)
        self.store.set_last_open(conversation_id)
        return self.conversation

    def new(self) -> None:
        """An empty chat; it is stored with its first question."""
        self.conversation = None
        if self.store is not None:
            self.store.set_last_open(None)

    def reread(self) -> conv.Conversation | None:
        """Read the conversation again after a change made around it (an edit, a
        deletion, another variant shown)."""
        if self.conversation is not None and self.store is not None:
            self.conversation = self.store.get(self.conversation.id)
        return self.conversation

    def message(self, message_id: int) -> conv.Message | None:
        return next((m for m in self.messages if m.id == message_id), None)

    # -- turns --

    def ask(
        self,
        question: str,
        settings: GenerationSettings,
        *,
        raw: bool = False,
        system: str | None = None,
        loaded: LoadedModel | None = None,
        constraint: Any = None,
    ) -> Turn:
        """Store `question` and return the Turn that will carry its answer.

        A new conversation starts with `system` as its system prompt; an open one
        takes `system` when it changed (None keeps the one it has). The settings get a seed (so the answer can be
        written again alike). A history that refuses the write does not stop the
        answer: the turn says why in `unsaved`.
        """
        settings = with_seed(settings)
        stored: conv.Message | None = None
        unsaved: NibbleError | None = None
        if self.store is not None:
            try:
                stored = self._store_question(question, system)
            except NibbleError as exc:
                unsaved = exc
        if stored is not None:
            prompt: str | list[Message] = self.model_history()
        else:
            prompt = [
                *self._history(system),
                {"role": "user", "content": question},
            ]
        if raw:
            prompt = question
        turn = Turn(
            stored.conversation_id if stored is not None else None,
            prompt,
            settings,
            raw,
            loaded,
            question=stored,
            unsaved=unsaved,
            constraint=constraint,
            _chat=self,
        )
        self.turn = turn
        return turn

    def again(
        self,
        settings: GenerationSettings,
        *,
        raw: bool = False,
        loaded: LoadedModel | None = None,
        answer_id: int | None = None,
        constraint: Any = None,
    ) -> Turn | None:
        """A Turn that answers a question again; None when there is none to answer.

        `answer_id` names the answer to write again; by default the last question
        is answered again. Where an answer follows the question, the new answer
        becomes another variant of it. `constraint` holds it to JSON (see
        core.generation.constrain), as `ask`'s does.
        """
        messages = self.messages
        if answer_id is None:
            last_user = next(
                (
                    i
                    for i in range(len(messages) - 1, -1, -1)
                    if messages[i].role == "user"
                ),
                None,
            )
            if last_user is None:
                return None
            after = messages[last_user + 1 :]
            answer = next((m for m in after if m.role == "assistant"), None)
            upto = answer.id if answer is not None else None
            question = messages[last_user]
        else:
            answer = self.message(answer_id)
            if answer is None or answer.role != "assistant":
                return None
            upto = answer.id
            before = messages[: messages.index(answer)]
            question = next((m for m in reversed(before) if m.role == "user"), None)
            if question is None:
                return None
        assert self.conversation is not None
        prompt: str | list[Message] = self.model_history(upto=upto)
        if raw:
            prompt = question.text
        turn = Turn(
            self.conversation.id,
            prompt,
            with_seed(settings),
            raw,
            loaded,
            question=question,
            variant_of=answer.id if answer is not None else None,
            constraint=constraint,
            _chat=self,
        )
        self.turn = turn
        return turn

    def model_history(self, upto: int | None = None) -> list[Message]:
        """The conversation as the model reads it (stopping before message `upto`).

        A question stored without an answer (the process died before the answer was
        kept) is left out, so the question after it gets its own answer, not the
        earlier one's.
        """
        if self.conversation is None:
            return []
        history = self.conversation.history(upto=upto)
        return [
            m
            for i, m in enumerate(history)
            if not (
                m["role"] == "user"
                and i + 1 < len(history)
                and history[i + 1]["role"] == "user"
            )
        ]

    # -- inside --

    def _history(self, system: str | None) -> list[Message]:
        if self.conversation is not None:
            return self.model_history()
        return (
            [{"role": "system", "content": system}] if system and system.strip() else []
        )

    def _store_question(self, question: str, system: str | None) -> conv.Message:
        store = self.store
        assert store is not None
        if self.conversation is None:
            conversation_id = store.create(system_prompt=system or "")
            self.conversation = store.get(conversation_id)
            store.set_last_open(conversation_id)
        elif system is not None and system != self.conversation.system_prompt:
            store.set_system_prompt(self.conversation.id, system)
            self.conversation.system_prompt = system
        stored = store.add_message(self.conversation.id, "user", question)
        self.conversation.messages.append(stored)
        if not self.conversation.title:
            self.conversation.title = conv.title_from(question)
        self.conversation.updated = stored.created
        return stored

    def _store_answer(self, turn: Turn, provenance: Provenance) -> conv.Message:
        store = self.store
        assert store is not None and turn.conversation_id is not None
        text = turn.text
        mine = self.conversation is not None and self.id == turn.conversation_id
        if turn.variant_of is not None:
            variant = store.add_variant(turn.variant_of, text, provenance)
            message = self.message(turn.variant_of) if mine else None
            if message is None:
                return conv.Message(
                    turn.variant_of,
                    turn.conversation_id,
                    "assistant",
                    text,
                    variant.created,
                    variants=[variant],
                )
            message.variants.append(variant)
            message.active = variant.position
            message.text = text
            return message
        question = turn.question.id if turn.question is not None else None
        stored = store.add_answer(
            turn.conversation_id, text, provenance, reply_to=question
        )
        if mine:
            assert self.conversation is not None
            self.conversation.messages.append(stored)
            self.conversation.updated = time.time()
        return stored


def open_target(store: conv.ConversationStore, target: str, system: str | None) -> Chat:
    """The chat `generate --save-to-chat TARGET` writes to: 'new' or an id.

    Raises
    ------
    NibbleError
        No such conversation, a system prompt given for an existing one, or a
        history that could not keep the answer (read-only, busy): refused before
        the model loads.
    """
    store.check_writable()
    chat = Chat(store)
    if target == "new":
        return chat
    try:
        conversation_id = int(target)
    except ValueError:
        raise NibbleError(
            f"{target!r} is not a conversation id",
            "use the number `python main.py chats list` shows",
        ) from None
    conversation = store.get(conversation_id)
    if system:
        raise NibbleError(
            "--system only applies to a new conversation",
            f"conversation {conversation.id} has its own system prompt; "
            "leave --system out",
        )
    chat.conversation = conversation
    return chat
