"""What the Batch API's files hold: our request lines out, its output and error lines back.

Pure functions: no provider calls, no state; `driver.py` uses them to pack and to settle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from ..config import JobSpec
from ..files.answers import clean_usage, extract_output, finish_reason
from ..files.schema import OutputProblem, Validator, response_format
from ..models import ENDPOINT_PATHS, Request, Result, now_iso
from ..redact import redact_cut
from .state import Pending, Shard


def endpoint_url(endpoint: str) -> str:
    return "/v1" + ENDPOINT_PATHS[endpoint]


# -- what a line of an output or error file means -----------------------------------------------


Verdict = Literal["completed", "retry", "failed"]


@dataclass(slots=True)
class LineOutcome:
    verdict: Verdict
    error: dict[str, Any] | None = None
    body: dict[str, Any] | None = None
    status_code: int = 0
    request_id: str | None = None
    line_id: str | None = None
    parsed: Any = None


def _http_error(status: int, body: Any) -> tuple[Verdict, dict[str, Any]]:
    err = body.get("error") if isinstance(body, dict) else None
    message = (
        str(err.get("message"))
        if isinstance(err, dict) and err.get("message")
        else f"HTTP {status}"
    )
    code = err.get("code") if isinstance(err, dict) else None
    kind: str
    verdict: Verdict
    # The same taxonomy as client.py: only what can succeed later is resubmitted.
    if status in (401, 403):
        kind, verdict = "auth", "failed"
    elif status == 429 and code == "insufficient_quota":
        kind, verdict = "insufficient_quota", "failed"
    elif status == 429:
        kind, verdict = "rate_limited", "retry"
    elif status == 408:
        kind, verdict = "timeout", "retry"
    elif status == 409 or status >= 500:
        kind, verdict = "server_error", "retry"
    elif status == 413:
        kind, verdict = "request_too_large", "failed"
    else:
        kind, verdict = "bad_request", "failed"
    return verdict, {"type": kind, "message": message, "status_code": status}


def classify_line(entry: dict[str, Any], endpoint: str) -> LineOutcome:
    """Success, resubmit or give up, for one line of a batch's output or error file."""
    line_id = entry.get("id") if isinstance(entry.get("id"), str) else None
    err = entry.get("error")
    response = entry.get("response")
    if isinstance(err, dict) and err:
        code, message = err.get("code"), str(err.get("message") or "")
        kind = "batch_expired" if code == "batch_expired" else "batch_error"
        text = message if code == "batch_expired" else f"{code}: {message}"
        return LineOutcome(
            "retry", {"type": kind, "message": text, "status_code": None}, line_id=line_id
        )
    if not isinstance(response, dict):
        return LineOutcome(
            "retry",
            {
                "type": "malformed_response",
                "message": "a batch line with neither response nor error",
                "status_code": None,
            },
            line_id=line_id,
        )
    status = response.get("status_code")
    body = response.get("body")
    rid = response.get("request_id") if isinstance(response.get("request_id"), str) else None
    out = LineOutcome(
        "completed",
        None,
        body if isinstance(body, dict) else None,
        status if isinstance(status, int) else 0,
        rid,
        line_id,
    )
    # An HTTP error inside `response` is a failure even though `error` is null.
    if not isinstance(status, int) or status >= 400:
        out.verdict, out.error = _http_error(status if isinstance(status, int) else 500, body)
        return out
    problem = _body_problem(body, endpoint)
    if problem is not None:
        out.verdict = "retry"
        out.error = {"type": problem[0], "message": problem[1], "status_code": status}
    return out


def _body_problem(body: Any, endpoint: str) -> tuple[str, str] | None:
    if not isinstance(body, dict):
        return "malformed_response", "a 200 answer that is not a JSON object"
    if endpoint == "embeddings":
        items = body.get("data")
        if (
            not isinstance(items, list)
            or not items
            or not all(isinstance(i, dict) and "embedding" in i for i in items)
        ):
            return "malformed_response", "answer has no data[].embedding"
        return None
    choices = body.get("choices")
    if (
        not isinstance(choices, list)
        or not choices
        or not isinstance(choices[0], dict)
        or not isinstance(choices[0].get("message"), dict)
    ):
        return "malformed_response", "answer has no choices[0].message"
    output, _ = extract_output("chat", body)
    if not (output or "").strip():
        return "empty_response", "the completion was empty"
    return None


def task_validator(job: JobSpec) -> Validator | None:
    """The validator of a row task's schema (None: nothing to check)."""
    task = job.task
    if task is None or task.schema is None:
        return None
    return Validator(response_format(task.schema)["json_schema"]["schema"])


