"""Model files on disk: whether a safetensors file is whole, how much a folder holds.

A leaf module: the catalog and the default model's conversion both check files, and
neither may import the other's rules to do it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


def safetensors_whole(file: Path) -> bool:
    """The header parses and the data section ends exactly at the end of the file."""
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size:
                return False
            header = json.loads(fh.read(header_len))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
        return 8 + header_len + end == size
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def folder_size(path: Path) -> int:
    """Bytes on disk under `path` (links followed once, as the HF cache uses them)."""
    total = 0
    for file in path.rglob("*"):
        try:
            if file.is_file():
                total += file.stat().st_size
        except OSError:
            continue
    return total
