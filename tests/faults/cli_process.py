"""The command line in a fresh process, for the tests that signal or kill it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core import interrupt

ROOT = Path(__file__).resolve().parents[2]


class Child:
    """The CLI in a subprocess, its output collected line by line as it comes."""

    def __init__(self, *args: str | bytes, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out = bytearray()
        self.err = bytearray()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out)),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream: object, into: bytearray) -> None:
        while chunk := os.read(stream.fileno(), 4096):  # type: ignore[attr-defined]
            into.extend(chunk)

    def wait_for(
        self, ready: Callable[[], bool], what: str, timeout: float = 240
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                self.finish()
                pytest.fail(f"ended before {what}: {self.stderr[-2000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.finish()  # reaped here, not blamed on the next test
                pytest.fail(f"no {what} in {timeout} s: {self.stderr[-2000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 240) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")


def nibble(
    *args: str | bytes, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def temp_folders(parent: Path) -> list[Path]:
    """Hidden `.NAME.tmp-PID` / `.NAME.nibble-tmp-PID` folders in `parent`."""
    return sorted(p for p in parent.glob(".*") if interrupt._STALE.match(p.name))
