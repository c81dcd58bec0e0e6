"""When a model does not fit: the ladder of settings that would, each with its cost.

The rungs step down in a fixed order, each one built on the one before:

1. nf4 + double quant (the weights in about 4.1 bits each);
2. a shorter context (a smaller KV cache);
3. CPU offload of the last layers, with llm_int8_enable_fp32_cpu_offload and a
   device map and max_memory computed from the estimate (only with a GPU);
4. a smaller model of the same family, if the catalog has one.

Every rung carries its estimate and verdict on the same device; `--fit auto` (and
the window's one click) applies the first rung that fits. Nothing here loads a
weight: each rung is one more `core.model.estimate.estimate` call.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.errors import NibbleError
from core.model.estimate import DEFAULT_CONTEXT, Estimate, estimate
from core.model.fit import DeviceInfo, propose_offload
from core.settings import PRESETS, LoadOptions, QuantSettings
from core.units import format_bytes

STEPS = ("nf4-dq", "context", "offload", "smaller")
MIN_CONTEXT = 256
_SIZE = re.compile(r"[-_.]?\d+(\.\d+)?[mbk]\b", re.IGNORECASE)


@dataclass
class Rung:
    """One step down: the settings, their estimate and verdict, and what they cost."""

    step: str  # one of STEPS
    title: str
    cost: str
    model: Any  # what to load: the same ModelRef/spec, or the smaller model
    model_name: str
    quant: QuantSettings
    options: LoadOptions
    context: int
    estimate: Estimate

    @property
    def fits(self) -> bool:
        if self.step == "offload":
            return self.estimate.verdict == "fits with CPU offload"
        return self.estimate.verdict == "fits"

    def line(self) -> str:
        need = self.estimate.judged_bytes
        size = format_bytes(need) if need is not None else "unknown size"
        mark = "fits" if self.fits else "does not fit"
        return f"{self.title}: {size}, {mark}; cost: {self.cost}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "title": self.title,
            "cost": self.cost,
            "model": self.model_name,
            "quant": self.quant.label() if self.quant.quantized else "none",
            "device_map": self.options.device_map,
            "max_memory": dict(self.options.max_memory),
            "llm_int8_enable_fp32_cpu_offload": bool(
                self.quant.llm_int8_enable_fp32_cpu_offload
            ),
            "context": self.context,
            "fits": self.fits,
            "estimate": self.estimate.to_dict(),
        }


@dataclass
class Ladder:
    """The current settings' estimate and the rungs below it, in order."""

    current: Estimate
    rungs: list[Rung] = field(default_factory=list)

    @property
    def fits_now(self) -> bool:
        return self.current.verdict in ("fits", "fits with CPU offload", "unknown")

    @property
    def first_fit(self) -> Rung | None:
        return next((r for r in self.rungs if r.fits), None)

    def lines(self) -> list[str]:
        need = self.current.judged_bytes
        size = format_bytes(need) if need is not None else "unknown size"
        out = [f"as asked: {size}, {self.current.verdict_text}"]
        for i, rung in enumerate(self.rungs, 1):
            out.append(f"{i}. {rung.line()}")
        if not self.rungs:
            out.append("no step down applies to these settings")
        return out

    def to_dict(self) -> dict[str, Any]:
        first = self.first_fit
        return {
            "current": self.current.to_dict(),
            "fits_now": self.fits_now,
            "rungs": [r.to_dict() for r in self.rungs],
            "first_fit": first.step if first else None,
        }


