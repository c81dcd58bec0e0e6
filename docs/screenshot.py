"""Take the README screenshot: the default model in nf4 answering a question.

Run under a virtual display: ``xvfb-run -s "-screen 0 1400x900x24" .venv/bin/python
docs/screenshot.py [out.png]`` (NIBBLE_THEME=dark for the dark palette). It starts the
window exactly as ``python main.py`` does, with a private config dir.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTION = "Write a Python function that returns the square of a number."


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png")
    os.environ["NIBBLE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="nibble-shot-")
    from PySide6.QtCore import QTimer

    from core.session import Session
    from core.settings import GenerationSettings
    from gui.app import make_app
    from gui.main_window import MainWindow

    app = make_app([])
    session = Session(
        generation=GenerationSettings(max_new_tokens=96, greedy=True),
    )
    window = MainWindow(session)
    window.resize(1400, 870)

    def ask(_loaded: object) -> None:
        window.chat.input.setPlainText(QUESTION)
        window.chat.send()

    def shoot(_stats: object) -> None:
        def grab() -> None:
            window.grab().save(str(out))
            print(f"saved {out}")
            window.close()
            app.quit()

        QTimer.singleShot(1500, grab)  # let the monitor and status bar catch up

    window.controller.model_loaded.connect(ask)
    window.controller.answer_finished.connect(shoot)
    window.show()
    app.exec()


if __name__ == "__main__":
    main()
