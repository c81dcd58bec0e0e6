"""The generation queue: one loaded model, many callers (the chat, server requests).

Requests decode together in one batch (see `core.generation.batch`): a newcomer joins
at the next decode step and a finished or cancelled one leaves at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import GenerationError
from core.generation.batch import (
    Batch,
    LogitsHook,
    Row,
    SequenceSpec,
    batching_blocker,
    kv_bytes_per_token,
)
from core.generation.constrain import Constraint
from core.generation.decode import (
    STOP_ERROR,
    STOP_STOPPED,
    GenerationStats,
    Message,
    context_length,
    stream,
)
from core.model.loader import LoadedModel
from core.settings import GenerationSettings
from core.units import format_bytes

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
    endpoint: str = ""
    """The API path a server request came to, for the logs that show it running."""
    stop: tuple[str, ...] = ()
    """End the answer before the first of these strings (see `stream`)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    constraint: Constraint | None = None
    """Allow only answers it accepts (JSON, a JSON schema, a grammar); each request
    has its own grammar state, in a batch as alone."""
    tools: tuple[dict[str, Any], ...] | None = None
    """Function definitions the chat template shows the model."""
    logits_processor: LogitsHook | None = None
    """Per-request hook on the next token's logits, e.g. a JSON-schema or grammar
    mask: `hook(input_ids, scores) -> scores`, a transformers LogitsProcessor's
    signature (a LogitsProcessorList works). input_ids is (1, n): this request's prompt
    and answer so far; scores (1, vocab) float, after the penalties and before
    temperature/top-k/top-p. It runs on the queue's thread, once per token of this
    request only, whether the request decodes alone or in a batch. It runs after
    the `constraint`'s mask."""


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
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._consumed_end = False
        self.tokens = 0
        """Tokens decoded so far (for the status and the live display)."""
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

    def _count(self) -> None:
        self.tokens += 1

    def _put(self, item: Any) -> None:
        self._items.put(item)
        if self.on_item is not None:
            self.on_item()


DEFAULT_MAX_BATCH = 8
"""The most answers decoded together unless --max-batch says otherwise: on 2-8 CPU
cores the aggregate stops growing well before this; a GPU gains more (raise it)."""


