"""OpenAI-compatible mock HTTP server for rehearsals and end-to-end tests.

`burstq mock-server` and `burstq run --simulate` point the real client code at this server, so
it copies what matters of the OpenAI API for a batch client: status codes, error bodies, the
``retry-after``/``x-ratelimit-*`` headers, and token-bucket rate limits that punish bursts the
way providers do.  Faults (5xx, hangs, connection resets, truncated or empty bodies) can be
injected at random or deterministically with directives embedded in the prompt text:

* ``[[mock:KIND]]`` fails every attempt of that prompt with KIND;
* ``[[mock:KIND*N]]`` fails the first N attempts of that exact prompt text, then answers normally.

KIND is one of 500, 502, 503, timeout, reset, malformed, empty, 429, 400.

Answers are deterministic ("echo: " + the last user message; embeddings derived from a hash of
the text) so tests can check exactly what reached the caller.  Counters (``stats()``) let tests
verify exactly-once delivery, concurrency and request rates from the server's side.

The Batch API is there too (``/v1/files``, ``/v1/batches``): a batch walks validating ->
in_progress -> finalizing -> completed in ``batch_seconds`` (fast-forward for tests) and answers
each line with the same logic as the live endpoints, so the directives above work inside batch
lines as well.  Two more directives exist for batches only, counted per prompt like the others:

* ``[[mock:expire*N]]``: the first N batches holding that prompt leave it unanswered and end
  ``expired`` (the line goes to the error file with code ``batch_expired``, as OpenAI does);
* ``[[mock:batchfail*N]]``: the line fails with a 500 response in the error file.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from types import TracebackType
from typing import Any

from aiohttp import web

from .batches import add_routes
from .live import (
    chat_completions,
    embeddings,
    get_model,
    health,
    json_errors,
    list_models,
    reset,
    stats,
)
from .state import (
    DIRECTIVE_KINDS,
    FAULT_KINDS,
    STATE_KEY,
    MockConfig,
    MockState,
    format_reset,
    url_host,
)

__all__ = [
    "DIRECTIVE_KINDS",
    "FAULT_KINDS",
    "STATE_KEY",
    "MockConfig",
    "MockServer",
    "MockState",
    "ThreadedMockServer",
    "create_app",
    "format_reset",
    "serve",
]


def create_app(config: MockConfig) -> web.Application:
    """Build the aiohttp application; its MockState is ``app[STATE_KEY]``."""
    app = web.Application(middlewares=[json_errors])
    app[STATE_KEY] = MockState(config)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/mock/stats", stats)
    app.router.add_post("/mock/reset", reset)

    add_routes(app)
    return app


# ---------------------------------------------------------------------------------------------
# Running the server


class MockServer:
    """The mock server on the current event loop.

    >>> async with MockServer(MockConfig(rpm=60)) as server:  # doctest: +SKIP
    ...     print(server.base_url)
    """

    def __init__(self, config: MockConfig | None = None, *, shutdown_timeout: float = 2.0) -> None:
        self.config = config if config is not None else MockConfig()
        self.app = create_app(self.config)
        self.host = "127.0.0.1"
        self.port = 0
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def state(self) -> MockState:
        return self.app[STATE_KEY]

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``; wildcard hosts are given as loopback so clients can connect."""
        if self._runner is None:
            raise RuntimeError("MockServer is not started")
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{url_host(host)}:{self.port}/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (port 0 picks a free port, see ``self.port``)."""
        if self._runner is not None:
            raise RuntimeError("MockServer is already started")
        # handler_cancellation: a client that gives up (e.g. during a "timeout" hang) frees
        # its handler at once, as a provider's front end would.
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])

    def stats(self) -> dict[str, Any]:
        return self.state.snapshot()

    def reset_stats(self) -> None:
        self.state.reset()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.state.closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ThreadedMockServer:
    """A MockServer on its own event loop in a daemon thread, for synchronous callers.

    ``with ThreadedMockServer(config) as srv:`` returns once the server is listening.
    """

    def __init__(
        self,
        config: MockConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_timeout: float = 10.0,
    ) -> None:
        self.config = config if config is not None else MockConfig()
        self.host = host
        self._requested_port = port
        self._start_timeout = start_timeout
        self._server: MockServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    @property
    def server(self) -> MockServer:
        if self._server is None:
            raise RuntimeError("ThreadedMockServer is not started")
        return self._server

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> ThreadedMockServer:
        """Start the thread and block until the server listens (or raise why it could not)."""
        if self._thread is not None:
            raise RuntimeError("ThreadedMockServer is already started")
        self._thread = threading.Thread(target=self._run, name="burstq-mock-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            self.close()
            raise RuntimeError("mock server did not start in time")
        if self.error is not None:
            self._thread.join()
            raise RuntimeError(f"mock server failed to start: {self.error}") from self.error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() rather than lost in the thread
            if not self._ready.is_set():
                self.error = exc
                self._ready.set()

    async def _main(self) -> None:
        server = MockServer(self.config)
        self._stop = asyncio.Event()
        await server.start(self.host, self._requested_port)
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.close()

    def stats(self, settle: float = 2.0) -> dict[str, Any]:
        """Counters snapshot; safe from any thread (MockState locks its counters).

        A client can read an answer before the handler has counted it as delivered, so wait
        (up to `settle` seconds) for requests still being handled to finish first.
        """
        deadline = time.monotonic() + settle
        snap = self.server.stats()
        while snap["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.002)
            snap = self.server.stats()
        return snap

    def reset_stats(self) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("ThreadedMockServer is not started")
        # Buckets are touched by the loop; resetting there avoids racing a request.
        asyncio.run_coroutine_threadsafe(self.reset(), loop).result(self._start_timeout)

    async def reset(self) -> None:
        self.server.reset_stats()

    def close(self) -> None:
        """Stop the server and join its thread; idempotent."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # loop already closed between the check and the call
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._loop = None

    def __enter__(self) -> ThreadedMockServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _serve(config: MockConfig, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            # Windows or a non-main thread: KeyboardInterrupt still ends serve() cleanly.
            pass
    server = MockServer(config)
    await server.start(host, port)
    try:
        print(
            f"mock server listening on http://{url_host(host)}:{server.port}/v1",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await server.close()


def serve(config: MockConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the mock server in the foreground until SIGINT/SIGTERM."""
    try:
        asyncio.run(_serve(config, host, port))
    except KeyboardInterrupt:
        pass
