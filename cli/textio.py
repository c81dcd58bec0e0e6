"""Text a user hands in (stdin, --prompt, files): bounded in size, never bad UTF-8.

Python reads undecodable bytes in argv and stdin as lone surrogates, which the
tokenizers reject with a TypeError; they become U+FFFD here instead. Every read stops
one byte past its limit, so a 300 MB prompt costs 8 MiB of memory before it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from core.errors import NibbleError
from core.units import format_bytes

# No model's context holds this much text (1M tokens are about 4 MB).
MAX_PROMPT_BYTES = 8 * 1024 * 1024
MAX_FILE_BYTES = 64 * 1024 * 1024


def clean(text: str) -> str:
    """`text` with undecodable bytes (surrogate escapes) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "replace")
    return text


def read_bounded(stream: BinaryIO, limit: int, what: str) -> str:
    """Read `stream` as UTF-8 (bad bytes replaced), refusing more than `limit` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise NibbleError(
            f"{what} is larger than {format_bytes(limit)}",
            "pass a shorter text; no model's context holds this much",
        )
    return data.decode("utf-8", "replace")


def read_prompt(given: str | None, stdin: object) -> str:
    """--prompt, or `stdin` when it is not given; bounded, bad UTF-8 replaced."""
    if given is not None:
        if len(given.encode("utf-8", "surrogateescape")) > MAX_PROMPT_BYTES:
            raise NibbleError(
                f"the prompt is larger than {format_bytes(MAX_PROMPT_BYTES)}",
                "pass a shorter text; no model's context holds this much",
            )
        return clean(given)
    return read_stdin(stdin)


def read_stdin(stdin: object, limit: int = MAX_PROMPT_BYTES) -> str:
    """The prompt piped in on `stdin` (sys.stdin), bounded."""
    buffer = getattr(stdin, "buffer", None)
    if buffer is None:  # a replaced stdin (tests) already holds text
        return clean(stdin.read(limit + 1))  # type: ignore[attr-defined]
    return read_bounded(buffer, limit, "the prompt on stdin")


def read_file(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """A user's text file, bounded; NibbleError when it cannot be read."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise NibbleError(f"{path} is a folder", "pass a text file")
    try:
        with path.open("rb") as fh:
            return read_bounded(fh, limit, str(path))
    except OSError as exc:
        raise NibbleError(
            f"cannot read {path}: {exc.strerror or exc}", "pass a readable text file"
        ) from exc
