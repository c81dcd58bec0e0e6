"""`main.py --self-test`: load the default model in nf4 and check it knows Paris.

For installers (the launcher's command must work) and bug reports alike: it prints what
it checked and exits 0 only when the whole path (default model, bitsandbytes 4-bit,
generation) works on this machine, and the window opens: offscreen always, and on the
display too when there is one (each in a child process, so a Qt abort is reported).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.output import EXIT_OK, EXIT_UNEXPECTED, stderr_progress
from core.settings import GenerationSettings, preset
from core.units import format_bytes

logger = logging.getLogger(__name__)

QUESTION = "What is the capital of France?"
EXPECTED = "Paris"
ROOT = Path(__file__).resolve().parent.parent
WINDOW_TIMEOUT_S = 120


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "self-test", help="load the default model in nf4 and check it answers"
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="convert the default model again first (a damaged copy)",
    )
    p.set_defaults(func=cmd_self_test)


def cmd_self_test(args: argparse.Namespace) -> int:
    """Load the default model in nf4 and check that it answers Paris."""
    from core.model import default_model

    if args.rebuild:
        print("rebuilding the default model", file=sys.stderr)
        default_model.convert(default_model.model_dir(), stderr_progress(False))
    if run():
        return EXIT_OK
    if not args.rebuild:
        print(
            "hint: if the default model is damaged, rebuild it: "
            "python main.py --self-test --rebuild",
            file=sys.stderr,
        )
    return EXIT_UNEXPECTED


def window_check(say: Callable[[str], None] = print) -> bool:
    """Open and close the window offscreen and, when there is a display, on it."""
    from core import desktop

    env = dict(os.environ)
    runs = [("offscreen", {**env, "QT_QPA_PLATFORM": "offscreen"})]
    has_display = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    if has_display and desktop.platform_name(env) not in desktop.HEADLESS_PLATFORMS:
        found = desktop.check(env)
        if not found.ok:
            say(f"FAIL: {found.problem}")
            say(f"hint: {found.hint}")
            return False
        runs.append(("the display", env))
    else:
        say("window: no display here, checked offscreen only")
    for where, run_env in runs:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "gui.smoke"],
                cwd=ROOT,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=WINDOW_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            say(f"FAIL: the window did not open on {where} in {WINDOW_TIMEOUT_S} s")
            return False
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            why = lines[-1] if lines else f"exit status {done.returncode}"
            if done.returncode < 0:
                why = f"Qt ended the process (signal {-done.returncode}): {why}"
            say(f"FAIL: the window does not open on {where}: {why}")
            return False
        say(done.stdout.strip() or f"window opened on {where}")
    return True


def run(say: Callable[[str], None] = print) -> bool:
    """Run the check, reporting each step through `say`; True when it passed."""
    from core import machine
    from core.generation import decode
    from core.model import catalog, loader

    env = machine.environment()
    packages = env["packages"]
    say(
        f"Nibble {packages.get('nibble') or 'dev'} · Python {env['python']} · "
        f"torch {packages.get('torch')} · transformers {packages.get('transformers')} · "
        f"bitsandbytes {packages.get('bitsandbytes')}"
    )
    chosen = preset("nf4")
    started = time.perf_counter()
    loaded = loader.load(
        catalog.resolve("default"), chosen.quant, chosen.load_options()
    )
    try:
        report = loaded.report
        say(
            f"loaded {report.model} in nf4 on {report.device}: "
            f"{format_bytes(report.true_bytes)}, {report.quantized_count} 4-bit layers, "
            f"{report.load_s:.1f} s"
        )
        if report.quantized_count == 0:
            say("FAIL: no layer was quantized to 4-bit")
            return False
        text, stats = decode.generate_text(
            loaded, QUESTION, GenerationSettings(max_new_tokens=32, greedy=True)
        )
    finally:
        loader.unload(loaded)
    say(f"Q: {QUESTION}")
    say(f"A: {text.strip()}")
    say(stats.summary())
    if EXPECTED.lower() not in text.lower():
        say(f"FAIL: the answer does not contain {EXPECTED!r}")
        return False
    if not window_check(say):
        return False
    say(f"PASS in {time.perf_counter() - started:.1f} s")
    return True
