"""Feeding the dispatcher: a file's ordered items, or stdin's ordered by priority as they come.

May import: what live/ may.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from ..config import JobSpec
from ..models import InvalidLine, Request


async def aiter_items(
    items: Iterable[Request | InvalidLine], *, chunk: int = 256
) -> AsyncIterator[Request | InvalidLine]:
    """Feed a file's (already ordered) items to the dispatcher, letting answers in between."""
    for n, item in enumerate(items):
        yield item
        if n % chunk == chunk - 1:
            await asyncio.sleep(0)


def prioritized(
    items: Iterable[Request | InvalidLine], *, window: int = 10_000
) -> AsyncIterator[Request | InvalidLine]:
    """Items of a blocking stream (stdin), highest priority first among those buffered.

    A daemon thread, started at once, reads (a read blocked on stdin must not keep the process
    alive after Ctrl-C) into a buffer of at most `window` items; each time the dispatcher
    asks, it gets the best item read so far, so a slow producer is never waited for and a
    fast one is ordered across the window. Invalid lines come out first: they are recorded
    at once.
    """
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    incoming: list[Request | InvalidLine] = []
    state: dict[str, Any] = {"finished": False, "error": None}
    room = threading.Semaphore(window)
    wake = asyncio.Event()

    def signal() -> None:
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop is gone: nobody is reading any more
            pass

    def produce() -> None:
        try:
            for item in items:
                room.acquire()
                with lock:
                    incoming.append(item)
                    first = len(incoming) == 1
                if first:
                    signal()
        except BaseException as exc:  # surfaced in the loop, not lost in the thread
            state["error"] = exc
        with lock:
            state["finished"] = True
        signal()

    async def ordered() -> AsyncIterator[Request | InvalidLine]:
        heap: list[tuple[int, int, Request | InvalidLine]] = []
        tie = itertools.count()
        while True:
            with lock:
                for item in incoming:
                    prio = item.priority if isinstance(item, Request) else 11
                    heapq.heappush(heap, (-prio, next(tie), item))
                incoming.clear()
                finished = state["finished"]
            if heap:
                room.release()
                yield heapq.heappop(heap)[2]
                continue
            if finished:
                if state["error"] is not None:
                    raise state["error"]
                return
            wake.clear()
            await wake.wait()

    threading.Thread(target=produce, name="burstq-reader", daemon=True).start()
    return ordered()


def chain(
    first: list[InvalidLine], then: Iterator[Request]
) -> AsyncIterator[Request | InvalidLine]:
    # One async generator over both: every item the dispatcher takes passes through it.
    return aiter_items(itertools.chain(first, then))


async def with_defaults(
    job: JobSpec, items: AsyncIterator[Request | InvalidLine]
) -> AsyncIterator[Request | InvalidLine]:
    """--max-tokens / --param for chat lines that set none (embeddings take neither)."""
    async for item in items:
        if isinstance(item, Request) and item.endpoint == "chat":
            item.max_tokens = job.apply_defaults(item.body)
        yield item
