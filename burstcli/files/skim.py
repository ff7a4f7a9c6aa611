"""Resume without a Python step per finished line: OUTPUT's records and INPUT's done lines read
a block at a time, with C-level splits, regex matches and set operations.

A resume of 1M lines, 90 % done, spent ~8 s in two per-line loops: a full JSON parse of every
record of OUTPUT, then, in INPUT's scan, a JSON parse of every done line for its id and an
insert of that id into the duplicate-id table (issue 11: a line redone later must not reuse the
id of one already answered). Both are shortcuts here, each with the exact per-line path behind
it for anything they do not recognise:

- `records`: a block of OUTPUT whose every line starts the way Result.record() writes a record
  (`{"request_id":"..","line":N,"status":"completed"|"failed"`), ends with `}`, and names
  `"cost_usd":` once, counts as those records without a JSON parse: one regex pass over the
  block (used only when OUTPUT's sidecar proves it ours, and journal._intact_length parses
  its last line in full). An id with an escape, a nested cost_usd, a blank line: per line.
- `Skim`: blocks of INPUT whose lines are all done are not iterated at all. Their ids are only
  needed against the ids of the requests still to send, so after the scan they are pulled out
  of each block by one regex and intersected with those ids as a set. Any common id (or a block
  whose ids the regex cannot vouch for, read line by line instead) sends the scan back to the
  exact path, which checks every done line's id in line order as before.
May import: models (and the files room).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Iterator
from functools import reduce
from operator import add, itemgetter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from ..models import InvalidLine

if TYPE_CHECKING:
    from .tables import Done

LineId = Callable[[bytes, int], "str | None"]
ShouldStop = Callable[[], bool]


class Source(Protocol):
    """What a Skim reads and counts of reader.Source (not imported: it imports this)."""

    path: Path
    parser: Any
    total: int
    pending: int
    done: int
    invalid: int
    _levels: dict[int, int]

    def open(self) -> IO[bytes]: ...


BLOCK = 1 << 18  # bytes of INPUT or OUTPUT per block: ~6,000 request lines, ~800 records
# Requests still to send, at most, for the set of their ids (~80 bytes each) to stay small
# against the table of every id the exact path builds instead.
MAX_PENDING = 250_000

# -- OUTPUT ----------------------------------------------------------------------------------

# One whole line of a record as Result.record() writes it, from its head to its closing brace:
# its line number, status and cost, in one pass over the bytes.
_RECORD = re.compile(
    rb'\n\{"request_id":(?:"[^"\\]*"|null),"line":(\d+),"status":"(completed|failed)"'
    rb'[^\n]*"cost_usd":(null|-?[0-9][0-9.eE+-]*)[,}][^\n]*\}(?=\n)'
)
_G0, _G1, _G2 = itemgetter(0), itemgetter(1), itemgetter(2)


def read_blocks(f: IO[bytes], limit: int) -> Iterator[tuple[int, bytes]]:
    """(offset, block) of the first `limit` bytes of `f`, each block whole lines (the last
    one may lack its newline at the end of the file)."""
    pos = 0
    while pos < limit:
        block = f.read(min(BLOCK, limit - pos))
        if not block:
            return
        if not block.endswith(b"\n") and pos + len(block) < limit:
            block += f.readline(limit - pos - len(block))
        yield pos, block
        pos += len(block)


def records(block: bytes, done: Done, cost: float) -> tuple[int, int, float] | None:
    """(records, failed, cost + theirs) of a block of burstq records (whole lines, each ending
    with a newline), their lines added to `done`; None when a line is not plainly a record,
    for the per-line path to judge."""
    n = block.count(b"\n")
    if not block.endswith(b"\n") or block.count(b'"cost_usd":') != n:
        return None  # one cost_usd a line: then the one the regex finds is the record's
    found = _RECORD.findall(b"\n" + block)
    if len(found) != n:  # a match is one whole line: n of them, every line is one
        return None
    done.add_many(list(map(int, map(_G0, found))))
    failed = list(map(_G1, found)).count(b"failed")
    values = [v for v in map(_G2, found) if v != b"null"]
    # Added one by one in record order, as the per-line path adds them: the same float.
    return n, failed, reduce(add, map(float, values), cost)


# -- INPUT -----------------------------------------------------------------------------------

# The id of a request line as JSON writers put it first: {"id": "r1", ... or {"id":"r1",...
_ID = re.compile(rb'\n\{"id": ?"([^"\\]*)"')
# An escape of a printable ASCII character: no JSON writer makes one, but `"\u0069d"` is the
# key "id" to a parser, which the regex would not see.
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]")


class Skim:
    """One Source.scan of a request file with done lines, skipping blocks of done lines."""

    def __init__(self, src: Source, done: Done, line_id: LineId, stopped: type[Exception]) -> None:
        self.src = src
        self.done = done
        self.line_id = line_id  # reader.line_id, reader.ScanStopped: passed in, no cycle
        self.stopped = stopped
        self.skipped: list[tuple[int, int, int]] = []  # (offset, length, first line)
        self.skipped_lines = 0
        self.last_line = 0
        self.pending: set[bytes] = set()  # ids of the requests to send, UTF-8
        self.invalid: list[InvalidLine] = []  # handed on once the scan is known exact

    @staticmethod
    def applies(done: Done | None, lines: int) -> bool:
        """With done lines, and few enough of the file's `lines` left to send."""
        return done is not None and done.count > 0 and lines - done.count <= MAX_PENDING

    @contextlib.contextmanager
    def entries(self, should_stop: ShouldStop | None) -> Iterator[Iterator[tuple[int, bytes]]]:
        """(line, raw) of every line not in a block of done lines, as LineParser.entries."""
        with self.src.open() as f:
            yield self._lines(f, should_stop)

    def _lines(self, f: IO[bytes], should_stop: ShouldStop | None) -> Iterator[tuple[int, bytes]]:
        line = 1
        for offset, block in read_blocks(f, 1 << 62):
            if should_stop is not None and should_stop():
                raise self.stopped
            n = block.count(b"\n") + (not block.endswith(b"\n"))
            if line > 1 and self.done.count_range(line, line + n - 1) == n:
                self.skipped.append((offset, len(block), line))
                self.skipped_lines += n
            else:  # line 1 may carry a BOM: always the per-line path
                yield from enumerate(io.BytesIO(block), start=line)
            line += n
        self.last_line = line - 1

    def finish(self, prio: bytearray, should_stop: ShouldStop | None) -> bool:
        """Count the skipped lines in; False when one of their ids may be a pending request's
        (the scan must then be redone the exact way)."""
        src = self.src
        if len(prio) <= self.last_line:
            prio.extend(bytes(self.last_line + 1 - len(prio)))
        src.total += self.skipped_lines
        src.done += self.skipped_lines
        if not self.pending or not self.skipped:
            return True
        with src.open() as f:
            for offset, length, first in self.skipped:
                if should_stop is not None and should_stop():
                    raise self.stopped
                f.seek(offset)
                if self._clash(f.read(length), first):
                    return False
        return True

    def _clash(self, block: bytes, first: int) -> bool:
        n = block.count(b"\n") + (not block.endswith(b"\n"))
        if (
            b'"custom_id"' not in block
            and block.count(b'"id"') == n
            and _ASCII_ESCAPE.search(block) is None
        ):
            ids = _ID.findall(b"\n" + block)
            if len(ids) == n:  # each line's one "id" is its first key: the id it has
                return not self.pending.isdisjoint(ids)
        for line, raw in enumerate(io.BytesIO(block), start=first):
            rid = self.line_id(raw, line)
            if rid is not None and rid.encode("utf-8", "surrogatepass") in self.pending:
                return True
        return False

    def reset(self) -> None:
        """Back to before the scan, for the exact one."""
        src = self.src
        src.total = src.pending = src.done = src.invalid = 0
        src._levels = {}
