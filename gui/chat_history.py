"""The chat's memory: conversations kept in SQLite, answers with their provenance.

`ChatHistory` sits between the chat view and the controller. Before an answer is
queued, `prepare()` stores the question and fixes a seed; when the answer ends it is
stored with its provenance (the loaded model, its settings, the sampling, the stats).
It fills the chat from a stored conversation, decorates each message (badge with the
full provenance on hover, ‹ 1/2 › between variants, a menu to edit and resend,
delete, regenerate with another preset, compare variants side by side), and reopens
the last conversation on start.

"Regenerate with…" loads the model again with a preset (or the panel's settings),
answers with the same seed and sampling, keeps the new answer as a variant, and then
offers to go back to the settings loaded before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMenu,
    QPushButton,
    QToolButton,
    QWidget,
)

from core.errors import NibbleError
from core.settings import GenerationSettings, LoadOptions, QuantSettings, preset
from core.store import conversations as conv
from core.store.provenance import Provenance, quant_label, with_seed
from gui.chat_view import ChatView, MessageWidget
from gui.conversation_list import ConversationList, export_path
from gui.variants_view import (
    CURRENT,
    Badge,
    VariantsDialog,
    VariantSwitcher,
    regenerate_menu,
)

logger = logging.getLogger(__name__)

LIST_WIDTH = 170
NARROW_SCREEN = 1280  # px of available width below which the list starts hidden


@dataclass
class Pending:
    """An answer on its way: where it goes and what it will be recorded with."""

    conversation_id: int
    settings: GenerationSettings
    raw: bool
    loaded: Any
    variant_of: int | None = None  # the answer it becomes a variant of
    reply_to: int | None = None  # the stored question it answers
    chunks: list[str] = field(default_factory=list)


@dataclass
class Regeneration:
    """A "Regenerate with…" in progress: the answer, and the settings to go back to."""

    message_id: int
    label: str
    previous: tuple[Any, QuantSettings, LoadOptions] | None
    loading: bool = False


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
    """Keeps the chat in a ConversationStore; see the module docstring.

    Parameters
    ----------
    chat
        The chat view it fills and follows.
    controller
        The window's controller: the loaded model, `send`, `load` and their signals.
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
    error = Signal(object, str)
    conversation_opened = Signal(int)

    def __init__(
        self,
        chat: ChatView,
        controller: Any,
        apply_settings: Any,
        store: conv.ConversationStore | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent or chat)
        self.chat = chat
        self.controller = controller
        self.apply_settings = apply_settings
        self.store = store or conv.open_or_in_memory()
        self.current: conv.Conversation | None = None
        self.pending: Pending | None = None
        self.regeneration: Regeneration | None = None
        self.dialogs: list[VariantsDialog] = []
        self.closed = False
        self.list = ConversationList(self.store)
        self.list.setMinimumWidth(140)
        self.list.opened.connect(self.open)
        self.list.new_requested.connect(self.new_conversation)
        self.list.deleted.connect(self._on_deleted)
        self.list.export_requested.connect(self._export_dialog)
        self.restore_bar = RestoreBar()
        self.restore_bar.back_button.clicked.connect(self.restore_previous)
        chat.layout().insertWidget(1, self.restore_bar)
        # Clearing would lose nothing now: the list's New starts an empty chat.
        chat.clear_button.hide()
        chat.clear_button.clicked.connect(self.new_conversation)
        c = controller
        c.answer_chunk.connect(self._on_chunk)
        c.answer_finished.connect(self._on_finished)
        c.answer_failed.connect(self._on_failed)
        c.answer_aborted.connect(self._on_aborted)
        c.model_loaded.connect(self._on_model_loaded)
        c.load_failed.connect(self._on_load_ended)
        c.load_cancelled.connect(self._on_load_ended)
        if self.store.notice:
            QTimer.singleShot(0, self, lambda: self.notice.emit(self.store.notice))

    # -- conversations --
    def restore_last(self) -> None:
        """Reopen the conversation shown when the window last closed."""
        last = self.store.last_open()
        if last is not None:
            self.open(last)

    def open(self, conversation_id: int) -> None:
        """Show a stored conversation in the chat."""
        if self.busy:
            self.list.mark_current(self.current.id if self.current else None)
            self.status.emit("Wait for the answer to finish, or stop it.")
            return
        try:
            self.current = self.store.get(conversation_id)
        except NibbleError as exc:
            self.error.emit(exc, "Cannot open the conversation")
            self.list.refresh()
            return
        self.store.set_last_open(conversation_id)
        self.chat.system_edit.setPlainText(self.current.system_prompt)
        self.render()
        self.list.mark_current(conversation_id)
        self.conversation_opened.emit(conversation_id)

    def new_conversation(self) -> None:
        """An empty chat; it is stored with its first question."""
        if self.busy:
            return
        self.current = None
        self.chat.reset()
        self.store.set_last_open(None)
        self.list.mark_current(None)
        self.restore_bar.hide()

    def render(self, upto: int | None = None) -> None:
        """Fill the chat with the current conversation (stopping before `upto`)."""
        self.chat.reset()
        if self.current is None:
            return
        for message in self.current.messages:
            if message.id == upto:
                break
            widget = self.chat.add_message(message.role, message.text)
            self.decorate(widget, message)

    def reload(self) -> None:
        if self.current is not None and not self.closed:
            self.current = self.store.get(self.current.id)
            self.render()
            self.list.refresh()

    def _on_deleted(self, conversation_id: int) -> None:
        if self.current is not None and self.current.id == conversation_id:
            self.new_conversation()

    @property
    def busy(self) -> bool:
        return self.pending is not None or self.regeneration is not None

    # -- sending --
    def send(self, messages: Any, raw: bool, settings: GenerationSettings) -> Any:
        """Store the question, then queue the answer with the controller.

        Returns the controller's worker, or None when it could not queue it.
        """
        settings = self.prepare(messages, raw, settings)
        try:
            worker = self.controller.send(messages, raw, settings)
        except BaseException:
            self.pending = None
            raise
        if worker is None:
            self.pending = None
        return worker

    def prepare(
        self, messages: Any, raw: bool, settings: GenerationSettings
    ) -> GenerationSettings:
        """Store the question the chat is about to send; the settings, with a seed.

        Called for a new question and for the chat's Regenerate (the new answer then
        becomes a variant of the stored one).
        """
        settings = with_seed(settings)
        try:
            self._store_question(raw, settings)
        except NibbleError as exc:  # the answer still comes; it is just not kept
            self.pending = None
            self.error.emit(exc, "The chat history could not be saved")
        return settings

    def _store_question(self, raw: bool, settings: GenerationSettings) -> None:
        system = self.chat.system_edit.toPlainText()
        if self.current is None:
            conversation_id = self.store.create(system_prompt=system)
            self.current = self.store.get(conversation_id)
            self.store.set_last_open(conversation_id)
        elif system != self.current.system_prompt:
            self.store.set_system_prompt(self.current.id, system)
        conversation_id = self.current.id
        variant_of = None
        last = self.chat.messages_widgets[-1] if self.chat.messages_widgets else None
        reply_to = getattr(last, "message_id", None)
        if last is not None and reply_to is None:
            stored = self.store.add_message(conversation_id, last.role, last.text)
            self.decorate(last, stored)
            reply_to = stored.id
        elif last is not None:
            # The chat dropped the answers after this question to ask again.
            after = self._messages_after(last.message_id)
            answers = [m for m in after if m.role == "assistant"]
            if answers:
                variant_of = answers[0].id
        self.current = self.store.get(conversation_id)
        self.pending = Pending(
            conversation_id,
            settings,
            raw,
            self.controller.loaded,
            variant_of,
            reply_to=reply_to,
        )
        self.list.refresh()
        self.list.mark_current(conversation_id)

    def _messages_after(self, message_id: int) -> list[conv.Message]:
        assert self.current is not None
        ids = [m.id for m in self.current.messages]
        if message_id not in ids:
            return []
        return self.current.messages[ids.index(message_id) + 1 :]

    def _on_chunk(self, chunk: str) -> None:
        if self.pending is not None:
            self.pending.chunks.append(chunk)

    def _on_finished(self, stats: Any) -> None:
        self._store_answer(stats)

    def _on_failed(self, exc: Any, stats: Any) -> None:
        self._store_answer(stats)

    def _on_aborted(self) -> None:
        from core.generation.decode import STOP_STOPPED, GenerationStats

        self._store_answer(GenerationStats(stop_reason=STOP_STOPPED))

    def _store_answer(self, stats: Any) -> None:
        if self.closed:
            return
        pending, self.pending = self.pending, None
        regeneration = self.regeneration
        if pending is None:
            return
        text = "".join(pending.chunks)
        if text and pending.loaded is not None:
            provenance = Provenance.from_loaded(
                pending.loaded, pending.settings, stats, pending.raw
            )
            try:
                if pending.variant_of is not None:
                    self.store.add_variant(pending.variant_of, text, provenance)
                else:
                    self.store.add_answer(
                        pending.conversation_id,
                        text,
                        provenance,
                        reply_to=pending.reply_to,
                    )
            except NibbleError as exc:  # the conversation went while it answered
                self.error.emit(exc, "The answer could not be kept")
        if regeneration is not None:
            self._end_regeneration(bool(text))
        if self.current is not None and self.current.id == pending.conversation_id:
            # After the window painted the end of the answer.
            QTimer.singleShot(0, self, self.reload)
        else:
            self.list.refresh()

    # -- decorations --
    def decorate(self, widget: MessageWidget, message: conv.Message) -> None:
        """Badge, variant arrows and the message's menu, beside Copy."""
        widget.message_id = message.id  # type: ignore[attr-defined]
        head = widget.layout().itemAt(0).layout()
        at = head.indexOf(widget.copy_button)
        if message.role == "assistant":
            badge = Badge()
            badge.set_provenance(message.provenance)
            widget.badge = badge  # type: ignore[attr-defined]
            head.insertWidget(1, badge)
            at += 1
            switcher = VariantSwitcher()
            switcher.set_state(message.active, len(message.variants))
            switcher.changed.connect(
                lambda position, m=message.id: self.show_variant(m, position)
            )
            widget.switcher = switcher  # type: ignore[attr-defined]
            head.insertWidget(at, switcher)
            at += 1
            provenance = message.provenance
            if provenance is not None and provenance.stats:
                widget.set_stats(provenance.stats_line())
        more = QToolButton(text="⋯")
        more.setAutoRaise(True)
        more.setToolTip("Edit, delete, regenerate with other settings")
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        more.setMenu(self._message_menu(more, message))
        widget.more_button = more  # type: ignore[attr-defined]
        head.insertWidget(at + 1, more)

    def _message_menu(self, parent: QWidget, message: conv.Message) -> QMenu:
        menu = QMenu(parent)
        if message.role == "user":
            menu.addAction("Edit and resend…", lambda: self._edit_dialog(message.id))
        if message.role == "assistant":
            label = ""
            settings = self._panel_settings()
            if settings is not None:
                label = quant_label(*settings)
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
        menu.addSeparator()
        menu.addAction("Delete message", lambda: self.delete_message(message.id))
        return menu

    def show_variant(self, message_id: int, position: int) -> None:
        if self.busy:
            return
        self.store.set_active_variant(message_id, position)
        self.reload()

    def show_side_by_side(self, message_id: int) -> VariantsDialog | None:
        message = self._message(message_id)
        if message is None:
            return None
        dialog = VariantsDialog(message, self.chat)
        dialog.chosen.connect(lambda position: self.show_variant(message_id, position))
        self.dialogs = [d for d in self.dialogs if d.isVisible()] + [dialog]
        dialog.show()
        return dialog

    def _message(self, message_id: int) -> conv.Message | None:
        if self.current is None:
            return None
        return next((m for m in self.current.messages if m.id == message_id), None)

    # -- editing --
    def _edit_dialog(self, message_id: int) -> None:
        message = self._message(message_id)
        if message is None or self.busy:
            return
        text, ok = QInputDialog.getMultiLineText(
            self.chat, "Edit and resend", "Your message:", message.text
        )
        if ok and text.strip():
            self.edit_and_resend(message_id, text.strip())

    def edit_and_resend(self, message_id: int, text: str) -> None:
        """Change a question, drop everything after it, and ask again."""
        if self.busy or self.current is None:
            return
        self.store.edit_message(message_id, text, drop_following=True)
        self.reload()
        self.chat.regenerate()  # the chat sends its last question again

    def delete_message(self, message_id: int) -> None:
        if self.busy:
            return
        self.store.delete_message(message_id)
        self.reload()

    # -- regenerate with --
    def _panel_settings(self) -> tuple[QuantSettings, LoadOptions] | None:
        c = self.controller
        return (c.quant, c.options) if c.quant is not None else None

    def regenerate_with(self, message_id: int, choice: str) -> None:
        """Answer `message_id` again under preset `choice` (or CURRENT panel settings).

        The model reloads when the settings differ from the loaded ones; the answer
        uses the same seed and sampling and is kept as another variant.
        """
        loaded = self.controller.loaded
        message = self._message(message_id)
        if message is None or loaded is None or self.busy:
            return
        if choice == CURRENT:
            settings = self._panel_settings()
            if settings is None:
                return
            quant, options = settings
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

    def _on_model_loaded(self, _loaded: Any) -> None:
        if self.regeneration is not None and self.regeneration.loading:
            self.regeneration.loading = False
            self._regenerate_now()

    def _on_load_ended(self, *_args: Any) -> None:
        """A Regenerate-with load failed or was cancelled: the old model stays."""
        regeneration, self.regeneration = self.regeneration, None
        if regeneration is not None and regeneration.previous is not None:
            _ref, quant, options = regeneration.previous
            self.apply_settings(quant, options)

    def _regenerate_now(self) -> None:
        regeneration = self.regeneration
        assert regeneration is not None and self.current is not None
        self.current = self.store.get(self.current.id)
        message = self._message(regeneration.message_id)
        if message is None:
            self.regeneration = None
            return
        try:
            fallback = self.chat.generation_settings()
        except NibbleError:
            fallback = GenerationSettings()
        settings = conv.sampling_of(message, fallback)
        provenance = message.provenance
        raw = provenance.raw if provenance is not None else False
        history = self.current.history(upto=message.id)
        if raw:
            history = next(
                (m["content"] for m in reversed(history) if m["role"] == "user"), ""
            )
        self.render(upto=message.id)
        self.pending = Pending(
            self.current.id, settings, raw, self.controller.loaded, message.id
        )
        try:
            worker = self.controller.send(history, raw, settings)
        except NibbleError as exc:
            worker = None
            self.error.emit(exc, "Cannot answer")
        if worker is None:
            self.pending = None
            self.regeneration = None
            self.reload()

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
        target = getattr(self, "_restore_to", None)
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
        path = export_path(self.chat, suggested, kind)
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
        self.pending = None
        self.list._forget_undo()
        self.store.close()


