"""The OpenAI Batch API's output-line shape, for `--output-format openai-batch`.

OpenAI's batch output files and `vllm run-batch` write `{id, custom_id, response: {status_code,
request_id, body} | null, error}` lines; tools built for them can read burstq's output in that
shape, in direct and in batch mode. Those lines carry no line numbers, so resuming matches
custom_ids against INPUT's request ids instead of using the done bitmap.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..files.journal import RecordShape, ResumeState, open_for_resume
from ..files.reader import parse_line


def to_openai_batch_line(
    result_record: dict[str, Any],
    body: dict[str, Any] | None,
    status_code: int,
    request_id: str | None,
    *,
    line_id: str | None = None,
) -> dict[str, Any]:
    """A burstq record in the Batch API's output-line shape (what OpenAI and `vllm run-batch`
    write): {id, custom_id, response: {status_code, request_id, body} | null, error}.

    `body` is the provider's JSON answer (an error body for an HTTP error); without one the
    failure goes in `error` as {code, message}. As in OpenAI's files, an HTTP error keeps
    `error` null and is told by `response.status_code`. `line_id` is the provider's line id
    when there is one; otherwise a stable id derived from the request id.
    """
    custom_id = str(result_record.get("request_id"))
    if line_id is None:
        line_id = "batch_req_" + hashlib.blake2b(custom_id.encode(), digest_size=12).hexdigest()
    response = None
    if body is not None:
        response = {"status_code": status_code, "request_id": request_id, "body": body}
    error = None
    http_error = body is not None and status_code >= 400
    if result_record.get("status") != "completed" and not http_error:
        err = result_record.get("error") or {}
        error = {"code": err.get("type") or "unknown", "message": err.get("message") or ""}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": error}


def _openai_line_failed(rec: dict[str, Any]) -> bool:
    response = rec.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    return rec.get("error") is not None or not isinstance(status, int) or status >= 400


def resume_openai_batch(
    output: Path,
    input_path: Path,
    fingerprint: dict[str, Any],
    *,
    default_model: str,
    restart: bool = False,
    retry_failed: bool = False,
) -> ResumeState:
    """open_for_resume for an OUTPUT in the Batch API shape, which has no line numbers: the
    done lines are found by matching custom_ids against INPUT's request ids."""
    counts: dict[str, int] = {}

    def take(rec: dict[str, Any]) -> None:
        cid = str(rec["custom_id"])
        counts[cid] = counts.get(cid, 0) + 1

    shape = RecordShape("Batch API output line", take, _openai_line_failed)
    state = open_for_resume(
        output, fingerprint, restart=restart, retry_failed=retry_failed, shape=shape
    )
    if counts:
        with input_path.open("rb") as f:
            for line, raw in enumerate(f, start=1):
                item = parse_line(raw, line, default_model)
                if item is None:
                    continue
                rid = item.id or f"line-{line}"
                if counts.get(rid, 0) > 0:
                    counts[rid] -= 1
                    state.done.add(line)
    return state


def from_openai_batch_line(line: dict[str, Any]) -> dict[str, Any]:
    """A Batch API output line read back as a burstq record, so `burstq stats` can read either
    shape. The shape carries no cost, latency or line number: those stay null."""
    response = line.get("response") if isinstance(line.get("response"), dict) else None
    body = response.get("body") if response and isinstance(response.get("body"), dict) else {}
    status = response.get("status_code") if response else None
    failed = _openai_line_failed(line)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    output = None
    choices = body.get("choices")
    if not failed and isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        output = message.get("content") if isinstance(message, dict) else None
    error = None
    if failed:
        top = line.get("error") if isinstance(line.get("error"), dict) else None
        inner: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
        if top is not None:
            etype = str(top.get("code") or "unknown")
        elif isinstance(status, int) and status == 429:
            etype = "rate_limited"
        elif isinstance(status, int) and status >= 500:
            etype = "server_error"
        else:
            etype = "bad_request"  # burstq's name for a 4xx that would fail again
        error = {
            "type": etype,
            "message": str((top if top is not None else inner).get("message") or ""),
            "status_code": status,
        }
    return {
        "request_id": line.get("custom_id"),
        "line": None,
        "status": "failed" if failed else "completed",
        "output": output,
        "model": None,
        "model_used": body.get("model"),
        "latency_ms": None,
        "attempts": 1,
        "usage": usage,
        "tokens_used": int(usage.get("total_tokens") or 0) if usage else 0,
        "cost_usd": None,
        "error": error,
        "metadata": None,
        "finished_at": None,
    }
