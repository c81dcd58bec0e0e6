"""Load a causal LM with QuantSettings + LoadOptions and report what it really costs."""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import checks, memory
from core.errors import CancelledError, LoadError, NibbleError, OutOfMemoryError
from core.model import calibration
from core.model.catalog import ModelRef
from core.settings import LoadOptions, QuantSettings, load_dtype
from core.stack import import_stack, model_build

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
Cancel = threading.Event | Callable[[], bool] | None
_hook_lock = threading.Lock()


@dataclass
class LoadReport:
    """What a load took and what the model really occupies."""

    model: str
    load_s: float
    true_bytes: int
    footprint_bytes: int
    device: str
    device_map: dict[str, str]
    quantized_linear_modules: dict[str, int]
    dtypes: dict[str, int]
    # Of true_bytes, what stays a mapping of the checkpoint file (an unquantized load
    # on the CPU keeps its weights there on purpose: no copy, and the OS may drop
    # and reread the pages); the rest is the process's own memory.
    mapped_bytes: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fast_decode: dict[str, Any] | None = None
    """What fast decode did (FastDecode.to_dict) when the load asked for it."""

    @property
    def quantized_count(self) -> int:
        return sum(self.quantized_linear_modules.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "load_s": round(self.load_s, 3),
            "true_bytes": self.true_bytes,
            "footprint_bytes": self.footprint_bytes,
            "device": self.device,
            "device_map": self.device_map,
            "quantized_linear_modules": self.quantized_linear_modules,
            "dtypes": self.dtypes,
            "mapped_bytes": self.mapped_bytes,
            "warnings": self.warnings,
            **({"fast_decode": self.fast_decode} if self.fast_decode else {}),
        }


@dataclass
class LoadedModel:
    """A model and tokenizer ready to generate, with the report of their load."""

    model: Any
    tokenizer: Any
    report: LoadReport
    ref: ModelRef
    quant: QuantSettings
    options: LoadOptions
    fast_decode: Any = None
    """core.model.fast_decode.FastDecode when the load asked for fast decode."""

    @property
    def device(self) -> Any:
        return self.model.device


