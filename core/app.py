"""The application layer: what a face of Nibble (the window, a script, a test) acts on.

`App` holds the selected model and its settings, the loaded model and the generation
queue over it, the open chat, and the book of jobs with the one-at-a-time rule. It is
plain Python with plain callbacks (`Event`): the window's controller is a thin Qt
adapter that runs the jobs on QThreads and turns these events into typed signals.

The one-at-a-time rule is a fact about torch, not about any window: `from_pretrained`
and the meta-device builds of estimates and module names change process-global state
while they run (the default dtype), so a load, an estimate and a module scan never
run beside each other (`App.may_start`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from core.chat import Chat, Turn
from core.errors import GenerationError, NibbleError
from core.model.catalog import ModelRef
from core.settings import GenerationSettings, LoadOptions, QuantSettings
from core.store import session as session_mod

if TYPE_CHECKING:
    from core.checks import Machine
    from core.generation.constrain import Constraint
    from core.generation.decode import GenerationStats
    from core.generation.queue import GenerationQueue
    from core.generation.switch import ModelSwitcher
    from core.model.loader import LoadedModel
    from core.store.conversations import ConversationStore

logger = logging.getLogger(__name__)


class JobKind(str, Enum):
    """What a job does. At most one job of each kind runs, except RESOLVE."""

    IMPORT = "import"
    CATALOG = "catalog"
    RESOLVE = "resolve"
    MODULES = "modules"
    LOAD = "load"
    ESTIMATE = "estimate"
    LADDER = "ladder"
    ANSWER = "answer"
    COMPARE = "compare"
    DIVERGENCE = "divergence"
    EXPORT = "export"
    SAMPLER = "sampler"
    SERVER = "server"
    HUB_SEARCH = "hub search"
    HUB_PLAN = "hub plan"
    DOWNLOAD = "download"

    def __str__(self) -> str:
        return self.value


EXCLUSIVE = frozenset(
    {
        JobKind.LOAD,
        JobKind.ESTIMATE,
        JobKind.LADDER,
        JobKind.MODULES,
        JobKind.DIVERGENCE,
    }
)
"""Kinds that build a model (from_pretrained, from_config on the meta device)."""

NEEDS_NO_STACK = frozenset(
    {
        JobKind.IMPORT,
        JobKind.CATALOG,
        JobKind.RESOLVE,
        JobKind.SAMPLER,
        JobKind.SERVER,
        JobKind.HUB_SEARCH,
        JobKind.HUB_PLAN,
        JobKind.DOWNLOAD,
    }
)
"""Kinds that may start before torch, transformers and bitsandbytes are imported."""

LEFT_RUNNING_ON_CLOSE = frozenset(
    {
        JobKind.IMPORT,
        JobKind.CATALOG,
        JobKind.RESOLVE,
        JobKind.MODULES,
        JobKind.ESTIMATE,
        JobKind.LADDER,
        JobKind.LOAD,
        JobKind.DIVERGENCE,
        JobKind.HUB_SEARCH,
        JobKind.HUB_PLAN,
    }
)
"""Kinds that hold nothing that outlives the process and may take long to stop (a
library import, a meta-device build and a call to the hub cannot be interrupted; a
load stops only at its next weight): closing asks them to stop and does not wait for
them. The others stop within a step (a token, a sample, a chunk of a download, a
file of an export) and are waited for, so nothing is left half done."""


class Cancellable(Protocol):
    def cancel(self) -> None: ...


H = TypeVar("H", bound=Cancellable)


@dataclass(eq=False)
class JobEntry(Generic[H]):
    """One job in the book: its kind, the face's handle on it, whether it runs."""

    kind: JobKind
    handle: H
    started: bool = False


