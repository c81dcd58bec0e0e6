"""How long closing the window takes, and how long the process outlives the window.

`.venv/bin/python bench/close.py [--repeats 3]` starts Nibble's window (offscreen, a
private config and data dir) in a fresh process per run and closes it at two moments:

- ``import``: 0.3 s after the first paint, while torch and transformers still import;
- ``loaded``: after the default model has loaded in nf4 and answered 8 tokens.

It prints the time `closeEvent` took (the window stays on screen meanwhile) and the
time from the window going to the process's end. Medians of the runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, time
from PySide6.QtCore import QTimer
from gui import app as gui_app
from gui.main_window import MainWindow

MOMENT = sys.argv[1]
close_event = MainWindow.closeEvent
start_background = MainWindow.start_background

def closing(self, event):
    began = time.monotonic()
    close_event(self, event)
    print(f"close {time.monotonic() - began:.4f}", flush=True)
    print(f"hidden {time.time():.6f}", flush=True)

def answered(self, *_args):
    QTimer.singleShot(200, self, self.close)

def loaded(self, *_args):
    self.chat.max_tokens.setValue(8)
    self.chat.greedy.setChecked(True)
    self.chat.input.setPlainText("What is the capital of France?")
    self.controller.answer_finished.connect(lambda *_: answered(self))
    self.chat.send()

def starting(self):
    start_background(self)
    if MOMENT == "import":
        QTimer.singleShot(300, self, self.close)
    else:
        self.controller.model_loaded.connect(lambda *_: loaded(self))

MainWindow.closeEvent = closing
MainWindow.start_background = starting
sys.exit(gui_app.run_app([]))
"""


def run_once(moment: str) -> tuple[float, float]:
    """(closeEvent seconds, seconds from the window going to the process's end)."""
    with tempfile.TemporaryDirectory(prefix="nibble-close-") as scratch:
        env = {
            **os.environ,
            "QT_QPA_PLATFORM": "offscreen",
            "NIBBLE_CONFIG_DIR": os.path.join(scratch, "config"),
            "NIBBLE_CONVERSATIONS_DB": os.path.join(scratch, "conversations.db"),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, moment],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
        )
        close_s = hidden = 0.0
        with proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("close "):
                    close_s = float(line.split()[1])
                elif line.startswith("hidden "):
                    hidden = float(line.split()[1])
                    break
            proc.wait(120)
            ended = time.time()
        return close_s, ended - hidden


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| close at | closeEvent s | window gone → process ended s |")
    print("| --- | --- | --- |")
    for moment in ("import", "loaded"):
        runs = [run_once(moment) for _ in range(args.repeats)]
        close_s = statistics.median(r[0] for r in runs)
        linger = statistics.median(r[1] for r in runs)
        print(f"| {moment} | {close_s:.2f} | {linger:.2f} |", flush=True)


if __name__ == "__main__":
    main()
