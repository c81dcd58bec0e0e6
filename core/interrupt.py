"""Ctrl+C and SIGTERM end a command cleanly; temporary folders never outlive their run.

Every temporary folder that weights are written into (the default model's conversion,
an export) is registered while it exists. An interrupted command removes the
registered folders and leaves with exit 130 through `exit_now`, without the
interpreter's shutdown: a load interrupted mid-way still runs in a library thread,
and tearing that thread down during shutdown aborts the process ("terminate called
without an active exception"). A folder left by a process that was killed outright
(SIGKILL, power loss) carries that process's PID in its name; `sweep_stale` removes
it at the next run of the same operation, once no process with that PID is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130

_lock = threading.Lock()
_temp_dirs: set[Path] = set()
# `.NAME.tmp-PID`, `.NAME.nibble-tmp-PID`, `.NAME.old-PID`, `.NAME.nibble-old-PID`
_STALE = re.compile(r"^\..+\.(?:nibble-)?(?:tmp|old)-(\d+)$")


@contextlib.contextmanager
def temporary(path: Path) -> Iterator[Path]:
    """Register `path` as a temporary folder for as long as the block runs."""
    with _lock:
        _temp_dirs.add(path)
    try:
        yield path
    finally:
        with _lock:
            _temp_dirs.discard(path)


def registered() -> list[Path]:
    with _lock:
        return sorted(_temp_dirs)


def remove_temporary() -> None:
    """Remove every registered temporary folder (an interrupted run's leftovers)."""
    for path in registered():
        shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale(parent: Path, alive: Callable[[int], bool] = pid_alive) -> list[Path]:
    """Remove hidden temporary folders in `parent` whose process is gone.

    Returns what was removed. The current process's own folders are left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STALE.match(entry.name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or alive(pid):
            continue
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            shutil.rmtree(entry)
        except OSError as exc:
            logger.warning("could not remove the stale folder %s: %s", entry, exc)
            continue
        logger.info("removed %s, left by an interrupted run (PID %d)", entry, pid)
        removed.append(entry)
    return removed


def raise_interrupt(signum: int, frame: Any) -> None:
    """A signal handler that turns SIGTERM into what Ctrl+C does."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt as SIGINT does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_set(event: threading.Event) -> Iterator[threading.Event]:
    """While the block runs, Ctrl+C and SIGTERM set `event` instead of raising.

    For work that stops by itself once asked (generation stops within one token,
    a comparison at the next token): the caller still gets what was done.
    """
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def ask_to_stop(signum: int, frame: Any) -> None:
        event.set()

    previous = {
        sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_now(code: int = EXIT_INTERRUPTED) -> NoReturn:
    """Remove temporary folders, flush the output and leave at once with `code`."""
    remove_temporary()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
