"""The one redaction step: every message burstq stores or prints passes through `redact()`.

Secrets (API keys, Redis passwords) are registered once, where they enter the process
(config, endpoints file, limiter URL). `redact()` replaces a registered secret wherever it
appears whole, and any fragment of it at least `FRAGMENT` characters long, so a key cut in
half by a provider's message or by our own length cap is still hidden. Redact first, then cut.
May import: nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

MASK = "[REDACTED]"
FRAGMENT = 8  # a fragment this long of a key is enough to be worth hiding
_MIN_SECRET = 6  # shorter "secrets" (x, test) would blank out ordinary words


@dataclass(slots=True, frozen=True)
class _Index:
    """What `redact()` needs, built once per registered secret set and never mutated (a reader
    holding the old one while register() swaps in a new one sees a consistent whole)."""

    # Every FRAGMENT-long window of every longer secret -> where it sits: (characters of the
    # secret left after the window, secret, offset after the window), most left first, so the
    # search for the longest continuation can stop early.
    grams: dict[str, tuple[tuple[int, str, int], ...]]
    # Secrets shorter than FRAGMENT: hidden only when whole, longest first.
    short: tuple[str, ...]
    # Every `step`-long piece of every secret. A match is at least 2 * step - 1 long, so it
    # holds a whole piece that starts at a multiple of `step`, at most step - 1 after the
    # match starts: redact() reads one piece per `step` characters and looks closer only
    # just before the pieces that belong to a secret.
    probes: frozenset[str]
    step: int


_lock = threading.Lock()
_secrets: set[str] = set()
_index: _Index | None = None


def register(secret: str | None) -> None:
    """Hide `secret` (and its long fragments) from everything burstq writes from now on."""
    global _index
    if not secret or len(secret) < _MIN_SECRET:
        return
    with _lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        _index = _build(_secrets)


def _build(secrets: set[str]) -> _Index:
    where: dict[str, list[tuple[int, str, int]]] = {}
    for s in secrets:
        for i in range(len(s) - FRAGMENT + 1):
            end = i + FRAGMENT
            where.setdefault(s[i:end], []).append((len(s) - end, s, end))
    grams = {g: tuple(sorted(set(at), reverse=True)) for g, at in where.items()}
    short = tuple(sorted((s for s in secrets if len(s) < FRAGMENT), key=len, reverse=True))
    shortest = min(FRAGMENT, *(len(s) for s in secrets))
    step = (shortest + 1) // 2
    probes = frozenset(s[i : i + step] for s in secrets for i in range(len(s) - step + 1))
    return _Index(grams, short, probes, step)


def redact(text: str) -> str:
    """`text` with every registered secret, or long fragment of one, replaced by MASK.

    Left to right, the first position where a secret or a FRAGMENT-long piece of one starts is
    masked together with as much more of that secret as the text goes on with (the longest
    such continuation over all secrets), then the scan resumes after the mask.
    """
    index = _index
    if index is None or not text:
        return text
    probes, step = index.probes, index.step
    hits = [at for at in range(0, len(text) - step + 1, step) if text[at : at + step] in probes]
    if not hits:
        return text  # the usual case: a few set lookups per message
    out: list[str] = []
    done = 0  # text[:done] is already in out; no match starts before it
    for probe in hits:
        if probe < done:
            continue  # inside the last mask
        # A match holding this piece (and no earlier probe's) starts in (probe - step, probe].
        for at in range(max(done, probe - step + 1), probe + 1):
            n = _match_at(text, at, index)
            if n:
                out.append(text[done:at])
                out.append(MASK)
                done = at + n
                break
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


def _match_at(text: str, pos: int, index: _Index) -> int:
    """Length of the longest secret piece starting at text[pos] that redact() masks, or 0."""
    gram_end = pos + FRAGMENT
    if gram_end <= len(text):
        at = index.grams.get(text[pos:gram_end])
        if at is not None:
            best = 0
            for left, secret, offset in at:
                if FRAGMENT + left <= best:
                    break  # no later entry can continue further
                best = max(best, FRAGMENT + _common(text, gram_end, secret, offset, left))
            return best
    for secret in index.short:
        if text.startswith(secret, pos):
            return len(secret)
    return 0


def _common(text: str, start: int, secret: str, offset: int, left: int) -> int:
    """How many characters text[start:] shares with secret[offset:] from their starts."""
    hi = min(left, len(text) - start)
    if text.startswith(secret[offset : offset + hi], start):
        return hi  # the usual case: the rest of the key is there
    lo, hi = 0, hi - 1  # the first hi do not all agree: the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text.startswith(secret[offset : offset + mid], start):
            lo = mid
        else:
            hi = mid - 1
    return lo


# redact_name's memo: text -> (the index it was redacted with, the result). A result made
# with an older index (a secret registered since) is never used.
_names: dict[str, tuple[_Index | None, str]] = {}
_NAMES_MAX = 1024
NAME_CHARS = 200


def redact_name(text: str) -> str:
    """`redact_cut(text, NAME_CHARS)` for the short strings a provider repeats in every answer
    (the model that answered): computed once per distinct name and secret set."""
    index = _index
    hit = _names.get(text)
    if hit is not None and hit[0] is index:
        return hit[1]
    out = redact_cut(text, NAME_CHARS)
    if len(_names) >= _NAMES_MAX:
        _names.clear()
    _names[text] = (index, out)
    return out


def redact_cut(text: str, limit: int) -> str:
    """Redact, then cap at `limit` characters (never the other way round)."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit] + "..."


def forget_all() -> None:
    """For tests: drop every registered secret."""
    global _index
    with _lock:
        _secrets.clear()
        _index = None
