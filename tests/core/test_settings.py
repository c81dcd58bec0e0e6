"""QuantSettings mirrors BitsAndBytesConfig and turns every known trap into a clear error."""

from __future__ import annotations

import inspect

import pytest

from core.checks import check
from core.errors import SettingsError
from core.settings import (
    BNB_FIELDS,
    PRESETS,
    GenerationSettings,
    LoadOptions,
    QuantSettings,
    fields_of,
    preset,
    preset_name_for,
    spec_of,
)


def test_fields_match_bitsandbytesconfig_signature() -> None:
    from transformers import BitsAndBytesConfig

    params = inspect.signature(BitsAndBytesConfig.__init__).parameters
    library = {n for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD}
    assert {f.name for f in BNB_FIELDS} | {"load_in_8bit", "load_in_4bit"} == library
    for spec in fields_of(QuantSettings):
        assert spec.title and len(spec.description) > 40
        assert getattr(QuantSettings(), spec.name) == spec.default
        assert spec.flag == f"--set {spec.name}=…"
    for spec in BNB_FIELDS:
        assert spec.applies in ("8bit", "4bit", "both")
        assert params[spec.name].default == spec.default, spec.name


def test_mode_sets_exactly_one_load_flag() -> None:
    assert QuantSettings().to_bnb_config() is None  # no "neither flag still fp4" trap
    four = QuantSettings(mode="4bit").to_bnb_config()
    assert four.load_in_4bit and not four.load_in_8bit
    eight = QuantSettings(mode="8bit").to_bnb_config()
    assert eight.load_in_8bit and not eight.load_in_4bit


def test_both_load_flags_is_an_error() -> None:
    with pytest.raises(SettingsError, match="cannot both be on"):
        QuantSettings().with_values({"load_in_8bit": "true", "load_in_4bit": "true"})
    assert QuantSettings().with_values({"load_in_4bit": "true"}).mode == "4bit"


def test_upper_case_quant_type_is_refused_with_a_hint() -> None:
    with pytest.raises(SettingsError) as info:
        QuantSettings(mode="4bit", bnb_4bit_quant_type="NF4")
    assert "must be 'nf4' or 'fp4'" in info.value.message
    assert "nf4" in info.value.hint
    with pytest.raises(SettingsError, match="must be 'nf4' or 'fp4'"):
        QuantSettings(mode="4bit", bnb_4bit_quant_type="int4")


def test_integer_threshold_is_accepted_as_float() -> None:
    settings = QuantSettings(mode="8bit", llm_int8_threshold=6)
    assert settings.llm_int8_threshold == 6.0
    assert isinstance(settings.to_bnb_config().llm_int8_threshold, float)
    with pytest.raises(SettingsError, match="out of range") as info:
        QuantSettings(llm_int8_threshold=-1)
    assert info.value.field == "llm_int8_threshold"
    assert "6.0 is the usual value" in info.value.hint
    with pytest.raises(SettingsError, match="must be a number"):
        QuantSettings().with_values({"llm_int8_threshold": "six"})
    assert (
        QuantSettings().with_values({"llm_int8_threshold": "4.5"}).llm_int8_threshold
        == 4.5
    )


def test_custom_skip_list_keeps_lm_head_unless_removed_on_purpose() -> None:
    settings = QuantSettings(mode="4bit", llm_int8_skip_modules=("mlp.down_proj",))
    assert settings.llm_int8_skip_modules == ["mlp.down_proj"]
    assert settings.to_bnb_config().llm_int8_skip_modules == [
        "mlp.down_proj",
        "lm_head",
    ]
    on_purpose = settings.replace(quantize_lm_head=True)
    assert on_purpose.to_bnb_config().llm_int8_skip_modules == ["mlp.down_proj"]
    assert QuantSettings(mode="4bit").to_bnb_config().llm_int8_skip_modules is None
    with pytest.raises(SettingsError, match="not a module name"):
        QuantSettings(llm_int8_skip_modules=["lm head!"])


def test_tutorial_only_kwargs_are_refused_with_a_hint() -> None:
    with pytest.raises(SettingsError) as info:
        QuantSettings().with_values({"bnb_8bit_compute_dtype": "float16"})
    assert "not a BitsAndBytesConfig setting" in info.value.message
    assert "8-bit has no compute dtype" in info.value.hint
    with pytest.raises(SettingsError, match="blocksize"):
        QuantSettings().with_values({"blocksize": "128"})
    with pytest.raises(SettingsError, match="unknown setting"):
        QuantSettings().with_values({"bnb_4bit_quant": "nf4"})


