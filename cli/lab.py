"""The measuring commands: `estimate`, `export`, `report` and `compare`."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from cli import hub as cli_hub
from cli import render, textio
from cli.args import (
    add_generation_args,
    add_quant_args,
    check_before_load,
    generation_from_args,
    load_options_from_args,
    number,
    set_values,
    settings_from_args,
)
from cli.output import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    end_progress,
    output_folder,
    stderr_progress,
    tally,
    warn,
)
from core import interrupt
from core.errors import CancelledError, SettingsError


def add_estimate(sub: Any) -> None:
    p = sub.add_parser(
        "estimate", help="memory needed per preset and whether it fits, before loading"
    )
    p.add_argument("model", help="'default', a folder, a config.json, or a hub id")
    p.add_argument(
        "--context",
        type=number("--context", integer=True, low=1),
        default=4096,
        help="tokens in the KV cache (4096)",
    )
    p.add_argument(
        "--batch",
        type=number("--batch", integer=True, low=1),
        default=1,
        help="sequences at once (1)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--explain",
        action="store_true",
        help="each term of the current row, where it comes from (formula or this "
        "machine's calibration) and the load records behind it",
    )
    add_quant_args(p)
    p.set_defaults(func=cmd_estimate)


def add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="save a quantized copy of a model, verified")
    p.add_argument("model", help="'default', a local folder, or a hub id")
    p.add_argument("--out", "-o", required=True, help="the folder to create")
    p.add_argument(
        "--force", action="store_true", help="replace a non-empty --out folder"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_quant_args(p)
    p.set_defaults(func=cmd_export)


def add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="settings, versions, hardware and measured numbers"
    )
    p.add_argument("model", nargs="?", default=None, help="load it to measure it")
    p.add_argument("--prompt", "-p", default=None, help="also generate an answer")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    p.add_argument("--save", default=None, metavar="PATH", help="write PATH.md + .json")
    p.add_argument(
        "--include-load-records",
        action="store_true",
        help="add this machine's load records (each load's estimate and what it "
        "cost); they stay out of a report unless asked for",
    )
    add_quant_args(p)
    add_generation_args(p)
    p.set_defaults(func=cmd_report)


def add_compare(sub: Any) -> None:
    p = sub.add_parser(
        "compare", help="measure several quantization settings side by side"
    )
    p.add_argument("model", help="'default', a local folder, or a hub id")
    p.add_argument(
        "--tokens",
        type=number("--tokens", integer=True, low=1),
        default=32,
        help="greedy tokens to time per row (32)",
    )
    p.add_argument(
        "--streams",
        default=None,
        metavar="N,N",
        help="also time N answers decoding together, e.g. 1,4,8: aggregate and "
        "per-stream tok/s per row",
    )
    p.add_argument(
        "--prompt", "-p", default=None, help="the question every row answers"
    )
    p.add_argument(
        "--eval-tokens",
        type=number("--eval-tokens", integer=True, low=1),
        default=None,
        help="score only the first N tokens of the evaluation text (default: all)",
    )
    p.add_argument(
        "--eval-file",
        default=None,
        help="a text file to score instead of the bundled one",
    )
    p.add_argument(
        "--kl-threshold",
        type=number("--kl-threshold", low=0.0),
        default=None,
        help="KL (nats) above which a token counts as moved, for the share of "
        "tokens above it (default 0.1)",
    )
    p.add_argument(
        "--decode",
        default=None,
        metavar="MODES",
        help="run every row in each decode mode: plain, compiled, lookup "
        "(comma-separated; default plain)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the rows")
    p.add_argument("--save-json", default=None, metavar="FILE", help="also write JSON")
    add_quant_args(
        p,
        quant_help="comma-separated rows, the first being the baseline: presets, "
        "'baseline', or PRESET+FIELD=VALUE (default: baseline,int8,nf4,nf4-dq,fp4)",
        set_help="set a BitsAndBytesConfig field on every quantized row",
    )
    p.set_defaults(func=cmd_compare)


def cmd_estimate(args: argparse.Namespace) -> int:
    """Print the footprint of every preset and the current settings, with verdicts."""
    from core.model import estimate

    quant, options = settings_from_args(args)
    result = cli_hub.hub_table(
        args.model, quant, options, args.context, args.batch, args.json
    ) or estimate.table(
        args.model, quant, options, context=args.context, batch=args.batch
    )
    if args.json:
        data = result.to_dict()
        if args.explain:
            data["explain"] = _explain_json(result.current)
        print(json.dumps(data, indent=2))
    else:
        print(render.estimate_table(result))
        if args.explain:
            print()
            print(render.explain(result.current))
    sys.stdout.flush()  # the count below comes after the table, also in a shared log
    unknown = sum(row.weights_bytes is None for row in result.rows)
    return tally(
        unknown,
        len(result.rows),
        "rows",
        "have no estimate",
        "the note 'weights not estimated' above says why",
    )


def _explain_json(row: Any) -> dict[str, Any]:
    from core.model.estimate import explain

    cal = row.calibration
    return {
        "device": row.device_key,
        "terms": [
            {"part": part, "term": name, "bytes": value, "source": source}
            for part, name, value, source in explain(row)
        ],
        "calibration": row.calibration_text,
        "records": [r.to_dict() for r in cal.records] if cal is not None else [],
        "misses_pct": [round(e, 2) for e in cal.errors_pct] if cal is not None else [],
    }


def cmd_export(args: argparse.Namespace) -> int:
    """Save a quantized copy of a model, verified by reloading it."""
    from core.lab import export
    from core.model import catalog

    quant, options = settings_from_args(args)
    ref = catalog.resolve(args.model)
    warn(check_before_load(ref, quant, options))
    show = stderr_progress(args.json)
    result = export.export(ref, quant, args.out, options, args.force, show)
    end_progress(show)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Print the reproducibility report, loading the model when one is named."""
    from core.lab import report

    output_folder(args.save, "--save")
    quant, options = settings_from_args(args)
    load_report = stats = gen = estimate = None
    name = args.model
    if args.model:
        from core.generation import decode
        from core.model import catalog, loader

        ref = catalog.resolve(args.model)
        name = report.model_id(ref)
        warn(check_before_load(ref, quant, options))
        show = stderr_progress(False)
        estimate = report.estimate_bytes(ref, quant, options)
        loaded = loader.load(ref, quant, options, show)
        end_progress(show)
        try:
            load_report = loaded.report
            if args.prompt:
                gen = generation_from_args(args)
                prompt = textio.read_prompt(args.prompt, sys.stdin)
                _, stats = decode.generate_text(loaded, prompt, gen)
        finally:
            loader.unload(loaded)
    records = None
    if args.include_load_records:
        from core.store import calibration

        records = calibration.load_records()
    data = report.build(
        name, quant, options, load_report, estimate, gen, stats, load_records=records
    )
    if args.save:
        for path in report.save(data, args.save):
            print(f"wrote {path}", file=sys.stderr)
    print(report.to_json(data) if args.json else report.to_markdown(data), end="")
    return EXIT_OK


