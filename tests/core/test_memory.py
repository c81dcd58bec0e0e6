"""Memory that tells the truth on the CPU: anonymous vs file-backed, what stays mapped."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import memory
from core.model import catalog, loader
from core.settings import LoadOptions, QuantSettings

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the RSS split comes from /proc"
)


@linux_only
def test_process_memory_splits_rss() -> None:
    now = memory.process_memory()
    assert now is not None and now.anon is not None and now.file is not None
    assert now.anon > 0 and now.file > 0
    # VmRSS is RssAnon + RssFile + RssShmem; anon here includes the shared memory.
    assert now.anon + now.file == now.rss
    assert memory.process_memory(2**31 - 1) is None  # no such process


@pytest.fixture(autouse=True)
def no_models_left_by_earlier_tests() -> None:
    """These tests count the process's checkpoint mappings: a model an earlier test
    file dropped but the collector has not freed yet would be counted too."""
    gc.collect()


def mapped_files_under(folder: Path) -> list[str]:
    """The checkpoint files of `folder` this process maps. Only these count: another
    test in the same worker may hold a model of its own (the default one, say)."""
    return [m.path for m in memory.mappings() if m.path.startswith(str(folder))]


@linux_only
@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_a_quantized_load_keeps_only_its_unquantized_weights_mapped(
    tiny_dir: Path, mode: str
) -> None:
    loaded = loader.load(
        catalog.resolve(str(tiny_dir)),
        QuantSettings(mode=mode),
        LoadOptions(device_map="cpu"),
    )
    try:
        model = loaded.model
        assert loaded.report.quantized_count > 0
        plain = {
            p.untyped_storage().data_ptr(): p.nbytes
            for m in model.modules()
            if type(m).__name__ not in ("Linear4bit", "Linear8bitLt")
            for p in m.parameters(recurse=False)
        }
        # The embedding and the norms stay in the file, as in an unquantized load ...
        assert loaded.report.mapped_bytes == sum(plain.values())
        # ... and of the file only their pages stay resident: the pages the
        # quantization read were given back.
        page = 4096
        resident = memory.resident_mapped_bytes(under=str(tiny_dir))
        assert resident <= sum(plain.values()) + 2 * page * len(plain)
        assert model.lm_head.weight is model.model.embed_tokens.weight
    finally:
        model = None
        loader.unload(loaded)
    assert mapped_files_under(tiny_dir) == []  # unloading unmaps the file


@linux_only
def test_an_unquantized_cpu_load_keeps_its_weights_mapped_on_purpose(
    tiny_dir: Path,
) -> None:
    loaded = loader.load(
        catalog.resolve(str(tiny_dir)), options=LoadOptions(device_map="cpu")
    )
    try:
        weights = sum(p.nbytes for p in loaded.model.parameters())
        assert loaded.report.mapped_bytes == weights
        assert mapped_files_under(tiny_dir)
    finally:
        loader.unload(loaded)
    assert mapped_files_under(tiny_dir) == []


GROWTH = """
import json, sys
sys.path.insert(0, {root!r})
from core.stack import import_stack
import_stack()
from core import memory
from core.model import catalog, default_model, loader
from core.settings import LoadOptions, preset
loader._tokenizer(str(default_model.ensure()), False)
p = preset({name!r})
before = memory.process_memory()
options = p.load_options(LoadOptions(device_map="cpu"))
loaded = loader.load(catalog.default_ref(), p.quant, options)
after = memory.process_memory()
print(json.dumps({{"rss": after.rss - before.rss, "true": loaded.report.true_bytes}}))
"""


GROWTH_PRESETS = ["nf4", "nf4-dq", "fp4", "int8"]


@pytest.fixture(scope="module")
def growth_runs(default_dir: Path) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One fresh process per preset, all started at once: each measures only itself."""
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-c", GROWTH.format(root=str(ROOT), name=name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for name in GROWTH_PRESETS
    }
    yield runs
    for process in runs.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("name", GROWTH_PRESETS)
def test_rss_growth_of_a_quantized_load_is_close_to_its_true_size(
    growth_runs: dict[str, subprocess.Popen[str]], name: str
) -> None:
    # A fresh process each: growth is measured from after the imports.
    out, err = growth_runs[name].communicate(timeout=600)
    assert growth_runs[name].returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    goal = 1.25 * result["true"] + 32 * MiB
    assert result["rss"] <= goal, (
        f"{name}: RSS grew {result['rss'] / MiB:.0f} MiB for a model of "
        f"{result['true'] / MiB:.0f} MiB (goal {goal / MiB:.0f} MiB)"
    )
