"""The Compare lab: run a list of settings on one model and measure every row.

Rows run one at a time with an unload between them, so a comparison runs wherever one
copy of the model fits. Per row: load time, peak memory during the load, true bytes,
time to first token and decode speed for a fixed number of greedy tokens, perplexity
on the bundled evaluation text (strided windows), KL divergence and top-1 agreement of
the next-token distributions against the first (baseline) row, and the answer to a
fixed prompt.

The baseline's distributions stay in memory between rows (core.lab.measure says how they
are kept and what the KL covers).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import CancelledError, NibbleError, SettingsError
from core.lab import measure
from core.lab.divergence import DEFAULT_THRESHOLD
from core.model import loader
from core.model.catalog import ModelRef
from core.settings import (
    PRESETS,
    LoadOptions,
    QuantSettings,
    fields_of,
    preset,
)
from core.stack import import_stack
from core.units import format_bytes

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
EVAL_FILE = RESOURCES / "eval" / "pride_and_prejudice.txt"
EVAL_SOURCE = "Jane Austen, Pride and Prejudice (1813), chapters 1-3 (public domain)"
BASELINE = "baseline"
DEFAULT_ROWS: tuple[str, ...] = (BASELINE, "int8", "nf4", "nf4-dq", "fp4")
DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."

Progress = Callable[[int, int, str], None]
RowCallback = Callable[["RowResult"], None]


# -- what to run --


@dataclass
class RowSpec:
    """One row of a comparison: a name, quantization settings and load options."""

    name: str
    quant: QuantSettings
    options: LoadOptions
    title: str = ""
    decode: str = "plain"
    """The decode mode: plain, compiled (loads with fast decode) or prompt lookup."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.quant.to_dict(),
            "options": self.options.to_dict(),
            "decode": self.decode,
        }


def parse_rows(
    items: str | Sequence[str | RowSpec] | None,
    base: LoadOptions | None = None,
    common: dict[str, str] | None = None,
) -> list[RowSpec]:
    """Turn 'baseline,int8,nf4+bnb_4bit_compute_dtype=bfloat16' into row specs.

    Parameters
    ----------
    items
        Comma-separated text or a list. Each item is a preset name (or ``baseline``:
        unquantized in the model's own dtype, fp32 on the CPU), optionally followed by
        ``+FIELD=VALUE`` changes to any QuantSettings field, or ``+dtype=...``.
    base
        Load options shared by every row (device map, memory caps); a preset's dtype
        replaces the base dtype.
    common
        FIELD=VALUE changes applied to every quantized row.
    """
    base = base or LoadOptions()
    if items is None:
        items = list(DEFAULT_ROWS)
    if isinstance(items, str):
        items = items.split(",")
    items = [i.strip() if isinstance(i, str) else i for i in items]
    items = [i for i in items if not (isinstance(i, str) and not i)]
    if not items:
        raise SettingsError(
            "no settings to compare",
            f"list presets, e.g. {','.join(DEFAULT_ROWS)}",
        )
    specs: list[RowSpec] = []
    seen: set[str] = set()
    for item in items:
        spec = item if isinstance(item, RowSpec) else _parse_row(item, base, common)
        name, n = spec.name, 2
        while name in seen:
            name, n = f"{spec.name} ({n})", n + 1
        spec.name = name
        seen.add(name)
        specs.append(spec)
    return specs


def _parse_row(text: str, base: LoadOptions, common: dict[str, str] | None) -> RowSpec:
    head, *changes = [part.strip() for part in text.split("+")]
    if head.lower() == BASELINE:
        quant, dtype, title = QuantSettings(), base.dtype, "Baseline"
    else:
        chosen = preset(head)
        quant, dtype, title = chosen.quant, chosen.dtype, chosen.title
    values: dict[str, str] = {}
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep or not key.strip():
            raise SettingsError(
                f"{change!r} in {text!r} is not FIELD=VALUE",
                "write a variation as nf4+bnb_4bit_compute_dtype=bfloat16",
            )
        values[key.strip()] = value.strip()
    if quant.quantized and common:
        values = {**common, **values}
    dtype = values.pop("dtype", dtype)
    mode = decode_mode_of(values.pop("decode", "plain"))
    quant = quant.with_values(values)
    options = LoadOptions.from_dict(
        {**base.to_dict(), "dtype": dtype, "fast_decode": mode == "compiled"}
    )
    if changes:
        title = f"{title} ({', '.join(changes)})"
    return RowSpec(text.lower() if not changes else text, quant, options, title, mode)


