"""`main.py --self-test`: load the default model in nf4 and check it knows Paris.

For installers (the launcher's command must work) and bug reports alike: it prints what
it checked and exits 0 only when the whole path (default model, bitsandbytes 4-bit,
generation) works on this machine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.settings import GenerationSettings, preset
from core.units import format_bytes

logger = logging.getLogger(__name__)

QUESTION = "What is the capital of France?"
EXPECTED = "Paris"


def run(say: Callable[[str], None] = print) -> bool:
    """Run the check, reporting each step through `say`; True when it passed."""
    from core import catalog, generation, loader
    from core.report import environment

    env = environment()
    packages = env["packages"]
    say(
        f"Nibble {packages.get('nibble') or 'dev'} · Python {env['python']} · "
        f"torch {packages.get('torch')} · transformers {packages.get('transformers')} · "
        f"bitsandbytes {packages.get('bitsandbytes')}"
    )
    chosen = preset("nf4")
    started = time.perf_counter()
    loaded = loader.load(
        catalog.resolve("default"), chosen.quant, chosen.load_options()
    )
    try:
        report = loaded.report
        say(
            f"loaded {report.model} in nf4 on {report.device}: "
            f"{format_bytes(report.true_bytes)}, {report.quantized_count} 4-bit layers, "
            f"{report.load_s:.1f} s"
        )
        if report.quantized_count == 0:
            say("FAIL: no layer was quantized to 4-bit")
            return False
        text, stats = generation.generate_text(
            loaded, QUESTION, GenerationSettings(max_new_tokens=32, greedy=True)
        )
    finally:
        loader.unload(loaded)
    say(f"Q: {QUESTION}")
    say(f"A: {text.strip()}")
    say(stats.summary())
    if EXPECTED.lower() not in text.lower():
        say(f"FAIL: the answer does not contain {EXPECTED!r}")
        return False
    say(f"PASS in {time.perf_counter() - started:.1f} s")
    return True
