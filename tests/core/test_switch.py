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


def test_the_app_follows_a_switch_a_client_makes(tiny_dir: Path) -> None:
    from core.app import App

    app = App()
    app.take_loaded(loader.load(catalog.resolve(str(tiny_dir)), preset("nf4").quant))
    steps: list[tuple[str, str, str | None]] = []
    app.model_switched.connect(
        lambda state, name: steps.append((state, name, app.switching))
    )
    switcher = app.model_switcher(
        directory=lambda: {"tiny-llama": catalog.folder_ref(tiny_dir)}
    )
    try:
        assert switcher.resolve("tiny-llama").quant == preset("nf4").quant
        switcher.ensure(switcher.resolve("tiny-llama:int8"))
        int8 = preset("int8")
        assert app.loaded is app.generation_queue.loaded
        assert app.loaded.quant == int8.quant
        assert app.selected_ref.path == tiny_dir
        assert (app.quant, app.session.quant) == (int8.quant, int8.quant)
        assert not app.differs_from_loaded()
        assert steps == [
            ("loading", "tiny-llama", "tiny-llama"),
            ("loaded", "tiny-llama", None),
        ]
        assert app.load_blocker() == ""
    finally:
        switcher.close()
        app.unload()
        assert app.generation_queue.close()
