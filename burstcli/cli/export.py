"""`burstq export`: labels back onto the input rows; `burstq schema`: what a field list means."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app, boundary, err
from .app import env as _env


@app.command()
@boundary
def export(
    output: Annotated[
        list[Path],
        typer.Argument(help="Output file(s) of `burstq run`; several = shards of one input."),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            envvar=_env("export_output"),
            help="CSV, TSV, JSONL or Parquet file (by extension), or '-' for stdout.",
        ),
    ],
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            envvar=_env("export_input"),
            help="The run's INPUT [default: the one OUTPUT's sidecar names].",
        ),
    ] = None,
    with_fields: Annotated[
        str | None,
        typer.Option(
            "--with",
            envvar=_env("with"),
            help="Record fields to add as columns, comma-separated: latency_ms, cost_usd, "
            "model_used, attempts, tokens_used, finish_reason, request_id, ...",
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            envvar=_env("export_format"),
            help="csv, tsv, jsonl or parquet [default: from -o's extension; csv for stdout].",
        ),
    ] = None,
) -> None:
    """One row per input row, in input order: the input's columns, then the parsed fields (or
    `output`), then status and error. Failed rows are kept with their error.

    Example:

        burstq export labels.jsonl -o labels.csv

        burstq export labels-0.jsonl labels-1.jsonl -o labels.parquet --with latency_ms,cost_usd
    """
    from ..files.export import export as run_export

    fields = [f.strip() for f in (with_fields or "").split(",") if f.strip()]
    summary = run_export(output, to, input=input, with_fields=fields, fmt=fmt)
    where = "stdout" if to == "-" else to
    err(
        f"burstq: exported {summary.rows} rows to {where} ({summary.completed} completed, "
        f"{summary.failed} failed, {summary.missing} without a record)"
    )


@app.command()
@boundary
def schema(
    dsl: Annotated[str, typer.Argument(help="A field list, a JSON Schema, or a file of either.")],
    strict: Annotated[
        bool, typer.Option("--strict", help="Print the strict-mode form that is sent.")
    ] = False,
) -> None:
    """Print the JSON Schema a concise field list means (types str, int, float, bool; enums
    with `one of a/b/c`; `name?` may be null).

    Example:

        burstq schema "sentiment: one of positive/negative/neutral, confidence float, reason"

        burstq schema "name, age int, bio: their bio" --strict
    """
    import orjson

    from ..files.schema import load_schema
    from ..files.schema import strict as make_strict

    result = load_schema(dsl)
    if strict:
        result = make_strict(result)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
