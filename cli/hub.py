"""The hub commands of the CLI: `search`, `pull`, and the plan behind `estimate ORG/NAME`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cli import render
from cli.args import number
from cli.output import EXIT_INTERRUPTED, EXIT_OK
from core.units import format_bytes, format_count, format_params


def add_commands(sub: Any) -> None:
    """Add `search` and `pull` to the CLI's subparsers."""
    p = sub.add_parser("search", help="search the hub for text-generation models")
    p.add_argument("text", nargs="?", default="", help="words in the model's name")
    p.add_argument(
        "--limit",
        type=number("--limit", integer=True, low=1),
        default=20,
        help="how many results (20)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "pull",
        help="download a hub model into the HF cache, after a plan that says "
        "whether it fits; resumes where it stopped",
    )
    p.add_argument("model", metavar="ORG/NAME", help="a hub id")
    p.add_argument(
        "--revision", default="main", help="branch, tag or commit (default: main)"
    )
    p.add_argument(
        "--context",
        type=number("--context", integer=True, low=1),
        default=4096,
        help="tokens in the KV cache (4096)",
    )
    p.add_argument(
        "--plan-only", action="store_true", help="print the plan, download nothing"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_pull)


def cmd_search(args: argparse.Namespace) -> int:
    """List causal LMs on the hub, most downloaded first."""
    from core.hub import api as hub

    _quiet_hub_logs(args)
    results = hub.search(args.text, limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return EXIT_OK
    if not results:
        print(f"no text-generation models match {args.text!r}", file=sys.stderr)
        return EXIT_OK
    for r in results:
        params = format_params(r.parameters, "?")
        badges = [b for b in (r.quantized, "gated" if r.gated else None) if b]
        badge = f"  [{', '.join(badges)}]" if badges else ""
        print(
            f"{r.repo_id:48} {params:>7} {r.dtype or '':5} "
            f"{format_count(r.downloads):>7} downloads {format_count(r.likes):>6} likes  "
            f"{r.last_modified or ''}{badge}"
        )
        if not r.loadable:
            print(f"  ↳ {r.note}")
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    """Plan, then download with progress on stderr; Ctrl+C keeps what arrived."""
    from core.hub import api as hub
    from core.hub import download as hub_download

    _quiet_hub_logs(args)
    plan = hub.plan(args.model, args.revision, context=args.context)
    if not args.json:
        print(render.hub_plan(plan))
        if plan.table is not None:
            print()
            print(render.estimate_table(plan.table))
        if plan.ladder is not None:
            print("\nIt does not fit with these settings; what would:")
            for line in plan.ladder.lines():
                print(f"  {line}")
        if plan.table is None and plan.estimate_error:
            print(f"estimate: {plan.estimate_error}")
        sys.stdout.flush()
    if args.plan_only:
        if args.json:
            print(json.dumps(plan.to_dict(), indent=2))
        return EXIT_OK
    show = _Printer(sys.stderr.isatty())
    try:
        snapshot = hub_download.download(plan, progress=show)
    except KeyboardInterrupt:
        show.clear()
        kept = hub.plan(args.model, plan.commit, context=args.context)
        print(
            f"paused: {format_bytes(kept.cached_bytes + kept.partial_bytes)} of "
            f"{format_bytes(kept.total_bytes)} kept in {kept.cache_dir}; run the same "
            "pull again to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    show.clear()
    if args.json:
        print(json.dumps({"snapshot": str(snapshot), "plan": plan.to_dict()}, indent=2))
    else:
        print(f"downloaded {args.model} to {snapshot}", file=sys.stderr)
        print(f"load it with: python main.py generate {args.model}", file=sys.stderr)
    return EXIT_OK


def hub_table(
    model: str, quant: Any, options: Any, context: int, batch: int, quiet: bool
) -> Any:
    """The estimate table of a hub id through the download plan, its summary on stderr.

    None for a folder or 'default', and for a hub id while the hub is offline: the
    estimate then reads config.json from the cache.
    """
    from core.hub import api as hub
    from core.model import catalog

    text = (model or "").strip()
    if not catalog._HUB_ID.match(text) or Path(text).expanduser().exists():
        return None
    try:
        plan = hub.plan(
            text, quant=quant, options=options, context=context, batch=batch
        )
    except hub.HubOfflineError:
        config = hub.cached_config(text)
        if config is None:
            raise  # asking the same hub again for config.json would only wait again
        from core.model import estimate

        source = estimate.ConfigSource(text, json.loads(config.read_text()), config)
        return estimate.table(source, quant, options, context=context, batch=batch)
    if plan.table is None:
        from core.model.estimate import EstimateError

        raise EstimateError(
            plan.estimate_error or f"no estimate for {text}", "try a local folder"
        )
    if not quiet:
        print(render.hub_plan(plan), end="\n\n", file=sys.stderr)
    return plan.table


def _quiet_hub_logs(args: argparse.Namespace) -> None:
    """Errors reach the user as one line + hint; huggingface_hub's retry chatter only
    with --debug."""
    if getattr(args, "debug", False):
        return
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


class _Printer:
    """Download progress on stderr: one rewritten line on a terminal, else every 10%."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.last_step = -1
        self.last_time = 0.0

    def __call__(self, progress: Any) -> None:
        if self.tty:
            now = time.monotonic()
            if (
                now - self.last_time < 0.2
                and progress.done_bytes < progress.total_bytes
            ):
                return
            self.last_time = now
            print(f"\r\033[K{progress.text()}", end="", file=sys.stderr, flush=True)
            return
        step = int(progress.fraction * 10)
        if step != self.last_step:
            self.last_step = step
            print(progress.text(), file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
