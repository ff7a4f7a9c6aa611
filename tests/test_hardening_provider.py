"""Issue 11, against a provider that misbehaves: nothing lost (1), no key leak (2), bounded and
visible waits (7), and the smaller edges (8). Each test runs the real CLI against a real HTTP
server on loopback (tests/misbehave.py, or the mock server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from burstcli.config import RunConfig
from burstcli.run import execute

from .conftest import TEST_KEY, read_jsonl, run_args, run_cli, write_jsonl
from .misbehave import Misbehaving, chat_answer, prompt_of

pytestmark = pytest.mark.e2e


def args(url: str, inp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(inp),
        "-o",
        str(out),
        "--base-url",
        url,
        "--api-key",
        TEST_KEY,
        "--backoff-base",
        "0.01",
        "--progress",
        "quiet",
        *extra,
    ]


def json_response(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


def one_record_per_line(out: Path, n: int) -> dict[str, dict[str, Any]]:
    recs = read_jsonl(out)
    assert sorted(r["line"] for r in recs) == list(range(1, n + 1))
    return {r["request_id"]: r for r in recs}


# -- 1. nothing is lost silently -----------------------------------------------------------

BAD_USAGE: dict[str, bytes] = {
    "usage-string": b'{"prompt_tokens": "many", "completion_tokens": 2, "total_tokens": "x"}',
    "usage-list": b"[1, 2, 3]",
    "usage-float": b'{"prompt_tokens": 1.5, "completion_tokens": 2, "total_tokens": 3.5}',
    "usage-huge": b'{"prompt_tokens": 123456789012345678901234567890, "total_tokens": 1}',
    "usage-bool": b'{"prompt_tokens": true, "completion_tokens": 2, "total_tokens": 3}',
}


async def odd_provider(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    text = prompt_of(body)
    if request.path.endswith("/embeddings"):
        data = [{"object": "embedding", "index": "first", "embedding": [0.1, 0.2]}]
        return json_response({"object": "list", "data": data, "model": "e"})
    if text in BAD_USAGE:
        raw = orjson.dumps(chat_answer(f"answer to {text}")).replace(
            b'{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}', BAD_USAGE[text]
        )
        return web.Response(body=raw, content_type="application/json")
    return json_response(chat_answer(f"answer to {text}"))


def test_malformed_answers_touch_only_their_own_request(tmp_path: Path) -> None:
    deep = '{"id": "deep-meta", "input": "fine", "metadata": ' + '{"k": ' * 300 + "0" + "}" * 301
    rows: list[dict[str, Any] | str] = [{"id": name, "input": name} for name in BAD_USAGE]
    rows += [
        deep,
        {"id": "emb", "input": "vector please", "endpoint": "embeddings"},
        {"id": "plain", "input": "plain"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    with Misbehaving(odd_provider) as srv:
        res = run_cli(args(srv.url, inp, out, "--max-retries", "1"))
    assert res.exit_code == 1, res.output  # two failed, counted as failed
    assert "Task exception was never retrieved" not in res.stderr
    recs = one_record_per_line(out, len(rows))
    for name in BAD_USAGE:  # the answer is kept; what cannot be trusted is unknown
        r = recs[name]
        assert r["status"] == "completed" and r["output"] == f"answer to {name}", r
        assert r["usage"] is None and r["tokens_used"] is None and r["cost_usd"] is None
    assert recs["plain"]["status"] == "completed" and recs["plain"]["usage"]["total_tokens"] == 5
    assert recs["emb"]["status"] == "failed"
    assert recs["emb"]["error"]["type"] == "malformed_response"
    assert recs["deep-meta"]["error"]["type"] == "invalid_request"
    assert "nested more than" in recs["deep-meta"]["error"]["message"]
    assert "2 failed" in res.stderr and f"{len(rows) - 2} completed" in res.stderr


def test_validate_refuses_input_it_could_not_round_trip(tmp_path: Path) -> None:
    deep = '{"id": "d", "input": "x", "params": {"logit_bias": ' + "[" * 200 + "]" * 200 + "}}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "ok", "input": "x"}, deep])
    res = run_cli(["validate", str(inp)])
    assert res.exit_code == 2
    assert f"{inp}:2: nested more than 128 levels deep" in res.stderr


def test_a_run_that_ends_with_lines_lacking_a_record_does_not_pass(tmp_path: Path, server) -> None:
    srv = server(latency=0.0)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "input": f"q{i}"} for i in range(6)])
    out = tmp_path / "out.jsonl"

    def lose_one(engine: Any) -> None:
        # Stand-in for any future bug that drops a record: the run must notice and say so.
        record = engine._record
        engine._record = lambda result: None if result.request_id == "r3" else record(result)

    cfg = RunConfig(input=str(inp), output=str(out), base_url=srv.base_url, api_key=TEST_KEY)
    report = execute(cfg, on_ready=lose_one)
    assert report.outcome.reason == "done" and report.outcome.missing == 1
    res = run_cli(run_args(srv, inp, out))  # the rerun fills it in and passes
    assert res.exit_code == 0, res.output
    assert sorted(r["request_id"] for r in read_jsonl(out)) == [f"r{i}" for i in range(6)]


# -- 2. the key never leaks ------------------------------------------------------------------


def test_key_across_the_cut_and_in_debug_dumps_is_redacted(tmp_path: Path) -> None:
    async def echo_500(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        msg = "x" * 490 + f" proxy saw {auth} and gave up"  # the key straddles the 500 cut
        return json_response({"error": {"message": msg, "type": "server_error"}}, status=500)

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "hi"}])
    out = tmp_path / "out.jsonl"
    with Misbehaving(echo_500) as srv:
        res = run_cli(
            args(srv.url, inp, out, "--max-retries", "0", "--progress", "plain"),
            env={"BURSTQ_DEBUG_HTTP": "1"},
        )
    assert res.exit_code == 1
    assert "burstq http <" in res.stderr  # the dump was printed...
    texts = [res.stderr, res.stdout] + [p.read_text() for p in tmp_path.iterdir()]
    for text in texts:  # ...and neither it nor any file holds the key or a long piece of it
        for i in range(len(TEST_KEY) - 8 + 1):
            assert TEST_KEY[i : i + 8] not in text


def test_batch_mode_errors_are_redacted(tmp_path: Path) -> None:
    async def echo_upload(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        return json_response(
            {"error": {"message": f"file refused for {auth}", "type": "invalid_request_error"}},
            status=400,
        )

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "hi"}])
    out = tmp_path / "out.jsonl"
    with Misbehaving(echo_upload) as srv:
        res = run_cli(args(srv.url, inp, out, "--via", "batch", "--batch-poll", "0.05"))
    assert res.exit_code == 1, res.output
    rec = read_jsonl(out)[0]
    assert "[REDACTED]" in rec["error"]["message"]
    for text in [res.stderr] + [p.read_text() for p in tmp_path.iterdir()]:
        assert TEST_KEY not in text and TEST_KEY[5:20] not in text


# -- 7. waits are bounded and visible --------------------------------------------------------


def test_an_endpoint_that_never_answers_stops_the_run(tmp_path: Path) -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return json_response({})

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "input": "x"} for i in range(20)])
    out = tmp_path / "out.jsonl"
    with Misbehaving(silent) as srv:
        t0 = time.monotonic()
        res = run_cli(args(srv.url, inp, out, "--timeout", "0.3"))
        took = time.monotonic() - t0
        # Requests only: the models-list probes (issue 13) that found nothing either don't count.
        hits = sum(1 for _, path, _ in srv.hits if path.endswith("/chat/completions"))
    assert res.exit_code == 2, res.output
    assert f"no answer within --timeout (0.3s) from {srv.url}" in res.stderr
    assert hits == 3 and took < 10
    assert not out.exists() or read_jsonl(out) == []  # nothing recorded: a rerun sends all


@pytest.mark.parametrize(
    ("headers", "said"), [({"retry-after": "3600"}, "3,600s"), ({"retry-after-ms": "inf"}, "")]
)
def test_a_pause_longer_than_max_wait_stops_resumably(
    tmp_path: Path, headers: dict[str, str], said: str
) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        err = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
        return json_response({"error": err}, status=429, **headers)

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "x"}, {"id": "b", "input": "y"}])
    out = tmp_path / "out.jsonl"
    with Misbehaving(limited) as srv:
        t0 = time.monotonic()
        res = run_cli(args(srv.url, inp, out))
        took = time.monotonic() - t0
    assert res.exit_code == 2, res.output
    assert "longer than --max-wait (900s)" in res.stderr and "(until 20" in res.stderr
    assert said in res.stderr and took < 10
    assert not out.exists() or read_jsonl(out) == []


def test_pauses_show_on_the_status_line_with_reason_and_end(tmp_path: Path) -> None:
    calls = {"n": 0}

    async def once_limited(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] == 1:
            err = {"message": "Rate limit", "code": "rate_limit_exceeded"}
            return json_response({"error": err}, status=429, **{"retry-after": "1.5"})
        return json_response(chat_answer("ok"))

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "x"}])
    out = tmp_path / "out.jsonl"
    with Misbehaving(once_limited) as srv:
        res = run_cli(args(srv.url, inp, out, "--progress", "plain", "--status-every", "0.2"))
    assert res.exit_code == 0, res.output
    assert "paused: 429 retry-after, until " in res.stderr


def test_429_without_retry_after_backs_off_exponentially(tmp_path: Path) -> None:
    calls = {"n": 0}

    async def limited_four_times(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] <= 4:
            err = {"message": "Rate limit", "code": "rate_limit_exceeded"}
            return json_response({"error": err}, status=429)
        return json_response(chat_answer("ok"))

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "x"}])
    out = tmp_path / "out.jsonl"
    with Misbehaving(limited_four_times) as srv:
        res = run_cli(args(srv.url, inp, out, "--backoff-base", "0.1"))
        times = [t for t, _, _ in srv.hits]
    assert res.exit_code == 0, res.output
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    assert gaps[0] < 0.35 and gaps[3] > 0.6 and gaps[3] > 2 * gaps[0], gaps


# -- 8. smaller edges -------------------------------------------------------------------------


def test_stream_true_bom_and_id_collisions_are_settled_at_validation(
    tmp_path: Path, server
) -> None:
    srv = server(latency=0.0)
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(
        b"\xef\xbb\xbf"
        + orjson.dumps({"input": "first line, no id, after a BOM"})
        + b"\n"
        + orjson.dumps({"id": "line-1", "input": "an explicit id that would collide"})
        + b"\n"
        + orjson.dumps({"id": "s", "input": "stream me", "params": {"stream": True}})
        + b"\n"
        + orjson.dumps({"id": "ok", "input": "fine"})
        + b"\n"
    )
    res = run_cli(["validate", str(inp)])
    assert res.exit_code == 2
    assert f"{inp}:2: id: 'line-1' is the id burstq gives line 1" in res.stderr
    assert f"{inp}:3: params.stream: not supported" in res.stderr
    assert f"{inp}:1:" not in res.stderr  # the BOM is accepted
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 1
    recs = read_jsonl(out)
    ids = [r["request_id"] for r in recs]
    assert len(set(ids)) == len(ids) == 4
    by_line = {r["line"]: r for r in recs}
    assert by_line[1]["status"] == "completed" and by_line[1]["request_id"] == "line-1"
    assert by_line[3]["error"]["type"] == "invalid_request"
    assert srv.stats()["requests_total"] == 2  # the stream line was never sent (nor billed)


def test_retry_failed_keeps_the_duplicate_id_check(tmp_path: Path, server) -> None:
    srv = server(latency=0.0)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "x"}, {"id": "a", "input": "y"}])
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out)).exit_code == 1
    res = run_cli(run_args(srv, inp, out, "--retry-failed"))
    assert res.exit_code == 1
    recs = {r["line"]: r for r in read_jsonl(out)}
    assert recs[2]["error"]["message"] == "line 2: id: duplicate id 'a'"
    assert srv.stats()["requests_total"] == 1  # the duplicate was never sent


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_past_max_response_bytes_is_a_failed_record(
    tmp_path: Path, chunked: bool
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        text = prompt_of(await request.json())
        payload = orjson.dumps(chat_answer("y" * 3_000_000 if text == "big" else "small"))
        if not chunked:
            return web.Response(body=payload, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(payload), 65536):
            await resp.write(payload[i : i + 65536])
        await resp.write_eof()
        return resp

    inp = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "b", "input": "big"}, {"id": "s", "input": "s"}]
    )
    out = tmp_path / "out.jsonl"
    with Misbehaving(big) as srv:
        res = run_cli(args(srv.url, inp, out, "--max-response-bytes", "1048576"))
    assert res.exit_code == 1, res.output
    recs = one_record_per_line(out, 2)
    assert recs["b"]["error"]["type"] == "response_too_large" and recs["b"]["attempts"] == 1
    assert recs["s"]["status"] == "completed"


def test_batch_control_calls_answered_with_html_give_a_clear_error(tmp_path: Path) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<html><body>Welcome to nginx!</body></html>", content_type="text/html"
        )

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "hi"}])
    out = tmp_path / "out.jsonl"
    with Misbehaving(html) as srv:
        res = run_cli(args(srv.url, inp, out, "--via", "batch", "--batch-poll", "0.05"))
    assert res.exit_code == 2, res.output
    assert "Error: malformed_response:" in res.stderr and "not the JSON it documents" in res.stderr
    assert "AttributeError" not in res.stderr