def ladder(
    model: Any,
    quant: QuantSettings | None = None,
    options: LoadOptions | None = None,
    context: int = DEFAULT_CONTEXT,
    batch: int = 1,
    device: DeviceInfo | None = None,
    family: Iterable[Any] = (),
    current: Estimate | None = None,
) -> Ladder:
    """The ladder for `model` with these settings on `device`.

    `family` are the other models the catalog has (ModelRefs or specs with a
    `name`); those of the same family and smaller than `model` are the last rung's
    candidates. `current` is the estimate of the settings as asked, when known.
    """
    from core.model.fit import probe_device

    quant = quant or QuantSettings()
    options = options or LoadOptions()
    device = device or probe_device()
    now = current or estimate(model, quant, options, context, batch, device, "current")
    out = Ladder(now)
    if now.judged_bytes is None:
        return out
    name = now.model

    # 1. nf4 + double quant
    dq = PRESETS["nf4-dq"]
    q, o = quant, options
    if not _is_nf4_dq(quant):
        q = dq.quant.replace(
            llm_int8_skip_modules=quant.llm_int8_skip_modules,
        )
        o = dq.load_options(options)
        row = estimate(model, q, o, context, batch, device, "nf4-dq")
        saved = (now.judged_bytes or 0) - (row.judged_bytes or 0)
        out.rungs.append(
            Rung(
                "nf4-dq",
                "nf4 + double quant",
                "weights in about 4.1 bits each (NF4 with quantized block scales): "
                "answers drift a little from full precision; "
                f"saves {format_bytes(max(saved, 0))}",
                model,
                name,
                q,
                o,
                context,
                row,
            )
        )
    last = out.rungs[-1].estimate if out.rungs else now

    # 2. a shorter context: the longest of the halvings that fits, else the shortest
    ctx = context
    if context > MIN_CONTEXT and last.kv_cache_bytes:
        tries = []
        c = context // 2
        while c >= MIN_CONTEXT:
            tries.append(c)
            c //= 2
        tries = tries or [MIN_CONTEXT]
        row = None
        for c in tries:
            row = estimate(model, q, o, c, batch, device, "context")
            if row.verdict == "fits":
                break
        assert row is not None
        ctx = row.context
        out.rungs.append(
            Rung(
                "context",
                f"context of {ctx} tokens",
                f"prompt + answer limited to {ctx} tokens instead of {context}; "
                f"KV cache {format_bytes(row.kv_cache_bytes or 0)} instead of "
                f"{format_bytes(last.kv_cache_bytes or 0)}",
                model,
                name,
                q,
                o,
                ctx,
                row,
            )
        )
        last = row

    # 3. CPU offload of the last layers (only with a GPU to offload from)
    if last.on_gpu and device.gpus:
        split = propose_offload(last.need, device)
        if split is not None:
            o3 = dataclasses.replace(
                o, device_map="auto", max_memory=dict(split.max_memory)
            )
            q3 = q.replace(llm_int8_enable_fp32_cpu_offload=True) if q.quantized else q
            row = estimate(model, q3, o3, ctx, batch, device, "offload")
            # The estimate judges the GPU as a whole; the split is what makes it fit.
            row.verdict, row.offload = "fits with CPU offload", split
            row.verdict_text = (
                f"split with max_memory {split.max_memory}: "
                f"{format_bytes(split.cpu_bytes)} on the CPU"
            )
            out.rungs.append(
                Rung(
                    "offload",
                    f"CPU offload (max_memory {split.max_memory})",
                    f"{format_bytes(split.cpu_bytes)} of layers run on the CPU, "
                    "unquantized: every token is several times slower",
                    model,
                    name,
                    q3,
                    o3,
                    ctx,
                    row,
                )
            )
            last = row

    # 4. a smaller model of the same family
    smaller = _smaller(model, name, family, q, o, ctx, batch, device)
    if smaller is not None:
        out.rungs.append(smaller)
    return out


def _is_nf4_dq(quant: QuantSettings) -> bool:
    return (
        quant.mode == "4bit"
        and quant.bnb_4bit_quant_type == "nf4"
        and bool(quant.bnb_4bit_use_double_quant)
    )


def family_of(name: str) -> str:
    """A model name without its owner and size tokens: 'SmolLM2-135M-Instruct' and
    'HuggingFaceTB/SmolLM2-360M-Instruct' are both 'smollm2-instruct'."""
    base = name.rsplit("/", 1)[-1].lower()
    return _SIZE.sub("", base).strip("-_. ")


def _smaller(
    model: Any,
    name: str,
    family: Iterable[Any],
    quant: QuantSettings,
    options: LoadOptions,
    context: int,
    batch: int,
    device: DeviceInfo,
) -> Rung | None:
    """The largest model of `family` with the same family name that is smaller
    than `model` (its weights, as estimated with the ladder's settings)."""
    own = family_of(name)
    candidates = [o for o in family if _name(o) != name and family_of(_name(o)) == own]
    if not candidates:
        return None
    mine = estimate(model, quant, options, context, batch, device).weights_bytes
    best: tuple[int, Any, Estimate] | None = None
    for other in candidates:
        try:
            row = estimate(other, quant, options, context, batch, device, "smaller")
        except NibbleError:
            continue
        size = row.weights_bytes
        if size is None or mine is None or size >= mine:
            continue
        fits = row.verdict == "fits"
        key = (1 if fits else 0) * 2**62 + size
        if best is None or key > best[0]:
            best = (key, other, row)
    if best is None:
        return None
    _, other, row = best
    other_name = _name(other)
    return Rung(
        "smaller",
        f"smaller model: {other_name}",
        f"a different, smaller model of the same family ({other_name} instead of "
        f"{name}): weaker answers",
        other,
        other_name,
        quant,
        options,
        context,
        row,
    )


def _name(model: Any) -> str:
    if isinstance(model, dict):
        return str(model.get("_name_or_path") or "config")
    return str(getattr(model, "name", model))


def oom_message(what: str, needed: int | None, free: int | None, where: str) -> str:
    """One line naming an out-of-memory: what was needed and what was free."""
    need = format_bytes(needed) if needed is not None else "an unknown amount"
    have = format_bytes(free) if free is not None else "unknown"
    return f"{what} ran out of {where} memory: needs {need}, {have} was free"
