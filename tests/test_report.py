"""`burstq report` and `burstq stats --format markdown` on real outputs of simulated runs.

Two shards of one job run against the mock server on loopback with faults, forced 429s and a
server rpm below burstq's --rpm (so the pacer meets real 429s too) and few retries (so some
requests fail for good). The report's streaming figures are checked against `stats.compute`,
the exact implementation (percentiles within the documented 1 %), not against numbers typed
here; the page is checked for self-containment, and, where Chromium exists, in a real browser.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.mock.server import MockConfig, ThreadedMockServer
from burstcli.observe import report as rp
from burstcli.observe.report_html import MARKER, render
from burstcli.observe.stats import compute, nearest_rank
from burstcli.observe.statsmd import escape, render_markdown

from .browser import find_chromium, inspect_page
from .conftest import TEST_KEY, read_jsonl, run_cli, write_jsonl

# Not importorskip: importing pygal at collection would change sys.meta_path for the session.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pygal") is None,
    reason="the report extra is not installed (pip install 'burstq[report]')",
)

CHARTS = {
    "chart-throughput",
    "chart-latency-histogram",
    "chart-latency-cdf",
    "chart-latency-time",
    "chart-errors-time",
    "chart-retries-time",
    "chart-attempts",
    "chart-cost-time",
    "chart-tokens-model",
    "chart-cost-model",
    "chart-latency-model",
}


def _cli(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BURSTQ_"))}
    return subprocess.run(
        [sys.executable, "-m", "burstcli.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        **kw,
    )


def _in(args: list[str]) -> Any:
    """In-process (CliRunner): exit code as `returncode`, stdout and stderr apart."""
    res = run_cli(args)
    res.returncode = res.exit_code
    return res


def _requests(n: int, start: int) -> list[dict[str, Any] | str]:
    rows: list[dict[str, Any] | str] = []
    for i in range(start, start + n):
        row: dict[str, Any] = {
            "id": f"r{i}",
            "input": f"review {i}: fine",
            "params": {"max_tokens": 8},
        }
        if i % 5 == 0:
            row["model"] = "gpt-4o"
        rows.append(row)
    rows.append('{"id": "broken", "input": ')  # an invalid line: a failed record, never sent
    return rows


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Two shard outputs of one job, from real runs with faults and 429s."""
    d = tmp_path_factory.mktemp("report")
    srv = ThreadedMockServer(
        MockConfig(
            latency=0.02,
            latency_jitter=0.15,  # under --timeout: timeouts come from the faults
            rpm=3000,
            fault_rate=0.25,
            fault_kinds=("500", "503", "429", "timeout", "malformed"),
            hang_seconds=0.4,
            seed=11,
        )
    ).start()
    outs = []
    try:
        for k in range(2):
            inp = write_jsonl(d / f"in-{k}.jsonl", _requests(60, 60 * k))
            out = d / f"out-{k}.jsonl"
            res = _cli(
                [
                    "run", str(inp), "-o", str(out), "--base-url", srv.base_url,
                    "--api-key", TEST_KEY, "--backoff-base", "0.01", "--progress", "quiet",
                    "--rpm", "6000", "--max-retries", "1", "--timeout", "0.25",
                ]
            )  # fmt: skip
            assert res.returncode == 1, res.stderr  # some failed for good, as intended
            outs.append(out)
        seen = srv.stats()
        # The charts have something to show: the server really answered 429s and faults.
        assert seen["by_status"].get(429, seen["by_status"].get("429", 0)) > 0, seen["by_status"]
        assert sum(seen["faults_injected"].values()) > 5, seen["faults_injected"]
    finally:
        srv.close()
    yield outs