def _is_cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class _ProgressBar:
    """A stand-in for transformers' tqdm that reports n/N and honours cancel."""

    def __init__(
        self, iterable: Any, total: int | None, desc: str, owner: _Reporter
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _len(iterable)
        self.desc = desc or "Loading"
        self.n = 0
        self.owner = owner

    def __iter__(self) -> Iterator[Any]:
        self.owner.emit(0, self.total or 0, self.desc)
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.owner.emit(self.n, self.total or 0, self.desc)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None  # set_description, refresh, ...


def _len(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None


class _Reporter:
    def __init__(self, progress: Progress | None, cancel: Cancel) -> None:
        self.progress = progress
        self.cancel = cancel
        self.thread = threading.get_ident()

    def emit(self, done: int, total: int, message: str) -> None:
        # The hook is global: bars opened by other threads are not ours to report.
        if threading.get_ident() != self.thread:
            return
        if _is_cancelled(self.cancel):
            raise CancelledError("Load cancelled")
        if self.progress is not None:
            self.progress(done, total, message)


@contextlib.contextmanager
def _progress_hook(reporter: _Reporter) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    def hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if threading.get_ident() != reporter.thread:
            return factory(*args, **kwargs)
        iterable = args[0] if args else kwargs.get("iterable")
        return _ProgressBar(
            iterable, kwargs.get("total"), kwargs.get("desc", ""), reporter
        )

    with _hook_lock:
        previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        with _hook_lock:
            hf_logging.set_tqdm_hook(previous)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device_map(options: LoadOptions) -> str | dict[str, str]:
    """device_map for from_pretrained; 'auto' means the CPU when there is no CUDA device.

    Whether the device exists is core.checks' question, asked before this.
    """
    if options.device_map == "auto" and not cuda_available():
        return {"": "cpu"}
    return options.device_map_value()


def resolve_dtype(options: LoadOptions, config: Any, on_gpu: bool) -> Any:
    """The torch dtype of unquantized parts (core.settings.load_dtype's rule)."""
    import torch

    wanted = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return getattr(torch, load_dtype(options, wanted, on_gpu))


def load(
    ref: ModelRef,
    quant: QuantSettings | None = None,
    options: LoadOptions | None = None,
    progress: Progress | None = None,
    cancel: Cancel = None,
) -> LoadedModel:
    """Load `ref` with these settings.

    Parameters
    ----------
    ref
        What to load (see core.model.catalog.resolve).
    quant, options
        Quantization and placement; defaults are full precision on the best device.
    progress
        Called with (done, total, message) from the loading thread.
    cancel
        An Event (or callable) checked at every weight; a load that cannot be
        interrupted is freed as soon as it returns and CancelledError is raised.
    """
    quant = quant or QuantSettings()
    options = options or LoadOptions()
    checks.refuse(checks.check(quant, options))
    return _in_fresh_thread(ref, quant, options, progress, cancel)


def _in_fresh_thread(
    ref: ModelRef,
    quant: QuantSettings,
    options: LoadOptions,
    progress: Progress | None,
    cancel: Cancel,
) -> LoadedModel:
    """Run the load in a new thread that ends with it; progress still runs here.

    torch and bitsandbytes' CPU kernels share one OpenMP runtime whose thread pools
    live as long as the thread that started them. Once a long-lived thread (the main
    thread of a script) holds one, libgomp counts more threads than cores, throttles
    its spinning, and generation on any other thread runs about 40% slower (nf4 on the
    default model: 27 instead of 45 tok/s). A short-lived thread takes its pool along.
    Each progress call is handed back to the calling thread and waited for, so
    callers see the same calls, in the same thread, as if the load ran there.
    """
    calls: queue.SimpleQueue[tuple[int, int, str] | None] = queue.SimpleQueue()
    acks: queue.SimpleQueue[bool] = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def relay(done: int, total: int, message: str) -> None:
        calls.put((done, total, message))
        if not acks.get():  # the caller's progress callback raised
            raise CancelledError("Load cancelled")

    def target() -> None:
        try:
            outcome["value"] = _load(ref, quant, options, relay, cancel)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            calls.put(None)

    thread = threading.Thread(target=target, name="nibble-load", daemon=True)
    thread.start()
    failure: BaseException | None = None
    while (call := calls.get()) is not None:
        if failure is None and progress is not None:
            try:
                progress(*call)
            except BaseException as exc:
                failure = exc
        acks.put(failure is None)
    thread.join()
    if failure is not None:
        if "value" in outcome:
            unload(outcome["value"])
        raise failure
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _load(
    ref: ModelRef,
    quant: QuantSettings,
    options: LoadOptions,
    progress: Progress | None,
    cancel: Cancel,
) -> LoadedModel:
    reporter = _Reporter(progress, cancel)
    started = time.perf_counter()
    reporter.emit(0, 0, f"Preparing {ref.name}")
    memory.fix_mmap_threshold()  # from here on (docs/facts.md, "What a load holds")
    path = _local_path(ref, reporter)
    import_stack(bitsandbytes=quant.quantized)
    from transformers import AutoConfig, AutoModelForCausalLM

    source = str(path) if path else ref.repo_id
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=options.trust_remote_code
        )
    except Exception as exc:
        raise _explain(exc, ref) from exc
    if getattr(config, "quantization_config", None) is not None and quant.quantized:
        raise LoadError(
            f"{ref.name} is already quantized; it cannot be quantized again",
            "set the mode to none to load it as it is",
        )
    checks.refuse(checks.check(quant, options, checks.probe_machine()))
    device_map = resolve_device_map(options)
    on_gpu = device_map != {"": "cpu"}
    dtype = resolve_dtype(options, config, on_gpu)
    reporter.emit(0, 0, "Loading tokenizer")
    try:
        tokenizer = _tokenizer(source, options.trust_remote_code)
    except Exception as exc:
        raise LoadError(
            f"no usable tokenizer for {ref.name}: {_first_line(exc)}",
            "the folder needs tokenizer.json or tokenizer_config.json and its vocab",
        ) from exc
    memory.trim_heap()  # parsing the tokenizer freed more than the load will need
    # What the estimate says of this load, kept beside what it costs; working it
    # out imports the model's classes, which are the process's memory, not the load's.
    expected = calibration.expect(path or ref, quant, options, on_gpu)
    meter = calibration.meter(on_gpu)
    kwargs: dict[str, Any] = {
        "device_map": device_map,
        "dtype": dtype,
        "trust_remote_code": options.trust_remote_code,
    }
    if quant.quantized:
        kwargs["quantization_config"] = quant.to_bnb_config()
    if options.max_memory:
        kwargs["max_memory"] = options.max_memory_value()
    if options.attn_implementation != "auto":
        kwargs["attn_implementation"] = options.attn_implementation
    model = None
    try:
        with (
            model_build(),
            meter,
            _progress_hook(reporter),
            warnings.catch_warnings(),
            memory.heap_for_loading(),
        ):
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        model.eval()
        if _is_cancelled(cancel):
            raise CancelledError("Load cancelled")
    except CancelledError:
        del model
        free_memory()
        raise
    except Exception as exc:
        del model
        free_memory()
        raise _explain(exc, ref, quant, options) from exc
    if quant.quantized:
        # Only the unquantized rest (embeddings, norms) still points into the
        # checkpoint; the pages the quantization read go back (they would stay
        # resident through the mapping).
        memory.release_checkpoint_pages(model)
    free_memory()
    meter.settle(memory.mapped_bytes(model))
    fast = _fast_decode(model, tokenizer, quant, options, reporter, cancel)
    if fast:  # its warm-up ran the first forward (docs/facts.md, "Decoding wants ...")
        memory.heap_for_decoding()
    elapsed = time.perf_counter() - started
    report = make_report(model, ref, quant, options, elapsed)
    calibration.keep(report, quant, expected, meter, config)
    if fast is not None:
        report.fast_decode = fast.to_dict()
        if fast.note:
            report.warnings.append(fast.note)
    if quant.quantized and report.quantized_count == 0:
        report.warnings.append(
            f"asked for {quant.label()} but no Linear layer was quantized: "
            "the model runs in full precision"
        )
    report.warnings[:0] = ref.warnings
    reporter.emit(1, 1, "Loaded")
    logger.info("loaded %s (%s) in %.1f s", ref.name, quant.label(), elapsed)
    return LoadedModel(model, tokenizer, report, ref, quant, options, fast)


def _fast_decode(
    model: Any,
    tokenizer: Any,
    quant: QuantSettings,
    options: LoadOptions,
    reporter: _Reporter,
    cancel: Cancel,
) -> Any:
    """Compile the decode step when the options ask for it (a stage of the load)."""
    if not options.fast_decode:
        return None
    from core.model import fast_decode

    key = fast_decode.cache_key(model, quant.to_dict(), options.to_dict())
    context = getattr(model.config, "max_position_embeddings", None)
    try:
        return fast_decode.enable(
            model,
            tokenizer,
            key,
            context if isinstance(context, int) else None,
            reporter.emit,
        )
    except CancelledError:
        free_memory()
        raise


_tokenizer_cache: dict[tuple[Any, ...], Any] = {}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def _tokenizer(source: str, trust_remote_code: bool) -> Any:
    """The tokenizer of `source`, reused while its files are unchanged.

    Parsing tokenizer.json holds the GIL for tens of milliseconds (the window's event
    loop stalls meanwhile); reloading the same model with other settings skips it.
    """
    from transformers import AutoTokenizer

    folder = Path(source)
    stamp = None
    if folder.is_dir():  # every file but the weights
        stamp = tuple(
            (p.name, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES
        )
    key = (str(folder), trust_remote_code, stamp)
    if stamp is not None and key in _tokenizer_cache:
        return _tokenizer_cache[key]
    tokenizer = AutoTokenizer.from_pretrained(
        source, trust_remote_code=trust_remote_code
    )
    if stamp is not None:
        _tokenizer_cache.clear()  # the last model's only: tokenizers can be large
        _tokenizer_cache[key] = tokenizer
    return tokenizer


def _local_path(ref: ModelRef, reporter: _Reporter) -> Any:
    if ref.kind == "default":
        from core.model import default_model

        return default_model.ensure(reporter.emit)
    return ref.path


def make_report(
    model: Any,
    ref: ModelRef,
    quant: QuantSettings,
    options: LoadOptions,
    seconds: float,
) -> LoadReport:
    """Measure a loaded model: true bytes, placement, quantized modules, dtypes."""
    device_map = getattr(model, "hf_device_map", None) or {"": str(model.device)}
    devices = sorted({str(v) for v in device_map.values()})
    dtypes: Counter[str] = Counter()
    for p in model.parameters():
        dtypes[str(p.dtype).removeprefix("torch.")] += p.numel()
    return LoadReport(
        model=ref.name,
        load_s=seconds,
        true_bytes=true_bytes(model),
        footprint_bytes=int(model.get_memory_footprint()),
        device=",".join(devices),
        device_map={k or "(all)": str(v) for k, v in device_map.items()},
        quantized_linear_modules=count_quantized(model),
        mapped_bytes=memory.mapped_bytes(model),
        dtypes=dict(dtypes),
        settings=quant.to_dict(),
        options=options.to_dict(),
    )


def count_quantized(model: Any) -> dict[str, int]:
    """How many Linear4bit and Linear8bitLt modules the model holds."""
    counts = {"Linear4bit": 0, "Linear8bitLt": 0}
    for module in model.modules():
        name = type(module).__name__
        if name in counts:
            counts[name] += 1
    return counts


def true_bytes(model: Any) -> int:
    """Parameters + buffers + bitsandbytes quantization state, each tensor counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(tensor: Any) -> None:
        nonlocal total
        if tensor is None or not hasattr(tensor, "untyped_storage"):
            return
        key = (tensor.untyped_storage().data_ptr(), tensor.nbytes)
        if tensor.device.type != "meta" and key in seen:
            return
        seen.add(key)
        total += tensor.nbytes

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        while state is not None:
            for name in ("absmax", "code", "offset"):
                add(getattr(state, name, None))
            state = getattr(state, "state2", None)
        add(getattr(tensor, "SCB", None))
    return total


def unload(loaded: LoadedModel | None) -> None:
    """Drop a model and give its memory back to the system."""
    if loaded is None:
        return
    loaded.model = None
    loaded.tokenizer = None
    free_memory()


def free_memory() -> None:
    """Collect garbage, empty the CUDA cache and return freed heap pages to the OS."""
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    memory.trim_heap()


def _out_of_memory(
    exc: BaseException,
    ref: ModelRef,
    quant: QuantSettings | None,
    options: LoadOptions | None,
) -> LoadError:
    """Name an out-of-memory: what the load needed (the estimate's peak) and what
    was free when it failed (NVML on a GPU, psutil on the CPU)."""
    from core.model.estimate import estimate
    from core.model.fit import probe_device
    from core.model.ladder import oom_message

    cuda = "cuda" in type(exc).__name__.lower() or "CUDA" in str(exc)
    needed = free = None
    with contextlib.suppress(Exception):
        device = probe_device()
        free = device.gpu_free_bytes if cuda else device.ram_available_bytes
        needed = estimate(ref, quant, options, device=device).judged_bytes
    return OutOfMemoryError(
        oom_message(f"loading {ref.name}", needed, free, "GPU" if cuda else "CPU"),
        "pick nf4 + double quant, a shorter context or CPU offload: "
        "python main.py generate ... --fit auto finds the first that fits",
        needed,
        free,
        cuda,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain(
    exc: Exception,
    ref: ModelRef,
    quant: QuantSettings | None = None,
    options: LoadOptions | None = None,
) -> NibbleError:
    """Turn a library exception into a message and hint the user can act on."""
    if isinstance(exc, NibbleError):
        return exc
    text = str(exc)
    name = type(exc).__name__
    if (
        isinstance(exc, MemoryError)
        or "OutOfMemory" in name
        or "out of memory" in text.lower()
        # torch's CPU allocator: "DefaultCPUAllocator: not enough memory: you
        # tried to allocate ..." (a process limit or an exhausted machine)
        or "not enough memory" in text.lower()
        or "cannot allocate memory" in text.lower()
    ):
        return _out_of_memory(exc, ref, quant, options)
    if "deserializ" in text.lower() or (
        "header" in text.lower() and "safetensors" in text
    ):
        return LoadError(
            f"the weights of {ref.name} are damaged ({_first_line(exc)})",
            "download or save the model again",
        )
    if (
        "dispatched on the CPU or the disk" in text
        or "llm_int8_enable_fp32_cpu_offload" in text
    ):
        return LoadError(
            "the model does not fit on the GPU and would be split onto the CPU",
            "turn on llm_int8_enable_fp32_cpu_offload, or free GPU memory",
        )
    lowered = text.lower()
    if "flashattention" in lowered or "flash attention" in lowered:
        return LoadError(
            f"{ref.name} cannot use flash_attention_2 here ({_first_line(exc)})",
            "set Attention to auto or sdpa; flash_attention_2 needs an NVIDIA GPU "
            "and the flash-attn package",
        )
    if "scaled_dot_product_attention" in text or "sdpa" in lowered:
        return LoadError(
            f"{ref.name} does not support sdpa attention",
            "set Attention to auto or eager",
        )
    if (
        "not compiled with cuda" in lowered
        or "no cuda gpus" in lowered
        or "invalid device ordinal" in lowered
    ):
        return LoadError(
            f"the device map asks for a GPU this machine does not have "
            f"({_first_line(exc)})",
            "set Device map to auto or cpu",
        )
    if "trust_remote_code" in text:
        return LoadError(
            f"{ref.name} needs its own code to load",
            "turn on trust_remote_code only if you trust this model's authors",
        )
    if (
        "Unrecognized configuration class" in text
        or "does not recognize this architecture" in text
    ):
        return LoadError(
            f"{ref.name} is not a causal language model transformers knows",
            "update transformers or pick a text-generation model",
        )
    return LoadError(
        f"loading {ref.name} failed: {_first_line(exc)}",
        "try the nf4 preset with Device map auto and Attention auto; if that fails "
        "too, the model's files may not suit transformers (the traceback is under "
        "Details)",
    )
