"""The conversation list beside the chat: new, open, rename, delete with undo, search.

The list reads and writes a `core.store.conversations.ConversationStore` (every call is a
small SQLite transaction, quick enough for the UI thread) and says what the user did
through signals; the chat history glue (gui/chat_history.py) opens conversations.
"""

from __future__ import annotations

import datetime as dt
import logging

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.store.conversations import ConversationInfo, ConversationStore

logger = logging.getLogger(__name__)

UNDO_MS = 10_000
SEARCH_DELAY_MS = 150
ID_ROLE = Qt.ItemDataRole.UserRole


def when(timestamp: float) -> str:
    """'14:05' today, 'Mon 14:05' this week, '2026-11-02' before."""
    moment = dt.datetime.fromtimestamp(timestamp)
    now = dt.datetime.now()
    if moment.date() == now.date():
        return moment.strftime("%H:%M")
    if (now - moment).days < 7:
        return moment.strftime("%a %H:%M")
    return moment.strftime("%Y-%m-%d")


class ConversationList(QWidget):
    """Every conversation, the latest first, with a search box over all of them.

    Signals
    -------
    opened(int)
        The user picked a conversation.
    new_requested()
        The user asked for a new conversation.
    deleted(int)
        A conversation was deleted (undo brings it back and emits `restored`).
    restored(int)
        A deleted conversation came back.
    export_requested(int, str)
        Export conversation id as "md" or "json"; id 0 with "all" for everything.
    """

    opened = Signal(int)
    new_requested = Signal()
    deleted = Signal(int)
    restored = Signal(int)
    export_requested = Signal(int, str)

    def __init__(self, store: ConversationStore, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.current_id: int | None = None
        self._undo_id: int | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)

        top = QHBoxLayout()
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search all conversations")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.textChanged.connect(lambda _t: self._search_timer.start())
        top.addWidget(self.search_edit, 1)
        self.new_button = QToolButton(text="New")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.new_requested)
        self.new_shortcut = QShortcut(QKeySequence.StandardKey.New, self)
        self.new_shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        self.new_shortcut.activated.connect(self.new_requested)
        top.addWidget(self.new_button)
        layout.addLayout(top)

        self.list = QListWidget()
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setUniformItemSizes(True)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        self.list.itemActivated.connect(self._on_item)
        self.list.itemClicked.connect(self._on_item)
        layout.addWidget(self.list, 1)

        self.empty_label = QLabel("No conversations yet.")
        self.empty_label.setObjectName("hint")
        self.empty_label.setWordWrap(True)
        layout.addWidget(self.empty_label)

        self.undo_bar = QWidget()
        row = QHBoxLayout(self.undo_bar)
        row.setContentsMargins(0, 0, 0, 0)
        self.undo_label = QLabel()
        self.undo_label.setWordWrap(True)
        row.addWidget(self.undo_label, 1)
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo_delete)
        row.addWidget(self.undo_button)
        self.undo_bar.hide()
        layout.addWidget(self.undo_bar)
        self._undo_timer = QTimer(self)
        self._undo_timer.setSingleShot(True)
        self._undo_timer.setInterval(UNDO_MS)
        self._undo_timer.timeout.connect(self.forget_undo)

        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.refresh)

        self.rename_action = QAction("Rename…", self)
        self.rename_action.setShortcut(QKeySequence(Qt.Key.Key_F2))
        self.rename_action.setShortcutContext(
            Qt.ShortcutContext.WidgetWithChildrenShortcut
        )
        self.rename_action.triggered.connect(lambda: self.rename_dialog())
        self.delete_action = QAction("Delete", self)
        self.delete_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.delete_action.setShortcutContext(
            Qt.ShortcutContext.WidgetWithChildrenShortcut
        )
        self.delete_action.triggered.connect(lambda: self.delete_selected())
        self.list.addAction(self.rename_action)
        self.list.addAction(self.delete_action)
        self.refresh()

    # -- contents --
    def refresh(self) -> None:
        """Fill the list from the store (only matches while a search is typed)."""
        query = self.search_edit.text().strip()
        self.list.clear()
        if query:
            for hit in self.store.search(query):
                title = hit.title or "New conversation"
                text = title if hit.message_id is None else f"{title}: {hit.snippet}"
                self._add_item(hit.conversation_id, text, f"{title}\n{hit.snippet}")
            self.empty_label.setText(f"Nothing found for “{query}”.")
        else:
            for info in self.store.list():
                self._add_item(
                    info.id,
                    info.display_title,
                    f"{info.display_title}\nLast message: {when(info.updated)}",
                )
            self.empty_label.setText("No conversations yet.")
        self.empty_label.setVisible(self.list.count() == 0)
        self.mark_current(self.current_id)

    def _add_item(self, conversation_id: int, text: str, tip: str) -> None:
        item = QListWidgetItem(text)
        item.setData(ID_ROLE, conversation_id)
        item.setToolTip(tip)
        self.list.addItem(item)

    def ids(self) -> list[int]:
        """The conversation ids shown, top to bottom."""
        return [self.list.item(i).data(ID_ROLE) for i in range(self.list.count())]

    def titles(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def mark_current(self, conversation_id: int | None) -> None:
        """Select the row of the conversation shown in the chat."""
        self.current_id = conversation_id
        self.list.blockSignals(True)
        self.list.clearSelection()
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(ID_ROLE) == conversation_id:
                item.setSelected(True)
                self.list.setCurrentItem(item)
                break
        self.list.blockSignals(False)

    def _on_item(self, item: QListWidgetItem) -> None:
        conversation_id = item.data(ID_ROLE)
        if conversation_id is not None and conversation_id != self.current_id:
            self.opened.emit(int(conversation_id))

    def _selected_id(self) -> int | None:
        item = self.list.currentItem()
        return int(item.data(ID_ROLE)) if item is not None else None

    # -- actions --
    def rename(self, conversation_id: int, title: str) -> None:
        if title.strip():
            self.store.rename(conversation_id, title)
            self.refresh()

    def rename_dialog(self, conversation_id: int | None = None) -> None:
        conversation_id = conversation_id or self._selected_id()
        if conversation_id is None:
            return
        info: ConversationInfo = self.store.info(conversation_id)
        title, ok = QInputDialog.getText(
            self, "Rename conversation", "Title:", text=info.display_title
        )
        if ok:
            self.rename(conversation_id, title)

    def delete(self, conversation_id: int) -> None:
        """Delete a conversation; Undo under the list brings it back for a while."""
        self.forget_undo()
        title = self.store.info(conversation_id).display_title
        self.store.delete(conversation_id)
        self._undo_id = conversation_id
        self.undo_label.setText(f"Deleted “{title}”.")
        self.undo_bar.show()
        self._undo_timer.start()
        self.refresh()
        self.deleted.emit(conversation_id)

    def delete_selected(self) -> None:
        conversation_id = self._selected_id()
        if conversation_id is not None:
            self.delete(conversation_id)

    def undo_delete(self) -> None:
        if self._undo_id is None:
            return
        conversation_id, self._undo_id = self._undo_id, None
        self.store.undelete(conversation_id)
        self.undo_bar.hide()
        self._undo_timer.stop()
        self.refresh()
        self.restored.emit(conversation_id)

    def forget_undo(self) -> None:
        """The last deletion is final now."""
        if self._undo_id is not None:
            self._undo_id = None
            self.store.purge_deleted()
        self.undo_bar.hide()

    def _menu(self, pos: QPoint) -> None:
        item = self.list.itemAt(pos)
        menu = QMenu(self)
        if item is not None:
            conversation_id = int(item.data(ID_ROLE))
            menu.addAction("Open", lambda: self.opened.emit(conversation_id))
            menu.addAction("Rename…", lambda: self.rename_dialog(conversation_id))
            menu.addAction("Delete", lambda: self.delete(conversation_id))
            menu.addSeparator()
            menu.addAction(
                "Export as Markdown…",
                lambda: self.export_requested.emit(conversation_id, "md"),
            )
            menu.addAction(
                "Export as JSON…",
                lambda: self.export_requested.emit(conversation_id, "json"),
            )
        menu.addAction(
            "Export all conversations…", lambda: self.export_requested.emit(0, "all")
        )
        menu.popup(self.list.viewport().mapToGlobal(pos))


def export_path(parent: QWidget, suggested: str, kind: str) -> str:
    """Ask where to save an export; '' when the user cancels."""
    filters = {"md": "Markdown (*.md)", "json": "JSON (*.json)", "all": "JSON (*.json)"}
    path, _ = QFileDialog.getSaveFileName(
        parent, "Export conversation", suggested, filters[kind]
    )
    return path
