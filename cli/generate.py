"""`generate` (load a model and stream one answer) and `snippet` (the Python for it)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
from pathlib import Path
from typing import Any

from cli import textio
from cli.args import (
    add_generation_args,
    add_quant_args,
    check_before_load,
    generation_from_args,
    settings_from_args,
)
from cli.fit import add_fit_arg, fit_before_load, load_after_fit
from cli.output import EXIT_INTERRUPTED, EXIT_OK, end_progress, stderr_progress, warn
from core import interrupt
from core.errors import NibbleError, SettingsError
from core.settings import settings_label
from core.units import format_bytes


def add_generate(sub: Any) -> None:
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
    reply = p.add_mutually_exclusive_group()
    reply.add_argument(
        "--json-object",
        action="store_true",
        help="the answer is a JSON object (constrained decoding)",
    )
    reply.add_argument(
        "--json-schema",
        metavar="FILE",
        default=None,
        help="the answer is JSON that matches the JSON schema in FILE",
    )
    add_quant_args(p)
    add_fit_arg(p)
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


def add_snippet(sub: Any) -> None:
    p = sub.add_parser("snippet", help="print the Python code for these settings")
    p.add_argument("model", nargs="?", default="your-model-name")
    add_quant_args(p)
    p.set_defaults(func=cmd_snippet)


def constraint_from_args(args: argparse.Namespace) -> Any:
    """--json-object / --json-schema FILE as a Constraint, checked before any load."""
    from core.generation.constrain import reply_constraint

    if args.json_schema is not None:
        path = Path(args.json_schema).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(
                f"cannot read the JSON schema {path}: {exc.strerror or exc}",
                "pass the path of a .json file that holds the schema",
            ) from None
        return reply_constraint(text, path.stem)
    if args.json_object:
        return reply_constraint()
    return None


def cmd_generate(args: argparse.Namespace) -> int:
    """Load a model and stream one answer."""
    from core.generation import decode
    from core.model import catalog, loader

    quant, options = settings_from_args(args)
    gen = generation_from_args(args)
    constraint = constraint_from_args(args)
    if constraint is not None and gen.prompt_lookup:
        # Said before the load, not after the answer: the two never combine.
        print(f"note: {decode.LOOKUP_OFF_FOR_GRAMMAR}", file=sys.stderr)
        gen = dataclasses.replace(gen, prompt_lookup=False)
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
    warnings = check_before_load(ref, quant, options)
    fitted = fit_before_load(args.fit, ref, quant, options)
    if fitted.step is not None:
        ref, quant, options = fitted.ref, fitted.quant, fitted.options
        if fitted.context is not None and gen.max_new_tokens > fitted.context:
            gen = dataclasses.replace(gen, max_new_tokens=fitted.context)
    turn = None
    chat = None
    if args.save_to_chat is not None:
        from cli.chats import save_to_chat

        chat = save_to_chat(args.save_to_chat, args.system)
    show = stderr_progress(args.json)
    try:
        loaded = load_after_fit(
            args.fit, lambda: loader.load(ref, quant, options, progress=show)
        )
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
            turn = chat.ask(
                prompt,
                gen,
                raw=args.raw,
                system=system,
                loaded=loaded,
                constraint=constraint,
            )
            messages, gen = turn.prompt, turn.settings
        with interrupt.signals_set(stop):
            items = decode.stream(
                loaded, messages, gen, stop, raw=args.raw, constraint=constraint
            )
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
                    "constraint": constraint.to_dict() if constraint else None,
                    "conversation_id": turn.conversation_id if turn else None,
                },
                indent=2,
            )
        )
    else:
        print(flush=True)
        warn([*warnings, *report.warnings])
        if stats:
            print(
                f"[{report.model} · {settings_label(quant, options.dtype)} · "
                f"{format_bytes(report.true_bytes)} · "
                f"loaded in {report.load_s:.1f} s] {stats.summary()}",
                file=sys.stderr,
            )
            if stats.decode_note:  # why the mode asked for was not used, a recompile
                print(f"note: {stats.decode_note}", file=sys.stderr)
            if constraint is not None and stats.stop_reason == decode.STOP_MAX:
                print(
                    f"note: the answer was cut at {stats.new_tokens} tokens, before "
                    f"the {constraint.label()} was complete: raise --max-new-tokens, "
                    "or bound the answer with a schema (maxLength, maximum, "
                    '"additionalProperties": false)',
                    file=sys.stderr,
                )
    return EXIT_INTERRUPTED if stop.is_set() else EXIT_OK


def cmd_snippet(args: argparse.Namespace) -> int:
    """Print the Python code that loads a model with these settings."""
    quant, options = settings_from_args(args)
    print(quant.to_python(args.model, options), end="")
    return EXIT_OK
