"""The reproducibility report: settings, versions, hardware, estimate vs actual, stats.

One dict (`build`) rendered as JSON or Markdown (`to_markdown`), so a bug report, the
window's Report dialog and `python main.py report` all say the same thing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from core import machine
from core.model import default_model
from core.settings import GenerationSettings, LoadOptions, QuantSettings
from core.units import format_bytes, format_seconds

logger = logging.getLogger(__name__)

REPORT_VERSION = 1


# The hub id of the embedded default, so a copied snippet runs anywhere.
HUB_IDS = {default_model.DEFAULT_NAME: default_model.HUB_ID}


def model_id(ref: Any) -> str:
    """What `from_pretrained` should be given for a ModelRef: hub id, else folder."""
    if ref.repo_id:
        return ref.repo_id
    if ref.kind == "default" and ref.name in HUB_IDS:
        return HUB_IDS[ref.name]
    return str(ref.path) if ref.path else ref.name


def hardware() -> dict[str, Any]:
    """CPU, cores, RAM and GPUs of this machine."""
    torch_info: dict[str, Any] = {}
    if "torch" in sys.modules:  # only when already loaded: importing it takes seconds
        torch = sys.modules["torch"]
        torch_info = {
            "cuda_available": bool(torch.cuda.is_available()),
            "cuda_version": torch.version.cuda,
            "threads": torch.get_num_threads(),
        }
    return {**machine.host(), "gpus": machine.gpus(), "torch": torch_info}


def estimate_bytes(
    ref: Any, quant: QuantSettings, options: LoadOptions | None = None
) -> int | None:
    """What core.model.estimate predicts for weights + quantization state, or None."""
    from core.errors import NibbleError
    from core.model import estimate

    try:
        return estimate.estimate(ref, quant, options or LoadOptions()).model_bytes
    except (NibbleError, OSError, ValueError) as exc:
        logger.debug("no estimate for %s: %s", getattr(ref, "name", ref), exc)
        return None


def build(
    model: str | None = None,
    quant: QuantSettings | None = None,
    options: LoadOptions | None = None,
    load_report: Any = None,
    estimate_bytes: int | None = None,
    generation: GenerationSettings | None = None,
    stats: Any = None,
    load_records: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything needed to reproduce a run, as a JSON-ready dict.

    Parameters
    ----------
    model
        The model's name, hub id or folder.
    quant, options
        The settings it was (or would be) loaded with.
    load_report
        A loader.LoadReport when a model is loaded: the actual footprint.
    estimate_bytes
        What the estimate predicted for these settings, if known.
    generation, stats
        The settings and GenerationStats of the last answer, if any.
    load_records
        This machine's load records (core.store.calibration), only when the user
        asked for them: they stay local otherwise.
    """
    quant = quant or QuantSettings()
    options = options or LoadOptions()
    actual = load_report.true_bytes if load_report is not None else None
    data: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "settings": quant.to_dict(),
        "label": quant.label(),
        "options": options.to_dict(),
        "python": quant.to_python(model or "your-model-name", options),
        "environment": machine.environment(),
        "hardware": hardware(),
        "memory": {
            "estimate_bytes": estimate_bytes,
            "actual_bytes": actual,
            "error_pct": (
                round(100.0 * (estimate_bytes - actual) / actual, 2)
                if estimate_bytes is not None and actual
                else None
            ),
        },
        "load": load_report.to_dict() if load_report is not None else None,
        "generation": generation.to_dict() if generation is not None else None,
        "last_generation": stats.to_dict() if stats is not None else None,
    }
    if load_records is not None:
        data["load_records"] = load_records
    return data


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def to_markdown(data: dict[str, Any]) -> str:
    """The report as Markdown, ready to paste into a bug report."""
    env, hw, mem = data["environment"], data["hardware"], data["memory"]
    out = [
        f"# Nibble report: {data.get('model') or 'no model loaded'}",
        "",
        f"Created {data['created']}.",
        "",
        "## Settings",
        "",
        f"- Quantization: {data['label']}",
    ]
    settings = data["settings"]
    mode = settings.get("mode", "none")
    for name, value in settings.items():
        if name in ("schema_version", "mode"):
            continue
        if mode == "none" and name != "quantize_lm_head":
            continue
        out.append(f"- `{name}` = `{json.dumps(value)}`")
    for name, value in data["options"].items():
        out.append(f"- `{name}` = `{json.dumps(value)}`")
    out += ["", "```python", data["python"].rstrip(), "```", ""]
    out += ["## Memory", ""]
    out.append(f"- Estimate: {_bytes(mem['estimate_bytes'])}")
    out.append(f"- Actual: {_bytes(mem['actual_bytes'])}")
    if mem["error_pct"] is not None:
        out.append(f"- Estimate error: {mem['error_pct']:+.2f} %")
    load = data.get("load")
    if load:
        out.append(f"- Loaded in {format_seconds(load['load_s'])} on {load['device']}")
        modules = load.get("quantized_linear_modules", {})
        out.append(
            "- Quantized layers: "
            + ", ".join(f"{n} × {k}" for k, n in modules.items() if n)
            if any(modules.values())
            else "- Quantized layers: none"
        )
        for warning in load.get("warnings", []):
            out.append(f"- Warning: {warning}")
    out.append("")
    stats = data.get("last_generation")
    if stats:
        out += ["## Last generation", ""]
        tps = stats.get("tokens_per_s")
        ttft = stats.get("ttft_s")
        out.append(
            f"- {stats['new_tokens']} new tokens from {stats['prompt_tokens']} prompt "
            f"tokens, stopped by {stats['stop_reason']}"
        )
        out.append(f"- Speed: {f'{tps:.2f} tok/s' if tps is not None else '—'}")
        out.append(f"- Time to first token: {format_seconds(ttft)}")
        out.append(f"- Total: {format_seconds(stats.get('total_s'))}")
        gen = data.get("generation")
        if gen:
            out.append(
                "- Sampling: "
                + ", ".join(f"{k}={json.dumps(v)}" for k, v in gen.items())
            )
        out.append("")
    if "load_records" in data:
        out += _load_records_markdown(data["load_records"])
    out += ["## Versions", ""]
    out.append(f"- Python {env['python']} on {env['platform']}")
    for name, version in env["packages"].items():
        out.append(f"- {name} {version or 'not installed'}")
    out += ["", "## Hardware", ""]
    out.append(
        f"- CPU: {hw['cpu']} ({hw['cores_physical']} cores, "
        f"{hw['cores_logical']} threads)"
    )
    if hw["cpu_flags"]:
        out.append(f"- CPU features: {', '.join(hw['cpu_flags'])}")
    out.append(f"- RAM: {format_bytes(hw['ram_total'])}")
    if hw["gpus"]:
        for gpu in hw["gpus"]:
            out.append(
                f"- GPU {gpu['index']}: {gpu['name']}, "
                f"{format_bytes(gpu['memory_total'])}, driver {gpu['driver']}"
            )
    else:
        out.append("- GPU: none found (NVML)")
    out.append("")
    return "\n".join(out)


