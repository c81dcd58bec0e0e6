"""Process start → first paint of the window, with a saved session restored.

Runs a fresh Python process five times; each builds the window exactly as
`python main.py` does (QApplication, theme, icon, session, MainWindow.show) and
reports when the window's first paint event ran. Prints the median and the spread.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5

CHILD = """
import os, sys
sys.path.insert(0, {root!r})
from gui.app import make_app
from core.store.session import load_session
from gui.main_window import MainWindow

app = make_app([])
session, notice = load_session()
window = MainWindow(session, notice)

def painted():
    print("painted", flush=True)
    os._exit(0)

window.first_painted.connect(painted)
window.show()
app.exec()
"""


def one_run(env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT))],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - started
    proc.wait(timeout=30)
    if line.strip() != "painted":
        raise SystemExit("the window did not paint")
    return elapsed


def main() -> None:
    from core.store.session import Session, save_session

    env = dict(os.environ)
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory() as config:
        env["NIBBLE_CONFIG_DIR"] = config
        save_session(
            Session(recent_folders=["/models/example"]), Path(config) / "session.json"
        )
        one_run(env)  # warm the OS file cache; not counted
        times = [one_run(env) for _ in range(RUNS)]
    where = env.get("QT_QPA_PLATFORM") or f"X display {env.get('DISPLAY', '')}"
    print(f"platform: {where}")
    print(
        f"process start → first paint: median {statistics.median(times) * 1000:.0f} ms "
        f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {RUNS} runs)"
    )


if __name__ == "__main__":
    main()
