"""Scenarios 2 overhead and 12 features: burstq end to end against the raw aiohttp client.

Both sides are timed the same way, from spawn to exit of their own process (interpreter start,
imports and, for burstq, hashing, scanning and writing OUTPUT included), on fresh zero-latency
servers, raw and burstq alternating so that load from elsewhere on the machine hits both sides
of a ratio; medians of `overhead_repeat` runs. CPU per request (user + system of the process,
from wait4, divided by the requests) is the figure such load distorts least.

- 2 overhead: plain runs, no limits, at each concurrency, on the project's mock server (a full
  aiohttp application, which shares the 2 cores with the client) and on bench/fastserver.py
  (canned answers, next to no CPU per request). Targets (issue 19): >= 85 % of the raw
  client's requests/s, CPU per request <= 120 % of the raw client's.
- 12 features: the same run at one concurrency on the fast server, with what the hot path can
  carry: an --endpoints file of two endpoints (two fast servers, half the concurrency each),
  --prompt + --schema over data rows (the fast server answers structured requests with JSON
  that matches the bench's schema), and --cache on an empty cache. Target: >= 75 % of the raw
  client each; what each costs is its CPU per request above a plain burstq run measured
  alongside.
"""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from . import harness as h
from .scenarios import BenchError, Context, Figure, _check

SCHEMA = "label: one of pos/neg, score float"  # bench/fastserver.py answers it
PROMPT = "Review: {{ text }}"


def _raw(srv: h.Server, n: int, conc: int, sdk: bool = False) -> dict[str, Any]:
    argv = [h.PYTHON, "-m", "bench.rawclient", srv.base_url, "-n", str(n), "-c", str(conc)]
    run = h.run_child([*argv, "--sdk"] if sdk else argv)
    if run.returncode != 0:
        raise BenchError(f"baseline client failed ({run.returncode}): {h.tail(run)}")
    res: dict[str, Any] = orjson.loads(run.stdout)
    if res["ok"] != n:
        raise BenchError(f"baseline client: {res['ok']}/{n} answers ok")
    # rps: spawn to exit, like burstq's; steady_rps: first request to last answer, in-process.
    res["steady_rps"] = res["rps"]
    res["wall_s"], res["cpu_s"], res["rps"] = run.wall, run.cpu, n / run.wall
    return res


def _burstq(run: h.ChildRun, out: Path, n: int) -> dict[str, Any]:
    span = h.finished_span(out)
    return {
        "rps": n / run.wall,
        "wall_s": run.wall,
        "cpu_s": run.cpu,
        "steady_rps": n / span if span else None,
        "maxrss_mb": run.maxrss_mb,
    }


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] or 0.0 for r in runs)


def overhead(ctx: Context) -> None:
    s = ctx.sizes
    n = s.overhead_requests
    inp = ctx.input_file(n)
    starts: dict[str, Callable[[], Any]] = {
        "mock server": lambda: h.mock_server(ctx.workdir),
        "fast server": lambda: h.fast_server(ctx.workdir),
    }
    raw_first: dict[int, float] = {}
    for sname in s.overhead_servers:
        start = starts[sname]
        for conc in s.overhead_concurrency:
            raws: list[dict[str, Any]] = []
            runs: list[dict[str, Any]] = []
            for _ in range(s.overhead_repeat):
                with start() as srv:
                    raws.append(_raw(srv, n, conc))
                with start() as srv:
                    out = ctx.fresh_output(f"out-overhead-{conc}.jsonl")
                    run = h.burstq_run(inp, out, srv, "--concurrency", str(conc), quiet=True)
                    _check(run, out, n, f"{ctx.label} (c={conc})")
                    runs.append(_burstq(run, out, n))
            rate, raw_rate = _med(runs, "rps"), _med(raws, "rps")
            raw_first.setdefault(conc, raw_rate)
            cpu_us, raw_cpu_us = _med(runs, "cpu_s") / n * 1e6, _med(raws, "cpu_s") / n * 1e6
            steady, raw_steady = _med(runs, "steady_rps"), _med(raws, "steady_rps")
            k = s.overhead_repeat
            details = {
                "burstq_runs": runs,
                "raw_runs": raws,
                "ratios": [b["rps"] / r["rps"] for b, r in zip(runs, raws, strict=True)],
            }
            ctx.add(
                Figure(
                    ctx.label,
                    f"c={conc}, {sname}: end to end, spawn to exit",
                    rate,
                    "req/s",
                    "raw aiohttp client, spawn to exit",
                    raw_rate,
                    ">= 85 % of raw",
                    rate >= 0.85 * raw_rate,
                    f"{f'median of {k}, ' if k > 1 else ''}{n:,} requests; steady state (first "
                    f"to last record) {steady:,.0f} req/s vs raw first request to last answer "
                    f"{raw_steady:,.0f} ({steady / raw_steady:.0%}); burstq end to end vs raw "
                    f"steady (issue 7's measure) {rate / raw_steady:.0%}",
                    details,
                )
            )
            ctx.add(
                Figure(
                    ctx.label,
                    f"c={conc}, {sname}: CPU per request",
                    cpu_us,
                    "us",
                    "raw aiohttp client",
                    raw_cpu_us,
                    "<= 120 % of raw",
                    cpu_us <= 1.2 * raw_cpu_us,
                    "user + system CPU of the whole process (start-up included) / requests",
                )
            )
    if s.sdk_requests:
        # Baseline: the raw client's median at the same concurrency on the first server.
        conc = s.overhead_concurrency[0]
        with starts[s.overhead_servers[0]]() as srv:
            sdk = _raw(srv, s.sdk_requests, conc, sdk=True)
        ctx.add(
            Figure(
                ctx.label,
                f"openai SDK AsyncOpenAI, c={conc} (reference)",
                sdk["rps"],
                "req/s",
                "raw aiohttp client",
                raw_first[conc],
                "",
                None,
                f"{sdk['client']}, default httpx transport, {s.sdk_requests} requests, "
                "spawn to exit",
                {"sdk": sdk},
            )
        )


