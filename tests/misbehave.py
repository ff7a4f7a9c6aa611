"""A small purpose-built misbehaving HTTP server on loopback, for the hardening tests.

The mock server plays a well-behaved provider with injectable faults; some faults need a
provider that is wrong in ways the mock never is (usage as a string, an endless answer, HTML
from the Batch API). `Misbehaving(handler)` runs an aiohttp app in a thread whose every route
goes to `handler`, and counts what arrived.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Misbehaving:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.hits: list[tuple[float, str, Any]] = []  # (monotonic time, path, parsed body)
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        if request.method == "POST" and request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                body = None
        self.hits.append((time.monotonic(), request.path, body))
        return await self.handler(request)

    async def _main(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._route)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Misbehaving:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def prompt_of(body: Any) -> str:
    """The user text of a chat body, or the input of an embeddings body."""
    if not isinstance(body, dict):
        return ""
    if "messages" in body:
        return str(body["messages"][-1].get("content", ""))
    return str(body.get("input", ""))


def chat_answer(text: str, usage: Any = None, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage
        if usage is not None
        else {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
