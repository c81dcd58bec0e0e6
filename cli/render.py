"""Text for a terminal: the tables the CLI prints from what core returns."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.units import format_bytes

if TYPE_CHECKING:
    from core import monitor
    from core.hub import api as hub
    from core.lab import compare
    from core.model import estimate
    from core.store import conversations


def estimate_table(result: estimate.Table) -> str:
    """The estimate table as aligned text for a terminal."""
    from core.model.estimate import OVERHEAD_NOTE, PEAK_NOTE

    head = (
        "preset",
        "label",
        "weights",
        "quant state",
        "KV cache",
        "overhead",
        "total",
        "load peak",
    )
    lines = [
        f"{result.model} · context {result.context} × batch {result.batch}",
        result.device.describe(),
        "",
        f"{head[0]:8} {head[1]:9} {head[2]:>11} {head[3]:>11} {head[4]:>11} "
        f"{head[5]:>11} {head[6]:>11} {head[7]:>11}  verdict",
    ]
    for r in result.rows:
        sizes = (
            r.weights_bytes,
            r.quant_state_bytes,
            r.kv_cache_bytes,
            r.overhead_bytes,
            r.total_bytes,
            r.load_peak_bytes,
        )
        cells = " ".join(f"{format_bytes(n):>11}" for n in sizes)
        lines.append(f"{r.preset:8} {r.label:9} {cells}  {r.verdict}")
    lines.append("")
    current = result.current
    lines.append(f"Current: {current.verdict} — {current.verdict_text}")
    best = result.recommended
    lines.append(f"Recommended: {best or 'none of the presets fits'}")
    lines.append(f"Overhead and peak: {result.calibration_text}")
    lines += [f"note: {n}" for n in result.notes]
    lines.append(f"note: {OVERHEAD_NOTE}")
    lines.append(f"note: {PEAK_NOTE}; the verdict judges the higher of total and peak")
    return "\n".join(lines)


def explain(row: estimate.Estimate) -> str:
    """Each term of one estimate row, where it comes from, and the records behind
    this machine's calibration (`estimate --explain`)."""
    from core.model.estimate import explain as terms

    parts: dict[str, list[tuple[str, int | None, str]]] = {}
    for part, name, value, source in terms(row):
        parts.setdefault(part, []).append((name, value, source))

    def line(indent: str, name: str, value: int | None, source: str = "") -> str:
        width = 36 - len(indent)
        return f"{indent}{name:<{width}} {format_bytes(value):>11}  {source}".rstrip()

    lines = [
        f"How the {row.preset} row ({row.label}) is worked out, on {row.device_key}:",
        "",
        "Once loaded",
    ]
    lines += [line("  ", *term) for term in parts.get("steady", [])]
    lines.append("  overhead")
    lines += [line("    ", *term) for term in parts.get("overhead", [])]
    lines.append(line("    ", "= overhead", row.overhead_bytes))
    lines.append(line("  ", "= total once loaded", row.total_bytes))
    lines += ["", "Peak during the load"]
    lines += [line("  ", *term) for term in parts.get("peak", [])]
    lines.append(line("  ", "= load peak", row.load_peak_bytes))
    lines += ["", f"Calibration: {row.calibration_text}."]
    cal = row.calibration
    if cal is not None and cal.calibrated:
        lines.append(
            f"  peak {_signed(cal.peak_offset_bytes)} and once loaded "
            f"{_signed(cal.steady_offset_bytes)} over the formulas: the medians "
            "below; ± is the largest miss predicting each load from the others"
        )
    if cal is None or not cal.records:
        lines.append(
            f"  No load on {row.device_key} recorded yet: every load is recorded "
            "beside its estimate in the local history, and after 3 the overhead is "
            "learnt from them."
        )
        return "\n".join(lines)
    lines += ["", "Records behind it (newest first):"]
    head = ["#", "when", "model", "preset", "formula peak", "actual peak", "miss"]
    table = []
    for i, rec in enumerate(cal.records):
        miss = f"{cal.errors_pct[i]:+.1f}%" if i < len(cal.errors_pct) else "—"
        table.append(
            [
                str(rec.id or ""),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.created)),
                rec.model,
                rec.label,
                format_bytes(rec.estimated_peak_bytes),
                format_bytes(rec.actual_peak_bytes),
                miss,
            ]
        )
    lines.append(grid(head, table))
    if cal.errors_pct:
        lines.append("miss: predicted from the other records, against the actual peak")
    return "\n".join(lines)


def _signed(n: int) -> str:
    return ("+" if n >= 0 else "-") + format_bytes(abs(n))


