"""`stats.compute()` as GitHub-flavoured Markdown, for `$GITHUB_STEP_SUMMARY` and PR comments.

The same figures and breakdowns as the rich tables of statsview.py: a summary, latency
percentiles, the latency histogram, requests over time, per model and errors by type. Only
reads the dict (the `--json` contract). Text from the records (model names, error types, file
names) is escaped so that a `|` or a backtick cannot break a table or start markup.
"""

from __future__ import annotations

from typing import Any

from .fmt import bound as _bound
from .fmt import duration as _duration
from .fmt import ms as _ms
from .fmt import pct as _pct
from .fmt import usd
from .statsview import bar, sparkline

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]<>()#+!|~"} | {"\n": " ", "\r": " "})


def escape(text: str) -> str:
    """Text that renders as itself in a GFM table cell (no markup, no broken columns)."""
    return str(text).translate(_MD_SPECIAL)


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right or set()
    align = ["---:" if i in right else "---" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _summary(stats: dict[str, Any]) -> list[str]:
    st, cost, att, tok, t = (
        stats["status"],
        stats["cost_usd"],
        stats["attempts"],
        stats["tokens"],
        stats["time"],
    )
    rows = [
        ["Records", f"{stats['records']:,}"],
        ["Completed", f"{st['completed']:,}"],
        ["Failed", f"{st['failed']:,}"],
    ]
    rows += [
        [f"Status {escape(name)}", f"{n:,}"]
        for name, n in st.items()
        if name not in ("completed", "failed")
    ]
    rows.append(["Success rate", _pct(stats["success_rate"])])
    wall = _duration(t["wall_seconds"])
    if t["first_finished_at"]:
        wall += f" ({escape(t['first_finished_at'])} → {escape(t['last_finished_at'])})"
    rows.append(["Wall time", wall])
    tp = t["throughput_per_min"]
    rows.append(["Throughput", "-" if tp is None else f"{tp:,.1f} requests/min"])
    rows.append(["Attempts", f"{att['total']:,} ({att['retries']:,} retries)"])
    rows.append(
        [
            "Tokens",
            f"{tok['total']:,} ({tok['prompt']:,} prompt + {tok['completion']:,} completion)",
        ]
    )
    priced = usd(cost["total"])
    if cost["unpriced_completed"]:
        priced += f" (+{cost['unpriced_completed']:,} completed without a price)"
    rows.append(["Cost", priced])
    if att["unanswered"]:
        worst = (
            f"{usd(cost['worst_case'])} if all {att['unanswered']:,} unanswered "
            "attempts were billed"
        )
        if cost["unpriced_unanswered"]:
            worst += f" (+{cost['unpriced_unanswered']:,} without a price)"
        rows.append(["Worst-case cost", worst])
    return _table(["Figure", "Value"], rows, {1})


def _latency(stats: dict[str, Any]) -> list[str]:
    lat = stats["latency_ms"]
    keys = ("p50", "p90", "p99", "max", "mean")
    lines = [f"### Latency (n={lat['count']:,} completed, percentiles by {lat['method']})", ""]
    lines += _table(list(keys), [[_ms(lat[k]) for k in keys]], set(range(len(keys))))
    return lines


def _histogram(stats: dict[str, Any]) -> list[str]:
    buckets = stats["histogram"]["buckets"]
    largest = max((b["count"] for b in buckets), default=0)
    rows = []
    for b in buckets:
        label = (
            f"> {_bound(b['lo'])}"
            if b["hi"] is None
            else f"{_bound(b['lo']) if b['lo'] else '0'} - {_bound(b['hi'])}"
        )
        rows.append([label, f"{b['count']:,}", bar(b["count"], largest, 30)])
    return ["### Latency histogram", "", *_table(["latency", "count", ""], rows, {0, 1})]


def _timeline(stats: dict[str, Any]) -> list[str]:
    tl = stats["timeline"]
    if not tl["counts"]:
        return []
    peak = max(tl["counts"])
    if tl["bin_seconds"]:
        title = (
            f"### Requests over time ({len(tl['counts'])} bins of "
            f"{_duration(tl['bin_seconds'])}, peak {peak:,} per bin)"
        )
    else:
        title = f"### Requests over time (all {peak:,} finished at {escape(tl['start'])})"
    rows = [["finished", f"`{sparkline(tl['counts'])}`"]]
    if sum(tl["failed"]):
        rows.append(["failed", f"`{sparkline(tl['failed'])}`"])
    return [title, "", *_table(["series", "per bin"], rows)]


def _models(stats: dict[str, Any]) -> list[str]:
    rows = []
    for name, m in stats["models"].items():
        cost = usd(m["cost_usd"])
        if m["unpriced"] and m["cost_usd"] is not None:
            cost += "+?"  # partly priced: the figure is a floor
        rows.append(
            [
                escape(name),
                f"{m['count']:,}",
                f"{m['completed']:,}",
                f"{m['failed']:,}",
                f"{m['tokens']['total']:,}",
                cost,
                _ms(m["latency_p50_ms"]),
            ]
        )
    header = ["model", "requests", "completed", "failed", "tokens", "cost", "p50 latency"]
    return ["### Per model", "", *_table(header, rows, set(range(1, 7)))]


def _errors(stats: dict[str, Any]) -> list[str]:
    failed = stats["status"]["failed"]
    rows = [
        [escape(etype), f"{n:,}", _pct(n / failed) if failed else "-"]
        for etype, n in stats["errors"].items()
    ]
    return [
        "### Errors by type",
        "",
        *_table(["error type", "count", "share of failures"], rows, {1, 2}),
    ]


def render_markdown(stats: dict[str, Any]) -> str:
    """`stats` (the dict from `stats.compute`) as a Markdown document ending in a newline."""
    files = stats["files"]
    head = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"
    parts: list[list[str]] = [[f"## burstq stats: {escape(head)}"]]
    if not stats["records"]:
        parts.append(["No records."])
        return "\n\n".join("\n".join(p) for p in parts) + "\n"
    parts.append(_summary(stats))
    parts.append(_latency(stats))
    if stats["latency_ms"]["count"]:
        parts.append(_histogram(stats))
    timeline = _timeline(stats)
    if timeline:
        parts.append(timeline)
    parts.append(_models(stats))
    if stats["errors"]:
        parts.append(_errors(stats))
    return "\n\n".join("\n".join(p) for p in parts) + "\n"
