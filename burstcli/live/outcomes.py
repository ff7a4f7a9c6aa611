"""Outcomes the engine builds from what went wrong: a record that could not be written, an
answer that cannot be read, a pause longer than --max-wait (moved out of engine.py)."""

from __future__ import annotations

from typing import Any

from ..files.answers import extract_output
from ..models import Result
from .client import CallError


def unwritable(result: Result, exc: Exception) -> Result:
    """The failed record of a result that could not be serialized: only fields burstq made."""
    return Result(
        request_id=result.request_id,
        line=result.line,
        status="failed",
        model=result.model,
        attempts=result.attempts,
        latency_ms=result.latency_ms,
        error={
            "type": "internal_error",
            "message": f"the record could not be written: {exc}",
            "status_code": None,
        },
        finished_at=result.finished_at,
        unanswered_attempts=result.unanswered_attempts,
    )


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
