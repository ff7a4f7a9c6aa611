"""Figures over the records of one or more output files: pure aggregation, no Rich.

`compute()` reads records with `journal.iter_records`, so it works on a file a run is still
appending to (a torn last line is skipped, not counted). `statsview.render()` draws the result;
`burstq stats --json` prints it as is, so the shape below is a contract: add keys, never rename
or remove them.

    {
      "files": ["out.jsonl"],                    # the paths given, in order
      "records": 120,                            # records read from all files
      "status": {"completed": 110, "failed": 10},   # both keys always; other statuses as seen
      "success_rate": 0.9167,                    # completed / records; null when no records
      "latency_ms": {                            # completed records with a latency_ms
        "method": "nearest-rank", "count": 110,
        "p50": 812.4, "p90": 2210.0, "p99": 7400.2, "max": 9120.5, "mean": 1033.7
      },                                         # p*, max, mean are null when count is 0
      "attempts": {"total": 131, "retries": 21, "unanswered": 3,
                   "unrecorded": 2},  # sent while a run was interrupted: no record (sidecar)
      "tokens": {"prompt": 52000, "completion": 18000, "total": 70000},
      "cost_usd": {
        "total": 0.0123,             # sum of known costs; null if nothing completed was priced
        "null_cost_records": 12,     # records whose cost_usd is null (failed ones included)
        "unpriced_completed": 2,     # completed records without a price: total understates
        "worst_case": 0.0125,        # total + unanswered attempts priced as below; null with total
        "unpriced_unanswered": 0,    # unanswered attempts of models with no known mean cost
        "note": "..."                # how worst_case is priced, in words
      },
      "models": {                    # by model_used, else model, else "unknown"; most used first
        "gpt-4o-mini": {
          "count": 100, "completed": 95, "failed": 5,
          "tokens": {"prompt": 0, "completion": 0, "total": 0},
          "cost_usd": 0.01,          # same null rule as cost_usd.total, per model
          "unpriced": 0,             # completed records of this model without a price
          "mean_cost_per_completed": 0.000105,  # null when no priced completed record
          "unanswered_attempts": 2,
          "latency_p50_ms": 790.0    # null when no completed record with a latency
        }
      },
      "errors": {"timeout": 6, "server_error": 4},   # error.type of failed records, most first
      "endpoints": {                 # --endpoints runs: by the record's endpoint; {} otherwise
        "azure-eu": {"count": 60, "completed": 58, "failed": 2, "attempts": 63,
                     "tokens": {"prompt": 0, "completion": 0, "total": 0}, "cost_usd": 0.01,
                     "latency_p50_ms": 700.0, "errors": {"timeout": 2}}
      },
      "cache": {"cached": 40, "saved_usd": 0.004},   # records answered from --cache (cost_usd
                                     # 0) and what those answers cost when bought (null if
                                     # none was priced)
      "time": {
        "first_finished_at": "2026-11-27T10:00:00.123Z",   # as written in the record
        "last_finished_at": "2026-11-27T10:04:00.456Z",
        "wall_seconds": 240.333,     # last - first; null with fewer than two distinct times
        "throughput_per_min": 29.96, # records with a finished_at / wall minutes; null likewise
        "time_base": "records / (last - first finished_at)"   # what the rate is measured over
      },
      "cut_at_length": 3,            # completed answers with finish_reason "length" (max_tokens)
      "histogram": {"unit": "ms", "buckets": [  # completed latencies, lo < x <= hi (0 in 1st)
        {"lo": 0, "hi": 100, "count": 3}, ..., {"lo": 120000, "hi": null, "count": 0}]},
      "timeline": {                  # records finishing per bin, for a sparkline
        "start": "2026-11-27T10:00:00.123Z", "bin_seconds": 12.0167,
        "counts": [5, 7, ...], "failed": [0, 1, ...]
      }    # TIMELINE_BINS (20) bins over the wall time; a single bin (bin_seconds 0) when there
           # is no wall time; no bins ("counts": [], "start": null) without any finished_at
    }

Percentiles use the nearest-rank method: with the n values sorted ascending, the p-th
percentile is the value at 1-based rank ceil(p * n / 100). It always returns an observed
latency (no interpolation), so p99 of fewer than 100 records is simply their maximum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError, missing_file
from ..files.formats import from_openai_batch_line
from ..files.journal import iter_records, unrecorded_attempts

PERCENTILES = (50, 90, 99)
# Upper bounds (ms) of the latency histogram; roughly x2.5 per step, as LLM latencies spread
# over three orders of magnitude (an embedding in 80 ms, a long completion in a minute).
HISTOGRAM_BOUNDS_MS = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 60_000, 120_000)
TIMELINE_BINS = 20
UNKNOWN_MODEL = "unknown"
WORST_CASE_NOTE = (
    "worst_case adds, for every attempt sent whose answer was lost (unanswered_attempts: "
    "timeouts, resets, empty answers), the mean cost of one completed request of that record's "
    "model (model_used, else model), on the assumption that the provider billed it; attempts "
    "of a model with no priced completed request are counted in unpriced_unanswered instead."
)


@dataclass(slots=True)
class _Endpoint:
    count: int = 0
    completed: int = 0
    failed: int = 0
    attempts: int = 0
    prompt: int = 0
    completion: int = 0
    total: int = 0
    cost: float = 0.0
    priced: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        rec: dict[str, Any],
        st: str,
        attempts: int,
        p: int,
        c: int,
        t: int,
        cost: float | None,
    ) -> None:
        self.count += 1
        self.attempts += attempts
        self.prompt, self.completion, self.total = (
            self.prompt + p,
            self.completion + c,
            self.total + t,
        )
        if cost is not None:
            self.cost += cost
            self.priced += 1
        if st == "completed":
            self.completed += 1
            latency = _num(rec.get("latency_ms"))
            if latency is not None:
                self.latencies.append(latency)
        elif st == "failed":
            self.failed += 1
            err = rec.get("error")
            etype = err.get("type") if isinstance(err, dict) else None
            key = str(etype) if etype else "unknown"
            self.errors[key] = self.errors.get(key, 0) + 1

    def summary(self) -> dict[str, Any]:
        self.latencies.sort()
        return {
            "count": self.count,
            "completed": self.completed,
            "failed": self.failed,
            "attempts": self.attempts,
            "tokens": {"prompt": self.prompt, "completion": self.completion, "total": self.total},
            "cost_usd": self.cost if self.priced else None,
            "latency_p50_ms": nearest_rank(self.latencies, 50),
            "errors": dict(sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def nearest_rank(sorted_values: Sequence[float], p: int) -> float | None:
    """The p-th percentile (0 < p <= 100) of ascending values by nearest rank; None if empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, -(-p * n // 100))  # ceil without floats: p99 of 200 is rank 198, exactly
    return sorted_values[rank - 1]


@dataclass(slots=True)
class _Model:
    count: int = 0
    completed: int = 0
    failed: int = 0
    prompt: int = 0
    completion: int = 0
    total: int = 0
    cost: float = 0.0
    completed_cost: float = 0.0  # the mean price of an answer comes from these only
    priced: int = 0  # completed records with a cost
    unpriced: int = 0
    unanswered: int = 0
    latencies: list[float] = field(default_factory=list)


def _int(value: Any) -> int:
    # Hand-edited or foreign records may hold strings or floats; a bad field counts as 0.
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _timestamp(value: str) -> float | None:
    try:
        dt = datetime.fromisoformat(value)  # 3.11 accepts the trailing "Z" burstq writes
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _read(paths: Sequence[Path]) -> Iterable[dict[str, Any]]:
    for path in paths:
        try:
            for rec in iter_records(path):
                # `--output-format openai-batch` files hold Batch API lines: read them as records.
                yield from_openai_batch_line(rec) if "custom_id" in rec else rec
        except FileNotFoundError as exc:
            raise missing_file(path) from exc
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _cost_or_null(cost: float, priced: int, unpriced: int) -> float | None:
    # Never an invented 0: completed work with no known price at all has an unknown cost.
    return None if priced == 0 and unpriced > 0 else cost


def _latency_summary(values: list[float]) -> dict[str, Any]:
    values.sort()
    out: dict[str, Any] = {"method": "nearest-rank", "count": len(values)}
    for p in PERCENTILES:
        out[f"p{p}"] = nearest_rank(values, p)
    out["max"] = values[-1] if values else None
    out["mean"] = sum(values) / len(values) if values else None
    return out


def _histogram(values: Iterable[float]) -> dict[str, Any]:
    counts = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)
    for v in values:
        i = 0
        while i < len(HISTOGRAM_BOUNDS_MS) and v > HISTOGRAM_BOUNDS_MS[i]:
            i += 1
        counts[i] += 1
    los = (0, *HISTOGRAM_BOUNDS_MS)
    his: tuple[int | None, ...] = (*HISTOGRAM_BOUNDS_MS, None)
    return {
        "unit": "ms",
        "buckets": [
            {"lo": lo, "hi": hi, "count": c} for lo, hi, c in zip(los, his, counts, strict=True)
        ],
    }


