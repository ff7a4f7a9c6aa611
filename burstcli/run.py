"""Assemble one `burstq run`: source, resume state, client, limits, engine, reporter.

The CLI turns options into a `RunConfig` and calls `execute()` once; everything that needs a
running event loop lives here, so tests can drive a whole run without Typer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import OPENAI_BASE_URL, LimitSpec, ProviderSpec, RunConfig
from .errors import UsageError
from .files.journal import Journal, add_unrecorded, open_for_resume
from .files.output import check_output, output_lock, same_file
from .files.reader import Done, FileSource, ScanStopped
from .files.rewrite import Resumed, dry_run, resume
from .files.rows import parser_for
from .files.stream import StreamSource
from .live.client import ApiClient
from .live.engine import Engine, EngineConfig
from .live.feed import chain, prioritized, with_defaults
from .live.router import Breaker, Endpoint, EndpointState, Router, endpoint_limits
from .live.shared import close_client
from .live.spec import EndpointSpec
from .models import InvalidLine, Request, Result, RunOutcome, Tally
from .money.budget import Budget, worst_case
from .observe.progress import Reporter
from .redact import redact, register

if TYPE_CHECKING:
    from .batch.driver import BatchRun
    from .live.shared import SharedPacer
    from .money.pricing import PriceBook


@dataclass(slots=True)
class RunReport:
    outcome: RunOutcome
    elapsed: float
    summary: str
    budget_spent: float | None = None


def provider(
    spec: ProviderSpec, base_url: str | None, api_key: str | None, warn: Callable[[str], None]
) -> tuple[str, PriceBook]:
    """The base URL to call (refusing OpenAI's without a key) and the prices for its models."""
    from .money.pricing import PriceBook, PricesFileError

    base_url = base_url or OPENAI_BASE_URL
    if not api_key and base_url.rstrip("/") == OPENAI_BASE_URL:
        raise UsageError(
            "no API key: set OPENAI_API_KEY or pass --api-key "
            "(or try the whole pipeline offline with --simulate)"
        )
    try:
        return base_url, PriceBook(spec.prices, provider_api_url=base_url, warn=warn)
    except PricesFileError as exc:
        raise UsageError(str(exc)) from exc


def shaping(cfg: RunConfig) -> dict[str, Any]:
    """Options that change what is sent (kept for callers that hold a whole RunConfig)."""
    return cfg.job.shaping()


@contextlib.contextmanager
def simulated(cfg: RunConfig, *, batch: bool = False) -> Iterator[tuple[str | None, str | None]]:
    """The base URL and key to use: the user's, or with --simulate an in-process mock server.

    The product's one import of mock/ (house rule), lazily, only when simulating.
    """
    if not cfg.simulate:
        yield cfg.base_url, cfg.api_key
        return
    from .mock.server import MockConfig, ThreadedMockServer

    if batch:
        mock = MockConfig(batch_seconds=2.0, seed=7)
    else:
        mock = MockConfig(
            latency=0.15,
            latency_jitter=0.2,
            fault_rate=0.03,
            seed=7,
            hang_seconds=2.0,
            rpm=max(1, int(cfg.rpm)) if cfg.rpm else None,
            tpm=max(1, int(cfg.tpm)) if cfg.tpm else None,
        )
    server = ThreadedMockServer(mock)
    server.start()
    try:
        # Random, so hiding it (every key is) never blanks out an ordinary word.
        yield server.base_url, f"sk-{secrets.token_hex(16)}"
    finally:
        server.close()


def _reporter_mode(cfg: RunConfig) -> str:
    if cfg.quiet:
        return "quiet"
    if cfg.progress != "auto":
        return cfg.progress
    return "rich" if sys.stderr.isatty() else "plain"


def execute(cfg: RunConfig, *, on_ready: Callable[[Engine], None] | None = None) -> RunReport:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - Windows
        runner = asyncio.Runner()
    with runner:
        return runner.run(_execute(cfg, on_ready))


async def _execute(cfg: RunConfig, on_ready: Callable[[Engine], None] | None) -> RunReport:

    started = time.monotonic()
    warnings: list[str] = []

    register(cfg.api_key)  # where the key enters a run: hidden from everything written after

    def warn(msg: str) -> None:
        msg = redact(msg)
        if msg not in warnings:
            warnings.append(msg)
            if not cfg.quiet:
                print(f"burstq: warning: {msg}", file=sys.stderr)

    if cfg.dry_run:
        return await asyncio.to_thread(_dry_run, cfg, started)
    out_path = None if cfg.output == "-" else Path(cfg.output)
    # A device or FIFO is only written to: no lock, no sidecar, nothing to resume.
    regular = out_path is not None and check_output(out_path)
    if out_path is not None and not regular and (cfg.retry_failed or cfg.restart):
        raise UsageError(f"--retry-failed and --restart need OUTPUT to be a file, not {out_path}")
    if out_path is not None and cfg.input != "-" and same_file(Path(cfg.input), out_path):
        raise UsageError(f"OUTPUT must not be INPUT ({out_path} is {cfg.input})")
    if cfg.endpoints is not None and cfg.simulate:
        raise UsageError(
            "--simulate runs one mock endpoint; with --endpoints, start a `burstq mock-server` "
            "per endpoint and point the file's base_url values at them"
        )
    with output_lock(out_path) if out_path is not None and regular else contextlib.nullcontext():
        if cfg.via == "batch":
            if out_path is not None and not regular:
                raise UsageError(
                    "--via batch needs -o OUTPUT to be a file: its state lives beside it"
                )
            return await _execute_batch(cfg, warn, started)
        with simulated(cfg) as (base_url, api_key):
            return await _execute_live(cfg, base_url, api_key, warn, started, on_ready, regular)


async def _execute_live(
    cfg: RunConfig,
    base_url: str | None,
    api_key: str | None,
    warn: Callable[[str], None],
    started: float,
    on_ready: Callable[[Engine], None] | None,
    regular: bool,
) -> RunReport:

    specs = endpoint_specs(cfg, base_url, api_key)
    _, prices = provider(cfg.provider, specs[0].base_url, specs[0].api_key, warn)

    tally = Tally()
    in_path = None if cfg.input == "-" else Path(cfg.input)
    loop = asyncio.get_running_loop()
    # Ctrl-C from the very start: hashing and scanning a large INPUT take a while, and run
    # in a thread that looks at this between chunks.
    stop = _Stop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, int(sig))
    try:
        parser = parser_for(cfg.job)
        src = (
            FileSource(in_path, cfg.model, parser, shard=cfg.shard) if in_path is not None else None
        )
        try:
            return await _live(
                cfg, specs, prices, warn, started, on_ready, regular, src, stop, tally
            )
        except ScanStopped:
            elapsed = time.monotonic() - started
            outcome = RunOutcome("interrupted", tally, stop.signum)
            return RunReport(outcome, elapsed, "burstq: interrupted before anything was sent")
        finally:
            if src is not None:
                src.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


