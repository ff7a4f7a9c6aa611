"""Figures for `burstq report`, aggregated while streaming: memory stays flat in the records.

`stats.compute` keeps every latency to give exact percentiles; a report of a million records
must not. Here each record is folded into fixed-size structures as it is read and dropped:

* latencies go into a log histogram whose bins are 1 % apart (`LATENCY_RATIO`), each bin
  remembering the largest latency it holds. A percentile is found by nearest rank over the bins
  and reported as that bin's largest value: an observed latency at most 1 % above the exact
  nearest-rank figure `stats` gives (equal to it whenever the bin holds one distinct value).
* time goes into at most `MAX_TIME_BINS` bins aligned on multiples of their width, a power of
  two of seconds. When the records span more bins than that, the width doubles and neighbours
  merge (bin i becomes i // 2), so shards read one after another, in any order, land in the
  same bins they would have in one file. Each time bin keeps counts, error types, tokens, cost
  and a coarse latency histogram (bins 10.5 % apart) for p50/p90/p99 over time.
* models, endpoints and error types are counted by name, at most `MAX_GROUPS` /
  `MAX_ERROR_TYPES` names each (the rest under "(other)"), so a hand-edited file with a new
  name on every line cannot grow memory either.

Records come from `stats.read_records` (torn last line skipped: a file still being written is
fine; Batch API lines are read as records). `endpoint`, `cached` and `fingerprint` are optional
fields: records without them are counted as usual and the endpoint breakdown is simply empty.
The rpm ceiling is known only where the run recorded it (the sidecar's `limits.rpm`, written
by `burstq run`); `build(rpm=...)` sets it by hand and says so.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..files.journal import sidecar_path
from .stats import (
    HISTOGRAM_BOUNDS_MS,
    UNKNOWN_MODEL,
    as_int,
    as_num,
    cost_or_null,
    parse_timestamp,
    read_records,
)

LATENCY_RATIO = 1.01
COARSE = 10  # per-time-bin latency histograms: 10 fine bins each, 1.01**10 = 10.5 % apart
MAX_TIME_BINS = 120
# What the charts get: at most DISPLAY_BINS intervals, and intervals under a second only while
# that still leaves more than 2 * MIN_DISPLAY_BINS of them (a few records per interval drawn
# as requests/minute would be all noise).
DISPLAY_BINS = 60
MIN_DISPLAY_BINS = 16
# The finest time bin: 1/16 s, so that a run of a few seconds still draws a shape.
BASE_WIDTH_EXP = -4
MAX_GROUPS = 50
MAX_ERROR_TYPES = 12
MAX_ATTEMPTS_BAR = 10  # attempts above this share one "10+" bar
CDF_POINTS = 200
OTHER = "(other)"
PERCENTILES = (50, 90, 99)
_FLOOR_MS = 1e-3  # latencies at or below this share the lowest bin (cached answers: ~0)


_INV_LOG = 1 / math.log(LATENCY_RATIO)


def fine_index(value: float) -> int:
    """The bin of `value` in the LATENCY_RATIO histogram (computed once per record)."""
    return math.floor(math.log(value if value > _FLOOR_MS else _FLOOR_MS) * _INV_LOG)


class LogHistogram:
    """Counts of positive values in log bins, each bin with its largest value.

    Bin i holds LATENCY_RATIO**i <= v < LATENCY_RATIO**(i+1) (`fine_index`); a coarse
    histogram files its values under fine_index // COARSE, bins COARSE fine bins wide.
    """

    __slots__ = ("counts", "maxes", "n", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.maxes: dict[int, float] = {}
        self.n = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self.add_at(fine_index(value), value)

    def add_at(self, i: int, value: float) -> None:
        counts = self.counts
        if i in counts:
            counts[i] += 1
            if value > self.maxes[i]:
                self.maxes[i] = value
        else:
            counts[i] = 1
            self.maxes[i] = value
        self.n += 1
        self.total += value

    def merge(self, other: LogHistogram) -> None:
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
            if other.maxes[i] > self.maxes.get(i, -math.inf):
                self.maxes[i] = other.maxes[i]
        self.n += other.n
        self.total += other.total

    def percentiles(self, ps: Sequence[int]) -> list[float | None]:
        """Nearest rank (as `stats.nearest_rank`) over the bins, as the bin's largest value."""
        if not self.n:
            return [None] * len(ps)
        ranks = [max(1, -(-p * self.n // 100)) for p in ps]
        out: list[float | None] = [None] * len(ps)
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            for j, rank in enumerate(ranks):
                if out[j] is None and seen >= rank:
                    out[j] = self.maxes[i]
            if all(v is not None for v in out):
                break
        return out

    def cdf(self, points: int) -> list[tuple[float, float]]:
        """(latency, share at or below it) at up to `points` bin edges, ascending."""
        keys = sorted(self.counts)
        step = max(1, math.ceil(len(keys) / points))
        out: list[tuple[float, float]] = []
        seen = 0
        for k, i in enumerate(keys):
            seen += self.counts[i]
            if k % step == step - 1 or k == len(keys) - 1:
                out.append((self.maxes[i], seen / self.n))
        return out


@dataclass(slots=True)
class _Bin:
    completed: int = 0
    failed: int = 0
    other: int = 0  # statuses other than completed/failed
    retries: int = 0
    tokens: int = 0
    cost: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    latency: LogHistogram = field(default_factory=LogHistogram)

    def merge(self, o: _Bin) -> None:
        self.completed += o.completed
        self.failed += o.failed
        self.other += o.other
        self.retries += o.retries
        self.tokens += o.tokens
        self.cost += o.cost
        for k, v in o.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.latency.merge(o.latency)


class TimeBins:
    """At most `limit` bins of width 2**exp seconds, aligned on multiples of the width."""

    __slots__ = ("bins", "exp", "hi", "limit", "lo")

    def __init__(self, limit: int = MAX_TIME_BINS, exp: int = BASE_WIDTH_EXP) -> None:
        self.limit = limit
        self.exp = exp
        self.bins: dict[int, _Bin] = {}
        self.lo = 0
        self.hi = -1

    @property
    def width(self) -> float:
        return 2.0**self.exp

    def at(self, t: float) -> _Bin:
        i = math.floor(t / self.width)
        b = self.bins.get(i)
        if b is None:
            if not self.bins:
                self.lo = self.hi = i
            self.lo, self.hi = min(self.lo, i), max(self.hi, i)
            while self.hi - self.lo + 1 > self.limit:
                self._coarsen()
            i = math.floor(t / self.width)
            b = self.bins.get(i)
            if b is None:
                b = self.bins[i] = _Bin()
        return b

    def _coarsen(self) -> None:
        merged: dict[int, _Bin] = {}
        for i, b in self.bins.items():
            into = merged.get(i // 2)
            if into is None:
                merged[i // 2] = b
            else:
                into.merge(b)
        self.bins = merged
        self.exp += 1
        self.lo //= 2
        self.hi //= 2

    def for_display(self) -> None:
        """Coarsen to what a chart can show (see DISPLAY_BINS); records may still be added."""
        while self.bins and (
            self.hi - self.lo + 1 > DISPLAY_BINS
            or (self.width < 1 and self.hi - self.lo + 1 > 2 * MIN_DISPLAY_BINS)
        ):
            self._coarsen()

    def dense(self) -> list[tuple[float, _Bin]]:
        """(start epoch seconds, bin) for every bin from the first to the last, empty included."""
        if not self.bins:
            return []
        return [(i * self.width, self.bins.get(i) or _Bin()) for i in range(self.lo, self.hi + 1)]


@dataclass(slots=True)
class _Group:
    count: int = 0
    completed: int = 0
    failed: int = 0
    cached: int = 0
    prompt: int = 0
    completion: int = 0
    total: int = 0
    cost: float = 0.0
    priced: int = 0
    unpriced: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)

    def out(self) -> dict[str, Any]:
        p50, p90, p99 = self.latency.percentiles(PERCENTILES)
        return {
            "count": self.count,
            "completed": self.completed,
            "failed": self.failed,
            "cached": self.cached,
            "tokens": {"prompt": self.prompt, "completion": self.completion, "total": self.total},
            "cost_usd": cost_or_null(self.cost, self.priced, self.unpriced),
            "unpriced": self.unpriced,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99},
        }


def _capped(table: dict[str, Any], name: str, limit: int, make: Any) -> Any:
    got = table.get(name)
    if got is None:
        if len(table) >= limit and name != OTHER:
            return _capped(table, OTHER, limit + 1, make)
        got = table[name] = make()
    return got


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class Aggregate:
    """Fold records one at a time; `figures()` gives the JSON-ready result."""

    def __init__(self, max_time_bins: int = MAX_TIME_BINS) -> None:
        self.records = 0
        self.status: dict[str, int] = {"completed": 0, "failed": 0}
        self.latency = LogHistogram()
        self.buckets = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)
        self.attempts_total = self.retries = self.unanswered = 0
        self.attempts: dict[int, int] = {}
        self.prompt = self.completion = self.tokens = 0
        self.null_cost = self.cached = 0
        self.models: dict[str, _Group] = {}
        self.endpoints: dict[str, _Group] = {}
        self.errors: dict[str, int] = {}
        self.time = TimeBins(max_time_bins)
        self.first: tuple[float, str] | None = None
        self.last: tuple[float, str] | None = None
        self.timed = 0

    def add(self, rec: dict[str, Any]) -> None:
        self.records += 1
        st = rec.get("status")
        st = st if isinstance(st, str) else "unknown"
        self.status[st] = self.status.get(st, 0) + 1
        model = str(rec.get("model_used") or rec.get("model") or UNKNOWN_MODEL)
        groups = [_capped(self.models, model, MAX_GROUPS, _Group)]
        endpoint = _name(rec.get("endpoint"))
        if endpoint is not None:
            groups.append(_capped(self.endpoints, endpoint, MAX_GROUPS, _Group))
        cached = rec.get("cached") is True
        self.cached += cached

        # `type(x) is int` first: the common case costs one check, odd values go the slow way.
        a = rec.get("attempts")
        attempts = a if type(a) is int else as_int(a)
        retries = max(0, attempts - 1)
        self.attempts_total += attempts
        self.retries += retries
        key = min(max(attempts, 0), MAX_ATTEMPTS_BAR)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        lost = rec.get("unanswered_attempts")
        if lost is not None:
            self.unanswered += as_int(lost)

        usage = rec.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        p, c, t = (
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            usage.get("total_tokens"),
        )
        p = p if type(p) is int else as_int(p)
        c = c if type(c) is int else as_int(c)
        t = p + c if t is None else t if type(t) is int else as_int(t)
        self.prompt, self.completion, self.tokens = (
            self.prompt + p,
            self.completion + c,
            self.tokens + t,
        )
        cost = rec.get("cost_usd")
        cost = cost if type(cost) is float and math.isfinite(cost) else as_num(cost)
        if cost is None:
            self.null_cost += 1
        latency = rec.get("latency_ms") if st == "completed" else None
        if latency is not None and not (type(latency) is float and math.isfinite(latency)):
            latency = as_num(latency)
        li = fine_index(latency) if latency is not None else 0
        for g in groups:
            g.count += 1
            g.cached += cached
            g.prompt, g.completion, g.total = g.prompt + p, g.completion + c, g.total + t
            if cost is not None:
                g.cost += cost
            if st == "completed":
                g.completed += 1
                if cost is None:
                    g.unpriced += 1
                else:
                    g.priced += 1
                if latency is not None:
                    g.latency.add_at(li, latency)
            elif st == "failed":
                g.failed += 1
        etype = None
        if st == "failed":
            err = rec.get("error")
            etype = str(err.get("type") or "unknown") if isinstance(err, dict) else "unknown"
            if etype not in self.errors and len(self.errors) >= MAX_ERROR_TYPES:
                etype = OTHER
            self.errors[etype] = self.errors.get(etype, 0) + 1
        if latency is not None:
            self.latency.add_at(li, latency)
            self.buckets[bisect.bisect_left(HISTOGRAM_BOUNDS_MS, latency)] += 1

        raw = rec.get("finished_at")
        ts = parse_timestamp(raw) if isinstance(raw, str) else None
        if ts is None or not isinstance(raw, str):
            return
        self.timed += 1
        if self.first is None or ts < self.first[0]:
            self.first = (ts, raw)
        if self.last is None or ts > self.last[0]:
            self.last = (ts, raw)
        b = self.time.at(ts)
        if st == "completed":
            b.completed += 1
        elif st == "failed":
            b.failed += 1
        else:
            b.other += 1
        b.retries += retries
        b.tokens += t
        if cost is not None:
            b.cost += cost
        if etype is not None:
            b.errors[etype] = b.errors.get(etype, 0) + 1
        if latency is not None:
            b.latency.add_at(li // COARSE, latency)

    def figures(self) -> dict[str, Any]:
        st = self.status
        p50, p90, p99 = self.latency.percentiles(PERCENTILES)
        lat = self.latency
        priced = sum(g.priced for g in self.models.values())
        unpriced = sum(g.unpriced for g in self.models.values())
        cost_total = sum(g.cost for g in self.models.values())
        wall = self.last[0] - self.first[0] if self.first and self.last else None
        los = (0, *HISTOGRAM_BOUNDS_MS)
        his: tuple[int | None, ...] = (*HISTOGRAM_BOUNDS_MS, None)

        def by_count(groups: dict[str, _Group]) -> dict[str, Any]:
            ordered = sorted(groups.items(), key=lambda kv: (-kv[1].count, kv[0]))
            return {name: g.out() for name, g in ordered}

        bins = []
        self.time.for_display()
        for start, b in self.time.dense():
            q50, q90, q99 = b.latency.percentiles(PERCENTILES)
            bins.append(
                {
                    "start": start,
                    "completed": b.completed,
                    "failed": b.failed,
                    "other": b.other,
                    "retries": b.retries,
                    "tokens": b.tokens,
                    "cost_usd": b.cost,
                    "errors": dict(b.errors),
                    "latency_ms": {"p50": q50, "p90": q90, "p99": q99},
                }
            )
        return {
            "records": self.records,
            "status": dict(st),
            "success_rate": st["completed"] / self.records if self.records else None,
            "latency_ms": {
                "method": f"nearest rank over log bins {round((LATENCY_RATIO - 1) * 100)} % apart",
                "count": lat.n,
                "p50": p50,
                "p90": p90,
                "p99": p99,
                "max": max(lat.maxes.values()) if lat.n else None,
                "mean": lat.total / lat.n if lat.n else None,
            },
            "histogram": {
                "unit": "ms",
                "buckets": [
                    {"lo": lo, "hi": hi, "count": c}
                    for lo, hi, c in zip(los, his, self.buckets, strict=True)
                ],
            },
            "cdf": [[ms, share] for ms, share in lat.cdf(CDF_POINTS)],
            "attempts": {
                "total": self.attempts_total,
                "retries": self.retries,
                "unanswered": self.unanswered,
                "per_request": {str(k): v for k, v in sorted(self.attempts.items())},
                "top_bar": MAX_ATTEMPTS_BAR,
            },
            "tokens": {"prompt": self.prompt, "completion": self.completion, "total": self.tokens},
            "cost_usd": {
                "total": cost_or_null(cost_total, priced, unpriced),
                "unpriced_completed": unpriced,
                "null_cost_records": self.null_cost,
            },
            "cached": self.cached,
            "models": by_count(self.models),
            "endpoints": by_count(self.endpoints),
            "errors": dict(sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))),
            "time": {
                "first_finished_at": self.first[1] if self.first else None,
                "last_finished_at": self.last[1] if self.last else None,
                "wall_seconds": wall or None,
                "throughput_per_min": self.timed / (wall / 60) if wall else None,
            },
            "timeline": {"bin_seconds": self.time.width, "bins": bins},
        }


def recorded_rpm(paths: Sequence[Path]) -> list[float]:
    """The distinct `--rpm` values the runs that wrote `paths` recorded in their sidecars."""
    found: set[float] = set()
    for path in paths:
        try:
            side = orjson.loads(sidecar_path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        limits = side.get("limits") if isinstance(side, dict) else None
        rpm = as_num(limits.get("rpm")) if isinstance(limits, dict) else None
        if rpm is not None and rpm > 0:
            found.add(rpm)
    return sorted(found)


def ceiling(paths: Sequence[Path], rpm: float | None) -> dict[str, Any]:
    """The rpm line to draw, and where it came from, in words for the chart's legend."""
    if rpm is not None:
        return {"rpm": rpm, "source": "given with burstq report --rpm"}
    seen = recorded_rpm(paths)
    if len(seen) == 1:
        return {"rpm": seen[0], "source": "recorded by the run (--rpm)"}
    if seen:
        return {
            "rpm": None,
            "source": "the outputs were written with different --rpm values "
            f"({', '.join(f'{v:g}' for v in seen)}); give burstq report --rpm to draw one",
        }
    return {
        "rpm": None,
        "source": "not recorded (the run learned its limits, or its sidecar is gone); "
        "give burstq report --rpm to draw it",
    }


def build(paths: Sequence[Path], *, rpm: float | None = None) -> dict[str, Any]:
    """Read `paths` once, streaming, and return the report's figures."""
    agg = Aggregate()
    records: Iterable[dict[str, Any]] = read_records(paths)
    for rec in records:
        agg.add(rec)
    return {"files": [str(p) for p in paths], **agg.figures(), "ceiling": ceiling(paths, rpm)}