def test_dtype_names_are_canonical() -> None:
    import torch

    settings = QuantSettings(mode="4bit", bnb_4bit_compute_dtype="torch.bfloat16")
    assert settings.bnb_4bit_compute_dtype == "bfloat16"
    assert QuantSettings(
        bnb_4bit_compute_dtype=torch.float16
    ).bnb_4bit_compute_dtype == ("float16")
    assert (
        QuantSettings(bnb_4bit_compute_dtype="fp16").bnb_4bit_compute_dtype == "float16"
    )
    config = settings.replace(bnb_4bit_quant_storage="bf16").to_bnb_config()
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_quant_storage == torch.bfloat16
    with pytest.raises(SettingsError, match="not a dtype"):
        QuantSettings(bnb_4bit_compute_dtype="float8")


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    chosen = preset(name)
    again = QuantSettings.from_json(chosen.quant.to_json())
    assert again == chosen.quant
    assert preset_name_for(again, chosen.dtype) == name


def test_edited_settings_round_trip_and_schema_checks() -> None:
    settings = QuantSettings(
        mode="8bit",
        llm_int8_threshold=4.5,
        llm_int8_skip_modules=["mlp"],
        llm_int8_has_fp16_weight=True,
        bnb_4bit_quant_storage="float16",
    )
    assert QuantSettings.from_json(settings.to_json()) == settings
    assert settings.to_dict()["schema_version"] == 1
    with pytest.raises(SettingsError, match="newer than this Nibble"):
        QuantSettings.from_dict({"schema_version": 99})
    with pytest.raises(SettingsError, match="not valid JSON"):
        QuantSettings.from_json("{mode: 4bit")


def test_seed_article_preset() -> None:
    import torch

    config = preset("nf4-dq").quant.to_bnb_config()
    assert config.load_in_4bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float16
    with pytest.raises(SettingsError, match="unknown preset"):
        preset("int4")


def test_field_metadata_drives_applicability() -> None:
    threshold = spec_of(QuantSettings, "llm_int8_threshold")
    assert threshold.applies_to("8bit") and not threshold.applies_to("4bit")
    assert "8-bit only" in threshold.reason_disabled("4bit")
    assert "without quantization" in threshold.reason_disabled("none")
    assert spec_of(QuantSettings, "llm_int8_skip_modules").applies_to("4bit")
    assert spec_of(QuantSettings, "mode").applies_to("none")


def test_python_snippet_is_the_seed_article_style() -> None:
    text = preset("nf4-dq").quant.to_python("your-model-name")
    assert "bnb_4bit_compute_dtype=torch.float16," in text
    assert 'bnb_4bit_quant_type="nf4",' in text
    assert "bnb_4bit_use_double_quant=True," in text
    assert 'device_map="auto",' in text
    compile(text, "snippet", "exec")
    assert "BitsAndBytesConfig" not in QuantSettings().to_python("m")


def test_python_snippet_runs(tiny_dir) -> None:
    code = preset("nf4").quant.to_python(str(tiny_dir), LoadOptions(device_map="cpu"))
    namespace: dict[str, object] = {}
    exec(code, namespace)
    model = namespace["model"]
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert namespace["tokenizer"] is not None


def test_load_options_validation() -> None:
    assert LoadOptions(device_map="CUDA:1").device_map_value() == {"": "cuda:1"}
    assert LoadOptions(max_memory="0=6GiB, cpu=20GiB").max_memory == {
        "0": "6GiB",
        "cpu": "20GiB",
    }
    assert not LoadOptions().trust_remote_code
    with pytest.raises(SettingsError, match="device map"):
        LoadOptions(device_map="gpu")
    with pytest.raises(SettingsError, match="amount"):
        LoadOptions(max_memory="0=lots")
    with pytest.raises(SettingsError, match="device map") as info:
        LoadOptions(device_map="gpu")
    assert info.value.field == "device_map"
    mixed = check(
        QuantSettings(mode="4bit"), LoadOptions(max_memory="0=4GiB,cpu=30GiB")
    )
    assert [p.field for p in mixed] == ["max_memory"]
    assert "mixes a GPU with cpu" in mixed[0].message
    assert not check(
        QuantSettings(mode="4bit", llm_int8_enable_fp32_cpu_offload=True),
        LoadOptions(max_memory="0=4GiB,cpu=30GiB"),
    )


