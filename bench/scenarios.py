"""The bench's scenarios, each measured against a baseline taken in the same run.

A scenario is a function `(ctx) -> None` that calls `ctx.add(Figure(...))` for every figure it
measures. Every scenario has ONE number and ONE name (`NUMBERS`): `--only` takes either, the
figures are labelled "N name" by `Context.add` (whatever a scenario passes), and
docs/benchmarks.md uses the same pair. `SCENARIOS` maps the names to the functions, in number
order. Sizes come from `Sizes` (full or `--quick`), so the CI run exercises exactly the code the
full run does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import harness as h


@dataclass
class Sizes:
    rpm: int  # 1 ratelimit: the server's ceiling R (requests/minute, 1 s quanta)
    rpm_requests: int  # ... and how many requests (R/60 per second -> duration)
    overhead_requests: int  # 2 overhead and 12 features: requests per run
    overhead_concurrency: tuple[int, ...]
    overhead_repeat: int  # runs of each side, alternating; medians reported
    overhead_servers: tuple[str, ...]  # 2 overhead: "mock server", "fast server"
    features_concurrency: int  # 12 features: --endpoints, --schema, --cache at this c
    sdk_requests: int
    latency_requests: int  # 3 latency: at 200 in flight and 1 s each, 200 per second
    memory_big: int  # 4 memory: lines in the big input (all but memory_sent already done)
    memory_sent: int  # requests actually sent in each memory run
    memory_fresh: bool  # also a fresh run of the big input, every request sent
    startup_repeat: int
    resume_lines: int  # 6 resume: lines, 90 % of them done
    report_records: int  # 9 report: records in the output `burstq report` reads
    endpoints_rpm: tuple[int, int]  # 10 endpoints: two endpoints' ceilings (told in the file)
    endpoints_requests: int


FULL = Sizes(
    rpm=6000,
    rpm_requests=6000,
    overhead_requests=30_000,
    overhead_concurrency=(64, 256),
    overhead_repeat=3,
    overhead_servers=("mock server", "fast server"),
    features_concurrency=64,
    sdk_requests=3000,
    latency_requests=12_000,
    memory_big=1_000_000,
    memory_sent=10_000,
    memory_fresh=True,
    startup_repeat=9,
    resume_lines=1_000_000,
    report_records=1_000_000,
    endpoints_rpm=(6000, 3000),
    endpoints_requests=9000,
)
QUICK = Sizes(
    rpm=6000,
    rpm_requests=1000,
    overhead_requests=10_000,
    overhead_concurrency=(64, 256),
    overhead_repeat=1,
    overhead_servers=("fast server",),
    features_concurrency=64,
    sdk_requests=500,
    latency_requests=2000,
    memory_big=100_000,
    memory_sent=10_000,
    memory_fresh=True,
    startup_repeat=5,
    resume_lines=100_000,
    report_records=100_000,
    endpoints_rpm=(6000, 3000),
    endpoints_requests=1500,
)


@dataclass
class Figure:
    scenario: str
    name: str
    value: float | None
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    met: bool | None = None  # None: informational, no target
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    baseline_unit: str | None = None  # when it differs from `unit`

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


class BenchError(Exception):
    """A run that did not do its job (bad exit, missing records): its timing means nothing."""


@dataclass
class Context:
    sizes: Sizes
    quick: bool
    workdir: Path
    report: Callable[[Figure], None]
    figures: list[Figure] = field(default_factory=list)
    name: str = ""  # the scenario running now (set by __main__)
    _inputs: dict[int, Path] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """ "N name": the one label of the running scenario, in figures and messages."""
        return label(self.name) if self.name else ""

    def add(self, fig: Figure) -> None:
        if self.name:
            fig.scenario = self.label  # one label per scenario, whatever the code passed
        self.figures.append(fig)
        self.report(fig)

    def log(self, msg: str) -> None:
        print(f"  . {msg}", flush=True)

    def input_file(self, n: int) -> Path:
        """An n-line request file, written once per bench run and shared by scenarios."""
        if n not in self._inputs:
            self._inputs[n] = h.write_input(self.workdir / f"in-{n}.jsonl", n)
        return self._inputs[n]

    def fresh_output(self, name: str) -> Path:
        out = self.workdir / name
        for p in (out, out.with_name(out.name + ".burstq.json")):
            p.unlink(missing_ok=True)
        return out


def _check(run: h.ChildRun, out: Path | None, expect_records: int | None, what: str) -> None:
    if run.returncode != 0:
        raise BenchError(f"{what}: burstq exited {run.returncode}: {h.tail(run)}")
    if out is not None and expect_records is not None:
        n, ok = h.count_records(out)
        if n != expect_records or ok != expect_records:
            raise BenchError(
                f"{what}: {n} records ({ok} completed) in {out}, expected "
                f"{expect_records} completed"
            )


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


# -- 1 ratelimit: rate-limit efficiency ------------------------------------------------------------


def ratelimit(ctx: Context) -> None:
    s = ctx.sizes
    r, n = s.rpm, s.rpm_requests
    inp = ctx.input_file(n)
    ctx.log(
        f"mock server: rpm {r} in 1 s quanta, latency 0.2 s; {n} requests "
        f"(~{n / (r / 60):.0f} s at R)"
    )
    for told in (True, False):
        label = f"--rpm {r}" if told else "no limit flags"
        with h.mock_server(ctx.workdir, latency=0.2, rpm=r) as srv:
            out = ctx.fresh_output(f"out-ratelimit-{'told' if told else 'untold'}.jsonl")
            extra = ["--rpm", str(r)] if told else []
            run = h.burstq_run(inp, out, srv, *extra)
            _check(run, out, n, f"{ctx.label} ({label})")
            st = srv.stats()
        ok = st["by_status"].get("200", 0)
        limited = st["rate_limited"]
        wall_rpm = ok / run.wall * 60
        span = (st["last_response_at"] or 0) - (st["first_request_at"] or 0)
        span_rpm = ok / span * 60 if span > 0 else 0.0
        share = limited / max(1, st["requests_total"])
        # issue 19: 0.97 of a known ceiling with no 429, 0.95 learned (issue 7 asked 0.90)
        want_rate, want_429 = (0.97, "0") if told else (0.95, "< 2 %")
        details = {
            "wall_s": run.wall,
            "server_span_s": span,
            "server_span_rpm": span_rpm,
            "requests_total": st["requests_total"],
            "rate_limited": limited,
            "by_status": st["by_status"],
            "summary": h.summary_line(run),
            "arrivals_per_second": st.get("arrivals_per_second"),
        }
        ctx.add(
            Figure(
                ctx.label,
                f"{label}: achieved rate (start to exit)",
                wall_rpm,
                "req/min",
                "R",
                r,
                f">= {want_rate:.0%} of R",
                wall_rpm >= want_rate * r,
                f"server-side span {span:.1f} s -> {span_rpm:,.0f} req/min ({span_rpm / r:.1%})",
                details,
            )
        )
        met_429 = limited == 0 if told else share < 0.02
        ctx.add(
            Figure(
                ctx.label,
                f"{label}: 429 answers",
                limited,
                "429s",
                "received",
                st["requests_total"],
                f"{want_429} of requests",
                met_429,
                f"{_pct(share)} of requests",
                baseline_unit="requests",
            )
        )


# -- 3 latency: latency-bound ----------------------------------------------------------------------


def latency(ctx: Context) -> None:
    n = ctx.sizes.latency_requests
    inp = ctx.input_file(n)
    with h.mock_server(ctx.workdir, latency=1.0) as srv:
        out = ctx.fresh_output("out-latency.jsonl")
        run = h.burstq_run(inp, out, srv, "--concurrency", "200")
        _check(run, out, n, ctx.label)
        st = srv.stats()
    rate = n / run.wall
    span = (st["last_response_at"] or 0) - (st["first_request_at"] or 0)
    per_s = st.get("arrivals_per_second") or []
    # When did the run first send at (nearly) the full 200/s? Slow start shows up here.
    full_at = next((i for i, k in enumerate(per_s) if k >= 190), None)
    ctx.add(
        Figure(
            ctx.label,
            "1 s latency, --concurrency 200: throughput (start to exit)",
            rate,
            "req/s",
            "Little's law: 200 in flight / 1 s",
            200.0,
            ">= 95 %",
            rate >= 0.95 * 200,
            f"{n} requests in {run.wall:.1f} s; server span {span:.1f} s -> "
            f"{n / span if span > 0 else 0:.0f} req/s; peak in flight {st['peak_in_flight']}; "
            f"arrivals first reached 190/s in second {full_at}",
            {
                "wall_s": run.wall,
                "server_span_s": span,
                "peak_in_flight": st["peak_in_flight"],
                "arrivals_per_second_first_15": per_s[:15],
                "summary": h.summary_line(run),
            },
        )
    )


# -- 4 memory --------------------------------------------------------------------------------------


def memory(ctx: Context) -> None:
    """Peak RSS against input size, two ways, both against a fresh 10,000-line run:

    - a fresh run of the big input, every line sent: the target read literally; it includes
      whatever grows per request sent as well as per line (full: 1M requests, ~2 minutes);
    - the big input with all but 10,000 lines already done (OUTPUT and sidecar written by the
      bench): the same 10,000 requests are sent, so the difference is what the size of the
      input alone costs (hashing, scanning, skipping, per-line tables), cheaply.
    """
    s = ctx.sizes
    sent, big = s.memory_sent, s.memory_big
    small_in = ctx.input_file(sent)
    big_in = ctx.input_file(big)
    with h.mock_server(ctx.workdir) as srv:
        out_small = ctx.fresh_output("out-mem-small.jsonl")
        small = h.burstq_run(small_in, out_small, srv)
        _check(small, out_small, sent, f"{ctx.label} (small)")
        if s.memory_fresh:
            ctx.log(f"fresh run of the {big:,}-line input, every request sent")
            srv.reset()
            out_fresh = ctx.fresh_output("out-mem-fresh.jsonl")
            fresh = h.burstq_run(big_in, out_fresh, srv)
            _check(fresh, out_fresh, big, f"{ctx.label} (fresh)")
            ctx.add(
                Figure(
                    ctx.label,
                    f"peak RSS, {big:,}-line input, fresh run (all sent)",
                    fresh.maxrss_mb,
                    "MB",
                    f"{sent:,}-line input",
                    small.maxrss_mb,
                    "<= 110 % of baseline",  # issue 19 (issue 7: 120 %)
                    fresh.maxrss_mb <= 1.1 * small.maxrss_mb,
                    f"{big:,} requests through the mock in {fresh.wall:.1f} s "
                    f"({big / fresh.wall:,.0f} req/s)",
                    {"wall_s": fresh.wall, "cpu_s": fresh.cpu, "small_wall_s": small.wall},
                )
            )
        ctx.log(
            f"{big:,}-line input with {big - sent:,} lines already done, so it sends "
            f"{sent:,} requests like the baseline"
        )
        srv.reset()
        out_big = ctx.fresh_output("out-mem-big.jsonl")
        h.write_done_output(big_in, out_big, big - sent)
        large = h.burstq_run(big_in, out_big, srv)
        _check(large, out_big, big, f"{ctx.label} (mostly done)")
        st = srv.stats()
        if st["requests_total"] != sent:
            raise BenchError(
                f"{ctx.label}: resume sent {st['requests_total']} requests, expected {sent}"
            )
    ctx.add(
        Figure(
            ctx.label,
            f"peak RSS, {big:,}-line input, {big - sent:,} done ({sent:,} sent)",
            large.maxrss_mb,
            "MB",
            f"{sent:,}-line input",
            small.maxrss_mb,
            "<= 110 % of baseline",
            large.maxrss_mb <= 1.1 * small.maxrss_mb,
            f"both runs send {sent:,} requests; this one also hashes, scans and skips "
            f"{big - sent:,} done lines",
            {"wall_s": large.wall},
        )
    )


# -- 5 startup -------------------------------------------------------------------------------------


def startup(ctx: Context) -> None:
    k = ctx.sizes.startup_repeat
    h.run_child([*h.burstq_cmd(), "--help"])  # warm the page cache and __pycache__
    base, base_all = h.median_wall([h.PYTHON, "-c", "pass"], k)
    helpt, help_all = h.median_wall([*h.burstq_cmd(), "--help"], k)
    runt, run_all = h.median_wall([*h.burstq_cmd(), "run", "--help"], k)
    ctx.add(
        Figure(
            ctx.label,
            f"burstq --help (median of {k})",
            helpt,
            "s",
            "python -c pass",
            base,
            "< 0.2 s",  # issue 19 (issue 7: 0.3 s)
            helpt < 0.2,
            f"runs {min(help_all):.3f}..{max(help_all):.3f} s",
            {"burstq_help": help_all, "python_pass": base_all},
        )
    )
    ctx.add(
        Figure(
            ctx.label,
            f"burstq run --help (median of {k})",
            runt,
            "s",
            "python -c pass",
            base,
            "< 0.3 s",
            runt < 0.3,
            f"runs {min(run_all):.3f}..{max(run_all):.3f} s",
            {"runs": run_all},
        )
    )


# -- 6 resume --------------------------------------------------------------------------------------

_READ_PASS = """
import sys, time
t = time.perf_counter()
n = 0
for p in sys.argv[1:]:
    with open(p, 'rb') as f:
        for _ in f:
            n += 1
