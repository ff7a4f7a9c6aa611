"""Adaptive concurrency: how many requests a server can work on at once, found from its answers.

Self-hosted servers (vLLM, llama.cpp, Ollama, TGI) and most proxies publish no rate-limit
headers. They have a fixed number of parallel slots and a FIFO queue in front of them, so every
request sent beyond the slots only waits in that queue: throughput stays flat while latency grows
until requests time out (and, abandoned, keep their slot on the server). This window keeps the
server's slots busy with a small queue, from what the answers show:

* **Work-normalised latency** (our addition). LLM answers differ in length by 100x, so a raw
  latency says nothing. Each sample is divided by the work it asked (completion tokens; prompt
  tokens for embeddings), and a round compares the *sum* of latencies with the sum of the
  unloaded latencies its work would have taken: `base x sum(work)`.
* **The unloaded baseline** is the lowest seconds-per-token seen, as TCP Vegas' BaseRTT and
  BBR's min_rtt filter; the first request goes alone, so it is measured unloaded. (Unlike BBR
  it does not expire: a server that gets slower for good is then under-used, never flooded.)
* **Queue estimate, TCP Vegas** (Brakmo & Peterson, 1995): with `g = expected / actual`, a
  window W keeps `W x (1 - g)` requests waiting in the server's queue and `W x g` in service
  (Little's law). Vegas' thresholds, in the `alpha = 3 log10(W)`, `beta = 6 log10(W)` form of
  Netflix concurrency-limits' VegasLimit (here halved: LLM requests are long, a queue costs more):
  below alpha the window grows by one per round, above beta it falls.
* **Jump, don't crawl, Netflix Gradient2** (concurrency-limits, Gradient2Limit): on queueing
  the new window is what is in service plus a queue allowance (`W x gradient + queueSize`), not
  one less, and a round never takes more than half (its gradient is clamped at 0.5). Also from
  Gradient2: no growth while the pipeline is app-limited (fewer than half the window in flight).
* **Startup and plateau, BBR** (Cardwell et al., 2016): the window doubles each round until
  queueing shows (slow start), and also stops doubling when a doubled window no longer raises
  the delivery rate (completion tokens per second) by 25 %, BBR's "full pipe" test.
* **Timeouts, TCP Reno/AIMD**: a timeout, a dropped connection or a 503 halves the window, once
  per round (answers in flight together are one congestion event). And a window never grows
  while the slowest answer of a round took over half the per-attempt timeout: queueing at
  that point would turn into timeouts, then into retries queued behind abandoned requests.

A *round* is one window's worth of answers (one round trip, as in TCP), and at least eight.
Time comes from the answers' measured latencies only, so the controller is a pure state machine
that tests drive with made-up samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

INITIAL = 2  # once the endpoint has answered: the first request measured the baseline alone
GROWTH_PLATEAU = 1.25  # a doubled window must raise the delivery rate by this much (BBR)
TIMEOUT_SHARE = 0.5  # never grow while an answer takes over this share of the timeout
# Slow start can overshoot to ~2x the slots before the first queued answer is back (answers
# that all finish together make it worst), so a request may then wait two service times:
# slow start only grows while answers take under a quarter of the timeout.
SLOW_START_TIMEOUT_SHARE = 0.25
DECREASE = 0.5  # multiplicative decrease on a timeout / dropped connection / 503
SLOW_START_STEP = 0.5  # per unqueued answer: x1.5 per round, so an overshoot queues < N
SLOW_START_QUEUE = 1.5  # in slow start, an answer slower than 1.5x its unloaded time queued
MIN_ROUND = 8  # answers per round at least: answers differ in length, two are only noise
MAX_STEP_DOWN = 0.5  # a round of queueing never takes more than this (Gradient2's 0.5 clamp)


def work_of(usage: dict[str, Any] | None) -> int:
    """What an answer cost the server: completion tokens (or prompt tokens for embeddings,
    which generate none); 1 when the usage says nothing."""
    for key in ("completion_tokens", "prompt_tokens", "total_tokens"):
        value = (usage or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 1


def alpha(window: float) -> float:
    """Queued requests below which the window may grow (Vegas alpha, 1.5 log10 W, at least 1)."""
    return max(1.0, 1.5 * math.log10(max(window, 1.0)))


def beta(window: float) -> float:
    """Queued requests above which the window falls (Vegas beta, 3 log10 W, at least 2)."""
    return max(2.0, 3.0 * math.log10(max(window, 1.0)))


@dataclass(slots=True)
class _Round:
    """What one window's worth of answers showed."""

    samples: int = 0
    latency: float = 0.0  # sum of seconds
    work: float = 0.0  # sum of work units (tokens)
    in_flight: float = 0.0  # sum of requests in flight when each was sent
    slowest: float = 0.0


