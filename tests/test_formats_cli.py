"""Batch API mode and the openai-batch output format, through the CLI on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import read_jsonl, run_args, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def test_via_batch_through_the_cli(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=0.3)
    rows = [{"id": f"b{i}", "input": f"batch me {i}"} for i in range(7)]
    rows.append({"id": "exp", "input": "[[mock:expire*1]] late"})
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = run_args(srv, inp, out, "--via", "batch", "--batch-size", "3", "--batch-poll", "0.05")
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert sorted(recs) == sorted(r["id"] for r in rows)
    assert recs["exp"]["status"] == "completed" and recs["exp"]["attempts"] == 2
    assert recs["b0"]["output"] == "echo: batch me 0"
    stats = srv.stats()
    assert stats["batches_created"] == 4  # 3 shards + 1 round for the expired line
    # A rerun attaches to nothing new and sends nothing.
    assert run_cli(args).exit_code == 0
    assert srv.stats()["batches_created"] == 4


def test_openai_batch_output_format_direct_mode_and_resume(tmp_path: Path, server) -> None:
    srv = server()
    rows = [{"id": f"o{i}", "input": f"format {i}"} for i in range(5)]
    rows.append({"id": "bad", "input": "[[mock:400]] x"})
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = run_args(srv, inp, out, "--output-format", "openai-batch")
    assert run_cli(args).exit_code == 1
    lines = {r["custom_id"]: r for r in read_jsonl(out)}
    assert sorted(lines) == sorted(r["id"] for r in rows)
    ok = lines["o0"]
    assert set(ok) == {"id", "custom_id", "response", "error"}
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    assert ok["response"]["body"]["choices"][0]["message"]["content"] == "echo: format 0"
    assert ok["response"]["request_id"].startswith("req_")
    bad = lines["bad"]
    assert bad["response"]["status_code"] == 400 and bad["error"] is None
    assert bad["response"]["body"]["error"]["param"] == "temperature"
    sent = srv.stats()["requests_total"]
    assert run_cli(args).exit_code == 1  # the failed line stays failed; nothing re-sent
    assert srv.stats()["requests_total"] == sent
    # Switching format against the same OUTPUT is refused.
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 2 and "output_format" in res.stderr


def test_batch_status_and_cancel(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=0.3)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"s{i}", "input": f"x{i}"} for i in range(4)])
    out = tmp_path / "out.jsonl"
    res = run_cli(
        run_args(srv, inp, out, "--via", "batch", "--batch-size", "2", "--batch-poll", "0.05")
    )
    assert res.exit_code == 0
    res = run_cli(["batch", "status", str(out), "--json"])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["active"] == 0 and len(info["shards"]) == 2
    assert {s["state"] for s in info["shards"]} == {"done"}
    res = run_cli(["batch", "cancel", str(out), "--base-url", srv.base_url, "--api-key", "k"])
    assert res.exit_code == 0 and "cancelled 0 batch" in res.stderr
    res = run_cli(["batch", "status", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2


def test_stats_reads_openai_batch_output(tmp_path: Path, server) -> None:
    srv = server()
    rows = [{"id": f"o{i}", "input": f"format {i}"} for i in range(4)]
    rows.append({"id": "bad", "input": "[[mock:400]] x"})
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out, "--output-format", "openai-batch")).exit_code == 1
    res = run_cli(["stats", str(out), "--json"])
    assert res.exit_code == 0
    figures = json.loads(res.stdout)
    assert figures["status"] == {"completed": 4, "failed": 1}
    assert figures["tokens"]["total"] == sum(
        r["response"]["body"]["usage"]["total_tokens"]
        for r in read_jsonl(out)
        if r["response"]["status_code"] == 200
    )
    assert figures["errors"] == {"bad_request": 1}
