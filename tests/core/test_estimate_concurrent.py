"""An estimate made while a load runs equals the command line's, to the byte.

from_pretrained changes process-wide state while it runs (torch's default dtype, a
no-op PreTrainedModel.tie_weights): the estimate's meta-device build must not see it,
and a build must not overlap a load (core.stack.model_build), or every later load in the
process comes out untied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.model import catalog, estimate, loader
from core.settings import preset

ROOT = Path(__file__).resolve().parents[2]
BYTE_FIELDS = (
    "weights_bytes",
    "quant_state_bytes",
    "kv_cache_bytes",
    "overhead_bytes",
    "total_bytes",
    "quantized_modules",
    "breakdown",
)
PRESETS = ("fp32", "bf16", "fp16", "int8", "nf4", "nf4-dq", "fp4")


def _bytes(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {
        str(r["preset"]): {f: r[f] for f in BYTE_FIELDS}
        for r in rows
        if r["preset"] in PRESETS
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_estimates_during_loads_equal_the_cli(default_dir: Path) -> None:
    cli = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "estimate", "default", "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=os.environ.copy(),
        timeout=300,
    )
    expected = _bytes(json.loads(cli.stdout)["rows"])
    assert set(expected) == set(PRESETS)

    ref = catalog.default_ref()
    stop = threading.Event()
    loads: list[str] = []
    errors: list[BaseException] = []

    def keep_loading() -> None:
        # fp32 and bf16 loads set the default dtype to what the estimate's fp16 and
        # bf16 rows must not take from them.
        names = ("bf16", "fp32", "nf4")
        try:
            while not stop.is_set():
                p = preset(names[len(loads) % len(names)])
                loader.unload(loader.load(ref, p.quant, p.load_options()))
                loads.append(p.name)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=keep_loading, name="loads", daemon=True)
    worker.start()
    results = []
    try:
        for _ in range(20):
            estimate._cache.clear()  # build again each time, while a load runs
            results.append(_bytes(estimate.table("default").to_dict()["rows"]))
    finally:
        stop.set()
        worker.join(timeout=120)
    assert not errors, errors
    assert loads, "no load ran while the estimates were made"
    for got in results:
        for name in PRESETS:
            assert got[name] == expected[name], name
    # The process is left as it was: a load after all that is tied again.
    from transformers import PreTrainedModel

    assert PreTrainedModel.tie_weights.__name__ == "tie_weights"
