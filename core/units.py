"""Human-readable numbers shared by the window and the CLI."""

from __future__ import annotations


def format_bytes(n: float | None) -> str:
    """1536 → '1.5 KiB'; None → '—'."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60)} s"


def format_params(n: int | None, missing: str = "—") -> str:
    """A parameter count as '135.0M' or '7.2B'; `missing` when unknown or zero."""
    if not n:
        return missing
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def format_count(n: int | None) -> str:
    """A download or like count as '1.2M', '3.4k' or '12'; '—' when unknown."""
    if n is None:
        return "—"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1000:
        return f"{n / 1e3:.1f}k"
    return str(n)
