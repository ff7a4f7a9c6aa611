"""`burstq cache stats|prune`: look after the `--cache` answer database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app, boundary, console, err, usd
from .app import env as _env

cache_app = typer.Typer(
    help="Inspect or prune the SQLite answer cache of `burstq run --cache`.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")

CachePathArg = Annotated[Path, typer.Argument(help="The cache file given to --cache.")]


@cache_app.command("stats")
@boundary
def cache_stats(
    path: CachePathArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Answers, hits, money saved, age and size of a cache (no API call).

    Example:

        burstq cache stats ~/.cache/burstq.db

        burstq cache stats answers.db --json
    """
    from ..money.cache import stats

    info = stats(path)
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"Cache {path}", box=box.SIMPLE, show_header=False, title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("Answers", f"{info['answers']:,}")
    table.add_row("Hits", f"{info['hits']:,}")
    table.add_row("Saved", usd(info["saved_usd"]))
    table.add_row("Bought", usd(info["bought_usd"]))
    table.add_row("Oldest / newest", f"{info['oldest'] or '-'} / {info['newest'] or '-'}")
    table.add_row("Size", f"{info['bytes'] / 1e6:,.2f} MB")
    for provider, n in info["providers"].items():
        table.add_row("Provider", f"{provider} ({n:,} answers)")
    for name, m in info["models"].items():
        saved = usd(m["saved_usd"])
        figures = f"{m['answers']:,} answers, {m['hits']:,} hits, saved {saved}"
        table.add_row("Model", f"{name}: {figures}")
    console().print(table)


@cache_app.command("prune")
@boundary
def cache_prune(
    path: CachePathArg,
    older_than: Annotated[
        str,
        typer.Option(
            envvar=_env("older_than"),
            help="Delete answers bought longer ago than this: 30d, 12h, 90m, 2w, 45s.",
        ),
    ],
) -> None:
    """Delete answers older than an age, so that stale answers are bought afresh.

    Example:

        burstq cache prune ~/.cache/burstq.db --older-than 30d
    """
    from ..money.cache import parse_age, prune

    n = prune(path, parse_age(older_than))
    err(f"burstq: pruned {n:,} answers older than {older_than} from {path}")
