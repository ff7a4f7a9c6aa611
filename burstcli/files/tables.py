"""Compact in-memory tables of the scan: ids seen, lines done, and what an incremental rerun
says is done (files/rewrite.py). Arrays and bitmaps, no Python object per line.
May import: models.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..models import Request


class Pairing(Protocol):
    """How an incremental rerun (files/rewrite.py) tells the scan which lines are done."""

    def raw(self, line: int, raw: bytes, add_id: Callable[[str], bool]) -> bool:
        """Whether a request line is kept on its bytes alone (no parse). It registers the
        line's id with `add_id` first and keeps nothing when that says it is a duplicate."""
        ...

    def request(self, req: Request) -> bool:
        """Whether a valid request is kept (paired by fingerprint)."""
        ...


class IdSet:
    """Set of request ids in about 11 bytes an id: open addressing over 64-bit digests.

    A million ids as Python strings in a set cost ~100 MB; this keeps memory flat. Digests are
    64-bit string hashes, so a false "duplicate" needs a 64-bit collision. The table is sized
    for a load of at most 0.75 (not a power of two: a 1M-id table is 10.7 MB, not 16.8 MB).
    """

    LOAD = 0.75

    def __init__(self, capacity: int = 1024) -> None:
        self._alloc(max(1024, int(capacity / self.LOAD) + 1))
        self._count = 0

    def _alloc(self, size: int) -> None:
        self._slots = array("Q", bytes(8 * size))
        self._size = size
        self._limit = int(size * self.LOAD)

    def __len__(self) -> int:
        return self._count

    def add(self, rid: str) -> bool:
        """Add an id; False when it was already there."""
        # Python's own 64-bit string hash (SipHash, keyed per process): the table lives only
        # in this process, and it is several times cheaper than a hashlib call.
        h = (hash(rid) & 0xFFFF_FFFF_FFFF_FFFF) or 1
        if self._insert(h):
            self._count += 1
            if self._count > self._limit:
                old = self._slots
                self._alloc(self._size * 2)
                for x in old:
                    if x:
                        self._insert(x)
            return True
        return False

    def _insert(self, h: int) -> bool:
        slots, size = self._slots, self._size
        i = h % size
        while True:
            cur = slots[i]
            if cur == 0:
                slots[i] = h
                return True
            if cur == h:
                return False
            i += 1
            if i == size:
                i = 0


class Done:
    """Which lines already have a record in OUTPUT: a bitmap, one bit per line."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0

    def add(self, line: int) -> None:
        byte = line >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits) + 4096))
        bit = 1 << (line & 7)
        if not self._bits[byte] & bit:
            self._bits[byte] |= bit
            self.count += 1

    def __contains__(self, line: int) -> bool:
        byte = line >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (line & 7)))

    def add_many(self, lines: list[int]) -> None:
        """`add` of each line (none negative), counted once at the end: the resume skim's
        per-record loop is then two operations (files/skim.py)."""
        if not lines:
            return
        bits = self._bits
        top = (max(lines) >> 3) + 1
        if top > len(bits):
            bits.extend(bytes(top - len(bits) + 4096))
        for line in lines:
            bits[line >> 3] |= 1 << (line & 7)
        self.count = int.from_bytes(bits, "little").bit_count()

    def count_range(self, first: int, last: int) -> int:
        """How many of the lines first..last (inclusive) are done."""
        if last < first:
            return 0
        lo, hi = first >> 3, (last >> 3) + 1
        word = int.from_bytes(self._bits[lo:hi], "little") >> (first & 7)
        return (word & ((1 << (last - first + 1)) - 1)).bit_count()


def count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n + 1
