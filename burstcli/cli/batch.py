"""`burstq batch status|cancel`: the state of a `--via batch` run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app, boundary, console, err
from .options import ApiKeyOpt, BaseUrlOpt

batch_app = typer.Typer(
    help="Inspect or cancel the Batch API jobs of a `--via batch` run.", no_args_is_help=True
)
app.add_typer(batch_app, name="batch")


@batch_app.command("status")
@boundary
def batch_status(
    output: Annotated[
        Path, typer.Argument(metavar="OUTPUT", help="OUTPUT of a `burstq run --via batch`.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """What the run's state file knows about its batches (no API call).

    Example:

        burstq batch status responses.jsonl
    """
    import orjson

    from ..batch.jobs import describe_batches
    from ..errors import InputError, missing_file

    info = describe_batches(output)
    if info is None and not output.exists():
        raise missing_file(output)
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
    console().print(table)


@batch_app.command("cancel")
@boundary
def batch_cancel(
    output: Annotated[
        Path, typer.Argument(metavar="OUTPUT", help="OUTPUT of a `burstq run --via batch`.")
    ],
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

    from ..batch.jobs import cancel_batches
    from ..config import ProviderSpec
    from ..redact import register

    register(api_key)
    spec = ProviderSpec(base_url, api_key)
    cancelled = asyncio.run(
        cancel_batches(
            output, spec.url, api_key, spec.timeout, warn=lambda m: err(f"burstq: warning: {m}")
        )
    )
    err(
        f"burstq: cancelled {len(cancelled)} batch(es)"
        + (": " + ", ".join(cancelled) if cancelled else "")
    )
