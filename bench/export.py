"""Export the default model in nf4, nf4-dq and int8: time per step, size on disk.

Also shows why export saves from a fresh load: it saves a 4-bit model after one
forward (what the chat would have done) and compares its reload with the logits the
model gave before, on this machine's CPU.

    .venv/bin/python bench/export.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from core.lab import export
from core.model import catalog, loader
from core.settings import QuantSettings, preset
from core.units import format_bytes


def timed_export(name: str, out: Path) -> None:
    chosen = preset(name)
    marks: dict[int, float] = {}
    started = time.perf_counter()

    def progress(done: int, total: int, message: str) -> None:
        marks.setdefault(done, time.perf_counter() - started)

    result = export.export(
        catalog.resolve("default"),
        chosen.quant,
        out,
        chosen.load_options(),
        progress=progress,
    )
    total = time.perf_counter() - started
    load = marks.get(1, 0.0)
    save = marks.get(2, 0.0) - load
    verify = marks.get(4, 0.0) - marks.get(2, 0.0)
    print(
        f"| {name} | {format_bytes(result.size_bytes)} | {load:.1f} s | {save:.1f} s | "
        f"{verify:.1f} s | {total:.1f} s | "
        f"{'identical' if result.verification.identical else 'DIFFERENT'} |"
    )


def save_after_forward(out: Path) -> None:
    """What export avoids: save a 4-bit model that has already run a forward."""
    chosen = preset("nf4")
    ref = catalog.resolve("default")
    loaded = loader.load(ref, chosen.quant, chosen.load_options())
    before, tokens = export.probe_logits(loaded.model, loaded.tokenizer)
    loaded.model.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))
    loader.unload(loaded)
    reloaded = loader.load(
        catalog.folder_ref(out), QuantSettings(), chosen.load_options()
    )
    after, _ = export.probe_logits(reloaded.model, reloaded.tokenizer)
    loader.unload(reloaded)
    diff = float((after - before).abs().max())
    same = bool((after.argmax(-1) == before.argmax(-1)).all())
    print(
        f"save after a forward (nf4): max |logit diff| {diff:.4g} on {tokens} tokens, "
        f"same top-1 everywhere: {same}"
    )


def main() -> None:
    fp32 = catalog.folder_size(catalog.resolve("default").path)
    print(f"default model folder (fp32): {format_bytes(fp32)}")
    print("| preset | on disk | load | save | reload + compare | total | logits |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("nf4", "nf4-dq", "int8"):
            timed_export(name, Path(tmp) / name)
        save_after_forward(Path(tmp) / "after-forward")


if __name__ == "__main__":
    main()
