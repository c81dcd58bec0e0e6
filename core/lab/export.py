"""Save a quantized model with its tokenizer, verified, atomically, with a model card.

bitsandbytes 0.50.2 corrupts a 4-bit model saved on a CPU after it has run a forward
(docs/facts.md), so an export never saves the model the user has been chatting with: it loads
a fresh copy with the same settings, saves it before any forward, then reloads the saved
folder and compares logits on a fixed input with the model that was saved. Everything is
written into a hidden temporary folder beside the target and renamed into place only
once it is verified, so a failed or cancelled export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import interrupt
from core.errors import CancelledError, ExportError, NibbleError, write_error
from core.model.catalog import ModelRef
from core.settings import LoadOptions, QuantSettings, py_literal
from core.units import format_bytes

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
FreeBytes = Callable[[Path], int]

CARD = "README.md"
RECORD = "nibble-export.json"
VLLM_SCRIPT = "serve-vllm.sh"
RECORD_VERSION = 1
# The fixed input whose logits must match after the round trip.
PROBE_TEXT = "The capital of France is Paris. The quick brown fox jumps over"
# Head room on top of the measured size: filesystem blocks, the card, JSON files.
SPACE_MARGIN = 16 * 1024 * 1024
STEPS = 6


@dataclass
class Verification:
    """How the reloaded folder compares with the model that was saved."""

    identical: bool
    max_abs_diff: float
    tokens: int
    same_argmax: bool

    def summary(self) -> str:
        if self.identical:
            return f"identical logits on {self.tokens} tokens after reload"
        return (
            f"logits differ after reload (max |diff| {self.max_abs_diff:.3g} "
            f"on {self.tokens} tokens)"
        )


@dataclass
class ExportResult:
    """What was written where, how big it is and whether it reloads identically."""

    path: Path
    source: str
    label: str
    settings: dict[str, Any]
    options: dict[str, Any]
    files: dict[str, int]
    size_bytes: int
    true_bytes: int
    verification: Verification
    seconds: float
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_version": RECORD_VERSION,
            "path": str(self.path),
            "source": self.source,
            "label": self.label,
            "settings": self.settings,
            "options": self.options,
            "files": self.files,
            "size_bytes": self.size_bytes,
            "true_bytes": self.true_bytes,
            "verification": {
                "identical": self.verification.identical,
                "max_abs_diff": self.verification.max_abs_diff,
                "tokens": self.verification.tokens,
                "same_argmax": self.verification.same_argmax,
                "probe_text": PROBE_TEXT,
            },
            "seconds": round(self.seconds, 2),
            "environment": self.environment,
        }

    def summary(self) -> str:
        return (
            f"saved {self.label} to {self.path} ({format_bytes(self.size_bytes)}); "
            f"{self.verification.summary()}"
        )


def free_space(path: Path) -> int:
    """Free bytes on the filesystem that holds `path`."""
    return shutil.disk_usage(path).free


def check_target(out: Path, force: bool = False, source: Path | None = None) -> Path:
    """Refuse a target that is a file or a non-empty folder (unless forced).

    Never replaced, forced or not: the `source` model's folder or a folder that holds
    it, the current folder, the home folder and a filesystem root.
    Returns the existing folder the export will be written beside.
    """
    out = Path(out).expanduser()
    refuse_dangerous(out, source)
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise ExportError(
            f"{out} is a file, not a folder",
            "choose a new folder name for the saved model",
        )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(
            f"{out} is not empty",
            "choose a new folder, or overwrite it (--force / Overwrite)",
        )
    parent = out.parent
    if not parent.exists():
        raise ExportError(
            f"the folder {parent} does not exist", "create it first or pick another"
        )
    if not parent.is_dir():
        raise ExportError(f"{parent} is not a folder", "pick a folder to save into")
    if source_inside(out):
        raise ExportError(
            "the target is the model's own folder", "save into a new folder"
        )
    return parent


def refuse_dangerous(out: Path, source: Path | None = None) -> None:
    """Raise ExportError when replacing `out` would destroy what must be kept."""
    target = out.resolve()
    keep: list[tuple[str, Path]] = []
    sources = [source.resolve()] if source is not None else []
    for what, where in (
        ("the current folder", Path.cwd),
        ("your home folder", Path.home),
    ):
        try:
            keep.append((what, where().resolve()))
        except (OSError, RuntimeError):  # no current folder, no HOME: nothing to keep
            pass
    if target == Path(target.anchor):
        raise ExportError(f"{out} is a filesystem root", "save into a new folder")
    for what, path in keep:
        if target == path:
            raise ExportError(
                f"{out} is {what}: saving there would replace it",
                "save into a new folder, e.g. --out ./my-model-nf4",
            )
    for path in sources:
        if target == path:
            raise ExportError(
                f"{out} is the model's own folder", "save into a new folder"
            )
        if target in path.parents:
            raise ExportError(
                f"{out} holds the model being saved ({path})",
                "save into a new folder outside it",
            )


def source_inside(out: Path) -> bool:
    """Whether `out` is a folder Nibble manages itself (the converted default model)."""
    from core.model import default_model

    try:
        return out.resolve() == default_model.model_dir().resolve()
    except OSError:
        return False


def export(
    ref: ModelRef,
    quant: QuantSettings,
    out: Path | str,
    options: LoadOptions | None = None,
    force: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    free_bytes: FreeBytes = free_space,
) -> ExportResult:
    """Load `ref` fresh with `quant`, save it to `out`, verify it, write a model card.

    Parameters
    ----------
    ref, quant, options
        The model and the settings to quantize it with (4-bit or 8-bit).
    out
        The folder to create. An existing empty folder is used; a non-empty one is
        replaced only with `force`.
    progress
        Called with (done, total, message).
    cancel
        Set it to stop; the target is left as it was.
    free_bytes
        How much space the target's filesystem has (a parameter so that a full
        disk can be simulated).

    Raises
    ------
    ExportError
        Refused (not quantized, bad target, too little space) or failed.
    CancelledError
        `cancel` was set.
    """
    from core.model import loader

    options = options or LoadOptions()
    report = progress or (lambda done, total, msg: None)
    started = time.perf_counter()
    if not quant.quantized:
        raise ExportError(
            f"{ref.name} would be saved unquantized: there is nothing to export",
            "pick a 4-bit or 8-bit preset (nf4, nf4-dq, fp4, int8) first",
        )
    if ref.quantized:
        raise ExportError(
            f"{ref.name} is already quantized ({ref.quantized})",
            "it is saved already: copy its folder instead",
        )
    out = Path(out).expanduser().absolute()
    parent = check_target(out, force, ref.path)
    interrupt.sweep_stale(parent)
    tmp = parent / f".{out.name}.nibble-tmp-{os.getpid()}"
    registration = interrupt.temporary(tmp)
    registration.__enter__()
    loaded = None
    try:
        _probe_writable(parent, tmp)
        report(0, STEPS, f"Loading {ref.name} ({quant.label()})")

        def load_progress(done: int, total: int, message: str) -> None:
            if total:
                report(0, STEPS, f"{message} {done}/{total}")

        # Fresh, never-run copy: saving after a forward corrupts 4-bit on the CPU.
        loaded = loader.load(ref, quant, options, load_progress, cancel)
        _check_cancel(cancel)
        needed = loaded.report.true_bytes + _tokenizer_bytes(ref) + SPACE_MARGIN
        available = free_bytes(parent)
        if available < needed:
            raise ExportError(
                f"not enough disk space in {parent}: needs {format_bytes(needed)}, "
                f"{format_bytes(available)} free",
                "free some space or save to another disk",
            )
        report(1, STEPS, "Saving weights and tokenizer")
        _save(loaded, tmp, lambda d, n, m: report(1, STEPS, f"Saving weights {d}/{n}"))
        _check_cancel(cancel)
        report(2, STEPS, "Computing reference logits")
        saved_dtype = _unquantized_dtype(loaded.model)
        expected, tokens = probe_logits(loaded.model, loaded.tokenizer)
        true_bytes = loaded.report.true_bytes
        loader.unload(loaded)
        loaded = None
        _check_cancel(cancel)
        report(3, STEPS, "Reloading the saved folder")
        reload_options = LoadOptions.from_dict(
            {**options.to_dict(), "dtype": saved_dtype}
        )
        verification = verify(tmp, expected, tokens, reload_options, cancel)
        if not verification.identical:
            raise ExportError(
                f"the saved model does not reload identically: {verification.summary()}",
                "report this with `python main.py report`; nothing was written",
            )
        report(4, STEPS, "Writing the model card")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        from core import machine

        result = ExportResult(
            path=out,
            source=ref.repo_id or (str(ref.path) if ref.path else ref.name),
            label=quant.label(),
            settings=quant.to_dict(),
            options=reload_options.to_dict(),
            files=files,
            size_bytes=sum(files.values()),
            true_bytes=true_bytes,
            verification=verification,
            seconds=0.0,
            environment=machine.environment(),
        )
        result.seconds = time.perf_counter() - started
        (tmp / CARD).write_text(model_card(result, ref, quant), encoding="utf-8")
        (tmp / RECORD).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        (tmp / VLLM_SCRIPT).write_text(vllm_script(out.name), encoding="utf-8")
        (tmp / VLLM_SCRIPT).chmod(0o777 & ~_umask())
        _check_cancel(cancel)
        report(5, STEPS, "Moving into place")
        _move_into_place(tmp, out)
    except NibbleError:
        raise
    except Exception as exc:
        mapped = _os_error(exc, parent)
        if mapped is None:
            raise
        raise mapped from exc
    finally:
        if loaded is not None:
            loader.unload(loaded)
        shutil.rmtree(tmp, ignore_errors=True)
        registration.__exit__(None, None, None)
    report(STEPS, STEPS, f"Saved to {out}")
    logger.info("%s", result.summary())
    return result


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("Export cancelled")


def _probe_writable(parent: Path, tmp: Path) -> None:
    """Create the temporary folder now, so a read-only target fails before loading."""
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / ".probe").write_bytes(b"")
        (tmp / ".probe").unlink()
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(exc, parent) or exc from exc


def _os_error(exc: Exception, parent: Path) -> ExportError | None:
    """A full disk or an unwritable folder as an ExportError (None: not a write error).

    safetensors reports a failed write as its own error type with the OS error's
    text, so the text is read too.
    """
    mapped = write_error(exc, parent)
    if mapped is None:
        return None
    if "ran out of space" in mapped.message:
        return ExportError(
            f"the disk holding {parent} ran full while saving",
            "free some space or save to another disk; nothing was kept",
        )
    if "permission denied" in mapped.message:
        return ExportError(
            f"cannot write to {parent}: it is read-only to you",
            "choose a folder you can write to",
        )
    return ExportError(mapped.message, mapped.hint)


def _tokenizer_bytes(ref: ModelRef) -> int:
    if ref.path is None or not ref.path.is_dir():
        return 0
    return sum(
        p.stat().st_size
        for p in ref.path.iterdir()
        if p.is_file() and not p.name.endswith((".safetensors", ".bin"))
    )


def _save(loaded: Any, tmp: Path, progress: Progress) -> None:
    import warnings

    from core.model.loader import _progress_hook, _Reporter

    # The shard bar goes to our progress instead of the terminal.
    with _progress_hook(_Reporter(progress, None)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.model.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
    # safetensors writes its file 0600; a saved model is meant to be shared.
    mode = 0o666 & ~_umask()
    for file in tmp.iterdir():
        if file.is_file():
            file.chmod(mode)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _unquantized_dtype(model: Any) -> str:
    """The dtype the unquantized parts were loaded in ('float32', ...)."""
    import torch

    for p in model.parameters():
        if p.dtype in (torch.float32, torch.bfloat16, torch.float16):
            return str(p.dtype).removeprefix("torch.")
    return "float32"


def probe_logits(model: Any, tokenizer: Any) -> tuple[Any, int]:
    """Logits of the fixed probe text, on the CPU, and how many tokens it has."""
    import torch

    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits.float().cpu()
    return logits, int(ids.shape[1])


def verify(
    folder: Path,
    expected: Any,
    tokens: int,
    options: LoadOptions,
    cancel: threading.Event | None = None,
) -> Verification:
    """Reload `folder` as it is (already quantized) and compare logits with `expected`."""
    import torch

    from core.model import catalog, loader

    ref = catalog.folder_ref(folder, name=folder.name)
    reloaded = loader.load(ref, QuantSettings(), options, cancel=cancel)
    try:
        if reloaded.report.quantized_count == 0:
            raise ExportError(
                "the saved folder reloads without any quantized layer",
                "report this with `python main.py report`; nothing was written",
            )
        got, _ = probe_logits(reloaded.model, reloaded.tokenizer)
    finally:
        loader.unload(reloaded)
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else 1e9
    return Verification(
        identical=bool(got.shape == expected.shape and torch.equal(got, expected)),
        max_abs_diff=diff,
        tokens=tokens,
        same_argmax=bool(
            got.shape == expected.shape
            and torch.equal(got.argmax(-1), expected.argmax(-1))
        ),
    )


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is swapped out first, then removed."""
    old = out.parent / f".{out.name}.nibble-old-{os.getpid()}"
    if out.is_symlink():
        out.rename(old)
    elif out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if (old.exists() or old.is_symlink()) and not out.exists():
            old.rename(out)
        raise
    if old.is_symlink():  # a link is replaced by the folder; what it pointed to stays
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def load_code(path: Path, options: dict[str, Any]) -> str:
    """The exact Python that loads an exported folder (its config holds the settings)."""
    opts = LoadOptions.from_dict(options)
    return QuantSettings().to_python(str(path), opts)


