"""Open the window, wait for its first paint and its import of the model libraries,
optionally save what is on screen, close.

``python -m gui.smoke [--screenshot FILE] [--timeout S]`` on whatever platform
QT_QPA_PLATFORM names (the real display when unset); in the bundle,
``nibble --window-smoke``. The self-test and the Xvfb test run it in a child process,
so that a platform plugin that aborts the process (Qt's answer to a missing xcb
library) is reported, not suffered. It loads no model and uses a private config dir,
so the user's session is left alone.

After its first paint the window imports the ML stack on a worker
(`core.stack.import_stack`) while it builds its tabs. The check closes the window only
once that import has ended, and says whether it worked: a window closed mid-import
left the import's thread running into the interpreter's shutdown, where Qt aborts the
process ("QThread: Destroyed while thread 'nibble-import' is still running"). `run`
ends the process the way the app does, without that shutdown, whatever still runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import NoReturn

EXIT_OK, EXIT_FAILED = 0, 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gui.smoke")
    parser.add_argument("--screenshot", default=None, metavar="FILE")
    parser.add_argument("--timeout", type=float, default=100.0)
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="nibble-smoke-")
    os.environ["NIBBLE_CONFIG_DIR"] = scratch
    # The check leaves the user's conversations alone.
    os.environ["NIBBLE_CONVERSATIONS_DB"] = os.path.join(scratch, "conversations.db")

    from core import desktop

    found = desktop.check()
    if not found.ok:
        print(f"error: {found.problem}\nhint: {found.hint}", file=sys.stderr)
        return 2

    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QGuiApplication

    from core.app import JobKind
    from core.store.session import Session
    from gui.app import make_app
    from gui.main_window import MainWindow

    app = make_app([])
    window = MainWindow(Session(), auto_load=False)
    outcome = {"code": EXIT_FAILED}

    def painted() -> None:
        controller = window.controller
        if not controller.ready and controller.running(JobKind.IMPORT) is not None:
            # The window's own import of the libraries still runs: close after it.
            controller.libraries_ready.connect(lambda _device: painted())
            controller.libraries_failed.connect(import_failed)
            return
        platform = QGuiApplication.platformName()
        size = window.size()
        if args.screenshot:
            screen = window.screen() or QGuiApplication.primaryScreen()
            # On a display server, take what the server shows, not a re-render.
            if platform == "offscreen":
                image = window.grab()
            else:
                image = screen.grabWindow(window.winId())
            if image.isNull() or not image.save(args.screenshot):
                print(f"error: could not save {args.screenshot}", file=sys.stderr)
                window.close()
                return
        imported = ", model libraries imported" if controller.ready else ""
        print(f"window opened on {platform} ({size.width()}x{size.height()}){imported}")
        outcome["code"] = EXIT_OK
        window.close()

    def import_failed(exc: Exception) -> None:
        print(f"error: the window could not import the model libraries: {exc}",
              file=sys.stderr)  # fmt: skip
        window.close()

    def timed_out() -> None:
        print(f"error: the window did not open in {args.timeout:g} s", file=sys.stderr)
        window.close()
        app.quit()

    window.first_painted.connect(lambda: QTimer.singleShot(300, window, painted))
    window.destroyed.connect(app.quit)
    QTimer.singleShot(int(args.timeout * 1000), app, timed_out)
    window.show()
    app.exec()
    return outcome["code"]


def run(argv: list[str] | None = None) -> NoReturn:
    """`main`, then leave at once, as the app does (gui.app.run_app): a worker still
    winding down neither holds the check up nor meets the interpreter's shutdown."""
    from core import interrupt

    interrupt.exit_now(main(argv))


if __name__ == "__main__":
    run()
