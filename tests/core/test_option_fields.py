"""LoadOptions and GenerationSettings: flags, JSON and defaults come from metadata."""

from __future__ import annotations

import dataclasses

import pytest

from cli import args as cli_args
from cli.main import build_parser
from core.settings import GenerationSettings, LoadOptions, fields_of


@pytest.mark.parametrize("cls", [LoadOptions, GenerationSettings])
def test_metadata_covers_every_field_with_its_default(cls) -> None:
    specs = fields_of(cls)
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(cls)]
    made = cls()
    for spec in specs:
        assert spec.title and spec.description.endswith(".")
        assert getattr(made, spec.name) == spec.default
    assert list(made.to_dict()) == [s.name for s in specs]


def test_every_field_is_a_flag_and_attention_can_be_set(capsys) -> None:
    parser = build_parser()
    args = parser.parse_args(
        "generate default --attn-implementation eager --device-map cpu --max-memory"
        " cpu=2GiB --top-k 5 --seed 7 --greedy --dtype bf16".split()
    )
    _, options = cli_args.settings_from_args(args)
    assert options == LoadOptions(
        "cpu", {"cpu": "2GiB"}, "bfloat16", attn_implementation="eager"
    )
    gen = cli_args.generation_from_args(args)
    assert (gen.top_k, gen.seed, gen.greedy, gen.temperature) == (5, 7, True, 0.7)
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--help"])
    help_text = capsys.readouterr().out
    for spec in (*fields_of(LoadOptions), *fields_of(GenerationSettings)):
        assert spec.flag in help_text


def test_a_preset_dtype_applies_unless_dtype_is_given() -> None:
    parser = build_parser()
    _, options = cli_args.settings_from_args(
        parser.parse_args(["estimate", "default", "--quant", "bf16"])
    )
    assert options.dtype == "bfloat16"
    _, options = cli_args.settings_from_args(
        parser.parse_args(["estimate", "default", "--quant", "bf16", "--dtype", "fp32"])
    )
    assert options.dtype == "float32"


def test_json_round_trip_uses_the_field_names() -> None:
    options = LoadOptions("cpu", "0=1GiB", "float16", "sdpa", True)
    assert LoadOptions.from_dict(options.to_dict()) == options
    gen = GenerationSettings(max_new_tokens=9, seed=3, greedy=True)
    assert GenerationSettings.from_dict(gen.to_dict()) == gen
