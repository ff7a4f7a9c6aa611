"""Drawing `report.build()` as one self-contained HTML page: inline SVG charts, no script.

The charts are drawn by pygal (the optional `report` extra) to SVG on this machine and inlined,
so the page opens offline, fetches nothing, runs no JavaScript and weighs a few hundred KB: it
can be mailed or kept as a CI artifact. A Content-Security-Policy of `default-src 'none'`
makes any stray reference fail loudly in a browser instead of phoning out. Every text that
comes from the records (model and endpoint names, error types, file names) is escaped, by
`html.escape` here and by pygal's XML writer inside the charts.
"""

from __future__ import annotations

import html
import math
import re
import sys
from datetime import UTC, datetime
from typing import Any

from ..errors import UsageError
from .fmt import duration as _duration
from .fmt import ms as _ms
from .fmt import usd

# The first bytes of every report: `burstq report` overwrites only files that start so.
MARKER = "<!DOCTYPE html>\n<!-- burstq report -->\n"
MAX_BARS = 12  # models / endpoints drawn; the rest are in the figures, not the bars
COMPLETED, FAILED, CEILING = "#2b7bb9", "#d62728", "#444444"
PALETTE = (
    "#d62728",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#2ca02c",
    "#1f77b4",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
)
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S)
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


class ReportExtraMissing(UsageError):
    """pygal is in the optional `report` extra."""


def _pygal() -> Any:
    try:
        import pygal
    except ImportError as exc:
        raise ReportExtraMissing(
            "burstq report draws its charts with pygal, which is not installed: "
            "pip install 'burstq[report]'"
        ) from exc
    # Importing pygal appends a legacy finder for its map plugins (unused here) to
    # sys.meta_path; it has no find_spec, so every later failed import in the process would
    # raise an ImportWarning through it. Take it out again.
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("pygal")]
    return pygal


def _clock(offset: float, width: float) -> str:
    """A bin's start as an offset from the first bin: 0:00, 1:30, 1:02:03 (or 2.5s)."""
    if width < 1:
        return f"{offset:.1f}s"
    s = int(round(offset))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def _style(pygal: Any, colors: tuple[str, ...]) -> Any:
    from pygal.style import Style

    return Style(
        background="white",
        plot_background="white",
        foreground="#333",
        foreground_strong="#111",
        foreground_subtle="#e3e3e3",
        opacity=".55",
        opacity_hover=".8",
        colors=colors,
        font_family=FONT,
        label_font_family=FONT,
        major_label_font_family=FONT,
        value_font_family=FONT,
        value_label_font_family=FONT,
        tooltip_font_family=FONT,
        title_font_family=FONT,
        legend_font_family=FONT,
        no_data_font_family=FONT,
        guide_stroke_color="#e6e6e6",
        major_guide_stroke_color="#d0d0d0",
        guide_stroke_dasharray="1,0",
        major_guide_stroke_dasharray="1,0",
        stroke_opacity="1",
        stroke_width="1.5",
        title_font_size=15,
        legend_font_size=12,
        label_font_size=11,
        major_label_font_size=11,
    )


def _chart(pygal: Any, kind: str, colors: tuple[str, ...], **config: Any) -> Any:
    base: dict[str, Any] = {
        "js": [],  # pygal's default tooltip script comes from a CDN: none, ever
        "disable_xml_declaration": True,
        "width": 900,
        "height": 330,
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 4,
        "truncate_legend": 40,
        "truncate_label": 24,
        "style": _style(pygal, colors),
        "margin": 12,
        "margin_bottom": 26,
        "max_scale": 8,  # value-axis ticks: few enough that "$0.000140" labels never collide
    }
    base.update(config)
    return getattr(pygal, kind)(**base)


