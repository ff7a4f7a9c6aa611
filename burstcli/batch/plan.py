"""Planning a batch run: pack pending requests into shards, write their files from INPUT."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import UsageError
from ..files.reader import Parser
from ..models import Request
from .lines import batch_line
from .state import BatchState, Pending, Shard

MAX_FILE_REQUESTS = 50_000
# OpenAI documents 200 MB; counted in decimal so a file is under the limit however they count.
MAX_FILE_BYTES = 200_000_000


@dataclass(slots=True)
class BatchSettings:
    batch_size: int
    completion_window: str
    output_format: str
    max_rounds: int
    poll_first: float
    poll_max: float
    backoff_base: float = 0.5
    batch_max_tokens: int | None = None


def pack(st: BatchState, s: BatchSettings, items: Iterable[Pending]) -> list[Shard]:
    """Group pending requests into new shards of the state (one endpoint, model and round
    each, within the file limits)."""
    current: dict[tuple[str, str, int], Shard] = {}
    made: list[Shard] = []
    for p in items:
        key = (p.endpoint, p.model, p.round)
        limit = min(s.batch_size, st.group_limits.get(p.model, MAX_FILE_REQUESTS))
        shard = current.get(key)
        if (
            shard is None
            or len(shard.lines) >= limit
            or shard.bytes + p.bytes > MAX_FILE_BYTES
            or (s.batch_max_tokens and shard.tokens + p.tokens > s.batch_max_tokens)
        ):
            shard = Shard(
                id=f"s{st.next_shard:05d}", endpoint=p.endpoint, model=p.model, round=p.round
            )
            st.next_shard += 1
            current[key] = shard
            made.append(shard)
        shard.lines[p.id] = p.line
        shard.bytes += p.bytes
        shard.tokens += p.tokens
        shard.metadata = shard.metadata or p.metadata
        if p.list_input:
            shard.list_inputs.append(p.id)
    for shard in made:
        # File order, so line k of the batch file is the k-th entry (validation errors
        # name file lines).
        shard.lines = dict(sorted(shard.lines.items(), key=lambda kv: kv[1]))
        shard.requests = len(shard.lines)
    st.shards.extend(made)
    return made


def write_shard_files(
    input: Path, parser: Parser, shards: list[Shard], path_of: Callable[[Shard], Path]
) -> None:
    """Write the batch files of `shards` in one pass over INPUT (runs in a thread)."""
    where: dict[int, tuple[Shard, str]] = {}
    for shard in shards:
        for cid, line in shard.lines.items():
            where[line] = (shard, cid)
    files = {s.id: path_of(s).open("wb") for s in shards}
    try:
        # The same parser as the scan (request lines, or rows through the template).
        for line, raw in parser.entries(input):
            hit = where.pop(line, None)
            if hit is None:
                continue
            shard, cid = hit
            req = parser.parse(raw, line)
            if not isinstance(req, Request) or req.id != cid:
                raise UsageError(
                    f"{input}:{line} no longer holds request {cid!r}"
                    "; the input changed under a running job"
                )
            files[shard.id].write(orjson.dumps(batch_line(req)) + b"\n")
    finally:
        for fh in files.values():
            fh.close()
    if where:
        raise UsageError(f"{input} is shorter than when its batches were planned")


def read_metadata(input: Path, parser: Parser, lines: set[int]) -> dict[int, Any]:
    """The metadata of the given INPUT lines (records carry it; shard state does not)."""
    found: dict[int, Any] = {}
    for line, raw in parser.entries(input):
        if line in lines:
            req = parser.parse(raw, line)
            if isinstance(req, Request) and req.metadata is not None:
                found[line] = req.metadata
    return found
