"""`burstq run` end to end: CliRunner -> real client -> HTTP on loopback -> the mock server."""

from __future__ import annotations

import collections
from pathlib import Path

import orjson
import pytest

from .conftest import TEST_KEY, read_jsonl, run_args, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def prompts(n: int, prefix: str = "q") -> list[dict[str, object]]:
    return [{"id": f"{prefix}{i}", "input": f"question number {i}"} for i in range(n)]


def test_every_line_gets_its_own_record(tmp_path: Path, server) -> None:
    srv = server(latency=0.01, latency_jitter=0.02, seed=1)
    rows = prompts(60) + [
        {
            "custom_id": "b1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "batch line"}]},
        },
        {
            "custom_id": "e1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "embed me"},
        },
        {
            "id": "e2",
            "endpoint": "embeddings",
            "model": "text-embedding-3-small",
            "input": ["a", "b"],
            "metadata": {"k": 1},
        },
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--concurrency", "8"))
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == len(rows)
    by_id = {r["request_id"]: r for r in recs}
    assert len(by_id) == len(rows)
    for i in range(60):
        r = by_id[f"q{i}"]
        assert r["status"] == "completed"
        assert r["line"] == i + 1
        # The mock echoes the prompt: each output belongs to its own request.
        assert r["output"] == f"echo: question number {i}"
        assert r["model"] == r["model_used"] == "gpt-4o-mini"
        assert r["attempts"] == 1
        assert r["tokens_used"] == r["usage"]["total_tokens"] > 0
        assert r["cost_usd"] is not None and r["cost_usd"] > 0
        assert r["error"] is None
        assert r["finished_at"].endswith("Z")
        assert r["latency_ms"] > 0
    assert by_id["b1"]["output"] == "echo: batch line" and by_id["b1"]["model"] == "gpt-4o"
    assert len(by_id["e1"]["embedding"]) == 8 and by_id["e1"]["output"] is None
    assert len(by_id["e2"]["embedding"]) == 2 and by_id["e2"]["metadata"] == {"k": 1}
    assert set(recs[0]) >= {
        "request_id",
        "line",
        "status",
        "output",
        "model",
        "model_used",
        "latency_ms",
        "attempts",
        "usage",
        "tokens_used",
        "cost_usd",
        "error",
        "metadata",
        "finished_at",
    }
    # The key never reaches output or the sidecar.
    assert TEST_KEY not in out.read_text()
    assert TEST_KEY not in (tmp_path / "out.jsonl.burstq.json").read_text()


def test_concurrency_ceiling_is_respected(tmp_path: Path, server) -> None:
    srv = server(latency=0.05)
    inp = write_jsonl(tmp_path / "in.jsonl", prompts(80))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--concurrency", "5"))
    assert res.exit_code == 0
    stats = srv.stats()
    assert stats["requests_total"] == 80
    assert stats["peak_in_flight"] == 5  # reached, never exceeded


def test_rpm_ceiling_spread_evenly_no_429(tmp_path: Path, server) -> None:
    # The server allows 1200/min as 20 per second quanta: a burst would earn 429s.
    srv = server(rpm=1200, latency=0.01)
    inp = write_jsonl(tmp_path / "in.jsonl", prompts(90))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--rpm", "1200", "--concurrency", "50"))
    assert res.exit_code == 0
    stats = srv.stats()
    assert stats["by_status"].get("429", 0) == 0
    assert stats["requests_total"] == 90
    per_second = stats["arrivals_per_second"]
    # 20/s plus at most the small burst credit in any whole second.
    assert max(per_second) <= 22, per_second
    assert all(r["status"] == "completed" for r in read_jsonl(out))


def test_priority_orders_dispatch_across_the_whole_file(tmp_path: Path, server) -> None:
    srv = server()
    rows = [
        {"id": f"p{i}", "input": f"x{i}", "priority": p}
        for i, p in enumerate([5, 1, 5, 7, 10, 3, 5, 10, 1, 7])
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--concurrency", "1"))
    assert res.exit_code == 0
    order = [r["request_id"] for r in read_jsonl(out)]
    # Highest priority first; file order within a level (one in flight, so finish = dispatch).
    assert order == ["p4", "p7", "p3", "p9", "p0", "p2", "p6", "p5", "p1", "p8"]


def test_bad_lines_become_failed_records_and_the_run_goes_on(tmp_path: Path, server) -> None:
    srv = server()
    rows = [
        {"id": "ok1", "input": "fine"},
        "{not json",
        {"id": "noprompt"},
        {"id": "badtemp", "input": "x", "params": {"temperature": "hot"}},
        {"id": "prio", "input": "x", "priority": 11},
        {"custom_id": "u1", "method": "POST", "url": "/v1/unknown", "body": {"model": "m"}},
        {"id": "ok1", "input": "duplicate id"},
        "",
        {"id": "ok2", "input": "also fine"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 1
    recs = {r["line"]: r for r in read_jsonl(out)}
    assert sorted(recs) == [1, 2, 3, 4, 5, 6, 7, 9]
    assert recs[1]["status"] == recs[9]["status"] == "completed"
    expect = {
        2: "invalid JSON",
        3: "missing prompt",
        4: "params.temperature",
        5: "priority",
        6: "url",
        7: "duplicate id",
    }
    for line, needle in expect.items():
        rec = recs[line]
        assert rec["status"] == "failed" and rec["attempts"] == 0
        assert rec["error"]["type"] == "invalid_request"
        assert needle in rec["error"]["message"], rec["error"]["message"]
        assert f"line {line}" in rec["error"]["message"]
    # No API call for any invalid line.
    assert srv.stats()["requests_total"] == 2


def test_validate_reports_file_and_line(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "req.jsonl", [{"input": "ok"}, {"id": 3}, "[1]"])
    res = run_cli(["validate", str(inp)])
    assert res.exit_code == 2
    assert f"{inp}:2: missing prompt" in res.output
    assert f"{inp}:3: expected a JSON object" in res.output
    good = write_jsonl(tmp_path / "good.jsonl", [{"input": "ok"}])
    assert run_cli(["validate", str(good)]).exit_code == 0


def test_missing_input_and_bad_options_exit_2_before_sending(tmp_path: Path, server) -> None:
    srv = server()
    res = run_cli(run_args(srv, tmp_path / "nope.jsonl", tmp_path / "o.jsonl"))
    assert res.exit_code == 2 and "nope.jsonl" in res.output
    inp = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    res = run_cli(run_args(srv, inp, tmp_path / "o.jsonl", "--concurrency", "0"))
    assert res.exit_code == 2
    res = run_cli(["run", str(inp), "-o", str(tmp_path / "o2.jsonl")])
    assert res.exit_code == 2 and "OPENAI_API_KEY" in res.output
    assert srv.stats()["requests_total"] == 0


def test_choice_options_name_what_they_accept(tmp_path: Path) -> None:
    # cli.app.one_of: the three choice checks of `burstq run`, each message word for word,
    # and a missing INPUT to validate and estimate still named before anything is read.
    inp = write_jsonl(tmp_path / "in.jsonl", prompts(1))
    for args, message in [
        (["--progress", "loud"], "--progress must be auto, rich, plain or quiet, not 'loud'"),
        (["--via", "pigeon"], "--via must be direct or batch, not 'pigeon'"),
        (["--output-format", "csv"], "--output-format must be burstq or openai-batch, not 'csv'"),
    ]:
        res = run_cli(["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--simulate", *args])
        assert res.exit_code == 2 and f"Error: {message}\n" in res.output, res.output
    assert not (tmp_path / "o.jsonl").exists()
    for command in ("validate", "estimate"):
        res = run_cli([command, str(tmp_path / "nope.jsonl")])
        assert res.exit_code == 2 and "nope.jsonl" in res.output, res.output


def test_stdin_to_stdout(tmp_path: Path, server) -> None:
    srv = server()
    data = b"".join(orjson.dumps(r) + b"\n" for r in prompts(5))
    res = run_cli(
        ["run", "-", "-o", "-", "--base-url", srv.base_url, "--api-key", TEST_KEY, "--quiet"],
        input=data,
    )
    assert res.exit_code == 0
    recs = [orjson.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert sorted(r["request_id"] for r in recs) == sorted(f"q{i}" for i in range(5))


def test_options_from_environment(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.jsonl"
    env = {
        "OPENAI_BASE_URL": srv.base_url,
        "OPENAI_API_KEY": TEST_KEY,
        "BURSTQ_MODEL": "my-model",
        "BURSTQ_PROGRESS": "quiet",
    }
    res = run_cli(["run", str(inp), "-o", str(out)], env=env)
    assert res.exit_code == 0
    assert {r["model"] for r in read_jsonl(out)} == {"my-model"}


def test_simulate_needs_no_key(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    sample = Path(__file__).parent.parent / "samples" / "quickstart.jsonl"
    res = run_cli(
        [
            "run",
            str(sample),
            "-o",
            str(out),
            "--simulate",
            "--progress",
            "plain",
            "--backoff-base",
            "0.01",
        ]
    )
    assert res.exit_code in (0, 1)
    n = sum(1 for line in sample.read_text().splitlines() if line.strip())
    recs = read_jsonl(out)
    assert len(recs) == n
    assert collections.Counter(r["status"] for r in recs)["completed"] >= n - 1


def test_plain_status_lines_when_not_a_tty(tmp_path: Path, server) -> None:
    srv = server(latency=0.05)
    inp = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    out = tmp_path / "out.jsonl"
    args = run_args(srv, inp, out, "--concurrency", "4")
    args[args.index("--progress") + 1] = "plain"
    res = run_cli([*args, "--status-every", "0.1"])
    assert res.exit_code == 0
    lines = [x for x in res.stderr.splitlines() if x.startswith("burstq: ") and "/40 done" in x]
    assert len(lines) >= 3, res.stderr
    assert "in flight" in lines[0] and "req/min" in lines[0] and "conc" in lines[0]
    assert res.stdout == ""  # stdout is data: nothing there when OUTPUT is a file
    assert "burstq: 40 completed, 0 failed" in res.stderr


def test_too_large_for_tpm_fails_without_sending(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "big", "input": "x" * 4000, "params": {"max_tokens": 500}},
            {"id": "small", "input": "ok", "params": {"max_tokens": 5}},
        ],
    )
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--tpm", "1000"))
    assert res.exit_code == 1
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert recs["big"]["error"]["type"] == "request_too_large"
    assert recs["big"]["attempts"] == 0
    assert recs["small"]["status"] == "completed"
    assert srv.stats()["requests_total"] == 1
