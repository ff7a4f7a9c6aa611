"""A deliberately minimal OpenAI-shaped HTTP server: the "fast loopback server" of issue 7.

The project's mock server (burstcli/mock_server.py) is a full aiohttp application that parses
every body, keeps per-prompt counters and builds each answer; on a 2-core machine it is the
bottleneck long before a lean client is. To see a client's own cost, this server does almost
nothing: an asyncio protocol on uvloop that frames HTTP/1.1 keep-alive requests by
Content-Length and answers every POST with the same pre-built chat completion (a structured
one for requests with a json_schema response_format). It also answers
GET /mock/stats (requests_total, first_request_at, last_response_at on time.monotonic()) like
the mock, so the bench reads both servers the same way.

    python -m bench.fastserver --port 0     # prints "fast server listening on http://...:PORT/v1"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any

import orjson

# The canned chat answer (bench/ownwork.py stubs HTTP with the same one).
CHAT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "echo: ok", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    "system_fingerprint": "fp_bench",
}
_CHAT = orjson.dumps(CHAT_ANSWER)


def _response(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


_CHAT_RESPONSE = _response(_CHAT)
# A structured request (response_format json_schema) gets an answer that matches the schema
# the bench asks for (bench/overhead.py: "label: one of pos/neg, score float").
_STRUCTURED_RESPONSE = _response(
    _CHAT.replace(
        b'"echo: ok"', orjson.dumps(orjson.dumps({"label": "pos", "score": 0.5}).decode())
    )
)


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests_total = 0
        self.first_request_at: float | None = None
        self.last_response_at: float | None = None

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "requests_total": self.requests_total,
                "by_status": {"200": self.requests_total},
                "rate_limited": 0,
                "first_request_at": self.first_request_at,
                "last_response_at": self.last_response_at,
            }
        )


class _Http(asyncio.Protocol):
    def __init__(self, stats: _Stats) -> None:
        self.stats = stats
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports are not asyncio.Transport instances, hence Any.
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                break
            structured = buf.find(b'"json_schema"', end + 4, total) >= 0
            del buf[:total]
            if head.startswith(b"post "):
                now = time.monotonic()
                st = self.stats
                st.requests_total += 1
                if st.first_request_at is None:
                    st.first_request_at = now
                st.last_response_at = now
                out.append(_STRUCTURED_RESPONSE if structured else _CHAT_RESPONSE)
            elif head.startswith(b"get /mock/stats"):
                out.append(_response(self.stats.snapshot()))
            else:
                out.append(_response(b'{"status": "ok"}'))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = _Stats()
    server = await loop.create_server(lambda: _Http(stats), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"fast server listening on http://{host}:{bound}/v1", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
