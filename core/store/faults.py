"""What can go wrong opening or writing the history, told apart by what failed.

A lock is not damage, a read-only file is not damage, and a folder or a read-only disk
is neither: only `DamagedError` and SQLite's CORRUPT / NOTADB may set a file aside.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from core.errors import NibbleError


class ConversationNotFoundError(NibbleError):
    """No conversation or message with that id."""


class HistoryWriteError(NibbleError):
    """The database refused a write (disk full, read-only, locked too long)."""


class HistoryBusyError(HistoryWriteError):
    """Another process held the history locked for longer than `BUSY_WAIT_S`."""

    def __init__(self) -> None:
        super().__init__(
            "the history is busy (another Nibble?)",
            "close the other Nibble or let its answer finish, then try again",
        )


class HistoryReadOnlyError(HistoryWriteError):
    """The history was opened read-only; nothing can be saved to it."""


class HistoryUnavailableError(NibbleError):
    """The history cannot be opened at all (a folder, a read-only disk, no access)."""


BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
READ_ONLY = 8  # SQLITE_READONLY
DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of `exc` (from its text before Python 3.11)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF
    text = str(exc).lower()
    for needle, value in (
        ("locked", 5),
        ("readonly", 8),
        ("malformed", 11),
        ("not a database", 26),
    ):
        if needle in text:
            return value
    return None


class DamagedError(sqlite3.DatabaseError):
    """quick_check found damage."""


def writable(path: Path) -> bool:
    """Whether `path` opens for writing (False for chmod 444, immutable, ro mounts)."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return False
        raise
    return True


def unavailable(path: Path, exc: BaseException) -> HistoryUnavailableError:
    """Why the file cannot be opened, and what to do, from what failed."""
    code = exc.errno if isinstance(exc, OSError) else None
    folder = path.parent
    if (
        code == errno.EROFS
        or sqlite_code(exc) == READ_ONLY
        or (not isinstance(exc, OSError) and not os.access(folder, os.W_OK))
    ):
        reason = "its folder cannot be written to (a read-only disk?)"
        hint = f"make {folder} writable, or set NIBBLE_CONVERSATIONS_DB to a file"
    elif code in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
        hint = f"check the permissions of {path} and {folder}"
    else:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = f"check {path} and its folder, or run again with --debug"
    return HistoryUnavailableError(
        f"cannot open the conversation history {path}: {reason}", hint
    )


def remove_new(paths: Sequence[Path], before: set[Path]) -> None:
    """Remove the -wal/-shm a failed open created, while its -wal is empty.

    A -wal with anything in it may be another process's; it stays.
    """
    wal = next((p for p in paths if p.name.endswith("-wal")), None)
    if wal is None or wal in before:
        return
    with contextlib.suppress(OSError):
        if wal.exists() and wal.stat().st_size:
            return
        wal.unlink(missing_ok=True)
        for extra in paths:
            if extra.name.endswith("-shm") and extra not in before:
                extra.unlink(missing_ok=True)
