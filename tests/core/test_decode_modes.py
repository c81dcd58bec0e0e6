"""Decode modes: prompt lookup and fast decode give the plain greedy answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.generation import decode
from core.generation.decode import GenerationStats
from core.model import catalog, loader
from core.settings import GenerationSettings, LoadOptions

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
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
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
