"""Files this process cannot write to, the way a user's history can end up."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file or folder unwritable for this process: immutable as root (where
    chattr is allowed), else chmod 444 (a file) or 555 (a folder)."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not allowed here: {done.stderr!r}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        folder = path.is_dir()
        path.chmod(0o555 if folder else 0o444)
        try:
            yield
        finally:
            path.chmod(0o755 if folder else 0o644)
