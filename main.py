"""Nibble: with no arguments opens the window; with a command runs it headless."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if getattr(sys, "frozen", False):
        # The bundle leaves out `kernels` (packaging/nibble.spec); transformers asks
        # for it on every load unless hub kernels are switched off.
        os.environ.setdefault("USE_HUB_KERNELS", "NO")
    if argv[:1] == ["--self-test"]:
        argv = ["self-test", *argv[1:]]
    if argv[:1] == ["--window-smoke"]:  # the self-test's window check, in a bundle
        from gui import smoke

        smoke.run(argv[1:])  # leaves the process, as the app does
    if not argv or argv[0] in ("--gui",):
        from core import desktop

        found = desktop.check()
        if not found.ok:  # Qt would abort the process instead
            print(f"error: {found.problem}\nhint: {found.hint}", file=sys.stderr)
            return 2
        from gui.app import run_app

        return run_app(argv[1:])
    from cli.main import run

    return run(argv)


if __name__ == "__main__":
    code = main()
    if code == 130:
        from core import interrupt

        # An interrupted load may still run in a library thread: leave without the
        # interpreter's shutdown, which would tear that thread down mid-call.
        interrupt.exit_now(code)
    sys.exit(code)