DECODE_ALIASES = {"lookup": "prompt lookup", "prompt_lookup": "prompt lookup"}


def with_decode_modes(items: Sequence[str], modes: str | Sequence[str]) -> list[str]:
    """Each row once per decode mode: 'nf4' with compiled → 'nf4', 'nf4+decode=compiled'.

    `modes` is a list or comma-separated text of plain, compiled, lookup; the rows
    without plain are left out when plain is not among them.
    """
    if isinstance(modes, str):
        modes = [m for m in modes.split(",") if m.strip()]
    wanted = [decode_mode_of(m) for m in modes] or ["plain"]
    out = list(items) if "plain" in wanted else []
    for mode in wanted:
        if mode != "plain":
            word = "lookup" if mode == "prompt lookup" else mode
            out += [f"{item}+decode={word}" for item in items]
    return out


def decode_mode_of(text: str) -> str:
    """A row's decode mode from '+decode=…' (plain, compiled, lookup)."""
    from core.generation.decode import DECODE_MODES

    mode = DECODE_ALIASES.get(text.strip().lower(), text.strip().lower())
    if mode not in DECODE_MODES:
        raise SettingsError(
            f"decode mode {text!r} is not known",
            "use +decode=plain, +decode=compiled or +decode=lookup",
        )
    return mode


@dataclass
class CompareConfig:
    """What every row is measured on."""

    prompt: str = DEFAULT_PROMPT
    new_tokens: int = 32
    eval_text: str | None = None  # None: the bundled text
    eval_tokens: int | None = None  # cap on the evaluation tokens; None: all
    window: int = 512
    stride: int = 256
    top_k: int = 4096
    kl_threshold: float = DEFAULT_THRESHOLD
    """A token whose KL vs the baseline is above this (nats) counts as moved."""
    streams: tuple[int, ...] = ()
    """Optional concurrent streams dimension: for each count n, n greedy answers to
    the prompt decode together through the generation queue; the row records the
    aggregate and per-stream tok/s (e.g. (1, 4, 8))."""

    def __post_init__(self) -> None:
        self.streams = tuple(int(n) for n in self.streams)
        if any(not 1 <= n <= 64 for n in self.streams):
            raise SettingsError(
                f"concurrent streams must be 1 to 64, got {list(self.streams)}",
                "e.g. 1,4,8",
            )
        if not self.prompt.strip():
            raise SettingsError("the prompt is empty", "type a prompt for the answers")
        if self.new_tokens < 2:
            raise SettingsError(
                f"tokens must be at least 2, got {self.new_tokens}",
                "decode speed needs a first token and at least one more",
            )
        if self.eval_tokens is not None and self.eval_tokens < 16:
            raise SettingsError(
                f"evaluation tokens must be at least 16, got {self.eval_tokens}",
                "use 16 or more, or leave it empty for the whole text",
            )
        if not 0 < self.stride <= self.window:
            raise SettingsError(
                f"stride {self.stride} must be between 1 and the window {self.window}",
                "the usual choice is half the window",
            )
        if self.top_k < 1:
            raise SettingsError("top_k must be at least 1", "4096 is the default")
        if not self.kl_threshold >= 0:
            raise SettingsError(
                f"the KL threshold must be 0 or more, got {self.kl_threshold}",
                f"{DEFAULT_THRESHOLD} nats is the default",
            )

    def text(self) -> str:
        return self.eval_text if self.eval_text is not None else bundled_text()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("eval_text")
        data["eval_source"] = "custom" if self.eval_text is not None else EVAL_SOURCE
        return data


def bundled_text() -> str:
    """The bundled public-domain evaluation text."""
    return EVAL_FILE.read_text(encoding="utf-8")


# -- what comes out --


