"""Fast decode: a static KV cache and a `torch.compile`d decode step.

Prefill stays eager (prompts come in every length); each decode step then runs one
token through a compiled graph shaped by the static cache. The cache length is
bucketed (powers of two from 512 up to the model's context) so a longer answer
recompiles at most once per bucket, and the compiled artefacts live under the user
cache dir (torch inductor's FX graph cache, keyed by the graph, the torch version and
the shapes), in a folder per model and settings, so the next start reuses them;
`FastDecode.cache` says whether it did ("hit") or compiled ("miss").

Where compile fails or cannot run (no C++ compiler on the CPU, a model transformers
will not compile), the model decodes uncompiled and `FastDecode.note` says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Emit = Callable[[int, int, str], None]
FIRST_BUCKET = 512
WARMUP_PROMPT = "Hello"


@dataclass
class FastDecode:
    """What fast decode does for one loaded model."""

    active: bool = False
    """True when decode steps run compiled."""
    note: str = ""
    """Why it is off (or a remark about it); '' when it simply works."""
    compile_s: float = 0.0
    """Seconds the first compile (the load stage) took."""
    cache_dir: str = ""
    buckets: set[int] = field(default_factory=set)
    """Cache lengths compiled so far."""
    context: int | None = None
    cache: str = ""
    """Whether the first compile found its artefacts on disk: "hit", "miss" or ''
    (not compiled, or torch kept no count)."""

    def __bool__(self) -> bool:
        return self.active

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "note": self.note,
            "compile_s": round(self.compile_s, 3),
            "cache": self.cache,
            "cache_dir": self.cache_dir,
            "buckets": sorted(self.buckets),
        }

    def claim(self, needed: int) -> tuple[int, str]:
        """The cache length for an answer of `needed` tokens in all, and the line
        to show when that length is new (its decode step compiles again), else ''.

        transformers keeps the longest static cache it made for the model, so an
        answer that fits in a bucket already compiled reuses that one.
        """
        size = self.bucket(needed)
        largest = max(self.buckets, default=0)
        if size <= largest:
            return largest, ""
        self.buckets.add(size)
        line = f"recompiled the decode step for a {size:,}-token cache"
        logger.info(line)
        return size, line

    def bucket(self, needed: int) -> int:
        """The static cache length for an answer of `needed` tokens in all."""
        size = FIRST_BUCKET
        while size < needed:
            size *= 2
        if self.context is not None:
            size = min(size, max(self.context, needed))
        return size


def cache_root() -> Path:
    """Where compiled decode steps are kept (NIBBLE_CACHE_DIR overrides it)."""
    override = os.environ.get("NIBBLE_CACHE_DIR")
    if override:
        return Path(override) / "compiled"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("nibble", appauthor=False)) / "compiled"


def cache_key(model: Any, settings: dict[str, Any], options: dict[str, Any]) -> str:
    """A folder name for one model + settings + torch version."""
    import torch

    config = model.config.to_json_string(use_diff=False)
    text = json.dumps(
        [config, settings, options, torch.__version__, str(model.device)],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def blocker(model: Any) -> str | None:
    """Why this model cannot decode compiled here, or None."""
    if model.device.type == "cpu":
        from torch._inductor import config
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception:
            names = (
                [c for c in config.cpp.cxx if c]
                if isinstance(config.cpp.cxx, (list, tuple))
                else [config.cpp.cxx]
            )
            return (
                f"no working C++ compiler ({', '.join(map(str, names))}) for "
                "torch.compile on the CPU; install g++ or set CXX"
            )
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"transformers does not compile {type(model).__name__}"
    if getattr(model, "hf_device_map", None):
        devices = set(model.hf_device_map.values())
        if len(devices) > 1 or "disk" in devices:
            return "the model is split across devices"
    return None


def enable(
    model: Any,
    tokenizer: Any,
    key: str,
    context: int | None,
    emit: Emit,
) -> FastDecode:
    """Switch `model` to a static cache + compiled decode step and compile it once.

    `emit` shows the compile as a load stage with its elapsed time and raises
    CancelledError when the load is cancelled: this returns at once and the
    compile, which cannot be interrupted, ends on its own thread and is thrown away
    (`abandoned()` lists it; the next compile waits for it). Any failure of the
    compile leaves the model as it was, decoding plain, with `note` saying why.
    """
    state = FastDecode(context=context)
    why = blocker(model)
    if why is not None:
        state.note = f"fast decode is off: {why}"
        return state
    _wait_for_abandoned(emit)
    import torch
    from transformers import CompileConfig

    # Dynamo keeps compiled graphs per code object, guarded on the model instance,
    # and every model of one class shares its forward's code: after 8 compiled
    # loads in one process (buckets count too) it stops compiling and decodes
    # plain without a word (torch._dynamo.config.recompile_limit). One model
    # decodes compiled at a time, so earlier models' graphs go; the disk cache stays.
    with contextlib.suppress(Exception):
        torch._dynamo.reset()

    folder = cache_root() / key
    folder.mkdir(parents=True, exist_ok=True)
    state.cache_dir = str(folder)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    gen = model.generation_config
    saved = (gen.cache_implementation, gen.compile_config)
    restore_quantizer = _allow_quantized_compile(model)
    config = CompileConfig(
        fullgraph=False,
        dynamic=False,
        mode="reduce-overhead" if model.device.type == "cuda" else "default",
    )
    config._compile_all_devices = True
    gen.cache_implementation = "static"
    gen.compile_config = config
    bucket = state.bucket(64)
    outcome: dict[str, Any] = {}
    before = _cache_counts()

    def run() -> None:
        try:
            _warm(model, tokenizer, bucket)
        except BaseException as exc:
            outcome["error"] = exc

    started = time.perf_counter()
    thread = threading.Thread(target=run, name="nibble-compile", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            elapsed = time.perf_counter() - started
            emit(0, 0, f"Compiling the decode step ({elapsed:.0f} s)")
            thread.join(0.5)
    except BaseException:
        _abandon(thread)
        raise
    error = outcome.get("error")
    if error is not None:
        gen.cache_implementation, gen.compile_config = saved
        restore_quantizer()
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
        for name in ("_compiled_call", "_last_compile_config", "_cache"):
            with contextlib.suppress(AttributeError):
                delattr(model, name)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        state.note = (
            f"fast decode is off: compile failed ({first or type(error).__name__})"
        )
        logger.info("fast decode compile failed", exc_info=error)
        return state
    state.active = True
    state.compile_s = time.perf_counter() - started
    state.buckets.add(bucket)
    state.cache = _cache_outcome(before, _cache_counts())
    if state.cache == "hit":
        emit(0, 0, f"Reused the compiled decode step ({state.compile_s:.0f} s)")
    logger.info(
        "compiled the decode step in %.1f s (%s, cache %s)",
        state.compile_s,
        folder,
        state.cache or "unknown",
    )
    return state


def _warm(model: Any, tokenizer: Any, bucket: int) -> None:
    """Decode a few tokens: the first decode step compiles (or loads from the cache)."""
    import torch

    inputs = tokenizer(WARMUP_PROMPT, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        model.generate(
            **inputs,
            max_new_tokens=3,
            do_sample=False,
            max_cache_len=bucket,
            pad_token_id=tokenizer.eos_token_id,
        )


# A compile cannot be interrupted: a cancelled load returns at once and leaves it to
# end on its own thread (its model is dropped when it does). The next compile waits
# for it first, so two never share the cores or torch's compile state.
_abandoned: list[threading.Thread] = []
_abandoned_lock = threading.Lock()


def _abandon(thread: threading.Thread) -> None:
    with _abandoned_lock:
        _abandoned[:] = [t for t in _abandoned if t.is_alive()] + [thread]


def abandoned() -> list[threading.Thread]:
    """The compiles of cancelled loads that still run."""
    with _abandoned_lock:
        return [t for t in _abandoned if t.is_alive()]


def wait_for_abandoned(timeout: float | None = None) -> bool:
    """Wait until no cancelled load's compile runs; False if one outlived `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in abandoned():
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        thread.join(left)
    return not abandoned()


