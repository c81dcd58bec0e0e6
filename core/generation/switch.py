"""Any model on demand: the model a request names is loaded (after the fit check)
in place of the one the queue serves, one at a time, and unloaded after idling.

A name is what the catalog knows: "default" or the default's name, a recent folder
(by its path or folder name), or a Hugging Face cache id; a ":preset" suffix picks
the quantization (`SmolLM2-135M-Instruct:int8`), else the model's last settings or
nf4.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ModelNotFoundError, NibbleError, SettingsError
from core.generation.queue import GenerationQueue
from core.model.catalog import ModelRef
from core.settings import PRESETS, LoadOptions, QuantSettings, preset

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "nf4"


class UnfitModelError(NibbleError):
    """The named model does not fit this machine with these settings."""


@dataclass(frozen=True)
class Wanted:
    """A model a request names, resolved: what to load and how."""

    name: str
    """The name without the preset suffix, as /v1/models lists it."""
    ref: ModelRef
    quant: QuantSettings
    options: LoadOptions
    preset: str | None = None


def model_key(ref: ModelRef) -> str:
    """How a model is named to clients: the hub id, else its (folder) name."""
    return ref.repo_id or ref.name


def servable(recent_folders: Iterable[str | Path] = ()) -> dict[str, ModelRef]:
    """What can be served, by name: the default, recent folders, the HF cache."""
    from core.model import catalog

    found: dict[str, ModelRef] = {}
    default = catalog.default_ref()
    found[model_key(default)] = default
    for folder in recent_folders:
        try:
            ref = catalog.folder_ref(Path(folder))
        except NibbleError:
            continue  # moved or deleted since: not offered
        found.setdefault(model_key(ref), ref)
    for ref in catalog.scan_cache():
        found.setdefault(model_key(ref), ref)
    return found


class ModelSwitcher:
    """Loads the model each request names into the queue, one model at a time.

    Parameters
    ----------
    queue
        The generation queue whose model is switched.
    directory
        Returns the servable models by name (called for each lookup, so a new
        download or folder shows up).
    settings_for
        The last settings a model was loaded with, if known (else nf4).
    idle_unload_s
        Unload the model after this many seconds without a request (None: never).
    on_change
        Called with (state, name) on "loading", "loaded", "unloaded", "failed"
        (from the thread that switched).
    load, unload
        The loader's functions (replaceable in tests of the switching rules).
    """

    def __init__(
        self,
        queue: GenerationQueue,
        directory: Callable[[], dict[str, ModelRef]] = servable,
        settings_for: Callable[[ModelRef], tuple[QuantSettings, LoadOptions] | None]
        | None = None,
        idle_unload_s: float | None = None,
        on_change: Callable[[str, str], Any] | None = None,
        load: Callable[..., Any] | None = None,
        unload: Callable[[Any], Any] | None = None,
    ) -> None:
        from core.model import loader

        self.queue = queue
        self.directory = directory
        self.settings_for = settings_for
        self.idle_unload_s = idle_unload_s
        self.on_change = on_change
        self._load = load or loader.load
        self._unload = unload or loader.unload
        self._lock = threading.Lock()
        self.loading: str | None = None
        """The name being loaded now, for status displays."""
        self.last_used = time.monotonic()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if idle_unload_s:
            self._watcher = threading.Thread(
                target=self._watch_idle, name="nibble-idle-unload", daemon=True
            )
            self._watcher.start()

    # -- names --

    def resolve(self, text: str) -> Wanted:
        """The model and settings `text` names.

        Raises
        ------
        ModelNotFoundError
            No servable model has that name.
        SettingsError
            The preset suffix is unknown.
        """
        whole = text.strip()
        name, _, suffix = whole.rpartition(":")
        models = self.directory()
        if name and suffix.lower() not in PRESETS and whole not in models:
            if (models.get(name) or self._by_alias(name, models)) is not None:
                raise SettingsError(
                    f"unknown preset '{suffix}' in '{whole}'",
                    f"name one of {', '.join(PRESETS)} after the colon",
                )
        if not name or suffix.lower() not in PRESETS:
            name, suffix = whole, ""
        ref = models.get(name) or self._by_alias(name, models)
        if ref is None:
            known = ", ".join(sorted(models)) or "none"
            raise ModelNotFoundError(
                f"the model '{name}' is not served here",
                f"servable: {known}",
            )
        if suffix:
            chosen = preset(suffix)
            return Wanted(
                model_key(ref), ref, chosen.quant, chosen.load_options(), chosen.name
            )
        last = self.settings_for(ref) if self.settings_for else None
        if last is not None:
            return Wanted(model_key(ref), ref, last[0], last[1])
        chosen = preset(DEFAULT_PRESET)
        return Wanted(model_key(ref), ref, chosen.quant, chosen.load_options(), None)

    @staticmethod
    def _by_alias(name: str, models: dict[str, ModelRef]) -> ModelRef | None:
        if name.lower() == "default":
            return next((r for r in models.values() if r.kind == "default"), None)
        for ref in models.values():
            if ref.path is not None and name in (str(ref.path), ref.path.name):
                return ref
        return None

    # -- switching --

    def is_loaded(self, wanted: Wanted) -> bool:
        loaded = self.queue.loaded
        if loaded is None or loaded.model is None:
            return False
        same_model = model_key(loaded.ref) == wanted.name or (
            loaded.ref.path is not None and loaded.ref.path == wanted.ref.path
        )
        if not same_model:
            return False
        if wanted.preset is None:
            return True  # the bare name: whatever settings it has
        return loaded.quant.effective() == wanted.quant.effective()

    def ensure(self, wanted: Wanted) -> Any:
        """Serve `wanted`: now if it is loaded, else after the running answers end.

        Raises
        ------
        UnfitModelError
            The fit check says it does not fit; the current model stays.
        NibbleError
            The load failed; the previous model is loaded again where it can be.
        """
        self.last_used = time.monotonic()
        with self._lock:
            if self.is_loaded(wanted):
                return self.queue.loaded
            self._check_fit(wanted)
            self._notify("loading", wanted.name)
            self.loading = wanted.name
            try:
                self.queue.wait_idle()  # the answers of the old model finish on it
                previous = self.queue.loaded
                previous_settings = (
                    (previous.ref, previous.quant, previous.options)
                    if previous is not None
                    else None
                )
                self.queue.set_model(None)
                if previous is not None:
                    self._unload(previous)
                try:
                    loaded = self._load(wanted.ref, wanted.quant, wanted.options)
                except BaseException:
                    self._notify("failed", wanted.name)
                    if previous_settings is not None:
                        self._restore(*previous_settings)
                    raise
                self.queue.set_model(loaded)
            finally:
                self.loading = None
            self.last_used = time.monotonic()
            self._notify("loaded", wanted.name)
            return loaded

    def _restore(
        self, ref: ModelRef, quant: QuantSettings, options: LoadOptions
    ) -> None:
        try:
            self.queue.set_model(self._load(ref, quant, options))
            self._notify("loaded", model_key(ref))
        except Exception:
            logger.warning("could not load %s again", model_key(ref), exc_info=True)

    def _check_fit(self, wanted: Wanted) -> None:
        from core.model import estimate

        try:
            row = estimate.estimate(wanted.ref, wanted.quant, wanted.options)
        except NibbleError as exc:
            logger.debug("no estimate for %s: %s", wanted.name, exc)
            return  # the load itself will say what is wrong
        if row.verdict == "does not fit":
            raise UnfitModelError(
                f"{wanted.name} does not fit: {row.verdict_text}",
                "pick a smaller model or a 4-bit preset (e.g. ':nf4')",
            )

    def unload_if_idle(self) -> bool:
        """Unload the model if nothing ran for idle_unload_s; True if it did."""
        if not self.idle_unload_s:
            return False
        with self._lock:
            loaded = self.queue.loaded
            idle = time.monotonic() - self.last_used
            if loaded is None or self.queue.busy or idle < self.idle_unload_s:
                return False
            self.queue.set_model(None)
            self._unload(loaded)
            self._notify("unloaded", model_key(loaded.ref))
            return True

    def _watch_idle(self) -> None:
        step = max(0.05, min(1.0, (self.idle_unload_s or 1.0) / 4))
        while not self._stop.wait(step):
            if self.queue.busy:
                self.last_used = time.monotonic()
            try:
                self.unload_if_idle()
            except Exception:
                logger.debug("idle unload failed", exc_info=True)

    def close(self) -> None:
        """Stop watching for idleness (the model stays loaded)."""
        self._stop.set()

    def _notify(self, state: str, name: str) -> None:
        logger.info("model %s: %s", state, name)
        if self.on_change is not None:
            try:
                self.on_change(state, name)
            except Exception:
                logger.debug("model change listener failed", exc_info=True)
