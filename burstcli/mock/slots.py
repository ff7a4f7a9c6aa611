"""Slots mode: a self-hosted inference server's shape (llama.cpp, vLLM, Ollama, TGI).

N parallel slots and a FIFO queue in front of them; an answer occupies a slot for a time
proportional to the tokens it generates (`base + seconds_per_token x tokens`), so requests sent
beyond N only wait. As on those servers, a request whose client gave up (a client-side timeout)
is not cancelled: it keeps its place in the queue and its slot until it has been generated.
No rate-limit headers, no 429s: the only signals a client gets are latency and timeouts.

May import: nothing of burstq outside mock/.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class Slots:
    """N slots served first come, first served; lives on the server's event loop."""

    def __init__(
        self, n: int, *, seconds_per_token: float, base_seconds: float, closing: asyncio.Event
    ) -> None:
        if n < 1:
            raise ValueError("slots must be >= 1")
        self.n = n
        self.seconds_per_token = seconds_per_token
        self.base_seconds = base_seconds
        self._closing = closing
        self._busy = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._jobs: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()  # counters are read from other threads (snapshot)
        self.peak_queue = 0
        self.peak_busy = 0
        self.abandoned = 0  # requests whose client left before their answer was generated
        self.served = 0

    def service_time(self, tokens: int) -> float:
        return self.base_seconds + self.seconds_per_token * max(0, tokens)

    async def serve(self, tokens: int) -> None:
        """Wait for a slot, generate `tokens`; the work goes on if the caller is cancelled."""
        job = asyncio.get_running_loop().create_task(self._job(self.service_time(tokens)))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            if not job.done():
                with self._lock:
                    self.abandoned += 1
            raise

    async def _job(self, seconds: float) -> None:
        if self._busy >= self.n or self._queue:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.append(fut)
            with self._lock:
                self.peak_queue = max(self.peak_queue, len(self._queue))
            try:
                await fut  # the slot is handed over by the job that frees it
            except asyncio.CancelledError:
                if fut in self._queue:
                    self._queue.remove(fut)
                raise
        else:
            self._busy += 1
        with self._lock:
            self.peak_busy = max(self.peak_busy, self._busy)
        try:
            # Ends early when the server shuts down, so close() never waits for a long answer.
            try:
                async with asyncio.timeout(seconds):
                    await self._closing.wait()
            except TimeoutError:
                pass
            with self._lock:
                self.served += 1
        finally:
            self._handover()

    def _handover(self) -> None:
        while self._queue:
            fut = self._queue.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight on: _busy stays the same
                return
        self._busy -= 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "slots": self.n,
                "slots_busy": self._busy,
                "slots_queued": len(self._queue),
                "slots_peak_busy": self.peak_busy,
                "slots_peak_queue": self.peak_queue,
                "slots_abandoned": self.abandoned,
                "slots_served": self.served,
            }

    def reset(self) -> None:
        with self._lock:
            self.peak_queue = len(self._queue)
            self.peak_busy = self._busy
            self.abandoned = 0
            self.served = 0
