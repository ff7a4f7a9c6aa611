"""What a provider's successful answer says: its text, or its embedding vectors."""

from __future__ import annotations

from typing import Any

import orjson


def extract_output(endpoint: str, data: dict[str, Any]) -> tuple[str | None, list[Any] | None]:
    """(text, embedding vectors in input order) of a successful answer.

    Tool calls without text are kept as their JSON, so a function-calling job has an output.
    """
    if endpoint == "embeddings":
        items = sorted(data["data"], key=lambda i: i.get("index", 0))
        return None, [i["embedding"] for i in items]
    message = data["choices"][0]["message"]
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if not content and message.get("tool_calls"):
        return orjson.dumps(message["tool_calls"]).decode(), None
    return (content if isinstance(content, str) else None), None


def finish_reason(data: dict[str, Any]) -> str | None:
    """Why the first choice stopped ("stop", "length", ...), when the answer says, as a string."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    reason = choices[0].get("finish_reason")
    return reason[:40] if isinstance(reason, str) and reason else None
