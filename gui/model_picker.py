"""The model picker: the embedded default, recent folders, the HF cache, a hub id."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.model.catalog import ModelRef
from core.units import format_bytes
from gui import dialogs

logger = logging.getLogger(__name__)

REF_ROLE = Qt.ItemDataRole.UserRole


class ModelPicker(QWidget):
    """Lists models: `selected(ModelRef)` on a click, `picked(ModelRef)` to load it.

    Folders and hub ids are validated by the window (in core.model.catalog), which then calls
    `remember` for folders so they show under "Recent folders".
    """

    selected = Signal(object)
    picked = Signal(object)
    folder_chosen = Signal(str)
    hub_id_entered = Signal(str)
    get_model_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        title = QLabel("Models")
        title.setObjectName("heading")
        layout.addWidget(title)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Model", "Size"])
        self.tree.setRootIsDecorated(False)
        self.tree.setIndentation(8)
        self.tree.setUniformRowHeights(True)
        # A long name loses its middle, not its end (the tooltip has it whole).
        self.tree.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.tree.itemActivated.connect(self._on_activated)
        self.tree.currentItemChanged.connect(self._on_current)
        layout.addWidget(self.tree, 1)
        self.sections: dict[str, QTreeWidgetItem] = {}
        for key, text in (
            ("default", "Embedded"),
            ("recent", "Recent folders"),
            ("cache", "Hugging Face cache"),
        ):
            item = QTreeWidgetItem([text])
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            font = item.font(0)
            font.setBold(True)
            item.setFont(0, font)
            self.tree.addTopLevelItem(item)
            item.setFirstColumnSpanned(True)  # the title may use the Size column too
            item.setExpanded(True)
            self.sections[key] = item
        self._placeholder(self.sections["cache"], "Scanning…")
        self._placeholder(self.sections["recent"], "None yet")
        self.open_button = QPushButton("Open folder…")
        self.open_button.setToolTip("Load a model from a folder with config.json")
        self.open_button.clicked.connect(self.choose_folder)
        layout.addWidget(self.open_button)
        self.get_button = QPushButton("Get a model…")
        self.get_button.setToolTip(
            "Search the hub, see whether a model fits, and download it"
        )
        self.get_button.clicked.connect(lambda: self.get_model_requested.emit())
        layout.addWidget(self.get_button)
        row = QHBoxLayout()
        self.hub_edit = QLineEdit()
        self.hub_edit.setPlaceholderText("Hub id: org/name")
        self.hub_edit.setToolTip(
            "A Hugging Face model id; the cached copy is used when there is one"
        )
        self.hub_edit.returnPressed.connect(self._on_hub)
        self.hub_button = QPushButton("Use")
        self.hub_button.clicked.connect(self._on_hub)
        row.addWidget(self.hub_edit, 1)
        row.addWidget(self.hub_button)
        layout.addLayout(row)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)

    # -- content --
    def _placeholder(self, section: QTreeWidgetItem, text: str, tip: str = "") -> None:
        item = QTreeWidgetItem([text])
        item.setFlags(Qt.ItemFlag.NoItemFlags)
        item.setToolTip(0, tip)
        section.addChild(item)
        item.setFirstColumnSpanned(True)

    def _clear(self, section: QTreeWidgetItem) -> None:
        section.takeChildren()

    def _add(self, section: QTreeWidgetItem, ref: ModelRef) -> QTreeWidgetItem:
        name = ref.name
        if ref.quantized:
            name += "  ◆ quantized"
        size = format_bytes(ref.size_bytes) if ref.size_bytes else ""
        item = QTreeWidgetItem([name, size])
        item.setData(0, REF_ROLE, ref)
        item.setTextAlignment(
            1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        )
        tip = [name, str(ref.path or ref.repo_id or ref.name)]
        if ref.quantized:
            tip.append(f"Already quantized: {ref.quantized}. Load it with mode none.")
        if ref.kind == "default" and not ref.size_bytes:
            tip.append("Converted from the bundled GGUF on first load (about 20 s).")
        tip += ref.warnings
        item.setToolTip(0, "\n".join(tip))
        section.addChild(item)
        return item

    def set_default(self, ref: ModelRef) -> None:
        self._clear(self.sections["default"])
        self._add(self.sections["default"], ref)

    def set_recent(self, folders: list[str]) -> None:
        section = self.sections["recent"]
        self._clear(section)
        for folder in folders:
            path = Path(folder)
            self._add(section, ModelRef("folder", path.name, path=path))
        if not folders:
            self._placeholder(section, "None yet")

    def set_cache(self, refs: list[ModelRef]) -> None:
        section = self.sections["cache"]
        self._clear(section)
        for ref in refs:
            self._add(section, ref)
        if not refs:
            self._placeholder(
                section,
                "No causal LMs found",
                "The Hugging Face cache holds no causal language model "
                "(Get a model… downloads one)",
            )

    def refs(self) -> list[ModelRef]:
        """Every model listed, in order."""
        out = []
        for section in self.sections.values():
            for i in range(section.childCount()):
                ref = section.child(i).data(0, REF_ROLE)
                if ref is not None:
                    out.append(ref)
        return out

    def mark_current(self, ref: ModelRef | None) -> None:
        """Show which entry is loaded (bold) and select it."""
        for section in self.sections.values():
            for i in range(section.childCount()):
                item = section.child(i)
                other = item.data(0, REF_ROLE)
                font = item.font(0)
                same = (
                    ref is not None
                    and other is not None
                    and (other.kind, other.path, other.repo_id)
                    == (ref.kind, ref.path, ref.repo_id)
                )
                font.setBold(same)
                item.setFont(0, font)
                if same:
                    self.tree.setCurrentItem(item)

    def select(self, ref: ModelRef) -> None:
        """Make the entry for `ref` (same kind and path) the current one."""
        for section in self.sections.values():
            for i in range(section.childCount()):
                other = section.child(i).data(0, REF_ROLE)
                if other is not None and (other.kind, other.path) == (
                    ref.kind,
                    ref.path,
                ):
                    self.tree.setCurrentItem(section.child(i))
                    return

    # -- actions --
    def _on_current(self, item: QTreeWidgetItem | None, _previous: object) -> None:
        ref = item.data(0, REF_ROLE) if item is not None else None
        if ref is not None:
            self.selected.emit(ref)

    def _on_activated(self, item: QTreeWidgetItem, _column: int = 0) -> None:
        ref = item.data(0, REF_ROLE)
        if ref is not None:
            self.picked.emit(ref)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Open a model folder", str(dialogs.last_folder())
        )
        if folder:
            dialogs.remember_folder(Path(folder).parent)
            self.folder_chosen.emit(folder)

    def _on_hub(self) -> None:
        text = self.hub_edit.text().strip()
        if text:
            self.hub_id_entered.emit(text)
