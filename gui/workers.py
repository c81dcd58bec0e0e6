"""Every QThread worker of Nibble lives here.

A worker is a QObject moved to its own QThread (wired as superqt's new_worker_qthread):
thread.started → worker.run, worker.finished → thread.quit, deleteLater on both. `work()`
runs in the thread; errors cross back as objects through `errored`, cancellation is
cooperative through `cancel_event`, and `finished` is always emitted last.

Signal order: started, (progressed | yielded)*, then exactly one of returned / errored /
aborted, then finished.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

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


_running: set[QThread] = set()


def start(worker: Worker) -> QThread:
    """Move `worker` to a new QThread and start it."""
    thread = QThread()
    thread.setObjectName(f"nibble-{type(worker).__name__}")
    worker.moveToThread(thread)
    worker.thread_ = thread
    thread.started.connect(worker.run)
    worker.finished.connect(thread.quit)
    worker.finished.connect(worker.deleteLater)
    thread.finished.connect(thread.deleteLater)
    thread.finished.connect(lambda: _running.discard(thread))
    _running.add(thread)
    thread.start()
    return thread


def running_threads() -> list[QThread]:
    """Worker threads that have not finished yet."""
    return [t for t in list(_running) if _alive(t)]


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