class _Page:
    def __init__(self) -> None:
        self.sections: list[str] = []

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2>{body}</section>")

    def figure(self, name: str, chart: Any, caption: str) -> str:
        # pygal always embeds its config for its (absent) tooltip script: drop it, no script.
        svg = _SCRIPT.sub("", chart.render(is_unicode=True))
        return (
            f'<figure class="chart" id="chart-{name}">{svg}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def _per_min(count: int, width: float) -> float:
    return round(count * 60 / width, 2) if width else float(count)


def _throughput(pygal: Any, fig: dict[str, Any], labels: list[str], page: _Page) -> str:
    tl, ceiling = fig["timeline"], fig["ceiling"]
    width = tl["bin_seconds"]
    colors = (COMPLETED, FAILED, CEILING)
    chart = _chart(
        pygal,
        "Line",
        colors,
        title="Throughput: requests finished per minute",
        x_labels=labels,
        y_title="requests / min",
        show_dots=False,
        include_x_axis=True,
    )
    chart.add("completed", [_per_min(b["completed"], width) for b in tl["bins"]], fill=True)
    chart.add("failed", [_per_min(b["failed"], width) for b in tl["bins"]], fill=True)
    rpm = ceiling["rpm"]
    if rpm is not None:
        chart.add(
            f"rpm ceiling {rpm:g}",
            [rpm] * len(tl["bins"]),
            stroke_style={"width": 3, "dasharray": "10,6"},
        )
    note = f"{_duration(width)} per interval. rpm ceiling: " + (
        f"{rpm:g}, {ceiling['source']}." if rpm is not None else f"{ceiling['source']}."
    )
    return page.figure("throughput", chart, note)


def _latency_hist(pygal: Any, fig: dict[str, Any], page: _Page) -> str:
    lat = fig["latency_ms"]
    labels = []
    for b in fig["histogram"]["buckets"]:
        lo, hi = b["lo"], b["hi"]
        labels.append(f"> {_ms(lo)}" if hi is None else f"{_ms(lo) if lo else '0'} - {_ms(hi)}")
    chart = _chart(
        pygal,
        "Bar",
        (COMPLETED,),
        title=(
            f"Latency distribution: p50 {_ms(lat['p50'])} · p90 {_ms(lat['p90'])}"
            f" · p99 {_ms(lat['p99'])}"
        ),
        x_labels=labels,
        x_label_rotation=30,
        y_title="completed requests",
    )
    chart.add("completed requests", [b["count"] for b in fig["histogram"]["buckets"]])
    return page.figure("latency-histogram", chart, f"n = {lat['count']:,} completed requests.")


def _latency_cdf(pygal: Any, fig: dict[str, Any], page: _Page) -> str:
    lat = fig["latency_ms"]
    # pygal's log scale would also bend the share axis; plot log10(ms) on a linear axis instead.
    points = [(math.log10(max(ms, 1e-3)), round(share * 100, 3)) for ms, share in fig["cdf"]]
    lo = math.floor(min(p[0] for p in points))
    hi = math.ceil(max(p[0] for p in points))
    chart = _chart(
        pygal,
        "XY",
        (COMPLETED, "#2ca02c", "#ff7f0e", FAILED),
        title="Latency CDF: share of completed requests at or below a latency",
        x_labels=list(range(lo, max(hi, lo + 1) + 1)),
        x_value_formatter=lambda v: _ms(10**v),
        y_title="% of completed",
        range=(0, 100),
        show_dots=False,
    )
    chart.add("completed", points)
    for p in ("p50", "p90", "p99"):
        v = lat[p]
        if v is not None:
            x = math.log10(max(v, 1e-3))
            chart.add(
                f"{p} {_ms(v)}",
                [(x, 0), (x, 100)],
                stroke_style={"width": 2, "dasharray": "6,4"},
            )
    return page.figure("latency-cdf", chart, f"Percentiles by {lat['method']}.")


def _latency_time(pygal: Any, fig: dict[str, Any], labels: list[str], page: _Page) -> str:
    bins = fig["timeline"]["bins"]
    chart = _chart(
        pygal,
        "Line",
        ("#2ca02c", "#ff7f0e", FAILED),
        title="Latency over time (completed requests)",
        x_labels=labels,
        logarithmic=True,
        y_labels=_log_ticks([v for b in bins for v in b["latency_ms"].values() if v]),
        allow_interruptions=True,
        y_title="ms (log scale)",
        show_dots=len(bins) < 40,
        value_formatter=_ms,
    )
    for p in ("p50", "p90", "p99"):
        chart.add(p, [b["latency_ms"][p] for b in bins])
    return page.figure(
        "latency-time",
        chart,
        "Per interval, from a histogram with bins 10.5 % apart; gaps: no completed request.",
    )


def _log_ticks(values: list[float]) -> list[float]:
    """1-2-5 ticks covering `values` (pygal's own log ticks crowd at each decade's top)."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0**exp for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 2 <= t <= hi * 2]
    return inside or ticks


def _errors_time(pygal: Any, fig: dict[str, Any], labels: list[str], page: _Page) -> str:
    bins = fig["timeline"]["bins"]
    chart = _chart(
        pygal,
        "StackedBar",
        PALETTE,
        title="Failed requests by error type, per interval",
        x_labels=labels,
        y_title="failed requests",
    )
    for etype in fig["errors"]:
        chart.add(etype, [b["errors"].get(etype, 0) for b in bins])
    return page.figure(
        "errors-time", chart, "Final errors of failed records (after retries and fallbacks)."
    )


def _retries_time(pygal: Any, fig: dict[str, Any], labels: list[str], page: _Page) -> str:
    bins = fig["timeline"]["bins"]
    chart = _chart(
        pygal,
        "Bar",
        ("#ff7f0e",),
        title="Retries per interval (attempts beyond the first: 429s, 5xx, timeouts...)",
        x_labels=labels,
        y_title="retries",
    )
    chart.add("retries", [b["retries"] for b in bins])
    return page.figure(
        "retries-time",
        chart,
        "Counted on the records finishing in each interval; a 429 storm shows here even "
        "when every request completed in the end.",
    )


def _attempts(pygal: Any, fig: dict[str, Any], page: _Page) -> str:
    att = fig["attempts"]
    top = att["top_bar"]
    counts = {int(k): v for k, v in att["per_request"].items()}
    keys = list(range(0 if 0 in counts else 1, max(counts, default=1) + 1))
    chart = _chart(
        pygal,
        "Bar",
        (COMPLETED,),
        title="Attempts per request",
        x_labels=[f"{k}+" if k == top else str(k) for k in keys],
        x_title="attempts",
        y_title="requests",
    )
    chart.add("requests", [counts.get(k, 0) for k in keys])
    return page.figure(
        "attempts",
        chart,
        f"{att['total']:,} attempts, {att['retries']:,} retries, "
        f"{att['unanswered']:,} unanswered (sent, answer lost). 0: invalid lines, never sent.",
    )


def _cost_time(pygal: Any, fig: dict[str, Any], labels: list[str], page: _Page) -> str:
    total, cum = 0.0, []
    for b in fig["timeline"]["bins"]:
        total += b["cost_usd"]
        cum.append(round(total, 8))
    chart = _chart(
        pygal,
        "Line",
        ("#2ca02c",),
        title="Cost so far (USD)",
        x_labels=labels,
        show_dots=False,
        fill=True,
        value_formatter=usd,
    )
    chart.add("cost", cum)
    return page.figure("cost-time", chart, "Cumulative known cost of records finished so far.")


def _groups(pygal: Any, groups: dict[str, Any], kind: str, page: _Page) -> str:
    shown = list(groups.items())[:MAX_BARS]
    names = [n for n, _ in shown]
    more = f" The {len(groups) - MAX_BARS} smallest are left out." if len(groups) > MAX_BARS else ""
    height = max(200, 60 + 34 * len(shown))
    tok = _chart(
        pygal,
        "HorizontalStackedBar",
        (COMPLETED, "#ff7f0e"),
        title=f"Tokens by {kind}",
        x_labels=names,
        height=height,
    )
    tok.add("prompt", [g["tokens"]["prompt"] for _, g in shown])
    tok.add("completion", [g["tokens"]["completion"] for _, g in shown])
    cost = _chart(
        pygal,
        "HorizontalBar",
        ("#2ca02c",),
        title=f"Cost by {kind} (USD)",
        x_labels=names,
        height=height,
        value_formatter=usd,
    )
    cost.add("cost", [g["cost_usd"] for _, g in shown])
    lat = _chart(
        pygal,
        "HorizontalBar",
        ("#2ca02c", "#ff7f0e", FAILED),
        title=f"Latency by {kind}",
        x_labels=names,
        height=max(200, 60 + 50 * len(shown)),
        value_formatter=_ms,
    )
    for p in ("p50", "p90", "p99"):
        lat.add(p, [g["latency_ms"][p] for _, g in shown])
    unpriced = [n for n, g in shown if g["cost_usd"] is None]
    cost_note = "No price known for: " + ", ".join(unpriced) + "." if unpriced else ""
    return (
        page.figure(f"tokens-{kind}", tok, f"Tokens of all records.{more}")
        + page.figure(f"cost-{kind}", cost, f"Known costs.{more} {cost_note}".strip())
        + page.figure(f"latency-{kind}", lat, f"Completed requests.{more}")
    )


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f'<div class="kf"><div class="k">{html.escape(k)}</div>'
        f'<div class="v">{html.escape(v)}</div></div>'
        for k, v in rows
    )
    return f'<div class="figures">{cells}</div>'


def _header(fig: dict[str, Any]) -> list[tuple[str, str]]:
    st, t, tok, att, cost = (
        fig["status"],
        fig["time"],
        fig["tokens"],
        fig["attempts"],
        fig["cost_usd"],
    )
    rate = fig["success_rate"]
    tp = t["throughput_per_min"]
    priced = usd(cost["total"])
    if cost["unpriced_completed"]:
        priced += f" (+{cost['unpriced_completed']:,} unpriced)"
    rows = [
        ("Requests", f"{fig['records']:,}"),
        ("Completed", f"{st['completed']:,}"),
        ("Failed", f"{st['failed']:,}"),
        ("Success rate", "-" if rate is None else f"{rate:.1%}"),
        ("Wall time", _duration(t["wall_seconds"])),
        ("Throughput", "-" if tp is None else f"{tp:,.1f} req/min"),
        ("Tokens", f"{tok['total']:,}"),
        ("Cost", priced),
        ("Retries", f"{att['retries']:,}"),
        (
            "Latency p50 / p90 / p99",
            " / ".join(_ms(fig["latency_ms"][p]) for p in ("p50", "p90", "p99")),
        ),
    ]
    if fig["cached"]:
        rows.append(("From cache", f"{fig['cached']:,}"))
    return rows


CSS = """
body{font-family:FONT_FAMILY;margin:0;background:#f6f7f9;color:#222}
main{max-width:960px;margin:0 auto;padding:16px 24px 40px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#555;font-size:13px;margin:0 0 12px;word-break:break-all}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px}
.kf{background:#fff;border:1px solid #e2e4e8;border-radius:6px;padding:8px 10px}
.k{font-size:12px;color:#666}.v{font-size:18px;font-weight:600;margin-top:2px}
figure.chart{background:#fff;border:1px solid #e2e4e8;border-radius:6px;margin:10px 0;padding:6px}
figure.chart svg{display:block;width:100%;height:auto}
figcaption{font-size:12px;color:#555;padding:2px 8px 4px}
p.none{color:#555}
""".replace("FONT_FAMILY", FONT)


def render(fig: dict[str, Any], *, title: str | None = None) -> str:
    """The whole page for `fig` (from `report.build`)."""
    pygal = _pygal()
    files = fig["files"]
    head = title or (
        f"burstq report: {files[0]}" if len(files) == 1 else f"burstq report: {len(files)} outputs"
    )
    made = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t = fig["time"]
    span = (
        f"{t['first_finished_at']} → {t['last_finished_at']} (UTC)"
        if t["first_finished_at"]
        else "no finish times"
    )
    page = _Page()
    page.section("Key figures", _table(_header(fig)))
    bins = fig["timeline"]["bins"]
    width = fig["timeline"]["bin_seconds"]
    # About eight time labels whatever the number of intervals; the others stay blank.
    stride = max(1, math.ceil(len(bins) / 8))
    labels = [
        _clock(b["start"] - bins[0]["start"], width) if i % stride == 0 else ""
        for i, b in enumerate(bins)
    ]
    none = '<p class="none">{}</p>'.format

    if bins:
        page.section("Throughput", _throughput(pygal, fig, labels, page))
    if fig["latency_ms"]["count"]:
        body = _latency_hist(pygal, fig, page) + _latency_cdf(pygal, fig, page)
        if bins:
            body += _latency_time(pygal, fig, labels, page)
        page.section("Latency", body)
    else:
        page.section("Latency", none("No completed request with a latency."))
    errors = none("No failed records.")
    if fig["errors"] and bins:
        errors = _errors_time(pygal, fig, labels, page)
    if bins and fig["attempts"]["retries"]:
        errors += _retries_time(pygal, fig, labels, page)
    page.section("Errors and retries", errors + _attempts(pygal, fig, page))
    money = _cost_time(pygal, fig, labels, page) if bins and fig["cost_usd"]["total"] else ""
    page.section("Tokens and cost by model", money + _groups(pygal, fig["models"], "model", page))
    if fig["endpoints"]:
        page.section("By endpoint", _groups(pygal, fig["endpoints"], "endpoint", page))

    files_html = ", ".join(html.escape(f) for f in files)
    return (
        f'{MARKER}<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(head)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{html.escape(head)}</h1>"
        f'<p class="sub">{files_html}<br>{html.escape(span)} · made {made}</p>'
        + "".join(page.sections)
        + "</main></body></html>\n"
    )
