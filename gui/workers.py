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
from collections.abc import Callable, Iterable
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
    thread.setObjectName(f"nibble-{getattr(worker, 'name', type(worker).__name__)}")
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
    """Cancel `workers` and wait for their threads, `timeout_ms` for all together.

    True when every thread ended in time.
    """
    for worker in workers:
        worker.cancel()
    deadline = time.monotonic() + timeout_ms / 1000
    ok = True
    for worker in workers:
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        ok = wait(worker, left_ms) and ok
    return ok


def wait(worker: Worker, timeout_ms: int) -> bool:
    """Wait for `worker`'s thread to end; True when it did (or never started)."""
    thread = worker.thread_
    if thread is None or not _alive(thread):
        return True
    return thread.wait(timeout_ms)


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

Progress = Callable[[int, int, str], None]


class FunctionWorker(Worker):
    """Runs one function on its thread: ``fn(progress, cancel) -> result``.

    `progress(done, total, message)` emits `progressed`; `cancel` is the worker's
    `cancel_event`, which `fn` should check between steps (raising CancelledError or
    returning early both end in `aborted`). Loads, estimates, exports, the catalog
    scan and the stack import all run through this one class.
    """

    def __init__(self, fn: Callable[[Progress, threading.Event], Any], name: str):
        super().__init__()
        self.fn = fn
        self.name = name

    def _progress(self, done: int, total: int, message: str) -> None:
        self.progressed.emit(done, total, message)

    def work(self) -> Any:
        return self.fn(self._progress, self.cancel_event)


class JobWorker(Worker):
    """Streams one job of the core's GenerationQueue: `yielded(chunk)` per piece of
    text, then `returned(stats)`.

    `items` is what to read (default: the job itself), e.g. a chat Turn's
    `follow()`, which keeps the text as it passes. `stop()` ends the answer within
    one token (or takes it out of the queue while it waits) and still returns its
    stats (stop reason "stopped"); `cancel()` (closing the window) also stops it
    but emits `aborted`. A failed answer raises its GenerationError after the stats
    of the partial run were kept in `stats`.
    """

    def __init__(self, job: Any, items: Iterable[Any] | None = None) -> None:
        super().__init__()
        self.job = job
        self.items = items if items is not None else job
        self.name = "answer"
        self.stats: Any = None

    def stop(self) -> None:
        self.job.cancel()

    def cancel(self) -> None:
        self.job.cancel()
        super().cancel()

    def work(self) -> Any:
        from core.generation.decode import GenerationStats

        for item in self.items:
            if isinstance(item, GenerationStats):
                self.stats = item
            elif not self.cancelled:
                self.yielded.emit(item)
        return self.stats


class CompareWorker(Worker):
    """Run a comparison row by row with its own loads (core.lab.compare.run).

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
        from core.lab import compare

        return compare.run(
            self.ref,
            self.rows,
            self.config,
            progress=self._progress,
            on_row=self._row,
            cancel=self.cancel_event,
        )


class HubSearchWorker(Worker):
    """Search the hub (core.hub.api.search); returns a list of SearchResult."""

    def __init__(self, text: str, limit: int = 30) -> None:
        super().__init__()
        self.text = text
        self.limit = limit

    def work(self) -> Any:
        from core.hub import api as hub

        return hub.search(self.text, self.limit)


class HubPlanWorker(Worker):
    """Plan a download (core.hub.api.plan): files, disk, estimate table; returns a Plan."""

    def __init__(self, repo_id: str, revision: str = "main") -> None:
        super().__init__()
        self.repo_id = repo_id
        self.revision = revision

    def work(self) -> Any:
        from core.hub import api as hub

        return hub.plan(self.repo_id, self.revision)


class HubDownloadWorker(Worker):
    """Download a Plan into the HF cache; `fetched(Progress)` per chunk on disk.

    Cancelling pauses: what arrived stays in the cache and the next download
    continues from it. Returns the ModelRef of the finished snapshot.
    """

    fetched = Signal(object)

    def __init__(self, plan: Any) -> None:
        super().__init__()
        self.plan = plan

    def work(self) -> Any:
        from core.hub import download as hub_download
        from core.model import catalog

        snapshot = hub_download.download(
            self.plan, self.fetched.emit, self.cancel_event
        )
        return catalog.folder_ref(snapshot, kind="cache", name=self.plan.repo_id)


class ServerStartWorker(Worker):
    """Build the local API server (server.app) and start it; returns its ServerThread.

    uvicorn then runs on the ServerThread's own thread: this worker ends as soon as
    the socket listens, or errors when it cannot (e.g. the port is in use).
    """

    def __init__(
        self, queue: Any, config: Any, on_request: Any, switcher: Any = None
    ) -> None:
        super().__init__()
        self.server_thread: Any = None
        self.queue = queue
        self.config = config
        self.on_request = on_request
        self.switcher = switcher

    def work(self) -> Any:
        from server.app import Server
        from server.runner import ServerThread

        self.server_thread = ServerThread(
            Server(self.queue, self.config, self.on_request, switcher=self.switcher)
        )
        self.server_thread.start()
        return self.server_thread


class ServerStopWorker(Worker):
    """Stop a running ServerThread (its answers are cancelled); returns True if it ended."""

    def __init__(self, thread: Any) -> None:
        super().__init__()
        self.server_thread = thread

    def work(self) -> Any:
        stopped = self.server_thread.stop()
        switcher = self.server_thread.server.serving.switcher
        if switcher is not None:
            switcher.close()
        return stopped
