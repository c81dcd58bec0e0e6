"""Where models come from: the embedded default, a local folder, the HF cache, a hub id."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core import hubclient
from core.errors import ModelNotFoundError
from core.model import default_model
from core.model.files import folder_size, safetensors_whole

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


def scan_cache() -> list[ModelRef]:
    """Causal LMs in the user's Hugging Face cache, newest first; [] when there is none."""
    try:
        from huggingface_hub import constants, scan_cache_dir

        # The module attribute, read now: scan_cache_dir's own default is the value
        # copied when huggingface_hub was first imported.
        info = scan_cache_dir(constants.HF_HUB_CACHE)
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
    hubclient.configure()
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
    hubclient.configure()
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=timeout)
        return True
    except Exception as exc:
        logger.debug("hub not reachable for %s: %s", repo_id, exc)
        return False


# -- where the config comes from --


@dataclass
class ConfigSource:
    """config.json of a model, as a dict, with where it came from."""

    name: str
    raw: dict[str, Any]
    path: Path | None = None

    @property
    def key(self) -> str:
        return json.dumps(self.raw, sort_keys=True, default=str)


ModelSpec = str | Path | ModelRef | ConfigSource | dict[str, Any]


def read_source(model: ModelSpec) -> ConfigSource:
    """config.json for 'default', a folder, a config.json file, a hub id or a ModelRef.

    Only config.json is read (for a hub id not in the cache, only it is downloaded):
    what the estimate needs before anything is loaded. `resolve` is the loader's
    stricter twin, which also wants weights and a tokenizer.
    """
    if isinstance(model, ConfigSource):
        return model
    if isinstance(model, dict):
        return ConfigSource(str(model.get("_name_or_path") or "config"), dict(model))
    if isinstance(model, ModelRef):
        if model.path is not None:
            return _folder_source(Path(model.path), model.name)
        return _hub_source(model.repo_id or model.name)
    text = str(model or "").strip()
    if not text:
        raise ModelNotFoundError(
            "no model given", "use 'default', a folder or a hub id"
        )
    if text.lower() == "default":
        return _folder_source(default_model.model_dir(), default_model.DEFAULT_NAME)
    path = Path(text).expanduser()
    if path.is_file():
        return ConfigSource(path.parent.name, _load_json_file(path), path)
    if path.exists() or text.startswith((".", "/", "~")):
        return _folder_source(path, path.name)
    if _HUB_ID.match(text):
        return _hub_source(text)
    return _folder_source(path, path.name)


def _folder_source(path: Path, name: str) -> ConfigSource:
    if not path.is_dir():
        raise ModelNotFoundError(
            f"folder not found: {path}", "check the path, or pick a model from the list"
        )
    return ConfigSource(name, read_config(path), path / "config.json")


def _load_json_file(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelNotFoundError(
            f"{file.name} is not a readable JSON config ({exc})".splitlines()[0],
            "point at a model folder or its config.json",
        ) from None
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"{file.name} is not a JSON object", "re-download it")
    return data


def _hub_source(repo_id: str) -> ConfigSource:
    hubclient.configure()
    try:
        from huggingface_hub import hf_hub_download

        try:
            file = hf_hub_download(repo_id, "config.json", local_files_only=True)
        except Exception:
            file = hf_hub_download(repo_id, "config.json", etag_timeout=5)
    except Exception as exc:
        raise ModelNotFoundError(
            f"config.json of {repo_id} is not in your cache and the hub cannot be reached",
            "connect once to fetch it (a few KB), or open a local folder",
        ) from exc
    return ConfigSource(repo_id, _load_json_file(Path(file)), Path(file))
