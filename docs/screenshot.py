"""Take the README screenshot: the default model in nf4 answering a question.

Run under a virtual display: ``xvfb-run -s "-screen 0 1366x768x24" .venv/bin/python
docs/screenshot.py [out.png]`` (NIBBLE_THEME=dark for the dark palette). It starts the
window exactly as ``python main.py`` does, with a private config dir, at its default
size for that screen.

``--sizes 1024x700,1366x768,1920x1080 --prefix DIR/light`` instead saves, for each
size, the Chat, Monitor, Compare and Server tabs as DIR/light-1024x700-chat.png and so
on, and the Chat tab with the load strip as it shows mid-load (-loading.png), to check
that nothing clips.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTION = "Write a Python function that returns the square of a number."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="docs/screenshot.png")
    parser.add_argument("--sizes", default="", help="e.g. 1024x700,1366x768")
    parser.add_argument("--prefix", default="", help="where the --sizes shots go")
    args = parser.parse_args()
    os.environ["NIBBLE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="nibble-shot-")
    # A history of its own: the shot shows one conversation and leaves the user's alone.
    os.environ["NIBBLE_CONVERSATIONS_DB"] = os.path.join(
        os.environ["NIBBLE_CONFIG_DIR"], "conversations.db"
    )
    from PySide6.QtCore import QEventLoop, QTimer

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

    def shoot(_stats: object) -> None:
        QTimer.singleShot(1500, grab)  # let the monitor and status bar catch up

    def save(path: str) -> None:
        window.grab().save(path)
        print(f"saved {path} ({window.width()}x{window.height()})")

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
