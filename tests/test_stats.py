"""Tests for observe.stats and observe.statsview: every figure against hand-computed values.

The fixture files are written record by record below; the expected numbers in each test are
worked out by hand in the comments beside them, never by calling the code under test.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from burstcli.errors import InputError
from burstcli.observe.stats import TIMELINE_BINS, compute, nearest_rank
from burstcli.observe.statsview import bar, render, sparkline


def rec(
    rid: str,
    status: str,
    *,
    model: str | None,
    model_used: str | None,
    latency: float | None,
    attempts: int,
    usage: dict[str, int] | None,
    cost: float | None,
    finished: str,
    error: str | None = None,
    unanswered: int = 0,
) -> dict[str, Any]:
    """A record shaped like Result.record() (design.md: Response record)."""
    r: dict[str, Any] = {
        "request_id": rid,
        "line": int(rid[1:]),
        "status": status,
        "output": "text" if status == "completed" else None,
        "model": model,
        "model_used": model_used,
        "latency_ms": latency,
        "attempts": attempts,
        "usage": usage,
        "tokens_used": usage["total_tokens"] if usage else 0,
        "cost_usd": cost,
        "error": {"type": error, "message": "boom", "status_code": None} if error else None,
        "metadata": None,
        "finished_at": finished,
    }
    if unanswered:
        r["unanswered_attempts"] = unanswered
    return r


def usage(p: int, c: int) -> dict[str, int]:
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


T = "2026-11-27T10:"
# Run A: 8 records and a torn last line (a run still writing, or killed mid-write).
RUN_A = [
    rec(
        "r1",
        "completed",
        model="gpt-4o-mini",
        model_used="gpt-4o-mini",
        latency=100.0,
        attempts=1,
        usage=usage(10, 5),
        cost=0.001,
        finished=T + "00:00.000Z",
    ),
    rec(
        "r2",
        "completed",
        model="gpt-4o-mini",
        model_used="gpt-4o-mini",
        latency=300.0,
        attempts=3,
        usage=usage(20, 10),
        cost=0.003,
        finished=T + "00:30.000Z",
        unanswered=1,
    ),
    rec(
        "r3",
        "completed",
        model="gpt-4o",
        model_used="gpt-4o",
        latency=2000.0,
        attempts=1,
        usage=usage(100, 50),
        cost=0.01,
        finished=T + "01:00.000Z",
    ),
    # A fallback: requested gpt-4o, answered by gpt-4o-mini, so it counts under the latter.
    rec(
        "r4",
        "completed",
        model="gpt-4o",
        model_used="gpt-4o-mini",
        latency=700.0,
        attempts=2,
        usage=usage(5, 5),
        cost=0.002,
        finished=T + "01:30.500Z",
    ),
    # No price known for a local model: cost null, never 0.
    rec(
        "r5",
        "completed",
        model="llama-local",
        model_used="llama-local",
        latency=50.0,
        attempts=1,
        usage=usage(7, 3),
        cost=None,
        finished=T + "02:00.000Z",
    ),
    rec(
        "r6",
        "failed",
        model="gpt-4o",
        model_used=None,
        latency=60000.0,
        attempts=6,
        usage=None,
        cost=None,
        finished=T + "02:30.000Z",
        error="timeout",
        unanswered=6,
    ),
    # An invalid input line: no model, no attempt, recorded first.
    rec(
        "r7",
        "failed",
        model=None,
        model_used=None,
        latency=None,
        attempts=0,
        usage=None,
        cost=None,
        finished=T + "00:00.000Z",
        error="invalid_request",
    ),
    rec(
        "r8",
        "failed",
        model="llama-local",
        model_used=None,
        latency=1500.0,
        attempts=2,
        usage=None,
        cost=None,
        finished=T + "03:00.000Z",
        error="server_error",
        unanswered=2,
    ),
]
RUN_B = [
    rec(
        "r10",
        "completed",
        model="gpt-4o",
        model_used="gpt-4o",
        latency=30000.0,
        attempts=1,
        usage=usage(1000, 500),
        cost=0.02,
        finished=T + "05:00.000Z",
    ),
    rec(
        "r11",
        "completed",
        model="gpt-4o-mini",
        model_used="gpt-4o-mini",
        latency=150000.0,
        attempts=1,
        usage=usage(1, 1),
        cost=0.0001,
        finished=T + "04:00.000Z",
    ),
]
TORN = b'{"request_id": "r9", "line": 9, "status": "compl'


def write(path: Path, records: list[dict[str, Any]], tail: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + tail)
    return path


@pytest.fixture
def file_a(tmp_path: Path) -> Path:
    return write(tmp_path / "a.jsonl", RUN_A, TORN)


@pytest.fixture
def file_b(tmp_path: Path) -> Path:
    return write(tmp_path / "b.jsonl", RUN_B)


# -- nearest rank ---------------------------------------------------------------------------


def test_nearest_rank_textbook_example() -> None:
    # The standard worked example: 15, 20, 35, 40, 50.
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert nearest_rank(values, 5) == 15.0  # rank ceil(0.25) = 1
    assert nearest_rank(values, 30) == 20.0  # rank ceil(1.5) = 2
    assert nearest_rank(values, 40) == 20.0  # rank ceil(2.0) = 2
    assert nearest_rank(values, 50) == 35.0  # rank ceil(2.5) = 3
    assert nearest_rank(values, 100) == 50.0
    assert nearest_rank([], 50) is None


def test_nearest_rank_exact_at_rank_boundaries() -> None:
    values = [float(i) for i in range(1, 201)]
    assert nearest_rank(values, 99) == 198.0  # 0.99 * 200 = 198 exactly: no float rounding up
    assert nearest_rank(values, 50) == 100.0
    assert nearest_rank([7.0], 99) == 7.0


# -- one file -------------------------------------------------------------------------------


def test_totals_and_rates(file_a: Path) -> None:
    s = compute([file_a])
    assert s["files"] == [str(file_a)]
    assert s["records"] == 8  # the torn r9 line is not a record
    assert s["status"] == {"completed": 5, "failed": 3}
    assert s["success_rate"] == pytest.approx(5 / 8)


def test_latency_of_completed_records(file_a: Path) -> None:
    lat = compute([file_a])["latency_ms"]
    # completed latencies sorted: 50, 100, 300, 700, 2000 (failed r6/r8 left out)
    assert lat["method"] == "nearest-rank"
    assert lat["count"] == 5
    assert lat["p50"] == 300.0  # rank ceil(2.5) = 3
    assert lat["p90"] == 2000.0  # rank ceil(4.5) = 5
    assert lat["p99"] == 2000.0  # rank ceil(4.95) = 5
    assert lat["max"] == 2000.0
    assert lat["mean"] == pytest.approx(3150 / 5)


def test_attempts_tokens(file_a: Path) -> None:
    s = compute([file_a])
    # attempts 1+3+1+2+1+6+0+2; retries 0+2+0+1+0+5+1 (r7 had none); unanswered 1+6+2
    assert s["attempts"] == {"total": 16, "retries": 9, "unanswered": 9, "unrecorded": 0}
    assert s["tokens"] == {"prompt": 142, "completion": 73, "total": 215}


def test_cost_and_worst_case(file_a: Path) -> None:
    cost = compute([file_a])["cost_usd"]
    assert cost["total"] == pytest.approx(0.016)  # 0.001 + 0.003 + 0.01 + 0.002
    assert cost["null_cost_records"] == 4  # r5 r6 r7 r8
    assert cost["unpriced_completed"] == 1  # r5
    # gpt-4o-mini mean (0.001+0.003+0.002)/3 = 0.002 x 1 unanswered (r2);
    # gpt-4o mean 0.01 x 6 unanswered (r6); llama-local has no price: its 2 stay unpriced.
    assert cost["worst_case"] == pytest.approx(0.016 + 0.002 + 0.06)
    assert cost["unpriced_unanswered"] == 2
    assert "mean cost" in cost["note"] and "unanswered" in cost["note"]


def test_per_model_breakdown(file_a: Path) -> None:
    models = compute([file_a])["models"]
    # most records first, ties by name
    assert list(models) == ["gpt-4o-mini", "gpt-4o", "llama-local", "unknown"]
    mini = models["gpt-4o-mini"]  # r1, r2, r4 (the fallback)
    assert (mini["count"], mini["completed"], mini["failed"]) == (3, 3, 0)
    assert mini["tokens"] == {"prompt": 35, "completion": 20, "total": 55}
    assert mini["cost_usd"] == pytest.approx(0.006)
    assert mini["mean_cost_per_completed"] == pytest.approx(0.002)
    assert mini["unanswered_attempts"] == 1
    assert mini["latency_p50_ms"] == 300.0  # of 100, 300, 700
    assert mini["unpriced"] == 0
    big = models["gpt-4o"]  # r3, r6
    assert (big["count"], big["completed"], big["failed"]) == (2, 1, 1)
    assert big["tokens"] == {"prompt": 100, "completion": 50, "total": 150}
    assert big["cost_usd"] == pytest.approx(0.01)
    assert big["unanswered_attempts"] == 6
    assert big["latency_p50_ms"] == 2000.0
    local = models["llama-local"]  # r5 (unpriced), r8
    assert (local["count"], local["completed"], local["failed"]) == (2, 1, 1)
    assert local["cost_usd"] is None  # completed but never priced: unknown, not 0
    assert local["mean_cost_per_completed"] is None
    assert local["unpriced"] == 1
    assert local["latency_p50_ms"] == 50.0
    unknown = models["unknown"]  # r7, the invalid line
    assert (unknown["count"], unknown["completed"], unknown["failed"]) == (1, 0, 1)
    assert unknown["cost_usd"] == 0.0  # nothing was sent, so nothing was spent
    assert unknown["latency_p50_ms"] is None


def test_errors_by_type(file_a: Path) -> None:
    errors = compute([file_a])["errors"]
    assert errors == {"invalid_request": 1, "server_error": 1, "timeout": 1}


def test_wall_time_throughput_timeline(file_a: Path) -> None:
    s = compute([file_a])
    t = s["time"]
    assert t["first_finished_at"] == "2026-11-27T10:00:00.000Z"
    assert t["last_finished_at"] == "2026-11-27T10:03:00.000Z"
    assert t["wall_seconds"] == pytest.approx(180.0)
    assert t["throughput_per_min"] == pytest.approx(8 / 3)  # 8 records over 3 minutes
    tl = s["timeline"]
    assert tl["start"] == "2026-11-27T10:00:00.000Z"
    assert tl["bin_seconds"] == pytest.approx(9.0)  # 180 s / 20 bins
    # offsets 0 (r1, r7), 30, 60, 90.5, 120, 150, 180 -> bins 0, 3, 6, 10, 13, 16, 19 (the
    # last record sits on the end and belongs to the last bin)
    expected = [0] * 20
    for b, n in {0: 2, 3: 1, 6: 1, 10: 1, 13: 1, 16: 1, 19: 1}.items():
        expected[b] = n
    assert tl["counts"] == expected
    failed = [0] * 20
    failed[0] = failed[16] = failed[19] = 1  # r7, r6, r8
    assert tl["failed"] == failed


def test_histogram(file_a: Path) -> None:
    h = compute([file_a])["histogram"]
    assert h["unit"] == "ms"
    got = {(b["lo"], b["hi"]): b["count"] for b in h["buckets"]}
    # 50 and 100 (upper bound inclusive) | 300 | 700 | 2000
    assert got[(0, 100)] == 2
    assert got[(100, 250)] == 0
    assert got[(250, 500)] == 1
    assert got[(500, 1000)] == 1
    assert got[(1000, 2500)] == 1
    assert sum(got.values()) == 5
    los = [b["lo"] for b in h["buckets"]]
    his = [b["hi"] for b in h["buckets"]]
    assert los[1:] == his[:-1] and his[-1] is None and los[0] == 0


def test_shape_is_the_documented_contract(file_a: Path) -> None:
    s = compute([file_a])
    assert set(s) == {
        "files",
        "records",
        "status",
        "success_rate",
        "cut_at_length",
        "latency_ms",
        "attempts",
        "tokens",
        "cost_usd",
        "models",
        "errors",
        "endpoints",
        "time",
        "histogram",
        "timeline",
        "cache",
    }
    assert s["endpoints"] == {}  # records of a run without --endpoints name none
    assert s["cache"] == {"cached": 0, "saved_usd": None}
    assert set(s["latency_ms"]) == {"method", "count", "p50", "p90", "p99", "max", "mean"}
    assert set(s["attempts"]) == {"total", "retries", "unanswered", "unrecorded"}
    assert set(s["tokens"]) == {"prompt", "completion", "total"}
    assert set(s["cost_usd"]) == {
        "total",
        "null_cost_records",
        "unpriced_completed",
        "worst_case",
        "unpriced_unanswered",
        "note",
    }
    assert set(s["time"]) == {
        "first_finished_at",
        "last_finished_at",
        "wall_seconds",
        "throughput_per_min",
        "time_base",
    }
    assert set(s["timeline"]) == {"start", "bin_seconds", "counts", "failed"}
    for m in s["models"].values():
        assert set(m) == {
            "count",
            "completed",
            "failed",
            "tokens",
            "cost_usd",
            "unpriced",
            "mean_cost_per_completed",
            "unanswered_attempts",
            "latency_p50_ms",
        }
    assert len(s["timeline"]["counts"]) == TIMELINE_BINS
    # --json prints it as is: it must serialise, and round-trip unchanged.
    assert orjson.loads(orjson.dumps(s)) == s


# -- several files --------------------------------------------------------------------------


def test_several_files_at_once(file_a: Path, file_b: Path) -> None:
    s = compute([file_a, file_b])
    assert s["files"] == [str(file_a), str(file_b)]
    assert s["records"] == 10
    assert s["status"] == {"completed": 7, "failed": 3}
    lat = s["latency_ms"]
    # 50, 100, 300, 700, 2000, 30000, 150000
    assert lat["count"] == 7
    assert lat["p50"] == 700.0  # rank ceil(3.5) = 4
    assert lat["p90"] == 150000.0  # rank ceil(6.3) = 7
    assert lat["max"] == 150000.0
    assert lat["mean"] == pytest.approx(183150 / 7)
    assert s["tokens"] == {"prompt": 1143, "completion": 574, "total": 1717}
    assert s["cost_usd"]["total"] == pytest.approx(0.0361)
    # mini mean (0.001+0.003+0.002+0.0001)/4 = 0.001525; gpt-4o mean (0.01+0.02)/2 = 0.015
    assert s["cost_usd"]["worst_case"] == pytest.approx(0.0361 + 0.001525 + 6 * 0.015)
    assert s["models"]["gpt-4o-mini"]["count"] == 4
    assert s["models"]["gpt-4o"]["count"] == 3
    assert s["time"]["last_finished_at"] == "2026-11-27T10:05:00.000Z"  # from file B
    assert s["time"]["wall_seconds"] == pytest.approx(300.0)
    assert s["time"]["throughput_per_min"] == pytest.approx(2.0)
    got = {(b["lo"], b["hi"]): b["count"] for b in s["histogram"]["buckets"]}
    assert got[(25000, 60000)] == 1 and got[(120000, None)] == 1
    assert sum(s["timeline"]["counts"]) == 10


def test_file_still_being_written_is_read_up_to_the_last_whole_line(tmp_path: Path) -> None:
    path = write(tmp_path / "live.jsonl", RUN_A[:2], TORN)
    assert compute([path])["records"] == 2
    with path.open("ab") as f:  # the writer finishes the line and adds another
        f.write(b'eted"}\n' + orjson.dumps(RUN_A[2]) + b"\n")
    s = compute([path])
    assert s["records"] == 4
    assert s["status"] == {"completed": 4, "failed": 0}  # r1, r2, the mended r9, r3


# -- edges ----------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    s = compute([write(tmp_path / "empty.jsonl", [])])
    assert s["records"] == 0
    assert s["success_rate"] is None
    assert s["latency_ms"]["count"] == 0
    assert all(s["latency_ms"][k] is None for k in ("p50", "p90", "p99", "max", "mean"))
    assert s["time"] == {
        "first_finished_at": None,
        "last_finished_at": None,
        "wall_seconds": None,
        "throughput_per_min": None,
        "time_base": "records / (last - first finished_at)",
    }
    assert s["timeline"]["counts"] == []
    assert s["cost_usd"]["total"] == 0.0


def test_one_record_has_no_wall_time(tmp_path: Path) -> None:
    s = compute([write(tmp_path / "one.jsonl", RUN_A[:1])])
    assert s["time"]["wall_seconds"] is None
    assert s["time"]["throughput_per_min"] is None
    assert s["timeline"]["counts"] == [1] and s["timeline"]["bin_seconds"] == 0.0


def test_nothing_priced_means_unknown_cost(tmp_path: Path) -> None:
    s = compute([write(tmp_path / "local.jsonl", [RUN_A[4], RUN_A[7]])])  # r5, r8
    assert s["cost_usd"]["total"] is None
    assert s["cost_usd"]["worst_case"] is None
    assert s["cost_usd"]["unpriced_unanswered"] == 2


def test_foreign_or_damaged_fields_do_not_crash(tmp_path: Path) -> None:
    odd = [
        {
            "status": "completed",
            "latency_ms": "fast",
            "attempts": "3",
            "usage": [1],
            "cost_usd": "1",
            "finished_at": "yesterday",
        },
        {"status": "cancelled"},
        [1, 2, 3],
    ]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in odd) + b"not json\n")
    s = compute([path])
    assert s["records"] == 2  # a JSON array and a bad line are not records
    assert s["status"] == {"completed": 1, "failed": 0, "cancelled": 1}
    assert s["latency_ms"]["count"] == 0
    assert s["attempts"]["total"] == 0
    assert s["cost_usd"]["unpriced_completed"] == 1
    assert s["time"]["first_finished_at"] is None


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read .*nope.jsonl"):
        compute([tmp_path / "nope.jsonl"])


# -- rendering ------------------------------------------------------------------------------


def test_bar_and_sparkline() -> None:
    assert bar(4, 8, width=10) == "█" * 5  # half of 10 cells
    assert bar(8, 8, width=10) == "█" * 10
    assert bar(1, 64, width=10) == "▏"  # 80 eighths / 64 = 1.25 -> one eighth, still visible
    assert bar(3, 8, width=10) == "███▊"  # 30 eighths = 3 cells and 6/8
    assert bar(0, 8) == ""
    # top 14: 0 -> lowest; 1 -> ceil(7/14) = 1; 7 -> ceil(3.5) = 4; 14 -> 7 (full block)
    assert sparkline([0, 1, 7, 14]) == "▁▂▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([]) == ""


def render_text(stats: dict[str, Any]) -> str:
    console = Console(record=True, width=100, file=io.StringIO(), color_system=None)
    render(stats, console)
    return console.export_text()


def test_render_shows_every_section(file_a: Path, file_b: Path) -> None:
    text = render_text(compute([file_a, file_b]))
    for needle in (
        "burstq stats:",
        "(+1 more)",
        "Summary",
        "Success rate",
        "70.0%",
        "Throughput",
        "2.0 requests/min",
        "Attempts",
        "1,717",
        "Worst-case cost",
        "Latency (n=7 completed)",
        "nearest-rank",
        "p99",
        "700 ms",
        "150.00 s",
        "Latency histogram",
        "> 120s",
        "Requests over time",
        "Per model",
        "gpt-4o-mini",
        "llama-local",
        "Errors by type",
        "invalid_request",
        "timeout",
        "unknown",
        "$0.0361",
        "no price",
        "first to last finished_at",
    ):
        assert needle in text, needle
    assert "█" in text  # histogram bars and the sparkline peak
    assert "▁" in text
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "\x1b[" not in text


def test_render_long_model_names_fit_100_columns(tmp_path: Path) -> None:
    long = "accounts/fireworks/models/llama-v3p1-405b-instruct-with-a-very-long-suffix-indeed"
    recs = [dict(r, model=long, model_used=long) for r in RUN_A]
    text = render_text(compute([write(tmp_path / "long.jsonl", recs)]))
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "Per model" in text


def test_render_without_color_on_a_plain_stream(file_a: Path) -> None:
    out = io.StringIO()
    render(compute([file_a]), Console(file=out, width=100, no_color=True))
    text = out.getvalue()
    assert "\x1b[" not in text  # not a terminal: no escape codes at all
    assert "Summary" in text and "Per model" in text


def test_render_no_records(tmp_path: Path) -> None:
    text = render_text(compute([write(tmp_path / "e.jsonl", [])]))
    assert "No records." in text


def test_render_single_instant(tmp_path: Path) -> None:
    text = render_text(compute([write(tmp_path / "one.jsonl", RUN_A[:1])]))
    assert "(all 1 finished at 2026-11-27T10:00:00.000Z" in text
