"""What the CLI prints besides its results: exit codes, progress, errors and warnings."""

from __future__ import annotations

import errno
import re
import sys
from collections.abc import Callable, Iterable

from core import interrupt

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = interrupt.EXIT_INTERRUPTED
EXIT_PARTIAL = 3  # a command of several units of work: some failed, the rest are done
EXIT_BROKEN_PIPE = 141  # what a shell reports for a tool ended by SIGPIPE

# What changes within one stage: "Loading weights 3/9", "Compiling … (12 s)".
_COUNTER = re.compile(r"\s*(\d+/\d+|\(\d+ s\))$")


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


def warn(warnings: Iterable[str]) -> None:
    """Each warning on its own stderr line."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cli_hint(hint: str) -> str:
    """The window's hints point at its Details button; the CLI has --debug instead."""
    if re.search(r"\bsee (the )?(details|log)\b", hint, re.IGNORECASE):
        return "run again with --debug for the details"
    return hint


def print_error(message: str, hint: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def tally(
    failed: int, total: int, units: str, how: str = "failed", hint: str = ""
) -> int:
    """The exit status of `total` units of work of which `failed` failed.

    0 when none failed; otherwise the last lines on stderr say how many (with `hint`
    when all failed), and the status is EXIT_PARTIAL when some were done, and
    EXIT_UNEXPECTED when none was.
    """
    if not failed:
        return EXIT_OK
    if failed >= total:
        print_error(f"all {total} {units} {how}", cli_hint(hint))
        return EXIT_UNEXPECTED
    print(f"{failed} of {total} {units} {how}", file=sys.stderr)
    return EXIT_PARTIAL


# What a failed write looks like; any other OSError is named for what it is.
WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
}


def os_problem(exc: OSError) -> str:
    """An OSError that is no failed write, in words: what was not found, and where."""
    what = {
        FileNotFoundError: "a file was not found",
        IsADirectoryError: "a folder was given where a file was expected",
        NotADirectoryError: "a file was given where a folder was expected",
    }.get(type(exc), type(exc).__name__)
    detail = exc.strerror if exc.errno is not None else str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{what}: {detail}{where}" if detail else f"{what}{where}"


def output_folder(path: str | None, flag: str) -> None:
    """Refuse `flag PATH` before any work when PATH cannot be written: its folder is
    missing, is a file, or cannot be written to (a model would load for minutes
    first, then fail on a temporary file's name)."""
    import os
    from pathlib import Path

    from core.errors import NibbleError

    if not path:
        return
    target = Path(path).expanduser()
    folder = target.parent
    if target.is_dir():
        raise NibbleError(
            f"{flag} {path} is a folder", f"give a file name, e.g. {target / 'out'}"
        )
    if not folder.exists():
        raise NibbleError(
            f"the folder {folder} for {flag} does not exist",
            "create it first, or pick another path",
        )
    if not folder.is_dir():
        raise NibbleError(
            f"{folder} (for {flag}) is a file, not a folder", "pick another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise NibbleError(
            f"cannot write to {folder} (for {flag}): permission denied",
            "choose a folder you can write to",
        )