# -- 12 features --------------------------------------------------------------------------------


def _has_option(option: str) -> bool:
    """Does this burstq's `run` know `option` (a capability that may not have landed yet)?"""
    proc = subprocess.run(
        [*h.burstq_cmd(), "run", "--help"],
        capture_output=True,
        text=True,
        env={**h.clean_env(), "COLUMNS": "200"},
        check=False,
    )
    return option in proc.stdout


def _rows(path: Path, n: int) -> Path:
    """n data rows for --prompt: the same prompts as ctx.input_file's requests."""
    with path.open("wb") as f:
        for start in range(0, n, 50_000):
            f.write(
                "".join(
                    f'{{"id": "r{i}", "text": "say {i}"}}\n'
                    for i in range(start, min(n, start + 50_000))
                ).encode()
            )
    return path


def features(ctx: Context) -> None:
    s = ctx.sizes
    n, conc = s.overhead_requests, s.features_concurrency
    inp = ctx.input_file(n)
    rows = _rows(ctx.workdir / f"rows-{n}.jsonl", n)
    has_cache = _has_option("--cache")
    kinds = ["plain", "endpoints", "schema"] + (["cache"] if has_cache else [])
    ctx.log(
        f"fast server, {n:,} requests, c={conc}: raw client, then burstq {', '.join(kinds)}"
        + ("" if has_cache else " (--cache is not in this burstq: not measured)")
    )
    raws: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for rep in range(s.overhead_repeat):
        with h.fast_server(ctx.workdir) as srv:
            raws.append(_raw(srv, n, conc))
        for kind in kinds:
            out = ctx.fresh_output(f"out-features-{kind}.jsonl")
            extra: list[str] = ["--concurrency", str(conc)]
            source = inp
            if kind == "schema":
                source = rows
                extra += ["--prompt", PROMPT, "--schema", SCHEMA]
            elif kind == "cache":
                cache = ctx.workdir / f"cache-{rep}.sqlite"
                for p in cache.parent.glob(cache.name + "*"):
                    p.unlink()
                extra += ["--cache", str(cache)]
            with h.fast_server(ctx.workdir) as srv, h.fast_server(ctx.workdir) as other:
                if kind == "endpoints":
                    eps = ctx.workdir / "endpoints-features.toml"
                    half = max(1, conc // 2)
                    eps.write_text(
                        f'[[endpoint]]\nname = "a"\nbase_url = "{srv.base_url}"\n'
                        f"concurrency = {half}\n"
                        f'[[endpoint]]\nname = "b"\nbase_url = "{other.base_url}"\n'
                        f"concurrency = {half}\n"
                    )
                    argv = [*h.burstq_cmd(), "run", str(inp), "-o", str(out)]
                    run = h.run_child([*argv, "--endpoints", str(eps), "--quiet"])
                else:
                    run = h.burstq_run(source, out, srv, *extra, quiet=True)
            _check(run, out, n, f"{ctx.label} ({kind})")
            runs[kind].append(_burstq(run, out, n))
    raw_rate, raw_cpu = _med(raws, "rps"), _med(raws, "cpu_s") / n * 1e6
    plain_cpu = _med(runs["plain"], "cpu_s") / n * 1e6
    what = {
        "plain": "plain run (as 2 overhead)",
        "endpoints": "--endpoints, two endpoints",
        "schema": "--prompt + --schema, structured answers",
        "cache": "--cache, empty cache",
    }
    for kind in kinds:
        rate = _med(runs[kind], "rps")
        cpu = _med(runs[kind], "cpu_s") / n * 1e6
        cost = "" if kind == "plain" else f"; costs {cpu - plain_cpu:+.0f} us/request vs plain"
        ctx.add(
            Figure(
                ctx.label,
                f"c={conc}, fast server: {what[kind]}",
                rate,
                "req/s",
                "raw aiohttp client, spawn to exit",
                raw_rate,
                ">= 85 % of raw" if kind == "plain" else ">= 75 % of raw",
                rate >= (0.85 if kind == "plain" else 0.75) * raw_rate,
                f"CPU {cpu:.0f} us/request (raw {raw_cpu:.0f}){cost}; steady state "
                f"{_med(runs[kind], 'steady_rps'):,.0f} req/s",
                {"runs": runs[kind], "raw_runs": raws, "cpu_us": cpu, "plain_cpu_us": plain_cpu},
            )
        )
    if not has_cache:
        ctx.add(
            Figure(
                ctx.label,
                f"c={conc}, fast server: --cache, empty cache",
                None,
                "req/s",
                "raw aiohttp client, spawn to exit",
                raw_rate,
                ">= 75 % of raw",
                None,
                "not measured: this burstq has no --cache (issue 15 not landed)",
            )
        )
