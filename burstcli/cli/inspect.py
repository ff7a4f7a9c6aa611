"""`burstq validate`, `estimate` and `stats`: read files, call nothing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from .app import app, boundary, console, err, usd
from .app import env as _env
from .options import (
    BudgetMaxTokensOpt,
    IdColumnOpt,
    InputFormatOpt,
    ModelOpt,
    PricesOpt,
    PromptOpt,
    SchemaOpt,
    SystemOpt,
    TemplateOpt,
)


def _checked_input(
    ctx: typer.Context,
    input: Path,
    model: str,
    prompt: str | None,
    system: str | None,
    template: Path | None,
    schema: str | None,
    id_column: str | None,
    input_format: str | None,
) -> tuple[Any, str]:
    """INPUT checked readable, then the row parser when the row options are given (None:
    request lines), and the model."""
    from ..files.output import check_input
    from ..files.rows import RowParser
    from .rows import task_options

    check_input(input)
    task, model = task_options(
        ctx, str(input), model, prompt, system, template, schema, id_column, input_format
    )
    return (RowParser(task, model) if task is not None else None), model


@app.command()
@boundary
def validate(
    ctx: typer.Context,
    input: Annotated[
        Path,
        typer.Argument(metavar="INPUT", help="Request file (JSONL), or data rows with --prompt."),
    ],
    model: ModelOpt = "gpt-4o-mini",
    prompt: PromptOpt = None,
    system: SystemOpt = None,
    template: TemplateOpt = None,
    schema: SchemaOpt = None,
    id_column: IdColumnOpt = None,
    input_format: InputFormatOpt = None,
) -> None:
    """Check a request file (or data rows through a template) without calling any API: every
    problem as FILE:LINE: message (for CSV, the line where the row starts).

    Exit 0 when every line is a valid request, 2 otherwise.

    Example:

        burstq validate requests.jsonl

        burstq validate samples/reviews.csv --template samples/reviews.toml
    """
    from ..files.reader import validate_file

    parser, model = _checked_input(
        ctx, input, model, prompt, system, template, schema, id_column, input_format
    )
    total, problems = validate_file(input, model, parser)
    for p in problems:
        err(f"{input}:{p.line}: {p.message}")
    err(f"{input}: {total} requests, {len(problems)} invalid")
    raise typer.Exit(2 if problems else 0)


@app.command()
@boundary
def estimate(
    ctx: typer.Context,
    input: Annotated[
        Path,
        typer.Argument(metavar="INPUT", help="Request file (JSONL), or data rows with --prompt."),
    ],
    model: ModelOpt = "gpt-4o-mini",
    rpm: Annotated[
        float | None,
        typer.Option(
            envvar=_env("rpm"), metavar="N", min=0.001, help="Requests/minute you will run at."
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option(envvar=_env("tpm"), metavar="N", min=1, help="Tokens/minute you will run at."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            envvar=_env("concurrency"),
            metavar="N",
            min=1,
            help="Requests in flight (with --latency).",
        ),
    ] = None,
    latency: Annotated[
        float,
        typer.Option(
            min=0.001,
            metavar="SECONDS",
            help="Assumed seconds per request, for the concurrency bound.",
        ),
    ] = 1.0,
    budget_max_tokens: BudgetMaxTokensOpt = 4096,
    prices: PricesOpt = None,
    batch: Annotated[bool, typer.Option("--batch", help="Price at Batch API rates.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    prompt: PromptOpt = None,
    system: SystemOpt = None,
    template: TemplateOpt = None,
    schema: SchemaOpt = None,
    id_column: IdColumnOpt = None,
    input_format: InputFormatOpt = None,
) -> None:
    """Tokens, cost range and minimum duration of a request file (or data rows through a
    template), with no API call.

    Example:

        burstq estimate requests.jsonl --rpm 500 --tpm 200000 --concurrency 50

        burstq estimate samples/reviews.csv --template samples/reviews.toml
    """
    import orjson

    from ..money.estimate import estimate as compute
    from ..money.pricing import PriceBook, PricesFileError

    parser, model = _checked_input(
        ctx, input, model, prompt, system, template, schema, id_column, input_format
    )
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
        parser=parser,
    )
    for w in warnings:
        err(f"burstq: warning: {w}")
    if as_json:
        sys.stdout.write(orjson.dumps(est, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    _render_estimate(est)


def _render_estimate(est: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    out = console()
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
            usd(m["cost_usd_typical"]),
            usd(m["cost_usd_worst"]),
            style="bold" if m["model"] == "total" else None,
        )
    out.print(table)
    if est["invalid"]:
        out.print(f"{est['invalid']} invalid lines (see `burstq validate`)")
    if est["unpriced_models"]:
        out.print(
            "no price for: " + ", ".join(est["unpriced_models"]) + " (add them with --prices FILE)"
        )
    if est["min_duration_s"] is not None:
        others = {k: v for k, v in est["duration_bounds_s"].items() if k != est["binding_limit"]}
        line = f"minimum duration: {est['min_duration_s']:,.1f}s, set by {est['binding_limit']}"
        if others:  # name the binding limit once; the others say how far behind they are
            line += " (" + ", ".join(f"{k} {v:,.1f}s" for k, v in others.items()) + ")"
        out.print(line)
    else:
        out.print("minimum duration: give --rpm, --tpm or --concurrency to bound it")


@app.command()
@boundary
def stats(
    output: Annotated[
        list[Path],
        typer.Argument(
            metavar="OUTPUT...",
            help="Output files of `burstq run` (JSONL); a file still being written is fine.",
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the figures as JSON on stdout (= --format json).")
    ] = False,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            envvar=_env("stats_format"),
            help="table (rich tables on stderr), json or markdown (GitHub-flavoured, on "
            "stdout: for $GITHUB_STEP_SUMMARY). Default: table, or json with --json.",
        ),
    ] = None,
) -> None:
    """Latency, tokens, cost, errors and throughput of one or more output files.

    Example:

        burstq stats responses.jsonl

        burstq stats day1.jsonl day2.jsonl --json | jq .latency_ms

        burstq stats responses.jsonl --format markdown >> "$GITHUB_STEP_SUMMARY"
    """
    import orjson

    from ..observe.stats import compute

    if fmt is not None and fmt not in STATS_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(STATS_FORMATS)}, not {fmt!r}")
    if as_json and fmt not in (None, "json"):
        raise UsageError(f"--json and --format {fmt} disagree: give one of them")
    fmt = fmt or ("json" if as_json else "table")
    figures = compute(output)
    if fmt == "json":
        sys.stdout.buffer.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    elif fmt == "markdown":
        from ..observe.statsmd import render_markdown

        sys.stdout.write(render_markdown(figures))
        sys.stdout.flush()
    else:
        from ..observe.statsview import render

        render(figures, console())


STATS_FORMATS = ("table", "json", "markdown")
