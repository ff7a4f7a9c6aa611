"""adaptive.py against a simulated self-hosted server, in virtual time (no sleeps, exact).

`simulate` is a discrete-event model of what llama.cpp / vLLM do: N slots, a FIFO queue, service
time proportional to the completion tokens, and a client that gives up after `timeout` (the
abandoned request keeps its slot, the client retries it). The client keeps `limit` requests
out, read from the controller after every event, exactly as live/limits.py's gate does.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass

import pytest

from burstcli.live.adaptive import INITIAL, AdaptiveWindow
from burstcli.live.limits import Limits


class Fixed:
    def __init__(self, n: int) -> None:
        self.limit = n

    def observe(self, latency: float, work: int, in_flight: int) -> bool:
        return False

    def on_congestion(self) -> bool:
        return False


@dataclass
class Sim:
    elapsed: float
    completed: int
    timeouts: int
    windows: list[int]

    @property
    def throughput(self) -> float:
        return self.completed / self.elapsed


def simulate(
    ctl: AdaptiveWindow | Fixed,
    *,
    slots: int,
    tokens: list[int],
    per_token: float = 0.01,
    timeout: float = 60.0,
) -> Sim:
    now = 0.0
    seq = itertools.count()
    events: list[tuple[float, int, str, int, int]] = []  # time, seq, kind, request, attempt
    todo = deque(range(len(tokens)))
    attempt: dict[int, int] = {}
    sent_at: dict[int, float] = {}
    sent_with: dict[int, int] = {}
    busy = 0
    queue: deque[tuple[int, int]] = deque()
    out = 0  # the client's requests in flight
    done = timeouts = 0
    finished: set[int] = set()
    windows: list[int] = []

    def start(req: int, att: int) -> None:
        nonlocal busy
        busy += 1
        heapq.heappush(events, (now + per_token * tokens[req], next(seq), "done", req, att))

    def send() -> None:
        nonlocal out
        # The first request goes alone until it answers (INITIAL is for after that).
        limit = 1 if done == 0 and isinstance(ctl, AdaptiveWindow) else ctl.limit
        while out < limit and todo:
            req = todo.popleft()
            attempt[req] = attempt.get(req, 0) + 1
            out += 1
            sent_at[req], sent_with[req] = now, out
            heapq.heappush(events, (now + timeout, next(seq), "timeout", req, attempt[req]))
            if busy < slots:
                start(req, attempt[req])
            else:
                queue.append((req, attempt[req]))

    send()
    while events:
        now, _, kind, req, att = heapq.heappop(events)
        if kind == "done":
            busy -= 1
            if queue:
                start(*queue.popleft())
            if att == attempt[req] and req not in finished:
                finished.add(req)
                out -= 1
                done += 1
                ctl.observe(now - sent_at[req], tokens[req], sent_with[req])
        elif att == attempt[req] and req not in finished:  # the client gives up
            out -= 1
            timeouts += 1
            ctl.on_congestion()
            if attempt[req] <= 5:  # --max-retries 5
                todo.appendleft(req)  # retried at once; the server still works on the old one
            else:
                finished.add(req)  # a failed record
        windows.append(ctl.limit)
        send()
        if len(finished) == len(tokens):
            break
    return Sim(now, done, timeouts, windows)


def run(ctl: AdaptiveWindow | Fixed, **kw: object) -> Sim:
    return simulate(ctl, **kw)  # type: ignore[arg-type]


def lengths(kind: str, n: int, seed: int = 3) -> list[int]:
    rng = random.Random(seed)
    if kind == "fixed":
        return [100] * n
    if kind == "short":
        return [rng.randint(5, 40) for _ in range(n)]
    return [rng.choice((rng.randint(5, 40), rng.randint(200, 800))) for _ in range(n)]


SWEEP = (1, 2, 4, 8, 16, 32, 64)


@pytest.mark.parametrize("slots", [1, 4, 16])
@pytest.mark.parametrize("kind", ["fixed", "short", "mixed"])
def test_adaptive_matches_the_best_fixed_window_without_timeouts(slots: int, kind: str) -> None:
    tokens = lengths(kind, 60 * slots)
    longest = max(tokens) * 0.01
    # Generous for one answer, not for a queue of 50. (Slow start may overshoot to ~2x the
    # slots before the first queued answer is back: at 4x, waiting two answers still fits.)
    timeout = 4 * longest
    best = max(run(Fixed(c), slots=slots, tokens=tokens, timeout=timeout).throughput for c in SWEEP)
    ctl = AdaptiveWindow(cap=50, timeout=timeout)
    sim = run(ctl, slots=slots, tokens=tokens, timeout=timeout)
    assert sim.timeouts == 0
    assert sim.throughput >= 0.9 * best, (sim.throughput, best)
    # Settled within a small factor of the slots, never at the cap.
    settled = sim.windows[len(sim.windows) // 2 :]
    assert max(settled) <= 2 * slots + 3, settled
    assert min(settled) >= max(1, slots // 2)


def test_the_old_default_window_against_one_slot_times_out_and_adaptive_does_not() -> None:
    tokens = lengths("fixed", 40)  # 1 s each, timeout 10 s
    old = run(Fixed(50), slots=1, tokens=tokens, timeout=10.0)
    assert old.timeouts > 0  # 50 in flight wait up to 50 s in the server's queue
    new = run(AdaptiveWindow(cap=50, timeout=10.0), slots=1, tokens=tokens, timeout=10.0)
    assert new.timeouts == 0 and new.completed == 40


def test_slow_start_doubles_per_round_while_nothing_queues() -> None:
    ctl = AdaptiveWindow(cap=50)
    assert ctl.limit == INITIAL
    for _ in range(4):  # unqueued answers: half a request more each
        ctl.observe(1.0, 100, 2)
    assert ctl.limit == 4 and ctl.slow_start
    assert ctl.base == pytest.approx(0.01)


def test_queueing_ends_slow_start_at_what_the_server_serves() -> None:
    ctl = AdaptiveWindow(cap=50)
    ctl.window = 16.0
    ctl.base = 0.01
    ctl._round_size = 16
    # 16 in flight, each answer took twice its unloaded time: 8 served, 8 queued.
    for _ in range(16):
        ctl.observe(2.0, 100, 16)
    assert not ctl.slow_start
    assert ctl.served == pytest.approx(8.0) and ctl.queue == pytest.approx(8.0)
    assert ctl.limit == 9  # 8 in service + a queue allowance of one (alpha)


def test_latency_is_normalised_per_token() -> None:
    # Long and short answers, none queued: per token they all cost the same, so no queue.
    ctl = AdaptiveWindow(cap=50)
    ctl.window, ctl.base, ctl._round_size, ctl.slow_start = 8.0, 0.01, 8, False
    for i in range(8):
        work = 500 if i % 2 else 5
        ctl.observe(0.01 * work, work, 8)
    assert ctl.queue == pytest.approx(0.0)
    assert ctl.limit == 9  # no queue: additive increase


def test_a_timeout_halves_once_per_round_and_unqueued_answers_win_it_back() -> None:
    ctl = AdaptiveWindow(cap=50, timeout=60)
    ctl.window, ctl.base, ctl.slow_start = 16.0, 0.01, False
    assert ctl.on_congestion() and ctl.limit == 8
    assert not ctl.on_congestion() and ctl.limit == 8  # same round: the same event
    for _ in range(16):
        ctl.observe(1.0, 100, 8)  # no queue: one request was stuck, not the server full
    assert ctl.limit >= 16


def test_no_growth_when_answers_near_the_timeout() -> None:
    ctl = AdaptiveWindow(cap=50, timeout=10.0)
    ctl.window, ctl.base, ctl._round_size = 2.0, 0.01, 2
    for _ in range(2):
        ctl.observe(6.0, 300, 2)  # 2 s of work, 6 s of latency: queued, past half the timeout
    assert ctl.limit == 1


def test_app_limited_rounds_do_not_grow_the_window() -> None:
    ctl = AdaptiveWindow(cap=50)
    ctl.window, ctl.base, ctl._round_size, ctl.slow_start = 20.0, 0.01, 20, False
    for _ in range(20):
        ctl.observe(1.0, 100, 3)  # only 3 out: the input, not the server, is the limit
    assert ctl.limit == 20


# -- how limits.py uses it -----------------------------------------------------------------


def make(**kw: object) -> Limits:
    return Limits(concurrency=50, clock=lambda: 0.0, **kw)  # type: ignore[arg-type]


def test_no_ceiling_known_means_adaptive_and_any_answer_opens_it() -> None:
    lim = make(timeout=30.0)
    assert lim.snapshot().adaptive and lim.gate.limit == 1
    lim.on_reachable()  # e.g. a 500 or a models-list probe: URL and key work
    assert lim.gate.limit == INITIAL and lim.opened
    for _ in range(2):
        lim.on_success({}, 10, 10, latency=0.5, work=50, in_flight=2)
    assert lim.gate.limit == INITIAL + 1


def test_explicit_concurrency_and_told_rates_stay_fixed() -> None:
    for kw in ({"concurrency_given": True}, {"rpm": 600.0}, {"tpm": 10_000.0}):
        lim = make(**kw)
        assert not lim.snapshot().adaptive
        lim.on_success({}, 10, 10, latency=9.0, work=1, in_flight=50)
        assert lim.gate.limit == 50


def test_headers_that_tell_a_ceiling_turn_adaptive_off() -> None:
    lim = make()
    lim.on_success({"x-ratelimit-limit-requests": "600"}, 10, 10, latency=1.0, work=10)
    assert not lim.snapshot().adaptive
    assert lim.gate.limit == 10  # the classic initial window, then slow start to the cap


def test_congestion_before_the_first_answer_does_nothing() -> None:
    lim = make()
    lim.on_congestion()
    assert lim.gate.limit == 1 and not lim.opened
