"""`burstq merge`: shard outputs of one input joined in input order, exactly once checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, boundary, err
from .app import env as _env


@app.command()
@boundary
def merge(
    outputs: Annotated[
        list[Path], typer.Argument(help="Shard outputs of `burstq run --shard I/N` (JSONL).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", envvar=_env("merge_output"), help="Merged OUTPUT.")
    ],
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            envvar=_env("merge_input"),
            help="The request file the shards were run on, if it moved since (default: the "
            "path their sidecars name).",
        ),
    ] = None,
) -> None:
    """Join the shard outputs of one input into one OUTPUT, in input order.

    Refuses (exit 2, nothing written) unless every line of the input has exactly one record
    across the shards. The merged OUTPUT resumes like an unsharded run's: `burstq run INPUT -o
    OUTPUT --retry-failed` redoes only its failed records.

    Example:

        burstq merge out-*.jsonl -o out.jsonl

        burstq merge out-0.jsonl out-1.jsonl out-2.jsonl -o out.jsonl --input requests.jsonl
    """
    from ..files.merge import merge as join

    report = join(list(outputs), output, input_path=input)
    err(
        f"burstq: merged {len(outputs)} outputs (shards {', '.join(report.shards)}): "
        f"{report.records} records, {report.completed} completed, {report.failed} failed "
        f"-> {report.output}"
    )
    raise typer.Exit(1 if report.failed else 0)
