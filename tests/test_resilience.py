"""Issue 3 end to end: every fault injected into the real mock server, through the real CLI.

Faults come from directives in the prompt text (`[[mock:500*2]]` fails the first two attempts
of that exact prompt); the mock's own counters (attempts and completions per prompt) say what
really crossed the wire, so `attempts` in the records is checked against the server's count.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from burstcli.mock.server import ThreadedMockServer

from .conftest import TEST_KEY, read_jsonl, run_args, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def settled(srv: ThreadedMockServer) -> dict[str, Any]:
    """The mock's counters once no request is in flight there.

    The mock counts a completion after its write of the answer returns, which can be a moment
    after the client has read it, recorded it and exited; reading at once may miss the last.
    """
    deadline = time.monotonic() + 5.0
    while (stats := srv.stats())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.005)
    return stats


def rows_of(prompts: list[str]) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "input": p} for i, p in enumerate(prompts)]


def by_id(out: Path, n: int) -> dict[str, dict[str, Any]]:
    """Records by request id, after checking there is exactly one per input line."""
    recs = read_jsonl(out)
    assert sorted(r["line"] for r in recs) == list(range(1, n + 1)), "missing or duplicated"
    ids = [r["request_id"] for r in recs]
    assert len(set(ids)) == len(ids) == n
    return {r["request_id"]: r for r in recs}


# -- transient faults: retried until they pass ---------------------------------------------

TRANSIENT = {  # prompt -> attempts it needs
    "five hundred twice [[mock:500*2]]": 3,
    "bad gateway once [[mock:502*1]]": 2,
    "overloaded once [[mock:503*1]]": 2,
    "reset once [[mock:reset*1]]": 2,
    "hang once [[mock:timeout*1]]": 2,
    "truncated twice [[mock:malformed*2]]": 3,
    "empty twice [[mock:empty*2]]": 3,
    "rate limited once [[mock:429*1]]": 2,
}
UNANSWERED = {
    "reset once [[mock:reset*1]]": 1,
    "hang once [[mock:timeout*1]]": 1,
    "truncated twice [[mock:malformed*2]]": 2,
    "empty twice [[mock:empty*2]]": 2,
}


def test_transient_faults_complete_with_the_right_attempts(tmp_path: Path, server) -> None:
    srv = server(latency=0.01, hang_seconds=5)
    prompts = list(TRANSIENT) + [f"plain question {i}" for i in range(20)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(prompts))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--timeout", "0.4", "--concurrency", "10"))
    assert res.exit_code == 0, res.output
    recs = by_id(out, len(prompts))
    stats = settled(srv)
    for i, prompt in enumerate(prompts):
        r = recs[f"r{i}"]
        want = TRANSIENT.get(prompt, 1)
        assert (r["status"], r["attempts"], r["error"]) == ("completed", want, None), (prompt, r)
        assert r["output"] == "echo: " + prompt
        assert r.get("unanswered_attempts", 0) == UNANSWERED.get(prompt, 0), (prompt, r)
        assert stats["attempts_by_prompt"][prompt] == want
        assert stats["completed_by_prompt"][prompt] == 1  # answered, and paid, once
    assert stats["faults_injected"] == {
        "500": 2,
        "502": 1,
        "503": 1,
        "reset": 1,
        "timeout": 1,
        "malformed": 2,
        "empty": 2,
        "429": 1,
    }


# -- permanent faults: failed records with the right type ----------------------------------

PERMANENT = {  # prompt -> (error.type, status_code, attempts with --max-retries 2)
    "always 500 [[mock:500]]": ("server_error", 500, 3),
    "always 503 [[mock:503]]": ("server_error", 503, 3),
    "always reset [[mock:reset]]": ("connection", None, 3),
    "always hangs [[mock:timeout]]": ("timeout", None, 3),
    "always truncated [[mock:malformed]]": ("malformed_response", 200, 3),
    "always empty [[mock:empty]]": ("empty_response", 200, 3),
    "bad temperature [[mock:400]]": ("bad_request", 400, 1),
}


def test_permanent_faults_become_failed_records(tmp_path: Path, server) -> None:
    srv = server(latency=0.01, hang_seconds=5)
    prompts = list(PERMANENT) + [f"fine {i}" for i in range(10)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(prompts))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--timeout", "0.3", "--max-retries", "2"))
    assert res.exit_code == 1, res.output
    recs = by_id(out, len(prompts))
    stats = settled(srv)
    for i, prompt in enumerate(prompts):
        r = recs[f"r{i}"]
        if prompt not in PERMANENT:
            assert (r["status"], r["attempts"]) == ("completed", 1)
            continue
        etype, status, attempts = PERMANENT[prompt]
        assert r["status"] == "failed" and r["output"] is None and r["model_used"] is None
        assert (r["error"]["type"], r["error"]["status_code"], r["attempts"]) == (
            etype,
            status,
            attempts,
        ), (prompt, r)
        assert r["error"]["message"]
        assert stats["attempts_by_prompt"][prompt] == attempts
        assert prompt not in stats["completed_by_prompt"]
    assert recs["r6"]["error"]["message"] == "Invalid value for 'temperature'."


def test_max_retries_zero_means_one_attempt(tmp_path: Path, server) -> None:
    srv = server()
    prompts = ["once only [[mock:502]]", "recovers later [[mock:500*1]]"]
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(prompts))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--max-retries", "0"))
    assert res.exit_code == 1
    recs = by_id(out, 2)
    assert [(r["status"], r["attempts"]) for r in recs.values()] == [("failed", 1)] * 2
    assert settled(srv)["requests_total"] == 2


def test_endless_429_ends_as_rate_limited(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(["always limited [[mock:429]]"]))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--max-retries", "1"))
    assert res.exit_code == 1
    (r,) = read_jsonl(out)
    # 429s do not spend --max-retries; a per-request cap of 50 retries ends the loop.
    assert (r["status"], r["error"]["type"], r["error"]["status_code"]) == (
        "failed",
        "rate_limited",
        429,
    )
    assert r["attempts"] == 51 == settled(srv)["requests_total"]


def test_random_fault_mix_completes_everything_once(tmp_path: Path, server) -> None:
    srv = server(latency=0.005, latency_jitter=0.01, fault_rate=0.1, seed=11, hang_seconds=2)
    n = 300
    prompts = [f"mixed {i}" for i in range(n)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(prompts))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--timeout", "0.3", "--concurrency", "32"))
    assert res.exit_code == 0, res.output
    recs = by_id(out, n)
    stats = settled(srv)
    assert sum(stats["faults_injected"].values()) >= 20
    assert all(r["status"] == "completed" for r in recs.values())
    assert stats["completed_by_prompt"] == dict.fromkeys(prompts, 1)
    attempts = sum(r["attempts"] for r in recs.values())
    assert attempts == stats["requests_total"]


# -- fallback models -----------------------------------------------------------------------


def test_model_not_found_falls_back_at_once(tmp_path: Path, server) -> None:
    srv = server(models=frozenset({"gpt-4o"}))
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of([f"q{i}" for i in range(5)]))
    out = tmp_path / "out.jsonl"
    res = run_cli(
        run_args(srv, inp, out, "--fallback-model", "nope-model", "--fallback-model", "gpt-4o")
    )
    assert res.exit_code == 0, res.output
    for r in by_id(out, 5).values():
        assert (r["status"], r["model"], r["model_used"], r["attempts"]) == (
            "completed",
            "gpt-4o-mini",
            "gpt-4o",
            3,
        )
    assert settled(srv)["by_status"] == {"404": 10, "200": 5}


def test_broken_primary_falls_back_after_its_retries(tmp_path: Path, server) -> None:
    srv = server(broken_models=frozenset({"gpt-4o-mini"}))
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of([f"q{i}" for i in range(4)]))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--max-retries", "1", "--fallback-model", "gpt-4o"))
    assert res.exit_code == 0, res.output
    for r in by_id(out, 4).values():
        assert (r["status"], r["model_used"], r["attempts"]) == ("completed", "gpt-4o", 3)
        assert r["cost_usd"] is not None and r["cost_usd"] > 0  # priced as the model used


def test_every_model_broken_fails_with_the_last_error(tmp_path: Path, server) -> None:
    srv = server(broken_models=frozenset({"gpt-4o-mini", "gpt-4o"}))
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(["doomed"]))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--max-retries", "1", "--fallback-model", "gpt-4o"))
    assert res.exit_code == 1
    (r,) = read_jsonl(out)
    assert (r["status"], r["attempts"], r["model_used"], r["error"]["type"]) == (
        "failed",
        4,
        None,
        "server_error",
    )


def test_bad_request_is_not_sent_to_fallbacks(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(["bad for all [[mock:400]]"]))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--fallback-model", "gpt-4o"))
    assert res.exit_code == 1
    (r,) = read_jsonl(out)
    assert (r["error"]["type"], r["attempts"]) == ("bad_request", 1)
    assert settled(srv)["requests_total"] == 1


# -- fatal: wrong key, no quota ------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--rpm", "60000"]])
def test_wrong_key_stops_the_run_after_a_handful_of_calls(
    tmp_path: Path, server, extra: list[str]
) -> None:
    srv = server(api_keys=frozenset({"sk-the-right-one-000000000"}))
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of([f"q{i}" for i in range(200)]))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--concurrency", "50", *extra))
    assert res.exit_code == 2
    sent = settled(srv)["requests_total"]
    print(f"wrong key: {sent} request(s) sent before stopping")
    assert 1 <= sent <= 3
    assert "Error: auth: Incorrect API key provided" in res.stderr
    assert "rerun the same command to resume" in res.stderr
    assert TEST_KEY not in res.output
    assert TEST_KEY not in out.read_text()
    assert all(r["error"]["type"] != "auth" for r in read_jsonl(out))  # not a per-line verdict


def test_insufficient_quota_stops_the_run(tmp_path: Path, server) -> None:
    srv = server(quota_exhausted=True)
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of([f"q{i}" for i in range(200)]))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--concurrency", "50"))
    assert res.exit_code == 2
    assert 1 <= settled(srv)["requests_total"] <= 3
    assert "Error: insufficient_quota: You exceeded your current quota" in res.stderr
    assert TEST_KEY not in res.output


@pytest.fixture
def echo_401() -> Iterator[str]:
    """A server that answers 401 echoing the Authorization header it got, as bad proxies do."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        box["hits"] = box.get("hits", 0) + 1
        body = {
            "error": {
                "message": f"rejected {request.headers.get('Authorization')}",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
        return web.Response(status=401, body=orjson.dumps(body), content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        box["stop"] = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        await box["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box["url"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)
    assert box["hits"] <= 3


def test_key_echoed_in_an_auth_error_never_reaches_the_user(tmp_path: Path, echo_401: str) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of([f"q{i}" for i in range(50)]))
    out = tmp_path / "out.jsonl"
    metrics = tmp_path / "metrics.prom"
    res = run_cli(
        [
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            echo_401,
            "--api-key",
            TEST_KEY,
            "--progress",
            "plain",
            "--metrics-file",
            str(metrics),
        ]
    )
    assert res.exit_code == 2
    assert "Error: auth: rejected Bearer [REDACTED]" in res.stderr
    assert TEST_KEY not in res.output
    for p in tmp_path.iterdir():
        assert TEST_KEY not in p.read_text(errors="replace"), p


# -- output validation ---------------------------------------------------------------------


def test_outputs_are_stripped_and_capped(tmp_path: Path, server) -> None:
    srv = server()
    prompts = ["short", "a much longer question that will not fit", "padded   "]
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(prompts))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--max-output-chars", "21"))
    assert res.exit_code == 0
    recs = by_id(out, 3)
    assert recs["r0"]["output"] == "echo: short" and "truncated" not in recs["r0"]
    assert recs["r1"]["output"] == "echo: a much longer q"
    assert len(recs["r1"]["output"]) == 21 and recs["r1"]["truncated"] is True
    assert recs["r2"]["output"] == "echo: padded" and "truncated" not in recs["r2"]


# -- --retry-failed ------------------------------------------------------------------------


def test_retry_failed_redoes_only_failed_lines(tmp_path: Path, server) -> None:
    srv = server()
    prompts = [f"good {i}" for i in range(12)]
    flaky = {3: "flaky a [[mock:500*2]]", 7: "flaky b [[mock:503*2]]", 10: "bad [[mock:400]]"}
    for i, p in flaky.items():
        prompts[i] = p
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of(prompts))
    out = tmp_path / "out.jsonl"
    args = run_args(srv, inp, out, "--max-retries", "1")
    res = run_cli(args)
    assert res.exit_code == 1
    first = by_id(out, 12)
    assert sorted(k for k, r in first.items() if r["status"] == "failed") == ["r10", "r3", "r7"]

    res = run_cli([*args, "--retry-failed"])
    assert res.exit_code == 1  # the 400 fails again
    second = by_id(out, 12)
    assert {k for k, r in second.items() if r["status"] == "failed"} == {"r10"}
    assert (second["r3"]["attempts"], second["r7"]["attempts"]) == (1, 1)
    for i in range(12):  # completed records were kept as they were
        if i not in flaky:
            assert second[f"r{i}"] == first[f"r{i}"]
    stats = settled(srv)
    for i, p in enumerate(prompts):
        want = {3: 3, 7: 3, 10: 2}.get(i, 1)
        assert stats["attempts_by_prompt"][p] == want, p
    assert stats["completed_by_prompt"] == {p: 1 for i, p in enumerate(prompts) if i != 10}

    res = run_cli(args)  # plain rerun of a finished run: nothing sent
    assert res.exit_code == 1
    assert settled(srv)["requests_total"] == stats["requests_total"]


# -- limits learned, not told --------------------------------------------------------------


def test_unknown_rpm_ceiling_is_learned_with_few_429s(tmp_path: Path, server) -> None:
    rpm, n = 3000, 200  # 50 a second, enforced per second; the run is not told
    srv = server(rpm=rpm, latency=0.02)
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of([f"rate {i}" for i in range(n)]))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--concurrency", "50"))
    assert res.exit_code == 0, res.output
    recs = by_id(out, n)
    assert all(r["status"] == "completed" for r in recs.values())
    stats = settled(srv)
    limited = stats["by_status"].get("429", 0)
    per_second = stats["arrivals_per_second"]
    full = per_second[1:-1]  # whole seconds after the server's initial full bucket
    achieved = sum(full) / len(full) / (rpm / 60)
    print(
        f"unknown rpm {rpm}: {limited} x 429 for {n} requests, {achieved:.0%} of the "
        f"ceiling, arrivals per second {per_second}"
    )
    assert limited <= 5
    assert stats["requests_total"] == n + limited
    assert max(per_second) <= rpm / 60 * 1.1
    assert 0.85 <= achieved <= 1.0
    assert sum(r["attempts"] for r in recs.values()) == n + limited


