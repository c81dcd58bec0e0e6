"""Where Nibble keeps its files: user data (converted models) and config (settings)."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "nibble"


def data_dir() -> Path:
    """The user data dir; NIBBLE_DATA_DIR overrides it (installers, tests)."""
    override = os.environ.get("NIBBLE_DATA_DIR")
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """The user config dir; NIBBLE_CONFIG_DIR overrides it."""
    override = os.environ.get("NIBBLE_CONFIG_DIR")
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME, appauthor=False))
