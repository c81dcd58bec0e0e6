"""Can the window open here? Checked before Qt loads, so a gap is one line, not SIGABRT.

Qt aborts the process when no platform plugin can be initialised: no display, or the
xcb plugin missing a system library (Qt 6.5+ needs libxcb-cursor0, and PySide6's
wheels link a few xcb utility libraries that fresh Debian and Ubuntu installs lack).
This module finds those cases the way the dynamic loader does (``ldd`` on the plugin,
``dlopen`` for the libraries Qt opens itself) without importing Qt.

``python -m core.desktop --missing-packages`` prints the Debian/Ubuntu packages to
install, one per line, for the Makefile and the installer.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The libraries the xcb plugin needs, by soname, with the Debian/Ubuntu package of each.
PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xinput.so.0": "libxcb-xinput0",
    "libxcb-glx.so.0": "libxcb-glx0",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libGLX.so.0": "libglx0",
    "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
}
# Qt opens these itself at start (not linked, so ldd cannot see them).
DLOPENED = ("libxcb-cursor.so.0",)
# Platforms that need no display server.
HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc", "linuxfb", "eglfs", "vkkhrdisplay")

Loadable = Callable[[str], bool]


@dataclass
class Check:
    """What stands between this machine and the window ('' problem when nothing)."""

    problem: str = ""
    hint: str = ""
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def packages(self) -> list[str]:
        return sorted({package_for(lib) for lib in self.missing} - {""})


def package_for(library: str) -> str:
    """The Debian/Ubuntu package that ships `library` ('' when not known)."""
    return PACKAGES.get(library, "")


def install_command(packages: list[str]) -> str:
    return "sudo apt-get install -y " + " ".join(packages)


def plugin_dir() -> Path | None:
    """PySide6's platform plugin folder, found without importing PySide6."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "Qt/plugins/platforms"


def ldd_missing(ldd_output: str) -> list[str]:
    """Sonames that `ldd` reports as 'not found', in order, once each."""
    missing: list[str] = []
    for line in ldd_output.splitlines():
        name, arrow, where = line.strip().partition("=>")
        if arrow and where.strip() == "not found" and name.strip() not in missing:
            missing.append(name.strip())
    return missing


def run_ldd(path: Path) -> str | None:
    """`ldd path`'s output, or None when ldd is not there or fails."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        done = subprocess.run(
            [ldd, str(path)], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def can_load(library: str) -> bool:
    """Whether the dynamic loader finds `library` (dlopen, as Qt does)."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def platform_name(env: Mapping[str, str]) -> str:
    """The Qt platform this environment selects ('' when Qt would choose)."""
    return env.get("QT_QPA_PLATFORM", "").split(":")[0].split(";")[0].strip()


def missing_xcb_libraries(
    plugin: Path | None = None,
    ldd_output: str | None = None,
    loadable: Loadable = can_load,
) -> list[str]:
    """The sonames the xcb platform plugin needs and the loader cannot find."""
    if ldd_output is None:
        if plugin is None:
            folder = plugin_dir()
            plugin = folder / "libqxcb.so" if folder else None
        ldd_output = run_ldd(plugin) if plugin and plugin.is_file() else ""
    missing = ldd_missing(ldd_output or "")
    missing += [lib for lib in DLOPENED if lib not in missing and not loadable(lib)]
    return missing


def check(
    env: Mapping[str, str] | None = None,
    platform: str = sys.platform,
    plugin: Path | None = None,
    ldd_output: str | None = None,
    loadable: Loadable = can_load,
) -> Check:
    """Whether Qt can open a window here, and if not why and what to do."""
    env = os.environ if env is None else env
    if not platform.startswith("linux"):
        return Check()
    chosen = platform_name(env)
    if chosen in HEADLESS_PLATFORMS:
        return Check()
    uses_wayland = chosen.startswith("wayland") or (
        not chosen and env.get("WAYLAND_DISPLAY")
    )
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        return Check(
            "no display: neither DISPLAY nor WAYLAND_DISPLAY is set, so the window "
            "cannot open",
            "run Nibble from a desktop session, or use the command line: "
            "python main.py --help",
        )
    if uses_wayland:
        return Check()
    missing = missing_xcb_libraries(plugin, ldd_output, loadable)
    if not missing:
        return Check()
    result = Check(missing=missing)
    packages = result.packages
    unknown = [lib for lib in missing if not package_for(lib)]
    result.problem = (
        f"the window cannot open: Qt's xcb platform needs {', '.join(missing)}"
        + (f" (Debian/Ubuntu packages {', '.join(packages)})" if packages else "")
    )
    if packages:
        result.hint = f"install them: {install_command(packages)}"
        if unknown:
            result.hint += f" (and find the package of {', '.join(unknown)})"
    else:
        result.hint = "install the packages that provide them with your package manager"
    return result


def main(argv: list[str] | None = None) -> int:
    """`--missing-packages`: print the packages to install (nothing when all is there)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--missing-packages"]:
        found = check(env={"DISPLAY": ":0"})
        for package in found.packages:
            print(package)
        return 0
    found = check()
    if found.ok:
        print("the window can open here")
        return 0
    print(f"error: {found.problem}\nhint: {found.hint}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
