"""Adaptive concurrency end to end: `burstq run` against the mock in slots mode over HTTP.

The mock behaves like llama.cpp / vLLM (N slots, a FIFO queue, service time per completion
token, abandoned requests keep their slot), sends no rate-limit headers, and counts what it saw.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from .conftest import read_jsonl, run_args, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def rows(n: int, *, varying: bool, seed: int = 5) -> list[dict[str, object]]:
    rng = random.Random(seed)
    # The mock echoes the prompt: its length sets the answer's tokens (chars / 4).
    return [
        {"id": f"r{i}", "input": "x" * (rng.randint(16, 400) if varying else 200)} for i in range(n)
    ]


@pytest.mark.parametrize("slots", [1, 4, 16])
@pytest.mark.parametrize("varying", [False, True], ids=["fixed", "varying"])
def test_window_settles_near_the_slots_with_no_timeouts(
    tmp_path: Path, server, slots: int, varying: bool
) -> None:
    srv = server(slots=slots, slot_token_seconds=0.001)
    n = 20 * slots + 30
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n, varying=varying))
    out = tmp_path / "out.jsonl"
    # 1 s per attempt: ~20x the longest answer, but 50 in flight on one slot would wait 2.5 s.
    res = run_cli(run_args(srv, inp, out, "--timeout", "1", "--max-retries", "0"))
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == n and all(r["status"] == "completed" for r in recs)
    assert all(r["attempts"] == 1 for r in recs)  # no timeout, so no retry
    stats = srv.stats()
    assert stats["slots_abandoned"] == 0
    # The window settled within a small factor of the slots instead of running to 50.
    assert stats["peak_in_flight"] <= 2 * slots + 4, stats
    # ... and used (nearly) all of them: on a busy runner the client itself can be the
    # bottleneck for a moment, so 16 slots may peak at 13 busy; a window stuck low would not.
    assert stats["slots_peak_busy"] >= max(1, 3 * slots // 4), stats


def test_the_fixed_default_window_times_out_on_one_slot(tmp_path: Path, server) -> None:
    # The control: what the adaptive window avoids (the timeout cascade).
    srv = server(slots=1, slot_token_seconds=0.001)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(50, varying=False))
    out = tmp_path / "out.jsonl"
    res = run_cli(
        run_args(srv, inp, out, "--timeout", "1", "--max-retries", "0", "--concurrency", "50")
    )
    assert res.exit_code == 1
    failed = [r for r in read_jsonl(out) if r["status"] == "failed"]
    assert failed and all(r["error"]["type"] == "timeout" for r in failed)
    assert srv.stats()["slots_abandoned"] > 0


def test_a_first_request_that_times_out_does_not_serialise_the_run(tmp_path: Path, server) -> None:
    srv = server(latency=0.2, hang_seconds=30)
    data = [{"id": "slow", "input": "stuck [[mock:timeout*3]]"}] + [
        {"id": f"r{i}", "input": f"fine {i}"} for i in range(40)
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    res = run_cli(run_args(srv, inp, out, "--timeout", "1.5"))
    elapsed = time.monotonic() - started
    assert res.exit_code == 0, res.output
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert recs["slow"]["status"] == "completed" and recs["slow"]["attempts"] == 4
    # A models-list probe showed the endpoint up while the first request hung: the others
    # went in parallel (one at a time they alone would take 40 x 0.2 = 8 s) ...
    assert srv.stats()["peak_in_flight"] > 2
    assert elapsed < 8.0
    # ... and finished long before the stuck one's four attempts were over.
    others = [recs[f"r{i}"]["finished_at"] for i in range(40)]
    assert max(others) < recs["slow"]["finished_at"]
