"""Every QThread worker of Nibble lives here.

A worker is a QObject moved to its own QThread (wired as superqt's new_worker_qthread):
thread.started → worker.run, worker.finished → thread.quit. `work()` runs in the thread;
errors cross back as objects through `errored`, cancellation is cooperative through
`cancel_event`, and `finished` is always emitted last. This module keeps every worker and
its thread alive until the thread has ended, so a view may drop its reference in a
`finished` slot without freeing an object the thread still uses.

Signal order: started, (progressed | yielded)*, then exactly one of returned / errored /
aborted, then finished.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from core.errors import CancelledError

logger = logging.getLogger(__name__)


class Worker(QObject):
    """Base class: subclasses implement `work()` and may emit progressed / yielded."""

    started = Signal()
    progressed = Signal(int, int, str)
    yielded = Signal(str)
    returned = Signal(object)
    errored = Signal(object)
    aborted = Signal()
    finished = Signal()
    _ended = Signal(object)  # to the keeper, after `finished`

    def __init__(self) -> None:
        super().__init__()
        self.cancel_event = threading.Event()
        self.thread_: QThread | None = None

    def cancel(self) -> None:
        """Ask the work to stop; it emits `aborted` instead of a result."""
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def work(self) -> Any:
        raise NotImplementedError

    @Slot()
    def run(self) -> None:
        """Run `work()` and report through signals; never raises."""
        self.started.emit()
        try:
            result = self.work()
        except CancelledError:
            self.aborted.emit()
        except Exception as exc:  # crosses the thread boundary as an object
            logger.debug("worker %s failed", type(self).__name__, exc_info=True)
            self.errored.emit(exc)
        else:
            if self.cancelled:
                self.aborted.emit()
            else:
                self.returned.emit(result)
        finally:
            self.finished.emit()
            self._ended.emit(self)


class _Keeper(QObject):
    """Owns every started worker and its QThread until the thread has ended.

    Python owns both objects: were the last reference dropped while the thread still
    runs, the C++ side would be freed under it (a crash, or "QThread: Destroyed while
    thread is still running"). The keeper lives in the UI thread and lets go only
    after `QThread.wait()` has returned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, Worker] = {}

    def keep(self, worker: Worker) -> None:
        self.live[id(worker)] = worker
        worker._ended.connect(self.release)

    @Slot(object)
    def release(self, worker: Worker) -> None:
        thread = worker.thread_
        if thread is not None:
            thread.wait()
        self.live.pop(id(worker), None)


_keeper: _Keeper | None = None


def start(worker: Worker) -> QThread:
    """Move `worker` to a new QThread and start it."""
    global _keeper
    if _keeper is None:
        _keeper = _Keeper()
    thread = QThread()
    thread.setObjectName(f"nibble-{type(worker).__name__}")
    worker.moveToThread(thread)
    worker.thread_ = thread
    thread.started.connect(worker.run)
    # quit is thread-safe; a queued call would never run while stop_all() waits.
    worker.finished.connect(thread.quit, Qt.ConnectionType.DirectConnection)
    _keeper.keep(worker)
    thread.start()
    return thread


def running_threads() -> list[QThread]:
    """Worker threads that have not finished yet."""
    live = list(_keeper.live.values()) if _keeper else []
    return [w.thread_ for w in live if w.thread_ is not None and _alive(w.thread_)]


def stop_all(workers: list[Worker], timeout_ms: int = 2000) -> bool:
    """Cancel `workers` and wait for their threads; True when all ended in time."""
    for worker in workers:
        worker.cancel()
    ok = True
    for worker in workers:
        thread = worker.thread_
        if thread is not None and _alive(thread):
            ok = thread.wait(timeout_ms) and ok
    return ok


def _alive(thread: QThread) -> bool:
    try:
        return thread.isRunning()
    except RuntimeError:  # the C++ object is already deleted
        return False


class SamplerWorker(Worker):
    """Takes a memory sample every `interval` seconds on its own thread until cancelled.

    NVML calls can take milliseconds per GPU, so they never run on the UI thread.
    The worker owns `sampler` and closes it when it ends.
    """

    sampled = Signal(object)

    def __init__(self, sampler: Any, interval: float) -> None:
        super().__init__()
        self.sampler = sampler
        self.interval = interval
        self._wake = threading.Event()

    def set_interval(self, seconds: float) -> None:
        """Sample every `seconds` from now on, starting with one sample now."""
        self.interval = seconds
        self._wake.set()

    def sample_now(self) -> None:
        """Take the next sample at once (an event marker wants its numbers)."""
        self._wake.set()

    def cancel(self) -> None:
        super().cancel()
        self._wake.set()

    def work(self) -> None:
        try:
            while not self.cancelled:
                started = time.monotonic()
                self.sampled.emit(self.sampler.sample())
                self._wake.wait(max(0.0, self.interval - (time.monotonic() - started)))
                self._wake.clear()
        finally:
            self.sampler.close()


# -- the window's workers --


class ImportWorker(Worker):
    """Import torch, transformers and bitsandbytes after the window has painted.

    Returns a short description of the compute devices ("CPU" or "CUDA: <name>").
    """

    # Modules the first load would otherwise import on the loading thread while the
    # user waits: every import holds the GIL and stalls the window.
    MODULES = (
        "transformers",
        "bitsandbytes",
        "accelerate",
        "safetensors.torch",
        "transformers.generation",
        "transformers.modeling_utils",
    )

    def work(self) -> str:
        import importlib

        import torch

        from core import loader

        loader.quiet_libraries()
        for name in self.MODULES:
            importlib.import_module(name)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        del AutoModelForCausalLM, AutoTokenizer  # resolving them imports their code
        if torch.cuda.is_available():
            return f"CUDA: {torch.cuda.get_device_name(0)}"
        return "CPU"


