"""The mock server's Batch API: /v1/files and /v1/batches, answered like OpenAI's.

Files are kept in memory; a batch moves validating -> in_progress -> finalizing -> completed
over `MockConfig.batch_seconds` (the fast-forward switch, so a test batch ends in seconds), and
its lines are answered by the same builders as the live endpoints, directives included.
`[[mock:expire*N]]` and `[[mock:batchfail*N]]` expire or fail a line in its first N rounds.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import BodyPartReader, web

from .live import (
    chat_reply,
    check_auth,
    choose_fault,
    embeddings_reply,
    fault_reply,
    model_not_found,
    parse_chat,
    parse_embeddings,
    to_response,
)
from .state import (
    DIRECTIVE_RE,
    INVALID_JSON_MESSAGE,
    ORGANIZATION,
    STATE_KEY,
    Endpoint,
    MockBatch,
    MockFile,
    MockState,
    Parsed,
    Reply,
    bad_request,
    ceil_div4,
    error,
    server_error,
)

BATCH_ENDPOINTS: Final[dict[str, Endpoint]] = {
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
}
BATCH_MAX_REQUESTS: Final = 50_000
BATCH_MAX_BYTES: Final = 200 * 1024 * 1024
_FILE_PURPOSES: Final = frozenset(
    {"batch", "batch_output", "fine-tune", "assistants", "vision", "user_data", "evals"}
)
_BATCH_TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
_BATCH_DIRECTIVE_RE: Final = re.compile(r"\[\[mock:(expire|batchfail)(?:\*(\d+))?\]\]")
_EXPIRED_MESSAGE: Final = "This request could not be executed before the completion window expired."


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _not_found(kind: str, object_id: str) -> Reply:
    return error(
        404, f"No such {kind} object: {object_id}", "invalid_request_error", code="not_found"
    )


def _json_reply(obj: Any) -> Reply:
    return Reply(status=200, body=orjson.dumps(obj))


def _store_file(state: MockState, filename: str, purpose: str, content: bytes) -> MockFile:
    f = MockFile(_new_id("file-"), filename, purpose, content, int(time.time()))
    state.files[f.id] = f
    return f


def _validate_batch_lines(
    content: bytes, endpoint: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None, int]:
    """(request lines, validation errors, model, prompt-token estimate) of a batch input file.

    Only the envelope is checked here, as OpenAI does; a body the endpoint rejects becomes a
    per-line error response when the batch runs.
    """
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    tokens = 0

    def err(code: str, message: str, line: int | None, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": line})

    if len(content) > BATCH_MAX_BYTES:
        err(
            "file_too_large",
            f"The input file exceeds the maximum size of {BATCH_MAX_BYTES} bytes.",
            None,
        )
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            err("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        if not isinstance(obj, dict):
            err("invalid_json_line", "This line is not a JSON object.", number)
            continue
        custom_id = obj.get("custom_id")
        body = obj.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            err(
                "missing_required_parameter",
                "Missing required parameter: 'custom_id'.",
                number,
                "custom_id",
            )
        elif custom_id in seen:
            err(
                "duplicate_custom_id",
                f"The custom_id {custom_id!r} is not unique.",
                number,
                "custom_id",
            )
        elif obj.get("method") != "POST":
            err("invalid_method", "Only the POST method is supported.", number, "method")
        elif obj.get("url") != endpoint:
            err(
                "invalid_url",
                f"The url {obj.get('url')!r} does not match the batch's endpoint {endpoint!r}.",
                number,
                "url",
            )
        elif not isinstance(body, dict) or not isinstance(body.get("model"), str):
            err(
                "missing_required_parameter",
                "Missing required parameter: 'body.model'.",
                number,
                "body.model",
            )
        elif model is not None and body["model"] != model:
            err(
                "mismatched_model",
                "All requests in a batch must use the same model "
                f"({model!r} and {body['model']!r} found).",
                number,
                "body.model",
            )
        else:
            seen.add(custom_id)
            model = body["model"]
            lines.append(obj)
            prompt = body.get("messages", body.get("input"))
            tokens += ceil_div4(len(orjson.dumps(prompt)))
    if not lines and not errors:
        err("empty_file", "The input file is empty.", None)
    if len(lines) > BATCH_MAX_REQUESTS:
        err(
            "too_many_requests",
            f"The input file holds {len(lines)} requests; the maximum is {BATCH_MAX_REQUESTS}.",
            None,
        )
    return lines, errors, model, tokens


def _batch_fault(state: MockState, parsed: Parsed) -> str | None:
    """The batch-only directive (expire, batchfail) that applies to this line, if any."""
    match = _BATCH_DIRECTIVE_RE.search(parsed.prompt)
    if match is None:
        return None
    kind, times = match.group(1), match.group(2)
    attempt = state.batch_directive_attempt(kind + "\0" + parsed.prompt)
    return kind if times is None or attempt <= int(times) else None


def _answer_batch_line(
    state: MockState, endpoint: Endpoint, line: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """One output-file line and its outcome: 'completed', 'failed' or 'expired'."""
    cfg = state.config
    body: dict[str, Any] = line["body"]
    model: str = body["model"]
    out: dict[str, Any] = {
        "id": _new_id("batch_req_"),
        "custom_id": line["custom_id"],
        "response": None,
        "error": None,
    }
    parsed = parse_chat(body, model) if endpoint == "chat" else parse_embeddings(body, model)
    if isinstance(parsed, Reply):
        reply = parsed
    else:
        state.attempt(parsed.prompt)
        batch_fault = _batch_fault(state, parsed)
        if batch_fault == "expire":
            out["error"] = {"code": "batch_expired", "message": _EXPIRED_MESSAGE}
            return out, "expired"
        if batch_fault == "batchfail":
            reply = server_error(500)
        elif cfg.models is not None and model not in cfg.models:
            reply = model_not_found(model)
        elif model in cfg.broken_models:
            reply = server_error(500)
        else:
            # Only explicit directives here: random faults model a flaky network, which a
            # batch line never crosses.
            fault = choose_fault(state, parsed) if DIRECTIVE_RE.search(parsed.prompt) else None
            if fault is not None:
                state.fault(fault)
            if fault in ("timeout", "reset", "malformed"):
                # What a batch worker makes of a hang or a broken upstream answer.
                reply = server_error(504 if fault == "timeout" else 500)
            elif fault is not None:
                reply = fault_reply(fault, parsed, state)
            elif endpoint == "chat":
                reply = chat_reply(parsed, empty=False)
            else:
                reply = embeddings_reply(parsed, cfg.embedding_dim, empty=False)
    state.batch_answered(reply.completed_prompt)
    out["response"] = {
        "status_code": reply.status,
        "request_id": _new_id("req_"),
        "body": orjson.loads(reply.body),
    }
    return out, "completed" if reply.status < 400 else "failed"


def _finish_batch(state: MockState, batch: MockBatch) -> None:
    endpoint = BATCH_ENDPOINTS[batch.endpoint]
    outputs: list[bytes] = []
    errors: list[bytes] = []
    expired = False
    for line in batch.lines:
        out, outcome = _answer_batch_line(state, endpoint, line)
        (outputs if outcome == "completed" else errors).append(orjson.dumps(out) + b"\n")
        if outcome == "completed":
            batch.completed += 1
        else:
            batch.failed += 1
        expired = expired or outcome == "expired"
    # OpenAI writes an output file only when something succeeded, an error file only when
    # something failed; clients must expect either id to be null.
    if outputs:
        batch.output_file_id = _store_file(
            state, f"{batch.id}_output.jsonl", "batch_output", b"".join(outputs)
        ).id
    if errors:
        batch.error_file_id = _store_file(
            state, f"{batch.id}error.jsonl", "batch_output", b"".join(errors)
        ).id
    end = batch.created_at + math.ceil(batch.seconds)
    if expired:
        batch.status = "expired"
        batch.stamps["expired_at"] = end
    else:
        batch.status = "completed"
        batch.stamps["completed_at"] = end


def _advance_batch(state: MockState, batch: MockBatch) -> None:
    """Bring a batch to where its clock says it is (batches move when looked at)."""
    if batch.status in _BATCH_TERMINAL or batch.status == "cancelling":
        return
    elapsed = state.clock() - batch.started
    total = batch.seconds

    def stamp(fraction: float) -> int:
        return batch.created_at + math.floor(fraction * total)

    if elapsed < 0.1 * total:
        return
    if batch.errors:
        batch.status = "failed"
        batch.stamps["failed_at"] = stamp(0.1)
        return
    batch.status = "in_progress"
    batch.stamps.setdefault("in_progress_at", stamp(0.1))
    if elapsed < 0.9 * total:
        return
    batch.status = "finalizing"
    batch.stamps.setdefault("finalizing_at", stamp(0.9))
    if elapsed < total:
        return
    _finish_batch(state, batch)


def _enqueued_tokens(state: MockState, model: str | None) -> int:
    total = 0
    for other in state.batches.values():
        _advance_batch(state, other)
        # A batch that fails validation never holds a place in the queue.
        if other.model == model and other.status not in _BATCH_TERMINAL and not other.errors:
            total += other.tokens
    return total


_Handler = Callable[[web.Request, MockState], Awaitable[Reply]]


def _endpoint(handler: _Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`handler` behind the key check (the API refuses a bad key before reading anything else),
    its reply sent with a fresh request id."""

    async def serve(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        request_id = _new_id("req_")
        refused = check_auth(request, state)
        reply = refused if refused is not None else await handler(request, state)
        return to_response(reply, request_id)

    return serve


def _json_or(found: MockFile | MockBatch | Reply) -> Reply:
    """The object as JSON, or the error reply its lookup gave."""
    return found if isinstance(found, Reply) else _json_reply(found.to_dict())


@_endpoint
async def _upload_file(request: web.Request, state: MockState) -> Reply:
    if not request.content_type.startswith("multipart/"):
        return bad_request("Expected a multipart/form-data body.", None)
    purpose: str | None = None
    filename: str | None = None
    content: bytes | None = None
    # The streaming reader, not request.post(): aiohttp caps post() at 1 MB, a batch file is
    # allowed 200 MB.
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = part.filename or "upload"
            content = bytes(await part.read())
    if content is None or filename is None:
        return bad_request("Missing required parameter: 'file'.", "file")
    if purpose not in _FILE_PURPOSES:
        return bad_request(f"Invalid value for 'purpose': {purpose!r}.", "purpose")
    if purpose == "batch" and not filename.endswith(".jsonl"):
        return bad_request("Batch input files must be .jsonl files.", "file")
    stored = _store_file(state, filename, purpose, content)
    state.file_uploaded()
    return _json_reply(stored.to_dict())


def _find_file(request: web.Request, state: MockState) -> MockFile | Reply:
    file_id = request.match_info["file_id"]
    found = state.files.get(file_id)
    return found if found is not None else _not_found("File", file_id)


@_endpoint
async def _list_files(request: web.Request, state: MockState) -> Reply:
    purpose = request.query.get("purpose")
    data = [
        f.to_dict()
        for f in reversed(state.files.values())
        if purpose is None or f.purpose == purpose
    ]
    return _json_reply({"object": "list", "data": data, "has_more": False})


@_endpoint
async def _get_file(request: web.Request, state: MockState) -> Reply:
    return _json_or(_find_file(request, state))


@_endpoint
async def _file_content(request: web.Request, state: MockState) -> Reply:
    found = _find_file(request, state)
    if isinstance(found, Reply):
        return found
    return Reply(status=200, body=found.content, content_type="application/octet-stream")


@_endpoint
async def _create_batch(request: web.Request, state: MockState) -> Reply:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return bad_request(INVALID_JSON_MESSAGE, None)
    endpoint = body.get("endpoint")
    window = body.get("completion_window")
    file_id = body.get("input_file_id")
    metadata = body.get("metadata")
    if endpoint not in BATCH_ENDPOINTS:
        return bad_request(
            f"Invalid value for 'endpoint': {endpoint!r} (the mock supports "
            f"{', '.join(BATCH_ENDPOINTS)}).",
            "endpoint",
        )
    if window != "24h":
        return bad_request(
            f"Invalid value for 'completion_window': {window!r}. Supported values are: '24h'.",
            "completion_window",
        )
    if metadata is not None and not isinstance(metadata, dict):
        return bad_request("Invalid 'metadata': expected an object.", "metadata")
    source = state.files.get(file_id) if isinstance(file_id, str) else None
    if source is None:
        return _not_found("File", str(file_id))
    if source.purpose != "batch":
        return bad_request(
            f"The input file {file_id} must be uploaded with purpose 'batch'.", "input_file_id"
        )
    lines, errors, model, tokens = _validate_batch_lines(source.content, endpoint)
    limit = state.config.batch_max_enqueued_tokens
    if not errors and limit is not None and _enqueued_tokens(state, model) + tokens > limit:
        errors.append(
            {
                "code": "token_limit_exceeded",
                "message": f"Enqueued token limit reached for {model} in organization "
                f"{ORGANIZATION}. Limit: {limit} enqueued tokens. Please try again once some "
                "in_progress batches have been completed.",
                "param": None,
                "line": None,
            }
        )
    batch = MockBatch(
        id=_new_id("batch_"),
        endpoint=endpoint,
        model=model,
        input_file_id=source.id,
        completion_window=window,
        metadata=metadata,
        created_at=int(time.time()),
        started=state.clock(),
        seconds=state.config.batch_seconds,
        lines=lines,
        errors=errors,
        tokens=tokens,
    )
    state.batches[batch.id] = batch
    state.batch_created(len(lines))
    _advance_batch(state, batch)
    return _json_reply(batch.to_dict())


def _find_batch(request: web.Request, state: MockState) -> MockBatch | Reply:
    batch_id = request.match_info["batch_id"]
    batch = state.batches.get(batch_id)
    if batch is None:
        return _not_found("Batch", batch_id)
    _advance_batch(state, batch)
    return batch


@_endpoint
async def _get_batch(request: web.Request, state: MockState) -> Reply:
    return _json_or(_find_batch(request, state))


@_endpoint
async def _list_batches(request: web.Request, state: MockState) -> Reply:
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        return bad_request("Invalid 'limit': expected 1 to 100.", "limit")
    newest_first = list(reversed(state.batches.values()))
    after = request.query.get("after")
    if after is not None:
        ids = [b.id for b in newest_first]
        newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
    page = newest_first[:limit]
    for batch in page:
        _advance_batch(state, batch)
    body = {
        "object": "list",
        "data": [b.to_dict() for b in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(newest_first) > limit,
    }
    return _json_reply(body)


@_endpoint
async def _cancel_batch(request: web.Request, state: MockState) -> Reply:
    found = _find_batch(request, state)
    if isinstance(found, Reply):
        return found
    if found.status in _BATCH_TERMINAL:
        return bad_request(f"Cannot cancel a batch with status '{found.status}'.", None)
    # Nothing runs before the batch finalizes here, so a cancelled batch has no answers.
    now = int(time.time())
    found.status = "cancelled"
    found.stamps["cancelling_at"] = now
    found.stamps["cancelled_at"] = now
    return _json_reply(found.to_dict())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", _upload_file)
    app.router.add_get("/v1/files", _list_files)
    app.router.add_get("/v1/files/{file_id}", _get_file)
    app.router.add_get("/v1/files/{file_id}/content", _file_content)
    app.router.add_post("/v1/batches", _create_batch)
    app.router.add_get("/v1/batches", _list_batches)
    app.router.add_get("/v1/batches/{batch_id}", _get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", _cancel_batch)
