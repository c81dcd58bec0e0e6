"""The ML stack (torch, transformers, bitsandbytes, accelerate), imported once.

transformers resolves its classes lazily, and two threads doing that for the first time
at once can fail with "cannot import name ..." (docs/facts.md, "Lazy imports"). Every job
that needs the stack calls `import_stack()` first: the first caller imports everything
under a lock, later callers return at once.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import threading
import warnings
from collections.abc import Iterator

logger = logging.getLogger(__name__)

# What a load, an estimate or an answer reaches for; resolving the classes imports
# their code, which is what must not happen on two threads at once.
MODULES = (
    "torch",
    "transformers",
    "accelerate",
    "safetensors.torch",
    "transformers.generation",
    "transformers.modeling_utils",
)
NAMES = (
    ("transformers", "AutoConfig"),
    ("transformers", "AutoModelForCausalLM"),
    ("transformers", "AutoTokenizer"),
    ("transformers", "BitsAndBytesConfig"),
    ("transformers", "GenerationConfig"),
    ("transformers", "StoppingCriteria"),
    ("transformers", "StoppingCriteriaList"),
    ("transformers", "TextIteratorStreamer"),
)

_lock = threading.Lock()
_done = False
_bitsandbytes = False

_build_lock = threading.RLock()


@contextlib.contextmanager
def model_build() -> Iterator[None]:
    """Hold while transformers builds a model (`from_pretrained`, `from_config`).

    While it builds, transformers swaps process-global functions for no-ops
    (`PreTrainedModel.tie_weights`, torch's init functions) and puts them back at the
    end. Two builds overlapping on two threads put back each other's no-ops, and every
    later load in the process comes out untied or uninitialised (docs/facts.md). The
    window already runs one build at a time; this lock holds for every caller: the
    server, scripts, the tests.
    """
    with _build_lock:
        yield


def import_stack(bitsandbytes: bool = False) -> None:
    """Import the ML stack once, thread-safely; a no-op after the first call.

    bitsandbytes only when asked (a quantized load): importing it compiles its
    kernels' wrappers and holds ~50 MiB that an unquantized load never uses
    (docs/facts.md, "What a load holds").
    """
    global _done, _bitsandbytes
    if _done and (_bitsandbytes or not bitsandbytes):
        return
    with _lock:
        if not _done:
            quiet_libraries()
            for name in MODULES:
                importlib.import_module(name)
            for module, attr in NAMES:
                getattr(importlib.import_module(module), attr)
            quiet_libraries()
            _freeze_imported()
            _done = True
            logger.debug("ML stack imported")
        if bitsandbytes and not _bitsandbytes:
            quiet_libraries()  # before the import: bitsandbytes logs while importing
            importlib.import_module("bitsandbytes")
            quiet_libraries()
            _freeze_imported()
            _bitsandbytes = True


def _freeze_imported() -> None:
    """Leave the imported libraries' objects out of every later garbage collection.

    torch, transformers and the rest leave about 430,000 objects that live as long
    as the process. A full collection walks them all, holding the GIL for about
    190 ms: the window froze that long when a load ended (it collects to free the
    load's leftovers), and at the collections Python starts on its own. Frozen,
    they are skipped and a collection takes well under a millisecond
    (docs/facts.md, "A full garbage collection froze the window").
    """
    gc.freeze()


def quiet_libraries() -> None:
    """Silence log lines and warnings that mean nothing to our users.

    int8 on the CPU warns "MatMul8bitLt: inputs will be cast" at every call and
    importing bitsandbytes logs a missing optional kernel (docs/facts.md, "Noise").
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for name in ("bitsandbytes.cextension", "bitsandbytes.autograd._functions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"MatMul8bitLt: inputs will be cast")
    warnings.filterwarnings("ignore", message=r".*gemm_4bit_forward.*")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
