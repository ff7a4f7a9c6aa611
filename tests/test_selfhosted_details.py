"""The details a real self-hosted server exposed (issue 13), one test each."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from burstcli.cli.run import parse_params
from burstcli.config import RunConfig
from burstcli.errors import UsageError
from burstcli.files.journal import add_unrecorded, sidecar_path
from burstcli.live.limits import LimitsSnapshot
from burstcli.models import Result, Tally, response_format_problem
from burstcli.observe.fmt import usd
from burstcli.observe.progress import status_line
from burstcli.observe.stats import compute
from burstcli.run import execute

from .conftest import TEST_KEY, read_jsonl, run_args, run_cli, write_jsonl
from .test_docs import commands, help_text

ROOT = Path(__file__).parent.parent


def snap() -> LimitsSnapshot:
    return LimitsSnapshot(4, 1, None, None, None, None, 0, 0.0, adaptive=True)


# -- --max-tokens and --param ----------------------------------------------------------------


def test_param_values_are_json_typed() -> None:
    assert parse_params(["temperature=0", 'stop=["a"]', "user=team-a", "x=1.5"]) == {
        "temperature": 0,
        "stop": ["a"],
        "user": "team-a",
        "x": 1.5,
    }
    for bad in ("temperature", "=1", "model=gpt-4o"):
        with pytest.raises(UsageError):
            parse_params([bad])


def test_max_tokens_and_params_fill_lines_that_set_none(tmp_path: Path, server) -> None:
    srv = server()
    long = "y" * 200
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "input": long},  # takes --max-tokens 3
            {"id": "b", "input": long, "params": {"max_tokens": 10}},  # keeps its own
        ],
    )
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--max-tokens", "3", "--param", "temperature=0"))
    assert res.exit_code == 0, res.output
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert len(recs["a"]["output"]) <= 12 and recs["a"]["finish_reason"] == "length"
    assert len(recs["b"]["output"]) == 40
    # Request-shaping: the same options resend nothing; another --max-tokens is an incremental
    # rerun that resends the lines it changes.
    before = srv.stats()["requests_total"]
    res = run_cli(run_args(srv, inp, out, "--max-tokens", "3", "--param", "temperature=0"))
    assert res.exit_code == 0 and srv.stats()["requests_total"] == before
    res = run_cli(run_args(srv, inp, out, "--max-tokens", "5", "--param", "temperature=0"))
    assert res.exit_code == 0, res.output
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert len(recs) == 2 and 12 < len(recs["a"]["output"]) <= 20
    assert sidecar_path(out).exists()
    import orjson

    shaping = orjson.loads(sidecar_path(out).read_bytes())["shaping"]
    assert shaping["max_tokens"] == 5 and shaping["params"] == {"temperature": 0}


def test_param_json_value_reaches_the_server_as_json(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "z" * 100}])
    out = tmp_path / "out.jsonl"
    # An integer: the mock (as OpenAI) answers 400 to max_completion_tokens="2".
    res = run_cli(run_args(srv, inp, out, "--param", "max_completion_tokens=2"))
    assert res.exit_code == 0, res.output
    assert read_jsonl(out)[0]["finish_reason"] == "length"


# -- finish_reason "length" ------------------------------------------------------------------


def _result(reason: str | None) -> Result:
    return Result("r", 1, "completed", "m", "m", "x", finish_reason=reason)


def test_stats_and_status_line_count_answers_cut_at_length(tmp_path: Path, server) -> None:
    tally = Tally()
    for reason in ("length", "length", "stop"):
        tally.count(_result(reason))
    assert "warning: 2 answers cut at max_tokens" in status_line(tally, snap(), 1.0)
    tally = Tally()
    for _ in range(20):
        tally.count(_result("stop"))
    assert "cut at" not in status_line(tally, snap(), 1.0)

    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "input": "w" * 80} for i in range(3)])
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out, "--max-tokens", "2")).exit_code == 0
    assert compute([out])["cut_at_length"] == 3
    res = run_cli(["stats", str(out)])
    assert "Cut at max_tokens" in res.output


# -- validate: response_format ---------------------------------------------------------------


def test_response_format_shapes() -> None:
    def problem(value: object) -> str | None:
        return response_format_problem({"response_format": value}, "params")

    assert response_format_problem({}, "params") is None
    assert problem({"type": "text"}) is None
    assert problem({"type": "json_object"}) is None
    good = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert problem(good) is None
    assert "text, json_object or json_schema" in str(problem({"type": "yaml"}))
    assert "json_schema.schema: missing" in str(problem({"type": "json_schema", "json_schema": {}}))
    assert "must be an object" in str(problem("json"))


def test_validate_rejects_a_yaml_response_format(tmp_path: Path) -> None:
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "input": "q", "params": {"response_format": {"type": "yaml"}}},
            {"id": "b", "input": "q", "params": {"response_format": {"type": "json_object"}}},
            '{"id": "c", "input": tru}',
        ],
    )
    res = run_cli(["validate", str(inp)])
    assert res.exit_code == 2
    assert f"{inp}:1: params.response_format.type: must be text, json_object" in res.output
    assert f"{inp}:2:" not in res.output
    # Invalid JSON: the column within the line, not the decoder's "line 1".
    assert f"{inp}:3: invalid JSON at column 22:" in res.output
    assert "line 1 column" not in res.output


# -- embeddings per token --------------------------------------------------------------------


def test_per_token_embeddings_are_flagged_once(tmp_path: Path, server) -> None:
    srv = server(embeddings_per_token=True)
    rows = [{"id": f"e{i}", "endpoint": "embeddings", "input": "some words here"} for i in range(3)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--model", "text-embedding-3-small"))
    assert res.exit_code == 0, res.output
    assert res.output.count("one embedding vector per token") == 1
    assert "--pooling" in res.output


# -- money shown ----------------------------------------------------------------------------


def test_unknown_prices_show_as_unpriced_not_zero() -> None:
    tally = Tally()
    tally.count(Result("r", 1, "completed", "local", "local", "x", cost_usd=None))
    line = status_line(tally, snap(), 1.0)
    assert "unpriced" in line and "$0.000000" not in line


def test_small_costs_keep_significant_digits() -> None:
    assert usd(1.8e-7) == "$1.80e-07"
    assert usd(0.000123) == "$0.000123"
    assert usd(0.0361) == "$0.0361"
    assert usd(0) == "$0"
    assert usd(None) == "no price"
    assert usd(1.5) == "$1.5000"
    assert usd(12345.678) == "$12,345.68"


# -- attempts of requests in flight at an interruption ---------------------------------------


def test_attempts_in_flight_at_an_interruption_are_counted(tmp_path: Path, server) -> None:
    srv = server(latency=5.0)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "input": f"q{i}"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    cfg = RunConfig(
        input=str(inp),
        output=str(out),
        base_url=srv.base_url,
        api_key=TEST_KEY,
        concurrency=3,
        concurrency_given=True,
        progress="quiet",
        quiet=True,
        grace=0.0,
    )

    def ready(engine) -> None:  # type: ignore[no-untyped-def]
        asyncio.get_running_loop().call_later(0.5, engine.request_stop, 2)

    report = execute(cfg, on_ready=ready)
    assert report.outcome.reason == "interrupted"
    sent = report.outcome.tally.attempts
    assert sent >= 1 and (not out.exists() or not read_jsonl(out))
    assert compute([out])["attempts"] == {
        "total": sent,
        "retries": 0,
        "unanswered": 0,
        "unrecorded": sent,
    }


def test_unrecorded_attempts_survive_a_resume(tmp_path: Path) -> None:
    from burstcli.files.journal import open_for_resume, unrecorded_attempts

    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    fp = {"input": "x", "shaping": {"model": "m"}}
    open_for_resume(out, fp, restart=False, retry_failed=False, keep_ids=False)
    add_unrecorded(out, 4)
    out.write_bytes(b'{"request_id": "a", "line": 1, "status": "completed", "attempts": 1}\n')
    open_for_resume(out, fp, restart=False, retry_failed=False, keep_ids=False)
    assert unrecorded_attempts(out) == 4
    assert sidecar_path(out).exists()


# -- help, errors, wording -------------------------------------------------------------------


def test_help_shows_no_python_types() -> None:
    for path in commands():
        text = help_text(path)
        for bad in ("<str>", "<int", "<float", "<path>", "list[", "{"):
            assert bad not in text, (path, bad)
    run_help = help_text(["run"])
    assert "--progress [auto|rich|plain|quiet]" in run_help
    assert "--via [direct|batch]" in run_help
    assert "Usage: burstq run [OPTIONS] INPUT" in run_help


@pytest.mark.parametrize(
    "argv",
    [["run", "{f}", "--simulate"], ["validate", "{f}"], ["estimate", "{f}"], ["stats", "{f}"]],
)
def test_missing_file_wording_is_the_same_everywhere(tmp_path: Path, argv: list[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    res = run_cli([a.format(f=missing) for a in argv])
    assert res.exit_code == 2
    assert f"Error: cannot read {missing}: no such file" in res.output


def test_estimate_names_its_binding_limit_once(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "q"}])
    res = run_cli(["estimate", str(inp), "--concurrency", "2"])
    assert res.exit_code == 0
    assert "set by concurrency" in res.output and "(concurrency" not in res.output
    res = run_cli(["estimate", str(inp), "--concurrency", "2", "--rpm", "1"])
    assert "set by rpm (concurrency" in res.output


def test_stats_says_its_time_base(tmp_path: Path) -> None:
    out = write_jsonl(
        tmp_path / "o.jsonl",
        [
            {"request_id": "a", "line": 1, "status": "completed", "finished_at": t}
            for t in ("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z")
        ],
    )
    assert compute([out])["time"]["time_base"] == "records / (last - first finished_at)"
    assert "first to last finished_at" in run_cli(["stats", str(out)]).output


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_gitignore_covers_the_quick_start_output_and_its_sidecar() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("out.jsonl", "out.jsonl.burstq.json", "samples/x.responses.jsonl.burstq.json"):
        res = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT, check=False)
        assert res.returncode == 0, name
