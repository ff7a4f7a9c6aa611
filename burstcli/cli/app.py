"""The Typer app, the one error boundary and the helpers every command shares.

Expected failures are `BurstError`s, caught once here and printed as "Error: ..." with the
documented exit code (BURSTQ_DEBUG=1 re-raises them with a traceback).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer

from ..errors import BurstError
from ..redact import redact

app = typer.Typer(
    name="burstq",
    help="Push files of LLM requests through OpenAI-compatible APIs as fast as the rate limits "
    "allow: resumable, exactly once, with latency, tokens and cost for every request.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def boundary(fn: Callable[..., None]) -> Callable[..., None]:
    """The one error boundary: a BurstError becomes "Error: ..." and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except BurstError as exc:
            if os.environ.get("BURSTQ_DEBUG") == "1":
                # The traceback for whoever debugs, and still the documented exit code for
                # the cron job or CI step around it.
                err(redact("".join(traceback.format_exception(exc))))
            err(f"Error: {exc}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def env(name: str) -> str:
    return f"BURSTQ_{name.upper().replace('-', '_')}"


def err(msg: str) -> None:
    """Print to stderr, through the one redaction step (a provider may echo the key)."""
    print(redact(msg), file=sys.stderr)


def console() -> Any:
    """Tables go to stderr (stdout is data); wide enough for them when it is not a TTY."""
    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def usd(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.6f}" if x < 1 else f"${x:,.2f}"
