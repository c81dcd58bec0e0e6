"""Get models from the Hugging Face hub: search, and a plan before the first weight byte.

Everything goes through `huggingface_hub`'s own client (HfApi, hf_hub_download) and the
standard HF cache, so other tools reuse what Nibble downloads. A plan fetches only
metadata and config.json (plus a weight index for sharded repos) and pins the commit;
core/hub/download.py then fetches the files, resumably. A token (HF_TOKEN or
`hf auth login`) is used by the client and never printed or logged here; `explain` turns
what the client raises into one line and a hint.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import hubclient
from core.errors import ModelNotFoundError, NibbleError, SettingsError
from core.model.catalog import (
    PICKLE_WARNING,
    TOKENIZER_FILES,
    check_causal,
    quantized_label,
)
from core.units import format_bytes

logger = logging.getLogger(__name__)

TEXT_GENERATION = "text-generation"
# Files a transformers load reads besides the weights (when the repo has them).
SUPPORT_FILES = (
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Formats this app cannot load (bitsandbytes loads from full-precision or bnb weights).
UNLOADABLE = {"gptq": "GPTQ", "awq": "AWQ", "gguf": "GGUF"}


class HubError(NibbleError):
    """The hub refused or could not answer (gated, private, missing, offline)."""


class HubOfflineError(HubError):
    """No network, or HF_HUB_OFFLINE is set."""


class DiskFullError(NibbleError):
    """The download does not fit on the disk that holds the HF cache."""


# -- search --


@dataclass
class SearchResult:
    """One hub model as the search list shows it."""

    repo_id: str
    downloads: int | None = None
    likes: int | None = None
    last_modified: str | None = None
    gated: str | None = None  # "auto" / "manual" when the terms must be accepted
    parameters: int | None = None
    dtype: str | None = None
    quantized: str | None = None  # "bitsandbytes", "GPTQ", "AWQ", "GGUF only"
    loadable: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


MAX_SEARCH_RESULTS = 1000


def search(text: str, limit: int = 20) -> list[SearchResult]:
    """Causal LMs on the hub matching `text`, most downloaded first."""
    from huggingface_hub import HfApi

    if (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not (1 <= limit <= MAX_SEARCH_RESULTS)
    ):
        raise SettingsError(
            f"a search limit of {limit!r} is not valid",
            f"ask for 1 to {MAX_SEARCH_RESULTS} results",
        )
    check_online()
    try:
        models = HfApi().list_models(
            search=text.strip() or None,
            pipeline_tag=TEXT_GENERATION,
            sort="downloads",
            limit=limit,
            expand=[
                "downloads",
                "likes",
                "lastModified",
                "gated",
                "safetensors",
                "tags",
                "library_name",
                "pipeline_tag",
            ],
        )
        return [_search_result(m) for m in models]
    except Exception as exc:
        raise explain(exc, "the hub search") from None


def _search_result(info: Any) -> SearchResult:
    tags = [str(t).lower() for t in (getattr(info, "tags", None) or [])]
    library = str(getattr(info, "library_name", None) or "").lower()
    safetensors = getattr(info, "safetensors", None)
    parameters = dtype = None
    if safetensors:
        counts = dict(safetensors.parameters or {})
        parameters = int(safetensors.total) if safetensors.total else None
        dtype = max(counts, key=lambda k: counts[k]) if counts else None
    quantized, loadable, note = quantization_kind(
        tags, library, has_safetensors=bool(safetensors)
    )
    modified = getattr(info, "last_modified", None)
    gated = getattr(info, "gated", None)
    return SearchResult(
        repo_id=info.id,
        downloads=getattr(info, "downloads", None),
        likes=getattr(info, "likes", None),
        last_modified=modified.date().isoformat() if modified else None,
        gated=str(gated) if gated else None,
        parameters=parameters,
        dtype=dtype,
        quantized=quantized,
        loadable=loadable,
        note=note,
    )


def quantization_kind(
    tags: list[str], library: str = "", has_safetensors: bool = True
) -> tuple[str | None, bool, str]:
    """(badge, loadable here, note) from a repo's tags and library."""
    for key, name in UNLOADABLE.items():
        if (
            key == "gguf"
            and (library == "gguf" or "gguf" in tags)
            and not has_safetensors
        ):
            return (
                "GGUF only",
                False,
                "GGUF-only repo: Nibble loads safetensors weights",
            )
        if key != "gguf" and key in tags:
            return (
                name,
                False,
                f"{name} weights cannot load here: Nibble quantizes with bitsandbytes",
            )
    if "bitsandbytes" in tags or "4-bit" in tags or "8-bit" in tags:
        return "bitsandbytes", True, "already quantized with bitsandbytes"
    return None, True, ""


# -- plan --


