"""`models`: the models Nibble can open."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli.output import EXIT_OK
from core.units import format_bytes


def add_commands(sub: Any) -> None:
    p = sub.add_parser("models", help="list the default model and your HF cache")
    p.add_argument("--json", action="store_true", help="the models as a JSON list")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    """List the models Nibble can open: the default and the HF cache."""
    from core.model import catalog

    refs = [catalog.default_ref(), *catalog.scan_cache()]
    if args.json:
        print(json.dumps([r.to_dict() for r in refs], indent=2))
        return EXIT_OK
    for ref in refs:
        badge = f"  [{ref.quantized}]" if ref.quantized else ""
        size = format_bytes(ref.size_bytes) if ref.size_bytes else "not converted yet"
        print(f"{ref.kind:8} {ref.name:48} {size:>12}{badge}")
    return EXIT_OK