class _Stop:
    """The signal handler until the engine runs, then the engine's `request_stop`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.engine: Engine | None = None

    def __call__(self, signum: int) -> None:
        if self.engine is not None:
            self.engine.request_stop(signum)
        elif self.signum is None:
            self.signum = signum

    def stopped(self) -> bool:
        return self.signum is not None


async def _live(
    cfg: RunConfig,
    specs: list[EndpointSpec],
    prices: PriceBook,
    warn: Callable[[str], None],
    started: float,
    on_ready: Callable[[Engine], None] | None,
    regular: bool,
    src: FileSource | None,
    stop: _Stop,
    tally: Tally,
) -> RunReport:
    out_path = None if cfg.output == "-" else Path(cfg.output)
    in_path = None if cfg.input == "-" else Path(cfg.input)
    fingerprint: dict[str, Any] = {"input": cfg.input, "shaping": shaping(cfg)}
    # Not part of the resume check (limits may change between runs): the last run's ceilings,
    # which `burstq report` draws against the throughput.
    fingerprint["limits"] = {"rpm": cfg.rpm, "tpm": cfg.tpm}
    if src is not None:
        fingerprint["input_sha256"] = await asyncio.to_thread(src.digest, stop.stopped)
    if not regular:
        out_path = None  # records go to the device or FIFO, nothing is resumed from it
    done: Done | None = None
    done_ids: dict[int, str] | None = None
    resumed: Resumed | None = None
    spent_before = 0.0
    formatter = None
    if cfg.output_format == "openai-batch":
        from .files.formats import resume_openai_batch, to_openai_batch_line

        if in_path is None or out_path is None:
            raise UsageError(
                "--output-format openai-batch needs an INPUT file and an OUTPUT "
                "file (its lines have no line numbers to resume by)"
            )

        def formatter(result: Result) -> dict[str, Any]:
            return to_openai_batch_line(
                result.record(),
                result.response_body,
                result.response_status,
                result.response_request_id,
            )

        state = resume_openai_batch(
            out_path,
            in_path,
            fingerprint,
            default_model=cfg.model,
            restart=cfg.restart,
            retry_failed=cfg.retry_failed,
        )
    elif out_path is not None and src is not None:
        # Resume, or an incremental rerun when INPUT or the options changed (files/rewrite.py);
        # either way INPUT is scanned here, in a thread that Ctrl-C stops.
        resumed = await asyncio.to_thread(resume, out_path, src, fingerprint, cfg.job, stop.stopped)
        state = resumed.state
        if resumed.plan.incremental and not cfg.quiet:
            print(resumed.plan.line(), file=sys.stderr)
    elif out_path is not None:
        state = open_for_resume(
            out_path,
            fingerprint,
            restart=cfg.restart,
            retry_failed=cfg.retry_failed,
            keep_ids=True,
        )
    if out_path is not None:
        done_ids = state.ids
        done = state.done
        spent_before = state.cost_usd
        tally.skipped, tally.skipped_failed = state.records, state.failed
        if state.repaired_bytes:
            warn(
                f"repaired a torn last line in {out_path} ({state.repaired_bytes} bytes); "
                "that request will be redone"
            )

    loop = asyncio.get_running_loop()
    redis_client = _redis(cfg)
    shared: list[SharedPacer] = []
    journal = Journal(None if cfg.output == "-" else Path(cfg.output), fsync=cfg.fsync)

    budget = None
    if cfg.max_cost is not None:
        budget = Budget(cfg.max_cost, worst_case(prices, cfg.budget_max_tokens), spent_before)
    config = EngineConfig(
        fallback_models=cfg.fallback_models,
        max_retries=cfg.max_retries,
        backoff_base=cfg.backoff_base,
        backoff_max=cfg.backoff_max,
        max_output_chars=cfg.max_output_chars,
        grace=cfg.grace,
        max_cost=cfg.max_cost,
        max_wait=cfg.max_wait,
    )
    mode = _reporter_mode(cfg)
    # The scan validates everything before anything is sent; invalid lines are recorded first.
    items, counts = await _source(cfg, src, done, done_ids, tally, stop, resumed)
    cache = None
    if cfg.cache is not None:  # sqlite3 and the cache module only for runs that use one
        from .money.cache import answer_cache

        cache = answer_cache(cfg, [spec.base_url for spec in specs])
    try:
        async with contextlib.AsyncExitStack() as stack:
            multi = len(specs) > 1
            router = Router(
                [
                    await _endpoint(stack, cfg, spec, multi, loop.time, redis_client, shared, warn)
                    for spec in specs
                ],
                loop.time,
                warn,
            )
            reporter = Reporter(
                tally,
                router.snapshot,
                mode=mode,
                interval=cfg.status_every if mode == "plain" else None,
                endpoints=router.states if router.multi else None,
            )
            engine = Engine(
                router=router,
                journal=journal,
                config=config,
                price=prices.cost,
                budget=budget,
                tally=tally,
                formatter=formatter,
                cache=cache,
                warn=warn,
            )
            if cfg.max_tokens is not None or cfg.params:
                items = with_defaults(cfg.job, items)
            metrics, metrics_task = _metrics(cfg, engine, tally, router, warn)
            stop.engine = engine
            if on_ready is not None:
                on_ready(engine)
            reporter.start()
            gc_threshold = gc.get_threshold()
            # The hot path makes short-lived acyclic objects; collections at the default
            # threshold find nothing and cost ~12 % of the CPU (docs/benchmarks.md).
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
            try:
                outcome = await engine.run(items)
            finally:
                gc.set_threshold(*gc_threshold)
                gc.unfreeze()
                stop.engine = None
                await reporter.stop()
                if metrics_task is not None:
                    metrics_task.cancel()  # it writes the final figures as it stops
                    await asyncio.gather(metrics_task, return_exceptions=True)
            if metrics is not None and cfg.pushgateway:
                metrics.update(tally, router.snapshot(), _states(router))
                if msg := await asyncio.to_thread(metrics.push, cfg.pushgateway):
                    warn(msg)
    finally:
        journal.close()
        if cache is not None:
            cache.close()
        for pacer in shared:
            await pacer.aclose()
        await close_client(redis_client)
        if out_path is not None:  # attempts of requests cut off in flight (a Ctrl-C)
            add_unrecorded(out_path, tally.attempts - tally.recorded_attempts)
    if outcome.reason == "done":
        # The last line of defence: whatever went wrong, a run that ends with input lines
        # lacking a record does not pass for a finished one (a rerun fills them in).
        outcome.missing = max(0, counts.total - counts.done - tally.finished)
    elapsed = time.monotonic() - started
    return RunReport(
        outcome, elapsed, reporter.summary(elapsed), budget.spent if budget is not None else None
    )


def _redis(cfg: RunConfig) -> Any:
    if not cfg.limiter:
        return None
    from .live.shared import connect

    return connect(cfg.limiter)


def _dry_run(cfg: RunConfig, started: float) -> RunReport:
    """--dry-run: what a run would keep, drop and send; nothing is sent or written."""
    if cfg.input == "-" or cfg.output == "-" or cfg.via == "batch":
        raise UsageError("--dry-run needs an INPUT file and an OUTPUT file, and --via direct")
    if cfg.output_format != "burstq":
        raise UsageError("--dry-run reads burstq records: not with --output-format")
    plan, total = dry_run(cfg.job)
    tally = Tally(total=total, skipped=plan.kept)
    return RunReport(RunOutcome("done", tally), time.monotonic() - started, plan.line())


def _shared_pacer(
    cfg: RunConfig,
    spec: EndpointSpec,
    client: Any,
    clock: Callable[[], float],
    warn: Callable[[str], None],
) -> SharedPacer:
    """--limiter: the rpm/tpm budget of (Redis, limit key), shared with other processes; with
    --endpoints, one budget per endpoint (its key, or --limit-key plus its name)."""
    from .live.shared import SharedPacer, default_limit_key

    assert cfg.limiter is not None
    if cfg.limit_key:
        key = cfg.limit_key if spec.name is None else f"{cfg.limit_key}:{spec.name}"
    else:
        key = default_limit_key(spec.base_url, spec.api_key)
    return SharedPacer(
        client,
        key,
        rpm=spec.rpm,
        tpm=spec.tpm,
        clock=clock,
        max_wait=cfg.max_wait,
        url=cfg.limiter,
        warn=warn,
    )


def endpoint_specs(cfg: RunConfig, base_url: str | None, api_key: str | None) -> list[EndpointSpec]:
    """The run's endpoints: the file's, or one from --base-url / --api-key / --rpm / --tpm."""
    if cfg.endpoints is None:
        return [
            EndpointSpec(
                name=None,
                base_url=base_url or OPENAI_BASE_URL,
                api_key=api_key,
                rpm=cfg.rpm,
                tpm=cfg.tpm,
            )
        ]
    from .live.endpoints import load

    if cfg.rpm is not None or cfg.tpm is not None:
        raise UsageError(
            "--rpm / --tpm describe one endpoint; with --endpoints, give each endpoint its "
            "own rpm and tpm in the file"
        )
    specs = load(cfg.endpoints)
    for spec in specs:
        if not spec.api_key and spec.base_url.rstrip("/") == OPENAI_BASE_URL:
            raise UsageError(
                f"{cfg.endpoints}: endpoint {spec.name} calls OpenAI without a key: set "
                'api_key_env = "VAR" and export VAR'
            )
    return specs


async def _endpoint(
    stack: contextlib.AsyncExitStack,
    cfg: RunConfig,
    spec: EndpointSpec,
    multi: bool,
    clock: Callable[[], float],
    redis_client: Any,
    shared: list[SharedPacer],
    warn: Callable[[str], None],
) -> Endpoint:
    client = await stack.enter_async_context(
        ApiClient(
            spec.base_url,
            spec.api_key,
            timeout=cfg.timeout,
            max_response_bytes=cfg.max_response_bytes,
            headers=spec.headers,
            key_header=spec.api_key_header,
            query=spec.query,
        )
    )
    pacer = None
    if redis_client is not None:
        pacer = _shared_pacer(cfg, spec, redis_client, clock, warn)
        shared.append(pacer)
    given = cfg.concurrency_given or spec.concurrency is not None
    limits = endpoint_limits(
        LimitSpec(spec.concurrency or cfg.concurrency, given, spec.rpm, spec.tpm),
        clock=clock,
        shared=pacer,
        backoff_base=cfg.backoff_base,
        timeout=cfg.timeout,
    )
    # One endpoint keeps today's behaviour: retries with backoff, no breaker to route around.
    breaker = Breaker(spec.breaker_failures, spec.breaker_cooldown, clock, enabled=multi)
    return Endpoint(spec, client, limits, breaker)


def _states(router: Router) -> list[EndpointState] | None:
    return router.states() if router.multi else None


async def _execute_batch(cfg: RunConfig, warn: Callable[[str], None], started: float) -> RunReport:
    """--via batch: hand the file to the provider's Batch API (batch.py does the work)."""
    from .live.limits import LimitsSnapshot

    tally = Tally()
    loop = asyncio.get_running_loop()

    def snapshot() -> LimitsSnapshot:  # no pacing in batch mode: only what is in flight
        return LimitsSnapshot(0, tally.in_flight, None, None, None, None, 0, 0.0)

    reporter = Reporter(tally, snapshot, mode=_reporter_mode(cfg))
    runs: list[BatchRun] = []
    early: list[int] = []  # signals so far, the first before the run may exist (hashing)

    def on_signal(signum: int) -> None:
        early.append(signum)
        if runs:
            runs[0].request_stop(signum)

    def ready(run: BatchRun) -> None:
        runs.append(run)
        if early:
            run.request_stop(early[0])

    # Wired first: asyncio's own Ctrl-C handler would wait for a scan thread to finish.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, int(sig))
    reporter.start()
    try:
        outcome = await run_batch(cfg, tally=tally, warn=warn, on_ready=ready)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await reporter.stop()
    elapsed = time.monotonic() - started
    spent = runs[0].budget.spent if runs and runs[0].budget is not None else None
    return RunReport(outcome, elapsed, reporter.summary(elapsed), spent)


