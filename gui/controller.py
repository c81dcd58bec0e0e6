"""The window's state and every job it runs, in one typed QObject.

The controller owns the selected model, the settings, the loaded model (and its
report), the core's GenerationQueue over that model, and every job: the stack import,
the catalog scan, checking a folder or hub id, loads, answers, estimates,
comparisons, exports and memory sampling. Views call its methods and follow its
signals; none of them starts a thread of its own. `stop_all(timeout_s)` cancels every
job and waits for all of them against one deadline.

Jobs that need torch / transformers / bitsandbytes wait until `core.stack`'s
`import_stack()` has finished on a worker (the first such job starts that import),
so no estimate or load ever races the import or another job's first import.

Signals, all emitted on the UI thread:

- ``model_selected(ModelRef)``: a model was picked (not loaded yet).
- ``settings_changed(object)``: valid ``(QuantSettings, LoadOptions)``.
- ``libraries_ready(str)`` / ``libraries_failed(object)``: the stack import ended.
- ``catalog_scanned(object, object)``: the default ModelRef and the HF cache refs.
- ``modules_found(object)``: the selected model's module names (for the checks).
- ``resolve_started(str)``, ``resolve_failed(object)``: checking a folder or hub id.
- ``load_started(object, object)``: a load of (ModelRef, QuantSettings) began;
  ``load_progressed(int, int, str)`` follows its steps.
- ``model_loaded(LoadedModel)``, ``load_failed(object)``, ``load_cancelled()``.
- ``model_unloaded()``: the previous model was dropped.
- ``model_changed(object)``: the LoadedModel the generation queue now answers with,
  or None (for anything else that submits to `generation_queue`, e.g. a server).
- ``answer_started()``, ``first_token()``, ``answer_chunk(str)``,
  ``answer_finished(GenerationStats)`` (stopped answers too),
  ``answer_failed(object, object)`` (error, stats of the partial run),
  ``answer_aborted()``.
- ``compare_started()`` / ``compare_ended()``: the chat's queue is paused between.
- ``jobs_changed()``: a job started or ended (views re-check what they enable).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal

from core.checks import Machine
from core.errors import CancelledError, NibbleError
from core.model.catalog import ModelRef
from core.settings import GenerationSettings, LoadOptions, QuantSettings
from core.store import session as session_mod
from gui import workers

if TYPE_CHECKING:
    from core.generation.queue import GenerationQueue

logger = logging.getLogger(__name__)

CLOSE_DEADLINE_S = 2.0
GIL_MARGIN_S = 0.15

# Kinds of job; at most one of each runs, except "resolve".
IMPORT, CATALOG, RESOLVE, LOAD, ANSWER = (
    "import",
    "catalog",
    "resolve",
    "load",
    "answer",
)
ESTIMATE, COMPARE, EXPORT, SAMPLER = "estimate", "compare", "export", "sampler"
MODULES = "modules"
EXCLUSIVE = (LOAD, ESTIMATE, MODULES)


class Controller(QObject):
    """Selection, settings, the loaded model and every job of the window."""

    model_selected = Signal(object)
    settings_changed = Signal(object)
    libraries_ready = Signal(str)
    libraries_failed = Signal(object)
    catalog_scanned = Signal(object, object)
    modules_found = Signal(object)
    resolve_started = Signal(str)
    resolve_failed = Signal(object)
    load_started = Signal(object, object)
    load_progressed = Signal(int, int, str)
    model_loaded = Signal(object)
    load_failed = Signal(object)
    load_cancelled = Signal()
    model_unloaded = Signal()
    model_changed = Signal(object)
    answer_started = Signal()
    first_token = Signal()
    answer_chunk = Signal(str)
    answer_finished = Signal(object)
    answer_failed = Signal(object, object)
    answer_aborted = Signal()
    compare_started = Signal()
    compare_ended = Signal()
    jobs_changed = Signal()

    def __init__(
        self, session: session_mod.Session | None = None, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.session = session or session_mod.Session()
        self.selected_ref: ModelRef = session_mod.ref_from_dict(self.session.model)
        self.quant: QuantSettings = self.session.quant
        self.options: LoadOptions = self.session.options
        self.loaded: Any = None
        self.device = ""
        self.machine: Machine | None = None
        self.module_names: list[str] = []
        self.ready = False
        self.closing = False
        self._queue: GenerationQueue | None = None
        self.last_stats: Any = None
        self._answer_chunks = 0
        self._jobs: list[tuple[str, workers.Worker]] = []  # not done yet
        self._live: list[workers.Worker] = []  # whose thread has not finished
        self._waiting: list[tuple[str, workers.Worker, bool]] = []

    @property
    def generation_queue(self) -> GenerationQueue:
        """The core's queue over the loaded model; the chat and a server submit to it
        (created on first use, keeping core.generation.decode out of the first paint)."""
        if self._queue is None:
            from core.generation.queue import GenerationQueue

            self._queue = GenerationQueue(self.loaded)
        return self._queue

    # -- selection and settings --

    @property
    def report(self) -> Any:
        """The LoadReport of the loaded model, or None."""
        return self.loaded.report if self.loaded is not None else None

    def select(self, ref: ModelRef) -> None:
        """Make `ref` the selected model (emits model_selected when it changes)."""
        if ref == self.selected_ref:
            return
        self.selected_ref = ref
        self.module_names = []
        self.model_selected.emit(ref)
        self.find_modules()

    def find_modules(self) -> None:
        """Read the selected model's module names (meta-device build) on a worker."""
        ref = self.selected_ref
        worker = self.run(MODULES, lambda _p, _c: (ref, _module_names(ref)))
        worker.returned.connect(self._on_modules)

    def _on_modules(self, result: tuple[ModelRef, list[str]]) -> None:
        ref, names = result
        if ref != self.selected_ref:  # the user picked another model meanwhile
            return
        self.module_names = names
        self.modules_found.emit(names)

    def set_settings(self, quant: QuantSettings, options: LoadOptions) -> None:
        self.quant, self.options = quant, options
        self.session.quant, self.session.options = quant, options
        self.settings_changed.emit((quant, options))

    def differs_from_loaded(self) -> bool:
        """Whether Load would load something other than what is loaded now."""
        loaded = self.loaded
        return loaded is not None and (
            loaded.ref != self.selected_ref
            or loaded.quant != self.quant
            or loaded.options != self.options
        )

    # -- jobs in general --

    def running(self, kind: str) -> workers.Worker | None:
        """The job of `kind` that runs or waits for the stack, if any."""
        for k, worker in self._jobs:
            if k == kind:
                return worker
        return None

    def jobs(self) -> list[tuple[str, workers.Worker]]:
        """Every job that has not finished, as (kind, worker)."""
        return list(self._jobs)

    def start(
        self, kind: str, worker: workers.Worker, needs_stack: bool = True
    ) -> workers.Worker:
        """Track `worker` and run it from the next event-loop turn.

        The caller connects to the worker's signals before it runs. A job that needs
        the ML stack waits for `import_libraries()`, which the window starts after
        its first paint (and which loads, comparisons and exports start themselves).
        """
        self._jobs.append((kind, worker))
        self._live.append(worker)
        # Bound methods of this (UI-thread) object, never lambdas: a lambda would
        # run on the worker's thread.
        worker.finished.connect(self._on_job_finished)
        self._waiting.append((kind, worker, needs_stack))
        QTimer.singleShot(0, self, self._launch_waiting)
        self.jobs_changed.emit()
        return worker

    def _launch_waiting(self) -> None:
        still: list[tuple[str, workers.Worker, bool]] = []
        for kind, worker, needs_stack in self._waiting:
            if (needs_stack and not self.ready) or self._must_wait(kind):
                still.append((kind, worker, needs_stack))
            else:
                workers.start(worker)
        self._waiting = still

    def _must_wait(self, kind: str) -> bool:
        # from_pretrained and from_config change process-global state while they
        # run (the default dtype): a load and the meta-device builds of estimates
        # and module names run one at a time, never beside each other.
        return kind in EXCLUSIVE and any(
            k in EXCLUSIVE and w.thread_ is not None for k, w in self._jobs
        )

    def run(
        self,
        kind: str,
        fn: Callable[[workers.Progress, threading.Event], Any],
        needs_stack: bool = True,
    ) -> workers.FunctionWorker:
        """Run `fn(progress, cancel)` as a job; connect to the returned worker."""
        worker = workers.FunctionWorker(fn, kind)
        self.start(kind, worker, needs_stack)
        return worker

    def _on_job_finished(self) -> None:
        worker = self.sender()
        if isinstance(worker, workers.Worker):
            self._live = [w for w in self._live if w is not worker]
            self._ended(worker)

    def _done(self) -> None:
        """Called first by a result slot: the job is over before its result is
        announced, so whoever reacts may start the next one (ask after a load)."""
        worker = self.sender()
        if isinstance(worker, workers.Worker):
            self._ended(worker)

    def _ended(self, worker: workers.Worker) -> None:
        if not any(w is worker for _, w in self._jobs):
            return
        self._jobs = [(k, w) for k, w in self._jobs if w is not worker]
        if self._waiting and not self.closing:
            self._launch_waiting()
        self.jobs_changed.emit()

    def stop_all(self, timeout_s: float = CLOSE_DEADLINE_S) -> bool:
        """Cancel every job and wait for all of them, `timeout_s` in total.

        True when every thread ended in time; the loaded model is then let go.
        """
        self.closing = True
        # A thread that ends at the deadline needs a moment to hand back the GIL.
        deadline = time.monotonic() + max(0.0, timeout_s - GIL_MARGIN_S)
        waiting, self._waiting = self._waiting, []
        for _kind, worker, _ in waiting:  # never started: end them here
            worker.cancel()
            worker.aborted.emit()
            worker.finished.emit()
        pending = list(self._live)
        for worker in pending:
            worker.cancel()
        queue = self._queue
        if queue is not None:
            queue.cancel_all()
        ok = True
        for worker in pending:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not workers.wait(worker, left_ms):
                logger.warning("%s did not stop in time", worker.objectName() or worker)
                ok = False
        if queue is not None:
            ok = queue.close(max(0.0, deadline - time.monotonic())) and ok
        if ok:
            # Drop the model without loader.unload's garbage collection (half a
            # second with torch): the process is about to end.
            if queue is not None:
                queue.set_model(None)
            self.loaded = None
        return ok

    # -- start-up --

    def import_libraries(self) -> None:
        """Import the ML stack on a worker (once); jobs that need it wait for it."""
        if self.ready or self.running(IMPORT) is not None or self.closing:
            return
        worker = self.run(IMPORT, _import_stack, needs_stack=False)
        worker.returned.connect(self._on_libraries)
        worker.errored.connect(self.libraries_failed)

    def scan_catalog(self) -> None:
        """Scan the HF cache and check the embedded default, off the UI thread."""
        if self.running(CATALOG) is not None:
            return
        worker = self.run(CATALOG, _scan_catalog, needs_stack=False)
        worker.returned.connect(self._on_catalog)
        worker.errored.connect(self._on_catalog_failed)

    def _on_catalog(self, result: tuple[Any, list[Any]]) -> None:
        self.catalog_scanned.emit(*result)

    def _on_catalog_failed(self, exc: Exception) -> None:
        logger.warning("could not scan the model cache: %s", exc)
        self.catalog_scanned.emit(None, [])

    def _on_libraries(self, machine: Machine) -> None:
        self.ready = True
        self.machine = machine
        self.device = machine.description
        self._launch_waiting()
        self.libraries_ready.emit(machine.description)
        if not self.module_names and self.running(MODULES) is None:
            self.find_modules()  # the model selected at start was never select()ed

    # -- models --

    def open_location(self, text: str) -> workers.FunctionWorker:
        """Check a folder or hub id off the UI thread, then select and load it."""
        worker = self.run(RESOLVE, lambda _p, _c: _resolve(text), needs_stack=False)
        worker.returned.connect(self._on_resolved)
        worker.errored.connect(self.resolve_failed)
        self.resolve_started.emit(text)
        return worker

    def _on_resolved(self, ref: ModelRef) -> None:
        if ref.kind == "folder" and ref.path is not None:
            self.session.add_recent(ref.path)
        self.select(ref)
        self.load(ref)

    def add_recent(self, folder: str) -> None:
        self.session.add_recent(folder)

    def load_blocker(self) -> str:
        """Why Load cannot start now, or '' when it can."""
        if self.closing:
            return "Nibble is closing."
        if self.running(LOAD) is not None:
            return "A model is loading."
        if self.running(ANSWER) is not None:
            return "Wait for the answer to finish (or stop it)."
        return ""

    def load(self, ref: ModelRef | None = None) -> workers.FunctionWorker | None:
        """Load `ref` (default: the selected model) with the current settings."""
        if self.load_blocker():
            return None
        ref = ref or self.selected_ref
        quant, options = self.quant, self.options
        worker = self.run(
            LOAD, lambda progress, cancel: _load(ref, quant, options, progress, cancel)
        )
        worker.progressed.connect(self.load_progressed)
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(self.load_failed)
        worker.aborted.connect(self.load_cancelled)
        self.load_started.emit(ref, quant)
        self.import_libraries()
        return worker

    def cancel_load(self) -> None:
        worker = self.running(LOAD)
        if worker is not None:
            worker.cancel()

    def _on_loaded(self, loaded: Any) -> None:
        self._done()
        if self.closing:
            from core.model import loader

            loader.unload(loaded)
            return
        previous = self.loaded
        self.loaded = loaded
        if loaded.ref != self.selected_ref:  # what is loaded is what is selected
            self.select(loaded.ref)
        self.generation_queue.set_model(loaded)
        self.model_changed.emit(loaded)
        if previous is not None:
            from core.model import loader

            loader.unload(previous)
            self.model_unloaded.emit()
        self.last_stats = None
        self.session.model = session_mod.ref_to_dict(loaded.ref)
        self.session.quant, self.session.options = loaded.quant, loaded.options
        self.model_loaded.emit(loaded)

    def unload(self) -> bool:
        """Drop the loaded model (not while it answers); True when one was dropped."""
        if self.loaded is None or self.running(ANSWER) is not None:
            return False
        from core.model import loader

        self.generation_queue.set_model(None)
        self.model_changed.emit(None)
        loader.unload(self.loaded)
        self.loaded = None
        self.last_stats = None
        self.model_unloaded.emit()
        return True

    # -- answers --

    def send(
        self, messages: Any, raw: bool, settings: GenerationSettings
    ) -> workers.JobWorker | None:
        """Queue an answer to `messages` (or a raw prompt) and stream it."""
        if self.loaded is None or self.running(ANSWER) is not None or self.closing:
            return None
        from core.generation.queue import GenerationRequest

        request = GenerationRequest(messages, settings, raw=raw, source="chat")
        job = self.generation_queue.submit(request)
        worker = workers.JobWorker(job)
        self._answer_chunks = 0
        worker.yielded.connect(self._on_answer_chunk)
        worker.returned.connect(self._on_answer)
        worker.errored.connect(self._on_answer_error)
        worker.aborted.connect(self._on_answer_aborted)
        self.start(ANSWER, worker)
        self.answer_started.emit()
        return worker

    def stop_answer(self) -> None:
        worker = self.running(ANSWER)
        if isinstance(worker, workers.JobWorker):
            worker.stop()

    def _on_answer_chunk(self, chunk: str) -> None:
        self._answer_chunks += 1
        if self._answer_chunks == 1:
            self.first_token.emit()
        self.answer_chunk.emit(chunk)

    def _on_answer(self, stats: Any) -> None:
        self._done()
        self.last_stats = stats
        self.answer_finished.emit(stats)

    def _on_answer_error(self, exc: Exception) -> None:
        self._done()
        worker = self.sender()
        self.answer_failed.emit(exc, getattr(worker, "stats", None))

    def _on_answer_aborted(self) -> None:
        self._done()
        self.answer_aborted.emit()

    # -- estimates, comparisons, exports, sampling --

    def estimate(
        self, model: Any, quant: Any, options: Any, context: int, device: Any = None
    ) -> workers.FunctionWorker:
        """Estimate every preset for `model`; the worker returns a core Table."""

        def work(_progress: workers.Progress, _cancel: threading.Event) -> Any:
            from core.model import estimate

            return estimate.table(model, quant, options, context, device=device)

        return self.run(ESTIMATE, work)

    def compare(self, ref: ModelRef, rows: Any, config: Any) -> workers.CompareWorker:
        """Run a comparison; the chat's answers wait (paused queue) until it ends."""
        worker = workers.CompareWorker(ref, rows, config)
        worker.started.connect(self._pause_answers)
        worker.finished.connect(self._resume_answers)
        self.start(COMPARE, worker)
        self.import_libraries()
        return worker

    def _pause_answers(self) -> None:
        self.generation_queue.pause()
        self.compare_started.emit()

    def _resume_answers(self) -> None:
        self.generation_queue.resume()
        self.compare_ended.emit()

    @property
    def comparing(self) -> bool:
        return self.running(COMPARE) is not None

    def export(
        self, ref: Any, quant: Any, options: Any, out: str, force: bool = False
    ) -> workers.FunctionWorker:
        """Save a quantized copy of `ref` (a fresh load; core.lab.export)."""

        def work(progress: workers.Progress, cancel: threading.Event) -> Any:
            from core.lab import export

            return export.export(
                ref, quant, out, options, force=force, progress=progress, cancel=cancel
            )

        worker = self.run(EXPORT, work)
        self.import_libraries()
        return worker

    def sample(self, sampler: Any, interval: float) -> workers.SamplerWorker:
        """Take memory samples every `interval` seconds until stopped."""
        worker = workers.SamplerWorker(sampler, interval)
        worker.name = SAMPLER
        self.start(SAMPLER, worker, needs_stack=False)
        return worker


# -- what the jobs run, on their threads --


def _import_stack(_progress: workers.Progress, _cancel: threading.Event) -> Machine:
    """Import the stack once (core.stack); what this machine can run."""
    from core import checks, stack

    stack.import_stack()  # quiets the libraries before bitsandbytes logs on import
    return checks.probe_machine()


def _module_names(ref: ModelRef) -> list[str]:
    from core.model import facts

    return facts.module_names(ref)


def _scan_catalog(
    _progress: workers.Progress, _cancel: threading.Event
) -> tuple[Any, list[Any]]:
    from core.model import catalog

    return catalog.default_ref(), catalog.scan_cache()


def _resolve(text: str) -> ModelRef:
    from core.model import catalog

    return catalog.resolve(text)


def _load(
    ref: ModelRef,
    quant: QuantSettings,
    options: LoadOptions,
    progress: workers.Progress,
    cancel: threading.Event,
) -> Any:
    from core.model import loader

    loaded = loader.load(ref, quant, options, progress=progress, cancel=cancel)
    if cancel.is_set():  # finished just as the user cancelled: drop it
        loader.unload(loaded)
        raise CancelledError("load cancelled")
    return loaded


__all__ = ["CLOSE_DEADLINE_S", "Controller", "NibbleError"]
