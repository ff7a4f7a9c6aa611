"""redact(): the 8-gram index gives exactly what the definition gives.

The definition, written the slow way in `reference()`: scanning left to right, at the first
position where a registered secret starts whole (or a piece of one at least FRAGMENT long),
mask as much of a secret as the text goes on with (the longest over all secrets and offsets),
then go on after the mask. Random secrets (regex metacharacters, repeats, secrets that share
pieces) against random texts built of random fragments of them.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from burstcli import redact
from burstcli.redact import FRAGMENT, MASK


@pytest.fixture(autouse=True)
def _no_secrets() -> Iterator[None]:
    redact.forget_all()
    yield
    redact.forget_all()


def reference(text: str, secrets: list[str]) -> str:
    secrets = [s for s in secrets if len(s) >= 6]  # redact._MIN_SECRET
    out: list[str] = []
    i = 0
    while i < len(text):
        best = 0
        for s in secrets:
            for j in range(len(s)):
                k = 0
                while i + k < len(text) and j + k < len(s) and text[i + k] == s[j + k]:
                    k += 1
                if k >= FRAGMENT or (j == 0 and k == len(s)):
                    best = max(best, k)
        if best:
            out.append(MASK)
            i += best
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


ALPHABETS = [
    "ab",  # repeats everywhere: many offsets share an 8-gram
    "abc-_",
    ".^$*+?{}[]\\|()-",  # every regex metacharacter
    "sk-proj0123456789ABCDEFabcdef",
    "é€😀aZ\n\t ",  # beyond ASCII, whitespace inside a key
]


def _secret(rng: random.Random, others: list[str]) -> str:
    alphabet = rng.choice(ALPHABETS)
    n = rng.choice([5, 6, 7, 8, 9, 12, 20, 40, 90])
    s = "".join(rng.choice(alphabet) for _ in range(n))
    if others and rng.random() < 0.4:  # shares a piece with an earlier secret
        o = rng.choice(others)
        a = rng.randrange(len(o))
        s = s[: n // 2] + o[a : a + rng.randint(4, 12)] + s[n // 2 :]
    return s


def _text(rng: random.Random, secrets: list[str]) -> str:
    filler = rng.choice(ALPHABETS) + "xyz "
    parts: list[str] = []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.35:
            parts.append("".join(rng.choice(filler) for _ in range(rng.randint(0, 12))))
        else:
            s = rng.choice(secrets)
            a = rng.randrange(len(s))
            b = rng.randint(a + 1, len(s)) if r < 0.85 else len(s)
            parts.append(s[a:b] if r < 0.85 else s)  # a fragment (short ones too) or whole
    return "".join(parts)


def test_redact_matches_the_definition_on_random_texts() -> None:
    rng = random.Random(20261201)
    for _ in range(120):
        redact.forget_all()
        secrets: list[str] = []
        for _ in range(rng.randint(1, 4)):
            secrets.append(_secret(rng, secrets))
        for s in secrets:
            redact.register(s)
        for _ in range(8):
            text = _text(rng, secrets)
            assert redact.redact(text) == reference(text, secrets), (secrets, text)


def test_no_long_piece_of_a_secret_survives() -> None:
    # The guarantee itself, independent of the reference: whatever is left between masks holds
    # no FRAGMENT-long piece of a secret (texts and secrets without MASK's characters).
    rng = random.Random(7)
    for _ in range(60):
        redact.forget_all()
        secrets = [_secret(rng, []).replace("[", "(").replace("]", ")") for _ in range(3)]
        for s in secrets:
            redact.register(s)
        text = _text(rng, secrets)
        for kept in redact.redact(text).split(MASK):
            for s in secrets:
                if 6 <= len(s) < FRAGMENT:
                    assert s not in kept, (s, text)
                for i in range(len(s) - FRAGMENT + 1):
                    assert s[i : i + FRAGMENT] not in kept, (s, text)


def test_a_whole_key_is_one_mask_and_cut_after_redaction() -> None:
    key = "sk-proj-" + "A1b2C3d4E5f6G7h8-_" * 9  # 170 characters
    redact.register(key)
    assert redact.redact(f"Bearer {key}.") == f"Bearer {MASK}."
    assert redact.redact(f"x{key[40:]}y{key[:9]}") == f"x{MASK}y{MASK}"
    assert redact.redact(key[3:10]) == key[3:10]  # 7 characters: not worth hiding
    assert redact.redact_cut("e" * 5 + key, 12) == "eeeee" + MASK[:7] + "..."


def test_short_secrets_only_whole() -> None:
    redact.register("abc")  # too short to register at all
    redact.register("pa$$w0")  # 6 characters: hidden whole
    assert redact.redact("abc pa$$w0 pa$$w") == f"abc {MASK} pa$$w"


def test_register_while_redacting_from_other_threads() -> None:
    keys = [f"key-{i:02d}-" + "Zq9" * 5 for i in range(40)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                redact.redact(" ".join(keys))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for k in keys:
        redact.register(k)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert redact.redact(" ".join(keys)) == " ".join([MASK] * len(keys))
