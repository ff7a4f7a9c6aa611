"""Observability end to end: `burstq stats` on a real run's output, the metrics file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import read_jsonl, run_args, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def test_stats_json_and_metrics_file_agree_with_the_records(tmp_path: Path, server) -> None:
    srv = server(latency=0.01)
    rows = [{"id": f"ok{i}", "input": f"fine {i}"} for i in range(12)]
    rows += [{"id": "bad", "input": "[[mock:400]] no"}, "not json"]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    prom = tmp_path / "burstq.prom"
    res = run_cli(run_args(srv, inp, out, "--metrics-file", str(prom)))
    assert res.exit_code == 1
    recs = read_jsonl(out)

    res = run_cli(["stats", str(out), "--json"])
    assert res.exit_code == 0
    figures = json.loads(res.stdout)
    assert figures["records"] == 14
    assert figures["status"] == {"completed": 12, "failed": 2}
    assert figures["errors"] == {"bad_request": 1, "invalid_request": 1}
    total_tokens = sum(r["tokens_used"] for r in recs)
    assert figures["tokens"]["total"] == total_tokens
    assert figures["cost_usd"]["total"] == pytest.approx(sum(r["cost_usd"] or 0 for r in recs))

    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    requests = {
        (s.labels["model"], s.labels["status"]): s.value
        for s in families["ai_requests"].samples
        if s.name == "ai_requests_total"
    }
    assert requests[("gpt-4o-mini", "completed")] == 12
    assert sum(v for (_, st), v in requests.items() if st == "failed") == 2
    active = [s.value for s in families["ai_active_requests"].samples]
    assert active == [0]

    table = run_cli(["stats", str(out)])
    assert table.exit_code == 0
    assert "Success rate" in table.stderr and "bad_request" in table.stderr


def test_fail_on_error_rate(tmp_path: Path, server) -> None:
    srv = server()
    rows = [{"id": f"ok{i}", "input": f"fine {i}"} for i in range(19)] + ["broken"]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out, "--fail-on-error-rate", "0.1")).exit_code == 0
    assert run_cli(run_args(srv, inp, out, "--fail-on-error-rate", "0.01")).exit_code == 1
    assert run_cli(run_args(srv, inp, out)).exit_code == 1


def test_stats_missing_file_exits_2(tmp_path: Path) -> None:
    res = run_cli(["stats", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "nope.jsonl" in res.stderr
