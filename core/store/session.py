"""The window's last session: model, settings and recent folders as versioned JSON.

The file lives in ``core.paths.config_dir()/session.json``. A file that cannot be read
(bad JSON, wrong types, a newer schema, bad UTF-8, nesting too deep, not a regular file,
too large) never stops Nibble: the defaults are used, the bad file is set aside as
``session.json.bak`` and the caller gets a notice to show. Reading never blocks (a
FIFO is refused, not waited on) and never reads more than MAX_BYTES.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import NibbleError
from core.model.catalog import ModelRef
from core.paths import config_dir
from core.settings import GenerationSettings, LoadOptions, QuantSettings, preset

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILE_NAME = "session.json"
MAX_RECENT = 8
# A session is a few KiB; anything much larger is not one.
MAX_BYTES = 1024 * 1024


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
            isinstance(model, dict)
            and isinstance(model.get("kind"), str)
            and all(
                model.get(key) is None or isinstance(model.get(key), str)
                for key in ("name", "path", "repo_id")
            )
        ):
            raise ValueError("model entry is not valid")
        for key in ("quant", "options", "generation"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise ValueError(f"{key} is not an object")
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
            raw_mode=_flag(data.get("raw_mode", False), "raw_mode"),
            recent_folders=recent[:MAX_RECENT],
        )

    def add_recent(self, folder: str | Path) -> None:
        """Put `folder` first in the recent list (no duplicates, at most MAX_RECENT)."""
        text = str(folder)
        self.recent_folders = [text, *(f for f in self.recent_folders if f != text)]
        del self.recent_folders[MAX_RECENT:]


def _flag(value: Any, name: str) -> bool:
    """A JSON boolean; the strings 'true'/'false' as written by hand, too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} is not true or false")


def read_bounded(path: Path, limit: int = MAX_BYTES) -> str:
    """The file's text, refusing anything but a regular UTF-8 file of `limit` bytes.

    Opened without blocking (a FIFO would wait for a writer forever) and read no
    further than `limit` + 1 bytes (a link to /dev/zero never ends).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"it is larger than {limit // 1024} KiB")
    return b"".join(chunks).decode("utf-8")


def _parse(text: str) -> Session:
    data = json.loads(text)
    # Lone surrogates (\udc80 escapes) would fail at the next save instead.
    json.dumps(data, ensure_ascii=False).encode("utf-8")
    session = Session.from_dict(data)
    ref_from_dict(session.model)  # the window opens this at start
    return session


def session_path() -> Path:
    return config_dir() / FILE_NAME


def load_session(path: Path | None = None) -> tuple[Session, str | None]:
    """The saved session and a notice for the user ('' when all went well).

    A missing file gives the defaults silently. An unreadable one gives the defaults,
    is renamed to ``<name>.bak`` and the notice says so.
    """
    path = path or session_path()
    try:
        return _parse(read_bounded(path)), None
    except FileNotFoundError:
        return Session(), None
    except Exception as exc:  # whatever is wrong with it, the window must start
        if isinstance(exc, NibbleError):
            reason = exc.message
        elif isinstance(exc, RecursionError):
            reason = "it is nested too deeply"
        elif isinstance(exc, UnicodeError):
            reason = "it is not valid UTF-8 text"
        elif isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
        else:
            reason = str(exc) or type(exc).__name__
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
    from core.model import catalog

    if not data or data.get("kind") == "default":
        return catalog.default_ref()
    kind = data.get("kind")
    if kind not in ("folder", "cache", "hub"):
        return catalog.default_ref()
    raw_path = data.get("path")
    if raw_path is not None and not isinstance(raw_path, str):
        raise ValueError("the model's path is not text")
    path = Path(raw_path) if raw_path else None
    return ModelRef(
        kind,
        str(data.get("name") or (path.name if path else data.get("repo_id"))),
        path=path,
        repo_id=data.get("repo_id"),
    )