@dataclass
class PlanFile:
    """One file a load needs, with what is already on disk."""

    name: str
    size: int
    blob: str | None  # the cache's name for it: sha256 (LFS) or git blob id
    cached: bool = False
    partial_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Plan:
    """What a download of one repo at one commit involves, decided before it starts."""

    repo_id: str
    revision: str
    commit: str
    files: list[PlanFile]
    cache_dir: Path
    free_bytes: int | None
    gated: str | None = None
    quantized: str | None = None
    loadable: bool = True
    warnings: list[str] = field(default_factory=list)
    table: Any = None  # core.model.estimate.Table
    estimate_error: str = ""
    ladder: Any = None  # core.model.ladder.Ladder, when the settings do not fit

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def cached_bytes(self) -> int:
        return sum(f.size for f in self.files if f.cached)

    @property
    def partial_bytes(self) -> int:
        return sum(f.partial_bytes for f in self.files if not f.cached)

    @property
    def missing_bytes(self) -> int:
        """Bytes still to fetch (partial files count as fetched)."""
        return self.total_bytes - self.cached_bytes - self.partial_bytes

    @property
    def complete(self) -> bool:
        return all(f.cached for f in self.files)

    @property
    def fits_disk(self) -> bool | None:
        return (
            None if self.free_bytes is None else self.missing_bytes <= self.free_bytes
        )

    @property
    def snapshot(self) -> Path:
        return storage_folder(self.repo_id, self.cache_dir) / "snapshots" / self.commit

    def disk_text(self) -> str:
        free = (
            format_bytes(self.free_bytes) if self.free_bytes is not None else "unknown"
        )
        text = (
            f"{format_bytes(self.total_bytes)} in {len(self.files)} files; "
            f"{format_bytes(self.cached_bytes + self.partial_bytes)} already here, "
            f"{format_bytes(self.missing_bytes)} to fetch; {free} free in {self.cache_dir}"
        )
        if self.fits_disk is False:
            text += " — NOT ENOUGH DISK SPACE"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "files": [f.to_dict() for f in self.files],
            "total_bytes": self.total_bytes,
            "cached_bytes": self.cached_bytes,
            "partial_bytes": self.partial_bytes,
            "missing_bytes": self.missing_bytes,
            "cache_dir": str(self.cache_dir),
            "free_bytes": self.free_bytes,
            "fits_disk": self.fits_disk,
            "gated": self.gated,
            "quantized": self.quantized,
            "loadable": self.loadable,
            "warnings": list(self.warnings),
            "estimate": self.table.to_dict() if self.table is not None else None,
            "estimate_error": self.estimate_error or None,
            "ladder": self.ladder.to_dict() if self.ladder is not None else None,
        }


