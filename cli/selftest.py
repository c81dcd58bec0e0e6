"""`main.py --self-test`: load the default model in nf4 and check it knows Paris.

For installers (the launcher's command must work) and bug reports alike: it prints what
it checked and exits 0 only when the whole path (default model, bitsandbytes 4-bit,
generation) works on this machine, and the window opens: offscreen always, and on the
display too when there is one (each in a child process, so a Qt abort is reported).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cli.output import EXIT_OK, EXIT_UNEXPECTED, os_problem, stderr_progress
from core.errors import NibbleError
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
    # A check of the install, not a load of the user's: it leaves no history behind.
    p.set_defaults(func=cmd_self_test, records_loads=False)


def cmd_self_test(args: argparse.Namespace) -> int:
    """Load the default model in nf4 and check that it answers Paris."""
    from core.model import default_model

    if args.rebuild:
        print("rebuilding the default model", file=sys.stderr)
        default_model.convert(default_model.model_dir(), stderr_progress(False))
    failed = check()
    if failed is None:
        return EXIT_OK
    if not args.rebuild and failed in MODEL_STEPS:
        print(
            "hint: if the default model is damaged, rebuild it: "
            "python main.py --self-test --rebuild",
            file=sys.stderr,
        )
    return EXIT_UNEXPECTED


def smoke_command() -> list[str]:
    """The command that opens and closes the window: in a bundle, itself."""
    if getattr(sys, "frozen", False):  # PyInstaller: no `-m`, the app is the binary
        return [sys.executable, "--window-smoke"]
    return [sys.executable, "-m", "gui.smoke"]


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
                smoke_command(),
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


class StepFailed(Exception):
    """A step of the self-test failed; `say` has told which and why."""


@contextlib.contextmanager
def step(name: str, say: Callable[[str], None]) -> Iterator[None]:
    """Run one named step; a failure is said as 'FAIL at <step>: <what failed>'."""
    try:
        yield
    except StepFailed:
        raise
    except (Exception, SystemExit) as exc:
        if isinstance(exc, NibbleError):
            why, hint = exc.message, exc.hint
        elif isinstance(exc, OSError):
            why, hint = os_problem(exc), "run again with --debug for the traceback"
        else:
            why = f"{type(exc).__name__}: {exc}".splitlines()[0]
            hint = "run again with --debug for the traceback"
        logger.debug("self-test step %r failed", name, exc_info=True)
        say(f"FAIL at {name}: {why}")
        if hint:
            say(f"hint: {hint}")
        raise StepFailed(name) from exc


# The steps a damaged copy of the default model can fail (--rebuild may help).
MODEL_STEPS = (
    "preparing the default model",
    "loading the default model in nf4",
    "answering",
)


def run(say: Callable[[str], None] = print) -> bool:
    """Run the check, reporting each step through `say`; True when it passed."""
    return check(say) is None


def check(say: Callable[[str], None] = print) -> str | None:
    """Run the check, reporting each step through `say`; the failed step's name, or
    None when it passed."""
    try:
        return _run(say)
    except StepFailed as failed:
        return str(failed)


def _run(say: Callable[[str], None]) -> str | None:
    with step("reading the versions", say):
        from core import machine

        env = machine.environment()
        packages = env["packages"]
    say(
        f"Nibble {packages.get('nibble') or 'dev'} · Python {env['python']} · "
        f"torch {packages.get('torch')} · transformers {packages.get('transformers')} · "
        f"bitsandbytes {packages.get('bitsandbytes')}"
    )
    with step("importing the model libraries", say):
        from core import stack
        from core.generation import decode
        from core.model import catalog, loader

        stack.import_stack()
    chosen = preset("nf4")
    started = time.perf_counter()
    with step("preparing the default model", say):
        ref = catalog.resolve("default")
    with step("loading the default model in nf4", say):
        loaded = loader.load(ref, chosen.quant, chosen.load_options())
    try:
        report = loaded.report
        say(
            f"loaded {report.model} in nf4 on {report.device}: "
            f"{format_bytes(report.true_bytes)}, {report.quantized_count} 4-bit "
            f"layers, {report.load_s:.1f} s"
        )
        if report.quantized_count == 0:
            say("FAIL at loading the default model in nf4: no layer is 4-bit")
            return "loading the default model in nf4"
        with step("answering", say):
            text, stats = decode.generate_text(
                loaded, QUESTION, GenerationSettings(max_new_tokens=32, greedy=True)
            )
    finally:
        loader.unload(loaded)
    say(f"Q: {QUESTION}")
    say(f"A: {text.strip()}")
    say(stats.summary())
    if EXPECTED.lower() not in text.lower():
        say(f"FAIL at answering: the answer does not contain {EXPECTED!r}")
        return "answering"
    with step("opening the window", say):
        if not window_check(say):
            return "opening the window"
    say(f"PASS in {time.perf_counter() - started:.1f} s")
    return None
