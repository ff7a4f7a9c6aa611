"""`burstq run`: options -> RunConfig -> run.execute() once -> summary and exit code."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from ..errors import BurstError, IncompleteRun, UsageError
from .app import app, boundary, err, one_of
from .options import (
    ApiKeyOpt,
    BackoffBaseOpt,
    BaseUrlOpt,
    BatchPollOpt,
    BatchSizeOpt,
    BudgetMaxTokensOpt,
    CacheDeterministicOnlyOpt,
    CacheOpt,
    CompletionWindowOpt,
    ConcurrencyOpt,
    DryRunOpt,
    EndpointsOpt,
    FailOnErrorRateOpt,
    FallbackModelOpt,
    FsyncOpt,
    GraceOpt,
    IdColumnOpt,
    InputArg,
    InputFormatOpt,
    LimiterOpt,
    LimitKeyOpt,
    MaxCostOpt,
    MaxOutputCharsOpt,
    MaxResponseBytesOpt,
    MaxRetriesOpt,
    MaxTokensOpt,
    MaxWaitOpt,
    MetricsFileOpt,
    ModelOpt,
    OutputFormatOpt,
    OutputOpt,
    ParamOpt,
    PricesOpt,
    ProgressOpt,
    PromptOpt,
    PushgatewayOpt,
    QuietOpt,
    RestartOpt,
    RetryFailedOpt,
    RpmOpt,
    SchemaOpt,
    ShardOpt,
    SimulateOpt,
    StatusEveryOpt,
    SystemOpt,
    TemplateOpt,
    TimeoutOpt,
    TpmOpt,
    ViaOpt,
)


def _resume_hint(api_key: str | None) -> str:
    argv = ["burstq", *sys.argv[1:]]
    out: list[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok in ("--restart", "--retry-failed"):
            continue
        if tok == "--api-key":
            skip = True
            continue
        if tok.startswith("--api-key=") or (api_key and api_key in tok):
            continue
        out.append(tok)
    return shlex.join(out)


@app.command()
@boundary
def run(
    ctx: typer.Context,
    input: InputArg,
    output: OutputOpt = None,
    model: ModelOpt = "gpt-4o-mini",
    fallback_model: FallbackModelOpt = None,
    concurrency: ConcurrencyOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_retries: MaxRetriesOpt = 5,
    timeout: TimeoutOpt = 60.0,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    max_cost: MaxCostOpt = None,
    budget_max_tokens: BudgetMaxTokensOpt = 4096,
    prices: PricesOpt = None,
    retry_failed: RetryFailedOpt = False,
    restart: RestartOpt = False,
    simulate: SimulateOpt = False,
    quiet: QuietOpt = False,
    progress: ProgressOpt = "auto",
    pushgateway: PushgatewayOpt = None,
    status_every: StatusEveryOpt = 5.0,
    metrics_file: MetricsFileOpt = None,
    fsync: FsyncOpt = False,
    grace: GraceOpt = 10.0,
    max_output_chars: MaxOutputCharsOpt = 50_000,
    backoff_base: BackoffBaseOpt = 0.5,
    via: ViaOpt = "direct",
    batch_size: BatchSizeOpt = 50_000,
    completion_window: CompletionWindowOpt = "24h",
    batch_poll: BatchPollOpt = None,
    output_format: OutputFormatOpt = "burstq",
    fail_on_error_rate: FailOnErrorRateOpt = None,
    limiter: LimiterOpt = None,
    limit_key: LimitKeyOpt = None,
    max_wait: MaxWaitOpt = 900.0,
    shard: ShardOpt = None,
    prompt: PromptOpt = None,
    system: SystemOpt = None,
    template: TemplateOpt = None,
    schema: SchemaOpt = None,
    id_column: IdColumnOpt = None,
    input_format: InputFormatOpt = None,
    max_response_bytes: MaxResponseBytesOpt = 32 * 1024 * 1024,
    endpoints: EndpointsOpt = None,
    dry_run: DryRunOpt = False,
    cache: CacheOpt = None,
    cache_deterministic_only: CacheDeterministicOnlyOpt = False,
    max_tokens: MaxTokensOpt = None,
    param: ParamOpt = None,
) -> None:
    """Process a request file (or data rows through a prompt template): every line or row
    gets exactly one record in OUTPUT.

    Rerun the same command after any interruption to resume; finished requests are never
    sent again. After INPUT or the request options changed, a rerun is incremental: records
    whose request is unchanged are kept, only new and changed requests are sent.

    Example:

        burstq run requests.jsonl -o responses.jsonl --rpm 500 --tpm 200000

        burstq run samples/quickstart.jsonl -o out.jsonl --simulate

        burstq run big.jsonl -o big.responses.jsonl --via batch --batch-size 20000

        burstq run big.jsonl -o out-0.jsonl --shard 0/4 --limiter redis://redis:6379/0 --rpm 5000
        burstq run samples/reviews.csv -o labels.jsonl --template samples/reviews.toml --simulate
        burstq run requests.jsonl -o out.jsonl --endpoints samples/endpoints.toml
        burstq run today.jsonl -o today.responses.jsonl --dry-run
        burstq run evals.jsonl -o evals.out.jsonl --cache ~/.cache/burstq.db

        burstq run q.jsonl --base-url http://localhost:8080/v1 --max-tokens 256 --param seed=1
    """
    from ..config import RunConfig, Shard
    from ..files.output import check_input
    from ..redact import register
    from ..run import execute
    from .rows import task_options

    task, model = task_options(
        ctx, input, model, prompt, system, template, schema, id_column, input_format
    )
    if task is not None and output_format != "burstq":
        raise UsageError("--output-format openai-batch is for request files, not data rows")

    shard_spec = Shard.parse(shard) if shard else None
    if shard_spec is not None and output is None:
        raise UsageError("--shard needs -o OUTPUT (one output per shard, e.g. out-0.jsonl)")
    if limiter is not None:
        from ..live.shared import check_url

        check_url(limiter)
        if via == "batch":
            raise UsageError("--limiter paces live requests; --via batch sends none")
    if shard_spec is not None and via == "batch":
        raise UsageError("--shard splits a live run; --via batch hands the whole file over")

    register(api_key)  # where the key enters: hidden from every message from here on

    if output is None:
        output = "-" if input == "-" else str(_default_output(input))
    one_of("--progress", progress, ("auto", "rich", "plain", "quiet"))
    one_of("--via", via, ("direct", "batch"))
    one_of("--output-format", output_format, ("burstq", "openai-batch"))
    if input != "-":
        check_input(Path(input))
    if cache_deterministic_only and cache is None:
        raise UsageError("--cache-deterministic-only needs --cache PATH")
    if cache is not None and output_format != "burstq":
        raise UsageError("--cache writes burstq records: not with --output-format openai-batch")
    params = parse_params(param or [])
    if via == "batch" and (max_tokens is not None or params):
        raise UsageError(
            "--max-tokens and --param apply to live runs; with --via batch set them in the lines"
        )
    if output == "-" and (retry_failed or restart):
        raise UsageError("--retry-failed and --restart need an OUTPUT file")
    cfg = RunConfig(
        input=input,
        output=output,
        model=model,
        fallback_models=list(fallback_model or []),
        concurrency=concurrency or 50,
        concurrency_given=concurrency is not None,
        rpm=rpm,
        tpm=tpm,
        max_retries=max_retries,
        timeout=timeout,
        base_url=base_url,
        api_key=api_key,
        max_cost=max_cost,
        budget_max_tokens=budget_max_tokens,
        prices=prices,
        retry_failed=retry_failed,
        restart=restart,
        simulate=simulate,
        quiet=quiet,
        progress=progress,
        status_every=status_every,
        metrics_file=metrics_file,
        pushgateway=pushgateway,
        fsync=fsync,
        grace=grace,
        max_output_chars=max_output_chars,
        backoff_base=backoff_base,
        via=via,
        batch_size=batch_size,
        completion_window=completion_window,
        batch_poll=batch_poll,
        output_format=output_format,
        limiter=limiter,
        limit_key=limit_key,
        max_wait=max_wait,
        shard=shard_spec,
        task=task,
        max_response_bytes=max_response_bytes,
        endpoints=endpoints,
        dry_run=dry_run,
        cache=cache,
        cache_deterministic_only=cache_deterministic_only,
        max_tokens=max_tokens,
        params=params,
    )
    report = execute(cfg)
    outcome = report.outcome
    if dry_run:
        err(report.summary)
        raise typer.Exit(0)
    if not quiet:
        err(report.summary)
    if outcome.error is not None:
        raise BurstError(f"{outcome.error.kind}: {outcome.error} -- {outcome.error.advice}")
    if outcome.reason == "interrupted":
        err(
            f"burstq: interrupted; to resume, run the same command again:\n  "
            f"{_resume_hint(api_key)}"
        )
        raise typer.Exit(130 if outcome.signal == 2 else 143)
    if outcome.missing:
        raise IncompleteRun(
            f"{outcome.missing} input line(s) have no record in {output} although the run "
            "ended; rerun the same command to fill them in"
        )
    if outcome.reason == "budget":
        err(
            f"burstq: budget cap reached: spent ${report.budget_spent or 0:.6f} of "
            f"${max_cost}; rerun with a higher --max-cost to continue"
        )
        raise typer.Exit(3)
    t = outcome.tally
    failed = t.failed + t.skipped_failed
    total = t.finished + t.skipped
    if fail_on_error_rate is not None:
        raise typer.Exit(1 if total and failed / total > fail_on_error_rate else 0)
    raise typer.Exit(1 if failed else 0)


_NOT_PARAMS = ("model", "messages", "input", "stream")


def parse_params(items: list[str]) -> dict[str, Any]:
    """--param KEY=VALUE...: VALUE as JSON when it parses (0, true, [..]), else as text."""
    import orjson

    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--param wants KEY=VALUE, not {item!r}")
        if key in _NOT_PARAMS:
            raise UsageError(f"--param {key}: not a parameter (it is part of the request itself)")
        try:
            params[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            params[key] = raw
    return params


def _default_output(input: str) -> Path:
    p = Path(input)
    stem = p.name
    for ext in (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return p.with_name(stem + ".responses.jsonl")
