"""The headless face of Nibble: `python main.py <command>` over the same core as the window."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from cli import hub as cli_hub
from cli import precheck, textio
from core import interrupt
from core.errors import CancelledError, NibbleError, SettingsError, write_error
from core.settings import (
    EDITABLE_FIELDS,
    GENERATION_FIELDS,
    LOAD_FIELDS,
    PRESETS,
    GenerationSettings,
    LoadOptions,
    OptionSpec,
    QuantSettings,
    preset,
)
from core.units import format_bytes

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = interrupt.EXIT_INTERRUPTED
EXIT_BROKEN_PIPE = 141  # what a shell reports for a tool ended by SIGPIPE


# -- shared argument groups --


def add_quant_args(
    parser: argparse.ArgumentParser,
    quant_help: str | None = None,
    set_help: str | None = None,
) -> None:
    """--quant PRESET, --set FIELD=VALUE and the LoadOptions flags.

    `quant_help` and `set_help` replace the two flags' help where a command reads
    them differently (compare takes a list of rows).
    """
    group = parser.add_argument_group("quantization and loading")
    group.add_argument(
        "--quant",
        default=None,
        metavar="PRESET",
        help=quant_help
        or f"start from a preset: {', '.join(PRESETS)} (default: none, full precision)",
    )
    fields = ", ".join(["mode", *(f.name for f in EDITABLE_FIELDS), "quantize_lm_head"])
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=set_help or f"set a BitsAndBytesConfig field (repeatable): {fields}",
    )
    add_option_args(group, LOAD_FIELDS)


def add_option_args(group: Any, specs: tuple[OptionSpec, ...]) -> None:
    """One flag per LoadOptions / GenerationSettings field, from its metadata.

    Flags default to None (a bool to False) so that "not given" can fall back to a
    preset's value; `option_values` collects what was given.
    """
    types: dict[str, Any] = {"int": int, "float": float, "optional_int": int}
    for spec in specs:
        help_text = spec.description.rstrip(".")
        if spec.kind == "bool":
            group.add_argument(
                spec.flag, dest=spec.name, action="store_true", help=help_text
            )
            continue
        if spec.choices:
            help_text += f" ({', '.join(spec.choices)}{', …' if spec.editable else ''})"
        if spec.default not in (None, ""):
            help_text += f"; default {spec.default}"
        group.add_argument(
            spec.flag,
            dest=spec.name,
            default=None,
            type=types.get(spec.kind, str),
            help=help_text,
        )


def option_values(
    args: argparse.Namespace, specs: tuple[OptionSpec, ...]
) -> dict[str, Any]:
    """The fields of `specs` given on the command line (bools only when set)."""
    values = {spec.name: getattr(args, spec.name, None) for spec in specs}
    return {k: v for k, v in values.items() if v not in (None, False)}


def load_options_from_args(
    args: argparse.Namespace, dtype: str = "auto"
) -> LoadOptions:
    """LoadOptions from the loading flags; `dtype` when --dtype is not given."""
    return LoadOptions(**{"dtype": dtype, **option_values(args, LOAD_FIELDS)})


def settings_from_args(args: argparse.Namespace) -> tuple[QuantSettings, LoadOptions]:
    """QuantSettings + LoadOptions from --quant, --set and the loading flags."""
    quant, dtype = QuantSettings(), "auto"
    if args.quant:
        chosen = preset(args.quant)
        quant, dtype = chosen.quant, chosen.dtype
    values: dict[str, str] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(
                f"--set {item!r} has no '='", "write it as --set FIELD=VALUE"
            )
        values[name.strip()] = value
    quant = quant.with_values(values)
    return quant, load_options_from_args(args, dtype)


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    add_option_args(parser.add_argument_group("generation"), GENERATION_FIELDS)


def generation_from_args(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(**option_values(args, GENERATION_FIELDS))


_COUNTER = re.compile(r"\s*\d+/\d+$")


def stderr_progress(quiet: bool) -> Callable[[int, int, str], None] | None:
    """A progress printer: a live line on a terminal, a line per stage elsewhere.

    `quiet` (--json) silences the live line only: a line per stage on a redirected
    stderr never mixes with the JSON on stdout, and tells a log where time went.
    """
    if quiet and sys.stderr.isatty():
        return None
    last = {"message": ""}
    if not sys.stderr.isatty():

        def log(done: int, total: int, message: str) -> None:
            stage = _COUNTER.sub("", message).strip()
            if stage and stage != last["message"]:
                last["message"] = stage
                print(stage, file=sys.stderr, flush=True)

        log.live = False  # type: ignore[attr-defined]
        return log

    def show(done: int, total: int, message: str) -> None:
        text = f"{message} {done}/{total}" if total else message
        if text != last["message"]:
            last["message"] = text
            print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)

    show.live = True  # type: ignore[attr-defined]
    return show


def end_progress(show: Callable[[int, int, str], None] | None) -> None:
    """Clear a live progress line (a line-per-stage log needs nothing)."""
    if show is not None and getattr(show, "live", False):
        print("\r\033[K", end="", file=sys.stderr)


# -- commands --


def cmd_models(args: argparse.Namespace) -> int:
    """List the models Nibble can open: the default and the HF cache."""
    from core.model import catalog

    refs = [catalog.default_ref(), *catalog.scan_cache()]
    if args.json:
        print(json.dumps([r.to_dict() for r in refs], indent=2))
        return EXIT_OK
    for ref in refs:
        badge = f"  [{ref.quantized}]" if ref.quantized else ""
        size = format_bytes(ref.size_bytes) if ref.size_bytes else "not converted yet"
        print(f"{ref.kind:8} {ref.name:48} {size:>12}{badge}")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Load a model and stream one answer."""
    from core.generation import decode
    from core.model import catalog, loader

    quant, options = settings_from_args(args)
    gen = generation_from_args(args)
    prompt = textio.read_prompt(args.prompt, sys.stdin)
    if not prompt.strip():
        raise NibbleError("the prompt is empty", 'pass --prompt "..." or pipe text in')
    messages: Any = prompt
    if args.system and not args.raw:
        messages = [
            {"role": "system", "content": textio.clean(args.system)},
            {"role": "user", "content": prompt},
        ]
    ref = catalog.resolve(args.model)
    warnings = precheck.check_settings(ref, quant, options)
    turn = None
    chat = None
    if args.save_to_chat is not None:
        from cli.chats import save_to_chat

        chat = save_to_chat(args.save_to_chat, args.system)
    show = stderr_progress(args.json)
    try:
        loaded = loader.load(ref, quant, options, progress=show)
    except BaseException:
        if chat is not None and chat.store is not None:
            chat.store.close()
        raise
    end_progress(show)
    stop = threading.Event()
    chunks: list[str] = []
    stats = None
    # Ctrl+C and SIGTERM stop the answer as Esc does in the window: what was
    # written so far and its stats are kept.
    try:
        if chat is not None:
            # The question is stored before the answer starts; the turn keeps the
            # answer as it streams and stores it, stopped or not, at the end.
            system = textio.clean(args.system) if args.system else None
            turn = chat.ask(prompt, gen, raw=args.raw, system=system, loaded=loaded)
            messages, gen = turn.prompt, turn.settings
        with interrupt.signals_set(stop):
            items = decode.stream(loaded, messages, gen, stop, raw=args.raw)
            for item in turn.follow(items) if turn is not None else items:
                if isinstance(item, decode.GenerationStats):
                    stats = item
                else:
                    chunks.append(item)
                    if not args.json:
                        print(item, end="", flush=True)
    finally:
        if turn is not None:
            from cli.chats import keep_answer

            keep_answer(turn)
        elif chat is not None and chat.store is not None:
            chat.store.close()
        report = loaded.report
        loader.unload(loaded)
    if args.json:
        print(
            json.dumps(
                {
                    "text": "".join(chunks),
                    "stats": stats.to_dict() if stats else None,
                    "report": report.to_dict(),
                    "settings": quant.to_dict(),
                    "options": options.to_dict(),
                    "generation": gen.to_dict(),
                    "conversation_id": turn.conversation_id if turn else None,
                },
                indent=2,
            )
        )
    else:
        print(flush=True)
        for warning in [*warnings, *report.warnings]:
            print(f"warning: {warning}", file=sys.stderr)
        if stats:
            print(
                f"[{report.model} · {quant.label()} · {format_bytes(report.true_bytes)} · "
                f"loaded in {report.load_s:.1f} s] {stats.summary()}",
                file=sys.stderr,
            )
    return EXIT_INTERRUPTED if stop.is_set() else EXIT_OK


