"""Assemble one `burstq run`: source, resume state, client, limits, engine, reporter.

The CLI turns options into a `RunConfig` and calls `execute()` once; everything that needs a
running event loop lives here, so tests can drive a whole run without Typer.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import ApiClient
from .engine import (
    Budget,
    Engine,
    EngineConfig,
    RunOutcome,
    aiter_items,
    prioritized,
    worst_case,
)
from .errors import UsageError
from .journal import Journal, open_for_resume
from .limits import Limits
from .models import InvalidLine, Request, Result, Tally
from .progress import Reporter
from .reader import Done, FileSource, StreamSource, file_digest

if TYPE_CHECKING:
    from .pricing import PriceBook

OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(slots=True)
class RunConfig:
    input: str  # path or "-"
    output: str  # path or "-"
    model: str = "gpt-4o-mini"
    fallback_models: list[str] = field(default_factory=list)
    concurrency: int = 50
    concurrency_given: bool = False  # the user chose it: open in full after the 1st answer
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 5
    timeout: float = 60.0
    base_url: str | None = None
    api_key: str | None = None
    max_cost: float | None = None
    budget_max_tokens: int = 4096
    prices: Path | None = None
    retry_failed: bool = False
    restart: bool = False
    simulate: bool = False
    quiet: bool = False
    progress: str = "auto"  # auto | rich | plain | quiet
    status_every: float = 5.0  # seconds between plain status lines
    metrics_file: Path | None = None
    pushgateway: str | None = None
    fsync: bool = False
    grace: float = 10.0
    max_output_chars: int = 50_000
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    stdin_window: int = 10_000
    via: str = "direct"  # direct | batch (the provider's Batch API)
    batch_size: int = 50_000
    completion_window: str = "24h"
    batch_poll: float | None = None  # first poll interval (default 5 s, 0.5 s simulated)
    output_format: str = "burstq"  # burstq | openai-batch


@dataclass(slots=True)
class RunReport:
    outcome: RunOutcome
    elapsed: float
    summary: str
    budget_spent: float | None = None


def provider(
    cfg: RunConfig, base_url: str | None, api_key: str | None, warn: Callable[[str], None]
) -> tuple[str, PriceBook]:
    """The base URL to call (refusing OpenAI's without a key) and the prices for its models."""
    from .pricing import PriceBook, PricesFileError

    base_url = base_url or OPENAI_BASE_URL
    if not api_key and base_url.rstrip("/") == OPENAI_BASE_URL:
        raise UsageError(
            "no API key: set OPENAI_API_KEY or pass --api-key "
            "(or try the whole pipeline offline with --simulate)"
        )
    try:
        return base_url, PriceBook(cfg.prices, provider_api_url=base_url, warn=warn)
    except PricesFileError as exc:
        raise UsageError(str(exc)) from exc


def shaping(cfg: RunConfig) -> dict[str, Any]:
    """Options that change what is sent: a resume with other values would mix two jobs."""
    shape: dict[str, Any] = {"model": cfg.model}
    if cfg.output_format != "burstq":
        shape["output_format"] = cfg.output_format
    return shape


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

    def warn(msg: str) -> None:
        if msg not in warnings:
            warnings.append(msg)
            if not cfg.quiet:
                print(f"burstq: warning: {msg}", file=sys.stderr)

    if cfg.via == "batch":
        return await _execute_batch(cfg, warn, started)

    simulate_server = None
    base_url, api_key = cfg.base_url, cfg.api_key
    if cfg.simulate:
        from .mock_server import MockConfig, ThreadedMockServer

        simulate_server = ThreadedMockServer(
            MockConfig(
                latency=0.15,
                latency_jitter=0.2,
                fault_rate=0.03,
                seed=7,
                hang_seconds=2.0,
                rpm=max(1, int(cfg.rpm)) if cfg.rpm else None,
                tpm=max(1, int(cfg.tpm)) if cfg.tpm else None,
            )
        )
        simulate_server.start()
        base_url, api_key = simulate_server.base_url, "sk-simulate"
    base_url, prices = provider(cfg, base_url, api_key, warn)

    tally = Tally()
    out_path = None if cfg.output == "-" else Path(cfg.output)
    in_path = None if cfg.input == "-" else Path(cfg.input)
    fingerprint: dict[str, Any] = {"input": cfg.input, "shaping": shaping(cfg)}
    if in_path is not None:
        fingerprint["input_sha256"] = file_digest(in_path)
    done: Done | None = None
    done_ids: dict[int, str] | None = None
    spent_before = 0.0
    formatter = None
    if cfg.output_format == "openai-batch":
        from .formats import resume_openai_batch, to_openai_batch_line

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
    elif out_path is not None:
        state = open_for_resume(
            out_path,
            fingerprint,
            restart=cfg.restart,
            retry_failed=cfg.retry_failed,
            keep_ids=in_path is None,
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

    journal = Journal(out_path, fsync=cfg.fsync)
    loop = asyncio.get_running_loop()
    limits = Limits(
        concurrency=cfg.concurrency,
        rpm=cfg.rpm,
        tpm=cfg.tpm,
        clock=loop.time,
        concurrency_given=cfg.concurrency_given,
    )

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
    )
    mode = _reporter_mode(cfg)
    reporter = Reporter(
        tally, limits.snapshot, mode=mode, interval=cfg.status_every if mode == "plain" else None
    )
    try:
        async with ApiClient(base_url, api_key, timeout=cfg.timeout) as client:
            engine = Engine(
                client=client,
                limits=limits,
                journal=journal,
                config=config,
                price=prices.cost,
                budget=budget,
                tally=tally,
                formatter=formatter,
            )
            items = _source(cfg, in_path, done, done_ids, tally)
            metrics, metrics_task = _metrics(cfg, engine, tally, limits, warn)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, engine.request_stop, int(sig))
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
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
                await reporter.stop()
                if metrics_task is not None:
                    metrics_task.cancel()  # it writes the final figures as it stops
                    await asyncio.gather(metrics_task, return_exceptions=True)
            if metrics is not None and cfg.pushgateway:
                metrics.update(tally, limits.snapshot())
                if msg := await asyncio.to_thread(metrics.push, cfg.pushgateway):
                    warn(msg)
    finally:
        journal.close()
        if simulate_server is not None:
            simulate_server.close()
    elapsed = time.monotonic() - started
    return RunReport(
        outcome, elapsed, reporter.summary(elapsed), budget.spent if budget is not None else None
    )


