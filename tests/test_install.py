"""The launcher and the per-user installer, run into a temporary HOME.

The installer is run with `--site-packages` pointing at this test environment's
packages, so it builds its own venv and launcher in seconds instead of downloading
torch; everything else (copying the app, the venv, the launcher, the icons, the
manifest, uninstall) is the same code a user runs.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "packaging" / "install.sh"
DESKTOP = ROOT / "resources" / "nibble.desktop"
VALIDATE = shutil.which("desktop-file-validate")
needs_validator = pytest.mark.skipif(
    VALIDATE is None,
    reason="desktop-file-validate is missing: apt-get install desktop-file-utils "
    "(make test installs it when run as root)",
)


def _entry(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path, encoding="utf-8")
    return parser["Desktop Entry"]


def _base_python() -> str:
    """The interpreter this venv was made from (the installer builds its own venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "NIBBLE_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        HF_HUB_OFFLINE="1",
    )
    return env


def _snapshot(home: Path) -> dict[str, tuple[str, int]]:
    """Every path under `home` with its kind and size (links are not followed)."""
    found: dict[str, tuple[str, int]] = {}
    for path in home.rglob("*"):
        rel = str(path.relative_to(home))
        if path.is_symlink():
            found[rel] = ("link", 0)
        elif path.is_dir():
            found[rel] = ("dir", 0)
        else:
            found[rel] = ("file", path.stat().st_size)
    return found


def _install(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_validator
def test_launcher_template_is_valid() -> None:
    done = subprocess.run([VALIDATE, str(DESKTOP)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""  # no hints either


def test_launcher_matches_the_window(qapp: object) -> None:
    from gui.app import ICON_PNG, ICON_SVG, make_app

    entry = _entry(DESKTOP)
    for key in ("Name", "Comment", "Exec", "Icon", "Categories", "StartupWMClass"):
        assert entry.get(key), f"{key} is missing"
    app = make_app()
    # X11 sets WM_CLASS's class to the application name; Wayland's app id is the
    # desktop file name: both must point at this launcher.
    assert entry["StartupWMClass"] == app.applicationName() == "Nibble"
    assert app.desktopFileName() == DESKTOP.stem == "nibble"
    assert entry["Icon"] == ICON_SVG.stem == ICON_PNG.stem
    assert not app.windowIcon().isNull()


def test_icon_files_are_usable(qapp: object) -> None:
    from PySide6.QtGui import QImage
    from PySide6.QtSvg import QSvgRenderer

    from gui.app import ICON_PNG, ICON_SVG

    assert QSvgRenderer(str(ICON_SVG)).isValid()
    image = QImage(str(ICON_PNG))
    assert not image.isNull()
    assert image.width() == image.height() == 256  # installed as 256x256/apps


def test_bad_option_and_missing_wheelhouse_write_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = _install(home, "--frobnicate")
    assert done.returncode == 2
    assert "unknown option --frobnicate" in done.stderr
    done = _install(home, "--wheels", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: wheelhouse {tmp_path / 'nowhere'} not found")
    assert "hint: " in done.stderr
    assert _snapshot(home) == {}


def test_uninstall_without_install_is_harmless(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = _install(home, "--uninstall")
    assert done.returncode == 0
    assert "not installed" in done.stdout
    assert _snapshot(home) == {}


def test_failed_install_removes_what_it_wrote(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".local" / "share" / "applications").mkdir(parents=True)
    (home / ".local" / "share" / "applications" / "other.desktop").write_text("x")
    before = _snapshot(home)
    empty = tmp_path / "empty-site"
    empty.mkdir()
    done = _install(
        home,
        "--python",
        _base_python(),
        "--site-packages",
        str(empty),
        "--no-self-test",
    )
    assert done.returncode == 1
    assert "cannot import its dependencies" in done.stderr
    assert "removing what it wrote" in done.stdout
    assert _snapshot(home) == before


@pytest.mark.slow
@needs_validator
def test_install_run_uninstall(tmp_path: Path, default_dir: Path) -> None:
    # A space in HOME checks the quoting of the launcher's Exec line.
    home = tmp_path / "home of user"
    data = home / ".local" / "share"
    models = data / "nibble" / "models"
    models.mkdir(parents=True)
    # The converted default model, as a first run would have left it (saves ~20 s).
    (models / default_dir.name).symlink_to(default_dir, target_is_directory=True)
    before = _snapshot(home)

    site = sysconfig.get_path("purelib")
    args = ["--python", _base_python(), "--site-packages", site, "--no-self-test"]
    done = _install(home, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    launcher = data / "applications" / "nibble.desktop"
    assert launcher.is_file()
    assert (data / "icons/hicolor/scalable/apps/nibble.svg").is_file()
    assert (data / "icons/hicolor/256x256/apps/nibble.png").is_file()
    assert (data / "nibble" / "venv" / "pyvenv.cfg").is_file()

    check = subprocess.run([VALIDATE, str(launcher)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    entry = _entry(launcher)
    command = shlex.split(entry["Exec"])
    assert Path(command[0]).is_file()
    assert Path(command[0]).is_relative_to(data / "nibble")
    assert entry["TryExec"] == command[0]
    run = subprocess.run(
        [*command, "--self-test"],
        env=_env(home),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Paris" in run.stdout
    assert "PASS" in run.stdout

    done = _install(home, "--uninstall")
    assert done.returncode == 0, done.stderr
    assert "models and settings" in done.stdout
    assert _snapshot(home) == before
