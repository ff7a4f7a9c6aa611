"""engine.prioritized: stdin is ordered by priority among what is buffered, never waited for."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import orjson

from burstcli.files.reader import parse_line
from burstcli.live.feed import prioritized
from burstcli.models import InvalidLine, Request


def req(i: int, prio: int) -> Request:
    item = parse_line(orjson.dumps({"id": f"s{i}", "input": "x", "priority": prio}), i + 1, "m")
    assert isinstance(item, Request)
    return item


class Feed:
    """A stream that hands out `first`, then blocks until `go` before handing out `rest`."""

    def __init__(self, first: list[Request | InvalidLine], rest: list[Request | InvalidLine]):
        self.first, self.rest = first, rest
        self.fed, self.go = threading.Event(), threading.Event()
        self.pulled = 0

    def __iter__(self) -> Iterator[Request | InvalidLine]:
        for item in self.first:
            self.pulled += 1
            yield item
        self.fed.set()
        self.go.wait(5)
        for item in self.rest:
            self.pulled += 1
            yield item


async def settle(feed: Feed) -> None:
    await asyncio.to_thread(feed.fed.wait, 5)
    for _ in range(20):  # let the reader thread's wake-up reach the loop
        await asyncio.sleep(0.005)


async def test_buffered_items_come_out_highest_priority_first() -> None:
    feed = Feed([req(0, 1), req(1, 5), req(2, 10), req(3, 5)], [req(4, 9), req(5, 1)])
    it = aiter(prioritized(feed))
    await settle(feed)
    first = [(await anext(it)).id for _ in range(4)]
    assert first == ["s2", "s1", "s3", "s0"]  # 10, then the 5s in stream order, then 1
    feed.go.set()
    rest = [item.id async for item in it]
    assert rest == ["s4", "s5"]


async def test_a_slow_producer_is_not_waited_for() -> None:
    feed = Feed([req(0, 1)], [req(1, 10)])
    it = aiter(prioritized(feed))
    got = await asyncio.wait_for(anext(it), 2)  # `go` is never set before this returns
    assert got.id == "s0"
    feed.go.set()
    assert [i.id async for i in it] == ["s1"]


async def test_invalid_lines_come_out_first() -> None:
    bad = InvalidLine(3, None, "invalid JSON")
    feed = Feed([req(0, 10), bad], [])
    feed.go.set()
    it = aiter(prioritized(feed))
    await settle(feed)
    assert await anext(it) is bad


async def test_the_window_bounds_what_is_read_ahead() -> None:
    feed = Feed([req(i, 5) for i in range(50)], [])
    feed.go.set()
    it = aiter(prioritized(feed, window=4))
    assert (await anext(it)).id == "s0"
    await asyncio.sleep(0.1)
    # Four buffered, one more read and waiting for room, one handed out.
    assert feed.pulled <= 6
    assert len([i async for i in it]) == 49


async def test_an_error_in_the_stream_surfaces() -> None:
    def broken() -> Iterator[Request]:
        yield req(0, 5)
        raise ValueError("stream broke")

    it = aiter(prioritized(broken()))
    assert (await anext(it)).id == "s0"
    try:
        await anext(it)
    except ValueError as exc:
        assert "stream broke" in str(exc)
    else:
        raise AssertionError("the error was lost")
