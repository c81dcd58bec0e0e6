"""The chat's conversations in the window: the list, badges, variants, Regenerate with.

The conversation itself has one home, the core's `Chat` (core/chat.py, the
controller's `chat`): it stores each question, records each answer with its
provenance as it ends, and keeps the open conversation in memory. `ChatHistory`
shows it: it fills the chat view from that conversation, decorates each message
(badge with the full provenance on hover, ‹ 1/2 › between variants, a menu to edit
and resend, delete, regenerate with another preset, compare variants side by side),
and when an answer ends decorates that one message in place; nothing is read back
from SQLite after an answer. It reopens the last conversation on start.

"Regenerate with…" loads the model again with a preset (or the panel's settings),
answers with the same seed and sampling, keeps the new answer as a variant, and then
offers to go back to the settings loaded before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMenu,
    QPushButton,
    QToolButton,
    QWidget,
)

from core.chat import Chat, Turn
from core.errors import NibbleError
from core.generation.constrain import Constraint, constraint_from_dict
from core.model.catalog import ModelRef
from core.settings import GenerationSettings, LoadOptions, QuantSettings, preset
from core.store import conversations as conv
from core.store.provenance import quant_label
from gui.chat_view import ChatView, MessageWidget
from gui.conversation_list import ConversationList, export_path
from gui.variants_view import (
    CURRENT,
    Badge,
    VariantsDialog,
    VariantSwitcher,
    quantized,
    regenerate_menu,
)

if TYPE_CHECKING:
    from core.model.loader import LoadedModel

logger = logging.getLogger(__name__)

LIST_WIDTH = 170
NARROW_SCREEN = 1280  # px of available width below which the list starts hidden


@dataclass
class Regeneration:
    """A "Regenerate with…" in progress: the answer, and the settings to go back to."""

    message_id: int
    label: str
    previous: tuple[ModelRef, QuantSettings, LoadOptions] | None
    loading: bool = False


class ChatController(Protocol):
    """What the history needs of the window's controller (gui.controller)."""

    chat: Chat
    quant: QuantSettings
    options: LoadOptions
    answer_finished: Any
    answer_failed: Any
    answer_aborted: Any
    model_loaded: Any
    load_failed: Any
    load_cancelled: Any
    chat_error: Any

    @property
    def loaded(self) -> LoadedModel | None: ...

    def ask(
        self,
        question: str,
        settings: GenerationSettings,
        *,
        raw: bool,
        system: str,
        constraint: Constraint | None = None,
    ) -> Turn | None: ...

    def ask_again(
        self,
        settings: GenerationSettings,
        *,
        raw: bool = False,
        answer_id: int | None = None,
        constraint: Constraint | None = None,
    ) -> Turn | None: ...

    def load(self, ref: ModelRef | None = None) -> object | None: ...


