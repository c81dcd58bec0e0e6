"""First run on a Linux desktop: a missing display or xcb library is one line, never SIGABRT.

The missing-library cases use a made-up `ldd` output; the Xvfb test opens the real
window on a real X server with the real xcb plugin, so a library this machine lacks
fails it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import selftest
from core import desktop

ROOT = Path(__file__).resolve().parents[2]

LDD_MISSING = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibQt6XcbQpa.so.6 => /x/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f)
\tlibxcb-icccm.so.4 => not found
\tlibfoo-unknown.so.3 => not found
"""
LDD_FINE = "\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f)\n"


def test_ldd_not_found_lines_are_read_once_each() -> None:
    assert desktop.ldd_missing(LDD_MISSING) == [
        "libxcb-icccm.so.4",
        "libxcb-keysyms.so.1",
        "libfoo-unknown.so.3",
    ]


def test_missing_libraries_name_packages_and_the_install_command() -> None:
    found = desktop.check(
        {"DISPLAY": ":0"}, "linux", ldd_output=LDD_MISSING, loadable=lambda lib: False
    )
    assert not found.ok
    assert "libxcb-icccm.so.4" in found.problem
    assert "libxcb-cursor.so.0" in found.problem  # Qt dlopens it: ldd cannot see it
    assert "libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1" in found.problem
    assert found.hint.startswith(
        "install them: sudo apt-get install -y libxcb-cursor0 libxcb-icccm4 "
        "libxcb-keysyms1"
    )
    assert "libfoo-unknown.so.3" in found.hint
    assert "\n" not in found.problem and "\n" not in found.hint


def test_all_libraries_present_is_fine() -> None:
    found = desktop.check(
        {"DISPLAY": ":0"}, "linux", ldd_output=LDD_FINE, loadable=lambda lib: True
    )
    assert found.ok and found.packages == []


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({}, "no display"),
        ({"DISPLAY": ""}, "no display"),
        ({"QT_QPA_PLATFORM": "offscreen"}, ""),
        ({"WAYLAND_DISPLAY": "wayland-0"}, ""),  # Qt picks Wayland: no xcb needed
        ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, "xcb platform needs"),
        ({"DISPLAY": ":0"}, "xcb platform needs"),
    ],
)
def test_which_platform_is_checked(env: dict[str, str], problem: str) -> None:
    found = desktop.check(env, "linux", ldd_output=LDD_MISSING, loadable=bool)
    assert (problem in found.problem) if problem else found.ok


def test_other_systems_are_not_checked() -> None:
    assert desktop.check({}, "darwin").ok


def test_main_refuses_without_display_before_qt_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY",)}
    env.pop("WAYLAND_DISPLAY", None)
    env.pop("QT_QPA_PLATFORM", None)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, main; code = main.main([]); "
            "print('qt loaded' if 'PySide6' in sys.modules else 'no qt'); "
            "sys.exit(code)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout.strip() == "no qt"
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: no display")
    assert "main.py --help" in lines[1]


def test_main_names_missing_libraries_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr(desktop, "run_ldd", lambda path: LDD_MISSING)
    assert main.main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: the window cannot open: Qt's xcb platform needs")
    assert "sudo apt-get install -y" in err[1] and "libxcb-icccm4" in err[1]


def test_missing_packages_command_prints_one_package_a_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "core.desktop", "--missing-packages"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    for line in done.stdout.splitlines():
        assert line in desktop.PACKAGES.values()


def test_self_test_window_check_reports_missing_libraries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(desktop, "run_ldd", lambda path: LDD_MISSING)
    said: list[str] = []
    assert not selftest.window_check(said.append)
    assert said[0].startswith("FAIL: the window cannot open")
    assert said[1].startswith("hint: install them: sudo apt-get install -y")


def test_self_test_window_check_offscreen_without_display(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    said: list[str] = []
    assert selftest.window_check(said.append), said
    assert said[0] == "window: no display here, checked offscreen only"
    assert said[1].startswith("window opened on offscreen")


# -- the real window on a real X server --


@pytest.fixture
def xvfb_display() -> str:
    """A private Xvfb server; skips (saying why) where Xvfb is not installed."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip(
            "Xvfb is not installed (apt-get install xvfb; make's set-up does it "
            "when run as root): the window was not opened on a real X server"
        )
    read, write = os.pipe()
    server = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", "1366x768x24", "-nolisten",
         "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write)
    try:
        number = b""
        deadline = time.monotonic() + 30
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            chunk = os.read(read, 16)
            if not chunk:
                break
            number += chunk
        if not number.strip():
            pytest.fail("Xvfb did not start")
        yield f":{number.decode().strip()}"
    finally:
        os.close(read)
        server.terminate()
        server.wait(timeout=30)


def _png_colours(path: Path) -> int:
    """How many distinct colours the screenshot has (1: a blank image)."""
    from PySide6.QtGui import QImage

    image = QImage(str(path))
    assert not image.isNull()
    step_x, step_y = max(1, image.width() // 60), max(1, image.height() // 60)
    return len(
        {
            image.pixel(x, y)
            for x in range(0, image.width(), step_x)
            for y in range(0, image.height(), step_y)
        }
    )


def test_window_opens_on_xvfb_with_the_real_xcb_plugin(
    xvfb_display: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
    env["QT_QPA_PLATFORM"] = "xcb"
    env["DISPLAY"] = xvfb_display
    shot = tmp_path / "window.png"
    done = subprocess.run(
        [sys.executable, "-m", "gui.smoke", "--screenshot", str(shot)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("window opened on xcb")
    assert shot.is_file()
    assert _png_colours(shot) > 5  # the window's widgets, not a blank screen


def test_self_test_window_check_uses_the_display(
    xvfb_display: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", xvfb_display)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    said: list[str] = []
    assert selftest.window_check(said.append), said
    assert said[0].startswith("window opened on offscreen")
    assert said[1].startswith("window opened on xcb")
