"""OpenAI-compatible mock HTTP server for rehearsals and end-to-end tests.

`burstq mock-server` and `burstq run --simulate` point the real client code at this server, so
it copies what matters of the OpenAI API for a batch client: status codes, error bodies, the
``retry-after``/``x-ratelimit-*`` headers, and token-bucket rate limits that punish bursts the
way providers do.  Faults (5xx, hangs, connection resets, truncated or empty bodies) can be
injected at random or deterministically with directives embedded in the prompt text:

* ``[[mock:KIND]]`` fails every attempt of that prompt with KIND;
* ``[[mock:KIND*N]]`` fails the first N attempts of that exact prompt text, then answers normally.

KIND is one of 500, 502, 503, timeout, reset, malformed, empty, 429, 400.

Answers are deterministic ("echo: " + the last user message; embeddings derived from a hash of
the text) so tests can check exactly what reached the caller.  Counters (``stats()``) let tests
verify exactly-once delivery, concurrency and request rates from the server's side.

The Batch API is there too (``/v1/files``, ``/v1/batches``): a batch walks validating ->
in_progress -> finalizing -> completed in ``batch_seconds`` (fast-forward for tests) and answers
each line with the same logic as the live endpoints, so the directives above work inside batch
lines as well.  Two more directives exist for batches only, counted per prompt like the others:

* ``[[mock:expire*N]]``: the first N batches holding that prompt leave it unanswered and end
  ``expired`` (the line goes to the error file with code ``batch_expired``, as OpenAI does);
* ``[[mock:batchfail*N]]``: the line fails with a 500 response in the error file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import re
import secrets
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

if TYPE_CHECKING:
    from ..mock.batches import _MockBatch, _MockFile

__all__ = [
    "DIRECTIVE_KINDS",
    "FAULT_KINDS",
    "STATE_KEY",
    "MockConfig",
    "MockServer",
    "MockState",
    "ThreadedMockServer",
    "create_app",
    "format_reset",
    "serve",
]

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
DIRECTIVE_KINDS: Final[tuple[str, ...]] = (*FAULT_KINDS, "429", "400")

DEFAULT_MODELS: Final[tuple[str, ...]] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
ORGANIZATION: Final = "org-mock"
OWNER: Final = "burstq-mock"

_DIRECTIVE_RE: Final = re.compile(
    r"\[\[mock:(" + "|".join(re.escape(k) for k in DIRECTIVE_KINDS) + r")(?:\*(\d+))?\]\]"
)

_SERVER_ERROR_MESSAGES: Final[dict[int, str]] = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}

_INVALID_JSON_MESSAGE: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)"
)
_MISSING_KEY_MESSAGE: Final = (
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


def _mask_key(key: str) -> str:
    # OpenAI shows "sk-ab****wxyz"; for short keys that would reveal most of the secret.
    if len(key) < 12:
        return "****"
    return f"{key[:5]}****{key[-4:]}"


def _ceil_div4(n: int) -> int:
    return (n + 3) // 4


def _url_host(host: str) -> str:
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
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    # Set only for genuine successful answers, so stats can count exactly-once delivery.
    completed_prompt: str | None = None
    rate_limited: bool = False


@dataclass
class _Parsed:
    endpoint: Endpoint
    model: str
    prompt: str
    prompt_chars: int
    max_tokens: int | None
    messages_text: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    encoding_format: str = "float"
    dimensions: int | None = None


def _error(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> _Reply:
    body = orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )
    return _Reply(status=status, body=body, headers=dict(headers or {}))


def _server_error(status: int) -> _Reply:
    return _error(status, _SERVER_ERROR_MESSAGES[status], "server_error")


def _bad_request(message: str, param: str | None) -> _Reply:
    return _error(400, message, "invalid_request_error", param)


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
        self.files: dict[str, _MockFile] = {}
        self.batches: dict[str, _MockBatch] = {}
        self._batch_directive_attempts: dict[str, int] = {}
        self.requests_bucket: _TokenBucket | None = None
        self.tokens_bucket: _TokenBucket | None = None
        self.in_flight = 0
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

    def snapshot(self) -> dict[str, Any]:
        """Plain, JSON-serialisable copy of the counters."""
        with self._lock:
            return {
                "requests_total": self.requests_total,
                "by_status": dict(self.by_status),
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "rate_limited": self.rate_limited,
                "faults_injected": dict(self.faults_injected),
                "completed_by_prompt": dict(self.completed_by_prompt),
                "attempts_by_prompt": dict(self.attempts_by_prompt),
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

    def attempt(self, prompt: str) -> None:
        with self._lock:
            self.attempts_by_prompt[prompt] = self.attempts_by_prompt.get(prompt, 0) + 1

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

    def record(self, outcome: str, reply: _Reply | None = None) -> None:
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


def _content_text(content: object) -> str | None:
    """Text of a message content (string or list of parts); None when the shape is invalid."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                return None
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    return None
                texts.append(text)
        return "".join(texts)
    return None


