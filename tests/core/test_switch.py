"""Any model by name: names with a preset suffix, and the unload after idling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.errors import ModelNotFoundError
from core.generation.queue import GenerationQueue
from core.generation.switch import ModelSwitcher
from core.model import catalog, loader
from core.settings import preset


def test_names_presets_and_idle_unload(tiny_dir: Path) -> None:
    queue = GenerationQueue(None)
    changes: list[tuple[str, str]] = []
    switcher = ModelSwitcher(
        queue,
        directory=lambda: {"tiny-llama": catalog.folder_ref(tiny_dir)},
        idle_unload_s=0.5,
        on_change=lambda state, name: changes.append((state, name)),
    )
    try:
        wanted = switcher.resolve("tiny-llama:int8")
        assert (wanted.name, wanted.preset) == ("tiny-llama", "int8")
        assert wanted.quant == preset("int8").quant
        assert switcher.resolve("tiny-llama").quant == preset("nf4").quant
        assert switcher.resolve(str(tiny_dir)).name == "tiny-llama"
        with pytest.raises(ModelNotFoundError, match="servable: tiny-llama"):
            switcher.resolve("tiny-mistral")
        switcher.ensure(switcher.resolve("tiny-llama:nf4"))
        assert queue.loaded is not None and queue.loaded.quant.label() == "nf4"
        deadline = time.monotonic() + 30
        while len(changes) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue.loaded is None, "unloaded after idling"
        assert changes == [
            ("loading", "tiny-llama"),
            ("loaded", "tiny-llama"),
            ("unloaded", "tiny-llama"),
        ]
        switcher.ensure(switcher.resolve("tiny-llama"))
        assert queue.loaded is not None, "the next request loads it again"
    finally:
        switcher.close()
        loader.unload(queue.loaded)
        assert queue.close()
