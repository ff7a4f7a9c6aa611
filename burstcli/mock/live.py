"""The live endpoints: chat completions, embeddings, models, health, stats and reset."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import secrets
import struct
import time
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from .state import (
    _MALFORMED_BODIES,
    DEFAULT_MODELS,
    DIRECTIVE_RE,
    INVALID_JSON_MESSAGE,
    MISSING_KEY_MESSAGE,
    ORGANIZATION,
    OWNER,
    STATE_KEY,
    Endpoint,
    MockConfig,
    MockState,
    Parsed,
    Reply,
    bad_request,
    ceil_div4,
    error,
    mask_key,
    server_error,
)
from .structured import structured_content


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


def _parse_max_tokens(body: dict[str, Any]) -> int | None | Reply:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return bad_request(
                f"Invalid '{name}': expected an integer >= 1, but got {value!r} instead.", name
            )
        return value
    return None


def parse_chat(body: dict[str, Any], model: str) -> Parsed | Reply:
    if body.get("stream"):
        # Streaming is not simulated; refusing beats answering in a shape the client won't read.
        return bad_request("Streaming is not supported by the burstq mock server.", "stream")
    messages = body.get("messages")
    if messages is None:
        return bad_request("Missing required parameter: 'messages'.", "messages")
    if not isinstance(messages, list) or not messages:
        return bad_request(
            "Invalid 'messages': expected a non-empty array of message objects.", "messages"
        )
    texts: list[str] = []
    prompt: str | None = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return bad_request(
                f"Invalid 'messages[{index}]': expected an object with a string 'role'.",
                "messages",
            )
        text = _content_text(message.get("content"))
        if text is None:
            return bad_request(
                f"Invalid 'messages[{index}].content': expected a string or an array of "
                "content parts.",
                "messages",
            )
        texts.append(text)
        if message["role"] == "user":
            prompt = text
    max_tokens = _parse_max_tokens(body)
    if isinstance(max_tokens, Reply):
        return max_tokens
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict)
        or response_format.get("type") not in ("text", "json_object", "json_schema")
    ):
        return bad_request(
            "Invalid 'response_format.type': expected one of 'text', 'json_object' or "
            "'json_schema'.",
            "response_format",
        )
    return Parsed(
        response_format=response_format,
        endpoint="chat",
        model=model,
        # Without a user message, echo the last message so the answer stays deterministic.
        prompt=prompt if prompt is not None else texts[-1],
        prompt_chars=sum(len(t) for t in texts),
        max_tokens=max_tokens,
        messages_text=texts,
    )


def parse_embeddings(body: dict[str, Any], model: str) -> Parsed | Reply:
    raw = body.get("input")
    if raw is None:
        return bad_request("Missing required parameter: 'input'.", "input")
    inputs = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(item, str) and item for item in inputs)
    ):
        return bad_request(
            "Invalid 'input': expected a non-empty string or a non-empty array of non-empty "
            "strings.",
            "input",
        )
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        return bad_request(
            "Invalid 'encoding_format': expected 'float' or 'base64'.", "encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        return bad_request("Invalid 'dimensions': expected an integer >= 1.", "dimensions")
    return Parsed(
        endpoint="embeddings",
        model=model,
        prompt="\n".join(inputs),
        prompt_chars=sum(len(item) for item in inputs),
        max_tokens=None,
        inputs=inputs,
        encoding_format=encoding_format,
        dimensions=dimensions,
    )


async def _parse(request: web.Request, endpoint: Endpoint) -> Parsed | Reply:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return bad_request(INVALID_JSON_MESSAGE, None)
    if not isinstance(body, dict):
        return bad_request(INVALID_JSON_MESSAGE, None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return bad_request("you must provide a model parameter", "model")
    if endpoint == "chat":
        return parse_chat(body, model)
    return parse_embeddings(body, model)


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


def chat_reply(parsed: Parsed, *, empty: bool, content: str | None = None) -> Reply:
    if content is None:
        content = "" if empty else "echo: " + parsed.prompt
        if not empty and parsed.response_format is not None:
            content = structured_content(parsed.response_format, parsed.prompt) or content
    finish_reason = "stop"
    if parsed.max_tokens is not None and len(content) > parsed.max_tokens * 4:
        content = content[: parsed.max_tokens * 4]
        finish_reason = "length"
    prompt_tokens = sum(ceil_div4(len(text)) + 4 for text in parsed.messages_text)
    completion_tokens = 0 if empty else max(1, ceil_div4(len(content)))
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
    return Reply(
        status=200,
        body=orjson.dumps(body),
        completed_prompt=None if empty else parsed.prompt,
        work_tokens=completion_tokens,
    )


def embeddings_reply(
    parsed: Parsed, default_dim: int, *, empty: bool, per_token: bool = False
) -> Reply:
    dim = parsed.dimensions or default_dim
    data: list[dict[str, Any]] = []
    if not empty:
        for index, text in enumerate(parsed.inputs):
            vector = _embedding(text, dim)
            encoded: list[float] | list[list[float]] | str = vector
            if per_token:
                # No pooling (llama.cpp without --pooling): one vector per input token.
                encoded = [_embedding(f"{n}:{text}", dim) for n in range(ceil_div4(len(text)))]
            if parsed.encoding_format == "base64":
                # What the openai SDK requests by default: little-endian float32, base64.
                encoded = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(ceil_div4(len(text)) for text in parsed.inputs)
    body = {
        "object": "list",
        "data": data,
        "model": parsed.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Reply(
        status=200,
        body=orjson.dumps(body),
        completed_prompt=None if empty else parsed.prompt,
        work_tokens=tokens,
    )


def check_auth(request: web.Request, state: MockState) -> Reply | None:
    keys = state.config.api_keys
    if keys is None:
        return None
    azure = request.headers.get("api-key")  # Azure OpenAI's header, instead of a bearer token
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if azure is not None:
        scheme, key = "bearer", azure.strip()
    if scheme.lower() != "bearer" or not key:
        return error(401, MISSING_KEY_MESSAGE, "invalid_request_error")
    if key not in keys:
        return error(
            401,
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            code="invalid_api_key",
        )
    return None


def model_not_found(model: str) -> Reply:
    return error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        code="model_not_found",
    )


def _rate_limit(state: MockState, parsed: Parsed) -> Reply | dict[str, str]:
    """429 reply when a bucket refuses the request, else the x-ratelimit headers to send."""
    cfg = state.config
    if cfg.rpm is None and cfg.tpm is None:
        return {}
    cost = ceil_div4(parsed.prompt_chars) + (parsed.max_tokens or 0)
    if cfg.tpm is not None and cost > cfg.tpm:
        # Can never succeed, whatever the wait: providers say so instead of asking to retry.
        reply = error(
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
    reply = error(
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


def choose_fault(state: MockState, parsed: Parsed) -> str | None:
    match = DIRECTIVE_RE.search(parsed.prompt)
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


def fault_reply(kind: str, parsed: Parsed, state: MockState) -> Reply:
    if kind in ("500", "502", "503"):
        return server_error(int(kind))
    if kind == "malformed":
        return Reply(status=200, body=_MALFORMED_BODIES[parsed.endpoint])
    if kind == "empty":
        if parsed.endpoint == "chat":
            return chat_reply(parsed, empty=True)
        return embeddings_reply(parsed, state.config.embedding_dim, empty=True)
    if kind == "429":
        return error(
            429,
            f"Rate limit reached for {parsed.model} in organization {ORGANIZATION} on requests "
            "per min (RPM). Please try again in 50ms.",
            "requests",
            code="rate_limit_exceeded",
            headers={"retry-after-ms": "50", "retry-after": "1"},
        )
    if kind == "400":
        return bad_request("Invalid value for 'temperature'.", "temperature")
    if kind == "badjson":
        return chat_reply(parsed, empty=False, content='{"label": "positive", "reason": "cut')
    if kind == "badshape":
        return chat_reply(parsed, empty=False, content='{"unexpected": ["not", "the", "shape"]}')
    raise AssertionError(f"unhandled fault kind {kind!r}")


class _Reset:
    """Marker: drop the connection without answering."""


_RESET: Final = _Reset()


async def _process(request: web.Request, state: MockState, endpoint: Endpoint) -> Reply | _Reset:
    cfg = state.config
    state.saw_headers(request.headers)
    auth_error = check_auth(request, state)
    if auth_error is not None:
        return auth_error
    parsed = await _parse(request, endpoint)
    if isinstance(parsed, Reply):
        return parsed
    state.attempt(parsed.prompt, parsed.model)
    if cfg.quota_exhausted:
        return error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            code="insufficient_quota",
        )
    if cfg.models is not None and parsed.model not in cfg.models:
        return model_not_found(parsed.model)
    if parsed.model in cfg.broken_models:
        return server_error(500)
    limited = _rate_limit(state, parsed)
    if isinstance(limited, Reply):
        return limited
    ratelimit_headers = limited

    fault = choose_fault(state, parsed)
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
        reply = server_error(504)
    else:
        delay = cfg.latency
        if cfg.latency_jitter > 0:
            delay += state.rng.uniform(0.0, cfg.latency_jitter)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None:
            reply = fault_reply(fault, parsed, state)
        elif endpoint == "chat":
            reply = chat_reply(parsed, empty=False)
        else:
            reply = embeddings_reply(
                parsed, cfg.embedding_dim, empty=False, per_token=cfg.embeddings_per_token
            )
        if state.slots is not None:
            await state.slots.serve(reply.work_tokens)
    reply.headers.update(ratelimit_headers)
    return reply


def to_response(reply: Reply, request_id: str) -> web.Response:
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
        response = to_response(result, request_id)
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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _api(request, "chat")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _api(request, "embeddings")


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": OWNER}


def _listed_models(config: MockConfig) -> list[str]:
    return sorted(config.models) if config.models is not None else list(DEFAULT_MODELS)


async def list_models(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    auth_error = check_auth(request, state)
    if auth_error is not None:
        return to_response(auth_error, "req_" + secrets.token_hex(16))
    data = [_model_object(m) for m in _listed_models(state.config)]
    body = orjson.dumps({"object": "list", "data": data})
    return to_response(Reply(status=200, body=body), "req_" + secrets.token_hex(16))


async def get_model(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    request_id = "req_" + secrets.token_hex(16)
    auth_error = check_auth(request, state)
    if auth_error is not None:
        return to_response(auth_error, request_id)
    model = request.match_info["model"]
    if state.config.models is not None and model not in state.config.models:
        return to_response(model_not_found(model), request_id)
    return to_response(Reply(status=200, body=orjson.dumps(_model_object(model))), request_id)


async def health(request: web.Request) -> web.StreamResponse:
    return web.Response(body=orjson.dumps({"status": "ok"}), content_type="application/json")


async def stats(request: web.Request) -> web.StreamResponse:
    snapshot = request.app[STATE_KEY].snapshot()
    return web.Response(body=orjson.dumps(snapshot), content_type="application/json")


async def reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].reset()
    return web.Response(body=orjson.dumps({"status": "ok"}), content_type="application/json")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    # aiohttp answers unknown routes in text/plain; OpenAI clients expect a JSON error body.
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        reply = error(
            exc.status,
            f"Invalid URL ({request.method} {request.path})",
            "invalid_request_error",
        )
        return to_response(reply, "req_" + secrets.token_hex(16))