def _wait_for_abandoned(emit: Emit) -> None:
    started = time.perf_counter()
    while abandoned():
        elapsed = time.perf_counter() - started
        emit(0, 0, f"Waiting for a cancelled compile to end ({elapsed:.0f} s)")
        wait_for_abandoned(0.5)


def _cache_counts() -> tuple[int, int, int]:
    """Torch's compiled-graph cache counts in this process so far: (graphs that
    inductor compiled, graphs it took from the disk, graphs AOT autograd took)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:
        return 0, 0, 0
    return (
        int(counters["inductor"]["fxgraph_cache_miss"]),
        int(counters["inductor"]["fxgraph_cache_hit"]),
        int(counters["aot_autograd"]["autograd_cache_hit"]),
    )


def _cache_outcome(before: tuple[int, ...], after: tuple[int, ...]) -> str:
    """The first compile's cache outcome: "hit" when no graph had to be compiled
    and some came from the disk, "miss" when any was compiled, '' when torch
    counted nothing."""
    compiled, loaded, reused = (a - b for a, b in zip(after, before, strict=True))
    if compiled > 0:
        return "miss"
    return "hit" if loaded > 0 or reused > 0 else ""


def _allow_quantized_compile(model: Any) -> Callable[[], None]:
    """Let transformers compile a bitsandbytes model's decode step.

    transformers refuses to compile any quantized model that does not declare itself
    compileable; bitsandbytes registers its ops with torch.library, so dynamo traces
    around them (graph breaks where it must). Returns how to undo it.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or quantizer.is_compileable:
        return lambda: None
    original = type(quantizer)
    compileable = type(original.__name__, (original,), {"is_compileable": True})
    quantizer.__class__ = compileable

    def undo() -> None:
        quantizer.__class__ = original

    return undo
