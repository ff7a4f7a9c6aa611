"""Structured answers: JSON that conforms to a request's `response_format` schema.

Deterministic per prompt (the same row gets the same labels on every run), so `--simulate`
runs the whole labeling flow with no key. Covers what strict mode allows: objects, arrays,
enums, const, string/number/integer/boolean/null and unions of them, $ref to $defs.
May import: nothing of burstq outside mock/.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

_WORDS = ("clear", "short", "helpful", "late", "broken", "great", "fine", "slow", "kind")


def structured_content(response_format: dict[str, Any], prompt: str) -> str | None:
    """The answer text for a structured request; None when it asks for plain text."""
    import orjson

    kind = response_format.get("type")
    rng = random.Random(hashlib.blake2b(prompt.encode(), digest_size=8).digest())
    if kind == "json_object":
        return orjson.dumps({"echo": prompt[:200]}).decode()
    if kind != "json_schema":
        return None
    js = response_format.get("json_schema")
    schema = js.get("schema") if isinstance(js, dict) else None
    if not isinstance(schema, dict):
        return orjson.dumps({"echo": prompt[:200]}).decode()
    return orjson.dumps(_value(schema, schema, rng, 0)).decode()


def _value(node: Any, root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    if not isinstance(node, dict) or depth > 8:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return _value(target, root, rng, depth + 1)
    if "const" in node:
        return node["const"]
    if isinstance(node.get("enum"), list) and node["enum"]:
        choices = [v for v in node["enum"] if v is not None] or node["enum"]
        return rng.choice(choices)
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _value((non_null or options)[0], root, rng, depth + 1)
    typ = node.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or "properties" in node:
        props = node.get("properties") or {}
        return {k: _value(v, root, rng, depth + 1) for k, v in props.items()}
    if typ == "array":
        n = max(int(node.get("minItems") or 1), 1)
        return [_value(node.get("items") or {}, root, rng, depth + 1) for _ in range(n)]
    if typ == "integer":
        lo = int(node.get("minimum", 0))
        return rng.randint(lo, max(lo, int(node.get("maximum", lo + 5))))
    if typ == "number":
        low = float(node.get("minimum", 0.0))
        high = float(node.get("maximum", 1.0 if low < 1.0 else low + 1.0))
        return round(rng.uniform(low, high), 2)
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "null":
        return None
    return " ".join(rng.choice(_WORDS) for _ in range(3))