def _stream_counts(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SettingsError(
            f"--streams {text!r} is not a list of counts", "e.g. --streams 1,4,8"
        ) from None


def cmd_compare(args: argparse.Namespace) -> int:
    """Measure several settings on one model, one row at a time."""
    from core.lab import compare
    from core.model import catalog

    output_folder(args.csv, "--csv")
    output_folder(args.save_json, "--save-json")
    common = set_values(args.set)
    base = load_options_from_args(args)
    rows = args.quant if args.quant is not None else ",".join(compare.DEFAULT_ROWS)
    if args.decode:
        rows = ",".join(compare.with_decode_modes(rows.split(","), args.decode))
    specs = compare.parse_rows(rows, base, common)
    eval_text = textio.read_file(args.eval_file) if args.eval_file else None
    config = compare.CompareConfig(
        prompt=textio.read_prompt(args.prompt, sys.stdin)
        if args.prompt
        else compare.DEFAULT_PROMPT,
        new_tokens=args.tokens,
        eval_text=eval_text,
        eval_tokens=args.eval_tokens,
        streams=_stream_counts(args.streams),
        kl_threshold=compare.DEFAULT_THRESHOLD
        if args.kl_threshold is None
        else args.kl_threshold,
    )
    ref = catalog.resolve(args.model)
    warnings: dict[str, None] = {}
    for spec in specs:
        warnings |= dict.fromkeys(check_before_load(ref, spec.quant, spec.options))
    warn(warnings)
    show = stderr_progress(args.json)
    # Ctrl+C stops at the next token; the rows done so far are still printed
    # and saved.
    stop = threading.Event()
    try:
        with interrupt.signals_set(stop):
            result = compare.run(ref, specs, config, progress=show, cancel=stop)
    except CancelledError as exc:
        result = getattr(exc, "partial", None)
        if result is None:
            raise
    end_progress(show)
    if stop.is_set():
        print(
            f"interrupted: {len(result.rows)} of {len(specs)} rows done",
            file=sys.stderr,
        )
    if args.csv:
        result.save_csv(args.csv)
    if args.save_json:
        result.save_json(args.save_json)
    failed = [row for row in result.rows if not row.ok]
    for row in failed:
        print(f"warning: row {row.name} failed: {row.error}", file=sys.stderr)
    if args.json:
        print(result.to_json())
    elif result.rows:
        print(render.compare_table(result))
        print()
        print(render.compare_summary(result))
        print()
        for row in result.rows:
            if row.ok:
                print(f"{row.name}: {compare.one_line(row.answer)}")
        if config.streams:
            print()
            print(render.streams_lines(result))
        print(
            f"\n[{result.model} · {len(result.rows)} rows in {result.total_s:.1f} s · "
            f"{result.rows[0].eval_tokens or 0} evaluation tokens]",
            file=sys.stderr,
        )
    sys.stdout.flush()  # the count below is the last line, also in a shared log
    hints = {row.hint or "" for row in failed}
    hint = hints.pop() if len(hints) == 1 else "each row's warning above says why"
    done = tally(len(failed), len(result.rows), "rows", hint=hint)
    return EXIT_INTERRUPTED if stop.is_set() else done