async def _execute_batch(cfg: RunConfig, warn: Callable[[str], None], started: float) -> RunReport:
    """--via batch: hand the file to the provider's Batch API (batch.py does the work)."""
    from .batch import BatchRun, run_via_batch
    from .limits import LimitsSnapshot

    tally = Tally()
    loop = asyncio.get_running_loop()

    def snapshot() -> LimitsSnapshot:
        return LimitsSnapshot(
            concurrency=0,
            in_flight=tally.in_flight,
            rpm=None,
            tpm=None,
            rpm_ceiling=None,
            tpm_ceiling=None,
            rate_limited=0,
            paused_for=0.0,
        )

    reporter = Reporter(tally, snapshot, mode=_reporter_mode(cfg))
    runs: list[BatchRun] = []

    def ready(run: BatchRun) -> None:
        runs.append(run)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, run.request_stop, int(sig))

    reporter.start()
    try:
        outcome = await run_via_batch(cfg, tally=tally, warn=warn, on_ready=ready)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await reporter.stop()
    elapsed = time.monotonic() - started
    spent = runs[0].budget.spent if runs and runs[0].budget is not None else None
    return RunReport(outcome, elapsed, reporter.summary(elapsed), spent)


def _metrics(
    cfg: RunConfig, engine: Engine, tally: Tally, limits: Limits, warn: Callable[[str], None]
) -> tuple[Any, asyncio.Task[None] | None]:
    if not (cfg.metrics_file or cfg.pushgateway):
        return None, None
    from .metrics import Metrics

    metrics = Metrics()
    engine.listeners.append(metrics.observe)
    if not cfg.metrics_file:
        return metrics, None
    try:
        metrics.update(tally, limits.snapshot())
        metrics.write(cfg.metrics_file)  # fail before anything is sent
    except OSError as exc:
        raise UsageError(f"cannot write {cfg.metrics_file}: {exc.strerror or exc}") from exc
    task = asyncio.create_task(
        metrics.run_periodic(cfg.metrics_file, tally, limits.snapshot, warn=warn)
    )
    return metrics, task


def _source(
    cfg: RunConfig,
    in_path: Path | None,
    done: Done | None,
    done_ids: dict[int, str] | None,
    tally: Tally,
) -> AsyncIterator[Request | InvalidLine]:
    if in_path is None:
        stream = StreamSource(sys.stdin.buffer, cfg.model)
        return prioritized(stream.items(done, done_ids), window=cfg.stdin_window)
    src = FileSource(in_path, cfg.model)
    # The scan validates everything before anything is sent; invalid lines are recorded first.
    invalid: list[InvalidLine] = []
    src.scan(done, invalid.append)
    tally.total = src.total
    return _chain(invalid, src.requests())


async def _chain(
    first: list[InvalidLine], then: Iterator[Request]
) -> AsyncIterator[Request | InvalidLine]:
    for item in first:
        yield item
    async for req in aiter_items(then):
        yield req