@dataclass
class RowResult:
    """The measured numbers of one row; `error` is set when the row failed."""

    name: str
    title: str
    settings: dict[str, Any]
    options: dict[str, Any]
    status: str = "ok"  # ok | failed
    error: str | None = None
    hint: str | None = None
    load_s: float | None = None
    # The truthful peak: VRAM on a GPU, else anonymous memory where the OS tells it
    # (core.memory), else RSS.
    peak_bytes: int | None = None
    peak_rss_bytes: int | None = None
    peak_anon_bytes: int | None = None
    peak_vram_bytes: int | None = None
    rss_before_bytes: int | None = None
    true_bytes: int | None = None
    bits: int | None = None
    device: str | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    new_tokens: int | None = None
    perplexity: float | None = None
    eval_tokens: int | None = None
    kl_vs_baseline: float | None = None
    top1_agreement: float | None = None
    kl_share_above: float | None = None
    """The share of evaluation tokens whose KL vs the baseline is above the
    comparison's `kl_threshold`."""
    answer: str | None = None
    decode_mode: str = "plain"
    streams: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per concurrent-stream count ("4"): tokens, aggregate_tok_s, per_stream_tok_s."""
    row_s: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RowResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


CSV_MEASURES = (
    "load_s",
    "peak_bytes",
    "peak_rss_bytes",
    "peak_anon_bytes",
    "peak_vram_bytes",
    "true_bytes",
    "bits",
    "ttft_s",
    "tokens_per_s",
    "decode_mode",
    "new_tokens",
    "perplexity",
    "eval_tokens",
    "kl_vs_baseline",
    "top1_agreement",
    "kl_share_above",
    "answer",
    "streams",
    "row_s",
    "device",
)
CSV_ENVIRONMENT = (
    "torch",
    "transformers",
    "bitsandbytes",
    "cpu",
    "gpus",
    "driver",
    "cuda",
    "python",
    "platform",
)


@dataclass
class CompareResult:
    """All rows of one comparison, with what they ran on."""

    model: str
    rows: list[RowResult]
    environment: dict[str, Any]
    config: dict[str, Any]
    total_s: float = 0.0
    created: str = ""

    @property
    def baseline(self) -> RowResult | None:
        """The reference row, when it completed."""
        return self.rows[0] if self.rows and self.rows[0].ok else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "created": self.created,
            "total_s": round(self.total_s, 3),
            "config": self.config,
            "rows": [r.to_dict() for r in self.rows],
            "pareto": pareto_front(self.rows),
            "environment": self.environment,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareResult:
        return cls(
            model=data["model"],
            rows=[RowResult.from_dict(r) for r in data["rows"]],
            environment=data.get("environment", {}),
            config=data.get("config", {}),
            total_s=data.get("total_s", 0.0),
            created=data.get("created", ""),
        )

    def to_csv(self) -> str:
        """One line per row: measures, every setting, load options and environment."""
        setting_names = [f.name for f in fields_of(QuantSettings)]
        option_names = ["device_map", "max_memory", "dtype", "attn_implementation"]
        header = [
            "model",
            "name",
            "status",
            "error",
            *CSV_MEASURES,
            *setting_names,
            *option_names,
            "eval_source",
            "prompt",
            *(f"env_{k}" for k in CSV_ENVIRONMENT),
        ]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for row in self.rows:
            line: list[Any] = [self.model, row.name, row.status, row.error or ""]
            line += [_csv_value(getattr(row, k)) for k in CSV_MEASURES]
            line += [_csv_value(row.settings.get(k)) for k in setting_names]
            line += [_csv_value(row.options.get(k)) for k in option_names]
            line += [self.config.get("eval_source", ""), self.config.get("prompt", "")]
            line += [_csv_value(self.environment.get(k)) for k in CSV_ENVIRONMENT]
            writer.writerow(line)
        return out.getvalue()

    def save_json(self, path: str | Path) -> Path:
        return _write(Path(path), self.to_json())

    def save_csv(self, path: str | Path) -> Path:
        return _write(Path(path), self.to_csv())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value) if value else ""
    return value


def _write(path: Path, text: str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise NibbleError(
            f"cannot write {path}: {exc.strerror or exc}",
            "pick a folder you can write to",
        ) from exc
    return path


# -- analysis --


def pareto_front(rows: Sequence[RowResult]) -> list[str]:
    """Names of the rows no other row beats on both memory and perplexity."""
    done = [r for r in rows if r.ok and r.true_bytes and r.perplexity is not None]
    front = []
    for r in done:
        dominated = any(
            s is not r
            and s.true_bytes <= r.true_bytes
            and s.perplexity <= r.perplexity
            and (s.true_bytes < r.true_bytes or s.perplexity < r.perplexity)
            for s in done
        )
        if not dominated:
            front.append(r.name)
    return front


SEED_COLUMNS = ("Method", "Bits", "Memory savings", "Accuracy hit", "Best for")


def seed_table(result: CompareResult) -> list[dict[str, str]]:
    """The at-a-glance table (Method, Bits, Memory savings, Accuracy hit, Best for)
    with this model's measured numbers in every cell."""
    base = result.baseline
    done = [r for r in result.rows if r.ok]
    front = set(pareto_front(result.rows))
    smallest = min(done, key=lambda r: r.true_bytes or math.inf, default=None)
    fastest = max(done, key=lambda r: r.tokens_per_s or 0.0, default=None)
    quantized = [r for r in done if r is not base and r.kl_vs_baseline is not None]
    closest = min(quantized, key=lambda r: r.kl_vs_baseline or 0.0, default=None)
    table = []
    for row in result.rows:
        cells = {
            "Method": row.title or row.name,
            "Bits": str(row.bits) if row.bits else "—",
        }
        if not row.ok:
            cells.update(
                {
                    "Memory savings": "—",
                    "Accuracy hit": "—",
                    "Best for": f"failed: {row.error}",
                }
            )
            table.append(cells)
            continue
        cells["Memory savings"] = _savings(row, base)
        cells["Accuracy hit"] = _accuracy(row, base)
        best: list[str] = []
        if row is base:
            best.append("the reference: full accuracy")
        if row is smallest and len(done) > 1:
            best.append("the smallest memory")
        if row is fastest and len(done) > 1:
            best.append("the fastest decode here")
        if row is closest and len(quantized) > 1:
            best.append("the closest to the baseline")
        if not best:
            if row.name in front:
                best.append("a balance of memory and accuracy")
            else:
                better = _dominator(row, done)
                best.append(
                    f"nothing here: {better} has lower perplexity in no more memory"
                )
        text = "; ".join(best)
        cells["Best for"] = text[0].upper() + text[1:]
        table.append(cells)
    return table


