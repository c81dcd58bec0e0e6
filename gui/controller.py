"""The Qt adapter over `core.app.App`: jobs on QThreads, typed signals for the views.

The App (plain Python) holds the selection, the settings, the loaded model, the chat
and the book of jobs with its one-at-a-time rule. The controller runs each job as a
worker of `gui.workers` when the App says it may start, and re-emits what happens as
typed signals on the UI thread. Views call its methods and follow its signals; none of
them starts a thread of its own (the Server tab and the Get a model dialog included).
`stop_all(timeout_s)` cancels every job and waits for them against one deadline.

Jobs that need torch / transformers / bitsandbytes wait until `core.stack`'s
`import_stack()` has finished on a worker (the first such job starts that import),
so no estimate or load ever races the import or another job's first import.

Signals, all emitted on the UI thread:

- ``model_selected(ModelRef)``: a model was picked (not loaded yet).
- ``settings_changed(QuantSettings, LoadOptions)``: valid settings.
- ``libraries_ready(str)`` / ``libraries_failed(Exception)``: the stack import ended.
- ``catalog_scanned(ModelRef | None, list)``: the default model and the HF cache refs.
- ``modules_found(list)``: the selected model's module names (for the checks).
- ``resolve_started(str)``, ``resolve_failed(Exception)``: checking a folder or hub id.
- ``load_started(ModelRef, QuantSettings)``: a load began;
  ``load_progressed(int, int, str)`` follows its steps.
- ``model_loaded(LoadedModel)``, ``load_failed(Exception)``, ``load_cancelled()``.
- ``model_unloaded()``: the previous model was dropped.
- ``model_changed(LoadedModel | None)``: what the generation queue now answers with
  (for anything else that submits to `generation_queue`, e.g. a server).
- ``answer_started(Turn)``, ``first_token()``, ``answer_chunk(str)``,
  ``answer_finished(Turn)`` (stopped answers too; `turn.stats`, `turn.answer`),
  ``answer_failed(Turn, Exception)``, ``answer_aborted(Turn)``.
- ``chat_error(Exception, str)``: the history could not keep something (error, title).
- ``model_switched(str, str)``: a server client switches the model (state, name):
  "loading", then "loaded" (after model_selected, settings_changed, model_changed
  and model_loaded for the new model) or "failed"; "unloaded" after idling.
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

from core.app import LEFT_RUNNING_ON_CLOSE, App, JobEntry, JobKind
from core.chat import Chat, Turn
from core.checks import Machine
from core.errors import CancelledError, NibbleError
from core.generation.decode import GenerationStats
from core.model.catalog import ModelRef
from core.model.loader import LoadedModel, LoadReport
from core.settings import GenerationSettings, LoadOptions, QuantSettings
from core.store import session as session_mod
from gui import workers

if TYPE_CHECKING:
    from core.generation.constrain import Constraint
    from core.generation.queue import GenerationQueue
    from core.lab.compare import CompareConfig, RowSpec
    from core.model.estimate import Table

logger = logging.getLogger(__name__)

CLOSE_DEADLINE_S = 2.0
GIL_MARGIN_S = 0.15


class Controller(QObject):
    """Selection, settings, the loaded model and every job of the window."""

    model_selected = Signal(ModelRef)
    settings_changed = Signal(QuantSettings, LoadOptions)
    libraries_ready = Signal(str)
    libraries_failed = Signal(Exception)
    catalog_scanned = Signal(ModelRef, list)
    modules_found = Signal(list)
    resolve_started = Signal(str)
    resolve_failed = Signal(Exception)
    load_started = Signal(ModelRef, QuantSettings)
    load_progressed = Signal(int, int, str)
    model_loaded = Signal(LoadedModel)
    load_failed = Signal(Exception)
    load_cancelled = Signal()
    model_unloaded = Signal()
    model_changed = Signal(LoadedModel)
    answer_started = Signal(Turn)
    first_token = Signal()
    answer_chunk = Signal(str)
    answer_finished = Signal(Turn)
    answer_failed = Signal(Turn, Exception)
    answer_aborted = Signal(Turn)
    chat_error = Signal(Exception, str)
    compare_started = Signal()
    compare_ended = Signal()
    jobs_changed = Signal()
    model_switched = Signal(str, str)
    _switch_reported = Signal(str, str)  # from the server's thread

    def __init__(
        self,
        session: session_mod.Session | None = None,
        parent: QObject | None = None,
        queue: GenerationQueue | None = None,
    ) -> None:
        super().__init__(parent)
        self.app = App(session, queue)
        self.app.model_selected.connect(self.model_selected.emit)
        self.app.settings_changed.connect(self.settings_changed.emit)
        self.app.model_changed.connect(self.model_changed.emit)
        self.app.model_unloaded.connect(self.model_unloaded.emit)
        # A switch runs on a server thread: its steps reach the views from here.
        self._switch_reported.connect(self._on_switch_reported)
        self.app.model_switched.connect(self._switch_reported.emit)
        self.turn: Turn | None = None  # the chat's answer being followed
        self.first_token_at: float | None = None
        self._live: list[workers.Worker] = []  # whose thread has not finished
        self._waiting: list[JobEntry[workers.Worker]] = []

    # -- the App's state, as the views read it --

    @property
    def session(self) -> session_mod.Session:
        return self.app.session

    @property
    def selected_ref(self) -> ModelRef:
        return self.app.selected_ref

    @property
    def quant(self) -> QuantSettings:
        return self.app.quant

    @quant.setter
    def quant(self, value: QuantSettings) -> None:
        self.app.quant = value

    @property
    def options(self) -> LoadOptions:
        return self.app.options

    @options.setter
    def options(self, value: LoadOptions) -> None:
        self.app.options = value

    @property
    def loaded(self) -> LoadedModel | None:
        return self.app.loaded

    @property
    def report(self) -> LoadReport | None:
        """The LoadReport of the loaded model, or None."""
        return self.app.loaded.report if self.app.loaded is not None else None

    @property
    def last_stats(self) -> GenerationStats | None:
        return self.app.last_stats

    @property
    def machine(self) -> Machine | None:
        return self.app.machine

    @property
    def device(self) -> str:
        return self.app.device

    @property
    def module_names(self) -> list[str]:
        return self.app.module_names

    @property
    def ready(self) -> bool:
        return self.app.ready

    @property
    def closing(self) -> bool:
        return self.app.closing

    @property
    def chat(self) -> Chat:
        return self.app.chat

    @property
    def generation_queue(self) -> GenerationQueue:
        """The core's queue over the loaded model; the chat and a server submit to it."""
        return self.app.generation_queue

    # -- selection and settings --

    def select(self, ref: ModelRef) -> None:
        """Make `ref` the selected model (emits model_selected when it changes)."""
        if self.app.select(ref):
            self.find_modules()

    def find_modules(self) -> None:
        """Read the selected model's module names (meta-device build) on a worker."""
        ref = self.selected_ref
        worker = self.run(JobKind.MODULES, lambda _p, _c: (ref, _module_names(ref)))
        worker.returned.connect(self._on_modules)

    def _on_modules(self, result: tuple[ModelRef, list[str]]) -> None:
        ref, names = result
        if ref != self.selected_ref:  # the user picked another model meanwhile
            return
        self.app.module_names = names
        self.modules_found.emit(names)

    def set_settings(self, quant: QuantSettings, options: LoadOptions) -> None:
        self.app.set_settings(quant, options)

    def differs_from_loaded(self) -> bool:
        """Whether Load would load something other than what is loaded now."""
        return self.app.differs_from_loaded()

    # -- jobs in general --

    def running(self, kind: JobKind | str) -> workers.Worker | None:
        """The worker of the `kind` job that runs or waits to, if any."""
        entry = self.app.running(JobKind(kind))
        return entry.handle if entry is not None else None

    def jobs(self) -> list[tuple[JobKind, workers.Worker]]:
        """Every job that has not finished, as (kind, worker)."""
        return [(e.kind, e.handle) for e in self.app.jobs]

    def start(self, kind: JobKind | str, worker: workers.Worker) -> workers.Worker:
        """Track `worker` and run it once the App's rules let it (the stack imported
        when the kind needs it, one model build at a time), from the next event-loop
        turn at the earliest. The caller connects to its signals before that."""
        entry = self.app.add_job(JobKind(kind), worker)
        self._live.append(worker)
        # Bound methods of this (UI-thread) object, never lambdas: a lambda would
        # run on the worker's thread.
        worker.finished.connect(self._on_job_finished)
        self._waiting.append(entry)
        QTimer.singleShot(0, self, self._launch_waiting)
        self.jobs_changed.emit()
        return worker

    def _launch_waiting(self) -> None:
        if self.closing:
            return
        still: list[JobEntry[workers.Worker]] = []
        for entry in self._waiting:
            if self.app.may_start(entry):
                entry.started = True
                workers.start(entry.handle)
            else:
                still.append(entry)
        self._waiting = still

    def run(
        self,
        kind: JobKind | str,
        fn: Callable[[workers.Progress, threading.Event], Any],
    ) -> workers.FunctionWorker:
        """Run `fn(progress, cancel)` as a job; connect to the returned worker."""
        worker = workers.FunctionWorker(fn, str(kind))
        self.start(kind, worker)
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
        if not self.app.end_job(worker):
            return
        if self._waiting and not self.closing:
            self._launch_waiting()
        self.jobs_changed.emit()

    def stop_all(
        self,
        timeout_s: float = CLOSE_DEADLINE_S,
        leave_running: frozenset[JobKind] = frozenset(),
    ) -> bool:
        """Cancel every job and wait for them, `timeout_s` in total.

        The chat's answer is kept as far as it got, marked "stopped". Jobs of the
        kinds in `leave_running` are asked to stop but not waited for (closing
        leaves the uninterruptible ones to the process's end). True when every
        awaited thread ended in time; the loaded model is then let go.
        """
        self.app.close()
        # A thread that ends at the deadline needs a moment to hand back the GIL.
        deadline = time.monotonic() + max(0.0, timeout_s - GIL_MARGIN_S)
        waiting, self._waiting = self._waiting, []
        for entry in waiting:  # never started: end them here
            entry.handle.cancel()
            entry.handle.aborted.emit()
            entry.handle.finished.emit()
        kinds = {id(e.handle): e.kind for e in self.app.jobs}
        pending = list(self._live)
        for worker in pending:
            worker.cancel()
        ok = True
        for worker in pending:
            if kinds.get(id(worker)) in leave_running:
                continue
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not workers.wait(worker, left_ms):
                logger.warning("%s did not stop in time", worker.objectName() or worker)
                ok = False
        # Drop the model without loader.unload's garbage collection (half a
        # second with torch): the process is about to end.
        return self.app.let_go(max(0.0, deadline - time.monotonic())) and ok

    def close_quickly(self, timeout_s: float = CLOSE_DEADLINE_S) -> bool:
        """What closing the window needs: stop everything, and wait (`timeout_s` in
        all) only for the jobs that stop within a step; an import, a load, a
        meta-device build or a hub call in progress ends with the process."""
        return self.stop_all(timeout_s, leave_running=LEFT_RUNNING_ON_CLOSE)

    # -- start-up --

    def import_libraries(self) -> None:
        """Import the ML stack on a worker (once); jobs that need it wait for it."""
        if self.ready or self.running(JobKind.IMPORT) is not None or self.closing:
            return
        worker = self.run(JobKind.IMPORT, _import_stack)
        worker.returned.connect(self._on_libraries)
        worker.errored.connect(self.libraries_failed)

    def scan_catalog(self) -> None:
        """Scan the HF cache and check the embedded default, off the UI thread."""
        if self.running(JobKind.CATALOG) is not None:
            return
        worker = self.run(JobKind.CATALOG, _scan_catalog)
        worker.returned.connect(self._on_catalog)
        worker.errored.connect(self._on_catalog_failed)

    def _on_catalog(self, result: tuple[ModelRef | None, list[ModelRef]]) -> None:
        self.catalog_scanned.emit(*result)

    def _on_catalog_failed(self, exc: Exception) -> None:
        logger.warning("could not scan the model cache: %s", exc)
        self.catalog_scanned.emit(None, [])

    def _on_libraries(self, machine: Machine) -> None:
        self.app.stack_ready(machine)
        self._launch_waiting()
        self.libraries_ready.emit(machine.description)
        if not self.module_names and self.running(JobKind.MODULES) is None:
            self.find_modules()  # the model selected at start was never select()ed

    # -- models --

    def open_location(self, text: str) -> workers.FunctionWorker:
        """Check a folder or hub id off the UI thread, then select and load it."""
        worker = self.run(JobKind.RESOLVE, lambda _p, _c: _resolve(text))
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
        return self.app.load_blocker()

    def load(self, ref: ModelRef | None = None) -> workers.FunctionWorker | None:
        """Load `ref` (default: the selected model) with the current settings."""
        if self.load_blocker():
            return None
        ref = ref or self.selected_ref
        quant, options = self.quant, self.options
        worker = self.run(
            JobKind.LOAD,
            lambda progress, cancel: _load(ref, quant, options, progress, cancel),
        )
        worker.progressed.connect(self.load_progressed)
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(self.load_failed)
        worker.aborted.connect(self.load_cancelled)
        self.load_started.emit(ref, quant)
        self.import_libraries()
        return worker

    def cancel_load(self) -> None:
        worker = self.running(JobKind.LOAD)
        if worker is not None:
            worker.cancel()

    def _on_loaded(self, loaded: LoadedModel) -> None:
        self._done()
        if self.closing:
            from core.model import loader

            loader.unload(loaded)
            return
        self.app.take_loaded(loaded)
        self.model_loaded.emit(loaded)

    def unload(self) -> bool:
        """Drop the loaded model (not while it answers); True when one was dropped."""
        return self.app.unload()

    def _on_switch_reported(self, state: str, name: str) -> None:
        """A server client's switch went a step further (the App already follows
        it): tell the views as a load of the window's own would."""
        loaded = self.app.loaded
        if state == "loaded" and loaded is not None:
            self.model_selected.emit(loaded.ref)
            self.settings_changed.emit(loaded.quant, loaded.options)
            self.model_changed.emit(loaded)
            self.model_loaded.emit(loaded)
            if not self.closing:
                self.find_modules()
        elif state in ("failed", "unloaded") and loaded is None:
            self.model_changed.emit(None)
            self.model_unloaded.emit()
        self.model_switched.emit(state, name)

    # -- answers --

    def ask(
        self,
        question: str,
        settings: GenerationSettings,
        *,
        raw: bool = False,
        system: str = "",
        constraint: Constraint | None = None,
    ) -> Turn | None:
        """Store `question` in the chat and stream its answer; None when an answer
        is already on its way. A `constraint` holds the answer to it (JSON).

        Raises
        ------
        NibbleError
            No model is loaded, or the queue refused the request.
        """
        if self.running(JobKind.ANSWER) is not None or self.closing:
            return None
        turn = self.app.ask(
            question, settings, raw=raw, system=system, constraint=constraint
        )
        self._follow(turn)
        return turn

    def ask_again(
        self,
        settings: GenerationSettings,
        *,
        raw: bool = False,
        answer_id: int | None = None,
        constraint: Constraint | None = None,
    ) -> Turn | None:
        """Answer the last question (or `answer_id`'s) again, kept as a variant."""
        if self.running(JobKind.ANSWER) is not None or self.closing:
            return None
        turn = self.app.ask_again(
            settings, raw=raw, answer_id=answer_id, constraint=constraint
        )
        if turn is not None:
            self._follow(turn)
        return turn

    def _follow(self, turn: Turn) -> None:
        assert turn.job is not None
        worker = workers.JobWorker(turn.job, turn.follow())
        self.turn = turn
        self.first_token_at = None
        worker.yielded.connect(self._on_answer_chunk)
        worker.returned.connect(self._on_answer)
        worker.errored.connect(self._on_answer_error)
        worker.aborted.connect(self._on_answer_aborted)
        self.start(JobKind.ANSWER, worker)
        self.answer_started.emit(turn)

    def stop_answer(self) -> None:
        """Stop the chat's answer (one waiting behind a server request too)."""
        self.app.stop_answer()

    def answer_speed(self) -> float | None:
        """Live tokens per second of the answer being written, from the generator's
        own count; None before its second token."""
        turn, first = self.turn, self.first_token_at
        if turn is None or first is None:
            return None
        seconds = time.perf_counter() - first
        tokens = turn.tokens
        if seconds <= 0.3 or tokens < 2:
            return None
        return (tokens - 1) / seconds

    def waiting_line(self) -> str:
        """What the chat's answer waits for ('' when it runs or there is none)."""
        turn = self.turn
        return self.app.waiting_line(turn) if turn is not None else ""

    def _on_answer_chunk(self, chunk: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.first_token.emit()
        self.answer_chunk.emit(chunk)

    def _end_turn(self, stats: GenerationStats | None) -> Turn | None:
        turn, self.turn = self.turn, None
        if turn is None:
            return None
        try:
            self.app.end_answer(turn, stats)
        except NibbleError as exc:  # the conversation went while it answered
            self.chat_error.emit(exc, "The answer could not be kept")
        return turn

    def _on_answer(self, stats: GenerationStats) -> None:
        self._done()
        turn = self._end_turn(stats)
        if turn is not None:
            self.answer_finished.emit(turn)

    def _on_answer_error(self, exc: Exception) -> None:
        self._done()
        turn = self._end_turn(self.turn.stats if self.turn is not None else None)
        if turn is not None:
            self.answer_failed.emit(turn, exc)

    def _on_answer_aborted(self) -> None:
        self._done()
        turn = self._end_turn(None)
        if turn is not None:
            self.answer_aborted.emit(turn)

    # -- estimates, comparisons, exports, sampling --

    def estimate(
        self,
        model: ModelRef | str | dict[str, Any],
        quant: QuantSettings,
        options: LoadOptions,
        context: int,
        device: Any = None,
    ) -> workers.FunctionWorker:
        """Estimate every preset for `model`; the worker returns a core Table."""

        def work(_progress: workers.Progress, _cancel: threading.Event) -> Table:
            from core.model import estimate

            return estimate.table(model, quant, options, context, device=device)

        return self.run(JobKind.ESTIMATE, work)

    def ladder(
        self,
        model: Any,
        quant: QuantSettings,
        options: LoadOptions,
        context: int,
        device: Any = None,
        current: Any = None,
    ) -> workers.FunctionWorker:
        """The step-down ladder for these settings (core.model.ladder), with the
        models of the local cache as the smaller-model rung's candidates; the
        worker returns a Ladder."""

        def work(_progress: workers.Progress, _cancel: threading.Event) -> Any:
            from core.model import catalog
            from core.model.ladder import ladder

            try:
                family = [r for r in catalog.scan_cache() if r.path is not None]
            except Exception:  # an unreadable cache only loses the last rung
                family = []
            return ladder(
                model,
                quant,
                options,
                context,
                device=device,
                family=family,
                current=current,
            )

        return self.run(JobKind.LADDER, work)

    def divergence(
        self,
        ref: ModelRef,
        quant: QuantSettings,
        options: LoadOptions,
        prompt: Any,
        answer: str,
        baseline: str = "fp32",
        raw: bool = False,
        threshold: float | None = None,
    ) -> workers.FunctionWorker:
        """Shade `answer` token by token by its KL vs `baseline` (two fresh loads,
        core.lab.divergence); the worker returns a Divergence, or errors with
        BaselineDoesNotFit naming the largest preset that fits."""

        def work(progress: workers.Progress, cancel: threading.Event) -> Any:
            from core.lab import divergence

            return divergence.answer_divergence(
                ref,
                quant,
                options,
                prompt,
                answer,
                baseline,
                divergence.DEFAULT_THRESHOLD if threshold is None else threshold,
                raw,
                progress,
                cancel,
            )

        worker = self.run(JobKind.DIVERGENCE, work)
        self.import_libraries()
        return worker

    def compare(
        self, ref: ModelRef, rows: list[RowSpec], config: CompareConfig | None
    ) -> workers.CompareWorker:
        """Run a comparison; the chat's answers wait (paused queue) until it ends."""
        worker = workers.CompareWorker(ref, rows, config)
        worker.started.connect(self._pause_answers)
        worker.finished.connect(self._resume_answers)
        self.start(JobKind.COMPARE, worker)
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
        return self.running(JobKind.COMPARE) is not None

    def export(
        self,
        ref: ModelRef,
        quant: QuantSettings,
        options: LoadOptions,
        out: str,
        force: bool = False,
    ) -> workers.FunctionWorker:
        """Save a quantized copy of `ref` (a fresh load; core.lab.export)."""

        def work(progress: workers.Progress, cancel: threading.Event) -> Any:
            from core.lab import export

            return export.export(
                ref, quant, out, options, force=force, progress=progress, cancel=cancel
            )

        worker = self.run(JobKind.EXPORT, work)
        self.import_libraries()
        return worker

    def sample(self, sampler: Any, interval: float) -> workers.SamplerWorker:
        """Take memory samples every `interval` seconds until stopped."""
        worker = workers.SamplerWorker(sampler, interval)
        worker.name = str(JobKind.SAMPLER)
        self.start(JobKind.SAMPLER, worker)
        return worker

    # -- the hub and the server --

    def search_hub(self, text: str) -> workers.HubSearchWorker:
        """Search the hub for causal LMs; the worker returns SearchResults."""
        worker = workers.HubSearchWorker(text)
        self.start(JobKind.HUB_SEARCH, worker)
        return worker

    def plan_download(self, repo_id: str) -> workers.HubPlanWorker:
        """Plan a download of `repo_id` (files, disk, estimate); returns a Plan."""
        worker = workers.HubPlanWorker(repo_id)
        self.start(JobKind.HUB_PLAN, worker)
        return worker

    def download(self, plan: Any) -> workers.HubDownloadWorker:
        """Download `plan` into the HF cache; cancelling pauses (the partial stays)."""
        worker = workers.HubDownloadWorker(plan)
        self.start(JobKind.DOWNLOAD, worker)
        return worker

    def start_server(
        self, config: Any, on_request: Callable[[Any], Any]
    ) -> workers.ServerStartWorker:
        """Serve the generation queue over HTTP; the worker returns a ServerThread.

        A request that names another servable model switches the window's model
        to it (see `model_switched`)."""
        worker = workers.ServerStartWorker(
            self.generation_queue, config, on_request, self.app.model_switcher()
        )
        self.start(JobKind.SERVER, worker)
        return worker

    def stop_server(self, thread: Any) -> workers.ServerStopWorker:
        """Stop a ServerThread (its requests are cancelled) on a worker."""
        worker = workers.ServerStopWorker(thread)
        self.start(JobKind.SERVER, worker)
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
) -> tuple[ModelRef | None, list[ModelRef]]:
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
) -> LoadedModel:
    from core.model import loader

    loaded = loader.load(ref, quant, options, progress=progress, cancel=cancel)
    if cancel.is_set():  # finished just as the user cancelled: drop it
        loader.unload(loaded)
        raise CancelledError("load cancelled")
    return loaded


__all__ = ["CLOSE_DEADLINE_S", "Controller", "JobKind", "NibbleError"]
