"""The one redaction step: every message burstq stores or prints passes through `redact()`.

Secrets (API keys, Redis passwords) are registered once, where they enter the process
(config, endpoints file, limiter URL). `redact()` replaces a registered secret wherever it
appears whole, and any fragment of it at least `FRAGMENT` characters long, so a key cut in
half by a provider's message or by our own length cap is still hidden. Redact first, then cut.
May import: nothing.
"""

from __future__ import annotations

import re
import threading

MASK = "[REDACTED]"
FRAGMENT = 8  # a fragment this long of a key is enough to be worth hiding
_MIN_SECRET = 6  # shorter "secrets" (x, test) would blank out ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(secret: str | None) -> None:
    """Hide `secret` (and its long fragments) from everything burstq writes from now on."""
    global _pattern
    if not secret or len(secret) < _MIN_SECRET:
        return
    with _lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        _pattern = _compile(_secrets)


def _compile(secrets: set[str]) -> re.Pattern[str]:
    # Whole secrets first (longest first), then every FRAGMENT-long window of each: a match
    # of a window extends greedily over the rest of the secret's characters that follow it.
    alternatives: list[str] = []
    for s in sorted(secrets, key=len, reverse=True):
        alternatives.append(re.escape(s))
    for s in secrets:
        if len(s) <= FRAGMENT:
            continue
        for i in range(len(s) - FRAGMENT + 1):
            alternatives.append(re.escape(s[i : i + FRAGMENT]) + _tail(s[i + FRAGMENT :]))
    return re.compile("|".join(alternatives))


def _tail(rest: str) -> str:
    # Optional continuation: as many of the following characters of the secret as match.
    out = ""
    for ch in reversed(rest[:64]):
        out = f"(?:{re.escape(ch)}{out})?"
    return out


def redact(text: str) -> str:
    """`text` with every registered secret, or long fragment of one, replaced by MASK."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


# redact_name's memo: text -> (the pattern it was redacted with, the result). A result made
# with an older pattern (a secret registered since) is never used.
_names: dict[str, tuple[re.Pattern[str] | None, str]] = {}
_NAMES_MAX = 1024
NAME_CHARS = 200


def redact_name(text: str) -> str:
    """`redact_cut(text, NAME_CHARS)` for the short strings a provider repeats in every answer
    (the model that answered): computed once per distinct name and secret set."""
    pattern = _pattern
    hit = _names.get(text)
    if hit is not None and hit[0] is pattern:
        return hit[1]
    out = redact_cut(text, NAME_CHARS)
    if len(_names) >= _NAMES_MAX:
        _names.clear()
    _names[text] = (pattern, out)
    return out


def redact_cut(text: str, limit: int) -> str:
    """Redact, then cap at `limit` characters (never the other way round)."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit] + "..."


def forget_all() -> None:
    """For tests: drop every registered secret."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None
