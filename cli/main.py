"""The headless face of Nibble: `python main.py <command>` over the same core as the window.

Each command group lives in its own module (generate, models, lab, chats, monitor,
serve, hub, selftest), which adds its parsers and holds its `cmd_*` functions; this
module assembles the parser and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from cli import chats, divergence, generate, hub, lab, models, monitor, selftest, serve
from cli.output import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_UNEXPECTED,
    WRITE_ERRNOS,
    cli_hint,
    os_problem,
    print_error,
)
from core import interrupt
from core.errors import NibbleError, write_error

logger = logging.getLogger(__name__)


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
    models.add_commands(sub)
    generate.add_generate(sub)
    lab.add_estimate(sub)
    generate.add_snippet(sub)
    lab.add_export(sub)
    lab.add_report(sub)
    lab.add_compare(sub)
    chats.add_chats_parser(sub)
    selftest.add_commands(sub)
    serve.add_commands(sub)
    monitor.add_commands(sub)
    hub.add_commands(sub)
    divergence.add_commands(sub)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, map errors to exit codes."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except NibbleError as exc:  # a numeric flag out of range (cli.args.number)
        print_error(exc.message, cli_hint(exc.hint))
        return EXIT_BAD_INPUT
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
    from core.store import calibration

    if getattr(args, "records_loads", True):
        calibration.install()  # every load is recorded beside its estimate
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
        if mapped is not None and exc.errno in WRITE_ERRNOS:
            print_error(mapped.message, mapped.hint)
        else:
            print_error(os_problem(exc), "run again with --debug for the traceback")
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
