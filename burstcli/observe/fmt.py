"""Number formats shared by the stats views (table, Markdown) and the report."""

from __future__ import annotations


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1000:
        return f"{value:,.0f} ms"
    return f"{value / 1000:,.2f} s"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
    return f"{s // 60}m{s % 60:02d}s"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def bound(ms: int) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms}ms"
