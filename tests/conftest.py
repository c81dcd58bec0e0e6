"""Shared fixtures: the embedded default model and tiny models built on the spot."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

# The local hub's fixtures (fake, repo_dir) for the hub, pull and dialog tests.
pytest_plugins = ["tests.fake_hub"]

# A run started in the background (CI, `make test &`) inherits Ctrl+C as ignored, and
# an ignored signal stays ignored in every child: the tests that press Ctrl+C on the
# CLI need it delivered, as at a terminal. A Python handler is reset on exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# GUI tests run without a display, here and in CI.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="session")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted default model (converted here on first use, ~20 s).

    Under `pytest -n`, the workers share one temporary root: a lock there lets the
    first worker convert while the others wait for its copy.
    """
    from core.model import default_model

    lock = tmp_path_factory.getbasetemp().parent / "default-model.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        return default_model.ensure()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's tokenizer and chat template, read out of its GGUF file.

    The same bytes the conversion writes, in a few seconds instead of the ~20 s
    that dequantizing the weights takes: tiny models need only the tokenizer.
    """
    from transformers import TokenizersBackend

    from core.model import default_model

    source = default_model.gguf_path()
    tokenizer = TokenizersBackend.from_pretrained(
        str(source.parent), gguf_file=source.name
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(str(folder))
    return folder


def build_tiny_model(
    target: Path,
    tokenizer_dir: Path,
    model_type: str = "llama",
    **overrides: object,
) -> Path:
    """Save a tiny random causal LM with the default model's tokenizer into `target`.

    Dims are multiples of 64 so bitsandbytes' CPU 4-bit kernels accept them.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    params: dict[str, object] = {
        "vocab_size": 49152,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    params.update(overrides)
    config = AutoConfig.for_model(model_type, **params)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, target / name)
    return target


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny Llama (2 layers, hidden 64) with the default model's tokenizer."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer_dir
    )


@pytest.fixture(scope="session", autouse=True)
def private_chat_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A window a test opens keeps its chats in a new, empty temporary database,
    and no load is recorded."""
    from core.store import conversations

    def fresh() -> Path:
        return tmp_path_factory.mktemp("history") / conversations.FILE_NAME

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conversations, "database_path", fresh)
        # Loads in this process and in the CLI's child processes are not recorded
        # in the user's history; tests/core/test_calibration.py records its own.
        mp.setenv("NIBBLE_LOAD_RECORDS", "off")
        yield


# The test files that take longest, roughly longest first (`pytest --durations=0`,
# summed by file; add a file that loads models for minutes). `make test` runs two
# workers with `--dist loadfile`: a file runs whole on one worker, and the files are
# handed out in collection order. The long ones go out first and the short ones fill
# in at the end, so both workers finish together instead of one waiting minutes on a
# long file it got last. A file missing here goes after these, those with more tests
# first (xdist's own order).
LONGEST_FIRST = (
    "server/test_server.py",
    "faults/test_interrupts.py",
    "faults/test_conversion.py",
    "test_faults.py",
    "core/test_compare.py",
    "core/test_export.py",
    "core/test_estimate.py",
    "core/test_memory.py",
    "core/test_estimate_concurrent.py",
    "core/test_decode_modes.py",
    "test_install.py",
    "cli/test_commands.py",
    "cli/test_hub.py",
    "cli/test_chats.py",
    "core/test_loader.py",
    "core/test_conversations.py",
    "gui/test_window.py",
    "gui/test_controller.py",
    "core/test_default_model.py",
    "cli/test_fit_limit.py",
    "core/test_hub.py",
    "gui/test_chat_history.py",
    "core/test_generation.py",
    "faults/test_hub.py",
    "core/test_desktop.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """Under `--dist loadfile`, xdist hands out the files in the order collected."""
    if getattr(config.option, "dist", "no") in ("loadfile", "loadscope"):
        # Instead of its own order, by number of tests: see LONGEST_FIRST.
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that drives the window lives in tests/gui, under its thread check; the
    longest files run first (LONGEST_FIRST)."""
    tests = Path(__file__).parent
    gui = tests / "gui"
    for item in items:
        if (
            "qtbot" in getattr(item, "fixturenames", ())
            and gui not in item.path.parents
        ):
            raise pytest.UsageError(
                f"{item.nodeid} drives the window: move it to tests/gui, where "
                "no test may leave a worker thread running"
            )
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    counts = Counter(item.path for item in items)

    def order(item: pytest.Item) -> tuple[int, int]:
        try:
            name = item.path.relative_to(tests).as_posix()
        except ValueError:
            name = ""
        return rank.get(name, len(rank)), -counts[item.path]

    items.sort(key=order)  # stable: a file's tests keep their order
