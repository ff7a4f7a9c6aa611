"""Tests for the OpenAI-compatible mock server (burstcli.mock.server)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import struct
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from burstcli.mock.server import (
    STATE_KEY,
    MockConfig,
    MockServer,
    ThreadedMockServer,
    create_app,
    format_reset,
)

ServerFactory = Callable[..., Awaitable[MockServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[MockServer] = []

    async def factory(clock: Callable[[], float] | None = None, **config: Any) -> MockServer:
        server = MockServer(MockConfig(**config))
        if clock is not None:
            # A frozen clock makes rate-limit tests independent of how fast the machine is.
            server.state.clock = clock
            server.state.reset()
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def chat_body(text: str = "hello", model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post(
    session: aiohttp.ClientSession,
    server: MockServer,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with session.post(server.base_url + path, json=body, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read()), resp.headers


async def test_chat_success_shape_and_usage(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server()
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},  # 8 chars -> 2 + 4
            {"role": "user", "content": "hello world"},  # 11 chars -> 3 + 4
        ],
    }
    status, data, headers = await post(session, server, "/chat/completions", body)
    assert status == 200
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-4o-mini"
    choice = data["choices"][0]
    assert choice["index"] == 0
    assert choice["message"] == {
        "role": "assistant",
        "content": "echo: hello world",
        "refusal": None,
    }
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] == 13
    assert usage["completion_tokens"] == 5  # "echo: hello world" is 17 chars
    assert usage["total_tokens"] == 18
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert headers["x-request-id"].startswith("req_")
    assert headers["content-type"].startswith("application/json")
    stats = server.stats()
    assert stats["requests_total"] == 1
    assert stats["by_status"] == {"200": 1}
    assert stats["completed_by_prompt"] == {"hello world": 1}
    assert stats["in_flight"] == 0
    json.dumps(stats)  # plain, serialisable


async def test_chat_content_parts_and_max_tokens(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server()
    parts = [
        {"type": "text", "text": "abc"},
        {"type": "image_url"},
        {"type": "text", "text": "def"},
    ]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    status, data, _ = await post(session, server, "/chat/completions", body)
    assert status == 200
    assert data["choices"][0]["message"]["content"] == "echo: abcdef"

    body = chat_body("x" * 100, max_tokens=2)
    status, data, _ = await post(session, server, "/chat/completions", body)
    assert data["choices"][0]["message"]["content"] == "echo: xx"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 2

    body = chat_body("hi", max_completion_tokens=100)
    status, data, _ = await post(session, server, "/chat/completions", body)
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_embeddings(make_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await make_server(embedding_dim=5)
    body = {"model": "text-embedding-3-small", "input": ["alpha", "beta", "alpha"]}
    status, data, _ = await post(session, server, "/embeddings", body)
    assert status == 200
    assert data["object"] == "list"
    assert data["model"] == "text-embedding-3-small"
    assert [d["index"] for d in data["data"]] == [0, 1, 2]
    vectors = [d["embedding"] for d in data["data"]]
    assert all(d["object"] == "embedding" for d in data["data"])
    assert all(len(v) == 5 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-9
    assert data["usage"] == {"prompt_tokens": 5, "total_tokens": 5}

    # The openai SDK asks for base64 float32 by default.
    body = {"model": "m", "input": "alpha", "encoding_format": "base64"}
    status, data, _ = await post(session, server, "/embeddings", body)
    decoded = struct.unpack("<5f", base64.b64decode(data["data"][0]["embedding"]))
    assert decoded == pytest.approx(vectors[0], abs=1e-6)

    status, data, _ = await post(session, server, "/embeddings", {"model": "m", "input": []})
    assert status == 400
    assert data["error"]["param"] == "input"


async def test_models_and_health(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server(models=frozenset({"b-model", "a-model"}))
    async with session.get(server.base_url + "/models") as resp:
        data = await resp.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["a-model", "b-model"]
    assert all(m["object"] == "model" and m["owned_by"] == "burstq-mock" for m in data["data"])

    default = await make_server()
    async with session.get(default.base_url + "/models") as resp:
        ids = [m["id"] for m in (await resp.json())["data"]]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids

    async with session.get(f"http://127.0.0.1:{server.port}/health") as resp:
        assert await resp.json() == {"status": "ok"}

    async with session.get(server.base_url + "/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_auth_masks_key(make_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await make_server(api_keys=frozenset({"sk-good-key-123456"}))
    wrong = "sk-abcdefghijklmnopqrstuvwxyz"
    async with session.post(
        server.base_url + "/chat/completions",
        json=chat_body(),
        headers={"Authorization": f"Bearer {wrong}"},
    ) as resp:
        assert resp.status == 401
        raw = await resp.text()
    assert wrong not in raw
    error = orjson.loads(raw)["error"]
    assert error["message"].startswith("Incorrect API key provided: sk-ab****wxyz.")
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None

    status, data, _ = await post(session, server, "/chat/completions", chat_body())
    assert status == 401

    ok_headers = {"Authorization": "Bearer sk-good-key-123456"}
    status, _, _ = await post(session, server, "/chat/completions", chat_body(), ok_headers)
    assert status == 200
    assert server.stats()["by_status"] == {"401": 2, "200": 1}


async def test_bad_bodies(make_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await make_server()
    url = server.base_url + "/chat/completions"
    async with session.post(
        url, data=b"{not json", headers={"content-type": "application/json"}
    ) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] is None

    for body in ({"model": "m"}, {"model": "m", "messages": []}, {"model": "m", "messages": [1]}):
        status, data, _ = await post(session, server, "/chat/completions", body)
        assert status == 400
        assert data["error"]["param"] == "messages"
        assert data["error"]["type"] == "invalid_request_error"

    status, data, _ = await post(session, server, "/chat/completions", {"messages": []})
    assert status == 400


async def test_model_not_found_and_broken(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server(models=frozenset({"ok", "bad"}), broken_models=frozenset({"bad"}))
    status, data, _ = await post(session, server, "/chat/completions", chat_body(model="other"))
    assert status == 404
    assert data["error"]["code"] == "model_not_found"
    assert "`other`" in data["error"]["message"]
    status, data, _ = await post(session, server, "/chat/completions", chat_body(model="bad"))
    assert status == 500
    assert data["error"]["type"] == "server_error"


async def test_insufficient_quota(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server(quota_exhausted=True)
    status, data, headers = await post(session, server, "/chat/completions", chat_body())
    assert status == 429
    assert data["error"]["type"] == "insufficient_quota"
    assert data["error"]["code"] == "insufficient_quota"
    assert "retry-after" not in headers
    assert server.stats()["rate_limited"] == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_rpm_limit(make_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    # Capacity 600 * 1 / 60 = 10 requests, refilled at 10 per second.
    clock = FakeClock()
    server = await make_server(rpm=600, clock=clock)
    statuses = []
    for i in range(11):
        status, data, headers = await post(session, server, "/chat/completions", chat_body(f"p{i}"))
        statuses.append(status)
        if i == 0:
            assert headers["x-ratelimit-limit-requests"] == "600"
            assert headers["x-ratelimit-remaining-requests"] == "9"
            assert headers["x-ratelimit-reset-requests"] == "100ms"
            assert "x-ratelimit-limit-tokens" not in headers
    assert statuses == [200] * 10 + [429]
    assert data["error"]["code"] == "rate_limit_exceeded"
    assert data["error"]["type"] == "requests"
    assert "on requests per min (RPM): Limit 600" in data["error"]["message"]
    assert headers["retry-after-ms"] == "100"
    assert "Please try again in 100ms." in data["error"]["message"]
    assert headers["retry-after"] == "1"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    stats = server.stats()
    assert stats["rate_limited"] == 1
    assert stats["attempts_by_prompt"]["p10"] == 1
    assert "p10" not in stats["completed_by_prompt"]

    clock.now += 0.1
    status, _, _ = await post(session, server, "/chat/completions", chat_body("p10"))
    assert status == 200


async def test_rpm_quantum_allows_a_minute_burst(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    # quantum=60: the bucket holds a whole minute's allowance.
    server = await make_server(rpm=60, quantum=60, clock=FakeClock())
    statuses = [
        (await post(session, server, "/chat/completions", chat_body(f"b{i}")))[0] for i in range(61)
    ]
    assert statuses == [200] * 60 + [429]


async def test_tpm_limits(make_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    # Capacity 6000 / 60 = 100 tokens, refilled at 100 per second.
    clock = FakeClock()
    server = await make_server(tpm=6000, clock=clock)
    status, data, headers = await post(
        session, server, "/chat/completions", chat_body("x" * 40, max_tokens=7000)
    )
    assert status == 429
    assert data["error"]["type"] == "tokens"
    assert "Request too large" in data["error"]["message"]
    assert "Requested 7010" in data["error"]["message"]

    status, _, headers = await post(
        session, server, "/chat/completions", chat_body("x" * 40, max_tokens=80)
    )
    assert status == 200
    assert headers["x-ratelimit-limit-tokens"] == "6000"
    assert headers["x-ratelimit-remaining-tokens"] == "10"
    status, data, headers = await post(
        session, server, "/chat/completions", chat_body("x" * 40, max_tokens=80)
    )
    assert status == 429
    assert data["error"]["type"] == "tokens"
    assert headers["retry-after-ms"] == "800"  # 90 tokens needed, 10 left, 100 per second
    clock.now += 0.8
    status, _, _ = await post(
        session, server, "/chat/completions", chat_body("x" * 40, max_tokens=80)
    )
    assert status == 200


async def test_directive_500_twice_then_success(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server()
    prompt = "[[mock:500*2]] compute"
    results = [
        await post(session, server, "/chat/completions", chat_body(prompt)) for _ in range(3)
    ]
    assert [r[0] for r in results] == [500, 500, 200]
    assert results[0][1]["error"]["type"] == "server_error"
    assert results[2][1]["choices"][0]["message"]["content"] == "echo: " + prompt
    stats = server.stats()
    assert stats["attempts_by_prompt"] == {prompt: 3}
    assert stats["completed_by_prompt"] == {prompt: 1}
    assert stats["faults_injected"] == {"500": 2}


async def test_directive_reset(make_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await make_server()
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, server, "/chat/completions", chat_body("[[mock:reset*1]] hi"))
    status, _, _ = await post(
        session, server, "/chat/completions", chat_body("[[mock:reset*1]] hi")
    )
    assert status == 200
    assert server.stats()["by_status"] == {"reset": 1, "200": 1}


async def test_directive_malformed_empty_and_others(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server()
    url = server.base_url + "/chat/completions"
    async with session.post(url, json=chat_body("[[mock:malformed]] a")) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("application/json")
        raw = await resp.read()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)

    status, data, _ = await post(
        session, server, "/chat/completions", chat_body("[[mock:empty]] b")
    )
    assert status == 200
    assert data["choices"][0]["message"]["content"] == ""
    assert data["usage"]["completion_tokens"] == 0

    status, data, headers = await post(
        session, server, "/chat/completions", chat_body("[[mock:429]] c")
    )
    assert status == 429
    assert data["error"]["code"] == "rate_limit_exceeded"
    assert headers["retry-after-ms"] == "50"
    assert headers["retry-after"] == "1"

    status, data, _ = await post(session, server, "/chat/completions", chat_body("[[mock:400]] d"))
    assert status == 400
    assert data["error"]["param"] == "temperature"

    status, data, _ = await post(session, server, "/chat/completions", chat_body("[[mock:503]] e"))
    assert status == 503

    # Directives work in embeddings input too.
    status, _, _ = await post(
        session, server, "/embeddings", {"model": "m", "input": "[[mock:502]]"}
    )
    assert status == 502
    stats = server.stats()
    # Faulty 200s are not successful completions.
    assert stats["completed_by_prompt"] == {}
    assert stats["rate_limited"] == 0


async def test_timeout_fault(make_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await make_server(hang_seconds=0.05)
    status, data, _ = await post(
        session, server, "/chat/completions", chat_body("[[mock:timeout]]")
    )
    assert status == 504
    assert data["error"]["type"] == "server_error"


async def test_random_faults(make_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await make_server(fault_rate=1.0, fault_kinds=("503",), seed=1)
    status, _, _ = await post(session, server, "/chat/completions", chat_body())
    assert status == 503
    with pytest.raises(ValueError):
        MockConfig(fault_kinds=("418",))


async def test_peak_in_flight_and_reset(
    make_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await make_server(latency=0.2)
    results = await asyncio.gather(
        *(post(session, server, "/chat/completions", chat_body(f"q{i}")) for i in range(5))
    )
    assert [r[0] for r in results] == [200] * 5
    stats = server.stats()
    assert stats["peak_in_flight"] == 5
    assert stats["in_flight"] == 0
    assert stats["arrivals_per_second"] == [5]
    assert stats["first_request_at"] is not None
    assert stats["last_response_at"] >= stats["first_request_at"] + 0.2

    async with session.get(f"http://127.0.0.1:{server.port}/mock/stats") as resp:
        assert (await resp.json())["requests_total"] == 5
    async with session.post(f"http://127.0.0.1:{server.port}/mock/reset") as resp:
        assert resp.status == 200
    stats = server.stats()
    assert stats["requests_total"] == 0
    assert stats["completed_by_prompt"] == {}
    assert stats["first_request_at"] is None


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (0.12, "120ms"),
        (0.0004, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (17.25, "17.25s"),
        (360, "6m0s"),
        (61.5, "1m1.5s"),
        (3723, "1h2m3s"),
    ],
)
def test_format_reset(seconds: float, expected: str) -> None:
    assert format_reset(seconds) == expected


def test_create_app_exposes_state() -> None:
    config = MockConfig(rpm=60)
    app = create_app(config)
    assert app[STATE_KEY].config is config


def test_threaded_server() -> None:
    with ThreadedMockServer(MockConfig()) as srv:
        request = urllib.request.Request(
            srv.base_url + "/chat/completions",
            data=orjson.dumps(chat_body("threaded")),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            data = orjson.loads(resp.read())
        assert data["choices"][0]["message"]["content"] == "echo: threaded"
        assert srv.stats()["completed_by_prompt"] == {"threaded": 1}
        srv.reset_stats()
        assert srv.stats()["requests_total"] == 0
        port = srv.port
    # Closed: nothing listens any more.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)


def test_serve_prints_url_and_stops_on_sigint() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        "from burstcli.mock.server import MockConfig, serve; "
        "serve(MockConfig(), host='127.0.0.1', port=0)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().strip()
        assert line.startswith("mock server listening on http://127.0.0.1:")
        assert line.endswith("/v1")
        url = line.rsplit(" ", 1)[1]
        assert not url.endswith(":0/v1")
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=5) as resp:
            assert orjson.loads(resp.read()) == {"status": "ok"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