def _savings(row: RowResult, base: RowResult | None) -> str:
    if row.true_bytes is None:
        return "—"
    if base is None or not base.true_bytes:
        return format_bytes(row.true_bytes)
    if row is base:
        return f"reference ({format_bytes(row.true_bytes)})"
    saved = 1 - row.true_bytes / base.true_bytes
    return f"{saved:.0%} ({format_bytes(base.true_bytes)} → {format_bytes(row.true_bytes)})"


def _accuracy(row: RowResult, base: RowResult | None) -> str:
    if row.perplexity is None:
        return "—"
    if row is base:
        return f"none (reference, perplexity {row.perplexity:.2f})"
    parts = []
    if base is not None and base.perplexity:
        change = row.perplexity / base.perplexity - 1
        parts.append(f"perplexity {change:+.1%}")
    else:
        parts.append(f"perplexity {row.perplexity:.2f}")
    if row.kl_vs_baseline is not None:
        parts.append(f"KL {row.kl_vs_baseline:.4f}")
    if row.top1_agreement is not None:
        parts.append(f"top-1 {row.top1_agreement:.1%}")
    return " · ".join(parts)


def _dominator(row: RowResult, done: Sequence[RowResult]) -> str:
    for s in done:
        if (
            s is not row
            and s.true_bytes is not None
            and row.true_bytes is not None
            and s.perplexity is not None
            and row.perplexity is not None
            and s.true_bytes <= row.true_bytes
            and s.perplexity <= row.perplexity
            and (s.true_bytes < row.true_bytes or s.perplexity < row.perplexity)
        ):
            return s.name
    return "another row"


def one_line(text: str | None) -> str:
    """An answer on one line, for tables."""
    return " ".join((text or "").split())


def seed_markdown(result: CompareResult) -> str:
    """The at-a-glance table as Markdown, with the model and the text it was measured on."""
    lines = [
        "| " + " | ".join(SEED_COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in SEED_COLUMNS) + "|",
    ]
    for cells in seed_table(result):
        text = (cells[c].replace("|", "\\|") for c in SEED_COLUMNS)
        lines.append("| " + " | ".join(text) + " |")
    source = result.config.get("eval_source", EVAL_SOURCE)
    lines.append("")
    lines.append(
        f"Measured on {result.model}; memory is the model's true size in memory, "
        f"accuracy is against the first row on {source}."
    )
    return "\n".join(lines) + "\n"


