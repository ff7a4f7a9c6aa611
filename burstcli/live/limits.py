"""How fast to send: concurrency, requests/minute and tokens/minute, learned or told.

Providers enforce a minute's limit over sub-minute quanta, so a ceiling here is a *pace*: a
request (or a token) is spaced 1/rate seconds after the previous one, with a burst credit far
below one second's allowance (GCRA, the "virtual scheduling" form of a leaky bucket, which
handles variable costs and rate changes exactly). Everything reads the injected clock, so tests
step time instead of sleeping.

Without user limits the run starts with one request in flight, opens up as answers come back
(slow start) and settles under the ceilings the provider's x-ratelimit-* headers reveal. A 429
pauses the whole run for the server's retry-after and lowers the pace, which then recovers.
When no ceiling is known at all (no --concurrency, --rpm or --tpm, no x-ratelimit-* headers: a
self-hosted server), the window follows adaptive.py instead, which finds the server's parallel
slots from latency. The window opens as soon as the endpoint has shown it accepts the key (any
answer but 401/403, or a models-list probe), not only on the first success.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .shared import SharedPacer

from .adaptive import AdaptiveWindow

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

BURST_SECONDS = 0.05  # credit an idle pacer may spend at once: 5 % of a second's allowance
HEADER_MARGIN = 0.97  # settle this far under a ceiling learned from headers
BACKOFF_FACTOR = 0.85  # pace multiplier after a 429
MIN_FRACTION = 0.1  # never slow below this fraction of the ceiling
INITIAL_WINDOW = 10  # in flight after the first success at an unknown ceiling (TCP's IW10)
MAX_HINT = 7 * 86400.0  # a header asking for more (or inf) says "a week": --max-wait decides
RATE_BACKOFF_MAX = 60.0  # cap of the exponential pause after 429s that say nothing


def _seconds(x: float) -> float | None:
    """A server's wait as seconds we can sleep: nan is no hint, the rest clamped to 0..MAX."""
    if math.isnan(x):
        return None
    return min(MAX_HINT, max(0.0, x))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset format ('6m0s', '120ms', '1.5s', '1h2m3s') or plain seconds -> seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return _seconds(sum(float(n) * scale[u] for n, u in parts))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms first, then retry-after (seconds)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            if (wait := _seconds(float(ms) / 1000)) is not None:
                return wait
        except ValueError:
            pass
    sec = headers.get("retry-after")
    if sec:
        try:
            return _seconds(float(sec))
        except ValueError:
            from email.utils import parsedate_to_datetime  # HTTP-date form, rare

            try:
                from datetime import UTC, datetime

                return _seconds((parsedate_to_datetime(sec) - datetime.now(UTC)).total_seconds())
            except (TypeError, ValueError, OverflowError):
                return None
    return None


def header_limits(
    headers: Mapping[str, str],
) -> tuple[float | None, float | None, tuple[float, float]]:
    """What x-ratelimit-* headers say: (rpm limit, tpm limit, (requests hold, tokens hold)),
    a hold being the seconds until a window whose remaining is 0 resets. For the shared
    limiter, which applies them to everybody's budget in Redis."""
    found: dict[str, float | None] = {}
    hold = [0.0, 0.0]
    for i, kind in enumerate(("requests", "tokens")):
        raw = headers.get(f"x-ratelimit-limit-{kind}")
        try:
            limit = float(raw) if raw else None
        except ValueError:
            limit = None
        found[kind] = limit if limit and limit > 0 else None
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if found[kind] and remaining is not None and remaining.strip() in ("0", "0.0"):
            hold[i] = parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) or 0.0
    return found["requests"], found["tokens"], (hold[0], hold[1])


class Pacer:
    """Spreads `rate` units per second evenly; cost may vary per reservation."""

    def __init__(self, rate: float | None, clock: Clock, burst: float = BURST_SECONDS) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tat = 0.0  # theoretical arrival time of the next unit

    def reserve(self, cost: float) -> float:
        """Book `cost` units; returns when (clock time) they may be sent."""
        now = self._clock()
        if not self.rate:
            return now
        tat = max(self._tat, now)
        # A reservation bigger than the burst credit still goes, but pays for itself afterwards.
        start = max(now, tat - self.burst)
        self._tat = tat + cost / self.rate
        return start

    def adjust(self, delta: float) -> None:
        """Correct a reservation once the real cost is known (negative gives credit back)."""
        if self.rate:
            self._tat = max(self._tat + delta / self.rate, self._clock() - self.burst)

    def hold_until(self, t: float) -> None:
        """Start pacing afresh from `t` (after a pause), so nothing bursts when it ends."""
        self._tat = max(self._tat, t)


