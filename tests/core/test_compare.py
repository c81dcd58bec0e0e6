"""The Compare lab core: row parsing, the measurements, failures, cancel, exports, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from importlib import metadata
from pathlib import Path

import pytest
import torch

from cli import main as cli
from cli import render
from core.errors import CancelledError, LoadError, SettingsError
from core.lab import compare, measure
from core.model import catalog, loader
from core.settings import LoadOptions, QuantSettings

FAST = compare.CompareConfig(new_tokens=4, eval_tokens=96, window=64, stride=32)


@pytest.fixture(scope="module")
def tiny_ref(tiny_dir: Path) -> catalog.ModelRef:
    return catalog.resolve(str(tiny_dir))


@pytest.fixture(scope="module")
def tiny_result(tiny_ref: catalog.ModelRef) -> compare.CompareResult:
    return compare.run(tiny_ref, "baseline,nf4,int8", FAST)


# -- rows --


def test_default_rows_are_baseline_and_four_presets() -> None:
    specs = compare.parse_rows(None)
    assert [s.name for s in specs] == ["baseline", "int8", "nf4", "nf4-dq", "fp4"]
    assert specs[0].quant == QuantSettings()
    assert specs[0].options.dtype == "auto"
    assert specs[3].quant.bnb_4bit_use_double_quant is True


def test_variations_set_any_field_and_keep_their_text_as_name() -> None:
    specs = compare.parse_rows(
        "fp32, nf4+bnb_4bit_compute_dtype=bf16, int8+llm_int8_threshold=4, "
        "fp32+dtype=bfloat16",
        LoadOptions(device_map="cpu"),
    )
    assert specs[0].options.dtype == "float32"
    assert specs[1].name == "nf4+bnb_4bit_compute_dtype=bf16"
    assert specs[1].quant.bnb_4bit_compute_dtype == "bfloat16"
    assert specs[1].title == "NF4 (bnb_4bit_compute_dtype=bf16)"
    assert specs[2].quant.llm_int8_threshold == 4.0
    assert specs[3].options.dtype == "bfloat16"
    assert all(s.options.device_map == "cpu" for s in specs)


def test_common_changes_reach_quantized_rows_only() -> None:
    specs = compare.parse_rows(
        "baseline,nf4,fp4", common={"bnb_4bit_compute_dtype": "bfloat16"}
    )
    assert specs[0].quant.bnb_4bit_compute_dtype is None
    assert {s.quant.bnb_4bit_compute_dtype for s in specs[1:]} == {"bfloat16"}


def test_repeated_rows_get_distinct_names() -> None:
    assert [s.name for s in compare.parse_rows("nf4,nf4,nf4")] == [
        "nf4",
        "nf4 (2)",
        "nf4 (3)",
    ]


@pytest.mark.parametrize("rows", ["", " , ", []])
def test_an_empty_list_is_refused_with_a_hint(rows: object) -> None:
    with pytest.raises(SettingsError, match="no settings to compare") as info:
        compare.parse_rows(rows)  # type: ignore[arg-type]
    assert "nf4" in info.value.hint


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(SettingsError, match="unknown preset 'q3'") as info:
        compare.parse_rows("baseline,q3")
    assert "nf4-dq" in info.value.hint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nf4+bnb_4bit_compute_dtype", "not FIELD=VALUE"),
        ("nf4+blocksize=128", "not a BitsAndBytesConfig setting"),
        ("nf4+bnb_4bit_quant_type=NF4", "must be 'nf4' or 'fp4'"),
    ],
)
def test_bad_variations_are_refused(text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        compare.parse_rows(text)


def test_config_refuses_what_cannot_be_measured() -> None:
    with pytest.raises(SettingsError, match="tokens must be at least 2"):
        compare.CompareConfig(new_tokens=1)
    with pytest.raises(SettingsError, match="stride"):
        compare.CompareConfig(window=64, stride=128)
    with pytest.raises(SettingsError, match="prompt is empty"):
        compare.CompareConfig(prompt="  ")


def test_the_bundled_text_is_a_few_thousand_words_with_its_source() -> None:
    text = compare.bundled_text()
    assert text.startswith("It is a truth universally acknowledged")
    assert 3000 < len(text.split()) < 6000
    readme = (compare.EVAL_FILE.parent / "README.md").read_text()
    assert "Pride and Prejudice" in readme and "public domain" in readme


# -- measurements --


def _log_probs(model: object, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # type: ignore[operator]


def test_strided_perplexity_scores_every_token_once(tiny_ref: catalog.ModelRef) -> None:
    loaded = loader.load(tiny_ref)
    try:
        ids = compare.tokenize_eval(loaded.tokenizer, FAST)
        assert ids.shape[1] == 96
        done = measure.evaluation(loaded.model, ids, window=128, stride=128)
        ppl, ref = done.perplexity, done.reference
        logp = _log_probs(loaded.model, ids)
        nll = -logp[:-1].gather(1, ids[0, 1:, None]).mean()
        assert ppl == pytest.approx(math.exp(float(nll)), rel=1e-5)
        assert ref.argmax.shape[0] == 95
        assert done.mean_kl == 0.0 and done.top1_agreement == 1.0
        strided = measure.evaluation(loaded.model, ids, window=64, stride=32)
        assert strided.reference.argmax.shape[0] == 95
        assert math.isfinite(strided.perplexity) and strided.perplexity > 1
    finally:
        loader.unload(loaded)


def test_kl_matches_the_full_vocabulary_kl_and_bounds_it_from_below(
    tiny_ref: catalog.ModelRef,
) -> None:
    loaded = loader.load(tiny_ref)
    try:
        model = loaded.model
        ids = compare.tokenize_eval(loaded.tokenizer, FAST)
        top = {"window": 128, "stride": 128, "top_k": 256}
        every = {"window": 128, "stride": 128, "top_k": 49152}
        ref_top = measure.evaluation(model, ids, **top).reference
        ref_all = measure.evaluation(model, ids, **every).reference
        p = _log_probs(model, ids)[:-1]
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        q = _log_probs(model, ids)[:-1]
        full_kl = float((p.exp() * (p - q)).sum(-1).mean())
        agree = float((p.argmax(-1) == q.argmax(-1)).float().mean())
        against_all = measure.evaluation(model, ids, ref_all, **every)
        against_top = measure.evaluation(model, ids, ref_top, **top)
        kl_all, agree_all = against_all.mean_kl, against_all.top1_agreement
        kl_top, agree_top = against_top.mean_kl, against_top.top1_agreement
        assert kl_all == pytest.approx(full_kl, rel=1e-3)
        assert 0 < kl_top <= kl_all * (1 + 1e-6)
        assert agree_all == pytest.approx(agree) and agree_top == pytest.approx(agree)
    finally:
        loader.unload(loaded)


def test_every_row_is_complete_and_the_baseline_is_the_reference(
    tiny_result: compare.CompareResult,
) -> None:
    base, nf4, int8 = tiny_result.rows
    for row in tiny_result.rows:
        assert row.ok, row.error
        assert row.load_s > 0 and row.row_s >= row.load_s
        assert row.peak_rss_bytes >= row.rss_before_bytes > 0
        if "cuda" in (row.device or ""):
            assert row.peak_bytes == row.peak_vram_bytes
        elif row.peak_anon_bytes is not None:  # Linux: the anonymous peak
            assert row.peak_bytes == row.peak_anon_bytes <= row.peak_rss_bytes
        else:
            assert row.peak_bytes == row.peak_rss_bytes
        assert row.true_bytes > 0
        assert row.ttft_s > 0 and row.tokens_per_s > 0 and row.new_tokens == 4
        assert math.isfinite(row.perplexity) and row.eval_tokens == 95
        assert isinstance(row.answer, str)
    assert base.kl_vs_baseline == 0.0 and base.top1_agreement == 1.0
    assert nf4.kl_vs_baseline > 0 and 0 <= nf4.top1_agreement <= 1
    assert int8.kl_vs_baseline > 0
    assert [r.bits for r in tiny_result.rows] == [32, 4, 8]
    assert base.true_bytes > int8.true_bytes > nf4.true_bytes
    assert nf4.settings["bnb_4bit_quant_type"] == "nf4"


def test_results_save_as_json_and_csv_with_settings_and_environment(
    tiny_result: compare.CompareResult, tmp_path: Path
) -> None:
    data = json.loads(tiny_result.save_json(tmp_path / "out" / "r.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["baseline", "nf4", "int8"]
    for key in ("torch", "transformers", "bitsandbytes", "cpu", "gpus", "driver"):
        assert key in data["environment"]
    assert data["environment"]["torch"] == metadata.version("torch")
    assert data["config"]["rows"][1]["settings"]["mode"] == "4bit"
    again = compare.CompareResult.from_dict(data)
    assert again.rows[1].perplexity == tiny_result.rows[1].perplexity
    rows = list(csv.DictReader(io.StringIO(tiny_result.to_csv())))
    assert [r["name"] for r in rows] == ["baseline", "nf4", "int8"]
    assert rows[1]["bnb_4bit_quant_type"] == "nf4" and rows[2]["mode"] == "8bit"
    assert rows[0]["kl_vs_baseline"] == "0.0"
    assert rows[0]["env_bitsandbytes"] == data["environment"]["bitsandbytes"]
    assert float(rows[1]["perplexity"]) == tiny_result.rows[1].perplexity


def test_an_unwritable_export_is_a_clear_error(
    tiny_result: compare.CompareResult, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(compare.NibbleError, match="cannot write"):
        tiny_result.save_csv(blocker / "r.csv")


def _failing_load(monkeypatch: pytest.MonkeyPatch, mode: str, exc: Exception) -> None:
    real = loader.load

    def load(ref, quant=None, options=None, progress=None, cancel=None):  # type: ignore[no-untyped-def]
        if quant is not None and quant.mode == mode:
            raise exc
        return real(ref, quant, options, progress, cancel)

    monkeypatch.setattr(compare.loader, "load", load)


def test_a_row_that_fails_is_reported_and_the_others_complete(
    tiny_ref: catalog.ModelRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_load(monkeypatch, "8bit", LoadError("the model does not fit", "pick nf4"))
    seen: list[str] = []
    result = compare.run(
        tiny_ref, "baseline,int8,nf4", FAST, on_row=lambda r: seen.append(r.name)
    )
    assert seen == ["baseline", "int8", "nf4"]
    base, int8, nf4 = result.rows
    assert base.ok and nf4.ok and nf4.kl_vs_baseline > 0
    assert int8.status == "failed" and int8.error == "the model does not fit"
    assert int8.hint == "pick nf4" and int8.perplexity is None
    table = compare.seed_table(result)
    assert table[1]["Best for"] == "failed: the model does not fit"
    assert "failed" in render.compare_table(result)


def test_an_unexpected_error_fails_its_row_only(
    tiny_ref: catalog.ModelRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_load(monkeypatch, "4bit", RuntimeError("N must be divisible by block_n"))
    result = compare.run(tiny_ref, "baseline,nf4", FAST)
    assert result.rows[0].ok
    assert result.rows[1].error == "RuntimeError: N must be divisible by block_n"


def test_without_a_baseline_there_is_no_kl(
    tiny_ref: catalog.ModelRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_load(monkeypatch, "none", LoadError("broken", "fix it"))
    result = compare.run(tiny_ref, "baseline,nf4", FAST)
    assert result.baseline is None
    nf4 = result.rows[1]
    assert nf4.ok and math.isfinite(nf4.perplexity)
    assert nf4.kl_vs_baseline is None and nf4.top1_agreement is None
    assert "first row failed" in nf4.warnings[-1]


@pytest.mark.parametrize("when", ["nf4: starting", "Perplexity window 1/", "Answering"])
def test_cancel_between_and_inside_rows(tiny_ref: catalog.ModelRef, when: str) -> None:
    stop = threading.Event()
    rows: list[str] = []

    def progress(done: int, total: int, message: str) -> None:
        if when in message:
            stop.set()

    with pytest.raises(CancelledError):
        compare.run(
            tiny_ref,
            "baseline,nf4",
            FAST,
            progress=progress,
            on_row=lambda r: rows.append(r.name),
            cancel=stop,
        )
    assert rows == ([] if when != "nf4: starting" else ["baseline"])


# -- analysis --


def _row(name: str, mem: int, ppl: float, **kw: object) -> compare.RowResult:
    data = {
        "bits": 4,
        "kl_vs_baseline": 0.1,
        "top1_agreement": 0.9,
        "tokens_per_s": 5.0,
    }
    data.update(kw)
    return compare.RowResult(
        name, name.upper(), {}, {}, true_bytes=mem, perplexity=ppl, **data
    )


def test_pareto_front_and_the_seed_table_words_come_from_measurements() -> None:
    rows = [
        _row("baseline", 1000, 10.0, bits=32, kl_vs_baseline=0.0, top1_agreement=1.0),
        _row("int8", 300, 10.1, kl_vs_baseline=0.01, tokens_per_s=9.0),
        _row("nf4", 200, 10.5, kl_vs_baseline=0.05),
        _row("fp4", 200, 11.0, kl_vs_baseline=0.2),
        _row("nf4-dq", 190, 10.6, kl_vs_baseline=0.06),
    ]
    result = compare.CompareResult("m", rows, {}, {})
    assert compare.pareto_front(rows) == ["baseline", "int8", "nf4", "nf4-dq"]
    table = {r["Method"]: r for r in compare.seed_table(result)}
    assert table["BASELINE"]["Memory savings"] == "reference (1000 B)"
    assert table["BASELINE"]["Best for"] == "The reference: full accuracy"
    assert table["INT8"]["Memory savings"] == "70% (1000 B → 300 B)"
    assert table["INT8"]["Accuracy hit"] == "perplexity +1.0% · KL 0.0100 · top-1 90.0%"
    assert table["INT8"]["Best for"] == (
        "The fastest decode here; the closest to the baseline"
    )
    assert table["NF4-DQ"]["Best for"] == "The smallest memory"
    assert table["NF4"]["Best for"] == "A balance of memory and accuracy"
    assert (
        table["FP4"]["Best for"]
        == "Nothing here: nf4 has lower perplexity in no more memory"
    )
    assert table["FP4"]["Bits"] == "4"
    text = render.compare_summary(result)
    assert text.splitlines()[0].split() == [
        "Method", "Bits", "Memory", "savings", "Accuracy", "hit", "Best", "for"
    ]  # fmt: skip


# -- command line --


def test_cli_prints_the_rows_as_json_and_writes_csv(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.csv"
    code = cli.run(
        [
            "compare",
            str(tiny_dir),
            "--quant",
            "fp32,nf4",
            "--tokens",
            "3",
            "--eval-tokens",
            "40",
            "--json",
            "--csv",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    keys = {
        "name",
        "settings",
        "load_s",
        "peak_bytes",
        "true_bytes",
        "ttft_s",
        "tokens_per_s",
        "perplexity",
        "kl_vs_baseline",
        "top1_agreement",
        "answer",
    }
    assert [r["name"] for r in data["rows"]] == ["fp32", "nf4"]
    assert all(keys <= set(r) for r in data["rows"])
    assert data["rows"][0]["kl_vs_baseline"] == 0.0
    assert data["rows"][1]["new_tokens"] == 3
    assert data["environment"]["bitsandbytes"]
    assert out.read_text().startswith("model,name,status,error,load_s")


def test_cli_runs_each_row_in_each_decode_mode(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run(
        [
            *("compare", str(tiny_dir), "--quant", "fp32", "--decode", "plain,lookup"),
            *("--tokens", "6", "--eval-tokens", "40", "--json"),
        ]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["name"] for r in rows] == ["fp32", "fp32+decode=lookup"]
    assert [r["decode_mode"] for r in rows] == ["plain", "prompt lookup"]
    assert rows[1]["answer"] == rows[0]["answer"]  # greedy: the same text
    assert rows[1]["new_tokens"] == rows[0]["new_tokens"] == 6


@pytest.mark.parametrize(
    ("quant", "message"),
    [("", "error: no settings to compare"), ("fp32,q5", "error: unknown preset")],
)
def test_cli_bad_rows_exit_2_with_a_hint(
    quant: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(["compare", "default", "--quant", quant]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "\nhint: " in err


# -- the real model --


@pytest.mark.slow
def test_default_model_baseline_and_nf4() -> None:
    config = compare.CompareConfig(new_tokens=12, eval_tokens=64)
    result = compare.run(catalog.resolve("default"), "baseline,nf4", config)
    base, nf4 = result.rows
    assert base.ok and nf4.ok, (base.error, nf4.error)
    for row in result.rows:
        assert math.isfinite(row.perplexity) and row.perplexity > 1
        assert row.answer is not None and row.tokens_per_s > 0
    # Timing runs on past end-of-sequence; the answer stops where a chat would.
    assert base.new_tokens == nf4.new_tokens == 12
    assert base.answer == "The capital of France is Paris."
    assert base.kl_vs_baseline == 0.0 and base.top1_agreement == 1.0
    assert nf4.kl_vs_baseline > 0
    assert base.true_bytes > nf4.true_bytes
    assert base.bits == 32 and nf4.bits == 4


def test_concurrent_streams_decode_together(tiny_dir) -> None:
    from core.lab.compare import measure_streams
    from core.model import catalog, loader
    from core.settings import preset

    loaded = loader.load(catalog.resolve(str(tiny_dir)), preset("nf4").quant)
    try:
        four = measure_streams(loaded, "Tell me about Paris.", 6, 4)
    finally:
        loader.unload(loaded)
    assert four["tokens"] == 4 * 6
    assert four["aggregate_tok_s"] > 0 and four["per_stream_tok_s"] > 0


def test_stream_counts_out_of_range_are_refused() -> None:
    from core.errors import SettingsError
    from core.lab.compare import CompareConfig

    with pytest.raises(SettingsError, match="concurrent streams must be 1 to 64"):
        CompareConfig(streams=(0, 4))
    assert CompareConfig(streams=("1", 4)).streams == (1, 4)
