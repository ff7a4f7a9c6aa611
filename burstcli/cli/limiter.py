"""`burstq limiter status`: what a shared Redis limiter holds, key by key."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .app import app, boundary, console

limiter_app = typer.Typer(
    help="The rate limit shared through Redis by `burstq run --limiter`.", no_args_is_help=True
)
app.add_typer(limiter_app, name="limiter")


@limiter_app.command("status")
@boundary
def status(
    url: Annotated[str, typer.Argument(help="redis://HOST:PORT/DB (or rediss://) of --limiter.")],
    key: Annotated[
        str | None, typer.Option("--key", help="Only limit keys containing this text.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Each limit key's ceilings, current pace, use in the last minute, pause and processes.

    Password in the URL or REDIS_PASSWORD. Exit 2 when Redis cannot be reached.

    Example:

        burstq limiter status redis://localhost:6379/0

        burstq limiter status rediss://redis.internal:6380/0 --json | jq '.[].rpm_pace'
    """
    import asyncio

    import orjson

    rows = asyncio.run(_read(url))
    if key is not None:
        rows = [r for r in rows if key in r["key"]]
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return
    _render(url, rows)


async def _read(url: str) -> list[dict[str, Any]]:
    from ..errors import UsageError
    from ..live.shared import connect, display_url, read_status
    from ..redact import redact

    client = connect(url)
    try:
        return await read_status(client)
    except Exception as exc:  # redis-py's errors: unreachable, auth, wrong database
        raise UsageError(f"limiter {display_url(url)}: {redact(str(exc))}") from exc
    finally:
        await client.aclose()


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _render(url: str, rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    from ..live.shared import display_url

    out = console()
    if not rows:
        out.print(f"{display_url(url)}: no limit keys (no burstq run has used it lately)")
        return
    table = Table(
        title=f"burstq limiter: {display_url(url)}", title_justify="left", box=box.SIMPLE_HEAD
    )
    for col in (
        "key",
        "rpm ceiling",
        "rpm pace",
        "req this/last min",
        "tpm ceiling",
        "tpm pace",
        "tok this/last min",
        "paused",
        "429s",
        "procs",
    ):
        table.add_column(col, justify="left" if col == "key" else "right", no_wrap=col == "key")
    for r in rows:
        table.add_row(
            r["key"],
            _num(r["rpm_ceiling"]),
            _num(r["rpm_pace"]),
            f"{r['requests_this_minute']:,}/{r['requests_last_minute']:,}",
            _num(r["tpm_ceiling"]),
            _num(r["tpm_pace"]),
            f"{r['tokens_this_minute']:,}/{r['tokens_last_minute']:,}",
            f"{r['paused_for_s']:.1f}s" if r["paused_for_s"] else "-",
            f"{r['rate_limited']:,}",
            str(r["active_processes"]),
        )
    out.print(table)
