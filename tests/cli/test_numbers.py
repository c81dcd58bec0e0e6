"""Every number the CLI takes is checked once, by core.settings.check_number: NaN,
±inf, a fraction where a whole number is wanted and anything past the range exit 2
with a hint, before anything loads."""

from __future__ import annotations

import pytest

from cli import main as cli


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["monitor", "--seconds", "nan"], "--seconds must be a finite number, got nan"),
        (["monitor", "--seconds=-inf"], "--seconds must be a finite number, got -inf"),
        (
            ["monitor", "--interval", "inf"],
            "--interval must be a finite number, got inf",
        ),
        (["monitor", "--pid", "1.5"], "--pid must be a whole number, got 1.5"),
        (["serve", "default", "--port", "99999"], "--port 99999 is out of range"),
        (["serve", "default", "--queue", str(2**70)], "is out of range"),
        (["estimate", "default", "--context", "0"], "--context 0 is out of range"),
        (
            ["compare", "default", "--tokens", "nan"],
            "--tokens must be a finite number, got nan",
        ),
        (["search", "x", "--limit", "-1"], "--limit -1 is out of range"),
    ],
)
def test_numeric_flags_refuse_non_finite_and_out_of_range(argv, words, capsys) -> None:
    """Said as every other bad value is (it was argparse's usage dump before)."""
    assert cli.run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --") and words in err
    assert "\nhint: use " in err
    assert "usage:" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--temperature", "nan"], "temperature must be a finite number, got nan"),
        (["--top-p", "inf"], "top_p must be a finite number, got inf"),
        (["--seed", str(2**70)], f"seed {2**70} is out of range"),
        (["--max-new-tokens", "2.5"], "max_new_tokens must be a whole number"),
        (["--top-k", "-1"], "top_k -1 is out of range"),
        (["--set", "llm_int8_threshold=nan"], "llm_int8_threshold must be a finite"),
    ],
)
def test_setting_flags_give_the_fields_words(flags, words, capsys) -> None:
    code = cli.run(["generate", "default", "--quant", "int8", "--prompt", "hi", *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: {words}" in err
    assert "\nhint: use " in err


def test_seed_zero_is_a_seed(capsys) -> None:
    from cli.args import generation_from_args

    args = cli.build_parser().parse_args(["generate", "default", "--seed", "0"])
    assert generation_from_args(args).seed == 0
