"""An answer's variants: the badge on each answer, arrows between variants, side by side.

"Regenerate with…" keeps every answer a message received under other settings as a
variant (core.store.conversations). Here: the badge with the full provenance as its
tooltip, the ‹ 1/2 › switcher, the menu of presets to regenerate with, and the
side-by-side dialog showing each variant's badge, tokens, tok/s and true size.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.errors import NibbleError
from core.settings import PRESETS
from core.store.conversations import Message, Variant
from core.store.provenance import Provenance
from core.units import format_bytes
from gui.chat_view import render_html

CURRENT = "current"
"""The menu choice that means the settings panel as it is now."""


def provenance_tooltip(provenance: Provenance) -> str:
    """The full provenance as rich text, one field per line."""
    lines = "<br>".join(html.escape(ln, quote=False) for ln in provenance.describe())
    return f"<b>{html.escape(provenance.badge())}</b><br>{lines}"


class Badge(QLabel):
    """'nf4 · SmolLM2-135M' in a small frame; hover for the full provenance."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("badge")
        self.setStyleSheet(
            "QLabel#badge { border: 1px solid palette(mid); border-radius: 6px;"
            " padding: 0 6px; font-size: 11px; }"
        )
        self.hide()

    def set_provenance(self, provenance: Provenance | None) -> None:
        if provenance is None:
            self.hide()
            return
        self.setText(provenance.badge())
        self.setToolTip(provenance_tooltip(provenance))
        self.show()


class VariantSwitcher(QWidget):
    """‹ 2/3 › between an answer's variants; `changed(position)` on a click."""

    changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        self.previous = QToolButton(text="‹")
        self.previous.setAutoRaise(True)
        self.previous.setToolTip("The previous variant of this answer")
        self.label = QLabel()
        self.next = QToolButton(text="›")
        self.next.setAutoRaise(True)
        self.next.setToolTip("The next variant of this answer")
        for widget in (self.previous, self.label, self.next):
            row.addWidget(widget)
        self.previous.clicked.connect(lambda: self._step(-1))
        self.next.clicked.connect(lambda: self._step(1))
        self.position, self.count = 0, 1
        self.hide()

    def set_state(self, position: int, count: int) -> None:
        self.position, self.count = position, count
        self.label.setText(f"{position + 1}/{count}")
        self.previous.setEnabled(position > 0)
        self.next.setEnabled(position < count - 1)
        self.setVisible(count > 1)

    def _step(self, delta: int) -> None:
        target = self.position + delta
        if 0 <= target < self.count:
            self.changed.emit(target)


def regenerate_menu(
    parent: QWidget, pick: Callable[[str], None], current_label: str = ""
) -> QMenu:
    """Every preset, then the settings panel as it is: `pick(name or CURRENT)`."""
    menu = QMenu("Regenerate with", parent)
    for name, preset in PRESETS.items():
        action = menu.addAction(f"{preset.title}", lambda n=name: pick(n))
        action.setToolTip(preset.description)
        action.setObjectName(f"regenerate_{name}")
    menu.addSeparator()
    title = "Current panel settings" + (f" ({current_label})" if current_label else "")
    action = menu.addAction(title, lambda: pick(CURRENT))
    action.setObjectName(f"regenerate_{CURRENT}")
    menu.setToolTipsVisible(True)
    return menu


def variant_numbers(variant: Variant) -> dict[str, str]:
    """What the side-by-side view compares: badge, tokens, tok/s, true size, seed."""
    provenance = variant.provenance
    if provenance is None:
        return {"badge": "unknown settings", "tokens": "", "speed": "", "size": ""}
    stats = provenance.stats
    speed = stats.get("tokens_per_s")
    return {
        "badge": provenance.badge(),
        "tokens": f"{stats.get('new_tokens', '?')} tokens"
        + (f" · {stats['stop_reason']}" if stats.get("stop_reason") else ""),
        "speed": f"{speed:.1f} tok/s" if speed else "tok/s unknown",
        "size": f"{format_bytes(provenance.true_bytes)} in memory"
        if provenance.true_bytes
        else "size unknown",
        "seed": f"seed {provenance.seed}" if provenance.seed is not None else "",
    }


def quantized(variant: Variant) -> bool:
    """Whether a quantized model wrote `variant` (its divergence can be shown)."""
    provenance = variant.provenance
    if provenance is None:
        return False
    try:
        return provenance.quant_settings().quantized
    except NibbleError:  # settings an older Nibble kept: nothing to load them with
        return False


class VariantsDialog(QDialog):
    """Every variant of one answer in columns, with the numbers of the model behind.

    "Show in chat" under a column emits `chosen(position)`. With `on_divergence`,
    each variant written by a quantized model also gets "Show divergence", which
    calls it with that variant (the window shades its tokens by KL vs a baseline).
    """

    chosen = Signal(int)

    def __init__(
        self,
        message: Message,
        parent: QWidget | None = None,
        on_divergence: Callable[[Variant], None] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Variants of this answer")
        self.columns: list[dict[str, QLabel]] = []
        self.show_buttons: list[QPushButton] = []
        self.divergence_buttons: dict[int, QPushButton] = {}  # by variant position
        self._on_divergence = on_divergence
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        for variant in message.variants:
            row.addWidget(self._column(variant, variant.position == message.active), 1)
        layout.addLayout(row, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(min(420 * len(message.variants), 1300), 520)

    def _column(self, variant: Variant, shown: bool) -> QWidget:
        frame = QFrame()
        frame.setFrameShape(QFrame.Shape.StyledPanel)
        column = QVBoxLayout(frame)
        numbers = variant_numbers(variant)
        labels: dict[str, QLabel] = {}
        head = QLabel(
            f"<b>{html.escape(numbers['badge'])}</b>"
            + (" &nbsp;<i>(shown)</i>" if shown else "")
        )
        if variant.provenance is not None:
            head.setToolTip(provenance_tooltip(variant.provenance))
        labels["badge"] = head
        column.addWidget(head)
        for key in ("tokens", "speed", "size", "seed"):
            if numbers.get(key):
                label = QLabel(numbers[key])
                label.setObjectName("hint")
                labels[key] = label
                column.addWidget(label)
        body = QLabel(render_html(variant.text) or "<i>empty</i>")
        body.setTextFormat(Qt.TextFormat.RichText)
        body.setWordWrap(True)
        body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        labels["text"] = body
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(body)
        column.addWidget(scroll, 1)
        show = QPushButton("Shown in chat" if shown else "Show in chat")
        show.setEnabled(not shown)
        show.clicked.connect(lambda: self._choose(variant.position))
        buttons = QHBoxLayout()
        if self._on_divergence is not None and quantized(variant):
            divergence = QPushButton("Show divergence")
            divergence.setToolTip(
                "Shade each token by how far this quantized model's next-token "
                "distribution moved from full precision's (KL), with both top-5 "
                "lists on hover"
            )
            on_divergence = self._on_divergence
            divergence.clicked.connect(lambda: on_divergence(variant))
            divergence.setEnabled(bool(variant.text.strip()))
            buttons.addWidget(divergence)
            self.divergence_buttons[variant.position] = divergence
        buttons.addWidget(show)
        column.addLayout(buttons)
        self.columns.append(labels)
        self.show_buttons.append(show)
        return frame

    def _choose(self, position: int) -> None:
        self.chosen.emit(position)
        self.accept()
