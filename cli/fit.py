"""--fit: judge a load before it starts, print the step-down ladder when it does not
fit, and with --fit auto apply the first rung that does (core.model.ladder)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import NibbleError
from core.settings import LoadOptions, QuantSettings

FIT_CHOICES = ("check", "auto", "off")


def add_fit_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fit",
        choices=FIT_CHOICES,
        default="check",
        help="before loading, judge whether the model fits: 'check' refuses and "
        "prints the settings that would fit, 'auto' applies the first of them, "
        "'off' loads as asked (default: check)",
    )


@dataclass
class Fitted:
    """What to load after the fit check: maybe a rung of the ladder."""

    ref: Any
    quant: QuantSettings
    options: LoadOptions
    context: int | None = None  # a shorter context the answer must stay within
    step: str | None = None


def fit_before_load(
    mode: str, ref: Any, quant: QuantSettings, options: LoadOptions
) -> Fitted:
    """Refuse (exit 2, the ladder on stderr), or apply the first rung with 'auto'."""
    from core.model import catalog
    from core.model.estimate import estimate
    from core.model.fit import probe_device
    from core.model.ladder import ladder

    as_asked = Fitted(ref, quant, options)
    if mode == "off":
        return as_asked
    device = probe_device()
    try:
        now = estimate(ref, quant, options, device=device)
    except Exception:
        return as_asked  # the load says what is wrong with the model
    if now.verdict != "does not fit":
        return as_asked
    try:
        family = [r for r in catalog.scan_cache() if r.path is not None]
    except Exception:
        family = []
    steps = ladder(ref, quant, options, device=device, family=family, current=now)
    first = steps.first_fit
    if mode == "auto" and first is not None:
        print(
            f"fit: {now.verdict_text} ({device.describe()}); applying {first.line()}",
            file=sys.stderr,
        )
        return Fitted(
            first.model, first.quant, first.options, first.estimate.context, first.step
        )
    print(f"{now.model} does not fit here ({device.describe()}):", file=sys.stderr)
    for line in steps.lines():
        print(f"  {line}", file=sys.stderr)
    if first is None:
        raise NibbleError(
            f"{now.model} does not fit, and no step down fits either",
            "free memory, or pick a smaller model",
        )
    raise NibbleError(
        f"{now.model} does not fit with these settings",
        f"rerun with --fit auto to apply '{first.title}', or --fit off to load anyway",
    )


def load_after_fit(mode: str, load: Callable[[], Any]) -> Any:
    """Run `load`; an out-of-memory after `--fit auto` judged the load to fit gets a
    hint that does not send the user back to `--fit auto`."""
    from core.errors import OutOfMemoryError
    from core.model.fit import limit_headroom

    try:
        return load()
    except OutOfMemoryError as exc:
        if mode != "auto":
            raise
        limit = None if exc.on_gpu else limit_headroom()
        if limit is not None:
            hint = (
                f"the fit check judged this to fit under {limit[1]}, which also "
                "counts the mapped checkpoint (all of it, whatever the preset): "
                "raise the limit (ulimit -v / -d)"
            )
        else:
            hint = (
                "the fit check judged this to fit, and the load needed more: free "
                "some memory, or pick a smaller preset with --quant"
            )
        raise OutOfMemoryError(
            exc.message, hint, exc.needed, exc.free, exc.on_gpu
        ) from None