def _parse_max_tokens(body: dict[str, Any]) -> int | None | _Reply:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return _bad_request(
                f"Invalid '{name}': expected an integer >= 1, but got {value!r} instead.", name
            )
        return value
    return None


def _parse_chat(body: dict[str, Any], model: str) -> _Parsed | _Reply:
    if body.get("stream"):
        # Streaming is not simulated; refusing beats answering in a shape the client won't read.
        return _bad_request("Streaming is not supported by the burstq mock server.", "stream")
    messages = body.get("messages")
    if messages is None:
        return _bad_request("Missing required parameter: 'messages'.", "messages")
    if not isinstance(messages, list) or not messages:
        return _bad_request(
            "Invalid 'messages': expected a non-empty array of message objects.", "messages"
        )
    texts: list[str] = []
    prompt: str | None = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return _bad_request(
                f"Invalid 'messages[{index}]': expected an object with a string 'role'.",
                "messages",
            )
        text = _content_text(message.get("content"))
        if text is None:
            return _bad_request(
                f"Invalid 'messages[{index}].content': expected a string or an array of "
                "content parts.",
                "messages",
            )
        texts.append(text)
        if message["role"] == "user":
            prompt = text
    max_tokens = _parse_max_tokens(body)
    if isinstance(max_tokens, _Reply):
        return max_tokens
    return _Parsed(
        endpoint="chat",
        model=model,
        # Without a user message, echo the last message so the answer stays deterministic.
        prompt=prompt if prompt is not None else texts[-1],
        prompt_chars=sum(len(t) for t in texts),
        max_tokens=max_tokens,
        messages_text=texts,
    )


def _parse_embeddings(body: dict[str, Any], model: str) -> _Parsed | _Reply:
    raw = body.get("input")
    if raw is None:
        return _bad_request("Missing required parameter: 'input'.", "input")
    inputs = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(item, str) and item for item in inputs)
    ):
        return _bad_request(
            "Invalid 'input': expected a non-empty string or a non-empty array of non-empty "
            "strings.",
            "input",
        )
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        return _bad_request(
            "Invalid 'encoding_format': expected 'float' or 'base64'.", "encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        return _bad_request("Invalid 'dimensions': expected an integer >= 1.", "dimensions")
    return _Parsed(
        endpoint="embeddings",
        model=model,
        prompt="\n".join(inputs),
        prompt_chars=sum(len(item) for item in inputs),
        max_tokens=None,
        inputs=inputs,
        encoding_format=encoding_format,
        dimensions=dimensions,
    )


async def _parse(request: web.Request, endpoint: Endpoint) -> _Parsed | _Reply:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _bad_request(_INVALID_JSON_MESSAGE, None)
    if not isinstance(body, dict):
        return _bad_request(_INVALID_JSON_MESSAGE, None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _bad_request("you must provide a model parameter", "model")
    if endpoint == "chat":
        return _parse_chat(body, model)
    return _parse_embeddings(body, model)


# ---------------------------------------------------------------------------------------------
# Answers


def _embedding(text: str, dim: int) -> list[float]:
    """Unit-length vector derived from a hash of the text (same text, same vector)."""
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=64).digest()
        values.extend(v / 2**31 - 1.0 for v in struct.unpack("<16I", digest))
        counter += 1
    vector = values[:dim]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _chat_reply(parsed: _Parsed, *, empty: bool) -> _Reply:
    content = "" if empty else "echo: " + parsed.prompt
    finish_reason = "stop"
    if parsed.max_tokens is not None and len(content) > parsed.max_tokens * 4:
        content = content[: parsed.max_tokens * 4]
        finish_reason = "length"
    prompt_tokens = sum(_ceil_div4(len(text)) + 4 for text in parsed.messages_text)
    completion_tokens = 0 if empty else max(1, _ceil_div4(len(content)))
    body = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": parsed.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": "fp_burstq_mock",
    }
    return _Reply(
        status=200, body=orjson.dumps(body), completed_prompt=None if empty else parsed.prompt
    )


