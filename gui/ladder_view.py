"""When a model does not fit: the step-down ladder where the verdict or the error is.

The estimate's verdict on the current settings ("does not fit"), or a load that ran
out of memory, shows the ladder of core.model.ladder: each rung with its estimate,
whether it fits and what it costs, and one "Apply and load" for the first rung that
fits. The ladder is computed as a controller job (it builds models on the meta
device); the window applies the rung's settings to the settings panel and loads.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from core.errors import OutOfMemoryError
from core.settings import LoadOptions, QuantSettings
from core.units import format_bytes

if TYPE_CHECKING:
    from core.model.catalog import ModelRef
    from gui.controller import Controller
    from gui.estimate_view import EstimateView

logger = logging.getLogger(__name__)

FITS_COLOR = "#2e7d32"
NO_FIT_COLOR = "#c62828"


def rung_text(index: int, rung: Any) -> str:
    """'1. nf4 + double quant — 310 MiB, fits' and its cost under it, as rich text."""
    need = rung.estimate.judged_bytes
    size = format_bytes(need) if need is not None else "unknown size"
    color = FITS_COLOR if rung.fits else NO_FIT_COLOR
    word = "fits" if rung.fits else "does not fit"
    return (
        f"{index}. <b>{html.escape(rung.title)}</b> — {size}, "
        f"<span style='color:{color}'>{word}</span><br>"
        f"<small>{html.escape(rung.cost)}</small>"
    )


class LadderView(QFrame):
    """The rungs of one ladder and "Apply and load" for the first that fits.

    Follows the estimate (`estimate_view.estimated`) and the controller's failed
    loads; emits `apply_requested(Rung)` when the button is clicked. `reason` says
    why the ladder shows: 'verdict' or 'out of memory' ('' while hidden).
    """

    apply_requested = Signal(object)
    shown = Signal(object)  # the Ladder, once its rungs are on screen

    def __init__(
        self,
        controller: Controller,
        estimate_view: EstimateView,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.estimate_view = estimate_view
        self.ladder: Any = None
        self.reason = ""
        self.rung_labels: list[QLabel] = []
        self._worker: Any = None
        self._wanted: tuple[str, str] | None = None
        self._pending: tuple[Any, ...] | None = None
        self._loading: tuple[ModelRef, QuantSettings, LoadOptions] | None = None

        self.setObjectName("ladder")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.rows = QVBoxLayout()
        self.rows.setSpacing(4)
        self.none_fits = QLabel("No step down fits this machine.")
        self.none_fits.hide()
        self.apply_button = QPushButton("Apply and load")
        self.apply_button.setObjectName("primary")
        self.apply_button.clicked.connect(self._apply)
        self.apply_button.hide()
        self.close_button = QPushButton("Hide")
        self.close_button.setToolTip(
            "Hide these steps (they come back with the verdict)"
        )
        self.close_button.clicked.connect(self.dismiss)
        buttons = QHBoxLayout()
        buttons.addWidget(self.none_fits, 1)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        buttons.addWidget(self.apply_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addWidget(self.title)
        layout.addLayout(self.rows)
        layout.addLayout(buttons)
        self.hide()

        estimate_view.estimated.connect(self._on_estimate)
        controller.load_started.connect(self._on_load_started)
        controller.load_failed.connect(self._on_load_failed)
        controller.model_loaded.connect(self._on_loaded)

    # -- what asks for a ladder --

    def _on_estimate(self, table: Any) -> None:
        current = table.current
        view = self.estimate_view
        if current.verdict != "does not fit" or self._is_loaded(
            view.quant, view.options
        ):
            if self.reason == "verdict":
                self.dismiss()
            return
        verdict = f"{current.model}: {current.verdict_text}"
        self.compute(
            "verdict",
            f"<b>Does not fit.</b> {html.escape(verdict)}. These settings would:",
            view.model,
            view.quant,
            view.options,
            current.context,
            table.device,
            current,
        )

    def _on_load_started(self, ref: ModelRef, quant: QuantSettings) -> None:
        self._loading = (ref, quant, self.controller.options)

    def _on_load_failed(self, exc: Exception) -> None:
        if not isinstance(exc, OutOfMemoryError) or self._loading is None:
            return
        ref, quant, options = self._loading
        kept = self.controller.loaded
        stays = f" {kept.ref.name} stays loaded." if kept is not None else ""
        self.compute(
            "out of memory",
            f"<b>Loading ran out of memory.</b> {html.escape(exc.message)}.{stays} "
            "These settings would fit:",
            ref,
            quant,
            options,
            self.estimate_view.context.value(),
            None,  # free memory, as it is now
            None,
        )

    def _on_loaded(self, _loaded: Any) -> None:
        self._loading = None
        if self.reason == "out of memory":
            self.dismiss()

    def _is_loaded(self, quant: QuantSettings, options: LoadOptions) -> bool:
        """Whether these settings are what is loaded: a verdict judged with that
        model already in memory says nothing about loading it."""
        loaded = self.controller.loaded
        return (
            loaded is not None
            and loaded.ref == self.controller.selected_ref
            and loaded.quant == quant
            and loaded.options == options
        )

    # -- computing --

    def compute(
        self,
        reason: str,
        title: str,
        model: Any,
        quant: QuantSettings,
        options: LoadOptions,
        context: int,
        device: Any,
        current: Any,
    ) -> None:
        """Compute the ladder for these settings as a controller job, then show it
        (a request while one runs replaces what is computed next)."""
        args = (reason, title, model, quant, options, context, device, current)
        if self._worker is not None:
            self._pending = args
            return
        self._wanted = (reason, title)
        worker = self.controller.ladder(model, quant, options, context, device, current)
        worker.returned.connect(self._on_ladder)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _on_finished(self) -> None:
        self._worker = None
        if self._pending is not None:
            args, self._pending = self._pending, None
            self.compute(*args)

    def _on_error(self, exc: object) -> None:
        logger.info("the ladder could not be computed: %s", exc)

    def _on_ladder(self, ladder: Any) -> None:
        if self._pending is not None or self._wanted is None:
            return  # newer settings are on their way
        reason, title = self._wanted
        self.show_ladder(ladder, reason, title)

    # -- showing --

    def show_ladder(self, ladder: Any, reason: str, title: str) -> None:
        """Show `ladder`'s rungs in order under `title`."""
        self.ladder, self.reason = ladder, reason
        self.title.setText(title)
        for label in self.rung_labels:
            self.rows.removeWidget(label)
            label.deleteLater()
        self.rung_labels = []
        for i, rung in enumerate(ladder.rungs, 1):
            label = QLabel(rung_text(i, rung))
            label.setWordWrap(True)
            label.setToolTip(rung.estimate.verdict_text)
            self.rows.addWidget(label)
            self.rung_labels.append(label)
        first = ladder.first_fit
        if first is not None:
            self.apply_button.setText(f"Apply and load: {first.title}")
            self.apply_button.setToolTip(
                f"Set {first.title} in the settings and load {first.model_name}"
            )
        self.apply_button.setVisible(first is not None)
        self.none_fits.setVisible(first is None)
        self.show()
        self.shown.emit(ladder)

    def dismiss(self) -> None:
        self.reason = ""
        self.hide()

    def _apply(self) -> None:
        first = self.ladder.first_fit if self.ladder is not None else None
        if first is not None:
            self.apply_requested.emit(first)