def test_user_rpm_above_the_real_ceiling_is_corrected_by_headers(tmp_path: Path, server) -> None:
    srv = server(rpm=1800, latency=0.01)  # 30 a second; the user claims 100 a second
    n = 80
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of([f"over {i}" for i in range(n)]))
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--rpm", "6000", "--concurrency", "50"))
    assert res.exit_code == 0, res.output
    assert all(r["status"] == "completed" for r in by_id(out, n).values())
    stats = settled(srv)
    limited = stats["by_status"].get("429", 0)
    print(f"told rpm 6000, real 1800: {limited} x 429, per second {stats['arrivals_per_second']}")
    assert limited <= 5
    assert max(stats["arrivals_per_second"]) <= 30 * 1.1


@pytest.mark.parametrize("told", [True, False], ids=["told", "learned"])
def test_tpm_ceiling_with_max_tokens_earns_few_429s(tmp_path: Path, server, told: bool) -> None:
    # Each request is charged ceil(27 chars / 4) + 100 = 107 tokens by the server's limiter
    # (as OpenAI counts max_tokens), but really uses ~20: a pacer that gives the difference
    # back sends about twice what the limiter admits.
    tpm, n = 120_000, 100  # 2,000 tokens a second: about 18.7 of these requests
    srv = server(tpm=tpm, latency=0.01)
    rows = [
        {"id": f"t{i}", "input": f"token question number {i:04d}", "params": {"max_tokens": 100}}
        for i in range(n)
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    extra = ["--tpm", str(tpm)] if told else []
    res = run_cli(run_args(srv, inp, out, "--concurrency", "20", *extra))
    assert res.exit_code == 0, res.output
    assert all(r["status"] == "completed" for r in by_id(out, n).values())
    stats = settled(srv)
    limited = stats["by_status"].get("429", 0)
    print(
        f"tpm {tpm} ({'told' if told else 'learned'}): {limited} x 429, arrivals per second "
        f"{stats['arrivals_per_second']}"
    )
    assert limited <= 3
    assert max(stats["arrivals_per_second"]) <= 2000 / 107 * 1.25


def test_request_bigger_than_the_tpm_is_not_sent(tmp_path: Path, server) -> None:
    srv = server()
    rows = [
        {"id": "big", "input": "x", "params": {"max_tokens": 5000}},
        {"id": "ok", "input": "fits", "params": {"max_tokens": 50}},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--tpm", "1000"))
    assert res.exit_code == 1
    recs = by_id(out, 2)
    assert (recs["big"]["status"], recs["big"]["error"]["type"], recs["big"]["attempts"]) == (
        "failed",
        "request_too_large",
        0,
    )
    assert recs["ok"]["status"] == "completed"
    assert settled(srv)["attempts_by_prompt"] == {"fits": 1}


def test_server_says_request_too_large_no_retry(tmp_path: Path, server) -> None:
    srv = server(tpm=1000)  # not told: the server's 429 "Request too large" decides
    rows = [
        {"id": "big", "input": "x", "params": {"max_tokens": 5000}},
        {"id": "ok", "input": "fits", "params": {"max_tokens": 50}},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 1
    recs = by_id(out, 2)
    assert (
        recs["big"]["error"]["type"],
        recs["big"]["error"]["status_code"],
        recs["big"]["attempts"],
    ) == ("request_too_large", 429, 1)
    assert recs["big"]["error"]["message"].startswith("Request too large for gpt-4o-mini")
    assert recs["ok"]["status"] == "completed"
    assert settled(srv)["attempts_by_prompt"] == {"x": 1, "fits": 1}


def test_after_a_wrong_key_the_same_command_with_the_right_key_resumes(
    tmp_path: Path, server
) -> None:
    srv = server(api_keys=frozenset({TEST_KEY}))
    inp = write_jsonl(tmp_path / "in.jsonl", rows_of([f"q{i}" for i in range(40)]))
    out = tmp_path / "out.jsonl"
    args = run_args(srv, inp, out)
    wrong = [("sk-wrong-key-0000000000" if a == TEST_KEY else a) for a in args]
    assert run_cli(wrong).exit_code == 2
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    assert all(r["status"] == "completed" for r in by_id(out, 40).values())
    assert settled(srv)["by_status"] == {"401": settled(srv)["by_status"]["401"], "200": 40}


def test_unreachable_base_url_stops_the_run_instead_of_failing_every_line(tmp_path) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "input": "x"} for i in range(50)])
    out = tmp_path / "out.jsonl"
    res = run_cli(
        [
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--api-key",
            TEST_KEY,
            "--max-retries",
            "2",
            "--backoff-base",
            "0.01",
            "--progress",
            "quiet",
        ]
    )
    assert res.exit_code == 2
    assert "check --base-url" in res.stderr and TEST_KEY not in res.stderr
    assert not out.exists() or out.read_text() == ""  # nothing recorded: a rerun sends all
