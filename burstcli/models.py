"""Shapes shared by all rooms: the plain data the engine passes (`@dataclass(slots=True)`, cheap
on the hot path). The pydantic models of request lines, which validate what users write, are
in files/shapes.py, built only when a line needs them (start-up, issue 19).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .errors import FatalProviderError
from .redact import redact_cut

Endpoint = Literal["chat", "embeddings"]

BATCH_URLS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
}
ENDPOINT_PATHS: dict[str, str] = {"chat": "/chat/completions", "embeddings": "/embeddings"}
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per chat message, as OpenAI counts them


RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def response_format_problem(body: dict[str, Any], where: str) -> str | None:
    """What is wrong with `body`'s response_format, as OpenAI documents it; None when it is
    fine or absent. Only the shape: {"type": "text" | "json_object"} or {"type": "json_schema",
    "json_schema": {"name": ..., "schema": {...}}}; the schema itself is checked elsewhere."""
    if "response_format" not in body:
        return None
    value, where = body["response_format"], f"{where}.response_format"
    if not isinstance(value, dict):
        return f'{where}: must be an object such as {{"type": "json_object"}}'
    kind = value.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        return f"{where}.type: must be text, json_object or json_schema, not {kind!r}"
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            return (
                f"{where}.json_schema.schema: missing (type json_schema needs "
                '{"json_schema": {"name": "...", "schema": {...}}})'
            )
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            return f"{where}.json_schema.name: missing (a name for the schema is required)"
    return None


@dataclass(slots=True)
class Request:
    """One valid request, ready to send (the model is added per attempt: fallbacks change it)."""

    line: int
    id: str
    endpoint: Endpoint
    model: str
    body: dict[str, Any]
    priority: int = 5
    metadata: dict[str, Any] | None = None
    prompt_chars: int = 0
    prompt_bytes: int = 0
    n_messages: int = 0
    max_tokens: int | None = None
    fingerprint: str = ""  # files/fingerprint.of() fills it on first use
    line_digest: str = ""  # the raw line's hash (files/fingerprint.line_digest), file input

    @property
    def est_tokens(self) -> int:
        """OpenAI's own rate-limit estimate: prompt characters / 4 plus max_tokens (times n)."""
        n = int(self.body.get("n") or 1)
        return self.prompt_chars // 4 + 1 + (self.max_tokens or 0) * n

    @property
    def prompt_tokens_upper(self) -> int:
        """A bound no tokenizer exceeds: one token per UTF-8 byte, plus message overheads."""
        return self.prompt_bytes + MESSAGE_OVERHEAD_TOKENS * self.n_messages + 3

    def completion_tokens_upper(self, assumed_max_tokens: int) -> int:
        """max_tokens (or the assumption when the line sets none) times n; 0 for embeddings."""
        if self.endpoint == "embeddings":
            return 0
        return (self.max_tokens or assumed_max_tokens) * int(self.body.get("n") or 1)


@dataclass(slots=True)
class InvalidLine:
    line: int
    id: str | None
    message: str