def _embeddings_reply(parsed: _Parsed, default_dim: int, *, empty: bool) -> _Reply:
    dim = parsed.dimensions or default_dim
    data: list[dict[str, Any]] = []
    if not empty:
        for index, text in enumerate(parsed.inputs):
            vector = _embedding(text, dim)
            encoded: list[float] | str = vector
            if parsed.encoding_format == "base64":
                # What the openai SDK requests by default: little-endian float32, base64.
                encoded = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(_ceil_div4(len(text)) for text in parsed.inputs)
    body = {
        "object": "list",
        "data": data,
        "model": parsed.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return _Reply(
        status=200, body=orjson.dumps(body), completed_prompt=None if empty else parsed.prompt
    )


def _check_auth(request: web.Request, state: MockState) -> _Reply | None:
    keys = state.config.api_keys
    if keys is None:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return _error(401, _MISSING_KEY_MESSAGE, "invalid_request_error")
    if key not in keys:
        return _error(
            401,
            f"Incorrect API key provided: {_mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            code="invalid_api_key",
        )
    return None


def _model_not_found(model: str) -> _Reply:
    return _error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        code="model_not_found",
    )


def _rate_limit(state: MockState, parsed: _Parsed) -> _Reply | dict[str, str]:
    """429 reply when a bucket refuses the request, else the x-ratelimit headers to send."""
    cfg = state.config
    if cfg.rpm is None and cfg.tpm is None:
        return {}
    cost = _ceil_div4(parsed.prompt_chars) + (parsed.max_tokens or 0)
    if cfg.tpm is not None and cost > cfg.tpm:
        # Can never succeed, whatever the wait: providers say so instead of asking to retry.
        reply = _error(
            429,
            f"Request too large for {parsed.model} in organization {ORGANIZATION} on tokens per "
            f"min (TPM): Limit {cfg.tpm}, Requested {cost}. The input or output tokens must be "
            "reduced in order to run successfully.",
            "tokens",
            code="rate_limit_exceeded",
            headers=state.ratelimit_headers(),
        )
        reply.rate_limited = True
        return reply
    wait, which, headers = state.admit(cost)
    if wait <= 0:
        return headers
    limit = cfg.rpm if which == "requests" else cfg.tpm
    assert limit is not None
    remaining = int(headers[f"x-ratelimit-remaining-{which}"])
    requested = 1 if which == "requests" else cost
    unit = "RPM" if which == "requests" else "TPM"
    wait_ms = max(1, math.ceil(round(wait * 1000, 6)))
    headers["retry-after-ms"] = str(wait_ms)
    headers["retry-after"] = str(max(1, math.ceil(wait)))
    reply = _error(
        429,
        f"Rate limit reached for {parsed.model} in organization {ORGANIZATION} on {which} per "
        f"min ({unit}): Limit {limit}, Used {max(0, limit - remaining)}, Requested {requested}. "
        f"Please try again in {wait_ms}ms.",
        which,
        code="rate_limit_exceeded",
        headers=headers,
    )
    reply.rate_limited = True
    return reply


def _choose_fault(state: MockState, parsed: _Parsed) -> str | None:
    match = _DIRECTIVE_RE.search(parsed.prompt)
    if match is not None:
        kind, times = match.group(1), match.group(2)
        attempt = state.directive_attempt(parsed.prompt)
        if times is None or attempt <= int(times):
            return kind
        return None
    cfg = state.config
    if cfg.fault_rate > 0 and state.rng.random() < cfg.fault_rate:
        return state.rng.choice(cfg.fault_kinds)
    return None


def _fault_reply(kind: str, parsed: _Parsed, state: MockState) -> _Reply:
    if kind in ("500", "502", "503"):
        return _server_error(int(kind))
    if kind == "malformed":
        return _Reply(status=200, body=_MALFORMED_BODIES[parsed.endpoint])
    if kind == "empty":
        if parsed.endpoint == "chat":
            return _chat_reply(parsed, empty=True)
        return _embeddings_reply(parsed, state.config.embedding_dim, empty=True)
    if kind == "429":
        return _error(
            429,
            f"Rate limit reached for {parsed.model} in organization {ORGANIZATION} on requests "
            "per min (RPM). Please try again in 50ms.",
            "requests",
            code="rate_limit_exceeded",
            headers={"retry-after-ms": "50", "retry-after": "1"},
        )
    if kind == "400":
        return _bad_request("Invalid value for 'temperature'.", "temperature")
    raise AssertionError(f"unhandled fault kind {kind!r}")


