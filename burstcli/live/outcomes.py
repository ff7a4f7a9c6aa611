"""Outcomes the engine builds from what went wrong: an answer that cannot be read, a pause
longer than --max-wait (moved out of engine.py). A record that cannot be written is
models.unwritable, shared with batch mode."""

from __future__ import annotations

from typing import Any

from ..files.answers import extract_output
from .client import CallError


def read_answer(endpoint: str, data: dict[str, Any]) -> tuple[str | None, list[Any] | None]:
    """extract_output, with an answer it cannot read as a (retryable) malformed response."""
    try:
        return extract_output(endpoint, data)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CallError(
            "malformed_response",
            f"unreadable answer: {exc}",
            status_code=200,
            retryable=True,
            maybe_billed=True,
        ) from exc


def too_long_wait(err: CallError, max_wait: float) -> CallError:
    """The provider asked for a pause longer than --max-wait: stop, resumably, saying when."""
    from datetime import UTC, datetime, timedelta

    wait = err.retry_after or 0.0
    try:
        until = (datetime.now(UTC) + timedelta(seconds=wait)).strftime("%Y-%m-%d %H:%M:%S UTC")
    except OverflowError:
        until = "a date too far to print"
    return CallError(
        err.type,
        f"the provider asked to wait {wait:,.0f}s (until {until}), longer than --max-wait "
        f"({max_wait:g}s); rerun the same command after then to resume",
        status_code=err.status_code,
    )