@dataclass(slots=True)
class Result:
    """The outcome of one request: becomes one JSONL record (see `record()` for the shape)."""

    request_id: str
    line: int
    status: Literal["completed", "failed"]
    model: str | None
    model_used: str | None = None
    output: str | None = None
    embedding: list[Any] | None = None
    latency_ms: float | None = None
    attempts: int = 0
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None
    error: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    finished_at: str = ""
    truncated: bool = False
    unanswered_attempts: int = 0
    finish_reason: str | None = None  # chat: "stop", "length", "tool_calls", ...
    parsed: Any = None  # a structured answer, parsed and validated
    endpoint: str | None = None  # --endpoints: the name of the endpoint that answered
    fingerprint: str | None = None  # the request's content hash (files/fingerprint.py)
    line_digest: str | None = None  # its raw input line's hash: a rerun's fast path
    cached: bool = False  # answered from --cache: no API call
    saved_usd: float | None = None  # cached: what the answer cost when it was bought
    extra: dict[str, Any] = field(default_factory=dict)
    # The provider's last answer, kept for --output-format openai-batch; not in record().
    response_body: Any = None
    response_status: int = 0
    response_request_id: str | None = None

    @property
    def tokens_used(self) -> int:
        if not self.usage:
            return 0
        return int(self.usage.get("total_tokens") or 0)

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "request_id": self.request_id,
            "line": self.line,
            "status": self.status,
            "output": self.output,
        }
        if self.parsed is not None:
            rec["parsed"] = self.parsed
        if self.embedding is not None:
            rec["embedding"] = self.embedding
        rec.update(
            model=self.model,
            model_used=self.model_used,
            latency_ms=self.latency_ms,
            attempts=self.attempts,
            usage=self.usage,
            # An answer whose usage was missing or malformed: tokens unknown, not 0.
            tokens_used=None
            if self.usage is None and self.status == "completed"
            else self.tokens_used,
            cost_usd=self.cost_usd,
            error=_redacted(self.error),
            metadata=self.metadata,
            finished_at=self.finished_at,
        )
        if self.finish_reason is not None:
            rec["finish_reason"] = self.finish_reason
        if self.endpoint is not None:
            rec["endpoint"] = self.endpoint
        if self.truncated:
            rec["truncated"] = True
        if self.unanswered_attempts:
            # Sent but the answer was lost (timeout, reset): the provider may have billed them.
            rec["unanswered_attempts"] = self.unanswered_attempts
        rec.update(self.extra)
        if self.cached:
            rec["cached"] = True
            rec["saved_usd"] = self.saved_usd
        # Last, in this order: a rerun reads them off the end of the line (files/rewrite.py).
        if self.fingerprint is not None:
            rec["fingerprint"] = self.fingerprint
        if self.line_digest:
            rec["line_digest"] = self.line_digest
        return rec


ERROR_MESSAGE_CHARS = 2000


def _redacted(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error as stored: its message through the one redaction step, then capped. Every
    mode's records pass here, whatever built the message (a provider may quote our key)."""
    if not error or "message" not in error:
        return error
    return {**error, "message": redact_cut(str(error["message"]), ERROR_MESSAGE_CHARS)}


class AnswerCache(Protocol):
    """Answers known before dispatch (money/cache.py): the engine records a hit, never sends
    it, and hands every completed answer to `store`."""

    def lookup(self, req: Request) -> Result | None: ...

    def store(self, req: Request, result: Result) -> None: ...


@dataclass(slots=True)
class Tally:
    """Live figures of a run, updated by the engine and read by progress and metrics."""

    total: int | None = None  # requests in the input (None while stdin is still being read)
    skipped: int = 0  # already had a record when the run started
    skipped_failed: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    unanswered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    cached: int = 0  # answered from --cache
    cut_at_length: int = 0  # completed answers whose finish_reason is "length" (max_tokens)
    recorded_attempts: int = 0  # attempts of the requests that got a record in this run
    started: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def count(self, result: Result) -> None:
        """Add one finished request's figures."""
        self.recorded_attempts += result.attempts
        if result.cached:
            # Answered from --cache: done, but no tokens were used and nothing was paid.
            self.completed += 1
            self.cached += 1
            return
        if result.status == "completed":
            self.completed += 1
            if result.finish_reason == "length":
                self.cut_at_length += 1
        else:
            self.failed += 1
            etype = (result.error or {}).get("type", "unknown")
            self.errors[etype] = self.errors.get(etype, 0) + 1
        if result.usage:
            self.prompt_tokens += int(result.usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(result.usage.get("completion_tokens") or 0)
        if result.cost_usd is not None:
            self.cost_usd += result.cost_usd
        elif result.status == "completed":
            self.unpriced += 1


StopReason = Literal["done", "budget", "interrupted", "fatal"]


@dataclass(slots=True)
class RunOutcome:
    reason: StopReason
    tally: Tally
    signal: int | None = None
    error: FatalProviderError | None = None
    missing: int = 0  # input lines left without a record by a run that says it is done


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def now_iso() -> str:
    """UTC now as 2026-11-27T10:00:00.123Z. Every record calls it: the date and time are
    formatted once per second, only the milliseconds per call."""
    t = time.time()
    sec = int(t)
    if sec != _second[0]:
        _second[0] = sec
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{int((t - sec) * 1000):03d}Z"


def invalid_result(item: InvalidLine) -> Result:
    return Result(
        request_id=item.id or f"line-{item.line}",
        line=item.line,
        status="failed",
        model=None,
        attempts=0,
        error={
            "type": "invalid_request",
            "message": f"line {item.line}: {item.message}",
            "status_code": None,
        },
        finished_at=now_iso(),
    )


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
