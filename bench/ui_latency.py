"""Longest gap between event-loop turns while the default model loads and answers.

A 10 ms QTimer probe runs on the UI thread; every gap between two of its ticks
beyond what was asked is time the window could not repaint or react. Prints max and
p99 of the tick-to-tick interval for three phases: the background import of torch /
transformers / bitsandbytes, loading SmolLM2-135M-Instruct in nf4, a 64-token
greedy answer streamed into the chat, and ("serve") the window's own server answering
8 streamed clients at once (they decode as one batch) while the chat asks again.

    .venv/bin/python bench/ui_latency.py [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROBE_MS = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client(url: str, index: int, tokens: int, done: list[int]) -> None:
    """One streamed chat request; counts the text chunks it read."""
    body = {
        "model": "default",
        "stream": True,
        "temperature": 0,
        "max_tokens": tokens,
        "messages": [
            {"role": "user", "content": f"Tell story number {index} about a cat."}
        ],
    }
    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    chunks = 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if line.startswith(b"data: {"):
                chunks += 1
    done.append(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    scratch = Path(tempfile.mkdtemp(prefix="nibble-bench-"))
    os.environ["NIBBLE_CONFIG_DIR"] = str(scratch)
    # A history of its own: the window reopens the last conversation, and a chat
    # grown over earlier runs would make each run's prompt longer.
    os.environ["NIBBLE_CONVERSATIONS_DB"] = str(scratch / "conversations.db")
    from PySide6.QtCore import QTimer

    from core.settings import GenerationSettings
    from core.store.session import Session
    from gui.app import make_app
    from gui.main_window import MainWindow

    app = make_app([])
    window = MainWindow(
        Session(generation=GenerationSettings(max_new_tokens=64, greedy=True)),
        auto_start=False,
        auto_load=False,
    )
    gaps: dict[str, list[float]] = {}
    long_gaps: list[tuple[float, str, str]] = []
    state = {"phase": "", "last": 0.0, "step": ""}

    def tick() -> None:
        now = time.perf_counter()
        if state["phase"]:
            gap = (now - state["last"]) * 1000
            gaps.setdefault(state["phase"], []).append(gap)
            if gap > 50:
                long_gaps.append((gap, state["phase"], state["step"]))
        state["last"] = now

    def step(_done: int, _total: int, message: str) -> None:
        state["step"] = message

    def phase(name: str) -> None:
        state["phase"] = name
        state["last"] = time.perf_counter()

    probe = QTimer()
    probe.setInterval(PROBE_MS)
    probe.timeout.connect(tick)
    controller = window.controller
    controller.libraries_ready.connect(lambda _d: phase("load"))
    controller.libraries_ready.connect(lambda _d: window.request_load())
    controller.load_progressed.connect(step)

    def ask(_loaded: object) -> None:
        phase("generate")
        state["step"] = ""
        window.chat.input.setPlainText("What is the capital of France?")
        window.chat.send()

    controller.model_loaded.connect(ask)
    results: dict[str, object] = {}
    served: list[int] = []
    window.build_tabs()  # the window builds its tabs after the first paint
    server_view = window.server_view
    assert server_view is not None
    server_view.port_spin.setValue(free_port())

    def serve(_thread: object) -> None:
        """The window's server is up: 8 clients stream while the chat asks again."""
        phase("serve")
        url = server_view.url()

        def start_clients() -> None:
            # Off the UI thread: starting a thread waits until it runs, and eight
            # such waits on the UI thread were the bench's own stalls, not the app's.
            for i in range(args.clients):
                threading.Thread(
                    target=client, args=(url, i, 64, served), daemon=True
                ).start()

        threading.Thread(target=start_clients, daemon=True).start()
        QTimer.singleShot(500, ask_again)

    def ask_again() -> None:
        window.chat.input.setPlainText("Name three rivers of Europe.")
        window.chat.send()

    def done(turn: Any) -> None:
        stats = turn.stats
        if state["phase"] == "generate":
            results["stats"] = stats
            phase("")
            server_view.start()  # then serve()
            return
        results["serve_stats"] = stats
        wait_for_clients()

    def wait_for_clients() -> None:
        if len(served) < args.clients:
            QTimer.singleShot(50, wait_for_clients)
            return
        phase("")
        window.close()
        app.quit()

    controller.answer_finished.connect(done)
    server_view.serving_changed.connect(lambda on: serve(None) if on else None)

    def start() -> None:
        probe.start()
        phase("import")
        window.start_background()

    window.show()
    QTimer.singleShot(300, start)
    app.exec()
    print(f"probe: {PROBE_MS} ms QTimer on the UI thread; interval between ticks")
    for name in ("import", "load", "generate", "serve"):
        values = gaps.get(name, [])
        if not values:
            continue
        print(
            f"{name:9} max {max(values):6.1f} ms   p99 {percentile(values, 0.99):6.1f} ms"
            f"   ({len(values)} ticks)"
        )
    for name in ("load", "generate", "serve"):
        over = sorted((g for g in long_gaps if g[1] == name), reverse=True)
        for gap, _, where in over[:3]:
            print(f"  {name} gap over 50 ms: {gap:.0f} ms ({where or 'no step'})")
    stats = results.get("stats")
    if stats is not None:
        print(f"answer: {stats.summary()} · {stats.prompt_tokens} prompt tokens")
    stats = results.get("serve_stats")
    if stats is not None:
        print(f"chat answer while {args.clients} clients streamed: {stats.summary()}")
    print(f"clients answered: {len(served)} of {args.clients}, chunks {served}")


if __name__ == "__main__":
    main()