def cache_dir() -> Path:
    """The HF hub cache (HF_HUB_CACHE / HF_HOME), as huggingface_hub resolves it."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def storage_folder(repo_id: str, cache: Path | None = None) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    return (cache or cache_dir()) / folder


def cached_config(repo_id: str) -> Path | None:
    """config.json of `repo_id` from the cache, for offline use: refs/main's snapshot
    first, else the newest snapshot that has one (a plan fetches it at a commit)."""
    folder = storage_folder(repo_id)
    ref = folder / "refs" / "main"
    if ref.is_file():
        file = folder / "snapshots" / ref.read_text().strip() / "config.json"
        if file.is_file():
            return file
    found = list(folder.glob("snapshots/*/config.json"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def free_disk_bytes(path: Path) -> int | None:
    """Free bytes on the disk holding `path` (its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(shutil.disk_usage(probe).free)
    except OSError:
        return None


def plan(
    repo_id: str,
    revision: str = "main",
    quant: Any = None,
    options: Any = None,
    context: int | None = None,
    batch: int = 1,
    device: Any = None,
) -> Plan:
    """Files, sizes, cache and disk state and the estimate table, before any weight.

    Only metadata and config.json (plus a weight index when the repo is sharded) are
    downloaded; `quant`, `options`, `context`, `batch` and `device` go to the estimate.
    """
    from huggingface_hub import HfApi

    from core.model.estimate import DEFAULT_CONTEXT, check_sizes

    check_sizes(DEFAULT_CONTEXT if context is None else context, batch)
    check_online()
    revision = revision or "main"
    try:
        info = HfApi().model_info(
            repo_id, revision=revision, files_metadata=True, timeout=hubclient.READ_S
        )
    except Exception as exc:
        raise explain(exc, repo_id, revision) from None
    commit = info.sha or revision
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    tags = [str(t).lower() for t in (info.tags or [])]
    quantized, loadable, note = quantization_kind(
        tags,
        str(getattr(info, "library_name", "") or "").lower(),
        has_safetensors=any(n.endswith(".safetensors") for n in siblings),
    )
    if "config.json" not in siblings:
        raise ModelNotFoundError(
            f"{repo_id} has no config.json, so it is not a transformers model"
            + (f" ({note})" if note else ""),
            "pick a repo with safetensors weights and a config.json",
        )
    config = _json_file(repo_id, "config.json", commit)
    check_causal(config, repo_id)
    warnings: list[str] = []
    names = _weight_files(repo_id, commit, siblings, warnings)
    names += [n for n in SUPPORT_FILES if n in siblings and n not in names]
    names += sorted(n for n in siblings if "/" not in n and n.endswith(".py"))
    label = quantized_label(config)
    if label:
        quantized = label
        method = str((config.get("quantization_config") or {}).get("quant_method", ""))
        if method.lower() in UNLOADABLE:
            loadable = False
            note = f"{UNLOADABLE[method.lower()]} weights cannot load here: Nibble quantizes with bitsandbytes"
    if note and not loadable:
        warnings.insert(0, note)
    cache = cache_dir()
    files = [_plan_file(repo_id, siblings[n], cache) for n in dict.fromkeys(names)]
    result = Plan(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=files,
        cache_dir=cache,
        free_bytes=free_disk_bytes(cache),
        gated=str(info.gated) if info.gated else None,
        quantized=quantized,
        loadable=loadable,
        warnings=warnings,
    )
    _add_estimate(result, config, quant, options, context, batch, device)
    return result


def _weight_files(
    repo_id: str, commit: str, siblings: dict[str, Any], warnings: list[str]
) -> list[str]:
    """Safetensors weights (the index's shards when sharded); .bin only as a last resort."""
    root = [n for n in siblings if "/" not in n]
    for index, suffix in ((SAFETENSORS_INDEX, ".safetensors"), (BIN_INDEX, ".bin")):
        if index in siblings:
            shards = sorted(
                set(_json_file(repo_id, index, commit).get("weight_map", {}).values())
            )
            if suffix == ".bin":
                warnings.append(PICKLE_WARNING)
            return [index, *shards]
        if suffix == ".safetensors":
            if "model.safetensors" in siblings:
                return ["model.safetensors"]
            # "consolidated.safetensors" is Mistral's duplicate of the same weights.
            found = sorted(
                n
                for n in root
                if n.endswith(suffix) and not n.startswith("consolidated")
            )
            if found:
                return found
    bins = sorted(
        n for n in root if n.startswith("pytorch_model") and n.endswith(".bin")
    )
    if bins:
        warnings.append(PICKLE_WARNING)
        return bins
    raise ModelNotFoundError(
        f"{repo_id} has no safetensors or PyTorch weights Nibble can load",
        "GGUF, ONNX, TensorFlow and Flax files are not loaded here; pick another repo",
    )


def _plan_file(repo_id: str, sibling: Any, cache: Path) -> PlanFile:
    lfs = sibling.lfs
    blob = lfs.sha256 if lfs else sibling.blob_id
    size = int(lfs.size if lfs else (sibling.size or 0))
    entry = PlanFile(sibling.rfilename, size, blob)
    if blob:
        blobs = storage_folder(repo_id, cache) / "blobs"
        entry.cached = (blobs / blob).is_file()
        partial = blobs / f"{blob}.incomplete"
        if not entry.cached and partial.is_file():
            entry.partial_bytes = min(partial.stat().st_size, size)
    return entry


class QuietBar:
    """A tqdm stand-in: Nibble shows its own progress, not huggingface_hub's bars."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> QuietBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _json_file(repo_id: str, name: str, commit: str) -> dict[str, Any]:
    """A small JSON file of the repo (config, index), through the cache."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, name, revision=commit, tqdm_class=QuietBar)
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ModelNotFoundError(
            f"{name} of {repo_id} is not valid JSON", "the repo is broken; pick another"
        ) from None
    except Exception as exc:
        raise explain(exc, repo_id) from None
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"{name} of {repo_id} is not a JSON object", "")
    return data


def _add_estimate(
    result: Plan,
    config: dict[str, Any],
    quant: Any,
    options: Any,
    context: int | None,
    batch: int,
    device: Any,
) -> None:
    from core.model import estimate

    source = estimate.ConfigSource(
        result.repo_id, config, result.snapshot / "config.json"
    )
    try:
        result.table = estimate.table(
            source,
            quant,
            options,
            context=estimate.DEFAULT_CONTEXT if context is None else context,
            batch=batch,
            device=device,
        )
        current = result.table.current
        if current.verdict == "does not fit":
            from core.model import catalog
            from core.model.ladder import ladder

            result.ladder = ladder(
                source,
                quant,
                options,
                current.context,
                batch,
                result.table.device,
                [r for r in catalog.scan_cache() if r.path is not None],
                current,
            )
    except NibbleError as exc:
        result.estimate_error = exc.message
    except Exception as exc:  # an architecture this transformers cannot build
        logger.debug("no estimate for %s", result.repo_id, exc_info=True)
        result.estimate_error = (
            f"no estimate: {type(exc).__name__}: {exc}".splitlines()[0]
        )


