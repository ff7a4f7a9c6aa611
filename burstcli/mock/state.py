"""The mock's configuration and shared state: limits, counters, fault choice, replies.

May import: nothing of burstq outside mock/.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from aiohttp import web

from .slots import Slots

FAULT_KINDS: Final[tuple[str, ...]] = (
    "500",
    "502",
    "503",
    "timeout",
    "reset",
    "malformed",
    "empty",
)
# 429 and 400 are left out of the default random faults (they can still be listed in
# fault_kinds): at random they would blur a rehearsal's real rate limits and client bugs.
# badjson / badshape: a 200 answer whose content is not JSON / JSON of the wrong shape (what a
# model ignoring response_format sends); listed in fault_kinds they also come at random.
DIRECTIVE_KINDS: Final[tuple[str, ...]] = (*FAULT_KINDS, "429", "400", "badjson", "badshape")

DEFAULT_MODELS: Final[tuple[str, ...]] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
ORGANIZATION: Final = "org-mock"
OWNER: Final = "burstq-mock"

DIRECTIVE_RE: Final = re.compile(
    r"\[\[mock:(" + "|".join(re.escape(k) for k in DIRECTIVE_KINDS) + r")(?:\*(\d+))?\]\]"
)

_SERVER_ERROR_MESSAGES: Final[dict[int, str]] = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}

INVALID_JSON_MESSAGE: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)"
)
MISSING_KEY_MESSAGE: Final = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)

# What a truncated response looks like when a proxy cuts the body mid-stream.
_MALFORMED_BODIES: Final[dict[str, bytes]] = {
    "chat": b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [',
    "embeddings": b'{"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [',
}

Endpoint = Literal["chat", "embeddings"]


@dataclass
class MockConfig:
    """Behaviour of the mock server; every knob defaults to a well-behaved, unlimited server."""

    latency: float = 0.0
    latency_jitter: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    quantum: float = 1.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    hang_seconds: float = 30.0
    api_keys: frozenset[str] | None = None
    quota_exhausted: bool = False
    models: frozenset[str] | None = None
    broken_models: frozenset[str] = frozenset()
    embedding_dim: int = 8
    seed: int | None = None
    # Batch API: seconds from creation to completion (a real batch takes up to 24 h), and an
    # optional enqueued-token limit per model (prompt tokens of unfinished batches).
    batch_seconds: float = 2.0
    batch_max_enqueued_tokens: int | None = None
    # Header names whose values the stats count (`headers_seen`), to check what clients send.
    record_headers: tuple[str, ...] = ()
    # Slots mode (a self-hosted server): N parallel slots behind a FIFO queue, each answer
    # taking slot_base_seconds + slot_token_seconds per completion token (prompt tokens for
    # embeddings); an abandoned request keeps its slot until it is done.
    slots: int | None = None
    embeddings_per_token: bool = False  # answer [tokens, dim] per input, as unpooled servers do
    slot_token_seconds: float = 0.01
    slot_base_seconds: float = 0.0

    def __post_init__(self) -> None:
        # Fail at configuration time (CLI flags) rather than with odd behaviour mid-rehearsal.
        if self.latency < 0 or self.latency_jitter < 0 or self.hang_seconds < 0:
            raise ValueError("latency, latency_jitter and hang_seconds must be >= 0")
        for name, limit in (("rpm", self.rpm), ("tpm", self.tpm)):
            if limit is not None and limit <= 0:
                raise ValueError(f"{name} must be a positive integer or None")
        if self.quantum <= 0:
            raise ValueError("quantum must be > 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        unknown = [k for k in self.fault_kinds if k not in DIRECTIVE_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {DIRECTIVE_KINDS}")
        if self.fault_rate > 0 and not self.fault_kinds:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")
        if self.batch_seconds < 0:
            raise ValueError("batch_seconds must be >= 0")
        if self.batch_max_enqueued_tokens is not None and self.batch_max_enqueued_tokens <= 0:
            raise ValueError("batch_max_enqueued_tokens must be a positive integer or None")
        if self.slots is not None and self.slots < 1:
            raise ValueError("slots must be a positive integer or None")
        if self.slot_token_seconds < 0 or self.slot_base_seconds < 0:
            raise ValueError("slot_token_seconds and slot_base_seconds must be >= 0")


def format_reset(seconds: float) -> str:
    """Format a duration the way OpenAI's ``x-ratelimit-reset-*`` headers do.

    OpenAI uses Go's duration notation: ``120ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``.
    Milliseconds are rounded up so a client waiting the advertised time is never early.
    """
    if seconds <= 0:
        return "0s"
    # Round to microseconds first so float noise (0.12 * 1000 = 120.00000000000001) does not
    # turn into an extra millisecond when rounding up.
    millis = math.ceil(round(seconds * 1000, 6))
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def mask_key(key: str) -> str:
    # OpenAI shows "sk-ab****wxyz"; for short keys that would reveal most of the secret.
    if len(key) < 12:
        return "****"
    return f"{key[:5]}****{key[-4:]}"


def ceil_div4(n: int) -> int:
    return (n + 3) // 4


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class _TokenBucket:
    """Continuously refilled bucket: capacity ``limit*quantum/60``, refill ``limit/60`` per s.

    A request costing more than the capacity is admitted when the bucket is full and drives it
    into debt, so the long-run rate still equals the limit (e.g. rpm=30 gives capacity 0.5).
    """

    limit: int
    capacity: float
    rate: float
    level: float
    updated: float

    @classmethod
    def create(cls, limit: int, quantum: float, now: float) -> _TokenBucket:
        capacity = limit * quantum / 60.0
        return cls(limit=limit, capacity=capacity, rate=limit / 60.0, level=capacity, updated=now)

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate)
        self.updated = now

    def wait_for(self, cost: float) -> float:
        needed = min(cost, self.capacity)
        # Tolerance so a client that waited exactly the advertised time is admitted.
        if self.level + 1e-9 >= needed:
            return 0.0
        return (needed - self.level) / self.rate

    def remaining(self) -> int:
        return max(0, math.floor(self.level + 1e-9))

    def until_full(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    # Set only for genuine successful answers, so stats can count exactly-once delivery.
    completed_prompt: str | None = None
    rate_limited: bool = False
    work_tokens: int = 0  # what generating it costs a slot (slots mode)


@dataclass
class Parsed:
    endpoint: Endpoint
    model: str
    prompt: str
    prompt_chars: int
    max_tokens: int | None
    messages_text: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    encoding_format: str = "float"
    dimensions: int | None = None
    response_format: dict[str, Any] | None = None


def error(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    body = orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )
    return Reply(status=status, body=body, headers=dict(headers or {}))


def server_error(status: int) -> Reply:
    return error(status, _SERVER_ERROR_MESSAGES[status], "server_error")


def bad_request(message: str, param: str | None) -> Reply:
    return error(400, message, "invalid_request_error", param)


@dataclass
class MockFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class MockBatch:
    id: str
    endpoint: str
    model: str | None
    input_file_id: str
    completion_window: str
    metadata: dict[str, Any] | None
    created_at: int  # wall clock (what clients see)
    started: float  # MockState.clock() at creation: drives the fast-forwarded lifecycle
    seconds: float
    lines: list[dict[str, Any]]
    errors: list[dict[str, Any]]  # validation errors: the batch fails once validated
    tokens: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    stamps: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        stamps = self.stamps
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.status == "failed" else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": stamps.get("in_progress_at"),
            "expires_at": self.created_at + 86_400,
            "finalizing_at": stamps.get("finalizing_at"),
            "completed_at": stamps.get("completed_at"),
            "failed_at": stamps.get("failed_at"),
            "expired_at": stamps.get("expired_at"),
            "cancelling_at": stamps.get("cancelling_at"),
            "cancelled_at": stamps.get("cancelled_at"),
            "request_counts": {
                "total": len(self.lines),
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


class MockState:
    """Configuration, RNG, rate-limit buckets and counters of one mock server.

    Mutated only on the server's event loop; the lock exists so ``snapshot()`` can be called
    from another thread (ThreadedMockServer) without seeing dicts change size mid-copy.
    """

    def __init__(self, config: MockConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.closing = asyncio.Event()
        self._lock = threading.Lock()
        self._directive_attempts: dict[str, int] = {}
        # Batch API storage lives as long as the server: a reset clears counters, not files.
        self.files: dict[str, MockFile] = {}
        self.batches: dict[str, MockBatch] = {}
        self._batch_directive_attempts: dict[str, int] = {}
        self.requests_bucket: _TokenBucket | None = None
        self.tokens_bucket: _TokenBucket | None = None
        self.in_flight = 0
        self.slots: Slots | None = None
        if config.slots is not None:
            self.slots = Slots(
                config.slots,
                seconds_per_token=config.slot_token_seconds,
                base_seconds=config.slot_base_seconds,
                closing=self.closing,
            )
        self._reset_counters()
        self._reset_buckets()

    def _reset_buckets(self) -> None:
        now = self.clock()
        cfg = self.config
        self.requests_bucket = _TokenBucket.create(cfg.rpm, cfg.quantum, now) if cfg.rpm else None
        self.tokens_bucket = _TokenBucket.create(cfg.tpm, cfg.quantum, now) if cfg.tpm else None

    def _reset_counters(self) -> None:
        self.requests_total = 0
        self.by_status: dict[str, int] = {}
        self.peak_in_flight = self.in_flight
        self.rate_limited = 0
        self.faults_injected: dict[str, int] = {}
        self.completed_by_prompt: dict[str, int] = {}
        self.attempts_by_prompt: dict[str, int] = {}
        self.models_seen: dict[str, int] = {}
        self.headers_seen: dict[str, int] = {}
        self.first_request_at: float | None = None
        self.last_response_at: float | None = None
        self.arrivals_per_second: list[int] = []
        self.files_uploaded = 0
        self.batches_created = 0
        self.batch_lines_submitted = 0

    def reset(self) -> None:
        """Clear counters, directive attempt counts and refill the rate-limit buckets."""
        with self._lock:
            self._reset_counters()
            self._directive_attempts.clear()
            self._batch_directive_attempts.clear()
            self._reset_buckets()
        if self.slots is not None:
            self.slots.reset()

    def snapshot(self) -> dict[str, Any]:
        """Plain, JSON-serialisable copy of the counters."""
        slots = self.slots.snapshot() if self.slots is not None else {}
        with self._lock:
            return {
                **slots,
                "requests_total": self.requests_total,
                "by_status": dict(self.by_status),
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "rate_limited": self.rate_limited,
                "faults_injected": dict(self.faults_injected),
                "completed_by_prompt": dict(self.completed_by_prompt),
                "attempts_by_prompt": dict(self.attempts_by_prompt),
                "models_seen": dict(self.models_seen),
                "headers_seen": dict(self.headers_seen),
                "first_request_at": self.first_request_at,
                "last_response_at": self.last_response_at,
                "arrivals_per_second": list(self.arrivals_per_second),
                "files_uploaded": self.files_uploaded,
                "batches_created": self.batches_created,
                "batch_lines_submitted": self.batch_lines_submitted,
            }

    def arrive(self) -> None:
        now = self.clock()
        with self._lock:
            self.requests_total += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            if self.first_request_at is None:
                self.first_request_at = now
            second = int(now - self.first_request_at)
            if second >= len(self.arrivals_per_second):
                self.arrivals_per_second.extend([0] * (second + 1 - len(self.arrivals_per_second)))
            self.arrivals_per_second[second] += 1

    def depart(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def attempt(self, prompt: str, model: str | None = None) -> None:
        with self._lock:
            self.attempts_by_prompt[prompt] = self.attempts_by_prompt.get(prompt, 0) + 1
            if model is not None:
                self.models_seen[model] = self.models_seen.get(model, 0) + 1

    def saw_headers(self, headers: Any) -> None:
        names = self.config.record_headers
        if not names:
            return
        with self._lock:
            for name in names:
                value = headers.get(name)
                if value is not None:
                    key = f"{name.lower()}: {value}"
                    self.headers_seen[key] = self.headers_seen.get(key, 0) + 1

    def directive_attempt(self, prompt: str) -> int:
        # Counted apart from attempts_by_prompt: requests refused earlier (e.g. by the rate
        # limiter) must not use up a "fail the first N attempts" directive.
        with self._lock:
            count = self._directive_attempts.get(prompt, 0) + 1
            self._directive_attempts[prompt] = count
            return count

    def batch_directive_attempt(self, key: str) -> int:
        with self._lock:
            count = self._batch_directive_attempts.get(key, 0) + 1
            self._batch_directive_attempts[key] = count
            return count

    def batch_created(self, lines: int) -> None:
        with self._lock:
            self.batches_created += 1
            self.batch_lines_submitted += lines

    def file_uploaded(self) -> None:
        with self._lock:
            self.files_uploaded += 1

    def batch_answered(self, completed_prompt: str | None) -> None:
        # Batch answers count in completed_by_prompt like live ones, so a test checks
        # exactly-once delivery across both paths with one counter.
        if completed_prompt is None:
            return
        with self._lock:
            self.completed_by_prompt[completed_prompt] = (
                self.completed_by_prompt.get(completed_prompt, 0) + 1
            )

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults_injected[kind] = self.faults_injected.get(kind, 0) + 1

    def record(self, outcome: str, reply: Reply | None = None) -> None:
        now = self.clock()
        with self._lock:
            self.by_status[outcome] = self.by_status.get(outcome, 0) + 1
            self.last_response_at = now
            if reply is not None and reply.rate_limited:
                self.rate_limited += 1
            if reply is not None and reply.completed_prompt is not None:
                key = reply.completed_prompt
                self.completed_by_prompt[key] = self.completed_by_prompt.get(key, 0) + 1

    def admit(self, cost_tokens: int) -> tuple[float, str, dict[str, str]]:
        """Take one request and ``cost_tokens`` tokens if both buckets allow it.

        Returns (wait, limiting bucket name, rate-limit headers).  wait > 0 means the request is
        refused and nothing was consumed, as with providers' limiters.
        """
        now = self.clock()
        with self._lock:
            buckets: list[tuple[str, _TokenBucket, float]] = []
            if self.requests_bucket is not None:
                buckets.append(("requests", self.requests_bucket, 1.0))
            if self.tokens_bucket is not None:
                buckets.append(("tokens", self.tokens_bucket, float(cost_tokens)))
            for _, bucket, _ in buckets:
                bucket.refill(now)
            wait, which = 0.0, ""
            for name, bucket, cost in buckets:
                bucket_wait = bucket.wait_for(cost)
                if bucket_wait > wait:
                    wait, which = bucket_wait, name
            if wait <= 0:
                for _, bucket, cost in buckets:
                    bucket.level -= cost
            return wait, which, self._ratelimit_headers_locked()

    def ratelimit_headers(self) -> dict[str, str]:
        now = self.clock()
        with self._lock:
            for bucket in (self.requests_bucket, self.tokens_bucket):
                if bucket is not None:
                    bucket.refill(now)
            return self._ratelimit_headers_locked()

    def _ratelimit_headers_locked(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, bucket in (("requests", self.requests_bucket), ("tokens", self.tokens_bucket)):
            if bucket is None:
                continue
            headers[f"x-ratelimit-limit-{name}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining())
            headers[f"x-ratelimit-reset-{name}"] = format_reset(bucket.until_full())
        return headers


STATE_KEY: Final = web.AppKey("burstq_mock_state", MockState)


# ---------------------------------------------------------------------------------------------
# Request parsing