def _timeline(
    times: list[tuple[float, bool]], start: float | None, wall: float | None, start_raw: str | None
) -> dict[str, Any]:
    if start is None:
        return {"start": None, "bin_seconds": 0.0, "counts": [], "failed": []}
    if not wall:
        return {
            "start": start_raw,
            "bin_seconds": 0.0,
            "counts": [len(times)],
            "failed": [sum(1 for _, failed in times if failed)],
        }
    width = wall / TIMELINE_BINS
    counts = [0] * TIMELINE_BINS
    failed = [0] * TIMELINE_BINS
    for t, is_failed in times:
        # The last record sits exactly on the end: it belongs to the last bin, not a 21st.
        i = min(TIMELINE_BINS - 1, int((t - start) / width))
        counts[i] += 1
        failed[i] += is_failed
    return {"start": start_raw, "bin_seconds": width, "counts": counts, "failed": failed}


def compute(paths: Sequence[Path]) -> dict[str, Any]:
    """Aggregate the records of `paths` into the JSON-ready dict described in the docstring."""
    records = 0
    status: dict[str, int] = {"completed": 0, "failed": 0}
    latencies: list[float] = []
    attempts_total = retries = unanswered = 0
    prompt = completion = total_tokens = 0
    null_cost = 0
    cut_at_length = 0
    models: dict[str, _Model] = {}
    endpoints: dict[str, _Endpoint] = {}
    errors: dict[str, int] = {}
    times: list[tuple[float, bool]] = []
    first: tuple[float, str] | None = None
    last: tuple[float, str] | None = None
    cached = 0
    saved: float | None = None

    unrecorded = 0
    for path in paths:
        unrecorded += unrecorded_attempts(path)
    attempts_total += unrecorded
    for rec in _read(paths):
        records += 1
        if rec.get("cached") is True:
            cached += 1
            was = _num(rec.get("saved_usd"))
            if was is not None:
                saved = (saved or 0.0) + was
        st = rec.get("status")
        st = st if isinstance(st, str) else "unknown"
        status[st] = status.get(st, 0) + 1
        if st == "completed" and rec.get("finish_reason") == "length":
            cut_at_length += 1
        name = rec.get("model_used") or rec.get("model") or UNKNOWN_MODEL
        m = models.setdefault(str(name), _Model())
        m.count += 1

        attempts = _int(rec.get("attempts"))
        attempts_total += attempts
        if attempts > 0:
            retries += attempts - 1
        lost = _int(rec.get("unanswered_attempts"))
        unanswered += lost
        m.unanswered += lost

        usage = rec.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        p, c = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        t = p + c if usage.get("total_tokens") is None else _int(usage.get("total_tokens"))
        prompt, completion, total_tokens = prompt + p, completion + c, total_tokens + t
        m.prompt, m.completion, m.total = m.prompt + p, m.completion + c, m.total + t

        cost = _num(rec.get("cost_usd"))
        if cost is None:
            null_cost += 1
        else:
            m.cost += cost

        if st == "completed":
            m.completed += 1
            if cost is None:
                m.unpriced += 1
            else:
                m.priced += 1
                m.completed_cost += cost
            latency = _num(rec.get("latency_ms"))
            if latency is not None:
                latencies.append(latency)
                m.latencies.append(latency)
        elif st == "failed":
            m.failed += 1
            err = rec.get("error")
            etype = err.get("type") if isinstance(err, dict) else None
            key = str(etype) if etype else "unknown"
            errors[key] = errors.get(key, 0) + 1

        where = rec.get("endpoint")
        if isinstance(where, str):
            endpoints.setdefault(where, _Endpoint()).add(rec, st, attempts, p, c, t, cost)

        raw = rec.get("finished_at")
        ts = _timestamp(raw) if isinstance(raw, str) else None
        if ts is not None and isinstance(raw, str):
            times.append((ts, st == "failed"))
            if first is None or ts < first[0]:
                first = (ts, raw)
            if last is None or ts > last[0]:
                last = (ts, raw)

    cost_total = sum(m.cost for m in models.values())
    priced = sum(m.priced for m in models.values())
    unpriced_completed = sum(m.unpriced for m in models.values())
    total_or_null = _cost_or_null(cost_total, priced, unpriced_completed)

    worst_extra = 0.0
    unpriced_unanswered = 0
    model_out: dict[str, Any] = {}
    for name, m in sorted(models.items(), key=lambda kv: (-kv[1].count, kv[0])):
        mean_cost = m.completed_cost / m.priced if m.priced else None
        if m.unanswered:
            if mean_cost is None:
                unpriced_unanswered += m.unanswered
            else:
                worst_extra += m.unanswered * mean_cost
        m.latencies.sort()
        model_out[name] = {
            "count": m.count,
            "completed": m.completed,
            "failed": m.failed,
            "tokens": {"prompt": m.prompt, "completion": m.completion, "total": m.total},
            "cost_usd": _cost_or_null(m.cost, m.priced, m.unpriced),
            "unpriced": m.unpriced,
            "mean_cost_per_completed": mean_cost,
            "unanswered_attempts": m.unanswered,
            "latency_p50_ms": nearest_rank(m.latencies, 50),
        }

    wall = last[0] - first[0] if first is not None and last is not None else None
    throughput = len(times) / (wall / 60) if wall else None

    return {
        "files": [str(p) for p in paths],
        "records": records,
        "status": status,
        "success_rate": status["completed"] / records if records else None,
        "cut_at_length": cut_at_length,
        "latency_ms": _latency_summary(latencies),
        "attempts": {
            "total": attempts_total,
            "retries": retries,
            "unanswered": unanswered,
            "unrecorded": unrecorded,
        },
        "tokens": {"prompt": prompt, "completion": completion, "total": total_tokens},
        "cost_usd": {
            "total": total_or_null,
            "null_cost_records": null_cost,
            "unpriced_completed": unpriced_completed,
            "worst_case": None if total_or_null is None else total_or_null + worst_extra,
            "unpriced_unanswered": unpriced_unanswered,
            "note": WORST_CASE_NOTE,
        },
        "models": model_out,
        "errors": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "endpoints": {
            name: e.summary()
            for name, e in sorted(endpoints.items(), key=lambda kv: (-kv[1].count, kv[0]))
        },
        "cache": {"cached": cached, "saved_usd": saved},
        "time": {
            "first_finished_at": first[1] if first else None,
            "last_finished_at": last[1] if last else None,
            "wall_seconds": wall if wall else None,
            "throughput_per_min": throughput,
            "time_base": "records / (last - first finished_at)",
        },
        "histogram": _histogram(latencies),
        "timeline": _timeline(
            times, first[0] if first else None, wall, first[1] if first else None
        ),
    }


# Public names for the record-reading helpers above, so observe/report.py reads records and
# their fields exactly as `stats` does (aliases: the private names stay for existing callers).
read_records = _read
as_int = _int
as_num = _num
parse_timestamp = _timestamp
cost_or_null = _cost_or_null