# -- errors --


def check_online() -> None:
    """Raise HubOfflineError when the hub is switched off; set up the client."""
    from huggingface_hub import constants

    hubclient.configure()
    if constants.HF_HUB_OFFLINE:
        raise HubOfflineError(
            "the hub is switched off (HF_HUB_OFFLINE is set)",
            "unset HF_HUB_OFFLINE to search and download; models in your cache still load",
        )


def _token_known() -> bool:
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:
        return False


def explain(
    exc: BaseException, repo_id: str, revision: str | None = None
) -> NibbleError:
    """A one-line message and hint for what huggingface_hub raised; never a token."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, NibbleError):
        return exc
    quiet = _silent_or_garbled(exc, repo_id)
    if quiet is not None:
        return quiet
    login = "log in with `hf auth login` or set HF_TOKEN"
    page = f"{constants.ENDPOINT}/{repo_id}"
    if isinstance(exc, GatedRepoError):
        who = (
            "your token's account has not been granted access"
            if _token_known()
            else "you are not logged in"
        )
        return HubError(
            f"{repo_id} is gated: accept its terms on {page} ({who})",
            f"after accepting, {login} with a token of that account",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(
            f"{repo_id} was not found on the hub, or it is private",
            f"check the name (ORG/NAME); for a private repo {login}",
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(
            f"{repo_id} has no revision {revision!r}",
            "use a branch, tag or commit that exists (default: main)",
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return HubOfflineError(
            "the hub is switched off (HF_HUB_OFFLINE is set)",
            "unset HF_HUB_OFFLINE to search and download; models in your cache still load",
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return HubError(
                f"the hub refused access to {repo_id} ({status})",
                f"accept its terms on {page} if it is gated, then {login}",
            )
        return HubError(
            f"the hub answered {status} for {repo_id}", "try again in a minute"
        )
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return DiskFullError(
            "the disk filled up during the download; what arrived is kept",
            "free some space, then download again to continue",
        )
    if isinstance(exc, OSError) and exc.errno in (
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
    ):
        where = exc.filename or cache_dir()
        why = "is read-only" if exc.errno == errno.EROFS else "cannot be written to"
        return HubError(
            f"the Hugging Face cache {cache_dir()} {why} ({where})",
            "make it writable, or set HF_HUB_CACHE to a folder you can write to",
        )
    if _is_network_error(exc) or isinstance(exc, LocalEntryNotFoundError):
        return HubOfflineError(
            f"the hub cannot be reached ({constants.ENDPOINT})",
            "check your network; a partial download continues where it stopped, "
            "and models in your cache still load",
        )
    return HubError(
        f"{repo_id}: {type(exc).__name__}: {exc}".splitlines()[0],
        "run again with --debug for details",
    )


def _silent_or_garbled(exc: BaseException, repo_id: str) -> NibbleError | None:
    """A hub that stayed silent, or answered with something that is not its API."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError

    if isinstance(exc, httpx2.TimeoutException) and not isinstance(
        exc, (httpx2.ConnectTimeout, httpx2.PoolTimeout)
    ):
        return HubOfflineError(
            f"the hub ({constants.ENDPOINT}) accepted the connection but did not "
            f"answer within {hubclient.READ_S:.0f} s",
            "try again later; if it keeps happening, check HF_ENDPOINT and any proxy",
        )
    if isinstance(exc, HFValidationError):
        return HubError(
            f"{repo_id!r} is not a hub id", "write it as ORG/NAME, e.g. Qwen/Qwen3-0.6B"
        )
    if isinstance(exc, (json.JSONDecodeError, KeyError, TypeError, AttributeError)) or (
        isinstance(exc, ValueError) and "json" in str(exc).lower()
    ):
        return HubError(
            f"the hub answered something that is not its API ({constants.ENDPOINT})",
            "check HF_ENDPOINT and any proxy or captive portal between you and the hub",
        )
    return None


def _is_network_error(exc: BaseException) -> bool:
    try:
        import httpx2 as httpx  # type: ignore[import-not-found]
    except ImportError:  # older huggingface_hub releases use httpx or requests
        try:
            import httpx  # type: ignore[no-redef]
        except ImportError:
            httpx = None  # type: ignore[assignment]
    kinds: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    if httpx is not None:
        kinds += (httpx.TransportError,)
    return isinstance(exc, kinds)
