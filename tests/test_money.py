"""Cost in records, the --max-cost cap end to end, and `burstq estimate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import read_jsonl, run_args, run_cli, write_jsonl

pytestmark = pytest.mark.e2e

# genai-prices: gpt-4o-mini $0.15 / 1M prompt tokens, $0.60 / 1M completion tokens.
MINI_IN, MINI_OUT = 0.15e-6, 0.60e-6


def _rows(n: int, max_tokens: int = 16) -> list[dict[str, object]]:
    return [
        {
            "id": f"r{i}",
            "input": f"price check number {i:04d}",
            "params": {"max_tokens": max_tokens},
        }
        for i in range(n)
    ]


def test_record_cost_matches_hand_computed_price(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", _rows(3))
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    for rec in read_jsonl(out):
        u = rec["usage"]
        expected = u["prompt_tokens"] * MINI_IN + u["completion_tokens"] * MINI_OUT
        assert rec["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_unknown_model_cost_is_null_not_zero(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [{"input": "a", "model": "my-private-llama"}, {"input": "b", "model": "my-private-llama"}],
    )
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out)[:-2] + ["--progress", "plain"])
    assert res.exit_code == 0
    assert [r["cost_usd"] for r in read_jsonl(out)] == [None, None]
    assert res.output.count("no price known for model 'my-private-llama'") == 1


def test_prices_file_prices_a_private_model(tmp_path: Path, server) -> None:
    srv = server()
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."my-llama"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n')
    inp = write_jsonl(tmp_path / "in.jsonl", [{"input": "hello there", "model": "my-llama"}])
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out, "--prices", str(prices))).exit_code == 0
    rec = read_jsonl(out)[0]
    u = rec["usage"]
    assert rec["cost_usd"] == pytest.approx(
        u["prompt_tokens"] * 1e-6 + u["completion_tokens"] * 2e-6
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."x"]\ninput_per_mtok = "cheap"\noutput_per_mtok = 1\n')
    res = run_cli(run_args(srv, inp, tmp_path / "o2.jsonl", "--prices", str(bad)))
    assert res.exit_code == 2 and "input_per_mtok" in res.output


def test_budget_cap_is_never_crossed_and_a_higher_cap_continues(tmp_path: Path, server) -> None:
    srv = server(latency=0.01)
    inp = write_jsonl(tmp_path / "in.jsonl", _rows(100))
    out = tmp_path / "out.jsonl"
    cap = 0.0005
    res = run_cli(run_args(srv, inp, out, "--max-cost", str(cap), "--concurrency", "10"))
    assert res.exit_code == 3, res.output
    assert "budget cap reached" in res.output
    first = read_jsonl(out)
    spent = sum(r["cost_usd"] for r in first)
    assert 0 < spent <= cap
    assert 10 < len(first) < 100
    # Rerunning with the same cap sends nothing more: the cap covers the whole output.
    sent = srv.stats()["requests_total"]
    res = run_cli(run_args(srv, inp, out, "--max-cost", str(cap)))
    assert res.exit_code == 3
    assert srv.stats()["requests_total"] == sent
    res = run_cli(run_args(srv, inp, out, "--max-cost", "1"))
    assert res.exit_code == 0
    recs = read_jsonl(out)
    assert sorted(r["request_id"] for r in recs) == sorted(f"r{i}" for i in range(100))
    assert sum(r["cost_usd"] for r in recs) <= 1


def test_estimate_json_figures(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "input": "x" * 40, "params": {"max_tokens": 100}},
        {"id": "b", "input": "y" * 80, "params": {"max_tokens": 10}},
        {"id": "c", "input": "z" * 8, "model": "gpt-4o"},
        "not json",
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    res = run_cli(
        [
            "estimate",
            str(inp),
            "--json",
            "--rpm",
            "60",
            "--tpm",
            "600",
            "--concurrency",
            "2",
            "--latency",
            "1",
            "--budget-max-tokens",
            "1000",
        ]
    )
    assert res.exit_code == 0
    est = json.loads(res.stdout)
    assert est["requests"] == 3 and est["invalid"] == 1
    mini = next(m for m in est["models"] if m["model"] == "gpt-4o-mini")
    # prompt: ceil(chars/4) + 4 per message
    assert mini["prompt_tokens"] == (10 + 4) + (20 + 4)
    assert mini["completion_tokens_worst"] == 110
    assert mini["completion_tokens_typical"] == 50 + 5
    assert mini["cost_usd_worst"] == pytest.approx(
        (40 + 4 + 3 + 80 + 4 + 3) * MINI_IN + 110 * MINI_OUT, rel=1e-6
    )
    gpt4o = next(m for m in est["models"] if m["model"] == "gpt-4o")
    assert gpt4o["completion_tokens_worst"] == 1000  # no max_tokens: the assumption
    # 3 requests at 60 rpm = 3 s; tokens charged up front: (10+1+100)+(20+1+10)+(2+1+0) = 145
    # at 600 tpm = 14.5 s; concurrency: 3 * 1 s / 2 = 1.5 s.
    assert est["duration_bounds_s"] == {"rpm": 3.0, "tpm": 14.5, "concurrency": 1.5}
    assert est["binding_limit"] == "tpm" and est["min_duration_s"] == 14.5