# -- running --


def _bits(spec: RowSpec, report: loader.LoadReport) -> int:
    if spec.quant.mode == "8bit":
        return 8
    if spec.quant.mode == "4bit":
        return 4
    floats = {k: v for k, v in report.dtypes.items() if "float" in k}
    dominant = max(floats, key=floats.get, default="float32")
    return 16 if dominant in ("float16", "bfloat16") else 32


def run_row(
    ref: ModelRef,
    spec: RowSpec,
    config: CompareConfig,
    reference: measure.Reference | None,
    progress: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[RowResult, measure.Reference]:
    """Load, measure and unload one row. Raises on failure; the caller records it.

    With no `reference`, this row's distributions on the evaluation text become it.
    """
    say = progress or (lambda message: None)
    row = RowResult(spec.name, spec.title, spec.quant.to_dict(), spec.options.to_dict())
    row.decode_mode = spec.decode
    started = time.perf_counter()
    loaded = None

    def on_load(done: int, total: int, message: str) -> None:
        say(f"{message} {done}/{total}" if total else message)

    try:
        with measure.PeakMemory() as peak:
            loaded = loader.load(ref, spec.quant, spec.options, on_load, cancel)
        report = loaded.report
        row.load_s = report.load_s
        row.rss_before_bytes = peak.before
        row.peak_rss_bytes = peak.peak_rss
        row.peak_anon_bytes = peak.peak_anon
        row.peak_vram_bytes = peak.peak_vram
        on_gpu = "cuda" in report.device
        if on_gpu and peak.peak_vram:
            row.peak_bytes = peak.peak_vram
        else:
            row.peak_bytes = peak.peak_anon or peak.peak_rss
        row.true_bytes = report.true_bytes
        row.device = report.device
        row.bits = _bits(spec, report)
        row.warnings = list(report.warnings)
        say("Answering the prompt")
        lookup = spec.decode == "prompt lookup"
        row.answer, row.ttft_s, row.tokens_per_s, row.new_tokens = (
            measure.measure_generation(
                loaded, config.prompt, config.new_tokens, cancel, prompt_lookup=lookup
            )
        )
        compiled = loaded.fast_decode is not None and loaded.fast_decode.active
        row.decode_mode = (
            "compiled" if compiled else ("prompt lookup" if lookup else "plain")
        )
        for n in config.streams:
            say(f"{n} concurrent streams")
            row.streams[str(n)] = measure_streams(
                loaded, config.prompt, config.new_tokens, n, cancel
            )

        def on_window(done: int, total: int) -> None:
            say(f"Perplexity window {done}/{total}")

        input_ids = tokenize_eval(loaded.tokenizer, config)
        done = measure.evaluation(
            loaded.model,
            input_ids,
            reference,
            config.window,
            config.stride,
            config.top_k,
            on_window,
            cancel,
            config.kl_threshold,
        )
        reference = done.reference
        row.perplexity, row.eval_tokens = (
            done.perplexity,
            int(reference.argmax.shape[0]),
        )
        row.kl_vs_baseline, row.top1_agreement = done.mean_kl, done.top1_agreement
        row.kl_share_above = done.share_above
    finally:
        loader.unload(loaded)
    row.row_s = time.perf_counter() - started
    return row, reference


def measure_streams(
    loaded: Any,
    prompt: str,
    new_tokens: int,
    streams: int,
    cancel: threading.Event | None = None,
) -> dict[str, float | None]:
    """`streams` greedy answers decoded together by the generation queue: aggregate
    tok/s (all tokens over the wall time) and the median answer's own decode tok/s."""
    import statistics

    from core.generation.decode import GenerationStats
    from core.generation.queue import GenerationQueue, GenerationRequest
    from core.settings import GenerationSettings

    settings = GenerationSettings(greedy=True, max_new_tokens=new_tokens)
    queue = GenerationQueue(loaded, limit=max(streams, 1), max_batch=streams)
    stats: list[GenerationStats] = []
    try:
        queue.pause()
        jobs = [
            queue.submit(GenerationRequest(prompt, settings, source="compare"))
            for _ in range(streams)
        ]
        started = time.perf_counter()
        queue.resume()
        for job in jobs:
            for item in job:
                if cancel is not None and cancel.is_set():
                    queue.cancel_all()
                if isinstance(item, GenerationStats):
                    stats.append(item)
        wall = time.perf_counter() - started
    finally:
        queue.close()
    if cancel is not None and cancel.is_set():
        raise CancelledError("stopped")
    tokens = sum(s.new_tokens for s in stats)
    rates = [s.tokens_per_s for s in stats if s.tokens_per_s]
    return {
        "tokens": tokens,
        "aggregate_tok_s": tokens / wall if wall > 0 else None,
        "per_stream_tok_s": statistics.median(rates) if rates else None,
    }


def tokenize_eval(tokenizer: Any, config: CompareConfig) -> Any:
    """The evaluation text as a [1, N] tensor of token ids."""
    ids = tokenizer(config.text(), return_tensors="pt")["input_ids"]
    if config.eval_tokens is not None:
        ids = ids[:, : config.eval_tokens]
    if ids.shape[1] < 16:
        raise NibbleError(
            f"the evaluation text is only {ids.shape[1]} tokens",
            "use at least 16 tokens of text",
        )
    return ids


def run(
    ref: ModelRef,
    rows: str | Sequence[str | RowSpec] | None = None,
    config: CompareConfig | None = None,
    progress: Progress | None = None,
    on_row: RowCallback | None = None,
    cancel: threading.Event | None = None,
) -> CompareResult:
    """Measure every row on `ref`, one at a time, the first row being the baseline.

    Parameters
    ----------
    ref
        The model.
    rows
        Row specs or their text (see `parse_rows`); None: baseline, int8, nf4,
        nf4-dq, fp4.
    config
        Prompt, token count and evaluation text.
    progress
        Called with (rows done, rows, message).
    on_row
        Called with each finished row, failed rows included.
    cancel
        Checked between rows, at every weight while loading, at every perplexity
        window and every decoded token; raises CancelledError.

    A row that fails (does not fit, a kernel error) is recorded with its error and the
    next row runs; without a baseline, KL and agreement stay empty. A cancelled run's
    CancelledError carries the rows finished before it as `partial` (a CompareResult).
    """
    specs = parse_rows(rows)
    config = config or CompareConfig()
    import_stack()
    started = time.perf_counter()
    report = progress or (lambda done, total, message: None)
    n = len(specs)
    env = measure.environment()
    results: list[RowResult] = []
    reference: measure.Reference | None = None

    def result() -> CompareResult:
        return CompareResult(
            model=ref.name,
            rows=list(results),
            environment=env,
            config={**config.to_dict(), "rows": [s.to_dict() for s in specs]},
            total_s=time.perf_counter() - started,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )

    def cancelled(exc: CancelledError | None = None) -> CancelledError:
        error = exc or CancelledError("Comparison cancelled")
        error.partial = result()  # type: ignore[attr-defined]
        return error

    for i, spec in enumerate(specs):
        if cancel is not None and cancel.is_set():
            raise cancelled()

        def say(message: str, i: int = i, spec: RowSpec = spec) -> None:
            report(i, n, f"{spec.name}: {message}")

        say("starting")
        try:
            row, new_reference = run_row(ref, spec, config, reference, say, cancel)
            if i == 0:
                reference = new_reference
            elif reference is None:
                row.kl_vs_baseline = row.top1_agreement = row.kl_share_above = None
                row.warnings.append("no baseline to compare with: the first row failed")
        except CancelledError as exc:
            raise cancelled(exc) from None
        except NibbleError as exc:
            row = _failed(spec, exc.message, exc.hint)
        except Exception as exc:  # one broken row must not lose the others
            logger.warning("row %s failed", spec.name, exc_info=True)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row = _failed(
                spec, f"{type(exc).__name__}: {text}".rstrip(": "), "see the log"
            )
        results.append(row)
        if on_row is not None:
            on_row(row)
    report(n, n, "Done")
    return result()


def _failed(spec: RowSpec, message: str, hint: str | None) -> RowResult:
    return RowResult(
        spec.name,
        spec.title,
        spec.quant.to_dict(),
        spec.options.to_dict(),
        status="failed",
        error=message,
        hint=hint or None,
    )


def row_names() -> list[str]:
    """What the window offers: the baseline and every preset."""
    return [BASELINE, *PRESETS]