def check_structured(out: LineOutcome, validator: Validator | None, job: JobSpec) -> LineOutcome:
    """Parse and check a completed answer of a task with a schema: an invalid one goes to the
    next round like a malformed answer; one cut off at max_tokens fails (the same limit would
    cut it again)."""
    if validator is None or job.task is None or out.verdict != "completed" or out.body is None:
        return out
    text, _ = extract_output("chat", out.body)
    params = job.task.params
    max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
    try:
        out.parsed = validator.parse((text or "").strip(), finish_reason(out.body), max_tokens)
    except OutputProblem as bad:
        out.verdict = "retry" if bad.retryable else "failed"
        out.error = {"type": bad.kind, "message": bad.message, "status_code": out.status_code}
    return out


def entries(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for raw in f:
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a torn line is a request without an answer: it is retried
            if isinstance(entry, dict):
                yield entry


def latency_ms(batch: dict[str, Any]) -> float | None:
    created = batch.get("created_at")
    ended = next(
        (
            batch.get(k)
            for k in ("completed_at", "expired_at", "failed_at", "cancelled_at")
            if batch.get(k)
        ),
        None,
    )
    if not isinstance(created, int | float) or not isinstance(ended, int | float):
        return None
    return max(0.0, (float(ended) - float(created)) * 1000.0)


def batch_failure(batch: dict[str, Any]) -> dict[str, Any]:
    status = str(batch.get("status"))
    errors = (batch.get("errors") or {}).get("data") or []
    detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:3])
    if status == "expired":
        return {
            "type": "batch_expired",
            "status_code": None,
            "message": f"batch {batch.get('id')} expired before this request ran",
        }
    return {
        "type": f"batch_{status}",
        "status_code": None,
        "message": f"batch {batch.get('id')} ended {status} without an answer for this request"
        + (f" ({detail})" if detail else ""),
    }


def batch_line(req: Request) -> dict[str, Any]:
    return {
        "custom_id": req.id,
        "method": "POST",
        "url": endpoint_url(req.endpoint),
        "body": {"model": req.model, **req.body},
    }


def pending(req: Request) -> Pending:
    size = len(orjson.dumps(batch_line(req))) + 1
    return Pending(
        id=req.id,
        line=req.line,
        endpoint=req.endpoint,
        model=req.model,
        round=1,
        bytes=size,
        tokens=req.est_tokens,
        metadata=req.metadata is not None,
        list_input=isinstance(req.body.get("input"), list),
    )


def pending_of(
    shard: Shard,
    cid: str,
    line: int,
    error: dict[str, Any] | None,
    list_input: bool,
    *,
    same_round: bool = False,
) -> Pending:
    n = max(1, shard.requests)
    return Pending(
        id=cid,
        line=line,
        endpoint=shard.endpoint,
        model=shard.model,
        round=shard.round if same_round else shard.round + 1,
        bytes=shard.bytes // n + 1,
        tokens=shard.tokens // n + 1,
        metadata=shard.metadata,
        list_input=list_input,
        error=error,
    )


def pendings(shard: Shard) -> list[Pending]:
    lists = set(shard.list_inputs)
    return [
        pending_of(shard, cid, line, None, cid in lists, same_round=True)
        for cid, line in shard.lines.items()
    ]


def line_result(
    shard: Shard,
    cid: str,
    line: int,
    out: LineOutcome,
    latency: float | None,
    metadata: Any,
    list_input: bool,
    max_output_chars: int,
    price: Callable[..., float | None],
) -> Result:
    """The record of one request from what its batch line said."""
    result = Result(
        request_id=cid,
        line=line,
        status="failed",
        model=shard.model,
        latency_ms=latency,
        attempts=shard.round,
        metadata=metadata,
        finished_at=now_iso(),
        error=out.error,
    )
    body = out.body
    if out.verdict != "completed" or body is None:
        return result
    result.parsed = out.parsed
    usage = clean_usage(body.get("usage"))
    try:
        text, vectors = extract_output(shard.endpoint, body)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        result.error = {
            "type": "malformed_response",
            "message": f"unreadable answer: {exc}",
            "status_code": out.status_code,
        }
        return result
    if text is not None:
        text = text.strip()
        if len(text) > max_output_chars:
            text, result.truncated = text[:max_output_chars], True
    result.status, result.error = "completed", None
    result.output, result.usage = text, usage
    if vectors is not None:
        result.embedding = vectors if list_input else vectors[0]
    # The answering snapshot (e.g. gpt-4o-mini-2024-07-18) is what the body names.
    result.model_used = redact_cut(str(body.get("model") or shard.model), 200)
    if shard.endpoint == "chat":
        result.finish_reason = finish_reason(body)
    result.cost_usd = price(shard.model, usage, batch=True)
    return result