class _Reset:
    """Marker: drop the connection without answering."""


_RESET: Final = _Reset()


async def _process(request: web.Request, state: MockState, endpoint: Endpoint) -> _Reply | _Reset:
    cfg = state.config
    auth_error = _check_auth(request, state)
    if auth_error is not None:
        return auth_error
    parsed = await _parse(request, endpoint)
    if isinstance(parsed, _Reply):
        return parsed
    state.attempt(parsed.prompt)
    if cfg.quota_exhausted:
        return _error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            code="insufficient_quota",
        )
    if cfg.models is not None and parsed.model not in cfg.models:
        return _model_not_found(parsed.model)
    if parsed.model in cfg.broken_models:
        return _server_error(500)
    limited = _rate_limit(state, parsed)
    if isinstance(limited, _Reply):
        return limited
    ratelimit_headers = limited

    fault = _choose_fault(state, parsed)
    if fault is not None:
        state.fault(fault)
    if fault == "reset":
        return _RESET
    if fault == "timeout":
        # Ends early when the server shuts down so close() never waits for a 30 s hang.
        try:
            async with asyncio.timeout(cfg.hang_seconds):
                await state.closing.wait()
        except TimeoutError:
            pass
        reply = _server_error(504)
    else:
        delay = cfg.latency
        if cfg.latency_jitter > 0:
            delay += state.rng.uniform(0.0, cfg.latency_jitter)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None:
            reply = _fault_reply(fault, parsed, state)
        elif endpoint == "chat":
            reply = _chat_reply(parsed, empty=False)
        else:
            reply = _embeddings_reply(parsed, cfg.embedding_dim, empty=False)
    reply.headers.update(ratelimit_headers)
    return reply


def _to_response(reply: _Reply, request_id: str) -> web.Response:
    response = web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
    response.headers.update(reply.headers)
    response.headers["x-request-id"] = request_id
    return response