def compare_table(result: compare.CompareResult) -> str:
    """The measured rows of a comparison as a plain-text table."""
    headers = [
        "name",
        "load",
        "peak",
        "peak RSS",
        "true",
        "ttft",
        "tok/s",
        "decode",
        "ppl",
        "KL",
        f"KL>{_threshold(result):g}",
        "top-1",
    ]
    lines = []
    for r in result.rows:
        if not r.ok:
            lines.append([r.name, f"failed: {r.error}"])
            continue
        lines.append(
            [
                r.name,
                f"{r.load_s:.1f} s",
                format_bytes(r.peak_bytes),
                format_bytes(r.peak_rss_bytes),
                format_bytes(r.true_bytes),
                f"{r.ttft_s * 1000:.0f} ms" if r.ttft_s is not None else "—",
                f"{r.tokens_per_s:.1f}" if r.tokens_per_s else "—",
                r.decode_mode,
                f"{r.perplexity:.3f}" if r.perplexity is not None else "—",
                f"{r.kl_vs_baseline:.5f}" if r.kl_vs_baseline is not None else "—",
                f"{r.kl_share_above:.1%}" if r.kl_share_above is not None else "—",
                f"{r.top1_agreement:.1%}" if r.top1_agreement is not None else "—",
            ]
        )
    note = (
        f"KL>{_threshold(result):g}: the share of evaluation tokens whose KL vs the "
        "baseline is above that threshold"
    )
    return grid(headers, lines) + "\n" + PEAK_NOTE + "\n" + note


def _threshold(result: compare.CompareResult) -> float:
    """The KL threshold the comparison counted moved tokens with."""
    value = result.config.get("kl_threshold")
    return float(value) if value is not None else compare.DEFAULT_THRESHOLD


PEAK_NOTE = (
    "peak: the highest anonymous memory during the load (VRAM on a GPU), what the "
    "process really holds; peak RSS also counts mapped files the OS can drop"
)


def streams_lines(result: compare.CompareResult) -> str:
    """'nf4: 1 stream 31.2 tok/s · 4 streams 80.1 aggregate (20.3 each) · …'."""
    lines = ["concurrent streams (greedy answers decoding together):"]
    for row in result.rows:
        if not row.ok or not row.streams:
            continue
        parts = []
        for n, m in row.streams.items():
            agg, each = m.get("aggregate_tok_s"), m.get("per_stream_tok_s")
            text = f"{n} × {agg:.1f} tok/s aggregate" if agg else f"{n} × —"
            if each:
                text += f" ({each:.1f} each)"
            parts.append(text)
        lines.append(f"{row.name}: " + " · ".join(parts))
    return "\n".join(lines)


def compare_summary(result: compare.CompareResult) -> str:
    """The at-a-glance table (Method, Bits, Memory savings, …) as plain text."""
    from core.lab.compare import SEED_COLUMNS, seed_table

    rows = [[cells[c] for c in SEED_COLUMNS] for cells in seed_table(result)]
    return grid(list(SEED_COLUMNS), rows)


def grid(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule; a short row (a failure) spills."""
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) == len(headers):
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for row in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)))
    return "\n".join(line.rstrip() for line in out)


def chats_list(items: Sequence[conversations.ConversationInfo]) -> str:
    """The `chats list` table: id, last change, title."""
    from core.store.conversations import iso

    rows = [
        f"{c.id:>6}  {iso(c.updated).replace('T', ' ')}  {c.display_title}"
        for c in items
    ]
    return "\n".join(rows)


def hub_plan(plan: hub.Plan) -> str:
    """A download plan: the files with their size and state, the disk, warnings."""
    lines = [f"{plan.repo_id} @ {plan.commit[:12]} ({plan.revision})"]
    for f in plan.files:
        state = (
            "cached"
            if f.cached
            else f"{format_bytes(f.partial_bytes)} partial"
            if f.partial_bytes
            else ""
        )
        lines.append(f"  {f.name:44} {format_bytes(f.size):>11}  {state}")
    lines.append(plan.disk_text())
    if plan.quantized:
        lines.append(f"already quantized: {plan.quantized}")
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


def monitor_line(sample: monitor.Sample) -> str:
    """One sample on one line: the time, host RAM and CPU, the process, each GPU."""
    host = sample.host
    cpu = "—" if host.cpu_percent is None else f"{host.cpu_percent:.0f}%"
    ours = (
        ""
        if host.process_cpu_percent is None
        else f" (ours {host.process_cpu_percent:.0f}%)"
    )
    split = ""
    if host.process_anon is not None and host.process_file is not None:
        split = (
            f" (anon {format_bytes(host.process_anon)}, "
            f"file {format_bytes(host.process_file)})"
        )
    host_text = (
        f"RAM {format_bytes(host.ram_used)} / {format_bytes(host.ram_total)} · "
        f"RSS {format_bytes(host.process_rss)}{split} · CPU {cpu}{ours}"
    )
    stamp = time.strftime("%H:%M:%S", time.localtime(sample.time))
    gpus = [g.summary() for g in sample.gpus] or [f"GPU: {sample.gpu_reason}"]
    return "  ".join([stamp, host_text, *gpus])