def test_generation_settings_validation() -> None:
    greedy = GenerationSettings(greedy=True).generate_kwargs()
    assert greedy["do_sample"] is False and greedy["temperature"] is None
    sampled = GenerationSettings(temperature=0.5, top_k=10).generate_kwargs()
    assert sampled["do_sample"] and sampled["top_k"] == 10
    for bad in (
        {"max_new_tokens": 0},
        {"top_p": 1.5},
        {"temperature": -1},
        {"seed": "x"},
    ):
        with pytest.raises(SettingsError) as info:
            GenerationSettings(**bad)  # type: ignore[arg-type]
        assert info.value.field == next(iter(bad))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("temperature", float("nan"), "temperature must be a finite number, got nan"),
        ("top_p", float("inf"), "top_p must be a finite number, got inf"),
        ("repetition_penalty", float("-inf"), "must be a finite number, got -inf"),
        ("seed", 2**70, f"seed {2**70} is out of range"),
        ("seed", float("nan"), "seed must be a finite number"),
        ("max_new_tokens", 2.5, "max_new_tokens must be a whole number, got 2.5"),
        ("top_k", True, "top_k must be a whole number, got True"),
        ("top_p", 0, "top_p 0 is out of range"),
        ("temperature", 10**400, "out of range"),
        ("temperature", "hot", "temperature must be a number, got 'hot'"),
    ],
)
def test_every_number_is_finite_and_in_its_range(field, value, words) -> None:
    with pytest.raises(SettingsError) as info:
        GenerationSettings(**{field: value})
    assert words in info.value.message
    assert info.value.field == field
    assert info.value.hint.startswith("use ")


def test_numbers_as_text_and_whole_floats_are_read() -> None:
    gen = GenerationSettings(max_new_tokens="12", temperature="0.5", seed=7.0)
    assert (gen.max_new_tokens, gen.temperature, gen.seed) == (12, 0.5, 7)
    assert isinstance(gen.seed, int) and isinstance(gen.temperature, float)
    assert GenerationSettings(seed=-(2**63)).seed == -(2**63)


def test_one_range_per_field_for_every_face() -> None:
    """The window's widgets, the CLI and the server read the ranges from the field."""
    specs = {s.name: s for s in fields_of(GenerationSettings)}
    assert (specs["temperature"].low, specs["temperature"].high) == (0.0, 10.0)
    assert (specs["top_k"].low, specs["top_k"].high) == (0, 1_000_000)
    assert GenerationSettings(temperature=10.0, top_k=1_000_000).top_k == 1_000_000
    with pytest.raises(SettingsError):
        GenerationSettings(temperature=10.01)


@pytest.mark.parametrize(
    ("generation", "words"),
    [
        ('{"temperature": NaN}', "temperature must be a finite number, got nan"),
        ('{"seed": 1180591620717411303424}', "seed 1180591620717411303424 is out"),
        ('{"top_k": Infinity}', "top_k must be a finite number, got inf"),
        ('{"max_new_tokens": 1e400}', "max_new_tokens must be a finite number"),
    ],
)
def test_session_json_numbers_get_the_same_check(tmp_path, generation, words) -> None:
    from core.store import session as session_mod

    path = tmp_path / "session.json"
    path.write_text(f'{{"schema_version": 1, "generation": {generation}}}')
    session, notice = session_mod.load_session(path)
    assert session == session_mod.Session()
    assert notice is not None and words in notice
    assert (tmp_path / "session.json.bak").exists()


def test_a_load_is_named_by_its_preset_quantization_or_dtype() -> None:
    """`generate --quant fp32` said "· none ·" in its stats line."""
    from core.settings import settings_label

    assert settings_label(preset("fp32").quant, "float32") == "fp32"
    assert settings_label(QuantSettings(), "bfloat16") == "bf16"
    assert settings_label(QuantSettings(), "auto") == "unquantized"
    assert settings_label(preset("nf4-dq").quant, preset("nf4-dq").dtype) == "nf4-dq"
    int8 = preset("int8")
    assert settings_label(int8.quant, int8.dtype) == "int8"
    assert (
        settings_label(QuantSettings(mode="4bit", bnb_4bit_quant_type="fp4")) == "fp4"
    )
