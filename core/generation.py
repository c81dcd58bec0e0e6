"""Streaming generation: text chunks as they decode, then the numbers of the run."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import GenerationError
from core.loader import LoadedModel
from core.settings import GenerationSettings

logger = logging.getLogger(__name__)

Message = dict[str, str]
STOP_EOS = "eos"
STOP_MAX = "max tokens"
STOP_STOPPED = "stopped"
STOP_ERROR = "error"
STOP_STRING = "stop string"


@dataclass
class GenerationStats:
    """What one answer took: tokens in and out, time to first token, decode speed."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    total_s: float = 0.0
    stop_reason: str = STOP_EOS
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("ttft_s", "tokens_per_s", "total_s"):
            if data[key] is not None:
                data[key] = round(data[key], 4)
        return data

    def summary(self) -> str:
        """'24.1 tok/s · 0.12 s to first token · 32 tokens · eos'."""
        parts = []
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        if self.ttft_s is not None:
            parts.append(f"{self.ttft_s:.2f} s to first token")
        parts.append(f"{self.new_tokens} tokens")
        parts.append(self.stop_reason)
        return " · ".join(parts)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(
    tokenizer: Any, messages_or_prompt: str | Sequence[Message], raw: bool = False
) -> str:
    """The text fed to the model: the chat template when there is one, else raw text."""
    if isinstance(messages_or_prompt, str):
        if not messages_or_prompt.strip():
            raise GenerationError(
                "the prompt is empty", "type a question or some text first"
            )
        messages: list[Message] = [{"role": "user", "content": messages_or_prompt}]
    else:
        messages = [dict(m) for m in messages_or_prompt]
        if not any(
            m.get("content", "").strip() for m in messages if m.get("role") == "user"
        ):
            raise GenerationError(
                "the prompt is empty", "type a question or some text first"
            )
    if raw or not has_chat_template(tokenizer):
        if isinstance(messages_or_prompt, str):
            return messages_or_prompt
        return "\n\n".join(m["content"] for m in messages if m.get("content"))
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def context_length(model: Any) -> int | None:
    config = model.config
    for name in (
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
    ):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# A token rarely spans more characters than this; a prefix this long tells whether
# a huge prompt can fit before all of it is tokenized (20 MB took 3.4 GB and 26 s).
MAX_CHARS_PER_TOKEN = 32


def check_length(tokenizer: Any, text: str, limit: int) -> None:
    """Refuse a prompt longer than the context, tokenizing at most a bounded prefix."""
    prefix = text[: limit * MAX_CHARS_PER_TOKEN]
    if len(prefix) == len(text):
        return  # short enough to tokenize whole; the exact check follows
    tokens = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    if tokens >= limit:
        raise GenerationError(
            f"the prompt is over {limit} tokens ({len(text):,} characters), longer "
            f"than the model's context of {limit}",
            "shorten the prompt or clear the chat",
        )


