"""Scenario 13 selfhosted (issue 13): a self-hosted server with no rate-limit headers.

The mock in slots mode (`burstq mock-server --slots N`: N parallel slots, a FIFO queue, service
time per completion token, abandoned requests keep their slot) stands in for llama.cpp / vLLM.
For each N, the adaptive window (no --concurrency) is measured against a sweep of fixed
`--concurrency` values; the baseline is the best of the sweep, run in the same bench run.
Throughput is counted on the server's side (first request to last answer), so process start-up
does not blur it; timeouts are what the server saw abandoned plus failed timeout records.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import harness as h

if TYPE_CHECKING:
    from .scenarios import Context

TOKEN_SECONDS = 0.002  # a slot's seconds per completion token (500 tok/s: a fast test server)
# Prompt lengths in characters; the mock's answer echoes them (about chars / 4 tokens).
ANSWERS = {"short": (16, 160), "long": (400, 1600)}


def _input(path: Path, n: int, chars: tuple[int, int], seed: int) -> tuple[Path, float]:
    rng = random.Random(seed)
    lengths = [rng.randint(*chars) for _ in range(n)]
    with path.open("wb") as f:
        for i, length in enumerate(lengths):
            f.write(orjson.dumps({"id": f"r{i}", "input": "x" * length}) + b"\n")
    longest = (max(lengths) + 6) / 4 * TOKEN_SECONDS
    return path, longest


def _one(
    ctx: Context, inp: Path, slots: int, concurrency: int | None, timeout: float, n: int
) -> dict[str, Any]:
    extra = ["--slots", str(slots), "--token-seconds", str(TOKEN_SECONDS)]
    with h.mock_server(ctx.workdir, extra=extra) as srv:
        out = ctx.fresh_output(f"out-selfhosted-{slots}-{concurrency}.jsonl")
        args = ["--timeout", f"{timeout:g}", "--max-retries", "2"]
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        run = h.burstq_run(inp, out, srv, *args)
        if run.returncode not in (0, 1):
            from .scenarios import BenchError

            raise BenchError(f"{ctx.label}: burstq exited {run.returncode}: {h.tail(run)}")
        st = srv.stats()
    ok = st["by_status"].get("200", 0)
    span = (st["last_response_at"] or 0) - (st["first_request_at"] or 0)
    timed_out = 0
    for line in out.read_bytes().splitlines():
        rec = orjson.loads(line)
        if rec["status"] == "failed" and (rec.get("error") or {}).get("type") == "timeout":
            timed_out += 1
    return {
        "completed": ok,
        "span_s": span,
        "rps": ok / span if span > 0 else 0.0,
        "abandoned": st.get("slots_abandoned", 0),
        "timeouts": st.get("slots_abandoned", 0) + timed_out,
        "peak_in_flight": st["peak_in_flight"],
        "peak_queue": st.get("slots_peak_queue"),
        "requests": n,
    }


def selfhosted(ctx: Context) -> None:
    from .scenarios import Figure

    quick = ctx.quick
    # --quick checks the scenario runs (short answers, a 3-point sweep, ~1 s of work a run):
    # its ratios carry the ramp-up of a run that short. The full run is the measurement.
    kinds = ("short",) if quick else ("short", "long")
    for slots in (1, 4, 16):
        wide = {1, 2, 4, 8, 16, 32, 50}
        sweep = sorted({slots, 2 * slots} if quick else wide)
        for kind in kinds:
            chars = ANSWERS[kind]
            mean_service = (sum(chars) / 2 / 4) * TOKEN_SECONDS
            seconds = 1.0 if quick else 10.0  # of work at full use of the slots
            n = max(20, int(seconds * slots / mean_service))
            inp, longest = _input(ctx.workdir / f"in-selfhosted-{slots}-{kind}.jsonl", n, chars, 7)
            timeout = 4 * longest  # one answer fits 4x; a queue of 50 on one slot does not
            ctx.log(
                f"slots {slots}, {kind} answers: {n} requests, timeout {timeout:.2f} s, "
                f"sweep {sweep}"
            )
            fixed = {c: _one(ctx, inp, slots, c, timeout, n) for c in sweep}
            best_c = max(fixed, key=lambda c: fixed[c]["rps"])
            adaptive = _one(ctx, inp, slots, None, timeout, n)
            best = fixed[best_c]["rps"]
            ctx.add(
                Figure(
                    ctx.label,
                    f"N={slots} {kind}: adaptive throughput",
                    adaptive["rps"],
                    "req/s",
                    f"best fixed (--concurrency {best_c})",
                    best,
                    ">= 0.9 x best fixed",
                    best > 0 and adaptive["rps"] >= 0.9 * best,
                    f"peak in flight {adaptive['peak_in_flight']}, server queue peak "
                    f"{adaptive['peak_queue']}",
                    {"adaptive": adaptive, "fixed": fixed},
                )
            )
            ctx.add(
                Figure(
                    ctx.label,
                    f"N={slots} {kind}: adaptive timeouts",
                    adaptive["timeouts"],
                    "timeouts",
                    "fixed --concurrency 50" if 50 in fixed else f"fixed {max(sweep)}",
                    fixed[max(sweep)]["timeouts"],
                    "0",
                    adaptive["timeouts"] == 0,
                    baseline_unit="timeouts",
                )
            )