print(n, time.perf_counter() - t)
"""


def resume(ctx: Context) -> None:
    total = ctx.sizes.resume_lines
    done = total * 9 // 10
    inp = ctx.input_file(total)
    out = ctx.fresh_output("out-resume.jsonl")
    h.write_done_output(inp, out, done)
    ctx.log(
        f"{total:,}-line input, {done:,} records already in OUTPUT "
        f"({out.stat().st_size / 1e6:.0f} MB)"
    )
    read = h.run_child([h.PYTHON, "-c", _READ_PASS, str(inp), str(out)])
    with h.mock_server(ctx.workdir) as srv:
        run = h.burstq_run(inp, out, srv)
        _check(run, out, total, ctx.label)
        st = srv.stats()
    if st["requests_total"] != total - done:
        raise BenchError(
            f"{ctx.label}: {st['requests_total']} requests sent, expected "
            f"{total - done} (finished ones re-sent?)"
        )
    first = (st["first_request_at"] or run.started) - run.started
    ctx.add(
        Figure(
            ctx.label,
            f"{total:,} lines, 90 % done: start to first request sent",
            first,
            "s",
            "python: read INPUT + OUTPUT line by line",
            read.wall,
            "< 3 s",  # issue 19 (issue 7: "in seconds")
            first < 3.0,
            f"whole rerun ({total - done:,} requests sent, none re-sent) {run.wall:.1f} s; "
            f"peak RSS {run.maxrss_mb:.0f} MB",
            {
                "rerun_wall_s": run.wall,
                "rerun_maxrss_mb": run.maxrss_mb,
                "sent": st["requests_total"],
                "read_pass": read.stdout.decode().strip(),
            },
        )
    )


# -- 9 report --------------------------------------------------------------------------------------

REPORT_SMALL = 10_000


def report(ctx: Context) -> None:
    """`burstq report` over a big synthetic output: time against `burstq stats --json` on the
    same file (the exact figures, every latency kept), peak RSS against a report of 10,000
    records (the aggregation streams, so memory should not grow with the records)."""
    n = ctx.sizes.report_records
    big = h.write_records(ctx.workdir / f"records-{n}.jsonl", n)
    small = h.write_records(ctx.workdir / f"records-{REPORT_SMALL}.jsonl", REPORT_SMALL)
    ctx.log(f"{n:,} synthetic records ({big.stat().st_size / 1e6:.0f} MB), one hour of run")
    runs = {}
    for name, path in (("big", big), ("small", small)):
        html = ctx.workdir / f"report-{name}.html"
        html.unlink(missing_ok=True)
        run = h.run_child([*h.burstq_cmd(), "report", str(path), "-o", str(html)])
        if run.returncode != 0 or not html.exists():
            raise BenchError(f"{ctx.label}: burstq report exited {run.returncode}: {h.tail(run)}")
        runs[name] = (run, html.stat().st_size)
    stats = h.run_child([*h.burstq_cmd(), "stats", str(big), "--json"])
    if stats.returncode != 0 or orjson.loads(stats.stdout)["records"] != n:
        raise BenchError(f"{ctx.label}: burstq stats exited {stats.returncode}: {h.tail(stats)}")
    run, size = runs["big"]
    ctx.add(
        Figure(
            ctx.label,
            f"burstq report, {n:,} records: wall time",
            run.wall,
            "s",
            "burstq stats --json, same file",
            stats.wall,
            "-",
            None,
            f"{n / run.wall:,.0f} records/s; page {size / 1024:,.0f} KB; stats peak RSS "
            f"{stats.maxrss_mb:.0f} MB",
            {"cpu_s": run.cpu, "page_bytes": size, "stats_maxrss_mb": stats.maxrss_mb},
        )
    )
    small_run = runs["small"][0]
    ctx.add(
        Figure(
            ctx.label,
            f"burstq report, {n:,} records: peak RSS",
            run.maxrss_mb,
            "MB",
            f"report of {REPORT_SMALL:,} records",
            small_run.maxrss_mb,
            "<= 120 % of baseline",
            run.maxrss_mb <= 1.2 * small_run.maxrss_mb,
            "flat memory: aggregated while streaming",
            {"small_wall_s": small_run.wall},
        )
    )


# -- 10 endpoints: several endpoints ---------------------------------------------------------------


def endpoints(ctx: Context) -> None:
    """Two mock servers with known ceilings R1, R2, told in an --endpoints file: the run's
    achieved rate against R1 + R2, and the 429s (target: >= 97 %, none)."""
    s = ctx.sizes
    (r1, r2), n = s.endpoints_rpm, s.endpoints_requests
    inp = ctx.input_file(n)
    ctx.log(f"two mock servers: rpm {r1} and {r2}, latency 0.1 s; {n} requests")
    with (
        h.mock_server(ctx.workdir, latency=0.1, rpm=r1) as a,
        h.mock_server(ctx.workdir, latency=0.1, rpm=r2) as b,
    ):
        eps = ctx.workdir / "endpoints.toml"
        eps.write_text(
            f'[[endpoint]]\nname = "a"\nbase_url = "{a.base_url}"\nrpm = {r1}\n'
            f'[[endpoint]]\nname = "b"\nbase_url = "{b.base_url}"\nrpm = {r2}\n'
        )
        out = ctx.fresh_output("out-endpoints.jsonl")
        argv = [*h.burstq_cmd(), "run", str(inp), "-o", str(out), "--endpoints", str(eps)]
        run = h.run_child([*argv, "--progress", "quiet"])
        _check(run, out, n, f"{ctx.label} (--endpoints)")
        sa, sb = a.stats(), b.stats()
    ceiling = r1 + r2
    ok = sa["by_status"].get("200", 0) + sb["by_status"].get("200", 0)
    limited = sa["rate_limited"] + sb["rate_limited"]
    first = min(sa["first_request_at"] or 0, sb["first_request_at"] or 0)
    span = max(sa["last_response_at"] or 0, sb["last_response_at"] or 0) - first
    span_rpm = ok / span * 60 if span > 0 else 0.0
    details = {
        "wall_s": run.wall,
        "server_span_s": span,
        "requests": {"a": sa["requests_total"], "b": sb["requests_total"]},
        "rate_limited": limited,
        "summary": h.summary_line(run),
    }
    ctx.add(
        Figure(
            ctx.label,
            f"two endpoints (rpm {r1} + {r2}): achieved rate, first request to last answer",
            span_rpm,
            "req/min",
            "R1+R2",
            ceiling,
            ">= 97 % of R1+R2",
            span_rpm >= 0.97 * ceiling,
            f"start to exit {ok / run.wall * 60:,.0f} req/min; shares a {sa['requests_total']}"
            f" / b {sb['requests_total']}",
            details,
        )
    )
    ctx.add(
        Figure(
            ctx.label,
            "two endpoints: 429 answers",
            limited,
            "429s",
            "received",
            sa["requests_total"] + sb["requests_total"],
            "0",
            limited == 0,
            baseline_unit="requests",
        )
    )


# One number and one name per scenario, for --only, figure labels and docs/benchmarks.md. The
# numbers follow the order the scenarios landed in; a scenario registered without a row here
# is numbered after the last one (and should get its row).
NUMBERS: dict[str, int] = {
    "ratelimit": 1,  # issue 7: rate-limit efficiency, told and learned
    "overhead": 2,  # issues 7, 19: end to end against the raw aiohttp client, CPU per request
    "latency": 3,  # issue 7: latency-bound, Little's law
    "memory": 4,  # issue 7: peak RSS against input size
    "startup": 5,  # issue 7: --help
    "resume": 6,  # issue 7: resume of a mostly-done input
    "labeling": 7,  # issue 14: data rows, templates, export
    "shared": 8,  # issue 12: the Redis limiter shared by several processes
    "report": 9,  # issue 18: burstq report of 1M records
    "endpoints": 10,  # issue 16: two endpoints against the sum of their ceilings
    "incremental": 11,  # issue 15: incremental rerun after 1 % of the lines changed
    "features": 12,  # issue 19: --endpoints, --schema, --cache on the overhead run
    "selfhosted": 13,  # issue 13: adaptive concurrency on a self-hosted server
}
SCENARIOS: dict[str, Callable[[Context], None]] = {}


def number(name: str) -> int:
    return NUMBERS.get(name) or max(NUMBERS.values()) + 1 + list(SCENARIOS).index(name)


def label(name: str) -> str:
    return f"{number(name)} {name}"


def register(name: str, fn: Callable[[Context], None]) -> None:
    """Add a scenario under its name; SCENARIOS stays in number order."""
    SCENARIOS[name] = fn
    ordered = sorted(SCENARIOS.items(), key=lambda kv: number(kv[0]))
    SCENARIOS.clear()
    SCENARIOS.update(ordered)


def _register() -> None:
    from .incremental import incremental
    from .labeling import labeling
    from .overhead import features, overhead
    from .selfhosted import selfhosted
    from .shared import shared

    for name, fn in (
        ("ratelimit", ratelimit),
        ("overhead", overhead),
        ("latency", latency),
        ("memory", memory),
        ("startup", startup),
        ("resume", resume),
        ("labeling", labeling),
        ("shared", shared),
        ("report", report),
        ("endpoints", endpoints),
        ("incremental", incremental),
        ("features", features),
        ("selfhosted", selfhosted),
    ):
        register(name, fn)


_register()
