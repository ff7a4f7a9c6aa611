"""`burstq endpoints check FILE`: is every endpoint of an endpoints file usable?"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app, boundary, console
from .options import ModelOpt, TimeoutOpt

endpoints_app = typer.Typer(
    help="Check an --endpoints file: reachability, keys, models, limits.", no_args_is_help=True
)
app.add_typer(endpoints_app, name="endpoints")


@endpoints_app.command("check")
@boundary
def endpoints_check(
    file: Annotated[Path, typer.Argument(help="The endpoints file (TOML or YAML).")],
    tiny_request: Annotated[
        bool,
        typer.Option(
            "--tiny-request",
            help="Also send one chat request of max_tokens 1 per endpoint, to learn its "
            "limits from the x-ratelimit headers (costs a fraction of a cent).",
        ),
    ] = False,
    model: ModelOpt = "gpt-4o-mini",
    timeout: TimeoutOpt = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Try each endpoint once (GET /models) and print a table: reachable, key valid, models
    the file names that the endpoint does not list, and limits (from the file or headers).

    Exit 0 when every endpoint is usable, 1 when one is not, 2 when the file is wrong.

    Example:

        burstq endpoints check samples/endpoints.toml

        burstq endpoints check endpoints.toml --tiny-request --json
    """
    import asyncio

    import orjson

    from ..live.check import check_all
    from ..live.endpoints import load

    specs = load(file)
    results = asyncio.run(check_all(specs, timeout=timeout, tiny_request=tiny_request, model=model))
    if as_json:
        sys.stdout.write(orjson.dumps([r.as_dict() for r in results]).decode() + "\n")
    else:
        from rich.table import Table

        table = Table(title=f"endpoints in {file}")
        for col in ("endpoint", "base URL", "reachable", "key", "models", "rpm", "tpm", "note"):
            table.add_column(col)

        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:,.0f}"

        for r in results:
            key = "?" if r.key_ok is None else "valid" if r.key_ok else "[red]refused[/]"
            models = "ok" if not r.missing_models else "[red]missing " + ", ".join(r.missing_models)
            src = f" ({r.limits_from})" if r.limits_from else ""
            table.add_row(
                r.name,
                r.base_url,
                "yes" if r.reachable else "[red]no[/]",
                key,
                models,
                num(r.rpm) + src,
                num(r.tpm),
                r.message,
            )
        console().print(table)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)