class Gate:
    """A semaphore whose limit can move while tasks wait on it."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        while self.active >= self.limit:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._wake()  # we were woken, then cancelled: pass the slot on
                raise
        self.active += 1

    def try_acquire(self) -> bool:
        """acquire() when it would not wait (it then never suspends either)."""
        if self.active < self.limit:
            self.active += 1
            return True
        return False

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self.active
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1


@dataclass(slots=True)
class LimitsSnapshot:
    concurrency: int
    in_flight: int
    rpm: float | None
    tpm: float | None
    rpm_ceiling: float | None
    tpm_ceiling: float | None
    rate_limited: int
    paused_for: float
    limiter: str | None = None  # shared limiter state ("shared", or why nothing is sent)
    pause_reason: str | None = None  # why the run (or a request) waits, while it does
    adaptive: bool = False  # the window is found from latency (no ceiling known)


class Limits:
    """Concurrency gate, request and token pacers, shared pause, and what headers teach."""

    def __init__(
        self,
        *,
        concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        slow_start: bool = True,
        concurrency_given: bool = False,
        shared: SharedPacer | None = None,
        backoff_base: float = 0.5,
        timeout: float | None = None,
    ) -> None:
        self.max_concurrency = max(1, concurrency)
        self.backoff_base = backoff_base
        self.pause_reason: str | None = None
        self._streak = 0  # 429 events in a row that named no wait
        self._shown_until = 0.0  # a long per-request wait, for the status line
        self._shown_reason: str | None = None
        self.user_rpm, self.user_tpm = rpm, tpm
        self.rpm_ceiling, self.tpm_ceiling = rpm, tpm
        self._clock, self._sleep = clock, sleep
        self.requests = Pacer(rpm / 60 if rpm else None, clock)
        self.tokens = Pacer(tpm / 60 if tpm else None, clock)
        self.gate = Gate(1 if slow_start else self.max_concurrency)
        self.paused_until = 0.0
        self.rate_limited = 0
        self._opened = not slow_start
        self._cwnd = float(self.gate.limit)
        self._told = rpm is not None or tpm is not None
        # A ceiling the user chose (rates, or an explicit --concurrency) is opened in full
        # once the first answer proves key and endpoint; otherwise the window starts at
        # INITIAL_WINDOW and grows by one per success (doubling per round trip).
        self._open_fully = self._told or concurrency_given
        # With --limiter the rpm/tpm budget (pace, pause, learned ceilings) lives in Redis and
        # the local pacers stay idle; the concurrency window is still this process's own.
        self.shared = shared
        # No ceiling known: find the server's own from latency (dropped once headers tell one).
        self.adaptive: AdaptiveWindow | None = None
        if slow_start and not self._open_fully:
            self.adaptive = AdaptiveWindow(cap=self.max_concurrency, timeout=timeout)

    @property
    def opened(self) -> bool:
        """Has the endpoint shown it works (the window may hold more than the first request)?"""
        return self._opened

    # -- the two waits every attempt goes through ------------------------------------------
    async def slot(self) -> None:
        await self.gate.acquire()

    def release(self) -> None:
        self.gate.release()

    async def pace(self, tokens: int) -> None:
        """Wait until a request costing `tokens` may be sent under every ceiling and pause."""
        if self.shared is not None:
            await self._pace_shared(self.shared, tokens)
            return
        while True:
            now = self._clock()
            if now < self.paused_until:
                await self._sleep(self.paused_until - now)
                continue
            start = max(self.requests.reserve(1), self.tokens.reserve(tokens))
            if start > now:
                await self._sleep(start - now)
                if self._clock() < self.paused_until:
                    continue  # a 429 arrived while we waited: book again after the pause
            return

    def try_pace(self, tokens: int) -> bool:
        """True when pace(tokens) would return at once and book nothing: no pause, no
        shared limiter, no rate to pace (an unlimited run skips the coroutine entirely)."""
        return (
            self.shared is None
            and not self.requests.rate
            and not self.tokens.rate
            and self._clock() >= self.paused_until
        )

    async def _pace_shared(self, shared: SharedPacer, tokens: int) -> None:
        while True:
            now = self._clock()
            paused = max(self.paused_until, shared.paused_until)
            if now < paused:
                await self._sleep(paused - now)
                continue
            start = await shared.reserve(tokens)  # one booking on the shared budget
            self._sync_shared(shared)
            now = self._clock()
            if start > now:
                await self._sleep(start - now)
            if self._clock() < max(self.paused_until, shared.paused_until):
                continue  # a 429 somewhere paused everybody while we waited: book again
            return

    def _sync_shared(self, shared: SharedPacer) -> None:
        # The engine refuses a request bigger than the TPM ceiling: the shared one counts.
        self.rpm_ceiling, self.tpm_ceiling = shared.rpm_ceiling, shared.tpm_ceiling

    def ready_at(self) -> float:
        """Earliest clock time a request could start here (the pause, then the pacers' next
        free unit): what the router compares to send each request where there is room."""
        at = self.paused_until
        for pacer in (self.requests, self.tokens):
            if pacer.rate:
                at = max(at, pacer._tat - pacer.burst)
        return at

    # -- feedback ---------------------------------------------------------------------------
    def on_success(
        self,
        headers: Mapping[str, str],
        est_tokens: int,
        real_tokens: int | None,
        *,
        latency: float | None = None,
        work: int | None = None,
        in_flight: int = 1,
    ) -> None:
        """An answer: `latency` seconds for `work` tokens, sent with `in_flight` requests out."""
        if real_tokens is not None and real_tokens > est_tokens:
            # Only debt: providers charge the estimate (max_tokens included) on arrival and
            # refund nothing, so giving unused tokens back would overrun their TPM.
            if self.shared is not None:
                self.shared.charge(real_tokens - est_tokens)
            else:
                self.tokens.adjust(real_tokens - est_tokens)
        if self.shared is not None:
            self.shared.succeeded()
            self.shared.learn(*header_limits(headers))
            if self.adaptive is not None and any(header_limits(headers)):
                self._leave_adaptive()
        else:
            self._learn(headers)
        self._streak = 0
        if self.adaptive is not None:
            self._open()
            if latency is not None and self.adaptive.observe(latency, work or 1, in_flight):
                self.gate.set_limit(self.adaptive.limit)
            return
        if not self._opened:
            self._open()
            return
        # Slow start doubles the window each round trip; after a 429, grow by one per window.
        if self._cwnd < self.max_concurrency:
            step = 1.0 if self.rate_limited == 0 else 1.0 / self._cwnd
            self._cwnd = min(float(self.max_concurrency), self._cwnd + step)
            self.gate.set_limit(int(self._cwnd))
        self._recover(self.requests, self.rpm_ceiling)
        self._recover(self.tokens, self.tpm_ceiling)

    def _leave_adaptive(self) -> None:
        """A ceiling is known now: the provider's limits drive the window, as before."""
        self._cwnd = float(max(self.gate.limit, min(INITIAL_WINDOW, self.max_concurrency)))
        self.adaptive = None
        if self._opened:
            self.gate.set_limit(int(self._cwnd))

    def on_reachable(self) -> None:
        """The endpoint answered something other than 401/403: key and URL work, open up."""
        self._open()

    def on_error(self, status: int | None, kind: str, unreachable: bool) -> bool:
        """A failed attempt. Any HTTP answer but 401/403 proves URL and key (open up); a
        timeout, a dropped connection or a 503 is congestion. True: a timeout before the
        window opened (the engine probes the endpoint at once)."""
        if status is not None and status not in (401, 403):
            self.on_reachable()
        if kind == "timeout" or status == 503 or (kind == "connection" and not unreachable):
            self.on_congestion()
            return not self._opened
        return False

    def on_congestion(self) -> None:
        """A timeout, a dropped connection or an overloaded 503 (adaptive window only)."""
        if self.adaptive is not None and self._opened and self.adaptive.on_congestion():
            self.gate.set_limit(self.adaptive.limit)

    def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        if self.adaptive is not None:
            self.gate.set_limit(self.adaptive.limit)
            return
        full = self._open_fully or self.max_concurrency <= INITIAL_WINDOW
        self._cwnd = float(self.max_concurrency if full else INITIAL_WINDOW)
        self.gate.set_limit(int(self._cwnd))

    def on_rate_limited(self, headers: Mapping[str, str], wait: float | None) -> None:
        """A 429 rate_limit_exceeded: pause everyone, then go on at a lower pace."""
        self.rate_limited += 1
        now = self._clock()
        # 429s answered while a pause is on belong to the same congestion event (they were
        # all in flight together): slow down once per event, not once per 429.
        fresh = now >= self.paused_until
        if wait is not None:
            pause, self.pause_reason = wait, "429 retry-after"
        else:
            # Nothing said how long: back off exponentially, up to a cap, as the 429s go on.
            if fresh:
                self._streak += 1
            pause = min(RATE_BACKOFF_MAX, max(0.05, self.backoff_base) * 2 ** (self._streak - 1))
            self.pause_reason = "429 backoff"
        self.paused_until = max(self.paused_until, now + pause)
        if self.shared is not None:
            # This process stops at once; the others as soon as their next booking returns
            # (Redis slows the shared pace once per congestion event, as below).
            self.shared.learn(*header_limits(headers))
            self.shared.rate_limited(pause)
            if fresh and self.adaptive is not None:
                self.on_congestion()
            elif fresh and not self._told:
                self._cwnd = max(1.0, self._cwnd / 2)
                self.gate.set_limit(int(self._cwnd))
            return
        self._learn(headers)
        for pacer, ceiling in ((self.requests, self.rpm_ceiling), (self.tokens, self.tpm_ceiling)):
            if fresh and pacer.rate and ceiling:
                pacer.rate = max(ceiling / 60 * MIN_FRACTION, pacer.rate * BACKOFF_FACTOR)
            pacer.hold_until(self.paused_until)
        if fresh and self.adaptive is not None:
            self.on_congestion()
        elif fresh and not self._told:
            self._cwnd = max(1.0, self._cwnd / 2)
            self.gate.set_limit(int(self._cwnd))

    def _recover(self, pacer: Pacer, ceiling: float | None) -> None:
        if pacer.rate and ceiling:
            target = ceiling / 60 * (1.0 if self._is_user(ceiling, pacer) else HEADER_MARGIN)
            if pacer.rate < target:
                pacer.rate = min(target, pacer.rate + target * 0.01)

    def _is_user(self, ceiling: float, pacer: Pacer) -> bool:
        user = self.user_rpm if pacer is self.requests else self.user_tpm
        return user is not None and ceiling == user

    def _learn(self, headers: Mapping[str, str]) -> None:
        """Adopt ceilings from x-ratelimit-limit-* when the user gave none (or a higher one)."""
        if (
            "x-ratelimit-limit-requests" not in headers
            and "x-ratelimit-limit-tokens" not in headers
        ):
            return  # most self-hosted servers send neither: nothing to learn, every answer
        for kind, pacer in (("requests", self.requests), ("tokens", self.tokens)):
            raw = headers.get(f"x-ratelimit-limit-{kind}")
            if not raw:
                continue
            try:
                limit = float(raw)
            except ValueError:
                continue
            user = self.user_rpm if kind == "requests" else self.user_tpm
            if limit <= 0 or (user is not None and user <= limit):
                continue
            current = self.rpm_ceiling if kind == "requests" else self.tpm_ceiling
            if self.adaptive is not None:
                self._leave_adaptive()
            if current != limit:
                if kind == "requests":
                    self.rpm_ceiling = limit
                else:
                    self.tpm_ceiling = limit
                pacer.rate = limit / 60 * HEADER_MARGIN
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is not None and remaining.strip() in ("0", "0.0"):
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    pacer.hold_until(self._clock() + reset)
                    self.note_wait(reset, f"{kind} quota used up (x-ratelimit-reset)")

    def note_wait(self, seconds: float, reason: str) -> None:
        """Show a wait that is not the run-wide pause (a 503's retry-after, a quota reset)."""
        until = self._clock() + seconds
        if until > self._shown_until:
            self._shown_until, self._shown_reason = until, reason

    def snapshot(self) -> LimitsSnapshot:
        now = self._clock()
        if self.shared is not None:
            sh = self.shared
            return LimitsSnapshot(
                concurrency=self.gate.limit,
                in_flight=self.gate.active,
                rpm=sh.rpm,
                tpm=sh.tpm,
                rpm_ceiling=sh.rpm_ceiling,
                tpm_ceiling=sh.tpm_ceiling,
                rate_limited=self.rate_limited,
                paused_for=max(0.0, max(self.paused_until, sh.paused_until) - now),
                limiter=sh.status,
                pause_reason=self.pause_reason if now < self.paused_until else "shared limiter",
            )
        paused_for = max(0.0, self.paused_until - now)
        reason = self.pause_reason if paused_for > 0 else None
        if self._shown_until - now > paused_for:
            paused_for, reason = self._shown_until - now, self._shown_reason
        return LimitsSnapshot(
            concurrency=self.gate.limit,
            in_flight=self.gate.active,
            rpm=self.requests.rate * 60 if self.requests.rate else None,
            tpm=self.tokens.rate * 60 if self.tokens.rate else None,
            rpm_ceiling=self.rpm_ceiling,
            tpm_ceiling=self.tpm_ceiling,
            rate_limited=self.rate_limited,
            paused_for=paused_for,
            pause_reason=reason,
            adaptive=self.adaptive is not None,
        )