def test_report_figures_agree_with_stats_on_real_runs(shards: list[Path]) -> None:
    exact = compute(shards)
    fig = rp.build(shards)
    # Every input line has its record; the run really met faults, 429s and final failures.
    assert fig["records"] == exact["records"] == 122
    assert fig["status"] == exact["status"] and exact["status"]["failed"] > 1
    assert fig["errors"] == exact["errors"] and "invalid_request" in fig["errors"]
    assert fig["attempts"]["retries"] == exact["attempts"]["retries"] > 0
    assert fig["attempts"]["total"] == exact["attempts"]["total"]
    assert sum(fig["attempts"]["per_request"].values()) == 122
    assert fig["attempts"]["per_request"]["0"] == 2  # the two invalid lines
    assert fig["tokens"] == exact["tokens"]
    assert fig["cost_usd"]["total"] == pytest.approx(exact["cost_usd"]["total"])
    assert fig["histogram"] == exact["histogram"]
    assert fig["time"]["first_finished_at"] == exact["time"]["first_finished_at"]
    assert fig["time"]["wall_seconds"] == pytest.approx(exact["time"]["wall_seconds"])
    assert fig["time"]["throughput_per_min"] == pytest.approx(exact["time"]["throughput_per_min"])
    lat, ex = fig["latency_ms"], exact["latency_ms"]
    assert lat["count"] == ex["count"] and lat["max"] == ex["max"]
    for p in ("p50", "p90", "p99"):
        assert ex[p] <= lat[p] <= ex[p] * rp.LATENCY_RATIO
    assert set(fig["models"]) == set(exact["models"]) == {"gpt-4o-mini", "gpt-4o", "unknown"}
    for name, m in fig["models"].items():
        assert (m["count"], m["failed"]) == (
            exact["models"][name]["count"],
            exact["models"][name]["failed"],
        )
    # The timeline holds every record with a finish time, in at most DISPLAY_BINS intervals.
    bins = fig["timeline"]["bins"]
    assert 1 <= len(bins) <= rp.DISPLAY_BINS
    assert sum(b["completed"] + b["failed"] for b in bins) == 122
    assert sum(sum(b["errors"].values()) for b in bins) == exact["status"]["failed"]
    assert sum(b["retries"] for b in bins) == exact["attempts"]["retries"]
    # No endpoint field in these records: no endpoint breakdown, no invented one.
    assert fig["endpoints"] == {}


def test_rpm_ceiling_comes_from_the_run_or_the_flag(shards: list[Path], tmp_path: Path) -> None:
    assert rp.build(shards)["ceiling"]["rpm"] == 6000  # both sidecars recorded --rpm 6000
    given = rp.build(shards, rpm=900)["ceiling"]
    assert given["rpm"] == 900 and "--rpm" in given["source"]
    bare = tmp_path / "copy.jsonl"  # no sidecar: the ceiling is unknown and the page says so
    bare.write_bytes(shards[0].read_bytes())
    unknown = rp.build([bare])["ceiling"]
    assert unknown["rpm"] is None and "give burstq report --rpm" in unknown["source"]
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"")
    side = orjson.loads(Path(str(shards[0]) + ".burstq.json").read_bytes())
    side["limits"]["rpm"] = 100
    Path(str(other) + ".burstq.json").write_bytes(orjson.dumps(side))
    mixed = rp.build([shards[0], other])["ceiling"]
    assert mixed["rpm"] is None and "different --rpm" in mixed["source"]


