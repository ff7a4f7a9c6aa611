"""What a provider's successful answer says: its text, or its embedding vectors."""

from __future__ import annotations

from typing import Any

import orjson

PER_TOKEN_WARNING = (
    "{model} answered one embedding vector per token (shape [tokens, dim]), not one per "
    "input: the server does not pool them (llama.cpp: start it with --pooling mean); records "
    "keep what it sent"
)


def per_token_vectors(vectors: list[Any]) -> bool:
    """Vectors of shape [tokens, dim] (a server without pooling, e.g. llama.cpp's default
    for some models) instead of one [dim] vector per input."""
    return any(isinstance(v, list) and bool(v) and isinstance(v[0], list) for v in vectors)


def extract_output(endpoint: str, data: dict[str, Any]) -> tuple[str | None, list[Any] | None]:
    """(text, embedding vectors in input order) of a successful answer.

    Tool calls without text are kept as their JSON, so a function-calling job has an output.
    """
    if endpoint == "embeddings":
        items = data["data"]
        index = [i.get("index", n) for n, i in enumerate(items)]
        if any(type(x) is not int for x in index):  # bool, str, float: not an index
            raise ValueError("data[].index is not an integer")
        order = sorted(range(len(items)), key=index.__getitem__)
        return None, [items[n]["embedding"] for n in order]
    message = data["choices"][0]["message"]
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if not content and message.get("tool_calls"):
        return orjson.dumps(message["tool_calls"]).decode(), None
    return (content if isinstance(content, str) else None), None


MAX_TOKENS = 2**53  # beyond any real count, and exact as a JSON number everywhere


def clean_usage(usage: Any) -> dict[str, Any] | None:
    """A provider's `usage`, or None when it is not the documented shape.

    Counts must be non-negative integers (nested details objects of them too): a string, a
    list, a float or a 100-digit number would break token totals, pacing and prices, so
    such a usage is dropped (usage, tokens and cost unknown) and the answer is kept.
    """
    if not isinstance(usage, dict) or not _counts(usage, 0):
        return None
    return usage


def _counts(obj: dict[str, Any], depth: int) -> bool:
    for value in obj.values():
        if type(value) is int:
            if not 0 <= value < MAX_TOKENS:
                return False
        elif isinstance(value, dict):
            if depth >= 2 or not _counts(value, depth + 1):
                return False
        elif value is not None:
            return False
    return True


def finish_reason(data: dict[str, Any]) -> str | None:
    """Why the first choice stopped ("stop", "length", ...), when the answer says, as a string."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    reason = choices[0].get("finish_reason")
    return reason[:40] if isinstance(reason, str) and reason else None