async def _api(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    state.arrive()
    request_id = "req_" + secrets.token_hex(16)
    recorded = False
    try:
        result = await _process(request, state, endpoint)
        if isinstance(result, _Reset):
            state.record("reset")
            recorded = True
            if request.transport is not None:
                request.transport.abort()
            # aiohttp's attempt to write this to the aborted transport fails quietly.
            return web.Response(status=500)
        response = _to_response(result, request_id)
        try:
            # Written here rather than by aiohttp so a client that vanished is not counted as
            # having received its completion.
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            # aiohttp's own final write of this response then fails quietly too.
            state.record("disconnected")
            recorded = True
            return response
        state.record(str(result.status), result)
        recorded = True
        return response
    finally:
        if not recorded:
            # Cancelled because the client went away (handler_cancellation) or by shutdown.
            state.record("disconnected")
        state.depart()


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _api(request, "chat")


async def _embeddings(request: web.Request) -> web.StreamResponse:
    return await _api(request, "embeddings")


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": OWNER}


def _listed_models(config: MockConfig) -> list[str]:
    return sorted(config.models) if config.models is not None else list(DEFAULT_MODELS)


async def _list_models(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    auth_error = _check_auth(request, state)
    if auth_error is not None:
        return _to_response(auth_error, "req_" + secrets.token_hex(16))
    data = [_model_object(m) for m in _listed_models(state.config)]
    body = orjson.dumps({"object": "list", "data": data})
    return _to_response(_Reply(status=200, body=body), "req_" + secrets.token_hex(16))


async def _get_model(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    request_id = "req_" + secrets.token_hex(16)
    auth_error = _check_auth(request, state)
    if auth_error is not None:
        return _to_response(auth_error, request_id)
    model = request.match_info["model"]
    if state.config.models is not None and model not in state.config.models:
        return _to_response(_model_not_found(model), request_id)
    return _to_response(_Reply(status=200, body=orjson.dumps(_model_object(model))), request_id)


async def _health(request: web.Request) -> web.StreamResponse:
    return web.Response(body=orjson.dumps({"status": "ok"}), content_type="application/json")


async def _stats(request: web.Request) -> web.StreamResponse:
    snapshot = request.app[STATE_KEY].snapshot()
    return web.Response(body=orjson.dumps(snapshot), content_type="application/json")


async def _reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].reset()
    return web.Response(body=orjson.dumps({"status": "ok"}), content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    # aiohttp answers unknown routes in text/plain; OpenAI clients expect a JSON error body.
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        reply = _error(
            exc.status,
            f"Invalid URL ({request.method} {request.path})",
            "invalid_request_error",
        )
        return _to_response(reply, "req_" + secrets.token_hex(16))


def create_app(config: MockConfig) -> web.Application:
    """Build the aiohttp application; its MockState is ``app[STATE_KEY]``."""
    app = web.Application(middlewares=[_json_errors])
    app[STATE_KEY] = MockState(config)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model}", _get_model)
    app.router.add_get("/health", _health)
    app.router.add_get("/mock/stats", _stats)
    app.router.add_post("/mock/reset", _reset)
    from ..mock.batches import add_routes  # here, not at the top: it imports this module

    add_routes(app)
    return app


# ---------------------------------------------------------------------------------------------
# Running the server


class MockServer:
    """The mock server on the current event loop.

    >>> async with MockServer(MockConfig(rpm=60)) as server:  # doctest: +SKIP
    ...     print(server.base_url)
    """

    def __init__(self, config: MockConfig | None = None, *, shutdown_timeout: float = 2.0) -> None:
        self.config = config if config is not None else MockConfig()
        self.app = create_app(self.config)
        self.host = "127.0.0.1"
        self.port = 0
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def state(self) -> MockState:
        return self.app[STATE_KEY]

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``; wildcard hosts are given as loopback so clients can connect."""
        if self._runner is None:
            raise RuntimeError("MockServer is not started")
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{_url_host(host)}:{self.port}/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (port 0 picks a free port, see ``self.port``)."""
        if self._runner is not None:
            raise RuntimeError("MockServer is already started")
        # handler_cancellation: a client that gives up (e.g. during a "timeout" hang) frees
        # its handler at once, as a provider's front end would.
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])

    def stats(self) -> dict[str, Any]:
        return self.state.snapshot()

    def reset_stats(self) -> None:
        self.state.reset()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.state.closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ThreadedMockServer:
    """A MockServer on its own event loop in a daemon thread, for synchronous callers.

    ``with ThreadedMockServer(config) as srv:`` returns once the server is listening.
    """

    def __init__(
        self,
        config: MockConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_timeout: float = 10.0,
    ) -> None:
        self.config = config if config is not None else MockConfig()
        self.host = host
        self._requested_port = port
        self._start_timeout = start_timeout
        self._server: MockServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def server(self) -> MockServer:
        if self._server is None:
            raise RuntimeError("ThreadedMockServer is not started")
        return self._server

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> ThreadedMockServer:
        """Start the thread and block until the server listens (or raise why it could not)."""
        if self._thread is not None:
            raise RuntimeError("ThreadedMockServer is already started")
        self._thread = threading.Thread(target=self._run, name="burstq-mock-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            self.close()
            raise RuntimeError("mock server did not start in time")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError(f"mock server failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() rather than lost in the thread
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()

    async def _main(self) -> None:
        server = MockServer(self.config)
        self._stop = asyncio.Event()
        await server.start(self.host, self._requested_port)
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.close()

    def stats(self, settle: float = 2.0) -> dict[str, Any]:
        """Counters snapshot; safe from any thread (MockState locks its counters).

        A client can read an answer before the handler has counted it as delivered, so wait
        (up to `settle` seconds) for requests still being handled to finish first.
        """
        deadline = time.monotonic() + settle
        snap = self.server.stats()
        while snap["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.002)
            snap = self.server.stats()
        return snap

    def reset_stats(self) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("ThreadedMockServer is not started")
        # Buckets are touched by the loop; resetting there avoids racing a request.
        asyncio.run_coroutine_threadsafe(self._reset(), loop).result(self._start_timeout)

    async def _reset(self) -> None:
        self.server.reset_stats()

    def close(self) -> None:
        """Stop the server and join its thread; idempotent."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # loop already closed between the check and the call
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._loop = None

    def __enter__(self) -> ThreadedMockServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _serve(config: MockConfig, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            # Windows or a non-main thread: KeyboardInterrupt still ends serve() cleanly.
            pass
    server = MockServer(config)
    await server.start(host, port)
    try:
        print(
            f"mock server listening on http://{_url_host(host)}:{server.port}/v1",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await server.close()


def serve(config: MockConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the mock server in the foreground until SIGINT/SIGTERM."""
    try:
        asyncio.run(_serve(config, host, port))
    except KeyboardInterrupt:
        pass
