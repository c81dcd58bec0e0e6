"""The generation queue: one loaded model, many callers (the chat, server requests)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import GenerationError
from core.generation.decode import (
    STOP_ERROR,
    STOP_STOPPED,
    GenerationStats,
    Message,
    stream,
)
from core.model.loader import LoadedModel
from core.settings import GenerationSettings

logger = logging.getLogger(__name__)


class QueueFullError(GenerationError):
    """Too many requests are waiting for the model."""

    def __init__(self, waiting: int, retry_after_s: float) -> None:
        super().__init__(
            f"{waiting} requests are already waiting for the model",
            f"try again in {retry_after_s:.0f} s or raise the queue limit",
        )
        self.retry_after_s = retry_after_s


class NoModelError(GenerationError):
    """No model is loaded to answer with."""

    def __init__(self) -> None:
        super().__init__("no model is loaded", "load a model first")


@dataclass
class GenerationRequest:
    """One answer to produce: what to feed the model and how to sample."""

    messages_or_prompt: str | Sequence[Message]
    settings: GenerationSettings | None = None
    raw: bool = False
    source: str = "chat"
    """Who asked: "chat", "server", "cli"; shown in logs, never interpreted."""
    client: str = ""
    """Free text about the caller, e.g. the remote address of a server request."""
    stop: tuple[str, ...] = ()
    """End the answer before the first of these strings (see `stream`)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


JOB_WAITING = "waiting"
JOB_RUNNING = "running"
JOB_DONE = "done"
_END = object()


class Job:
    """A request's place in the queue and, once it runs, its chunks as they decode.

    Iterate it (from any one thread) for the same items `stream` yields: text chunks,
    then one GenerationStats; errors raise GenerationError after that final stats
    object, as `stream` does. A job cancelled before it started yields only a
    GenerationStats with stop reason "stopped" and no tokens.
    """

    def __init__(self, job_id: int, request: GenerationRequest) -> None:
        import queue

        self.id = job_id
        self.request = request
        self.stop_event = threading.Event()
        self.state = JOB_WAITING
        self.submitted_at = time.perf_counter()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.stats: GenerationStats | None = None
        self.error: BaseException | None = None
        self.model_name: str | None = None
        self.new_tokens = 0
        """Tokens decoded so far (live while it runs; the final count is in stats)."""
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._consumed_end = False
        self.on_item: Callable[[], Any] | None = None
        """Called (from the queue's thread) after each new item, e.g. to wake an
        event loop that reads the job with `next_item(timeout=0)`."""

    def cancel(self) -> None:
        """Stop it: a waiting job leaves the queue, a running one stops within a token."""
        self.stop_event.set()

    @property
    def cancelled(self) -> bool:
        return self.stop_event.is_set()

    @property
    def wait_s(self) -> float:
        """Seconds spent waiting for the model (so far, if it is still waiting)."""
        end = self.started_at if self.started_at is not None else time.perf_counter()
        return end - self.submitted_at

    def next_item(self, timeout: float | None = None) -> str | GenerationStats | None:
        """The next chunk or the final stats; None after the end.

        Raises
        ------
        TimeoutError
            Nothing arrived within `timeout` seconds (the job goes on).
        GenerationError
            The generation failed; raised once, after the final stats were returned.
        """
        import queue

        if self._consumed_end:
            return None
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output within {timeout} s") from None
        if item is _END:
            self._consumed_end = True
            if self.error is not None:
                raise self.error
            return None
        return item

    def __iter__(self) -> Iterator[str | GenerationStats]:
        try:
            while True:
                item = self.next_item()
                if item is None:
                    return
                yield item
        finally:
            if not self._consumed_end:
                self.cancel()  # the consumer left early

    def _count(self, tokens: int) -> None:
        self.new_tokens = tokens

    def _put(self, item: Any) -> None:
        self._items.put(item)
        if self.on_item is not None:
            self.on_item()


