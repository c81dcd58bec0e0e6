"""`monitor`: memory samples (GPUs, host RAM, one process) on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli import render
from cli.args import number
from cli.output import EXIT_OK
from core.errors import SettingsError


def add_commands(sub: Any) -> None:
    p = sub.add_parser("monitor", help="print GPU, RAM and process memory samples")
    p.add_argument(
        "--seconds",
        type=number("--seconds", low=0, above=True),
        default=None,
        help="how long to watch (default: until Ctrl+C)",
    )
    p.add_argument(
        "--interval",
        type=number("--interval"),
        default=1.0,
        help="seconds between samples, 0.25-5",
    )
    p.add_argument(
        "--pid",
        type=number("--pid", integer=True),
        default=None,
        help="the process to watch (default: this one)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_monitor)


def cmd_monitor(args: argparse.Namespace) -> int:
    """Print memory samples (GPUs, host RAM, one process) until time is up or Ctrl+C."""
    import psutil

    from core import monitor

    interval = monitor.check_interval(args.interval)
    if args.seconds is not None and args.seconds < interval:
        raise SettingsError(
            f"--seconds {args.seconds:g} is shorter than one interval ({interval:g} s)",
            "pass at least one interval, or leave --seconds out to run until Ctrl+C",
        )
    if args.pid is not None and args.pid <= 0:
        raise SettingsError(
            f"--pid {args.pid} is not a process ID",
            "pass the PID of a running process (see ps or top)",
        )
    with monitor.Sampler(pid=args.pid) as sampler:
        try:
            for sample in monitor.samples(sampler, interval, args.seconds):
                line = (
                    json.dumps(sample.to_dict())
                    if args.json
                    else render.monitor_line(sample)
                )
                print(line, flush=True)
        except KeyboardInterrupt:  # the usual way to stop watching
            pass
        except psutil.NoSuchProcess:
            print(f"process {sampler.pid} has ended", file=sys.stderr)
    return EXIT_OK