def install(window: Any) -> ChatHistory:
    """Put the history beside `window`'s chat and reopen the last conversation.

    `window` is the main window: its chat, controller, settings panel, the splitter
    around the chat, and its show_notice / show_error / status bar.
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
    # On a narrow screen the list starts hidden (View ▸ Conversation list shows it),
    # so the window still fits; the chat's Clear then starts a new conversation.
    screen = window.screen()
    narrow = screen is not None and screen.availableGeometry().width() < NARROW_SCREEN
    shown = QAction("Conversation list", window, checkable=True, checked=not narrow)
    shown.toggled.connect(history.list.setVisible)
    shown.toggled.connect(lambda on: history.chat.clear_button.setVisible(not on))
    history.list.setVisible(not narrow)
    history.chat.clear_button.setVisible(narrow)
    window.menu("View").addAction(shown)
    history.list_action = shown
    # The list's width comes out of the chat, not out of the settings column.
    window.fit_middle_column()
    history.notice.connect(window.show_notice)
    history.error.connect(window.show_error)
    history.status.connect(lambda text: window.statusBar().showMessage(text, 5000))
    menu = window.menu("File")
    # Above the separator that sets Quit apart.
    anchor = next((a for a in reversed(menu.actions()) if a.isSeparator()), None)
    menu.insertSeparator(anchor)
    for title, kind in (
        ("Export conversation as Markdown…", "md"),
        ("Export conversation as JSON…", "json"),
        ("Export all conversations…", "all"),
    ):
        action = QAction(title, menu)
        action.triggered.connect(lambda _=False, k=kind: history.export_current(k))
        menu.insertAction(anchor, action)
    history.restore_last()
    return history