def _metrics(
    cfg: RunConfig, engine: Engine, tally: Tally, router: Router, warn: Callable[[str], None]
) -> tuple[Any, asyncio.Task[None] | None]:
    if not (cfg.metrics_file or cfg.pushgateway):
        return None, None
    from .observe.metrics import Metrics

    metrics = Metrics()
    engine.listeners.append(metrics.observe)
    if not cfg.metrics_file:
        return metrics, None
    try:
        metrics.update(tally, router.snapshot(), _states(router))
        metrics.write(cfg.metrics_file)  # fail before anything is sent
    except OSError as exc:
        raise UsageError(f"cannot write {cfg.metrics_file}: {exc.strerror or exc}") from exc
    task = asyncio.create_task(
        metrics.run_periodic(
            cfg.metrics_file,
            tally,
            router.snapshot,
            warn=warn,
            endpoints=router.states if router.multi else None,
        )
    )
    return metrics, task


async def _source(
    cfg: RunConfig,
    src: FileSource | None,
    done: Done | None,
    done_ids: dict[int, str] | None,
    tally: Tally,
    stop: _Stop,
    resumed: Resumed | None = None,
) -> tuple[AsyncIterator[Request | InvalidLine], FileSource | StreamSource]:
    if src is None:
        stream = StreamSource(sys.stdin.buffer, cfg.model, parser_for(cfg.job), shard=cfg.shard)
        return prioritized(stream.items(done, done_ids), window=cfg.stdin_window), stream
    invalid: list[InvalidLine] = []
    if resumed is not None:  # files/rewrite.py scanned it already, pairing as it went
        invalid = resumed.invalid
    else:
        await asyncio.to_thread(src.scan, done, invalid.append, stop.stopped)
    tally.total = src.total
    return chain(invalid, src.requests()), src