def cmd_snippet(args: argparse.Namespace) -> int:
    """Print the Python code that loads a model with these settings."""
    quant, options = settings_from_args(args)
    print(quant.to_python(args.model, options), end="")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Save a quantized copy of a model, verified by reloading it."""
    from core.lab import export
    from core.model import catalog

    quant, options = settings_from_args(args)
    ref = catalog.resolve(args.model)
    for warning in precheck.check_settings(ref, quant, options):
        print(f"warning: {warning}", file=sys.stderr)
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

    quant, options = settings_from_args(args)
    load_report = stats = gen = estimate = None
    name = args.model
    if args.model:
        from core.generation import decode
        from core.model import catalog, loader

        ref = catalog.resolve(args.model)
        name = report.model_id(ref)
        for warning in precheck.check_settings(ref, quant, options):
            print(f"warning: {warning}", file=sys.stderr)
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
    data = report.build(name, quant, options, load_report, estimate, gen, stats)
    if args.save:
        for path in report.save(data, args.save):
            print(f"wrote {path}", file=sys.stderr)
    print(report.to_json(data) if args.json else report.to_markdown(data), end="")
    return EXIT_OK


def cmd_self_test(args: argparse.Namespace) -> int:
    """Load the default model in nf4 and check that it answers Paris."""
    from cli import selftest
    from core.model import default_model

    if args.rebuild:
        print("rebuilding the default model", file=sys.stderr)
        default_model.convert(default_model.model_dir(), stderr_progress(False))
    if selftest.run():
        return EXIT_OK
    if not args.rebuild:
        print(
            "hint: if the default model is damaged, rebuild it: "
            "python main.py --self-test --rebuild",
            file=sys.stderr,
        )
    return EXIT_UNEXPECTED


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
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(estimate.format_table(result))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    """Measure several settings on one model, one row at a time."""
    from core.lab import compare
    from core.model import catalog

    common: dict[str, str] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(
                f"--set {item!r} has no '='", "write it as --set FIELD=VALUE"
            )
        common[name.strip()] = value
    base = load_options_from_args(args)
    rows = args.quant if args.quant is not None else ",".join(compare.DEFAULT_ROWS)
    specs = compare.parse_rows(rows, base, common)
    eval_text = textio.read_file(args.eval_file) if args.eval_file else None
    config = compare.CompareConfig(
        prompt=textio.read_prompt(args.prompt, sys.stdin)
        if args.prompt
        else compare.DEFAULT_PROMPT,
        new_tokens=args.tokens,
        eval_text=eval_text,
        eval_tokens=args.eval_tokens,
    )
    ref = catalog.resolve(args.model)
    warnings: dict[str, None] = {}
    for spec in specs:
        warnings |= dict.fromkeys(
            precheck.check_settings(ref, spec.quant, spec.options)
        )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
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
    done = EXIT_INTERRUPTED if stop.is_set() else EXIT_OK
    if args.csv:
        result.save_csv(args.csv)
    if args.save_json:
        result.save_json(args.save_json)
    for row in result.rows:
        if not row.ok:
            print(f"warning: row {row.name} failed: {row.error}", file=sys.stderr)
    if args.json:
        print(result.to_json())
        return done
    if not result.rows:
        return done
    print(compare.format_table(result))
    print()
    print(compare.format_seed_table(result))
    print()
    for row in result.rows:
        if row.ok:
            print(f"{row.name}: {compare.one_line(row.answer)}")
    print(
        f"\n[{result.model} · {len(result.rows)} rows in {result.total_s:.1f} s · "
        f"{result.rows[0].eval_tokens or 0} evaluation tokens]",
        file=sys.stderr,
    )
    return done


def cmd_monitor(args: argparse.Namespace) -> int:
    """Print memory samples (GPUs, host RAM, one process) until time is up or Ctrl+C."""
    import psutil

    from core import monitor

    interval = monitor.check_interval(args.interval)
    if args.seconds is not None and args.seconds < interval:
        raise SettingsError(
            f"--seconds {args.seconds:g} is shorter than one interval ({interval:g} s)",
            "pass at least one interval, or leave --seconds out to run until Ctrl+C",
        )
    if args.pid is not None and args.pid <= 0:
        raise SettingsError(
            f"--pid {args.pid} is not a process ID",
            "pass the PID of a running process (see ps or top)",
        )
    with monitor.Sampler(pid=args.pid) as sampler:
        try:
            for sample in monitor.samples(sampler, interval, args.seconds):
                line = json.dumps(sample.to_dict()) if args.json else sample.summary()
                print(line, flush=True)
        except KeyboardInterrupt:  # the usual way to stop watching
            pass
        except psutil.NoSuchProcess:
            print(f"process {sampler.pid} has ended", file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over the OpenAI API until Ctrl+C, then unload it."""
    from core.generation.queue import GenerationQueue
    from core.model import catalog, loader
    from core.stack import import_stack
    from server import app as server

    config = server.ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        cors_origins=args.cors,
        log_prompts=args.log_prompts,
    )  # refuses a non-loopback host without a key before anything loads
    quant, options = settings_from_args(args)
    if args.queue < 1:
        raise SettingsError(f"--queue {args.queue} is too small", "use 1 or more")
    import_stack()
    show = stderr_progress(False)
    loaded = loader.load(catalog.resolve(args.model), quant, options, progress=show)
    if show:
        print("\r\033[K", end="", file=sys.stderr)
    queue = GenerationQueue(loaded, limit=args.queue)
    api = server.Server(queue, config)

    def ready(url: str) -> None:
        name = api.model_names()[0]
        print(f"Serving {name} ({quant.label()}) at {url}", flush=True)
        print(server.curl_line(url, name, config.api_key), flush=True)
        print("Press Ctrl+C to stop.", file=sys.stderr, flush=True)

    try:
        server.serve_forever(api, ready)
    finally:
        queue.close()
        loader.unload(loaded)
    print("stopped; the model is unloaded", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nibble",
        description="Run Hugging Face language models in 4-bit and 8-bit with bitsandbytes. "
        "With no command, opens the window.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the default model and your HF cache")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("generate", help="load a model and stream an answer")
    p.add_argument("model", help="'default', a local folder, or a hub id")
    p.add_argument("--prompt", "-p", default=None, help="the question (default: stdin)")
    p.add_argument("--system", default=None, help="a system prompt")
    p.add_argument(
        "--raw", action="store_true", help="plain completion, no chat template"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object at the end"
    )
    add_quant_args(p)
    add_generation_args(p)
    p.add_argument(
        "--save-to-chat",
        nargs="?",
        const="new",
        default=None,
        metavar="ID",
        help="keep the question and answer in the chat history: a new conversation, "
        "or continue conversation ID (its earlier messages are the context)",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "estimate", help="memory needed per preset and whether it fits, before loading"
    )
    p.add_argument("model", help="'default', a folder, a config.json, or a hub id")
    p.add_argument(
        "--context", type=int, default=4096, help="tokens in the KV cache (4096)"
    )
    p.add_argument("--batch", type=int, default=1, help="sequences at once (1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_quant_args(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("snippet", help="print the Python code for these settings")
    p.add_argument("model", nargs="?", default="your-model-name")
    add_quant_args(p)
    p.set_defaults(func=cmd_snippet)

    p = sub.add_parser("export", help="save a quantized copy of a model, verified")
    p.add_argument("model", help="'default', a local folder, or a hub id")
    p.add_argument("--out", "-o", required=True, help="the folder to create")
    p.add_argument(
        "--force", action="store_true", help="replace a non-empty --out folder"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_quant_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report", help="settings, versions, hardware and measured numbers"
    )
    p.add_argument("model", nargs="?", default=None, help="load it to measure it")
    p.add_argument("--prompt", "-p", default=None, help="also generate an answer")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    p.add_argument("--save", default=None, metavar="PATH", help="write PATH.md + .json")
    add_quant_args(p)
    add_generation_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "compare", help="measure several quantization settings side by side"
    )
    p.add_argument("model", help="'default', a local folder, or a hub id")
    p.add_argument(
        "--tokens", type=int, default=32, help="greedy tokens to time per row (32)"
    )
    p.add_argument(
        "--prompt", "-p", default=None, help="the question every row answers"
    )
    p.add_argument(
        "--eval-tokens",
        type=int,
        default=None,
        help="score only the first N tokens of the evaluation text (default: all)",
    )
    p.add_argument(
        "--eval-file",
        default=None,
        help="a text file to score instead of the bundled one",
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

    from cli.chats import add_chats_parser

    add_chats_parser(sub)

    p = sub.add_parser(
        "self-test", help="load the default model in nf4 and check it answers"
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="convert the default model again first (a damaged copy)",
    )
    p.set_defaults(func=cmd_self_test)
    p = sub.add_parser("serve", help="serve a model over the OpenAI API")
    p.add_argument("model", help="'default', a local folder, or a hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("NIBBLE_API_KEY") or None,
        help="require this Bearer key (default: $NIBBLE_API_KEY); "
        "needed to listen beyond this machine",
    )
    p.add_argument(
        "--served-model-name", default=None, help="another name clients may use"
    )
    p.add_argument("--queue", type=int, default=16, help="requests that may wait (16)")
    p.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN call the API (repeatable)",
    )
    p.add_argument(
        "--log-prompts", action="store_true", help="log prompt texts (off by default)"
    )
    add_quant_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("monitor", help="print GPU, RAM and process memory samples")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="how long to watch (default: until Ctrl+C)",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between samples, 0.25-5"
    )
    p.add_argument(
        "--pid", type=int, default=None, help="the process to watch (default: this one)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_monitor)
    cli_hub.add_commands(sub)
    return parser


def cli_hint(hint: str) -> str:
    """The window's hints point at its Details button; the CLI has --debug instead."""
    if re.search(r"\bsee (the )?(details|log)\b", hint, re.IGNORECASE):
        return "run again with --debug for the details"
    return hint


def print_error(message: str, hint: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, map errors to exit codes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    if not sys.stderr.isatty():
        # Libraries' own bars (the GGUF conversion's) would fill a log with \r;
        # tqdm reads this when it is imported, which has not happened yet.
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        with interrupt.sigterm_as_ctrl_c():
            return args.func(args)
    except NibbleError as exc:
        print_error(exc.message, cli_hint(exc.hint))
        if args.debug:
            traceback.print_exc()
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a file or folder the user named, a full disk
        mapped = write_error(exc, exc.filename or "the disk")
        print_error(
            mapped.message if mapped else str(exc), mapped.hint if mapped else ""
        )
        if args.debug:
            traceback.print_exc()
        return EXIT_BAD_INPUT
    except Exception as exc:
        print(
            f"error: unexpected {type(exc).__name__}: {exc}".splitlines()[0],
            file=sys.stderr,
        )
        if args.debug:
            traceback.print_exc()
        else:
            print("hint: run again with --debug for the traceback", file=sys.stderr)
        return EXIT_UNEXPECTED