class AdaptiveWindow:
    """The window (requests in flight) for a server whose ceiling nobody told us."""

    def __init__(self, *, cap: int, timeout: float | None = None, initial: int = INITIAL) -> None:
        self.cap = max(1, cap)
        self.timeout = timeout
        self.window = float(min(self.cap, max(1, initial)))
        self.base: float | None = None  # seconds per work unit, unloaded
        self.slow_start = True
        self.rounds = 0
        self.queue = 0.0  # requests waiting at the server, as the last round estimated
        self.served = 0.0  # requests in service at the server, as the last round estimated
        self._round = _Round()
        self._round_size = max(MIN_ROUND, int(self.window))
        self._last_rate: float | None = None  # delivery rate (work/s) of the previous round
        self._last_in_flight = 0.0
        self._regrow_to = 0.0  # after a timeout: the window before it (TCP's ssthresh)
        self._decreased_in = -1  # the round of the last multiplicative decrease

    @property
    def limit(self) -> int:
        return max(1, min(self.cap, int(self.window)))

    def observe(self, latency: float, work: int, in_flight: int) -> bool:
        """One answer: `latency` seconds for `work` tokens, sent with `in_flight` others out.

        Returns True when the window changed (the caller moves its gate).
        """
        if latency <= 0:
            return False
        per_unit = latency / max(1, work)
        if self.base is None or per_unit < self.base:
            self.base = per_unit
        r = self._round
        r.samples += 1
        r.latency += latency
        r.work += max(1, work)
        r.in_flight += max(1, in_flight)
        r.slowest = max(r.slowest, latency)
        before = self.limit
        regrow = self.slow_start or self.window < self._regrow_to
        unqueued = per_unit <= SLOW_START_QUEUE * self.base
        proven = 2.0 * max(1, in_flight)  # an answer proves room for what was out with it
        if (
            regrow
            and unqueued
            and self.window < proven
            and not self._near(latency, SLOW_START_TIMEOUT_SHARE)
        ):
            # TCP slow start, gentler: half a request more per answer that did not queue, so
            # the window grows 1.5x each round trip from the first answers on (not at round
            # ends). By the time the first queued answer is back, at most half the slots'
            # worth waits: no answer queues longer than one service time. Never past twice
            # what an answer came back with. (After a timeout, the same up to the window
            # before it: TCP's ssthresh.)
            self.window = min(float(self.cap), self.window + SLOW_START_STEP, proven)
        elif self.slow_start and per_unit > 2 * SLOW_START_QUEUE * self.base:
            # HyStart's idea: the first clearly queued answer ends slow start at once, and
            # takes back the growth of the round trip it took to see it.
            self.slow_start = False
            self.window = max(1.0, self.window / (1 + SLOW_START_STEP))
        if r.samples < self._round_size:
            return self.limit != before
        self._end_round(r)
        self._round = _Round()
        self._round_size = max(MIN_ROUND, self.limit)
        return self.limit != before

    def _end_round(self, r: _Round) -> None:
        assert self.base is not None
        self.rounds += 1
        in_flight = r.in_flight / r.samples
        gradient = min(1.0, self.base * r.work / r.latency)
        self.queue = in_flight * (1.0 - gradient)
        self.served = in_flight * gradient
        # Delivery rate, by Little's law: `in_flight` requests each taking the mean latency.
        rate = in_flight * r.work / r.latency
        near_timeout = self._near(r.slowest)
        app_limited = in_flight < self.window / 2  # Gradient2: the source, not the server
        target = self.served + alpha(self.served)
        if near_timeout and self.queue >= 0.5:
            # The queue alone could push the next answers past the timeout: drain it.
            self.window = max(1.0, min(self.window, self.served + 0.5))
            self.slow_start = False
        elif self.queue > beta(self.window) or (self.slow_start and self.queue >= alpha(in_flight)):
            self.window = max(1.0, self.window * MAX_STEP_DOWN, min(self.window, target))
            self.slow_start = False
            self._regrow_to = 0.0
        elif near_timeout or app_limited:
            pass
        elif self.slow_start:
            plateau = (
                self._last_rate is not None
                and in_flight >= 2 * self._last_in_flight  # the doubled window was really used
                and rate < self._last_rate * GROWTH_PLATEAU
            )
            if plateau:
                self.slow_start = False
                self.window = max(1.0, min(self.window, self._last_in_flight + 1))
        elif self.queue < alpha(self.window):
            self.window = min(float(self.cap), self.window + 1)
        if self._last_rate is None or rate > self._last_rate:
            self._last_rate, self._last_in_flight = rate, in_flight

    def _near(self, latency: float, share: float = TIMEOUT_SHARE) -> bool:
        return self.timeout is not None and latency > share * self.timeout

    def on_congestion(self) -> bool:
        """A timeout, a dropped connection or a 503: halve, once per round."""
        if self._decreased_in == self.rounds:
            return False
        self._decreased_in = self.rounds
        before = self.limit
        # One request stuck on the server times out as well: answers that show no queue
        # may win the window back quickly (below), answers that queue may not.
        self._regrow_to = self.window
        self.window = max(1.0, self.window * DECREASE)
        self.slow_start = False
        self._round = _Round()
        self._round_size = max(MIN_ROUND, self.limit)
        return self.limit != before