def test_report_command_writes_one_offline_page(shards: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    res = _in(["report", *map(str, shards), "-o", str(out)])
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert page.startswith(MARKER)
    assert 'http-equiv="Content-Security-Policy" content="default-src \'none\'' in page
    # Self-contained: no script at all, nothing loaded from anywhere.
    lowered = page.lower()
    assert "<script" not in lowered and "@import" not in lowered and "url(" not in lowered
    assert " src=" not in lowered and "href=" not in lowered
    for chart in CHARTS:
        assert f'id="{chart}"' in page, chart
    assert "rpm ceiling 6000" in page
    assert len(page.encode()) < 1_000_000  # mails well
    # Still a report: replaced in place. Not a report: refused, untouched.
    assert _in(["report", str(shards[0]), "-o", str(out)]).returncode == 0
    precious = tmp_path / "notes.html"
    precious.write_text("<p>mine</p>")
    res = _in(["report", str(shards[0]), "-o", str(precious)])
    assert res.returncode == 2 and "not a burstq report" in res.stderr
    assert precious.read_text() == "<p>mine</p>"
    res = _in(["report", str(shards[0]), "-o", str(shards[0])])
    assert res.returncode == 2 and "one of the outputs" in res.stderr


def test_report_reads_an_output_still_being_written(tmp_path: Path) -> None:
    srv = ThreadedMockServer(MockConfig(latency=0.01, rpm=600, seed=3)).start()
    try:
        rows = [{"id": f"r{i}", "input": "x"} for i in range(100)]
        inp = write_jsonl(tmp_path / "in.jsonl", rows)
        out = tmp_path / "out.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BURSTQ_"))}
        run = subprocess.Popen(
            [
                sys.executable, "-m", "burstcli.cli", "run", str(inp), "-o", str(out),
                "--base-url", srv.base_url, "--api-key", TEST_KEY, "--progress", "quiet",
                "--rpm", "600", "--grace", "0.2",
            ],
            env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while (not out.exists() or out.read_bytes().count(b"\n") < 5) and run.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            page = tmp_path / "live.html"
            res = _in(["report", str(out), "-o", str(page)])
            assert run.poll() is None, "the run should still be going (100 requests at 10/s)"
            assert res.returncode == 0, res.stderr
            assert page.read_text().startswith(MARKER)
        finally:
            run.terminate()  # done looking: stop the run (it is resumable) rather than wait
            assert run.wait(timeout=60) == 143
    finally:
        srv.close()
    written = out.read_bytes().count(b"\n")
    assert 5 <= written < 100
    # Torn last line (a reader racing a write, or a hard kill): skipped, not counted.
    with out.open("ab") as f:
        f.write(b'{"request_id": "r99", "status": "comp')
    assert rp.build([out])["records"] == written


def _rec(i: int, **extra: Any) -> dict[str, Any]:
    failed = i % 7 == 0
    return {
        "request_id": f"r{i}",
        "line": i,
        "status": "failed" if failed else "completed",
        "model": "m-a" if i % 2 else "m-b",
        "model_used": "m-a" if i % 2 else "m-b",
        "latency_ms": None if failed else 50.0 + (i * 37) % 900,
        "attempts": 1 + i % 3,
        "usage": {"prompt_tokens": 10, "completion_tokens": i % 5, "total_tokens": 10 + i % 5},
        "cost_usd": None if failed else 0.001,
        "error": {"type": "server_error" if i % 2 else "timeout", "message": "x"}
        if failed
        else None,
        "finished_at": f"2026-11-27T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        **extra,
    }


def test_endpoint_and_cache_fields_are_used_when_present(tmp_path: Path) -> None:
    rows = [_rec(i, endpoint="azure-east" if i % 3 else "openai", cached=i % 4 == 0,
                 fingerprint=f"sha256:{i}") for i in range(1, 121)]  # fmt: skip
    out = write_jsonl(tmp_path / "out.jsonl", rows)
    fig = rp.build([out])
    assert set(fig["endpoints"]) == {"azure-east", "openai"}
    assert fig["endpoints"]["openai"]["count"] == sum(1 for i in range(1, 121) if i % 3 == 0)
    assert fig["cached"] == 30 and sum(g["cached"] for g in fig["endpoints"].values()) == 30
    page = render(fig)
    for chart in ("chart-tokens-endpoint", "chart-cost-endpoint", "chart-latency-endpoint"):
        assert f'id="{chart}"' in page
    assert "From cache" in page
    plain = render(rp.build([write_jsonl(tmp_path / "p.jsonl", [_rec(i) for i in range(1, 50)])]))
    assert "chart-tokens-endpoint" not in plain and "From cache" not in plain


def test_names_from_records_are_escaped(tmp_path: Path) -> None:
    evil = '<img src=x onerror="alert(1)">|`**'
    out = write_jsonl(tmp_path / "o.jsonl", [_rec(i, model_used=evil) for i in range(1, 9)])
    page = render(rp.build([out]))
    assert "<img" not in page and "&lt;img" in page
    md = render_markdown(compute([out]))
    row = next(line for line in md.splitlines() if "img" in line)
    assert row.count("|") - row.count("\\|") == 8  # 7 columns: the name's | is escaped
    assert escape("a|b`c") == "a\\|b\\`c"


def test_tiny_large_zero_and_unknown_costs_read_the_same_everywhere(tmp_path: Path) -> None:
    # The stats table, the Markdown view and the report share observe.fmt.usd: an embeddings
    # run costs $1.8e-7 a request, which six decimals showed as $0.000000.
    cases = {"tiny": (1.8e-7, "$1.44e-06"), "large": (1234.5, "$9,876.00"), "zero": (0.0, "$0")}
    for name, (each, total) in cases.items():
        out = write_jsonl(tmp_path / f"{name}.jsonl", [_rec(i, cost_usd=each) for i in range(1, 9)])
        md = render_markdown(compute([out]))
        assert f"| Cost | {total} |" in md, name
        page = render(rp.build([out]))
        assert f'<div class="k">Cost</div><div class="v">{total}</div>' in page, name
        table = _in(["stats", str(out)]).stderr  # the table is for people: stderr
        assert any(line.split() == ["Cost", total] for line in table.splitlines()), name
        assert "$0.000000" not in md + page + table
    unpriced = [_rec(i, cost_usd=None) for i in range(1, 9)]
    md = render_markdown(compute([write_jsonl(tmp_path / "none.jsonl", unpriced)]))
    assert "| Cost | no price" in md


def test_log_histogram_percentiles_within_one_percent_of_exact() -> None:
    rng = random.Random(5)
    for n in (1, 2, 99, 100, 1000, 5000):
        values = [rng.lognormvariate(6, 1.5) for _ in range(n)] + [0.0] * (n // 50)
        h = rp.LogHistogram()
        for v in values:
            h.add(v)
        values.sort()
        got = h.percentiles((1, 50, 90, 99, 100))
        for p, g in zip((1, 50, 90, 99, 100), got, strict=True):
            exact = nearest_rank(values, p)
            assert exact is not None and g is not None
            assert exact <= g <= max(exact * rp.LATENCY_RATIO, 1e-3), (n, p)
        assert got[-1] == values[-1]


def test_time_bins_are_bounded_and_independent_of_order() -> None:
    rng = random.Random(9)
    times = [1.8e9 + rng.uniform(0, 7200) for _ in range(20_000)]
    a, b = rp.TimeBins(), rp.TimeBins()
    for t in times:
        a.at(t).completed += 1
    half = len(times) // 2
    for t in times[half:] + times[:half]:  # shard 2 read before shard 1
        b.at(t).completed += 1
    assert len(a.bins) <= rp.MAX_TIME_BINS and a.width >= 7200 / rp.MAX_TIME_BINS
    assert a.width == b.width
    assert {i: x.completed for i, x in a.bins.items()} == {
        i: x.completed for i, x in b.bins.items()
    }
    assert sum(x.completed for x in a.bins.values()) == len(times)
    for t in times[:100]:  # each record sits in the bin that covers its time
        i = int(t // a.width)
        assert i * a.width <= t < (i + 1) * a.width and i in a.bins


def test_memory_stays_bounded_whatever_the_names() -> None:
    agg = rp.Aggregate()
    for i in range(30_000):
        agg.add(_rec(i, model_used=f"model-{i}", endpoint=f"ep-{i}",
                     error={"type": f"err-{i}", "message": ""}))  # fmt: skip
    assert len(agg.models) == len(agg.endpoints) == rp.MAX_GROUPS + 1
    assert rp.OTHER in agg.models and len(agg.errors) <= rp.MAX_ERROR_TYPES + 1
    assert len(agg.time.bins) <= rp.MAX_TIME_BINS
    assert len(agg.latency.counts) < 1000
    assert agg.figures()["records"] == 30_000


def test_missing_extra_says_how_to_install(shards: list[Path], tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['pygal'] = None; from burstcli.cli import main; "
        f"sys.argv = ['burstq', 'report', {str(shards[0])!r}, '-o', {str(tmp_path / 'r.html')!r}]; "
        "main()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BURSTQ_"))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 2
    assert "pip install 'burstq[report]'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r.html").exists()


def test_stats_markdown_has_the_same_figures(shards: list[Path]) -> None:
    res = _in(["stats", *map(str, shards), "--format", "markdown"])
    assert res.returncode == 0, res.stderr
    md = res.stdout
    exact = compute(shards)
    rows = {
        cells[1].strip(): cells[2].strip()
        for line in md.splitlines()
        if line.startswith("| ") and len(cells := line.split("|")) == 4
    }
    assert rows["Records"] == f"{exact['records']:,}"
    assert rows["Failed"] == f"{exact['status']['failed']:,}"
    assert rows["Attempts"].startswith(f"{exact['attempts']['total']:,} (")
    for heading in (
        "### Latency (",
        "### Latency histogram",
        "### Per model",
        "### Errors by type",
    ):
        assert heading in md
    for etype, n in exact["errors"].items():
        assert f"| {escape(etype)} | {n:,} |" in md
    # Every table is well-formed GFM: the separator row has as many cells as the header.
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ---") or line.startswith("| ---:"):
            assert lines[i - 1].count(" | ") == line.count(" | ")
    # --json still works and is --format json; the two disagreeing is a usage error.
    as_json = orjson.loads(_in(["stats", str(shards[0]), "--json"]).stdout)
    assert as_json == orjson.loads(_in(["stats", str(shards[0]), "--format", "json"]).stdout)
    assert _in(["stats", str(shards[0]), "--json", "--format", "markdown"]).returncode == 2
    assert _in(["stats", str(shards[0]), "--format", "yaml"]).returncode == 2


CHROMIUM = find_chromium()


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(shards: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert _cli(["report", *map(str, shards), "-o", str(out)]).returncode == 0
    assert CHROMIUM is not None
    shot = tmp_path / "report.png"
    seen = asyncio.run(inspect_page(out.as_uri(), shot, chromium=CHROMIUM))
    assert seen.console_errors == []
    assert seen.requests == [out.as_uri()]  # the page itself, nothing else
    assert seen.title.startswith("burstq report")
    ids = {c["id"] for c in seen.charts}
    assert CHARTS <= ids, CHARTS - ids
    for c in seen.charts:
        assert c["width"] > 300 and c["height"] > 100, c
        assert c["svg_width"] > 300 and c["svg_height"] > 100 and c["marks"] > 10, c
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000
    print(f"screenshot: {shot}")
    assert read_jsonl(shards[0])  # the outputs are untouched by reading them


def test_empty_and_odd_outputs_still_give_a_page(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    odd = tmp_path / "odd.jsonl"  # foreign or hand-edited records: nothing to chart over time
    odd.write_bytes(b'{"status": "completed"}\n{"status": "failed", "finished_at": "bad"}\n[1]\n')
    for path, records in ((empty, 0), (odd, 2)):
        res = _in(["report", str(path), "-o", "-"])
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(MARKER) and "<script" not in res.stdout
        fig = rp.build([path])
        assert fig["records"] == records and fig["timeline"]["bins"] == []
    assert "No completed request with a latency." in _in(["report", str(odd), "-o", "-"]).stdout