class GenerationQueue:
    """Runs generation jobs over one loaded model, one at a time, in arrival order.

    The chat and the local server submit to the same queue, so they share the model
    without two generate calls ever running on it at once. Swap the model with
    `set_model`; a running job finishes on the model it started with.

    Parameters
    ----------
    loaded
        The model to answer with, or None until one loads.
    limit
        How many jobs may wait (the running one not counted); more are refused with
        QueueFullError.
    """

    def __init__(self, loaded: LoadedModel | None = None, limit: int = 16) -> None:
        from collections import deque

        if limit < 1:
            raise ValueError("the queue limit must be at least 1")
        self.limit = limit
        self._loaded = loaded
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._paused = False
        self._closed = False
        self._ids = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._recent_s: list[float] = []  # durations of the last jobs, for Retry-After

    # -- the model ---------------------------------------------------------------

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def set_model(self, loaded: LoadedModel | None) -> None:
        """Answer the next jobs with `loaded` (None: they fail with NoModelError)."""
        with self._cond:
            self._loaded = loaded
            self._cond.notify_all()

    # -- jobs --------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        require_model: bool = True,
    ) -> Job:
        """Queue a request; iterate the returned Job for its output.

        Raises
        ------
        NoModelError
            No model is loaded and `require_model` is set.
        QueueFullError
            `limit` jobs are already waiting.
        """
        with self._cond:
            if self._closed:
                raise GenerationError(
                    "the generation queue is closed", "restart Nibble"
                )
            if require_model and self._loaded is None:
                raise NoModelError()
            self._drop_cancelled()
            if len(self._waiting) >= self.limit:
                raise QueueFullError(len(self._waiting), self._retry_after())
            self._ids += 1
            job = Job(self._ids, request)
            self._waiting.append(job)
            self._ensure_thread()
            self._cond.notify_all()
        return job

    @property
    def waiting(self) -> int:
        """Jobs waiting for the model (cancelled ones not counted)."""
        with self._cond:
            return sum(1 for job in self._waiting if not job.cancelled)

    @property
    def running(self) -> Job | None:
        return self._running

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None or any(
                not job.cancelled for job in self._waiting
            )

    def position(self, job: Job) -> int:
        """0 while it runs, n when n-1 jobs are ahead of it, -1 once it has ended."""
        with self._cond:
            if self._running is job:
                return 0
            live = [j for j in self._waiting if not j.cancelled]
            return live.index(job) + 1 if job in live else -1

    def pause(self) -> None:
        """Start no new job until `resume()` (the running one goes on)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def jobs(self) -> list[Job]:
        """The running job, then the waiting ones in order (cancelled ones left out)."""
        with self._cond:
            running = [self._running] if self._running is not None else []
            return running + [j for j in self._waiting if not j.cancelled]

    def cancel(self, job: Job) -> None:
        """Stop `job`: a waiting one ends now (its consumer gets a "stopped" stats at
        once, not after the running job), a running one within a token."""
        job.cancel()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish_unstarted(job)
            self._cond.notify_all()

    def cancel_all(self) -> None:
        """Cancel every waiting job and stop the running one."""
        with self._cond:
            for job in self._waiting:
                job.cancel()
            if self._running is not None:
                self._running.cancel()
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job runs or waits; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._running is not None or any(
                not job.cancelled for job in self._waiting
            ):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 0.5)
            return True

    def close(self, timeout: float | None = 2.0) -> bool:
        """Cancel everything and end the queue's thread; False if it outlived `timeout`."""
        with self._cond:
            self._closed = True
        self.cancel_all()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # -- inside --------------------------------------------------------------------

    def _retry_after(self) -> float:
        recent = self._recent_s[-8:]
        per_job = sum(recent) / len(recent) if recent else 5.0
        return max(1.0, per_job * (len(self._waiting) + 1))

    def _drop_cancelled(self) -> None:
        kept = []
        for job in self._waiting:
            if job.cancelled:
                self._finish_unstarted(job)
            else:
                kept.append(job)
        self._waiting.clear()
        self._waiting.extend(kept)

    @staticmethod
    def _finish_unstarted(job: Job) -> None:
        job.state = JOB_DONE
        job.ended_at = time.perf_counter()
        job.stats = GenerationStats(stop_reason=STOP_STOPPED)
        job._put(job.stats)
        job._put(_END)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._serve, name="nibble-generation-queue", daemon=True
            )
            self._thread.start()

    def _next_job(self) -> tuple[Job, LoadedModel | None] | None:
        with self._cond:
            while True:
                self._drop_cancelled()
                if self._closed and not self._waiting:
                    return None
                if self._waiting and not self._paused:
                    job = self._waiting.popleft()
                    self._running = job
                    job.state = JOB_RUNNING
                    job.started_at = time.perf_counter()
                    return job, self._loaded
                self._cond.wait(0.5)

    def _serve(self) -> None:
        while True:
            picked = self._next_job()
            if picked is None:
                return
            job, loaded = picked
            try:
                self._run(job, loaded)
            finally:
                with self._cond:
                    job.state = JOB_DONE
                    job.ended_at = time.perf_counter()
                    if job.started_at is not None:
                        self._recent_s = [
                            *self._recent_s[-7:],
                            job.ended_at - job.started_at,
                        ]
                    self._running = None
                    self._cond.notify_all()
                job._put(_END)

    @staticmethod
    def _run(job: Job, loaded: LoadedModel | None) -> None:
        request = job.request
        if loaded is None or loaded.model is None:
            job.error = NoModelError()
            job.stats = GenerationStats(stop_reason=STOP_ERROR, error=job.error.message)
            job._put(job.stats)
            return
        job.model_name = loaded.ref.name
        try:
            for item in stream(
                loaded,
                request.messages_or_prompt,
                request.settings,
                job.stop_event,
                raw=request.raw,
                stop_strings=request.stop,
                presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty,
                on_tokens=job._count,
            ):
                if isinstance(item, GenerationStats):
                    job.stats = item
                job._put(item)
        except GenerationError as exc:
            job.error = exc
            if job.stats is None:
                job.stats = GenerationStats(stop_reason=STOP_ERROR, error=exc.message)
                job._put(job.stats)
        except Exception as exc:  # reaches the consumer; the queue thread goes on
            logger.debug("generation job %d failed", job.id, exc_info=True)
            job.error = GenerationError(f"generation failed: {exc}", "see the log")
            job.stats = GenerationStats(stop_reason=STOP_ERROR, error=str(exc))
            job._put(job.stats)
