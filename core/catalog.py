"""Where models come from: the embedded default, a local folder, the HF cache, a hub id."""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core import default_model
from core.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

Kind = Literal["default", "folder", "cache", "hub"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_ENCODER_ONLY = {
    "bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "rembert",
    "megatron-bert", "roberta-prelayernorm", "xmod", "data2vec-text", "distilbert",
    "deberta", "deberta-v2", "albert", "mpnet", "modernbert",
}  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "tokenizer_config.json",
    "spiece.model",
)
PICKLE_WARNING = (
    "weights are pickled .bin files, which can run code when loaded: "
    "only open folders you trust"
)


@dataclass
class ModelRef:
    """A model the loader can open, with what the picker shows about it."""

    kind: Kind
    name: str
    path: Path | None = None
    repo_id: str | None = None
    size_bytes: int | None = None
    quantized: str | None = None  # e.g. "bitsandbytes 4-bit" when already quantized
    warnings: list[str] = field(default_factory=list)

    @property
    def display(self) -> str:
        return "Default: " + self.name if self.kind == "default" else self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "repo_id": self.repo_id,
            "size_bytes": self.size_bytes,
            "quantized": self.quantized,
            "warnings": list(self.warnings),
        }


def default_ref() -> ModelRef:
    """The embedded default (converted on first load if needed)."""
    path = default_model.model_dir()
    size = folder_size(path) if default_model.is_ready(path) else None
    return ModelRef("default", default_model.DEFAULT_NAME, path=path, size_bytes=size)


def resolve(text: str) -> ModelRef:
    """Turn what the user typed ('default', a folder, a hub id) into a ModelRef."""
    text = (text or "").strip()
    if not text:
        raise ModelNotFoundError(
            "no model given", "use 'default', a folder or a hub id"
        )
    if text.lower() == "default":
        return default_ref()
    path = Path(text).expanduser()
    looks_like_path = text.startswith((".", "/", "~")) or path.exists() or "\\" in text
    if looks_like_path or not _HUB_ID.match(text):
        return folder_ref(path)
    return hub_ref(text)


def folder_ref(path: Path, kind: Kind = "folder", name: str | None = None) -> ModelRef:
    """Check a local folder holds a causal LM with weights and a tokenizer."""
    if not path.exists():
        raise ModelNotFoundError(
            f"folder not found: {path}", "check the path, or pick a model from the list"
        )
    if not path.is_dir():
        raise ModelNotFoundError(
            f"{path} is a file, not a model folder",
            "pick the folder that holds config.json",
        )
    config = read_config(path)
    check_causal(config, path)
    warnings: list[str] = []
    safetensors = sorted(path.glob("*.safetensors"))
    bins = sorted(path.glob("*.bin"))
    if safetensors:
        for file in safetensors:
            if not safetensors_whole(file):
                raise ModelNotFoundError(
                    f"{file.name} is damaged or truncated",
                    "download or save the model again",
                )
    elif bins:
        warnings.append(PICKLE_WARNING)
    else:
        raise ModelNotFoundError(
            f"no weights in {path} (no .safetensors or .bin files)",
            "a model folder needs config.json plus its weight files",
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelNotFoundError(
            f"no tokenizer in {path}",
            "copy tokenizer.json / tokenizer_config.json from the original model",
        )
    return ModelRef(
        kind,
        name or path.name,
        path=path,
        size_bytes=folder_size(path),
        quantized=quantized_label(config),
        warnings=warnings,
    )


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict, or a clear error."""
    file = path / "config.json"
    if not file.is_file():
        raise ModelNotFoundError(
            f"no config.json in {path}",
            "pick the folder that holds the model's config.json",
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelNotFoundError(
            f"config.json in {path} is corrupt ({exc})".splitlines()[0],
            "download or save the model again",
        ) from None
    if not isinstance(config, dict):
        raise ModelNotFoundError(
            f"config.json in {path} is not an object", "re-download it"
        )
    return config


def check_causal(config: dict[str, Any], where: Path | str) -> None:
    """Raise unless the config describes a causal (decoder-only) language model."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type", "")
    if archs:
        if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
            return
        raise ModelNotFoundError(
            f"{Path(str(where)).name} is not a causal language model ({', '.join(archs)})",
            "Nibble runs text-generation models such as Llama, Qwen, Mistral or GPT-2",
        )
    if not model_type or (model_type in _ENCODER_ONLY and not config.get("is_decoder")):
        raise ModelNotFoundError(
            f"{Path(str(where)).name} is not a causal language model "
            f"(model_type {model_type or 'missing'!s})",
            "Nibble runs text-generation models such as Llama, Qwen, Mistral or GPT-2",
        )
    if config.get("is_encoder_decoder"):
        raise ModelNotFoundError(
            f"{Path(str(where)).name} is an encoder-decoder model, not a causal language model",
            "Nibble runs decoder-only text-generation models",
        )


def quantized_label(config: dict[str, Any]) -> str | None:
    """'bitsandbytes 4-bit', 'gptq'... when config.json says the weights are quantized."""
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method", "quantized"))
    if method == "bitsandbytes":
        if qc.get("load_in_4bit"):
            return f"bitsandbytes 4-bit ({qc.get('bnb_4bit_quant_type', 'fp4')})"
        if qc.get("load_in_8bit"):
            return "bitsandbytes 8-bit"
    return method


def safetensors_whole(file: Path) -> bool:
    """The header parses and the data section ends exactly at the end of the file."""
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size:
                return False
            header = json.loads(fh.read(header_len))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
        return 8 + header_len + end == size
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def folder_size(path: Path) -> int:
    """Bytes on disk under `path` (links followed once, as the HF cache uses them)."""
    total = 0
    for file in path.rglob("*"):
        try:
            if file.is_file():
                total += file.stat().st_size
        except OSError:
            continue
    return total


def scan_cache() -> list[ModelRef]:
    """Causal LMs in the user's Hugging Face cache, newest first; [] when there is none."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except (
        Exception
    ) as exc:  # no cache dir, unreadable cache: an empty list, not a crash
        logger.debug("no HF cache: %s", exc)
        return []
    refs: list[ModelRef] = []
    for repo in sorted(info.repos, key=lambda r: r.last_modified, reverse=True):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: r.last_modified)
        snapshot = Path(revision.snapshot_path)
        try:
            config = read_config(snapshot)
            check_causal(config, repo.repo_id)
        except ModelNotFoundError:
            continue
        refs.append(
            ModelRef(
                "cache",
                repo.repo_id,
                path=snapshot,
                repo_id=repo.repo_id,
                size_bytes=repo.size_on_disk,
                quantized=quantized_label(config),
            )
        )
    return refs


def hub_ref(repo_id: str) -> ModelRef:
    """A hub id: the cached snapshot when there is one, else the hub (which must answer)."""
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
        return folder_ref(snapshot, kind="cache", name=repo_id)
    except ModelNotFoundError:
        raise
    except Exception as exc:
        logger.debug("%s not in cache: %s", repo_id, exc)
    if not hub_reachable(repo_id):
        raise ModelNotFoundError(
            f"{repo_id} is not in your Hugging Face cache and the hub cannot be reached",
            "connect to the internet once to download it, or open a local folder",
        )
    return ModelRef("hub", repo_id, repo_id=repo_id)


def hub_reachable(repo_id: str, timeout: float = 5.0) -> bool:
    """Whether the hub answers for `repo_id` (False offline, or for an unknown repo)."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=timeout)
        return True
    except Exception as exc:
        logger.debug("hub not reachable for %s: %s", repo_id, exc)
        return False
