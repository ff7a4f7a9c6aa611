"""limits.py without real sleeps: a virtual clock that only moves when every task is waiting.

`VirtualTime` follows aiolimiter's MockLoopTime idea: `Limits` and `Pacer` read `vt.time` and
sleep through `vt.sleep`, and `vt.run()` advances the clock straight to the next wake-up once
the event loop has nothing else to do. Times asserted below are therefore exact, not "about".
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from burstcli.live.limits import (
    BACKOFF_FACTOR,
    BURST_SECONDS,
    HEADER_MARGIN,
    MIN_FRACTION,
    Gate,
    Limits,
    Pacer,
    parse_duration,
    retry_after,
)

T0 = 1000.0


class VirtualTime:
    def __init__(self, start: float = T0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def run(self, *aws: Awaitable[Any]) -> list[Any]:
        """Run `aws` to completion, jumping the clock from one wake-up to the next."""
        tasks = [asyncio.ensure_future(a) for a in aws]
        while True:
            await self.settle()
            if all(t.done() for t in tasks):
                return [t.result() for t in tasks]
            assert self._timers, "deadlock: tasks wait, but no timer is pending"
            when, _, fut = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not fut.done():
                fut.set_result(None)


def windows(times: list[float], width: float = 1.0) -> int:
    """Most events in any half-open window [t, t + width)."""
    times = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - width + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


# -- parse_duration and retry_after --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1.5s", 1.5),
        ("1h2m3s", 3723.0),
        ("1m30.5s", 90.5),
        ("0s", 0.0),
        ("2", 2.0),
        ("0.25", 0.25),
        (" 7s ", 7.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", [None, "", "abc", "5x", "1s junk", "ms", "s5", "1m-2s", "6m0"])
def test_parse_duration_junk_is_none(text: str | None) -> None:
    assert parse_duration(text) is None


def test_retry_after_ms_wins_over_seconds() -> None:
    assert retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    # A junk ms header falls back to the seconds one.
    assert retry_after({"retry-after-ms": "soon", "retry-after": "2"}) == 2.0
    assert retry_after({}) is None
    assert retry_after({"retry-after": "whenever"}) is None
    assert retry_after({"retry-after-ms": "-5"}) == 0.0


def test_retry_after_reads_case_insensitive_response_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Retry-After-Ms": "40", "Retry-After": "1"}))
    assert retry_after(headers) == 0.04


def test_retry_after_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    got = retry_after({"retry-after": format_datetime(later, usegmt=True)})
    assert got is not None and 28.0 <= got <= 30.0
    past = datetime.now(UTC) - timedelta(seconds=30)
    assert retry_after({"retry-after": format_datetime(past, usegmt=True)}) == 0.0


# -- Pacer ---------------------------------------------------------------------------------


def test_pacer_spreads_reservations_evenly_at_the_rate() -> None:
    clock = VirtualTime()
    p = Pacer(10.0, clock.time)  # 10 a second: one every 0.1 s
    starts = [p.reserve(1) for _ in range(30)]
    # The first goes now, the second spends the burst credit (0.05 s), then one per 0.1 s.
    expected = [T0] + [T0 + i * 0.1 - BURST_SECONDS for i in range(1, 30)]
    assert starts == pytest.approx(expected, abs=1e-9)


def test_pacer_burst_is_bounded_by_burst_seconds() -> None:
    clock = VirtualTime()
    p = Pacer(1000.0, clock.time)  # rpm 60,000: 1,000 a second
    starts = [p.reserve(1) for _ in range(3000)]
    at_once = sum(1 for s in starts if s <= T0 + 1e-9)
    # 5 % of a second's allowance may go at once (plus the first one), not the whole second.
    assert at_once == int(1000 * BURST_SECONDS) + 1 == 51
    assert windows(starts) <= 1000 + 51
    assert starts[-1] == pytest.approx(T0 + 2999 / 1000 - BURST_SECONDS)


def test_pacer_idle_time_does_not_bank_credit() -> None:
    clock = VirtualTime()
    p = Pacer(10.0, clock.time)
    p.reserve(1)
    clock.now += 100.0  # a long idle spell
    starts = [p.reserve(1) for _ in range(5)]
    base = clock.now
    assert starts == pytest.approx([base, base + 0.05, base + 0.15, base + 0.25, base + 0.35])


def test_pacer_variable_costs() -> None:
    clock = VirtualTime()
    p = Pacer(100.0, clock.time)  # 100 tokens a second
    assert p.reserve(50) == T0
    assert p.reserve(200) == pytest.approx(T0 + 0.5 - BURST_SECONDS)
    assert p.reserve(10) == pytest.approx(T0 + 2.5 - BURST_SECONDS)
    # A reservation bigger than a second's allowance still goes when the pacer is idle, and
    # pays for itself afterwards.
    q = Pacer(100.0, clock.time)
    assert q.reserve(10_000) == T0
    assert q.reserve(1) == pytest.approx(T0 + 100 - BURST_SECONDS)


def test_pacer_adjust_gives_credit_back_and_charges_debt() -> None:
    clock = VirtualTime()
    p = Pacer(100.0, clock.time)
    p.reserve(100)  # estimated 100 tokens: the next may start at T0 + 1 - burst
    p.adjust(-80)  # really cost 20
    assert p.reserve(1) == pytest.approx(T0 + 0.2 - BURST_SECONDS)

    d = Pacer(100.0, clock.time)
    d.reserve(10)
    d.adjust(+90)  # really cost 100
    assert d.reserve(1) == pytest.approx(T0 + 1.0 - BURST_SECONDS)


def test_pacer_credit_never_exceeds_the_burst() -> None:
    clock = VirtualTime()
    p = Pacer(10.0, clock.time)
    p.reserve(1)
    p.adjust(-1_000_000)  # a wildly high estimate corrected: no burst of a minute's worth
    starts = [p.reserve(1) for _ in range(4)]
    fresh = Pacer(10.0, clock.time)
    assert starts == pytest.approx([fresh.reserve(1) for _ in range(4)])
    assert starts == pytest.approx([T0, T0 + 0.05, T0 + 0.15, T0 + 0.25])


def test_pacer_without_rate_never_waits() -> None:
    clock = VirtualTime()
    p = Pacer(None, clock.time)
    assert [p.reserve(1_000_000) for _ in range(5)] == [T0] * 5
    p.adjust(1e9)
    p.hold_until(T0 + 50)
    assert p.reserve(1) == T0


def test_pacer_hold_until_starts_afresh_after_a_pause() -> None:
    clock = VirtualTime()
    p = Pacer(10.0, clock.time)
    p.hold_until(T0 + 5)
    clock.now = T0 + 5
    starts = [p.reserve(1) for _ in range(3)]
    assert starts == pytest.approx([T0 + 5, T0 + 5.05, T0 + 5.15])
    # An earlier hold never moves the schedule back.
    p.hold_until(T0)
    assert p.reserve(1) == pytest.approx(T0 + 5.25)


# -- Gate ----------------------------------------------------------------------------------


async def test_gate_bounds_and_release_wakes_one() -> None:
    gate = Gate(2)
    await gate.acquire()
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    assert not waiter.done() and gate.active == 2
    gate.release()
    await asyncio.sleep(0)
    assert waiter.done() and gate.active == 2


async def test_gate_raising_the_limit_wakes_waiters() -> None:
    gate = Gate(1)
    await gate.acquire()
    waiters = [asyncio.ensure_future(gate.acquire()) for _ in range(4)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert sum(w.done() for w in waiters) == 0
    gate.set_limit(3)
    for _ in range(3):
        await asyncio.sleep(0)
    assert sum(w.done() for w in waiters) == 2 and gate.active == 3
    gate.set_limit(10)
    for _ in range(3):
        await asyncio.sleep(0)
    assert all(w.done() for w in waiters) and gate.active == 5


async def test_gate_lowering_the_limit_blocks_newcomers_until_below() -> None:
    gate = Gate(3)
    for _ in range(3):
        await gate.acquire()
    gate.set_limit(1)
    assert gate.limit == 1
    waiter = asyncio.ensure_future(gate.acquire())
    gate.release()
    gate.release()
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done() and gate.active == 1
    gate.release()
    for _ in range(3):
        await asyncio.sleep(0)
    assert waiter.done() and gate.active == 1
    assert Gate(0).limit == 1 and Gate(-3).limit == 1


async def test_gate_cancelled_waiter_leaves_the_queue() -> None:
    gate = Gate(1)
    await gate.acquire()
    a = asyncio.ensure_future(gate.acquire())
    b = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    a.cancel()
    await asyncio.sleep(0)
    gate.release()
    for _ in range(3):
        await asyncio.sleep(0)
    assert a.cancelled() and b.done() and gate.active == 1


async def test_gate_cancelled_after_wakeup_passes_the_slot_on() -> None:
    gate = Gate(1)
    await gate.acquire()
    a = asyncio.ensure_future(gate.acquire())
    b = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # wakes a (its future is resolved) ...
    a.cancel()  # ... but a is cancelled before it runs
    for _ in range(5):
        await asyncio.sleep(0)
    assert a.cancelled()
    assert b.done(), "the freed slot went nowhere: b waits although active == 0"


# -- Limits: slow start --------------------------------------------------------------------


def make_limits(vt: VirtualTime, **kw: Any) -> Limits:
    return Limits(clock=vt.time, sleep=vt.sleep, **{"concurrency": 50, **kw})


def test_first_request_goes_alone_until_a_success() -> None:
    vt = VirtualTime()
    for kw in ({}, {"rpm": 600}, {"tpm": 100_000}):
        lim = make_limits(vt, **kw)
        assert lim.gate.limit == 1
        assert lim.snapshot().concurrency == 1


def test_told_limits_open_to_full_concurrency_on_first_success() -> None:
    vt = VirtualTime()
    for kw in ({"rpm": 600}, {"tpm": 100_000}):
        lim = make_limits(vt, **kw)
        lim.on_success({}, 10, 10)
        assert lim.gate.limit == 50


def test_header_ceiling_ramps_up_one_per_success() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, concurrency=14)
    seen = []
    for _ in range(7):
        lim.on_success({"x-ratelimit-limit-requests": "6000"}, 10, 10)
        seen.append(lim.gate.limit)
    # Headers tell a ceiling: the first success opens TCP's initial window of 10, then one
    # more per success (no adaptive window: the provider's limits drive it).
    assert seen == [10, 11, 12, 13, 14, 14, 14]
    assert not lim.snapshot().adaptive


def test_small_concurrency_opens_in_full_on_first_success() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, concurrency=6)
    lim.on_success({"x-ratelimit-limit-requests": "6000"}, 10, 10)
    assert lim.gate.limit == 6


def test_explicit_concurrency_opens_in_full_but_429s_still_halve_it() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, concurrency=200, concurrency_given=True)
    assert lim.gate.limit == 1
    lim.on_success({}, 10, 10)
    assert lim.gate.limit == 200
    lim.on_rate_limited({}, 0.5)
    assert lim.gate.limit == 100


def test_no_slow_start_opens_at_once() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, concurrency=7, slow_start=False)
    assert lim.gate.limit == 7


async def test_slot_waits_for_the_first_answer() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, concurrency=4, rpm=6000)
    await lim.slot()
    second = asyncio.ensure_future(lim.slot())
    await vt.settle()
    assert not second.done()
    lim.on_success({}, 1, 1)
    await vt.settle()
    assert second.done() and lim.gate.active == 2


# -- Limits: pacing ------------------------------------------------------------------------


async def test_pace_spreads_concurrent_callers_at_the_rpm() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, rpm=1200, slow_start=False)  # 20 a second
    times: list[float] = []

    async def one() -> None:
        await lim.pace(1)
        times.append(vt.now)

    await vt.run(*(one() for _ in range(100)))
    times.sort()
    assert times[:3] == pytest.approx([T0, T0, T0 + 0.05])
    assert times[-1] == pytest.approx(T0 + 99 * 0.05 - BURST_SECONDS)
    assert windows(times) == 21  # 20 a second, plus the burst credit of one
    gaps = [b - a for a, b in zip(times[1:], times[2:], strict=False)]
    assert min(gaps) == pytest.approx(0.05) and max(gaps) == pytest.approx(0.05)


async def test_pace_uses_the_slower_of_requests_and_tokens() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, rpm=6000, tpm=6000, slow_start=False)  # 100 req/s, 100 tokens/s
    times: list[float] = []

    async def one(cost: int) -> None:
        await lim.pace(cost)
        times.append(vt.now)

    for cost in (50, 200, 10):  # one after another: the token pacer decides
        await vt.run(one(cost))
    assert times == pytest.approx([T0, T0 + 0.5 - BURST_SECONDS, T0 + 2.5 - BURST_SECONDS])


async def test_real_usage_above_the_estimate_is_charged() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, tpm=6000, slow_start=False)  # 100 tokens/s
    await vt.run(lim.pace(100))  # estimated 100 ...
    lim.on_success({}, 100, 400)  # ... used 400: 3 s of debt
    await vt.run(lim.pace(1))
    assert vt.now == pytest.approx(T0 + 4.0 - BURST_SECONDS)


async def test_real_usage_below_the_estimate_gives_no_credit() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, tpm=6000, slow_start=False)  # 100 tokens/s
    await vt.run(lim.pace(500))  # the provider's limiter counted max_tokens: 500 ...
    lim.on_success({}, 500, 100)  # ... although the answer used only 100
    await vt.run(lim.pace(1))
    assert vt.now == pytest.approx(T0 + 5.0 - BURST_SECONDS)


# -- Limits: learning from headers ---------------------------------------------------------


def test_learns_rpm_from_headers_and_settles_under_it() -> None:
    vt = VirtualTime()
    assert 0.9 <= HEADER_MARGIN < 1.0  # just under the ceiling the headers reveal
    lim = make_limits(vt)
    assert lim.requests.rate is None
    lim.on_success(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "599",
            "x-ratelimit-reset-requests": "100ms",
        },
        10,
        10,
    )
    assert lim.rpm_ceiling == 600
    assert lim.requests.rate == pytest.approx(600 / 60 * HEADER_MARGIN)
    assert lim.snapshot().rpm == pytest.approx(600 * HEADER_MARGIN)
    for _ in range(100):  # recovery never climbs above the margin under a learned ceiling
        lim.on_success({"x-ratelimit-limit-requests": "600"}, 10, 10)
    assert lim.snapshot().rpm == pytest.approx(600 * HEADER_MARGIN)


def test_learns_tpm_from_headers() -> None:
    vt = VirtualTime()
    lim = make_limits(vt)
    lim.on_success({"x-ratelimit-limit-tokens": "150000"}, 10, 10)
    assert lim.tpm_ceiling == 150_000
    assert lim.snapshot().tpm == pytest.approx(150_000 * HEADER_MARGIN)


def test_user_rpm_below_the_header_wins_above_it_loses() -> None:
    vt = VirtualTime()
    low = make_limits(vt, rpm=300)
    low.on_success({"x-ratelimit-limit-requests": "600"}, 10, 10)
    assert low.rpm_ceiling == 300 and low.snapshot().rpm == pytest.approx(300.0)
    high = make_limits(vt, rpm=1000)
    high.on_success({"x-ratelimit-limit-requests": "600"}, 10, 10)
    assert high.rpm_ceiling == 600 and high.snapshot().rpm == pytest.approx(600 * HEADER_MARGIN)


def test_junk_or_zero_limit_headers_are_ignored() -> None:
    vt = VirtualTime()
    lim = make_limits(vt)
    lim.on_success({"x-ratelimit-limit-requests": "lots", "x-ratelimit-limit-tokens": "0"}, 1, 1)
    assert lim.rpm_ceiling is None and lim.tpm_ceiling is None
    assert lim.requests.rate is None and lim.tokens.rate is None


async def test_exhausted_remaining_holds_until_the_reset() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, slow_start=False)
    lim.on_success(
        {
            "x-ratelimit-limit-requests": "6000",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1.5s",
        },
        1,
        1,
    )
    await vt.run(lim.pace(1))
    assert vt.now == pytest.approx(T0 + 1.5 - BURST_SECONDS)


# -- Limits: 429 ---------------------------------------------------------------------------


async def test_rate_limited_pauses_everyone_for_retry_after() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, rpm=6000, slow_start=False)
    lim.on_rate_limited({}, 2.0)
    assert lim.snapshot().paused_for == pytest.approx(2.0)
    assert lim.rate_limited == 1
    times: list[float] = []

    async def one() -> None:
        await lim.pace(1)
        times.append(vt.now)

    await vt.run(*(one() for _ in range(40)))
    times.sort()
    assert times[0] == pytest.approx(T0 + 2.0)  # nobody goes before the pause ends
    # ... and after it the pace is the lowered one, not a burst of everything that waited.
    rate = 100 * BACKOFF_FACTOR
    assert sum(1 for t in times if t <= T0 + 2.0 + 1e-9) == int(rate * BURST_SECONDS) + 1
    assert times[-1] == pytest.approx(T0 + 2.0 + 39 / rate - BURST_SECONDS)


async def test_rate_limited_without_retry_after_backs_off_exponentially_to_a_cap() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, slow_start=False, backoff_base=0.5)
    pauses = []
    for _ in range(10):
        start = vt.now
        lim.on_rate_limited({}, None)
        assert lim.snapshot().pause_reason == "429 backoff"
        await vt.run(lim.pace(1))
        pauses.append(vt.now - start)
    assert pauses[:4] == pytest.approx([0.5, 1.0, 2.0, 4.0])
    assert max(pauses) == pytest.approx(60.0)  # the cap
    lim.on_success({}, 1, 1)  # an answer ends the streak
    start = vt.now
    lim.on_rate_limited({}, None)
    await vt.run(lim.pace(1))
    assert vt.now - start == pytest.approx(0.5)


def test_absurd_retry_after_values_are_clamped() -> None:
    from burstcli.live.limits import MAX_HINT, retry_after

    assert retry_after({"retry-after-ms": "inf"}) == MAX_HINT
    assert retry_after({"retry-after-ms": "nan", "retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "1e308"}) == MAX_HINT
    assert retry_after({"retry-after": "-5"}) == 0.0
    assert retry_after({"retry-after": "nan"}) is None


async def test_a_429_during_a_wait_rebooks_after_the_pause() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, rpm=60, slow_start=False)  # one a second
    await vt.run(lim.pace(1))  # T0
    waiting = asyncio.ensure_future(lim.pace(1))  # booked for T0 + 0.95
    await vt.settle()
    lim.on_rate_limited({}, 3.0)  # someone else got a 429 meanwhile
    await vt.run(waiting)
    assert vt.now == pytest.approx(T0 + 3.0)


def test_rate_limited_lowers_the_pace_then_recovers_to_the_ceiling() -> None:
    vt = VirtualTime()
    lim = make_limits(vt)
    hdr = {"x-ratelimit-limit-requests": "600"}
    lim.on_success(hdr, 1, 1)
    target = 600 / 60 * HEADER_MARGIN
    lim.on_rate_limited(hdr, 0.1)
    assert lim.requests.rate == pytest.approx(target * BACKOFF_FACTOR)
    rates = []
    for _ in range(30):
        lim.on_success(hdr, 1, 1)
        rates.append(lim.requests.rate)
    # Smooth: 1 % of the target per success, never above it, reached within 16 answers.
    assert rates[0] == pytest.approx(target * BACKOFF_FACTOR + target * 0.01)
    assert all(b >= a for a, b in zip(rates, rates[1:], strict=False))
    assert max(rates) == pytest.approx(target) and max(rates) <= target
    assert rates[15] == pytest.approx(target)


def test_user_rpm_recovers_to_the_full_user_ceiling() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, rpm=1200)
    lim.on_rate_limited({}, 0.1)
    assert lim.requests.rate == pytest.approx(20 * BACKOFF_FACTOR)
    for _ in range(40):
        lim.on_success({}, 1, 1)
    assert lim.requests.rate == pytest.approx(20.0)


def test_repeated_429s_never_slow_below_the_floor() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, rpm=600)
    for _ in range(100):  # a hundred separate 429 episodes, each after the last pause ended
        lim.on_rate_limited({}, 0.01)
        vt.now += 1.0
    assert lim.requests.rate == pytest.approx(600 / 60 * MIN_FRACTION)
    assert lim.rate_limited == 100


def test_rate_limited_halves_the_window_at_a_learned_ceiling() -> None:
    vt = VirtualTime()
    lim = make_limits(vt, concurrency=40)
    lim.on_success({"x-ratelimit-limit-tokens": "10000000"}, 1, 1)
    for _ in range(22):  # the initial window of 10, then one per success
        lim.on_success({}, 1, 1)
    assert lim.gate.limit == 32
    lim.on_rate_limited({}, 0.1)
    assert lim.gate.limit == 16
    # After a 429 the window grows by about one per window of answers, not one per answer.
    for _ in range(16):
        lim.on_success({}, 1, 1)
    assert lim.gate.limit == 16
    lim.on_success({}, 1, 1)
    assert lim.gate.limit == 17
    # Told limits keep the window: the pacers do the slowing.
    told = make_limits(vt, concurrency=40, rpm=600)
    told.on_success({}, 1, 1)
    told.on_rate_limited({}, 0.1)
    assert told.gate.limit == 40


def test_a_burst_of_429s_lowers_the_pace_once() -> None:
    # Eight requests in flight when a rival job drains the shared quota: all eight come back
    # 429 within the same pause. That is one congestion event (as TCP counts one loss per
    # window), so the pace should drop by one BACKOFF_FACTOR, not by 0.85 ** 8 = 27 %.
    vt = VirtualTime()
    lim = make_limits(vt, rpm=600)
    lim.on_success({}, 1, 1)
    for _ in range(8):
        lim.on_rate_limited({"retry-after-ms": "500"}, 0.5)
    assert lim.requests.rate == pytest.approx(10.0 * BACKOFF_FACTOR)
    # ... and the pace is back at the ceiling within a few dozen answers, not ~90.
    for _ in range(20):
        lim.on_success({}, 1, 1)
    assert lim.requests.rate == pytest.approx(10.0)