async def run_batch(
    cfg: RunConfig,
    *,
    tally: Tally,
    warn: Callable[[str], None],
    poll_interval: float | None = None,
    on_ready: Callable[[BatchRun], None] | None = None,
) -> RunOutcome:
    """--via batch from a whole RunConfig: each part goes where it belongs."""
    from .batch.jobs import batch_settings, check_batch_job, run_via_batch

    settings = batch_settings(
        batch_size=cfg.batch_size,
        completion_window=cfg.completion_window,
        output_format=cfg.output_format,
        max_retries=cfg.max_retries,
        backoff_base=cfg.backoff_base,
        poll_interval=poll_interval if poll_interval is not None else cfg.batch_poll,
        simulate=cfg.simulate,
    )
    check_batch_job(cfg.job, cfg.fallback_models, warn)
    with simulated(cfg, batch=True) as (base_url, api_key):
        if cfg.endpoints is not None:
            from .live.endpoints import batch_endpoint, load

            spec = batch_endpoint(cfg.endpoints, load(cfg.endpoints))
            base_url, api_key = spec.base_url, spec.api_key
        url, prices = provider(cfg.provider, base_url, api_key, warn)
        return await run_via_batch(
            cfg.job,
            cfg.budget,
            settings,
            base_url=url,
            api_key=api_key,
            timeout=cfg.timeout,
            prices=prices,
            simulated=cfg.simulate,
            tally=tally,
            warn=warn,
            on_ready=on_ready,
        )
