"""Take the README screenshot: the default model in nf4 answering a question.

Run under a virtual display: ``xvfb-run -s "-screen 0 1366x768x24" .venv/bin/python
docs/screenshot.py [out.png]`` (NIBBLE_THEME=dark for the dark palette). It starts the
window exactly as ``python main.py`` does, with a private config dir, at its default
size for that screen.

``--sizes 1024x700,1366x768,1920x1080 --prefix DIR/light`` instead saves, for each
size, the Chat, Monitor, Compare and Server tabs as DIR/light-1024x700-chat.png and so
on, and the Chat tab with the load strip as it shows mid-load (-loading.png), to check
that nothing clips.

``--view divergence [out.png]`` (default docs/divergence.png) instead waits for the
answer, opens "Show divergence" on it (nf4 against fp32) and saves that window with
the hover of its most moved token.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTION = "Write a Python function that returns the square of a number."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default=None)
    parser.add_argument("--sizes", default="", help="e.g. 1024x700,1366x768")
    parser.add_argument("--prefix", default="", help="where the --sizes shots go")
    parser.add_argument(
        "--view",
        choices=("window", "divergence"),
        default="window",
        help="what to take",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = (
            f"docs/{'divergence' if args.view == 'divergence' else 'screenshot'}.png"
        )
    os.environ["NIBBLE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="nibble-shot-")
    # A history of its own: the shot shows one conversation and leaves the user's alone.
    os.environ["NIBBLE_CONVERSATIONS_DB"] = os.path.join(
        os.environ["NIBBLE_CONFIG_DIR"], "conversations.db"
    )
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtGui import QTextCursor
    from PySide6.QtWidgets import QToolTip

    from core.settings import GenerationSettings
    from core.store.session import Session
    from gui.app import make_app
    from gui.main_window import MainWindow

    app = make_app([])
    session = Session(generation=GenerationSettings(max_new_tokens=96, greedy=True))
    window = MainWindow(session)
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",") if s]

    def ask(_loaded: object) -> None:
        window.chat.input.setPlainText(QUESTION)
        window.chat.send()

    def pause(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def shoot(turn: object) -> None:
        if args.view == "divergence":
            QTimer.singleShot(0, lambda: show_divergence(turn))
            return
        QTimer.singleShot(1500, grab)  # let the monitor and status bar catch up

    def save(path: str) -> None:
        window.grab().save(path)
        print(f"saved {path} ({window.width()}x{window.height()})")

    def show_divergence(turn: Any) -> None:
        print("answered; comparing the answer with fp32", flush=True)
        message = turn.answer
        dialog = window.history.show_divergence(message.id, message.variant)
        dialog.resize(760, 420)
        dialog.move(40, 40)
        dialog.view.finished.connect(lambda result: grab_divergence(dialog, result))

    def grab_divergence(dialog: Any, result: Any) -> None:
        if result is None:
            print(f"no divergence: {dialog.view.error_label.text()}")
            app.exit(1)
            return
        pause(500)
        text = dialog.view.text
        worst = max(range(len(result.tokens)), key=lambda i: result.tokens[i].kl)
        start, end = text.spans[worst]
        cursor = QTextCursor(text.document())
        cursor.setPosition((start + end) // 2)
        text.setTextCursor(cursor)
        text.ensureCursorVisible()
        pause(200)
        point = text.cursorRect(cursor).center()
        QToolTip.showText(text.viewport().mapToGlobal(point), text.tooltip(worst), text)
        pause(700)
        # The whole screen under the dialog, so the hover's window is in the shot.
        geometry = dialog.frameGeometry().united(tooltip_rect(text, point))
        shot = app.primaryScreen().grabWindow(
            0, geometry.x(), geometry.y(), geometry.width(), geometry.height()
        )
        shot.save(args.out)
        print(f"saved {args.out}")
        QToolTip.hideText()
        dialog.close()
        window.close()
        app.quit()

    def tooltip_rect(text: Any, point: Any) -> Any:
        """Where the hover's window is, in screen coordinates (a generous guess)."""
        from PySide6.QtCore import QRect

        for widget in app.topLevelWidgets():
            if widget.inherits("QTipLabel") and widget.isVisible():
                return widget.frameGeometry()
        corner = text.viewport().mapToGlobal(point)
        return QRect(corner.x(), corner.y(), 320, 200)

    def grab() -> None:
        if not sizes:
            window.grab().save(args.out)
            print(f"saved {args.out}")
        else:
            tabs = ("chat", "monitor", "compare", "server")
            for width, height in sizes:
                window.resize(width, height)
                for index, tab in enumerate(tabs):
                    window.tabs.setCurrentIndex(index)
                    pause(700)
                    save(f"{args.prefix}-{width}x{height}-{tab}.png")
                window.tabs.setCurrentIndex(0)
                bar = window.load_bar
                shown = bar.label.text()
                bar.begin("Loading", "Loading SmolLM2-135M-Instruct (4-bit nf4)…")
                bar.report(128, 272, "Loading weights")
                pause(300)
                save(f"{args.prefix}-{width}x{height}-loading.png")
                bar.end(shown)
        window.close()
        app.quit()

    window.controller.model_loaded.connect(ask)
    window.controller.answer_finished.connect(shoot)
    window.show()
    app.exec()


if __name__ == "__main__":
    main()