class CatalogWorker(Worker):
    """Scan the Hugging Face cache and check the embedded default, off the UI thread.

    Returns ``(default_ref, cache_refs)``.
    """

    def work(self) -> tuple[Any, list[Any]]:
        from core import catalog

        return catalog.default_ref(), catalog.scan_cache()


class LoadWorker(Worker):
    """Load a model; `progressed(done, total, message)` per weight, cancel stops it."""

    def __init__(self, ref: Any, quant: Any, options: Any) -> None:
        super().__init__()
        self.ref = ref
        self.quant = quant
        self.options = options

    def _progress(self, done: int, total: int, message: str) -> None:
        self.progressed.emit(done, total, message)

    def work(self) -> Any:
        from core import loader

        loaded = loader.load(
            self.ref,
            self.quant,
            self.options,
            progress=self._progress,
            cancel=self.cancel_event,
        )
        if self.cancelled:  # finished just as the user cancelled: drop it
            loader.unload(loaded)
        return loaded


class GenerateWorker(Worker):
    """Stream one answer: `yielded(chunk)` per piece of text, then `returned(stats)`.

    `stop()` ends the answer within one token and still returns its stats (stop reason
    "stopped"); `cancel()` (closing the window) also stops it but emits `aborted`.
    If generation fails after some text, `stats` holds the numbers of the partial run.
    """

    def __init__(self, loaded: Any, messages: Any, settings: Any, raw: bool) -> None:
        super().__init__()
        self.loaded = loaded
        self.messages = messages
        self.settings = settings
        self.raw = raw
        self.stop_event = threading.Event()
        self.stats: Any = None

    def stop(self) -> None:
        self.stop_event.set()

    def cancel(self) -> None:
        self.stop_event.set()
        super().cancel()

    def work(self) -> Any:
        from core import generation

        for item in generation.stream(
            self.loaded, self.messages, self.settings, self.stop_event, raw=self.raw
        ):
            if isinstance(item, generation.GenerationStats):
                self.stats = item
            elif not self.cancelled:
                self.yielded.emit(item)
        return self.stats


class ResolveWorker(Worker):
    """Check a folder or hub id (a hub id may ask the network); returns a ModelRef."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def work(self) -> Any:
        from core import catalog

        return catalog.resolve(self.text)


class CompareWorker(Worker):
    """Run a comparison row by row with its own loads (core.compare.run).

    `progressed(rows done, rows, message)` follows each row's stages,
    `row_finished(RowResult)` carries each row as it lands (failed rows too), and
    `returned(CompareResult)` the whole table; `cancel()` stops between rows, at the
    next weight while loading, or at the next token or perplexity window.
    """

    row_finished = Signal(object)

    def __init__(self, ref: Any, rows: Any, config: Any = None) -> None:
        super().__init__()
        self.ref = ref
        self.rows = rows
        self.config = config

    def _progress(self, done: int, total: int, message: str) -> None:
        self.progressed.emit(done, total, message)

    def _row(self, row: Any) -> None:
        self.row_finished.emit(row)

    def work(self) -> Any:
        from core import compare

        return compare.run(
            self.ref,
            self.rows,
            self.config,
            progress=self._progress,
            on_row=self._row,
            cancel=self.cancel_event,
        )


class EstimateWorker(Worker):
    """Estimate every preset for one model from its config.json; returns a core Table.

    The first estimate in a process imports transformers' modeling code (seconds);
    later ones reuse core.estimate's cache and take milliseconds.
    """

    def __init__(
        self, model: Any, quant: Any, options: Any, context: int, device: Any = None
    ) -> None:
        super().__init__()
        self.model = model
        self.quant = quant
        self.options = options
        self.context = context
        self.device = device

    def work(self) -> Any:
        from core import estimate

        return estimate.table(
            self.model, self.quant, self.options, self.context, device=self.device
        )


class ExportWorker(Worker):
    """Save a quantized copy of a model (core.export); returns an ExportResult.

    It loads its own fresh copy: the model in the chat has run forwards, and saving
    such a 4-bit model on a CPU corrupts it (FACTS.md).
    """

    def __init__(
        self, ref: Any, quant: Any, options: Any, out: str, force: bool = False
    ) -> None:
        super().__init__()
        self.ref = ref
        self.quant = quant
        self.options = options
        self.out = out
        self.force = force

    def _progress(self, done: int, total: int, message: str) -> None:
        self.progressed.emit(done, total, message)

    def work(self) -> Any:
        from core import export

        return export.export(
            self.ref,
            self.quant,
            self.out,
            self.options,
            force=self.force,
            progress=self._progress,
            cancel=self.cancel_event,
        )


class ServerStartWorker(Worker):
    """Build the local API server (core.server) and start it; returns its ServerThread.

    uvicorn then runs on the ServerThread's own thread: this worker ends as soon as
    the socket listens, or errors when it cannot (e.g. the port is in use).
    """

    def __init__(self, queue: Any, config: Any, on_request: Any) -> None:
        super().__init__()
        self.server_thread: Any = None
        self.queue = queue
        self.config = config
        self.on_request = on_request

    def work(self) -> Any:
        from core.server import Server, ServerThread

        self.server_thread = ServerThread(
            Server(self.queue, self.config, self.on_request)
        )
        self.server_thread.start()
        return self.server_thread


class ServerStopWorker(Worker):
    """Stop a running ServerThread (its answers are cancelled); returns True if it ended."""

    def __init__(self, thread: Any) -> None:
        super().__init__()
        self.server_thread = thread

    def work(self) -> Any:
        return self.server_thread.stop()
