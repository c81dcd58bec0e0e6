"""The window's last session: model, settings and recent folders as versioned JSON.

The file lives in ``core.paths.config_dir()/session.json``. A file that cannot be read
(bad JSON, wrong types, a newer schema) never stops Nibble: the defaults are used, the
bad file is kept beside as ``session.json.bak`` and the caller gets a notice to show.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.catalog import ModelRef
from core.errors import NibbleError
from core.paths import config_dir
from core.settings import GenerationSettings, LoadOptions, QuantSettings, preset

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILE_NAME = "session.json"
MAX_RECENT = 8


def default_quant() -> QuantSettings:
    """What a first run starts with: nf4, the best 4-bit choice for LLMs."""
    return preset("nf4").quant


@dataclass
class Session:
    """Everything the window restores on start."""

    model: dict[str, Any] | None = None
    quant: QuantSettings = field(default_factory=default_quant)
    options: LoadOptions = field(default_factory=LoadOptions)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    system_prompt: str = ""
    raw_mode: bool = False
    recent_folders: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        quant = self.quant.to_dict()
        quant.pop("schema_version", None)
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "quant": quant,
            "options": self.options.to_dict(),
            "generation": self.generation.to_dict(),
            "system_prompt": self.system_prompt,
            "raw_mode": self.raw_mode,
            "recent_folders": list(self.recent_folders),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Session:
        """Build from `to_dict` output; raises ValueError/NibbleError when it is bad."""
        if not isinstance(data, dict):
            raise ValueError("the file does not hold an object")
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise ValueError(f"unknown schema version {version!r}")
        model = data.get("model")
        if model is not None and not (
            isinstance(model, dict) and isinstance(model.get("kind"), str)
        ):
            raise ValueError("model entry is not valid")
        recent = data.get("recent_folders", [])
        if not isinstance(recent, list) or not all(isinstance(r, str) for r in recent):
            raise ValueError("recent_folders is not a list of paths")
        system_prompt = data.get("system_prompt", "")
        if not isinstance(system_prompt, str):
            raise ValueError("system_prompt is not text")
        return cls(
            model=model,
            quant=QuantSettings.from_dict(data.get("quant") or {}),
            options=LoadOptions.from_dict(data.get("options") or {}),
            generation=GenerationSettings.from_dict(data.get("generation") or {}),
            system_prompt=system_prompt,
            raw_mode=bool(data.get("raw_mode", False)),
            recent_folders=recent[:MAX_RECENT],
        )

    def add_recent(self, folder: str | Path) -> None:
        """Put `folder` first in the recent list (no duplicates, at most MAX_RECENT)."""
        text = str(folder)
        self.recent_folders = [text, *(f for f in self.recent_folders if f != text)]
        del self.recent_folders[MAX_RECENT:]


def session_path() -> Path:
    return config_dir() / FILE_NAME


def load_session(path: Path | None = None) -> tuple[Session, str | None]:
    """The saved session and a notice for the user ('' when all went well).

    A missing file gives the defaults silently. An unreadable one gives the defaults,
    is renamed to ``<name>.bak`` and the notice says so.
    """
    path = path or session_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Session(), None
    except OSError as exc:
        return Session(), f"Could not read {path}: {exc.strerror}. Using defaults."
    try:
        return Session.from_dict(json.loads(text)), None
    except (ValueError, TypeError, NibbleError) as exc:
        reason = exc.message if isinstance(exc, NibbleError) else str(exc)
        backup = path.with_name(path.name + ".bak")
        try:
            os.replace(path, backup)
        except OSError:
            logger.warning("could not keep a copy of the bad session file %s", path)
            backup = None
        logger.warning("session file %s unreadable: %s", path, reason)
        kept = f" The old file is kept as {backup}." if backup else ""
        return (
            Session(),
            f"The saved session could not be read ({reason.splitlines()[0]}); "
            f"Nibble started from defaults.{kept}",
        )


def save_session(session: Session, path: Path | None = None) -> None:
    """Write the session atomically (a crash never leaves half a file)."""
    path = path or session_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(session.to_dict(), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def ref_to_dict(ref: ModelRef) -> dict[str, Any]:
    """What the session keeps of a ModelRef."""
    return {
        "kind": ref.kind,
        "name": ref.name,
        "path": str(ref.path) if ref.path else None,
        "repo_id": ref.repo_id,
    }


def ref_from_dict(data: dict[str, Any] | None) -> ModelRef:
    """The ModelRef a session names; the embedded default when there is none.

    The folder is not checked here (that would slow the start); loading it reports a
    clear error when it has gone.
    """
    from core import catalog

    if not data or data.get("kind") == "default":
        return catalog.default_ref()
    kind = data.get("kind")
    if kind not in ("folder", "cache", "hub"):
        return catalog.default_ref()
    path = Path(data["path"]) if data.get("path") else None
    return ModelRef(
        kind,
        str(data.get("name") or (path.name if path else data.get("repo_id"))),
        path=path,
        repo_id=data.get("repo_id"),
    )
