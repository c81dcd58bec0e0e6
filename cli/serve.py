"""`serve`: a model over the OpenAI API until Ctrl+C."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cli.args import add_quant_args, check_before_load, number, settings_from_args
from cli.fit import add_fit_arg, fit_before_load, load_after_fit
from cli.output import EXIT_OK, end_progress, stderr_progress, warn
from core.errors import SettingsError
from core.settings import settings_label


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model over the OpenAI API")
    p.add_argument("model", help="'default', a local folder, or a hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port",
        type=number("--port", integer=True, low=0, high=65535),
        default=8000,
        help="port to listen on (8000)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("NIBBLE_API_KEY") or None,
        help="require this Bearer key (default: $NIBBLE_API_KEY); "
        "needed to listen beyond this machine",
    )
    p.add_argument(
        "--served-model-name", default=None, help="another name clients may use"
    )
    p.add_argument(
        "--queue",
        type=number("--queue", integer=True),
        default=16,
        help="requests that may wait (16)",
    )
    p.add_argument(
        "--max-batch",
        type=number("--max-batch", integer=True),
        default=None,
        metavar="N",
        help="answers decoded together (default: what fits beside the model, up "
        "to 8; the reason is printed); more requests wait",
    )
    p.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN call the API (repeatable)",
    )
    p.add_argument(
        "--log-prompts", action="store_true", help="log prompt texts (off by default)"
    )
    p.add_argument(
        "--idle-unload",
        type=number("--idle-unload", low=0, above=True),
        default=None,
        metavar="SECONDS",
        help="unload the model after this long without a request; the next "
        "request loads it again",
    )
    p.add_argument(
        "--default-max-tokens",
        type=number("--default-max-tokens", integer=True, low=1),
        default=None,
        metavar="N",
        help="answer length when a request names none (1024)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name a keyless server on this machine also answers to "
        "(repeatable; localhost and 127.0.0.1 always)",
    )
    add_quant_args(p)
    add_fit_arg(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over the OpenAI API until Ctrl+C, then unload it."""
    from core.generation.queue import GenerationQueue
    from core.generation.switch import ModelSwitcher
    from core.model import catalog, loader
    from core.stack import import_stack
    from server import runner
    from server.app import Server

    config = runner.ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        cors_origins=args.cors,
        log_prompts=args.log_prompts,
        allowed_hosts=args.allowed_host,
        default_max_tokens=args.default_max_tokens or runner.DEFAULT_MAX_TOKENS,
    )  # refuses a non-loopback host without a key before anything loads
    # A taken port or a wrong address is said now, not after the model loaded.
    runner.check_can_listen(config.host, config.port)
    quant, options = settings_from_args(args)
    if args.queue < 1:
        raise SettingsError(f"--queue {args.queue} is too small", "use 1 or more")
    if args.max_batch is not None and args.max_batch < 1:
        raise SettingsError(
            f"--max-batch {args.max_batch} is too small",
            "use 1 (one answer at a time) or more",
        )
    import_stack()
    ref = catalog.resolve(args.model)
    warn(check_before_load(ref, quant, options))
    fitted = fit_before_load(args.fit, ref, quant, options)
    ref, quant, options = fitted.ref, fitted.quant, fitted.options
    show = stderr_progress(False)
    loaded = load_after_fit(
        args.fit, lambda: loader.load(ref, quant, options, progress=show)
    )
    end_progress(show)
    queue = GenerationQueue(loaded, limit=args.queue, max_batch=args.max_batch)
    print(f"answers decoded together: {queue.batch_reason}", file=sys.stderr)
    switcher = ModelSwitcher(
        queue,
        directory=_servable_models,
        idle_unload_s=args.idle_unload,
        on_change=_say_switch,
    )
    api = Server(queue, config, on_request=_say_request, switcher=switcher)

    def ready(url: str) -> None:
        name = api.model_names()[0]
        print(
            f"Serving {name} ({settings_label(quant, options.dtype)}) at {url}",
            flush=True,
        )
        print(runner.curl_line(url, name, config.api_key), flush=True)
        print("Press Ctrl+C to stop.", file=sys.stderr, flush=True)

    try:
        runner.serve_forever(api, ready)
    finally:
        switcher.close()
        queue.close()
        loader.unload(queue.loaded)
    print("stopped; the model is unloaded", file=sys.stderr)
    return EXIT_OK


def _say_request(record: Any) -> None:
    """One line on stderr per request, as a web server's access log:
    `12:01:03 127.0.0.1:5123 /v1/chat/completions 200 37+64 tokens 2.1 s`."""
    import time

    when = time.strftime("%H:%M:%S", time.localtime(record.time))
    what = record.error or (
        f"{record.prompt_tokens}+{record.completion_tokens} tokens"
        + (f", {record.finish_reason}" if record.finish_reason else "")
    )
    print(
        f"{when} {record.client} {record.endpoint} {record.status} {what} "
        f"{record.total_s:.1f} s",
        file=sys.stderr,
        flush=True,
    )


_SWITCH_WORDS = {
    "loading": "loading {} for a client…",
    "loaded": "now serving {}",
    "failed": "could not load {}; the previous model stays",
    "unloaded": "unloaded {} (idle)",
}


def _say_switch(state: str, name: str) -> None:
    """A client's switch of the model, said where the operator looks."""
    words = _SWITCH_WORDS.get(state, state + " {}")
    print(words.format(name), file=sys.stderr, flush=True)


def _servable_models() -> dict[str, Any]:
    """What `serve` offers: the default, the window's recent folders, the HF cache."""
    from core.generation.switch import servable
    from core.store.session import load_session

    session, _ = load_session()
    return servable(session.recent_folders)
