"""The command line: parse options, build a config, call the library once, render, exit.

Expected failures are `BurstError`s, caught once in `main()` and printed as "Error: ..." with
the documented exit code (BURSTQ_DEBUG=1 re-raises them with a traceback). Heavy imports stay
inside the commands so `burstq --help` starts fast.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import BurstError, UsageError

app = typer.Typer(
    name="burstq",
    help="Push files of LLM requests through OpenAI-compatible APIs as fast as the rate limits "
    "allow: resumable, exactly once, with latency, tokens and cost for every request.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _boundary(fn: Callable[..., None]) -> Callable[..., None]:
    """The one error boundary: a BurstError becomes "Error: ..." and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except BurstError as exc:
            if os.environ.get("BURSTQ_DEBUG") == "1":
                raise
            _err(f"Error: {exc}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _env(name: str) -> str:
    return f"BURSTQ_{name.upper().replace('-', '_')}"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


# Options several commands share, declared once so their names, variables and help agree.
ModelOpt = Annotated[
    str, typer.Option(envvar=_env("model"), help="Model for lines that name none.")
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        envvar=[_env("base_url"), "OPENAI_BASE_URL"],
        help="OpenAI-compatible API base URL (vLLM, llama.cpp, a proxy...).",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        envvar=[_env("api_key"), "OPENAI_API_KEY"],
        show_default=False,
        help="API key (default: $OPENAI_API_KEY). Never written anywhere.",
    ),
]
BudgetMaxTokensOpt = Annotated[
    int,
    typer.Option(
        envvar=_env("budget_max_tokens"),
        min=1,
        help="Completion tokens reserved (for --max-cost) or assumed (by estimate) for a "
        "request without max_tokens.",
    ),
]
PricesOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=_env("prices"),
        help="TOML or JSON file of per-model prices (USD per 1M tokens) that override or "
        "add to genai-prices.",
    ),
]


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
@_boundary
def run(
    input: Annotated[str, typer.Argument(help="Request file (JSONL), or '-' for stdin.")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            envvar=_env("output"),
            help="Where records go (JSONL); '-' for stdout. Default: INPUT's name with "
            ".responses.jsonl (stdout when INPUT is '-').",
        ),
    ] = None,
    model: ModelOpt = "gpt-4o-mini",
    fallback_model: Annotated[
        list[str] | None,
        typer.Option(
            "--fallback-model",
            envvar=_env("fallback_model"),
            help="Tried in order after the model's retries run out or it is not found. Repeatable.",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            envvar=_env("concurrency"),
            min=1,
            help="Most requests in flight at once [default: 50]. The first request goes alone; "
            "a value you give opens in full after the first answer, the default ramps up "
            "like TCP slow start.",
        ),
    ] = None,
    rpm: Annotated[
        float | None,
        typer.Option(
            envvar=_env("rpm"),
            min=0.001,
            help="Requests per minute, a hard ceiling spread evenly over the minute. "
            "Default: learned from the provider's x-ratelimit headers.",
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option(
            envvar=_env("tpm"),
            min=1,
            help="Tokens per minute, a hard ceiling (estimated as prompt chars/4 + max_tokens, "
            "corrected with the real usage).",
        ),
    ] = None,
    max_retries: Annotated[
        int,
        typer.Option(
            envvar=_env("max_retries"),
            min=0,
            help="Retries per model after the first attempt (429s do not use them up).",
        ),
    ] = 5,
    timeout: Annotated[
        float, typer.Option(envvar=_env("timeout"), min=0.001, help="Seconds per attempt.")
    ] = 60.0,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            envvar=_env("max_cost"),
            min=0,
            help="Budget in USD, never crossed: stop dispatching before it, exit 3; rerun "
            "with a higher cap to continue.",
        ),
    ] = None,
    budget_max_tokens: BudgetMaxTokensOpt = 4096,
    prices: PricesOpt = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            envvar=_env("retry_failed"),
            help="Redo only the failed records of OUTPUT, replacing them.",
        ),
    ] = False,
    restart: Annotated[
        bool, typer.Option(envvar=_env("restart"), help="Discard OUTPUT and start over.")
    ] = False,
    simulate: Annotated[
        bool,
        typer.Option(
            envvar=_env("simulate"),
            help="Run the whole pipeline against the built-in mock server on loopback: no key, "
            "no network, no cost.",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", envvar=_env("quiet"), help="No progress and no summary."),
    ] = False,
    progress: Annotated[
        str,
        typer.Option(
            envvar=_env("progress"),
            help="auto (rich on a terminal, a status line every few seconds otherwise), rich, "
            "plain or quiet.",
        ),
    ] = "auto",
    pushgateway: Annotated[
        str | None,
        typer.Option(
            envvar=_env("pushgateway"),
            help="Prometheus Pushgateway URL to push the run's metrics to at the end.",
        ),
    ] = None,
    status_every: Annotated[
        float,
        typer.Option(
            envvar=_env("status_every"),
            min=0.01,
            help="Seconds between plain status lines (when stderr is not a terminal).",
        ),
    ] = 5.0,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("metrics_file"),
            help="Prometheus text file for node_exporter's textfile collector.",
        ),
    ] = None,
    fsync: Annotated[
        bool,
        typer.Option(
            envvar=_env("fsync"),
            help="fsync OUTPUT after each write: survives power loss, costs a disk flush per "
            "batch of records.",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            envvar=_env("grace"),
            min=0,
            help="Seconds in-flight requests get to finish after Ctrl-C / SIGTERM.",
        ),
    ] = 10.0,
    max_output_chars: Annotated[
        int,
        typer.Option(
            envvar=_env("max_output_chars"),
            min=1,
            help="Cap on each output's length (the record says 'truncated').",
        ),
    ] = 50_000,
    backoff_base: Annotated[
        float,
        typer.Option(
            envvar=_env("backoff_base"),
            min=0,
            help="First retry waits up to this many seconds; doubles per retry (full jitter).",
        ),
    ] = 0.5,
    via: Annotated[
        str,
        typer.Option(
            envvar=_env("via"),
            help="direct (live API calls) or batch (the provider's Batch API: half price, up to "
            "24 h; resumable like everything else).",
        ),
    ] = "direct",
    batch_size: Annotated[
        int,
        typer.Option(
            envvar=_env("batch_size"),
            min=1,
            max=50_000,
            help="--via batch: most requests per batch file.",
        ),
    ] = 50_000,
    completion_window: Annotated[
        str,
        typer.Option(envvar=_env("completion_window"), help="--via batch: the batches' window."),
    ] = "24h",
    batch_poll: Annotated[
        float | None,
        typer.Option(
            envvar=_env("batch_poll"),
            min=0.01,
            help="--via batch: seconds before the first status poll (then backing off to "
            "12x, at most 60 s). Default 5.",
        ),
    ] = None,
    output_format: Annotated[
        str,
        typer.Option(
            envvar=_env("output_format"),
            help="burstq (records as documented) or openai-batch (the Batch API's output "
            "lines: id, custom_id, response, error).",
        ),
    ] = "burstq",
    fail_on_error_rate: Annotated[
        float | None,
        typer.Option(
            envvar=_env("fail_on_error_rate"),
            min=0,
            max=1,
            help="For CI: exit 1 only when more than this fraction of requests failed.",
        ),
    ] = None,
) -> None:
    """Process a request file: every line gets exactly one record in OUTPUT.

    Rerun the same command after any interruption to resume; finished requests are never
    sent again.

    Example:

        burstq run requests.jsonl -o responses.jsonl --rpm 500 --tpm 200000

        burstq run samples/quickstart.jsonl -o out.jsonl --simulate

        burstq run big.jsonl -o big.responses.jsonl --via batch --batch-size 20000
    """
    from .runner import RunConfig, execute

    if output is None:
        output = "-" if input == "-" else str(_default_output(input))
    if progress not in ("auto", "rich", "plain", "quiet"):
        raise UsageError(f"--progress must be auto, rich, plain or quiet, not {progress!r}")
    if via not in ("direct", "batch"):
        raise UsageError(f"--via must be direct or batch, not {via!r}")
    if output_format not in ("burstq", "openai-batch"):
        raise UsageError(f"--output-format must be burstq or openai-batch, not {output_format!r}")
    if output != "-" and input != "-" and Path(output).resolve() == Path(input).resolve():
        raise UsageError("OUTPUT must not be INPUT")
    if input != "-" and not Path(input).is_file():
        raise UsageError(f"cannot read {input}: no such file")
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
    )
    report = execute(cfg)
    outcome = report.outcome
    if not quiet:
        _err(report.summary)
    if outcome.error is not None:
        raise BurstError(
            f"{outcome.error.kind}: {outcome.error} -- the run stopped at once "
            "(every further call would fail the same way); fix it and rerun "
            "the same command to resume"
        )
    if outcome.reason == "interrupted":
        _err(
            f"burstq: interrupted; to resume, run the same command again:\n  "
            f"{_resume_hint(api_key)}"
        )
        raise typer.Exit(130 if outcome.signal == 2 else 143)
    if outcome.reason == "budget":
        _err(
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


def _default_output(input: str) -> Path:
    p = Path(input)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(stem + ".responses.jsonl")


@app.command()
@_boundary
def validate(
    input: Annotated[Path, typer.Argument(help="Request file (JSONL) to check.")],
) -> None:
    """Check a request file without calling any API: every problem as FILE:LINE: message.

    Exit 0 when every line is a valid request, 2 otherwise.

    Example:

        burstq validate requests.jsonl
    """
    from .errors import InputError
    from .reader import validate_file

    if not input.is_file():
        raise InputError(f"cannot read {input}: no such file")
    total, problems = validate_file(input)
    for p in problems:
        _err(f"{input}:{p.line}: {p.message}")
    _err(f"{input}: {total} requests, {len(problems)} invalid")
    raise typer.Exit(2 if problems else 0)


@app.command()
@_boundary
def estimate(
    input: Annotated[Path, typer.Argument(help="Request file (JSONL).")],
    model: ModelOpt = "gpt-4o-mini",
    rpm: Annotated[
        float | None,
        typer.Option(envvar=_env("rpm"), min=0.001, help="Requests/minute you will run at."),
    ] = None,
    tpm: Annotated[
        float | None, typer.Option(envvar=_env("tpm"), min=1, help="Tokens/minute you will run at.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            envvar=_env("concurrency"), min=1, help="Requests in flight (with --latency)."
        ),
    ] = None,
    latency: Annotated[
        float,
        typer.Option(min=0.001, help="Assumed seconds per request, for the concurrency bound."),
    ] = 1.0,
    budget_max_tokens: BudgetMaxTokensOpt = 4096,
    prices: PricesOpt = None,
    batch: Annotated[bool, typer.Option("--batch", help="Price at Batch API rates.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Tokens, cost range and minimum duration of a request file, with no API call.

    Example:

        burstq estimate requests.jsonl --rpm 500 --tpm 200000 --concurrency 50
    """
    import orjson

    from .errors import InputError
    from .estimate import estimate as compute
    from .pricing import PriceBook, PricesFileError

    if not input.is_file():
        raise InputError(f"cannot read {input}: no such file")
    warnings: list[str] = []
    try:
        book = PriceBook(prices, warn=warnings.append)
    except PricesFileError as exc:
        raise UsageError(str(exc)) from exc
    est = compute(
        input,
        default_model=model,
        prices=book,
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        latency=latency,
        assume_max_tokens=budget_max_tokens,
        batch=batch,
    )
    for w in warnings:
        _err(f"burstq: warning: {w}")
    if as_json:
        sys.stdout.write(orjson.dumps(est, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    _render_estimate(est)


def _console() -> Any:
    """Tables go to stderr (stdout is data); wide enough for them when it is not a TTY."""
    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def _usd(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.6f}" if x < 1 else f"${x:,.2f}"


def _render_estimate(est: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    console = _console()
    table = Table(
        title=f"burstq estimate: {est['file']}", title_justify="left", box=box.SIMPLE_HEAD
    )
    for col in (
        "model",
        "requests",
        "prompt tok",
        "compl. typ",
        "compl. max",
        "cost typ",
        "cost max",
    ):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    for m in [*est["models"], {**est, "model": "total"}]:
        table.add_row(
            m["model"],
            f"{m['requests']:,}",
            f"{m['prompt_tokens']:,}",
            f"{m['completion_tokens_typical']:,}",
            f"{m['completion_tokens_worst']:,}",
            _usd(m["cost_usd_typical"]),
            _usd(m["cost_usd_worst"]),
            style="bold" if m["model"] == "total" else None,
        )
    console.print(table)
    if est["invalid"]:
        console.print(f"{est['invalid']} invalid lines (see `burstq validate`)")
    if est["unpriced_models"]:
        console.print(
            "no price for: " + ", ".join(est["unpriced_models"]) + " (add them with --prices FILE)"
        )
    if est["min_duration_s"] is not None:
        bounds = ", ".join(f"{k} {v:,.1f}s" for k, v in est["duration_bounds_s"].items())
        console.print(
            f"minimum duration: {est['min_duration_s']:,.1f}s, set by "
            f"{est['binding_limit']} ({bounds})"
        )
    else:
        console.print("minimum duration: give --rpm, --tpm or --concurrency to bound it")


@app.command()
@_boundary
def stats(
    output: Annotated[
        list[Path],
        typer.Argument(
            help="Output files of `burstq run` (JSONL); a file still being written is fine."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the figures as JSON on stdout.")
    ] = False,
) -> None:
    """Latency, tokens, cost, errors and throughput of one or more output files.

    Example:

        burstq stats responses.jsonl

        burstq stats day1.jsonl day2.jsonl --json | jq .latency_ms
    """
    import orjson

    from .stats import compute
    from .statsview import render

    figures = compute(output)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        render(figures, _console())


batch_app = typer.Typer(
    help="Inspect or cancel the Batch API jobs of a `--via batch` run.", no_args_is_help=True
)
app.add_typer(batch_app, name="batch")


@batch_app.command("status")
@_boundary
def batch_status(
    output: Annotated[Path, typer.Argument(help="OUTPUT of a `burstq run --via batch`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """What the run's state file knows about its batches (no API call).

    Example:

        burstq batch status responses.jsonl
    """
    import orjson

    from .batch import describe_batches
    from .errors import InputError

    info = describe_batches(output)
    if info is None:
        raise InputError(
            f"no batch state next to {output} (is it the OUTPUT of a `--via batch` run?)"
        )
    if as_json:
        sys.stdout.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"{output}: {info['active']} active, "
        f"{info['waiting_for_next_round']} waiting for the next round",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for col in ("shard", "model", "round", "state", "status", "batch id", "requests"):
        table.add_column(col)
    for sh in info["shards"]:
        table.add_row(
            str(sh["shard"]),
            sh["model"],
            str(sh["round"]),
            sh["state"],
            str(sh["status"] or ""),
            str(sh["batch_id"] or ""),
            str(sh["requests"]),
        )
    _console().print(table)


@batch_app.command("cancel")
@_boundary
def batch_cancel(
    output: Annotated[Path, typer.Argument(help="OUTPUT of a `burstq run --via batch`.")],
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Cancel the run's batches still running at the provider.

    A rerun then records their requests as failed (batch_cancelled); --retry-failed redoes
    them.

    Example:

        burstq batch cancel responses.jsonl
    """
    import asyncio

    from .batch import cancel_batches
    from .runner import RunConfig

    cfg = RunConfig(input="", output=str(output), base_url=base_url, api_key=api_key)
    cancelled = asyncio.run(cancel_batches(cfg, warn=lambda m: _err(f"burstq: warning: {m}")))
    _err(
        f"burstq: cancelled {len(cancelled)} batch(es)"
        + (": " + ", ".join(cancelled) if cancelled else "")
    )


@app.command("mock-server")
@_boundary
def mock_server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    latency: Annotated[float, typer.Option(help="Seconds before each answer.")] = 0.0,
    jitter: Annotated[float, typer.Option(help="Extra random latency, 0..JITTER s.")] = 0.0,
    rpm: Annotated[
        int | None,
        typer.Option(help="Requests/minute, enforced per second like providers do (429s)."),
    ] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens/minute, same way.")] = None,
    fault_rate: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Fraction of requests answered with a random fault (5xx, timeout, "
            "reset, malformed or empty body).",
        ),
    ] = 0.0,
    hang_seconds: Annotated[
        float, typer.Option(min=0, help="How long a 'timeout' fault hangs before answering 504.")
    ] = 30.0,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="Accept only these keys (401 otherwise). Repeatable."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for faults and jitter.")] = None,
) -> None:
    """Serve an OpenAI-compatible API for rehearsal and tests (chat, embeddings, models).

    Example:

        burstq mock-server --port 8000 --rpm 600 --latency 0.2 --fault-rate 0.05

        burstq run requests.jsonl --base-url http://127.0.0.1:8000/v1 --api-key x
    """
    from .mock_server import MockConfig, serve

    serve(
        MockConfig(
            latency=latency,
            latency_jitter=jitter,
            rpm=rpm,
            tpm=tpm,
            fault_rate=fault_rate,
            seed=seed,
            hang_seconds=hang_seconds,
            api_keys=frozenset(api_key) if api_key else None,
        ),
        host=host,
        port=port,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