def default_max_batch(loaded: LoadedModel | None) -> tuple[int, str]:
    """How many answers to decode together on this model, and why.

    Each running answer holds a KV cache of up to the model's context; N of them must
    fit in half the memory left beside the model (GPU memory on a GPU, else RAM).
    """
    if loaded is None or loaded.model is None:
        return DEFAULT_MAX_BATCH, "no model is loaded"
    blocker = batching_blocker(loaded)
    if blocker is not None:
        return 1, f"one at a time: {blocker}"
    per_token = kv_bytes_per_token(loaded)
    if per_token is None:
        return 1, "one at a time: the KV cache size is unknown for this model"
    context = context_length(loaded.model) or 4096
    per_seq = per_token * context
    free, where = _free_bytes(loaded)
    if free is None:
        return DEFAULT_MAX_BATCH, f"up to {DEFAULT_MAX_BATCH} (free {where} unknown)"
    fits = int(free // 2 // max(per_seq, 1))
    n = max(1, min(DEFAULT_MAX_BATCH, fits))
    return n, (
        f"{n}: one answer's KV cache at the full {context:,}-token context is "
        f"{format_bytes(per_seq)}, and {fits} fit in half the "
        f"{format_bytes(free)} of free {where}"
        + (f" (capped at {DEFAULT_MAX_BATCH})" if fits > DEFAULT_MAX_BATCH else "")
    )


def _free_bytes(loaded: LoadedModel) -> tuple[int | None, str]:
    device = str(getattr(loaded.model, "device", "cpu"))
    if device.startswith("cuda"):
        try:
            import torch

            free, _ = torch.cuda.mem_get_info(loaded.model.device)
            return int(free), "GPU memory"
        except Exception:  # no driver answer: say so rather than guess
            return None, "GPU memory"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "RAM"
    except Exception:
        return None, "RAM"


class GenerationQueue:
    """Runs generation jobs over one loaded model, decoding up to `max_batch` together.

    The chat and the local server submit to the same queue, so they share the model
    without two forwards ever running on it at once. Jobs start in arrival order; a
    job that arrives while others decode joins the batch at the next decode step
    (it is prefilled alone, then merged into the batch's left-padded KV cache), and
    a job leaves the batch the step it ends. Beyond `max_batch` running jobs, the
    rest wait; beyond `limit` waiting, `submit` refuses with QueueFullError.

    Every job keeps its own sampling parameters, seed (its own generator: the same
    seed gives the same answer alone or in any batch), stop strings, max tokens,
    penalties and cancellation (`job.cancel()` or a consumer that stops iterating
    frees its slot before the next step). Greedy answers in a batch equal the same
    request alone.

    Per-request constraints: `GenerationRequest.logits_processor` is called with that
    request's (1, n) token ids and (1, vocab) logits each step, after the penalties
    and before temperature/top-k/top-p, and returns the logits to sample from. A
    JSON-schema or grammar mask plugs in there and works the same in a batch as alone.

    Where the model cannot batch (see `batching.blocker`: an attention implementation
    without a padding mask, sliding-window layers, a non-dynamic cache) or max_batch
    is 1, jobs run one at a time through `decode.stream`, and `status()` says why.

    Swap the model with `set_model`; running jobs finish on the model they started
    with, and jobs for the new model start once they have.

    Parameters
    ----------
    loaded
        The model to answer with, or None until one loads.
    limit
        How many jobs may wait (running ones not counted); more are refused with
        QueueFullError.
    max_batch
        The most jobs decoded together; None chooses from memory (`default_max_batch`)
        each time a model is set.
    """

    def __init__(
        self,
        loaded: LoadedModel | None = None,
        limit: int = 16,
        max_batch: int | None = None,
    ) -> None:
        from collections import deque

        if limit < 1:
            raise ValueError("the queue limit must be at least 1")
        if max_batch is not None and max_batch < 1:
            raise ValueError("the batch size must be at least 1")
        self.limit = limit
        self._fixed_batch = max_batch
        self._loaded = loaded
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._paused = False
        self._closed = False
        self._ids = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._recent_s: list[float] = []  # durations of the last jobs, for Retry-After
        self._blocked: dict[int, str] = {}  # id(model) -> why it cannot batch
        self.max_batch, self.batch_reason = 1, ""
        self._choose_batch()
        self.on_batch_change: list[Callable[[int, int], Any]] = []
        """Called (from the queue's thread) with (running, waiting) when either changes."""
        self._last_sizes = (0, 0)

    # -- the model ---------------------------------------------------------------

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def set_model(self, loaded: LoadedModel | None) -> None:
        """Answer the next jobs with `loaded` (None: they fail with NoModelError)."""
        with self._cond:
            self._loaded = loaded
            self._choose_batch()
            self._cond.notify_all()

    def _choose_batch(self) -> None:
        blocker = None
        if self._loaded is not None and self._loaded.model is not None:
            blocker = batching_blocker(self._loaded)
        if self._fixed_batch is not None:
            self.max_batch = self._fixed_batch if blocker is None else 1
            self.batch_reason = (
                f"{self._fixed_batch} (--max-batch)"
                if blocker is None
                else f"one at a time: {blocker}"
            )
        else:
            self.max_batch, self.batch_reason = default_max_batch(self._loaded)

    @property
    def batching_note(self) -> str | None:
        """Why jobs run one at a time on this model, or None when they batch."""
        loaded = self._loaded
        if loaded is None or loaded.model is None:
            return None
        reason = self._blocked.get(id(loaded.model)) or batching_blocker(loaded)
        if reason is None and self.max_batch == 1:
            reason = "the batch size is 1"
        return reason

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
        """The longest-running job, or None (see `running_jobs` for all of them)."""
        with self._cond:
            return self._active[0] if self._active else None

    @property
    def running_jobs(self) -> list[Job]:
        """The jobs decoding now, in the order they started."""
        with self._cond:
            return list(self._active)

    @property
    def batch_size(self) -> int:
        """How many jobs decode together now."""
        return len(self._active)

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._active) or any(not job.cancelled for job in self._waiting)

    def position(self, job: Job) -> int:
        """0 while it runs, n when n-1 jobs are ahead of it, -1 once it has ended."""
        with self._cond:
            if job in self._active:
                return 0
            live = [j for j in self._waiting if not j.cancelled]
            return live.index(job) + 1 if job in live else -1

    def status(self) -> dict[str, Any]:
        """Running and waiting jobs, the batch limit and why, for /nibble/status."""
        now = time.perf_counter()
        with self._cond:
            running = [
                {
                    "id": job.id,
                    "source": job.request.source,
                    "client": job.request.client,
                    "tokens": job.tokens,
                    "seconds": round(now - (job.started_at or now), 2),
                }
                for job in self._active
            ]
            waiting = [
                {
                    "id": job.id,
                    "source": job.request.source,
                    "client": job.request.client,
                    "wait_s": round(job.wait_s, 2),
                }
                for job in self._waiting
                if not job.cancelled
            ]
        note = self.batching_note
        return {
            "running": len(running),
            "waiting": len(waiting),
            "running_requests": running,
            "waiting_requests": waiting,
            "batch_size": len(running),
            "max_batch": self.max_batch,
            "max_batch_reason": self.batch_reason,
            "batching": note is None,
            "batching_note": note,
            "limit": self.limit,
            "paused": self._paused,
        }

    def pause(self) -> None:
        """Start no new job until `resume()` (running ones go on)."""
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
        """The running jobs, then the waiting ones in order (cancelled ones left out)."""
        with self._cond:
            return [*self._active, *(j for j in self._waiting if not j.cancelled)]

    def cancel(self, job: Job) -> None:
        """Stop `job`: a waiting one ends now (its consumer gets a "stopped" stats at
        once, not when a running job lets a place go), a running one within a token."""
        job.cancel()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish_unstarted(job)
            self._cond.notify_all()

    def cancel_all(self) -> None:
        """Cancel every waiting job and stop the running ones."""
        with self._cond:
            for job in self._waiting:
                job.cancel()
            for job in self._active:
                job.cancel()
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job runs or waits; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._active or any(not job.cancelled for job in self._waiting):
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
        return max(1.0, per_job * (len(self._waiting) + 1) / max(1, self.max_batch))

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
        # The thread lives while there is work and a fresh one starts after an idle
        # spell: torch's OpenMP pool throttles when a long-lived thread keeps a team
        # of its own (see bench/README.md, generate.py).
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._serve, name="nibble-generation-queue", daemon=True
            )
            self._thread.start()

    def _notify_sizes(self) -> None:
        sizes = (len(self._active), sum(1 for j in self._waiting if not j.cancelled))
        if sizes == self._last_sizes:
            return
        self._last_sizes = sizes
        for listener in list(self.on_batch_change):
            try:
                listener(*sizes)
            except Exception:  # a display must not stop the queue
                logger.debug("batch listener failed", exc_info=True)

    def _can_batch(self, loaded: LoadedModel | None) -> bool:
        return (
            loaded is not None
            and loaded.model is not None
            and self.max_batch > 1
            and id(loaded.model) not in self._blocked
            and batching_blocker(loaded) is None  # fast decode among the reasons
        )

    def _admit(self, batch: Batch | None) -> list[Job]:
        """Under the lock: the waiting jobs that may start now (on `self._loaded`).

        Returns [] with the thread unregistered when nothing runs or may start.
        """
        while True:
            self._drop_cancelled()
            loaded = self._loaded
            if self._active:  # only a batch runs while this thread is here
                joinable = (
                    batch is not None
                    and batch.loaded is loaded
                    and self._can_batch(loaded)
                )
                room = self.max_batch - len(self._active) if joinable else 0
            else:
                room = self.max_batch if self._can_batch(loaded) else 1
            picked: list[Job] = []
            while not self._paused and self._waiting and len(picked) < room:
                job = self._waiting.popleft()
                job.state = JOB_RUNNING
                job.started_at = time.perf_counter()
                self._active.append(job)
                picked.append(job)
            if picked or self._active:
                return picked
            if self._closed or not self._waiting:
                self._thread = None
                self._cond.notify_all()
                return []
            self._cond.wait(0.5)

    def _serve(self) -> None:
        batch: Batch | None = None
        seqs: dict[int, Row] = {}
        while True:
            with self._cond:
                picked = self._admit(batch)
                loaded = self._loaded
                self._notify_sizes()
                if not picked and not self._active:
                    return
            for job in picked:
                if not self._can_batch(loaded) or _lookup_alone(job, batch):
                    self._run_alone(job, loaded)
                    continue
                assert loaded is not None
                if batch is None or batch.loaded is not loaded:
                    batch = Batch(loaded)
                seq = self._join(batch, job, loaded)
                if seq is not None:
                    seqs[job.id] = seq
            if batch is None or not seqs:
                continue
            try:
                for ended in batch.drop_finished():
                    self._finish_seq(ended, seqs)
                batch.step()
                for ended in batch.drop_finished():
                    self._finish_seq(ended, seqs)
            except Exception as exc:  # every job in the batch gets the error
                logger.debug("batched decode failed", exc_info=True)
                error = GenerationError(f"generation failed: {exc}", "see the log")
                for seq in list(batch.rows):
                    seq.finish(STOP_ERROR)
                    self._finish_seq(seq, seqs, error)
                batch = None
            if batch is not None and not batch.rows:
                batch = None

    def _join(self, batch: Batch, job: Job, loaded: LoadedModel) -> Row | None:
        request = job.request
        job.model_name = loaded.ref.name
        spec = SequenceSpec(
            request.messages_or_prompt,
            request.settings or GenerationSettings(),
            raw=request.raw,
            stop=tuple(request.stop),
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            logits_processor=request.logits_processor,
            constraint=request.constraint,
            tools=request.tools,
        )

        def emit(text: str) -> None:
            job._put(text)

        seq = Row(spec, emit, job.stop_event.is_set)
        seq.on_token = job._count
        try:
            batch.prepare(seq)
            batch.add(seq)
        except GenerationError as exc:
            if "cannot be batched" in exc.message:
                self._blocked[id(loaded.model)] = exc.message
                self._run_alone(job, loaded)
                return None
            job.error = exc
            job.stats = GenerationStats(stop_reason=STOP_ERROR, error=exc.message)
            job._put(job.stats)
            self._end(job)
            return None
        except Exception as exc:
            logger.debug("generation job %d failed", job.id, exc_info=True)
            job.error = GenerationError(f"generation failed: {exc}", "see the log")
            job.stats = GenerationStats(stop_reason=STOP_ERROR, error=str(exc))
            job._put(job.stats)
            self._end(job)
            return None
        return seq

    def _finish_seq(
        self,
        seq: Row,
        seqs: dict[int, Row],
        error: GenerationError | None = None,
    ) -> None:
        job_id = next((k for k, v in seqs.items() if v is seq), None)
        if job_id is None:
            return
        del seqs[job_id]
        job = next(j for j in self._active if j.id == job_id)
        job.stats = seq.stats()
        if job.request.settings is not None and job.request.settings.prompt_lookup:
            job.stats.decode_note = (
                "prompt lookup is off while other answers decode in the same batch"
            )
        if error is None and seq.error is not None:
            error = (
                seq.error
                if isinstance(seq.error, GenerationError)
                else GenerationError(f"generation failed: {seq.error}", "see the log")
            )
        if error is not None:
            job.error = error
            job.stats.error = error.message
        job._put(job.stats)
        self._end(job)

    def _end(self, job: Job) -> None:
        with self._cond:
            job.state = JOB_DONE
            job.ended_at = time.perf_counter()
            if job.started_at is not None:
                self._recent_s = [*self._recent_s[-7:], job.ended_at - job.started_at]
            if job in self._active:
                self._active.remove(job)
            self._notify_sizes()
            self._cond.notify_all()
        job._put(_END)

    def _run_alone(self, job: Job, loaded: LoadedModel | None) -> None:
        try:
            self._run(job, loaded)
        finally:
            self._end(job)

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
                constraint=request.constraint,
                tools=request.tools,
                logits_processor=request.logits_processor,
            ):
                if isinstance(item, GenerationStats):
                    job.stats = item
                else:
                    job._count()
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


def _lookup_alone(job: Job, batch: Batch | None) -> bool:
    """Whether `job` decodes alone with prompt lookup: it asks for it and no batch is
    running (prompt lookup checks several tokens of one answer per step; in a batch
    the answer decodes plain and its stats say so)."""
    settings = job.request.settings
    if settings is None or not settings.prompt_lookup:
        return False
    return batch is None or not batch.rows
