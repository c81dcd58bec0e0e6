"""Decode modes: prompt lookup and fast decode give the plain greedy answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.errors import CancelledError
from core.generation import decode
from core.generation.decode import GenerationStats
from core.model import catalog, fast_decode, loader
from core.settings import GenerationSettings, LoadOptions
from tests.conftest import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]

CODE = "\n".join(
    ["def scale_all(values, factor, offset):", "    out = []"]
    + [
        f"    item_{i} = values[{i}] * factor + offset\n    out.append(item_{i})"
        for i in range(6)
    ]
    + ["    return out"]
)
COPY_PROMPT = (
    "Add type hints to this Python function. Reply with the whole function.\n\n"
    f"```python\n{CODE}\n```"
)


def answer(loaded, prompt, settings, **kwargs) -> tuple[str, GenerationStats]:
    chunks, stats = [], None
    for item in decode.stream(loaded, prompt, settings, **kwargs):
        if isinstance(item, GenerationStats):
            stats = item
        else:
            chunks.append(item)
    return "".join(chunks), stats


@pytest.fixture(scope="module")
def default_fp32(default_dir: Path):
    loaded = loader.load(catalog.resolve(str(default_dir)))
    yield loaded
    loader.unload(loaded)


def test_prompt_lookup_gives_the_plain_greedy_answer(default_fp32) -> None:
    plain = GenerationSettings(greedy=True, max_new_tokens=48)
    lookup = GenerationSettings(greedy=True, max_new_tokens=48, prompt_lookup=True)
    text, stats = answer(default_fp32, COPY_PROMPT, plain)
    fast, fast_stats = answer(default_fp32, COPY_PROMPT, lookup)
    assert "scale_all" in text  # it copies from the prompt
    assert fast == text
    assert fast_stats.new_tokens == stats.new_tokens
    assert (stats.decode_mode, fast_stats.decode_mode) == ("plain", "prompt lookup")
    assert fast_stats.summary().endswith("· prompt lookup")


def test_prompt_lookup_is_off_under_a_grammar(tiny_dir: Path) -> None:
    from core.generation.constrain import Constraint

    loaded = loader.load(catalog.resolve(str(tiny_dir)))
    try:
        settings = GenerationSettings(greedy=True, max_new_tokens=6, prompt_lookup=True)
        _, stats = answer(
            loaded, "Say hi", settings, constraint=Constraint.json_object()
        )
        assert stats.decode_mode == "plain"
        assert stats.decode_note == "prompt lookup is off for answers held to a grammar"
    finally:
        loader.unload(loaded)


def test_prompt_lookup_is_a_setting_of_every_face() -> None:
    from core.settings import spec_of

    spec = spec_of(GenerationSettings, "prompt_lookup")
    assert spec.title == "Reuse text from the prompt"
    assert spec.flag == "--prompt-lookup"
    assert GenerationSettings.from_dict({"prompt_lookup": "on"}).prompt_lookup is True
    kwargs = GenerationSettings(prompt_lookup=True).generate_kwargs()
    assert kwargs["prompt_lookup_num_tokens"] == 10
    assert "prompt_lookup_num_tokens" not in GenerationSettings().generate_kwargs()


GREEDY = GenerationSettings(greedy=True, max_new_tokens=10)


def plain_answer(loaded) -> str:
    text, _ = answer(loaded, "Hello there", GREEDY)
    return text


def test_fast_decode_falls_back_without_a_working_compiler(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """The command line with --fast-decode, where the C++ compiler is broken: the
    load goes on uncompiled, says why, and answers as a plain load does."""
    root = ROOT
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'c++: fatal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    env = {**os.environ, "CXX": str(broken), "NIBBLE_CACHE_DIR": str(tmp_path)}
    args = [sys.executable, str(root / "main.py"), "generate", str(tiny_dir)]
    args += ["--greedy", "--max-new-tokens", "8", "--prompt", "Hello there"]
    plain = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    fast = subprocess.run(
        [*args, "--fast-decode"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    assert plain.returncode == 0 and fast.returncode == 0, fast.stderr
    assert (
        f"warning: fast decode is off: no working C++ compiler ({broken}) for "
        "torch.compile on the CPU; install g++ or set CXX"
    ) in fast.stderr
    assert fast.stdout == plain.stdout


def test_fast_decode_gives_the_plain_greedy_answer(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIBBLE_CACHE_DIR", str(tmp_path / "cache"))
    ref = catalog.resolve(str(tiny_dir))
    plain = loader.load(ref)
    try:
        expected = plain_answer(plain)
    finally:
        loader.unload(plain)
    stages: list[str] = []
    loaded = loader.load(
        ref,
        options=LoadOptions(fast_decode=True),
        progress=lambda d, t, m: stages.append(m),
    )
    try:
        assert loaded.fast_decode.active, loaded.fast_decode.note
        assert any(m.startswith("Compiling the decode step (") for m in stages)
        assert list((tmp_path / "cache" / "compiled").iterdir())  # kept for next start
        text, stats = answer(
            loaded, "Hello there", GenerationSettings(greedy=True, max_new_tokens=10)
        )
        assert text == expected
        assert stats.decode_mode == "compiled"
        assert stats.summary().endswith("· compiled")
        lookup = GenerationSettings(greedy=True, max_new_tokens=10, prompt_lookup=True)
        text, stats = answer(loaded, "Hello there", lookup)
        assert text == expected
        assert stats.decode_note == "prompt lookup is off while fast decode is on"
    finally:
        loader.unload(loaded)


def test_compare_rows_run_in_each_decode_mode() -> None:
    from core.errors import SettingsError
    from core.lab import compare

    items = compare.with_decode_modes(["baseline", "nf4"], "plain,compiled,lookup")
    assert items == [
        "baseline",
        "nf4",
        "baseline+decode=compiled",
        "nf4+decode=compiled",
        "baseline+decode=lookup",
        "nf4+decode=lookup",
    ]
    specs = compare.parse_rows(items)
    assert [(s.decode, s.options.fast_decode) for s in specs[2:4]] == [
        ("compiled", True),
        ("compiled", True),
    ]
    assert specs[5].decode == "prompt lookup" and not specs[5].options.fast_decode
    assert specs[5].quant == specs[1].quant
    with pytest.raises(SettingsError, match="decode mode 'turbo' is not known"):
        compare.parse_rows("nf4+decode=turbo")


def test_cancel_during_the_compile_ends_the_load_and_keeps_the_model(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel while the load shows "Compiling the decode step (N s)": the load ends
    with CancelledError without waiting for the compile, which goes on alone and
    is dropped; the model loaded before still answers."""
    monkeypatch.setenv("NIBBLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fast_decode, "blocker", lambda model: None)
    release = threading.Event()

    def compile_held(model, tokenizer, bucket) -> None:  # a compile that takes long
        release.wait(300)

    monkeypatch.setattr(fast_decode, "_warm", compile_held)
    ref = catalog.resolve(str(tiny_dir))
    previous = loader.load(ref)
    expected = plain_answer(previous)
    cancel = threading.Event()
    stages: list[str] = []

    def progress(done: int, total: int, message: str) -> None:
        stages.append(message)
        if message.startswith("Compiling the decode step ("):
            cancel.set()  # what the window's Cancel and the CLI's Ctrl+C do

    try:
        with pytest.raises(CancelledError, match="Load cancelled"):
            loader.load(
                ref,
                options=LoadOptions(fast_decode=True),
                progress=progress,
                cancel=cancel,
            )
        assert stages[-1] == "Compiling the decode step (0 s)"
        assert fast_decode.abandoned(), "the load waited for the compile to end"
        assert plain_answer(previous) == expected
    finally:
        release.set()
        assert fast_decode.wait_for_abandoned(60)
        loader.unload(previous)


def test_a_compile_that_fails_falls_back_to_plain_and_says_why(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setenv("NIBBLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fast_decode, "blocker", lambda model: None)  # any machine
    ref = catalog.resolve(str(tiny_dir))
    plain = loader.load(ref)
    try:
        expected = plain_answer(plain)
    finally:
        loader.unload(plain)

    def unsupported(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this platform\nmore")

    monkeypatch.setattr(torch, "compile", unsupported)
    loaded = loader.load(ref, options=LoadOptions(fast_decode=True))
    try:
        note = (
            "fast decode is off: compile failed "
            "(torch.compile is not supported on this platform)"
        )
        assert not loaded.fast_decode.active
        assert loaded.fast_decode.note == note
        assert note in loaded.report.warnings  # what the window and CLI print
        assert loaded.report.to_dict()["fast_decode"]["active"] is False
        assert decode.model_decode_mode(loaded) == ("plain", note)
        text, stats = answer(loaded, "Hello there", GREEDY)
        assert text == expected
        assert (stats.decode_mode, stats.decode_note) == ("plain", "")
    finally:
        loader.unload(loaded)


@pytest.fixture(scope="module")
def long_tiny_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path):
    """The tiny Llama with a 2,048-token context: room for a second cache bucket."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-long") / "tiny-llama-2k",
        tokenizer_dir,
        max_position_embeddings=2048,
    )


# About 700 tokens: past the first 512-token bucket, within the next.
LONG_PROMPT = " ".join(["The cat sat on the mat."] * 100)


@pytest.mark.slow
def test_a_prompt_past_the_cache_bucket_says_it_recompiled(
    long_tiny_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the generation queue (what the window and the server answer with),
    then the command line: a longer prompt than the compiled cache holds recompiles
    once and says so; a shorter one, before or after, does not."""
    from cli import main as cli
    from core.generation.queue import GenerationQueue, GenerationRequest

    monkeypatch.setenv("NIBBLE_CACHE_DIR", str(tmp_path))
    ref = catalog.resolve(str(long_tiny_dir))
    loaded = loader.load(ref, options=LoadOptions(fast_decode=True))
    queue = GenerationQueue(loaded)
    settings = GenerationSettings(greedy=True, max_new_tokens=4)

    def ask(prompt: str) -> GenerationStats:
        stats = None
        for item in queue.submit(GenerationRequest(prompt, settings, raw=True)):
            if isinstance(item, GenerationStats):
                stats = item
        assert stats is not None and stats.decode_mode == "compiled"
        return stats

    try:
        assert loaded.fast_decode.active, loaded.fast_decode.note
        assert loaded.fast_decode.buckets == {512}
        assert 512 < len(loaded.tokenizer(LONG_PROMPT)["input_ids"]) + 4 <= 1024
        assert ask("Hello there").decode_note == ""
        assert (
            ask(LONG_PROMPT).decode_note
            == "recompiled the decode step for a 1,024-token cache"
        )
        assert ask("Hello there").decode_note == ""
        assert ask(LONG_PROMPT + " Done.").decode_note == ""
    finally:
        assert queue.close()
        loader.unload(loaded)
    args = ["generate", str(long_tiny_dir), "--fast-decode", "--raw", "--greedy"]
    args += ["--max-new-tokens", "4", "--prompt"]
    assert cli.run([*args, LONG_PROMPT]) == 0
    assert (
        "note: recompiled the decode step for a 1,024-token cache"
        in capsys.readouterr().err
    )
    assert cli.run([*args, "Hello there"]) == 0
    assert "note:" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_start_reuses_the_compiled_step_from_disk(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Two processes with --fast-decode and the same cache dir: the first compiles
    ("miss"), the second finds the compiled step on disk ("hit") and answers alike."""
    env = {**os.environ, "NIBBLE_CACHE_DIR": str(tmp_path)}
    args = [sys.executable, str(ROOT / "main.py"), "generate", str(tiny_dir)]
    args += ["--greedy", "--max-new-tokens", "8", "--prompt", "Hello there"]
    args += ["--fast-decode", "--json"]
    runs = []
    for _ in range(2):
        done = subprocess.run(
            args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
        )
        assert done.returncode == 0, done.stderr
        runs.append((json.loads(done.stdout), done.stderr))
    (first, _), (second, second_log) = runs
    assert first["report"]["fast_decode"]["active"], first["report"]["warnings"]
    assert first["report"]["fast_decode"]["cache"] == "miss"
    assert second["report"]["fast_decode"]["cache"] == "hit"
    folder = first["report"]["fast_decode"]["cache_dir"]
    assert second["report"]["fast_decode"]["cache_dir"] == folder
    assert Path(folder).parent == tmp_path / "compiled"
    assert "Reused the compiled decode step" in second_log.splitlines()
    assert second["text"] == first["text"]
    assert second["stats"]["decode_mode"] == "compiled"