def model_card(result: ExportResult, ref: ModelRef, quant: QuantSettings) -> str:
    """A short README.md: source, settings, environment, true size, code to load it."""
    env = result.environment
    packages = env.get("packages", {})
    from core.lab.report import HUB_IDS

    base = HUB_IDS.get(ref.name) if ref.kind == "default" else ref.repo_id
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if base:
        front.append(f"base_model: {base}")
    front += ["tags:", "- bitsandbytes", f"- {quant.label()}", "- nibble", "---", ""]
    bits = "4-bit" if quant.load_in_4bit else "8-bit"
    lines = [
        *front,
        f"# {ref.name} · {quant.label()}",
        "",
        f"{ref.name} quantized to {bits} ({quant.label()}) with bitsandbytes and saved "
        "by Nibble.",
        "",
        "## Source",
        "",
        f"- Model: {base or ref.name}",
        f"- From: {result.source}",
        "",
        "## Settings",
        "",
        "```python",
        "BitsAndBytesConfig(",
        *[f"    {line}" for line in quant.python_lines()],
        ")",
        "```",
        "",
        f"Unquantized parts are stored as {result.options.get('dtype', 'float32')}.",
        "",
        "## Size",
        "",
        f"- In memory: {format_bytes(result.true_bytes)} ({result.true_bytes:,} bytes, "
        "weights, buffers and quantization state)",
        f"- On disk: {format_bytes(result.size_bytes)} ({result.size_bytes:,} bytes, "
        "weights and tokenizer)",
        "",
        "## Verified",
        "",
        f"Reloaded after saving: {result.verification.summary()} "
        f"(probe text {py_literal(PROBE_TEXT)}).",
        "",
        "## Load it",
        "",
        "The quantization settings are stored in `config.json`, so no "
        "`BitsAndBytesConfig` is needed:",
        "",
        "```python",
        load_code(result.path, result.options).rstrip(),
        "```",
        "",
        "Or in Nibble: `python main.py generate "
        f"{py_literal(str(result.path))} --prompt 'Hello'`.",
        "",
        "## Environment",
        "",
        f"- Python {env.get('python', '?')} on {env.get('platform', '?')}",
        *[f"- {name} {version}" for name, version in packages.items() if version],
        "",
    ]
    return "\n".join(lines)


