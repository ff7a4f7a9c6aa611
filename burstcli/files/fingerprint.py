"""The request fingerprint: a content hash of what is sent, the unit of "already done".

`of(req)` hashes the request exactly as the engine sends it, canonicalised: the endpoint, the
requested model and the body (messages or input, the params, response_format and any other
field passed through), serialised as JSON with sorted keys at every level, so key order and
the whitespace of the input line do not matter. Integral floats among the top-level params
count as integers (`"temperature": 0.0` is `0`). Nothing else enters it: not the id, priority,
metadata or line number (those describe the line, not the request), not the API key or the
base URL. It is 128 bits of BLAKE2b, as 32 hex digits, behind a version tag so that a future
change of the recipe can never match an old fingerprint by accident.

The hot path calls it once per request sent, so it is one orjson call and one hash: about a
microsecond for a short chat request (docs/formats.md gives the figure and the command).
May import: models.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..models import Request

VERSION = b"burstq-fp1\n"
_OPTS = orjson.OPT_SORT_KEYS
_PROMPT_KEYS = frozenset(("messages", "input"))


def _canonical_body(body: dict[str, Any]) -> dict[str, Any]:
    # Only the top-level params are small enough to normalise for free; a 0.0 that a user
    # edits to 0 is the same request to every provider.
    for k, v in body.items():
        if type(v) is float and k not in _PROMPT_KEYS and v.is_integer():
            break
    else:
        return body
    return {
        k: int(v) if type(v) is float and k not in _PROMPT_KEYS and v.is_integer() else v
        for k, v in body.items()
    }


def digest(endpoint: str, model: str, body: dict[str, Any]) -> bytes:
    """The 16-byte fingerprint of one request as sent."""
    data = orjson.dumps((endpoint, model, _canonical_body(body)), option=_OPTS)
    return hashlib.blake2b(VERSION + data, digest_size=16).digest()


def of(req: Request) -> str:
    """The request's fingerprint as 32 hex digits, computed once and kept on the Request."""
    fp = req.fingerprint
    if not fp:
        fp = req.fingerprint = digest(req.endpoint, req.model, req.body).hex()
    return fp


def salt(shaping: dict[str, Any]) -> bytes:
    """What, besides its bytes, makes a line the request it is: the request-shaping options."""
    return orjson.dumps(shaping, option=_OPTS) + b"\n"


def line_digest(salt: bytes, raw: bytes) -> int:
    """64 bits of the raw input line (without its line break) under those options: equal
    digests mean the same bytes, hence the same request, so a rerun can pair the line with
    its record without parsing it (files/rewrite.py). Never 0."""
    data = salt + raw.rstrip(b"\r\n")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") or 1


def short(fp: str) -> int:
    """The first 64 bits of a hex fingerprint: what in-memory tables keep (never 0)."""
    return int(fp[:16], 16) or 1


def is_fingerprint(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 32:
        return False
    try:
        int(value, 16)
    except ValueError:
        return False
    return True


def deterministic(req: Request) -> bool:
    """Whether the provider gives the same answer again: embeddings, or temperature 0."""
    if req.endpoint == "embeddings":
        return True
    t = req.body.get("temperature")
    return isinstance(t, int | float) and not isinstance(t, bool) and t == 0