def _load_records_markdown(records: list[dict[str, Any]]) -> list[str]:
    out = ["## Load records", ""]
    if not records:
        return [*out, "No load recorded on this machine yet.", ""]
    out += [
        "| # | when | device | model | preset | estimated peak | actual peak "
        "| actual steady | load time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        gpu = str(r.get("device", "")).startswith("cuda")
        peak = r.get("peak_vram_bytes") if gpu else r.get("peak_ram_bytes")
        steady = r.get("steady_vram_bytes") if gpu else r.get("steady_ram_bytes")
        when = dt.datetime.fromtimestamp(r.get("created") or 0).isoformat(
            sep=" ", timespec="minutes"
        )
        out.append(
            f"| {r.get('id') or ''} | {when} | {r.get('device')} | {r.get('model')} "
            f"| {r.get('label')} | {format_bytes(r.get('estimated_peak_bytes'))} "
            f"| {format_bytes(peak)} | {format_bytes(steady)} "
            f"| {format_seconds(r.get('load_s'))} |"
        )
    return [*out, ""]


def _bytes(n: int | None) -> str:
    return f"{format_bytes(n)} ({n:,} bytes)" if n is not None else "—"


def save(data: dict[str, Any], path: Path | str) -> tuple[Path, Path]:
    """Write PATH.md and PATH.json (any suffix on `path` is replaced)."""
    base = Path(path).expanduser()
    if base.suffix in (".md", ".json"):
        base = base.with_suffix("")
    md, js = base.with_suffix(".md"), base.with_suffix(".json")
    tmp_md = md.with_name(f".{md.name}.tmp-{os.getpid()}")
    tmp_js = js.with_name(f".{js.name}.tmp-{os.getpid()}")
    tmp_md.write_text(to_markdown(data), encoding="utf-8")
    tmp_js.write_text(to_json(data), encoding="utf-8")
    tmp_md.replace(md)
    tmp_js.replace(js)
    return md, js
