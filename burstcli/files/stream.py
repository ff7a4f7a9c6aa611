"""Requests from standard input, which cannot be re-read: in stream order, priority ordering
only what is buffered (the engine's `prioritized()`).
May import: config, models, errors (and the files room).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..config import Shard
from ..errors import ResumeMismatch
from ..models import InvalidLine, Request
from .reader import Done, IdSet, LineParser, Parser, line_id


class StreamSource:
    """Requests from a stream (stdin), in stream order: it cannot be read twice, so priority
    orders only what is buffered (the engine's `prioritized()` does that)."""

    def __init__(
        self,
        stream: Iterable[bytes],
        default_model: str,
        parser: Parser | None = None,
        *,
        shard: Shard | None = None,
    ) -> None:
        self.stream = stream
        self.default_model = default_model
        self.parser: Parser = parser or LineParser(default_model)
        self.shard = shard
        self.total = 0
        self.pending = 0
        self.done = 0
        self.invalid = 0

    def items(
        self, done: Done | None, done_ids: dict[int, str] | None = None
    ) -> Iterator[Request | InvalidLine]:
        """Each entry as it is read: a Request, or an InvalidLine to record.

        `done_ids` (line -> request_id of OUTPUT's records) proves a resumed stream is the same
        input, line by line, since a stream cannot be hashed before it is read.
        """
        ids = IdSet()
        parse = self.parser.parse
        for line, raw in self.parser.entries(self.stream):
            if done is not None and line in done:
                if done_ids is not None and line in done_ids:
                    item = parse(raw, line)
                    rid = item.id if item is not None else None
                    if rid is not None and rid != done_ids[line]:
                        raise ResumeMismatch(
                            f"stdin line {line} is request {rid!r}, but OUTPUT's record for "
                            f"line {line} is {done_ids[line]!r}: this is not the input OUTPUT "
                            "was written from. Use --restart, or another -o OUTPUT."
                        )
                self.total += 1
                self.done += 1
                if isinstance(raw, bytes) and (rid := line_id(raw, line)) is not None:
                    ids.add(rid)
                continue
            item = parse(raw, line)
            if item is None:
                continue
            if self.shard is not None and not self.shard.owns(line):
                if isinstance(item, Request):
                    ids.add(item.id)
                continue
            self.total += 1
            if isinstance(item, Request) and not ids.add(item.id):
                item = InvalidLine(line, item.id, f"id: duplicate id {item.id!r}")
            if isinstance(item, InvalidLine):
                self.invalid += 1
            else:
                self.pending += 1
            yield item