class Event:
    """A plain callback list: `connect(fn)`, then `emit(*args)` calls each fn."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., Any]] = []

    def connect(self, fn: Callable[..., Any]) -> None:
        self._callbacks.append(fn)

    def emit(self, *args: Any) -> None:
        for fn in list(self._callbacks):
            fn(*args)


class App:
    """Selection, settings, the loaded model, the chat and the book of jobs.

    Parameters
    ----------
    session
        What the last run left (model, settings); a fresh one by default.
    queue
        The generation queue to answer through (default: one made on first use).

    Events (plain callbacks, called on the thread that made the change):
    ``model_selected(ModelRef)``, ``settings_changed(QuantSettings, LoadOptions)``,
    ``model_changed(LoadedModel | None)`` (what the generation queue answers with),
    ``model_unloaded()``, and ``model_switched(state, name)`` when a server client
    switches the model (see `model_switcher`): "loading", then "loaded" (the App
    already follows it) or "failed"; "unloaded" after idling.
    """

    def __init__(
        self,
        session: session_mod.Session | None = None,
        queue: GenerationQueue | None = None,
    ) -> None:
        self.session = session or session_mod.Session()
        self.selected_ref: ModelRef = session_mod.ref_from_dict(self.session.model)
        self.quant: QuantSettings = self.session.quant
        self.options: LoadOptions = self.session.options
        self.loaded: LoadedModel | None = None
        self.machine: Machine | None = None
        self.module_names: list[str] = []
        self.ready = False
        self.closing = False
        self.last_stats: GenerationStats | None = None
        self.chat = Chat(None)
        self.jobs: list[JobEntry[Any]] = []
        self._queue: GenerationQueue | None = queue
        self.model_selected = Event()
        self.settings_changed = Event()
        self.model_changed = Event()
        self.model_unloaded = Event()
        self.model_switched = Event()
        self.switching: str | None = None
        """The model a server client's switch is loading now, by name."""

    # -- the generation queue, the history --

    @property
    def generation_queue(self) -> GenerationQueue:
        """The queue over the loaded model; the chat and a server submit to it
        (made on first use, which keeps core.generation out of the first paint)."""
        if self._queue is None:
            from core.generation.queue import GenerationQueue

            self._queue = GenerationQueue(self.loaded)
        return self._queue

    def open_history(self, store: ConversationStore | None = None) -> Chat:
        """Keep the chat in `store` (default: the user's history, or one in memory
        when it cannot be opened; its `notice` says so) from now on."""
        if store is None:
            from core.store.conversations import open_or_in_memory

            store = open_or_in_memory()
        self.chat.store = store
        return self.chat

    # -- selection and settings --

    @property
    def device(self) -> str:
        return self.machine.description if self.machine is not None else ""

    def select(self, ref: ModelRef) -> bool:
        """Make `ref` the selected model; True when that changed anything."""
        if ref == self.selected_ref:
            return False
        self.selected_ref = ref
        self.module_names = []
        self.model_selected.emit(ref)
        return True

    def set_settings(self, quant: QuantSettings, options: LoadOptions) -> None:
        self.quant, self.options = quant, options
        self.session.quant, self.session.options = quant, options
        self.settings_changed.emit(quant, options)

    def differs_from_loaded(self) -> bool:
        """Whether Load would load something other than what is loaded now."""
        loaded = self.loaded
        return loaded is not None and (
            loaded.ref != self.selected_ref
            or loaded.quant != self.quant
            or loaded.options != self.options
        )

    # -- the book of jobs --

    def add_job(self, kind: JobKind, handle: H) -> JobEntry[H]:
        entry = JobEntry(JobKind(kind), handle)
        self.jobs.append(entry)
        return entry

    def end_job(self, handle: object) -> bool:
        """Take `handle`'s job out of the book; False when it was not in it."""
        kept = [e for e in self.jobs if e.handle is not handle]
        ended = len(kept) != len(self.jobs)
        self.jobs = kept
        return ended

    def running(self, kind: JobKind) -> JobEntry[Any] | None:
        """The job of `kind` that runs or waits to, if any."""
        return next((e for e in self.jobs if e.kind == kind), None)

    def may_start(self, entry: JobEntry[Any]) -> bool:
        """Whether `entry` may start now: the stack is imported when it needs it,
        and no other model build runs when it is one (see the module docstring)."""
        if entry.kind not in NEEDS_NO_STACK and not self.ready:
            return False
        return entry.kind not in EXCLUSIVE or not any(
            e.kind in EXCLUSIVE and e.started and e is not entry for e in self.jobs
        )

    def load_blocker(self) -> str:
        """Why Load cannot start now, or '' when it can."""
        if self.closing:
            return "Nibble is closing."
        if self.running(JobKind.LOAD) is not None:
            return "A model is loading."
        if self.running(JobKind.ANSWER) is not None:
            return "Wait for the answer to finish (or stop it)."
        if self.switching is not None:
            return f"The server is loading {self.switching} for a client."
        return ""

    def stack_ready(self, machine: Machine) -> None:
        """The ML stack is imported; this is what the machine can run."""
        self.ready = True
        self.machine = machine

    # -- models --

    def take_loaded(self, loaded: LoadedModel) -> None:
        """Answer with `loaded` from now on; the previous model is let go."""
        from core.model import loader

        previous = self.loaded
        self.loaded = loaded
        if loaded.ref != self.selected_ref:  # what is loaded is what is selected
            self.select(loaded.ref)
        self.generation_queue.set_model(loaded)
        self.model_changed.emit(loaded)
        if previous is not None:
            loader.unload(previous)
            self.model_unloaded.emit()
        self.last_stats = None
        self.session.model = session_mod.ref_to_dict(loaded.ref)
        self.session.quant, self.session.options = loaded.quant, loaded.options

    def unload(self) -> bool:
        """Drop the loaded model (not while it answers); True when one was dropped."""
        if (
            self.loaded is None
            or self.running(JobKind.ANSWER) is not None
            or self.switching is not None
        ):
            return False
        from core.model import loader

        self.generation_queue.set_model(None)
        self.model_changed.emit(None)
        loader.unload(self.loaded)
        self.loaded = None
        self.last_stats = None
        self.model_unloaded.emit()
        return True

    # -- a server's clients switch the model --

    def model_switcher(
        self,
        directory: Callable[[], dict[str, ModelRef]] | None = None,
        idle_unload_s: float | None = None,
    ) -> ModelSwitcher:
        """A ModelSwitcher over the chat's queue that the App follows: when a server
        client names another model, it becomes the selected and loaded model here
        too (settings included), and `model_switched` tells each step.

        Parameters
        ----------
        directory
            The servable models by name (default: the default model, the recent
            folders, the Hugging Face cache).
        idle_unload_s
            Unload after this many seconds without a request (None: never).
        """
        from core.generation.switch import ModelSwitcher, servable

        def servable_here() -> dict[str, ModelRef]:
            return servable(self.session.recent_folders)

        return ModelSwitcher(
            self.generation_queue,
            directory=directory or servable_here,
            settings_for=self._settings_for,
            idle_unload_s=idle_unload_s,
            on_change=self._on_switch,
            load=self._switch_load,
            unload=self._switch_unload,
        )

    def _settings_for(self, ref: ModelRef) -> tuple[QuantSettings, LoadOptions] | None:
        """The settings a bare model name means here: the loaded model's, else the
        panel's for the selected model (else the switcher's nf4)."""
        loaded = self.loaded
        if loaded is not None and loaded.ref == ref:
            return loaded.quant, loaded.options
        if ref == self.selected_ref:
            return self.quant, self.options
        return None

    def _switch_load(
        self, ref: ModelRef, quant: QuantSettings, options: LoadOptions
    ) -> LoadedModel:
        from core.model import loader

        loaded = loader.load(ref, quant, options)
        # What the window loaded while the switch waited gives way to it.
        stale, self.loaded = self.loaded, loaded
        self.selected_ref = loaded.ref
        self.module_names = []
        self.quant, self.options = loaded.quant, loaded.options
        self.session.model = session_mod.ref_to_dict(loaded.ref)
        self.session.quant, self.session.options = loaded.quant, loaded.options
        self.last_stats = None
        if stale is not None and stale is not loaded:
            loader.unload(stale)
        return loaded

    def _switch_unload(self, loaded: LoadedModel) -> None:
        from core.model import loader

        if self.loaded is loaded:
            self.loaded = None
        loader.unload(loaded)

    def _on_switch(self, state: str, name: str) -> None:
        self.switching = name if state == "loading" else None
        self.model_switched.emit(state, name)

    # -- answers --

    def ask(
        self,
        question: str,
        settings: GenerationSettings,
        *,
        raw: bool = False,
        system: str | None = None,
        constraint: Constraint | None = None,
    ) -> Turn:
        """Store `question` in the open chat and queue its answer; the Turn carries
        it (iterate `turn.follow()` for the chunks, then `end_answer`). With a
        `constraint` the answer is held to it (JSON, a JSON schema) while it is
        decoded, and its provenance records it.

        Raises
        ------
        GenerationError
            No model is loaded, an answer is already on its way, the queue is full.
        """
        self._check_can_answer()
        turn = self.chat.ask(
            question,
            settings,
            raw=raw,
            system=system,
            loaded=self.loaded,
            constraint=constraint,
        )
        self._submit(turn)
        return turn

    def ask_again(
        self,
        settings: GenerationSettings,
        *,
        raw: bool = False,
        answer_id: int | None = None,
        constraint: Constraint | None = None,
    ) -> Turn | None:
        """Answer the last question (or answer `answer_id`'s) again, as a variant."""
        self._check_can_answer()
        turn = self.chat.again(
            settings,
            raw=raw,
            loaded=self.loaded,
            answer_id=answer_id,
            constraint=constraint,
        )
        if turn is not None:
            self._submit(turn)
        return turn

    def _check_can_answer(self) -> None:
        if self.closing:
            raise GenerationError("Nibble is closing", "")
        if self.loaded is None:
            raise GenerationError("no model is loaded", "load a model first")
        if self.chat.busy:
            raise GenerationError(
                "an answer is already on its way", "wait for it or stop it"
            )

    def _submit(self, turn: Turn) -> None:
        from core.generation.queue import GenerationRequest

        request = GenerationRequest(
            turn.prompt,
            turn.settings,
            raw=turn.raw,
            source="chat",
            constraint=turn.constraint,
        )
        try:
            turn.job = self.generation_queue.submit(request)
        except NibbleError:
            self._close_turn(turn)
            raise

    def _close_turn(self, turn: Turn) -> None:
        """The answer never started: the question still gets its (empty) answer."""
        from core.generation.decode import STOP_ERROR, GenerationStats

        try:
            turn.finish(GenerationStats(stop_reason=STOP_ERROR))
        except NibbleError:
            logger.warning("could not keep the empty answer", exc_info=True)

    def stop_answer(self) -> None:
        """Stop the chat's answer: one waiting for the model leaves the queue at once,
        one being written ends within a token (its text is kept, "stopped")."""
        turn = self.chat.turn
        if turn is not None and turn.job is not None:
            self.generation_queue.cancel(turn.job)

    def end_answer(self, turn: Turn, stats: GenerationStats | None) -> None:
        """The answer's generator ended: store it (stopped when `stats` is None).

        Raises
        ------
        NibbleError
            The history could not keep it (the answer was shown all the same).
        """
        if stats is not None:
            self.last_stats = stats
        turn.finish(stats)

    def waiting_line(self, turn: Turn) -> str:
        """What the answer waits for, e.g. 'Waiting behind 1 server request (120
        tokens so far)…', or '' once it runs (or joined the running batch)."""
        job = turn.job
        queue = self._queue
        if job is None or queue is None or turn.chunks or queue.position(job) <= 0:
            return ""
        jobs = queue.jobs()
        ahead = jobs[: jobs.index(job)] if job in jobs else []
        if not ahead:
            return "Waiting for the comparison…" if queue.paused else ""
        servers = sum(1 for j in ahead if j.request.source == "server")
        what = "server request" if servers == len(ahead) else "request"
        plural = "s" if len(ahead) > 1 else ""
        line = f"Waiting behind {len(ahead)} {what}{plural}"
        running = [j for j in ahead if j in queue.running_jobs]
        if running:
            line += f" ({sum(j.tokens for j in running):,} tokens so far)"
        return line + "…"

    # -- closing --

    def close(self) -> None:
        """Stop answering: the chat's answer is kept as far as it got, "stopped";
        every queued request is cancelled. Jobs are the face's to stop."""
        self.closing = True
        turn = self.chat.turn
        if turn is not None and not turn.done:
            try:
                turn.stop()
            except NibbleError:
                logger.warning("could not keep the stopped answer", exc_info=True)
        if self._queue is not None:
            self._queue.cancel_all()

    def let_go(self, queue_timeout_s: float) -> bool:
        """End the queue's thread and drop the model without collecting garbage
        (the process is about to end); False when the queue outlived the timeout."""
        started = time.monotonic()
        queue = self._queue
        ok = True
        if queue is not None:
            ok = queue.close(max(0.0, queue_timeout_s - (time.monotonic() - started)))
            if ok:
                queue.set_model(None)
        if ok:
            self.loaded = None
        return ok
