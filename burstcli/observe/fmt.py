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


def usd(value: float | None) -> str:
    """A cost: "no price" when unknown; below $1 three significant digits, since one
    embeddings request costs $1.8e-7 and six decimals would show it as $0.000000."""
    if value is None:
        return "no price"
    if value == 0:
        return "$0"
    if value < 1:
        return f"${value:#.3g}" if value >= 1e-4 else f"${value:.2e}"
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"
