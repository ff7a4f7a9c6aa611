"""Drawing `stats.compute()` for people: rich tables, a latency histogram and a sparkline.

Only reads the dict (the `--json` contract), so it can render stats saved earlier. Everything
stays legible without colour and within 100 columns: numbers carry their own units, bars are
block characters, and styles only emphasise what the text already says.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .fmt import bound as _bound
from .fmt import duration as _duration
from .fmt import ms as _ms
from .fmt import pct as _pct
from .fmt import usd

SPARKS = "▁▂▃▄▅▆▇█"
# Eighths of a block, so a bar of 40 cells resolves 320 steps instead of 40.
EIGHTHS = " ▏▎▍▌▋▊▉"
BAR_WIDTH = 40


def bar(count: int, largest: int, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of `count` against `largest` in `width` cells, to an eighth of a cell."""
    if largest <= 0 or count <= 0:
        return ""
    eighths = max(1, round(count / largest * width * 8))  # a non-zero count stays visible
    full, part = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[part] if part else "")


def sparkline(counts: list[int]) -> str:
    """One block per bin: ▁ for an empty bin, █ for the busiest, non-empty bins at least ▂."""
    top = max(counts, default=0)
    if top <= 0:
        return SPARKS[0] * len(counts)
    out = []
    for c in counts:
        if c <= 0:
            out.append(SPARKS[0])
        else:
            out.append(SPARKS[max(1, -(-c * (len(SPARKS) - 1) // top))])
    return "".join(out)


def _summary(stats: dict[str, Any]) -> Table:
    st, cost, att, tok = stats["status"], stats["cost_usd"], stats["attempts"], stats["tokens"]
    t = stats["time"]
    table = Table(title="Summary", box=box.SIMPLE, show_header=False, title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("Records", f"{stats['records']:,}")
    others = {k: v for k, v in st.items() if k not in ("completed", "failed")}
    table.add_row("Completed", f"{st['completed']:,}")
    table.add_row("Failed", Text(f"{st['failed']:,}", style="red" if st["failed"] else ""))
    for name, n in others.items():
        table.add_row(f"Status {name!r}", f"{n:,}")
    table.add_row("Success rate", _pct(stats["success_rate"]))
    if stats.get("cut_at_length"):
        table.add_row(
            "Cut at max_tokens",
            f"{stats['cut_at_length']:,} answers (finish_reason length): raise max_tokens?",
        )
    table.add_row(
        "Wall time",
        f"{_duration(t['wall_seconds'])}"
        + (
            f"  ({t['first_finished_at']} -> {t['last_finished_at']})"
            if t["first_finished_at"]
            else ""
        ),
    )
    tp = t["throughput_per_min"]
    table.add_row(
        "Throughput",
        "-" if tp is None else f"{tp:,.1f} requests/min (records over first to last finished_at)",
    )
    extra = f", {att['unrecorded']:,} in flight at an interruption" if att.get("unrecorded") else ""
    table.add_row("Attempts", f"{att['total']:,} ({att['retries']:,} retries{extra})")
    table.add_row(
        "Tokens", f"{tok['total']:,} ({tok['prompt']:,} prompt + {tok['completion']:,} completion)"
    )
    priced = usd(cost["total"])
    if cost["unpriced_completed"]:
        priced += f" (+{cost['unpriced_completed']:,} completed without a price)"
    table.add_row("Cost", priced)
    cache = stats.get("cache") or {}
    if cache.get("cached"):
        table.add_row(
            "From cache",
            f"{cache['cached']:,} answers, saved {usd(cache['saved_usd'])} (cost_usd 0)",
        )
    if att["unanswered"]:
        worst = (
            f"{usd(cost['worst_case'])} if all {att['unanswered']:,} unanswered "
            "attempts were billed"
        )
        if cost["unpriced_unanswered"]:
            worst += f" (+{cost['unpriced_unanswered']:,} without a price)"
        table.add_row("Worst-case cost", worst)
    return table


def _latency(stats: dict[str, Any]) -> Table:
    lat = stats["latency_ms"]
    table = Table(
        title=f"Latency (n={lat['count']:,} completed)",
        box=box.SIMPLE,
        title_justify="left",
        caption=f"percentiles by {lat['method']}",
        caption_justify="left",
    )
    for col in ("p50", "p90", "p99", "max", "mean"):
        table.add_column(col, justify="right")
    table.add_row(*(_ms(lat[k]) for k in ("p50", "p90", "p99", "max", "mean")))
    return table


def _histogram(stats: dict[str, Any]) -> Table:
    buckets = stats["histogram"]["buckets"]
    largest = max((b["count"] for b in buckets), default=0)
    table = Table(title="Latency histogram", box=box.SIMPLE, title_justify="left")
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_column("", no_wrap=True, min_width=BAR_WIDTH)
    for b in buckets:
        label = (
            f"> {_bound(b['lo'])}"
            if b["hi"] is None
            else f"{_bound(b['lo']) if b['lo'] else '0'} - {_bound(b['hi'])}"
        )
        table.add_row(label, f"{b['count']:,}", bar(b["count"], largest))
    return table


def _timeline(stats: dict[str, Any]) -> Group | None:
    tl = stats["timeline"]
    if not tl["counts"]:
        return None
    peak = max(tl["counts"])
    if tl["bin_seconds"]:
        title = (
            f"Requests over time ({len(tl['counts'])} bins of "
            f"{_duration(tl['bin_seconds'])}, peak {peak:,} per bin)"
        )
    else:
        title = f"Requests over time (all {peak:,} finished at {tl['start']})"
    # The title goes above the grid, not in it: a table title wraps at the table's width,
    # which is only the sparkline's here.
    table = Table(box=None, show_header=False, padding=(0, 2))
    table.add_column("series", style="bold")
    table.add_column("sparkline", no_wrap=True)
    table.add_row("finished", sparkline(tl["counts"]))
    if sum(tl["failed"]):
        table.add_row("failed", sparkline(tl["failed"]))
    return Group(Text(title, style="italic"), table)


def _models(stats: dict[str, Any]) -> Table:
    table = Table(title="Per model", box=box.SIMPLE, title_justify="left")
    table.add_column("model", overflow="fold", ratio=1)
    for col in ("requests", "completed", "failed", "tokens", "cost", "p50 latency"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, m in stats["models"].items():
        cost = usd(m["cost_usd"])
        if m["unpriced"] and m["cost_usd"] is not None:
            cost += "+?"  # partly priced: the figure is a floor
        table.add_row(
            name,
            f"{m['count']:,}",
            f"{m['completed']:,}",
            Text(f"{m['failed']:,}", style="red" if m["failed"] else ""),
            f"{m['tokens']['total']:,}",
            cost,
            _ms(m["latency_p50_ms"]),
        )
    return table


def _endpoints(stats: dict[str, Any]) -> Table:
    table = Table(title="Per endpoint", box=box.SIMPLE, title_justify="left")
    table.add_column("endpoint", overflow="fold", ratio=1)
    for col in ("requests", "completed", "failed", "attempts", "tokens", "cost", "p50 latency"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, e in stats["endpoints"].items():
        table.add_row(
            name,
            f"{e['count']:,}",
            f"{e['completed']:,}",
            Text(f"{e['failed']:,}", style="red" if e["failed"] else ""),
            f"{e['attempts']:,}",
            f"{e['tokens']['total']:,}",
            usd(e["cost_usd"]),
            _ms(e["latency_p50_ms"]),
        )
    return table


def _errors(stats: dict[str, Any]) -> Table:
    failed = stats["status"]["failed"]
    table = Table(title="Errors by type", box=box.SIMPLE, title_justify="left")
    table.add_column("error type")
    table.add_column("count", justify="right")
    table.add_column("share of failures", justify="right")
    for etype, n in stats["errors"].items():
        table.add_row(etype, f"{n:,}", _pct(n / failed) if failed else "-")
    return table


def render(stats: dict[str, Any], console: Console) -> None:
    """Print `stats` (the dict from `stats.compute`) as tables on `console`."""
    files = stats["files"]
    head = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"
    console.print(Text(f"burstq stats: {head}", style="bold"))
    if not stats["records"]:
        console.print("No records.")
        return
    console.print(_summary(stats))
    console.print(_latency(stats))
    console.print()
    if stats["latency_ms"]["count"]:
        console.print(_histogram(stats))
    timeline = _timeline(stats)
    if timeline is not None:
        console.print(timeline)
        console.print()
    console.print(_models(stats))
    if stats.get("endpoints"):
        console.print(_endpoints(stats))
    if stats["errors"]:
        console.print(_errors(stats))