def stream(
    loaded: LoadedModel,
    messages_or_prompt: str | Sequence[Message],
    settings: GenerationSettings | None = None,
    stop_event: threading.Event | None = None,
    raw: bool = False,
    *,
    stop_strings: Sequence[str] = (),
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> Iterator[str | GenerationStats]:
    """Yield text chunks as they decode, then one GenerationStats.

    Parameters
    ----------
    loaded
        The model to answer with.
    messages_or_prompt
        A prompt string, or chat messages ({"role", "content"}).
    settings
        Sampling parameters.
    stop_event
        Set it to stop; generation ends within one token.
    raw
        Feed the text as a plain completion even when the model has a chat template.
    stop_strings
        End the answer as soon as its text contains one of these; the text yielded
        stops just before it and the stop reason is "stop string".
    presence_penalty, frequency_penalty
        OpenAI's additive penalties (-2 to 2) on the logits of tokens already in the
        answer: once for being there, and per occurrence.

    Raises
    ------
    GenerationError
        Bad input (empty, longer than the context) before anything runs, or an error
        inside generate, after a final GenerationStats with stop_reason 'error'.
    """
    import torch
    from transformers import (
        StoppingCriteria,
        StoppingCriteriaList,
        TextIteratorStreamer,
    )

    settings = settings or GenerationSettings()
    if loaded.model is None:
        raise GenerationError("no model is loaded", "load a model first")
    tokenizer, model = loaded.tokenizer, loaded.model
    text = build_prompt(tokenizer, messages_or_prompt, raw)
    add_special = raw or not has_chat_template(tokenizer)
    limit = context_length(model)
    if limit is not None:
        check_length(tokenizer, text, limit)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    if limit is not None and prompt_tokens >= limit:
        raise GenerationError(
            f"the prompt is {prompt_tokens} tokens, longer than the model's context "
            f"of {limit}",
            "shorten the prompt or clear the chat",
        )
    max_new = settings.max_new_tokens
    if limit is not None:
        max_new = min(max_new, limit - prompt_tokens)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    stop = stop_event or threading.Event()
    halt = threading.Event()  # set when our consumer goes away early
    timing: dict[str, float] = {}

    class _Streamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                timing.setdefault("first", time.perf_counter())
            super().put(value)

    stops = tuple(s for s in stop_strings if s)
    # Enough tokens to spell the longest stop string, even one character per token.
    tail = max((len(s) for s in stops), default=0) + 2
    hit = threading.Event()

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            flag = stop.is_set() or halt.is_set()
            if stops and not flag and input_ids.shape[1] > prompt_tokens:
                last = tokenizer.decode(
                    input_ids[0, max(prompt_tokens, input_ids.shape[1] - tail) :],
                    skip_special_tokens=True,
                )
                if any(s in last for s in stops):
                    hit.set()
                    flag = True
            return torch.full((input_ids.shape[0],), flag, dtype=torch.bool)

    streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, Any] = {}
    kwargs = settings.generate_kwargs()
    kwargs["max_new_tokens"] = max_new
    if tokenizer.pad_token_id is None:
        kwargs["pad_token_id"] = tokenizer.eos_token_id
    if presence_penalty or frequency_penalty:
        kwargs["logits_processor"] = _penalties(
            prompt_tokens, presence_penalty, frequency_penalty
        )

    def run() -> None:
        try:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Stop()]),
                    **kwargs,
                )
            result["new_tokens"] = int(out.shape[1]) - prompt_tokens
        except BaseException as exc:  # reaches the caller; a silent death would hang it
            result["error"] = exc
            streamer.end()

    started = time.perf_counter()
    thread = threading.Thread(target=run, name="nibble-generate", daemon=True)
    thread.start()
    try:
        if stops:
            yield from _until_stop(
                streamer, stops, on_hit=lambda: (hit.set(), halt.set())
            )
        else:
            for chunk in streamer:
                if chunk:
                    yield chunk
    finally:
        halt.set()
        thread.join()
    ended = time.perf_counter()
    stats = GenerationStats(prompt_tokens=prompt_tokens, total_s=ended - started)
    first = timing.get("first")
    if first is not None:
        stats.ttft_s = first - started
    error = result.get("error")
    if error is not None:
        stats.stop_reason = STOP_ERROR
        stats.error = str(error).splitlines()[0] if str(error) else type(error).__name__
        yield stats
        raise GenerationError(
            f"generation failed: {stats.error}", "see Details"
        ) from error
    stats.new_tokens = result.get("new_tokens", 0)
    if first is not None and stats.new_tokens > 1 and ended > first:
        stats.tokens_per_s = (stats.new_tokens - 1) / (ended - first)
    if stop.is_set():
        stats.stop_reason = STOP_STOPPED
    elif hit.is_set():
        stats.stop_reason = STOP_STRING
    elif stats.new_tokens >= max_new:
        stats.stop_reason = STOP_MAX
    else:
        stats.stop_reason = STOP_EOS
    yield stats


def _until_stop(
    chunks: Iterator[str], stops: Sequence[str], on_hit: Callable[[], Any]
) -> Iterator[str]:
    """The chunks up to the first stop string, holding back what may begin one."""
    text, sent, keep = "", 0, max(len(s) for s in stops) - 1
    for chunk in chunks:
        text += chunk
        found = [
            i for i in (text.find(s, max(0, sent - keep)) for s in stops) if i >= 0
        ]
        if found:
            on_hit()
            if min(found) > sent:
                yield text[sent : min(found)]
            for _ in chunks:  # let the generation end; it stops within a token
                pass
            return
        safe = len(text) - keep
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if len(text) > sent:
        yield text[sent:]


def _penalties(prompt_tokens: int, presence: float, frequency: float) -> Any:
    """A LogitsProcessorList with OpenAI's presence and frequency penalties."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Penalties(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            answer = input_ids[:, prompt_tokens:]
            if answer.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores)
            counts.scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores)

    return LogitsProcessorList([_Penalties()])


def generate_text(
    loaded: LoadedModel,
    messages_or_prompt: str | Sequence[Message],
    settings: GenerationSettings | None = None,
    raw: bool = False,
) -> tuple[str, GenerationStats]:
    """The whole answer and its stats (a convenience over `stream`)."""
    chunks: list[str] = []
    stats = GenerationStats()
    for item in stream(loaded, messages_or_prompt, settings, raw=raw):
        if isinstance(item, GenerationStats):
            stats = item
        else:
            chunks.append(item)
    return "".join(chunks), stats


# ---------------------------------------------------------------------------
# The generation queue: one loaded model, many callers (the chat, server requests).


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
