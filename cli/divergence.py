"""`divergence`: the cost of quantization token by token (core.lab.divergence)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.args import number
from cli.output import EXIT_OK, end_progress, output_folder, stderr_progress
from core.errors import NibbleError
from core.settings import LoadOptions, preset


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "divergence",
        help="shade a quantized answer token by token by its KL against a baseline",
    )
    p.add_argument("model", help="'default', a local folder, or a hub id")
    p.add_argument("--prompt", "-p", required=True, help="the question")
    p.add_argument("--quant", default="nf4", help="the quantized preset (default nf4)")
    p.add_argument(
        "--baseline", default="fp32", help="the reference preset (default fp32)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=number("--max-new-tokens", integer=True, low=1, high=4096),
        default=32,
        help="length of the quantized answer (greedy); default 32",
    )
    p.add_argument(
        "--threshold",
        type=number("--threshold", low=0.0),
        default=None,
        help="KL above which a token counts as moved (default 0.1)",
    )
    p.add_argument("--html", default=None, metavar="FILE", help="write the page here")
    p.add_argument("--json", action="store_true", help="print the JSON export")
    p.add_argument(
        "--device-map", default="auto", help="where both models go (default auto)"
    )
    p.set_defaults(func=cmd_divergence)


def cmd_divergence(args: argparse.Namespace) -> int:
    import torch

    from core.generation.decode import build_prompt, has_chat_template
    from core.lab.divergence import DEFAULT_THRESHOLD, divergence
    from core.model import catalog, loader
    from core.model.estimate import table
    from core.model.fit import probe_device

    output_folder(args.html, "--html")
    quantized, baseline = preset(args.quant), preset(args.baseline)
    options = LoadOptions(device_map=args.device_map)
    ref = catalog.resolve(args.model)
    rows = table(ref, None, options, device=probe_device())
    base_row = next((r for r in rows.rows if r.preset == baseline.name), None)
    if base_row is not None and base_row.verdict == "does not fit":
        largest = rows.recommended
        raise NibbleError(
            f"the baseline {baseline.name} does not fit here ({base_row.verdict_text})",
            f"use --baseline {largest}, the largest preset that fits"
            if largest
            else "free memory or pick a smaller model",
        )
    show = stderr_progress(args.json)
    quant_model = loader.load(
        ref, quantized.quant, quantized.load_options(options), progress=show
    )
    base_model = None
    try:
        base_model = loader.load(
            ref, baseline.quant, baseline.load_options(options), progress=show
        )
        end_progress(show)
        tok = quant_model.tokenizer
        # The question as the chat and `generate` ask it: in the model's template.
        text = build_prompt(tok, args.prompt)
        add_special = not has_chat_template(tok)
        prompt_ids = tok(text, add_special_tokens=add_special)["input_ids"]
        with torch.inference_mode():
            out = quant_model.model.generate(
                torch.tensor([prompt_ids], device=quant_model.model.device),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        answer = out[0, len(prompt_ids) :].tolist()
        result = divergence(
            base_model,
            quant_model,
            prompt_ids,
            answer,
            DEFAULT_THRESHOLD if args.threshold is None else args.threshold,
            prompt=args.prompt,
        )
    finally:
        if base_model is not None:
            loader.unload(base_model)
        loader.unload(quant_model)
    if args.html:
        Path(args.html).expanduser().write_text(result.to_html(), encoding="utf-8")
    if args.json:
        print(result.to_json())
    else:
        for t in result.tokens:
            print(f"{t.kl:9.4f}  {t.text!r}")
        print(result.summary(), file=sys.stderr)
        if args.html:
            print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK
