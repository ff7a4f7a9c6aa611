"""client.py classification: a real ApiClient against a scripted aiohttp server on loopback.

Each test scripts what the server answers (status, body, headers, or a hang / a reset) and
checks the `CallError` burstq makes of it: type, retryable, fatal, fallback, maybe_billed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from burstcli.files.answers import extract_output
from burstcli.live.client import ApiClient, CallError

KEY = "sk-proj-client-test-KEY-9f8e7d6c5b4a"
CHAT_BODY = {"messages": [{"role": "user", "content": "hi"}]}
OK_CHAT = {
    "id": "x",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


def err_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


@dataclass
class Script:
    status: int = 200
    body: bytes = orjson.dumps(OK_CHAT)
    headers: dict[str, str] = field(default_factory=dict)
    action: str = "answer"  # answer | hang | reset | echo_auth
    seen: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Scripted:
    url: str
    script: Script
    release: asyncio.Event


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Script()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        script.seen.append(
            {
                "path": request.path,
                "auth": request.headers.get("Authorization"),
                "body": orjson.loads(body),
            }
        )
        if script.action == "hang":
            await release.wait()
        if script.action == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        body_out = script.body
        if script.action == "echo_auth":  # a misbehaving proxy echoing our headers back
            auth = request.headers.get("Authorization", "")
            body_out = body_out.replace(b"{AUTH}", auth.encode())
        return web.Response(
            status=script.status,
            body=body_out,
            headers=script.headers,
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/embeddings", handler)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Scripted(f"http://127.0.0.1:{port}/v1", script, release)
    finally:
        release.set()
        await runner.cleanup()


async def call(
    srv: Scripted,
    *,
    endpoint: str = "chat",
    timeout: float = 5.0,
    body: dict[str, Any] | None = None,
) -> Any:
    async with ApiClient(srv.url + "/", KEY, timeout=timeout) as client:
        return await client.call(endpoint, "gpt-4o-mini", body or CHAT_BODY)


async def fail(srv: Scripted, **kw: Any) -> CallError:
    with pytest.raises(CallError) as info:
        await call(srv, **kw)
    err = info.value
    assert KEY not in err.message and KEY not in str(err)
    return err


def flags(err: CallError) -> tuple[str, bool, bool, bool, bool]:
    return err.type, err.retryable, err.fatal, err.fallback, err.maybe_billed


# -- success -------------------------------------------------------------------------------


async def test_success_posts_model_and_body_with_bearer_key(scripted: Scripted) -> None:
    scripted.script.headers = {"x-ratelimit-limit-requests": "500"}
    reply = await call(scripted)
    assert reply.data == OK_CHAT
    assert reply.headers["x-ratelimit-limit-requests"] == "500"
    (seen,) = scripted.script.seen
    assert seen["path"] == "/v1/chat/completions"  # trailing slash of base_url handled
    assert seen["auth"] == f"Bearer {KEY}"
    assert seen["body"] == {"model": "gpt-4o-mini", **CHAT_BODY}


# -- 4xx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_is_fatal(scripted: Scripted, status: int) -> None:
    scripted.script.status = status
    scripted.script.body = err_body(
        "Incorrect API key provided: sk-pr****4a.", code="invalid_api_key"
    )
    err = await fail(scripted)
    assert flags(err) == ("auth", False, True, False, False)
    assert err.status_code == status
    assert err.message == "Incorrect API key provided: sk-pr****4a."


async def test_insufficient_quota_is_fatal(scripted: Scripted) -> None:
    scripted.script.status = 429
    scripted.script.body = err_body(
        "You exceeded your current quota, please check your plan.",
        "insufficient_quota",
        "insufficient_quota",
    )
    scripted.script.headers = {"retry-after": "1"}
    err = await fail(scripted)
    assert flags(err) == ("insufficient_quota", False, True, False, False)
    assert err.status_code == 429


async def test_rate_limit_is_retryable_with_retry_after_ms(scripted: Scripted) -> None:
    scripted.script.status = 429
    scripted.script.body = err_body(
        "Rate limit reached for gpt-4o-mini on requests per min.", "requests", "rate_limit_exceeded"
    )
    scripted.script.headers = {
        "retry-after-ms": "120",
        "retry-after": "1",
        "x-ratelimit-limit-requests": "600",
    }
    err = await fail(scripted)
    assert flags(err) == ("rate_limited", True, False, False, False)
    assert err.retry_after == 0.12
    assert err.headers["x-ratelimit-limit-requests"] == "600"  # limits.py learns from these
    scripted.script.headers = {"retry-after": "2"}
    assert (await fail(scripted)).retry_after == 2.0


async def test_request_too_large_is_not_retried(scripted: Scripted) -> None:
    scripted.script.status = 429
    scripted.script.body = err_body(
        "Request too large for gpt-4o-mini in organization org-x on tokens per min (TPM): "
        "Limit 1000, Requested 5000.",
        "tokens",
        "rate_limit_exceeded",
    )
    err = await fail(scripted)
    assert flags(err) == ("request_too_large", False, False, False, False)
    scripted.script.status = 413
    scripted.script.body = err_body("payload too large")
    assert flags(await fail(scripted)) == ("request_too_large", False, False, False, False)


async def test_model_not_found_falls_back(scripted: Scripted) -> None:
    scripted.script.status = 404
    scripted.script.body = err_body(
        "The model `gpt-4o-mini` does not exist or you do not have access to it.",
        code="model_not_found",
    )
    err = await fail(scripted)
    assert flags(err) == ("bad_request", False, False, True, False)
    assert err.as_dict() == {
        "type": "bad_request",
        "status_code": 404,
        "message": "The model `gpt-4o-mini` does not exist or you do not have access to it.",
    }


async def test_other_404_is_a_bad_request_without_fallback(scripted: Scripted) -> None:
    scripted.script.status = 404
    scripted.script.body = err_body("Invalid URL (POST /v1/chat/completions)")
    assert flags(await fail(scripted)) == ("bad_request", False, False, False, False)


async def test_bad_request_keeps_the_provider_message(scripted: Scripted) -> None:
    scripted.script.status = 400
    scripted.script.body = err_body("Invalid value for 'temperature'.")
    err = await fail(scripted)
    assert flags(err) == ("bad_request", False, False, False, False)
    assert err.as_dict() == {
        "type": "bad_request",
        "message": "Invalid value for 'temperature'.",
        "status_code": 400,
    }
    scripted.script.status = 422
    scripted.script.body = b"unprocessable, and not JSON"
    err = await fail(scripted)
    assert (err.type, err.retryable, err.message) == (
        "bad_request",
        False,
        "unprocessable, and not JSON",
    )


async def test_408_is_a_retryable_timeout_and_409_a_retryable_conflict(scripted: Scripted) -> None:
    scripted.script.status = 408
    scripted.script.body = err_body("Request timed out.")
    assert flags(await fail(scripted)) == ("timeout", True, False, False, True)
    scripted.script.status = 409
    scripted.script.body = err_body("Conflict.")
    assert flags(await fail(scripted)) == ("server_error", True, False, False, False)


# -- 5xx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retryable(scripted: Scripted, status: int) -> None:
    scripted.script.status = status
    scripted.script.body = err_body("The server had an error.", "server_error")
    err = await fail(scripted)
    assert flags(err) == ("server_error", True, False, False, False)
    assert err.status_code == status and err.message == "The server had an error."


async def test_server_error_with_an_empty_body_says_so(scripted: Scripted) -> None:
    scripted.script.status = 503
    scripted.script.body = b""
    scripted.script.headers = {"retry-after": "3"}
    err = await fail(scripted)
    assert (err.type, err.message, err.retry_after) == ("server_error", "(empty body)", 3.0)


# -- malformed 200s ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [', "invalid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'{"id": "x", "choices": []}', "no choices[0].message"),
        (b'{"id": "x"}', "no choices[0].message"),
        (b'{"choices": [{"message": "hello"}]}', "choices[0].message is not an object"),
        (b"", "invalid JSON"),
    ],
)
async def test_malformed_200_is_retryable_and_maybe_billed(
    scripted: Scripted, body: bytes, message: str
) -> None:
    scripted.script.body = body
    err = await fail(scripted)
    assert flags(err) == ("malformed_response", True, False, False, True)
    assert err.status_code == 200
    assert message in err.message


async def test_malformed_embeddings_answer(scripted: Scripted) -> None:
    scripted.script.body = b'{"object": "list", "data": [{"index": 0}]}'
    err = await fail(scripted, endpoint="embeddings", body={"input": "x"})
    assert flags(err) == ("malformed_response", True, False, False, True)
    assert err.message == "answer has no data[].embedding"


async def test_error_object_in_a_200_is_a_server_error(scripted: Scripted) -> None:
    scripted.script.body = err_body("upstream overloaded", "server_error")
    err = await fail(scripted)
    assert flags(err) == ("server_error", True, False, False, False)
    assert err.message == "upstream overloaded"


# -- transport failures --------------------------------------------------------------------


async def test_attempt_timeout_is_retryable_and_maybe_billed(scripted: Scripted) -> None:
    scripted.script.action = "hang"
    loop = asyncio.get_running_loop()
    started = loop.time()
    err = await fail(scripted, timeout=0.2)
    assert flags(err) == ("timeout", True, False, False, True)
    assert err.message == "no answer within 0.2s"
    assert 0.15 <= loop.time() - started < 2.0


async def test_connection_reset_after_sending_is_maybe_billed(scripted: Scripted) -> None:
    scripted.script.action = "reset"
    err = await fail(scripted)
    assert flags(err) == ("connection", True, False, False, True)
    assert len(scripted.script.seen) == 1  # the request did reach the server


async def test_connection_refused_is_not_billed() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with ApiClient(f"http://127.0.0.1:{port}/v1", KEY, timeout=2) as client:
        with pytest.raises(CallError) as info:
            await client.call("chat", "gpt-4o-mini", CHAT_BODY)
    err = info.value
    assert flags(err) == ("connection", True, False, False, False)
    assert err.message.startswith(f"cannot connect to http://127.0.0.1:{port}/v1/chat/")
    assert KEY not in err.message


# -- the key never leaks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "etype"),
    [
        (401, err_body("Incorrect API key provided: {AUTH}", code="invalid_api_key"), "auth"),
        (400, err_body("bad header {AUTH} in request"), "bad_request"),
        (500, b"proxy error, request headers were: Authorization: {AUTH}", "server_error"),
        (429, err_body("Rate limit for {AUTH}", "requests", "rate_limit_exceeded"), "rate_limited"),
        (429, err_body("Request too large for {AUTH}", "tokens"), "request_too_large"),
        (200, err_body("upstream rejected {AUTH}", "server_error"), "server_error"),
    ],
)
async def test_key_echoed_by_the_server_is_redacted(
    scripted: Scripted, status: int, body: bytes, etype: str
) -> None:
    scripted.script.action = "echo_auth"
    scripted.script.status = status
    scripted.script.body = body
    err = await fail(scripted)  # fail() asserts the key is absent
    assert err.type == etype
    assert "[REDACTED]" in err.message
    assert KEY not in repr(err.as_dict())


async def test_debug_dump_redacts_the_key(
    scripted: Scripted, capsys: pytest.CaptureFixture[str]
) -> None:
    async with ApiClient(scripted.url, KEY, timeout=5, debug=True) as client:
        await client.call("chat", "gpt-4o-mini", CHAT_BODY)
    err = capsys.readouterr().err
    assert "burstq http > POST" in err and "burstq http < 200" in err
    assert KEY not in err


# -- extract_output ------------------------------------------------------------------------


def test_extract_output_shapes() -> None:
    def chat(message: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"message": message}]}

    assert extract_output("chat", chat({"content": "hi"})) == ("hi", None)
    assert extract_output(
        "chat", chat({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
    ) == ("ab", None)
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    text, _ = extract_output("chat", chat({"content": None, "tool_calls": calls}))
    assert text is not None and orjson.loads(text) == calls
    assert extract_output("chat", chat({"content": None})) == (None, None)
    emb = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    assert extract_output("embeddings", emb) == (None, [[1.0], [2.0]])