class RestoreBar(QWidget):
    """'Answered with int8.  [Back to nf4]  [Keep int8]' above the chat."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 0, 4, 0)
        self.label = QLabel()
        self.label.setWordWrap(True)
        row.addWidget(self.label, 1)
        self.back_button = QPushButton()
        self.keep_button = QPushButton()
        self.keep_button.clicked.connect(self.hide)
        row.addWidget(self.back_button)
        row.addWidget(self.keep_button)
        self.hide()


class ChatHistory(QObject):
    """Shows the controller's chat with its list of conversations; see the module
    docstring.

    Parameters
    ----------
    view
        The chat view it fills.
    controller
        The window's controller: its `chat`, `ask`, `ask_again`, `load` and signals.
    apply_settings
        Shows (QuantSettings, LoadOptions) in the settings panel, which passes them on
        to the controller (the panel's `set_settings`).
    store
        The history (default: the user's, in the data dir).
    """

    notice = Signal(str)
    """Something the user must read (a damaged history was set aside)."""
    status = Signal(str)
    """A short line for the status bar."""
    error = Signal(Exception, str)
    conversation_opened = Signal(int)

    def __init__(
        self,
        view: ChatView,
        controller: ChatController,
        apply_settings: Any,
        store: conv.ConversationStore | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent or view)
        self.view = view
        self.controller = controller
        self.apply_settings = apply_settings
        self.chat: Chat = controller.chat
        if self.chat.store is None:
            # The window starts even when the history cannot be opened (notice).
            self.chat.store = store or conv.open_or_in_memory()
        self.store: conv.ConversationStore = self.chat.store
        self.regeneration: Regeneration | None = None
        self._restore_to: tuple[ModelRef, QuantSettings, LoadOptions] | None = None
        self.dialogs: list[VariantsDialog] = []
        self.divergence_dialogs: list[Any] = []
        self.closed = False
        self.list = ConversationList(self.store)
        self.list.setMinimumWidth(140)
        self.list.opened.connect(self.open)
        self.list.new_requested.connect(self.new_conversation)
        self.list.deleted.connect(self._on_deleted)
        self.list.export_requested.connect(self._export_dialog)
        self.restore_bar = RestoreBar()
        self.restore_bar.back_button.clicked.connect(self.restore_previous)
        view.layout().insertWidget(1, self.restore_bar)
        view.clear_requested.connect(self.clear_to_new)
        c = controller
        c.answer_finished.connect(self._on_answer_ended)
        c.answer_failed.connect(self._on_answer_ended)
        c.answer_aborted.connect(self._on_answer_ended)
        c.chat_error.connect(self.error)
        c.model_loaded.connect(self._on_model_loaded)
        c.load_failed.connect(self._on_load_ended)
        c.load_cancelled.connect(self._on_load_ended)
        if self.store.notice:
            QTimer.singleShot(0, self, lambda: self.notice.emit(self.store.notice))

    @property
    def current(self) -> conv.Conversation | None:
        """The open conversation (the core chat's)."""
        return self.chat.conversation

    @property
    def busy(self) -> bool:
        return self.chat.busy or self.regeneration is not None

    # -- conversations --
    def restore_last(self) -> None:
        """Reopen the conversation shown when the window last closed."""
        last = self.store.last_open()
        if last is not None:
            self.open(last)

    def open(self, conversation_id: int) -> None:
        """Show a stored conversation in the chat."""
        if self.busy:
            self.list.mark_current(self.chat.id)
            self.status.emit("Wait for the answer to finish, or stop it.")
            return
        try:
            self.chat.open(conversation_id)
        except NibbleError as exc:
            self.error.emit(exc, "Cannot open the conversation")
            self.list.refresh()
            return
        assert self.current is not None
        self.view.system_edit.setPlainText(self.current.system_prompt)
        self.render()
        self.list.mark_current(conversation_id)
        self.conversation_opened.emit(conversation_id)

    def new_conversation(self) -> None:
        """An empty chat; it is stored with its first question."""
        if self.busy:
            return
        self.chat.new()
        self.view.reset()
        self.list.mark_current(None)
        self.restore_bar.hide()

    def clear_to_new(self) -> None:
        """The chat's Clear: a new conversation; Undo reopens the one put aside (it
        stays in the list either way)."""
        previous = self.chat.id
        if self.busy:
            return
        self.new_conversation()
        if previous is not None:
            self.view.offer_undo(lambda: self.open(previous))

    def render(self, upto: int | None = None) -> None:
        """Show the open conversation (stopping before message `upto`)."""
        self.view.reset()
        for message in self.chat.messages:
            if message.id == upto:
                break
            widget = self.view.add_message(message.role, message.text)
            self.decorate(widget, message)

    def _changed(self) -> None:
        """The conversation changed around the chat (edit, delete, variant shown)."""
        if self.closed:
            return
        try:
            self.chat.reread()
        except NibbleError:
            self.chat.new()
        self.render()
        self.list.refresh()

    def _on_deleted(self, conversation_id: int) -> None:
        if self.chat.id == conversation_id:
            self.new_conversation()

    # -- asking --
    def ask(
        self,
        question: str,
        settings: GenerationSettings,
        constraint: Constraint | None = None,
    ) -> Turn | None:
        """Store the question the view shows last and stream its answer (held to
        `constraint`, e.g. JSON, when one is given)."""
        raw = self.view.raw_check.isChecked()
        system = self.view.system_edit.toPlainText()
        try:
            turn = self.controller.ask(
                question, settings, raw=raw, system=system, constraint=constraint
            )
        except NibbleError as exc:
            self.error.emit(exc, "Cannot answer")
            self.render()  # the question shown was not sent (or has no answer)
            return None
        if turn is None:
            return None
        if turn.unsaved is not None:
            self.error.emit(turn.unsaved, "The chat history could not be saved")
        widget = self.view.last_message("user")
        if turn.question is not None and widget is not None:
            self.decorate(widget, turn.question)
            self.list.refresh()
            self.list.mark_current(turn.conversation_id)
        return turn

    def ask_again(
        self, settings: GenerationSettings, constraint: Constraint | None = None
    ) -> Turn | None:
        """Answer the last question again (the view dropped the answers after it);
        the new answer becomes another variant of the stored one."""
        try:
            return self.controller.ask_again(
                settings, raw=self.view.raw_check.isChecked(), constraint=constraint
            )
        except NibbleError as exc:
            self.error.emit(exc, "Cannot answer")
            self.render()
            return None

    def _on_answer_ended(self, turn: Turn, *_error: object) -> None:
        """Decorate the answer just written with what the chat stored; no reload."""
        if self.closed:
            return
        regeneration = self.regeneration
        if regeneration is not None and not regeneration.loading:
            self._end_regeneration(bool(turn.text))
        answer = turn.answer
        if answer is None or self.chat.id != turn.conversation_id:
            self.list.refresh()
            return
        last = self.chat.messages[-1] if self.chat.messages else None
        widget = self.view.last_message("assistant")
        if last is not None and last.id == answer.id and widget is not None:
            self.decorate(widget, answer)
        else:  # an answer in the middle got a variant: show what follows it again
            self.render()
        self.list.refresh()

    # -- decorations --
    def decorate(self, widget: MessageWidget, message: conv.Message) -> None:
        """Badge, variant arrows and the message's menu, beside Copy."""
        widget.message_id = message.id
        badge = switcher = None
        if message.role == "assistant":
            badge = Badge()
            badge.set_provenance(message.provenance)
            switcher = VariantSwitcher()
            switcher.set_state(message.active, len(message.variants))
            switcher.changed.connect(
                lambda position, m=message.id: self.show_variant(m, position)
            )
            provenance = message.provenance
            if provenance is not None and provenance.stats and not widget.has_stats():
                widget.set_stats(provenance.stats_line())
        more = QToolButton(text="⋯")
        more.setAutoRaise(True)
        more.setToolTip("Edit, delete, regenerate with other settings")
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        more.setMenu(self._message_menu(more, message))
        widget.set_decorations(badge, switcher, more)

    def _message_menu(self, parent: QWidget, message: conv.Message) -> QMenu:
        menu = QMenu(parent)
        if message.role == "user":
            menu.addAction("Edit and resend…", lambda: self._edit_dialog(message.id))
        if message.role == "assistant":
            label = quant_label(*self._panel_settings())
            menu.addMenu(
                regenerate_menu(
                    menu,
                    lambda choice, m=message.id: self.regenerate_with(m, choice),
                    label,
                )
            )
            if len(message.variants) > 1:
                menu.addAction(
                    "Compare variants side by side",
                    lambda: self.show_side_by_side(message.id),
                )
            variant = message.variant
            if (
                variant is not None
                and quantized(variant)
                and variant.text.strip()
                and hasattr(self.controller, "divergence")
            ):
                menu.addAction(
                    "Show divergence",
                    lambda: self.show_divergence(message.id, variant),
                )
        menu.addSeparator()
        menu.addAction("Delete message", lambda: self.delete_message(message.id))
        return menu

    def show_variant(self, message_id: int, position: int) -> None:
        if self.busy:
            return
        self.store.set_active_variant(message_id, position)
        self._changed()

    def show_side_by_side(self, message_id: int) -> VariantsDialog | None:
        message = self.chat.message(message_id)
        if message is None:
            return None
        divergence = (
            (lambda variant: self.show_divergence(message_id, variant))
            if hasattr(self.controller, "divergence")
            else None
        )
        dialog = VariantsDialog(message, self.view, divergence)
        dialog.chosen.connect(lambda position: self.show_variant(message_id, position))
        self.dialogs = [d for d in self.dialogs if d.isVisible()] + [dialog]
        dialog.show()
        return dialog

    def show_divergence(self, message_id: int, variant: conv.Variant) -> Any:
        """Shade `variant`'s tokens by KL vs full precision (a DivergenceDialog)."""
        from core.store.session import ref_from_dict
        from gui.divergence_view import DivergenceDialog, DivergenceRequest

        provenance = variant.provenance
        if provenance is None:
            return None
        ref = ref_from_dict(
            {
                "kind": provenance.model_kind,
                "name": provenance.model_name,
                "path": provenance.model_path,
                "repo_id": provenance.hub_id,
            }
        )
        history = self.chat.model_history(upto=message_id)
        question = next(
            (m["content"] for m in reversed(history) if m["role"] == "user"), ""
        )
        request = DivergenceRequest(
            ref,
            provenance.quant_settings(),
            provenance.load_options(),
            question if provenance.raw else history,
            variant.text,
            provenance.badge(),
            raw=provenance.raw,
        )
        dialog = DivergenceDialog(self.controller, request, self.view)
        self.divergence_dialogs = [
            d for d in self.divergence_dialogs if d.isVisible()
        ] + [dialog]
        dialog.show()
        return dialog

    # -- editing --
    def _edit_dialog(self, message_id: int) -> None:
        message = self.chat.message(message_id)
        if message is None or self.busy:
            return
        text, ok = QInputDialog.getMultiLineText(
            self.view, "Edit and resend", "Your message:", message.text
        )
        if ok and text.strip():
            self.edit_and_resend(message_id, text.strip())

    def edit_and_resend(self, message_id: int, text: str) -> None:
        """Change a question, drop everything after it, and ask again."""
        if self.busy or self.current is None:
            return
        try:
            constraint = self.view.reply_constraint()
        except NibbleError as exc:  # the line under the schema says it too
            self.status.emit(exc.message)
            return
        self.store.edit_message(message_id, text, drop_following=True)
        self._changed()
        self.ask_again(self._sampling(), constraint)

    def delete_message(self, message_id: int) -> None:
        if self.busy:
            return
        self.store.delete_message(message_id)
        self._changed()

    def _sampling(self) -> GenerationSettings:
        try:
            return self.view.generation_settings()
        except NibbleError:
            return GenerationSettings()

    # -- regenerate with --
    def _panel_settings(self) -> tuple[QuantSettings, LoadOptions]:
        return self.controller.quant, self.controller.options

    def regenerate_with(self, message_id: int, choice: str) -> None:
        """Answer `message_id` again under preset `choice` (or CURRENT panel settings).

        The model reloads when the settings differ from the loaded ones; the answer
        uses the same seed and sampling and is kept as another variant.
        """
        loaded = self.controller.loaded
        message = self.chat.message(message_id)
        if message is None or loaded is None or self.busy:
            return
        if choice == CURRENT:
            quant, options = self._panel_settings()
        else:
            chosen = preset(choice)
            quant, options = chosen.quant, chosen.load_options(loaded.options)
        previous = (loaded.ref, loaded.quant, loaded.options)
        self.regeneration = Regeneration(
            message_id, quant_label(quant, options), previous
        )
        if (quant, options) == (loaded.quant, loaded.options):
            self._regenerate_now()
            return
        self.regeneration.loading = True
        self.apply_settings(quant, options)
        if self.controller.load(loaded.ref) is None:
            self.regeneration = None
            self.error.emit(
                NibbleError(
                    "the model cannot be loaded again now",
                    "wait for the load or answer in progress to end",
                ),
                "Regenerate with",
            )

    def _on_model_loaded(self, _loaded: LoadedModel) -> None:
        if self.regeneration is not None and self.regeneration.loading:
            self.regeneration.loading = False
            self._regenerate_now()

    def _on_load_ended(self, *_args: object) -> None:
        """A Regenerate-with load failed or was cancelled: the old model stays."""
        regeneration, self.regeneration = self.regeneration, None
        if regeneration is not None and regeneration.previous is not None:
            _ref, quant, options = regeneration.previous
            self.apply_settings(quant, options)

    def _regenerate_now(self) -> None:
        regeneration = self.regeneration
        assert regeneration is not None
        message = self.chat.message(regeneration.message_id)
        if message is None:
            self.regeneration = None
            return
        settings = conv.sampling_of(message, self._sampling())
        provenance = message.provenance
        raw = provenance.raw if provenance is not None else False
        # The answer again is held to what the first one was (JSON, a schema).
        constraint = constraint_from_dict(
            provenance.constraint if provenance is not None else None
        )
        self.render(upto=message.id)
        try:
            turn = self.controller.ask_again(
                settings, raw=raw, answer_id=message.id, constraint=constraint
            )
        except NibbleError as exc:
            turn = None
            self.error.emit(exc, "Cannot answer")
        if turn is None:
            self.regeneration = None
            self.render()

    def _end_regeneration(self, answered: bool) -> None:
        regeneration, self.regeneration = self.regeneration, None
        if regeneration is None or regeneration.previous is None or not answered:
            return
        ref, quant, options = regeneration.previous
        loaded = self.controller.loaded
        if loaded is not None and (loaded.quant, loaded.options) == (quant, options):
            return
        before = quant_label(quant, options)
        bar = self.restore_bar
        bar.label.setText(f"Answered again with {regeneration.label}.")
        bar.back_button.setText(f"Back to {before}")
        bar.back_button.setToolTip(f"Load {ref.name} with {before} again")
        bar.keep_button.setText(f"Keep {regeneration.label}")
        self._restore_to = regeneration.previous
        bar.show()

    def restore_previous(self) -> None:
        """Load the settings that were loaded before the last Regenerate with…."""
        target = self._restore_to
        self.restore_bar.hide()
        if target is None:
            return
        ref, quant, options = target
        self._restore_to = None
        self.apply_settings(quant, options)
        self.controller.load(ref)

    # -- export --
    def export(self, conversation_id: int, kind: str, path: str | Path) -> Path:
        """Write conversation `conversation_id` as 'md' or 'json', or 'all' as JSON."""
        if kind == "md":
            text = self.store.export_markdown(conversation_id)
        elif kind == "json":
            text = json.dumps(
                self.store.export_json(conversation_id), indent=2, ensure_ascii=False
            )
        else:
            text = json.dumps(
                self.store.export_all_json(), indent=2, ensure_ascii=False
            )
        target = Path(path)
        target.write_text(text if text.endswith("\n") else text + "\n", "utf-8")
        return target

    def export_current(self, kind: str) -> None:
        """Ask where to save the open conversation ('md', 'json') or all ('all')."""
        if kind != "all" and self.current is None:
            self.status.emit("Open a conversation to export it.")
            return
        self._export_dialog(self.current.id if self.current else 0, kind)

    def _export_dialog(self, conversation_id: int, kind: str) -> None:
        if kind == "all":
            suggested = "nibble-conversations.json"
        else:
            title = self.store.info(conversation_id).display_title
            safe = "".join(ch if ch.isalnum() else "-" for ch in title)[:40].strip("-")
            suggested = f"{safe or 'conversation'}.{kind}"
        path = export_path(self.view, suggested, kind)
        if not path:
            return
        try:
            written = self.export(conversation_id, kind, path)
        except OSError as exc:
            self.error.emit(
                NibbleError(
                    f"cannot write {path}: {exc.strerror}", "pick another file"
                ),
                "Export failed",
            )
            return
        self.status.emit(f"Saved {written}")

    def close(self) -> None:
        """Make pending deletions final and close the database."""
        if self.closed:
            return
        self.closed = True
        self.list.forget_undo()
        self.store.close()


def install(window: Any) -> ChatHistory:
    """Put the history beside `window`'s chat and reopen the last conversation.

    `window` is the main window: its chat, controller, settings panel and the
    splitter around the chat. The window owns its menus and connects the history's
    notices and errors itself.
    """
    history = ChatHistory(
        window.chat, window.controller, window.settings_panel.set_settings
    )
    splitter = window.chat_splitter
    splitter.insertWidget(0, history.list)
    splitter.setStretchFactor(0, 0)
    splitter.setStretchFactor(1, 1)
    total = max(sum(splitter.sizes()), 600)
    splitter.setSizes([LIST_WIDTH, total - LIST_WIDTH])
    history.restore_last()
    return history
