"""The command line: parse options, build a config, call the library once, render, exit.

One module per command group; `options.py` declares the shared options once and `app.py` holds
the one error boundary. Heavy imports stay inside the commands so `burstq --help` starts fast.
May import: config, run and, lazily inside commands, any room below.
"""

from __future__ import annotations

from . import (  # noqa: F401 - registers the commands
    batch,
    cache,
    endpoints,
    export,
    inspect,
    limiter,
    merge,
    mock,
    report,
    run,
)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