def vllm_script(name: str) -> str:
    """serve-vllm.sh: the same OpenAI API from vLLM, for more clients or GPUs."""
    return f"""#!/usr/bin/env bash
# Serve this folder with vLLM: the same OpenAI API as `nibble serve`, so clients
# change only the base URL (http://HOST:PORT/v1), for more users or several GPUs.
#
#   ./serve-vllm.sh                 one GPU
#   GPUS=2 ./serve-vllm.sh          two GPUs, pipeline parallel
#   PORT=9000 ./serve-vllm.sh --max-model-len 4096   (extra flags go to vLLM)
#
# No --quantization flag: vLLM reads the pre-quantized bitsandbytes settings from
# quantization_config in config.json. Several GPUs use --pipeline-parallel-size:
# vLLM refuses tensor parallelism for pre-quantized bitsandbytes checkpoints. For
# tensor parallelism, serve the original fp16 model and let vLLM quantize it:
#   vllm serve SOURCE --quantization bitsandbytes --tensor-parallel-size N
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
gpus="${{GPUS:-1}}"
args=(serve "$here" --served-model-name {shlex.quote(name)} --port "${{PORT:-8000}}")
if [ "$gpus" -gt 1 ]; then
    args+=(--pipeline-parallel-size "$gpus")
fi
exec vllm "${{args[@]}}" "$@"
"""


def read_record(folder: Path) -> dict[str, Any] | None:
    """The export record of a folder Nibble saved, or None."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((Path(folder) / RECORD).read_text())
        if isinstance(data, dict):
            return data
    return None
