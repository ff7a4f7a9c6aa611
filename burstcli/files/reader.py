"""Request files: both line shapes, line-numbered validation, and dispatch in priority order.

A file is read in passes so memory stays flat whatever its size: one scan validates every line
and keeps one byte per line (its priority, or 0 for "nothing to send"); then one pass per
priority level present, highest first, re-reads and sends the lines of that level. Standard
input cannot be re-read, so there priority orders what is buffered (`stream.StreamSource`).

With a `Shard`, only the lines it owns are sent or recorded; every line is still validated, so
a duplicate id is caught across shards exactly as one unsharded run would catch it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from ..config import Shard
from ..errors import InputError
from ..models import (
    BATCH_URLS,
    InvalidLine,
    Request,
    response_format_problem,
)
from .fingerprint import line_digest
from .tables import Done as Done  # re-exported: callers import these from here
from .tables import IdSet as IdSet
from .tables import Pairing as Pairing
from .tables import count_lines as count_lines

OnInvalid = Callable[[InvalidLine], None]
ShouldStop = Callable[[], bool]

BOM = b"\xef\xbb\xbf"
# Deeper than this, burstq could not write the line's record (orjson stops at 255 levels, and
# a record nests the line's metadata and body a few levels down): refused at validation.
MAX_DEPTH = 128
STOP_EVERY = 4096  # lines between looks at a stop request or a changed INPUT
_DERIVED = re.compile(r"line-(\d+)")


class ScanStopped(Exception):
    """Ctrl-C while a large INPUT was being scanned or hashed (nothing was sent)."""


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (the point is very deep input)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if d > deepest:
            deepest = d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node if isinstance(v, dict | list))
    return deepest


def _refusal(obj: dict[str, Any], raw: bytes, line: int) -> str | None:
    """What burstq cannot do with a line that is otherwise valid, or None."""
    # Cheap bound first: a line cannot nest deeper than it has brackets.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} levels deep (its record could not be written)"
    body = obj.get("body") if "custom_id" in obj else obj.get("params")
    if isinstance(body, dict) and body.get("stream"):
        where = "body.stream" if "custom_id" in obj else "params.stream"
        return f"{where}: not supported (burstq reads whole answers); remove it"
    rid = obj.get("custom_id") if "custom_id" in obj else obj.get("id")
    if isinstance(rid, str) and (m := _DERIVED.fullmatch(rid)) and int(m.group(1)) != line:
        # line-N is the id a line without one gets: an explicit one elsewhere would collide.
        return (
            f"id: {rid!r} is the id burstq gives line {m.group(1)} when it has none; choose another"
        )
    return None


class Parser(Protocol):
    """How a file becomes requests: entries keyed by the file line they start on, then each
    entry parsed (request lines here; data rows rendered through a template in rows.py)."""

    def entries(self, source: Path | Iterable[bytes]) -> Iterator[tuple[int, Any]]: ...

    def parse(
        self, raw: Any, line: int, *, trusted: bool = False
    ) -> Request | InvalidLine | None: ...

    def size_hint(self, path: Path) -> int: ...


class LineParser:
    """Request lines (JSONL, native or Batch API shape): one entry per file line."""

    def __init__(self, default_model: str) -> None:
        self.default_model = default_model

    def entries(self, source: Path | Iterable[bytes]) -> Iterator[tuple[int, Any]]:
        if isinstance(source, Path):
            with open_input(source) as f:
                yield from enumerate(f, start=1)
        else:
            yield from enumerate(source, start=1)

    def parse(self, raw: Any, line: int, *, trusted: bool = False) -> Request | InvalidLine | None:
        return parse_line(raw, line, self.default_model, trusted=trusted)

    def size_hint(self, path: Path) -> int:
        return count_lines(path)


def open_input(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _prompt_size(body: dict[str, Any]) -> tuple[int, int, int]:
    """Characters, UTF-8 bytes and message count of what is sent as the prompt."""
    if "messages" in body:
        texts = [_content_text(m.get("content")) for m in body["messages"]]
        n = len(texts)
    else:
        inp = body.get("input")
        texts = [inp] if isinstance(inp, str) else [str(t) for t in (inp or [])]
        n = len(texts)
    chars = sum(len(t) for t in texts)
    nbytes = sum(len(t.encode()) for t in texts)
    return chars, nbytes, n


def parse_line(
    raw: bytes, line: int, default_model: str, *, trusted: bool = False
) -> Request | InvalidLine | None:
    """Parse one line; None for a blank line.

    `trusted` skips validation for a line the scan already accepted (the models are strict,
    so the raw values are exactly what validation passed): it halves the per-line cost.
    """
    if line == 1 and raw.startswith(BOM):  # files saved by Windows editors
        raw = raw[3:]
    if not raw.strip():
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # The column within the file's line (the decoder's "line 1" is not the file's).
        return InvalidLine(line, None, f"invalid JSON at column {exc.pos + 1}: {exc.msg}")
    if not isinstance(obj, dict):
        return InvalidLine(line, None, f"expected a JSON object, got {type(obj).__name__}")
    if trusted:
        return _trusted(obj, line, default_model)
    if (why := _refusal(obj, raw, line)) is not None:
        rid = obj.get("custom_id") if "custom_id" in obj else obj.get("id")
        known = str(rid) if isinstance(rid, str | int) and rid != "" else None
        # A reserved id stays off the record too: the record is line-N of its own line.
        return InvalidLine(line, None if why.startswith("id: ") else known, why)
    if "custom_id" in obj:
        return _parse_batch(obj, line, default_model)
    return _parse_native(obj, line, default_model)


def line_id(raw: bytes, line: int) -> str | None:
    """The request id a line has (or is given), read cheaply; None for a blank line."""
    if line == 1 and raw.startswith(BOM):
        raw = raw[3:]
    if not raw.strip():
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"line-{line}"
    rid = (
        (obj.get("custom_id") if "custom_id" in obj else obj.get("id"))
        if isinstance(obj, dict)
        else None
    )
    return str(rid) if isinstance(rid, str | int) and rid != "" else f"line-{line}"


def _no_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _trusted(obj: dict[str, Any], line: int, default_model: str) -> Request:
    """The Request `_parse_native` / `_parse_batch` build, from a line known to be valid."""
    if "custom_id" in obj:
        body = _no_none(obj["body"])
        if "messages" in body:
            body["messages"] = [_no_none(m) for m in body["messages"]]
        model = body.pop("model", None) or default_model
        return make_request(line, obj["custom_id"], BATCH_URLS[obj["url"]], model, body, 5, None)
    rid = obj.get("id")
    endpoint = obj.get("endpoint") or "chat"
    params = _no_none(obj.get("params") or {})
    if endpoint == "embeddings":
        body = {"input": obj["input"], **params}
    elif obj.get("messages") is not None:
        body = {"messages": [_no_none(m) for m in obj["messages"]], **params}
    else:
        body = {"messages": [{"role": "user", "content": obj["input"]}], **params}
    return make_request(
        line,
        str(rid) if rid is not None and rid != "" else f"line-{line}",
        endpoint,
        obj.get("model") or default_model,
        body,
        obj.get("priority") or 5,
        obj.get("metadata"),
    )


_SIMPLE_KEYS = frozenset({"id", "input", "model", "priority", "metadata"})


def _simple_native(obj: dict[str, Any], line: int, default_model: str) -> Request | None:
    """The common line, a text prompt with at most an id, model, priority and metadata, when
    it is plainly what NativeLine accepts (strict types, so exactly the same values): the
    Request without pydantic. None: anything else, which full validation then judges."""
    if not obj.keys() <= _SIMPLE_KEYS:
        return None
    text = obj.get("input")
    if type(text) is not str or not text.strip():
        return None
    rid = obj.get("id")
    if rid is not None and type(rid) is not str and type(rid) is not int:
        return None
    model = obj.get("model")
    if model is not None and (type(model) is not str or not model):
        return None
    priority = obj.get("priority", 5)
    if type(priority) is not int or not 1 <= priority <= 10:
        return None
    metadata = obj.get("metadata")
    if metadata is not None and type(metadata) is not dict:
        return None
    return make_request(
        line,
        str(rid) if rid is not None and rid != "" else f"line-{line}",
        "chat",
        model or default_model,
        {"messages": [{"role": "user", "content": text}]},
        priority,
        metadata,
    )


def _parse_native(obj: dict[str, Any], line: int, default_model: str) -> Request | InvalidLine:
    if (simple := _simple_native(obj, line, default_model)) is not None:
        return simple
    from .shapes import NativeLine, validated  # off the fast path only: built on first use

    raw_id = obj.get("id")
    rid = str(raw_id) if isinstance(raw_id, str | int) and raw_id != "" else None
    nl = validated(NativeLine, obj)
    if isinstance(nl, str):
        return InvalidLine(line, rid, nl)
    rid = str(nl.id) if nl.id is not None and nl.id != "" else f"line-{line}"
    params = nl.params.model_dump(exclude_none=True) if nl.params else {}
    if problem := response_format_problem(params, "params"):
        return InvalidLine(line, rid, problem)
    body: dict[str, Any]
    if nl.endpoint == "embeddings":
        if nl.messages is not None:
            return InvalidLine(line, rid, "messages: not allowed for endpoint 'embeddings'")
        if nl.input is None or nl.input == [] or nl.input == "":
            return InvalidLine(line, rid, "input: missing (embeddings need 'input')")
        body = {"input": nl.input, **params}
    else:
        if nl.messages is not None and nl.input is not None:
            return InvalidLine(line, rid, "give either 'input' or 'messages', not both")
        if nl.messages is not None:
            messages = [m.model_dump(exclude_none=True) for m in nl.messages]
        elif isinstance(nl.input, str) and nl.input.strip():
            messages = [{"role": "user", "content": nl.input}]
        elif nl.input is None:
            return InvalidLine(line, rid, "missing prompt: give 'input' (text) or 'messages'")
        else:
            return InvalidLine(line, rid, "input: must be a non-empty string for chat")
        body = {"messages": messages, **params}
        if (problem := _format_problem(body)) is not None:
            return InvalidLine(line, rid, problem)
    return make_request(
        line, rid, nl.endpoint, nl.model or default_model, body, nl.priority, nl.metadata
    )


def _format_problem(body: dict[str, Any]) -> str | None:
    if "response_format" not in body:
        return None
    from .schema import response_format_problem

    return response_format_problem(body["response_format"])


def _parse_batch(obj: dict[str, Any], line: int, default_model: str) -> Request | InvalidLine:
    from .shapes import BatchLine, validated

    raw_id = obj.get("custom_id")
    rid = raw_id if isinstance(raw_id, str) and raw_id else None
    bl = validated(BatchLine, obj)
    if isinstance(bl, str):
        return InvalidLine(line, rid, bl)
    endpoint = BATCH_URLS.get(bl.url)
    if endpoint is None:
        known = " or ".join(BATCH_URLS)
        return InvalidLine(line, rid, f"url: unknown endpoint {bl.url!r} (expected {known})")
    body = bl.body.model_dump(exclude_none=True)
    if problem := response_format_problem(body, "body"):
        return InvalidLine(line, rid, problem)
    model = body.pop("model", None) or default_model
    if endpoint == "chat" and not body.get("messages"):
        return InvalidLine(line, rid, "body.messages: missing (chat completions need messages)")
    if endpoint == "embeddings" and not body.get("input"):
        return InvalidLine(line, rid, "body.input: missing (embeddings need input)")
    if (problem := _format_problem(body)) is not None:
        return InvalidLine(line, rid, problem.replace("params.", "body.", 1))
    return make_request(line, bl.custom_id, endpoint, model, body, 5, None)


def make_request(
    line: int,
    rid: str,
    endpoint: Any,
    model: str,
    body: dict[str, Any],
    priority: int,
    metadata: dict[str, Any] | None,
) -> Request:
    chars, nbytes, nmsg = _prompt_size(body)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    return Request(
        line=line,
        id=rid,
        endpoint=endpoint,
        model=model,
        body=body,
        priority=priority,
        metadata=metadata,
        prompt_chars=chars,
        prompt_bytes=nbytes,
        n_messages=nmsg,
        max_tokens=max_tokens,
    )


def _stamp(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


class FileSource:
    """A request file (or data file) on disk: `scan()` once, then `requests()` in priority
    order.

    Every pass reads the one file descriptor opened first, so an atomic replace of INPUT
    (`mv new INPUT`) does not reach this run, and an in-place change (truncated, rewritten,
    appended: its size or mtime moves) stops it with InputError rather than sending a mix.
    """

    def __init__(
        self,
        path: Path,
        default_model: str,
        parser: Parser | None = None,
        *,
        shard: Shard | None = None,
        salt: bytes = b"",
    ) -> None:
        self.path = path
        self.default_model = default_model
        self.parser: Parser = parser or LineParser(default_model)
        self.shard = shard
        # fingerprint.salt(shaping): request lines sent carry their raw line's digest.
        self.salt = salt
        self.total = 0  # requests in the file (valid or not)
        self.pending = 0  # valid requests not yet done
        self.done = 0  # requests that already have a record
        self.invalid = 0
        self._prio = bytearray()
        self._levels: dict[int, int] = {}
        self._fd: int | None = None
        self._stamp = (0, 0)

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def open(self) -> IO[bytes]:
        """A reader at the start of the file this source opened first (opening it once)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise InputError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
            self._stamp = _stamp(os.fstat(self._fd))
        f = os.fdopen(os.dup(self._fd), "rb")
        f.seek(0)
        return f

    @contextlib.contextmanager
    def _entries(self) -> Iterator[Iterator[tuple[int, Any]]]:
        if getattr(self.parser, "fmt", None) == "parquet":  # read by pyarrow, from the path
            yield self.parser.entries(self.path)
            return
        with self.open() as f:
            yield self.parser.entries(f)

    def entries(self) -> contextlib.AbstractContextManager[Iterator[tuple[int, Any]]]:
        """(line, raw entry) pairs of the opened file: one more pass (files/rewrite.py)."""
        return self._entries()

    def check_unchanged(self) -> None:
        """InputError if INPUT was changed in place since it was opened."""
        if self._fd is None:
            return
        now = _stamp(os.fstat(self._fd))
        if now != self._stamp:
            what = (
                f"its size went from {self._stamp[0]} to {now[0]} bytes"
                if now[0] != self._stamp[0]
                else "it was modified"
            )
            raise InputError(
                f"{self.path} changed while this run was reading it ({what}); the records "
                "written so far are kept. Put the original back and rerun the same command "
                "to resume; to change a file under a run, write a new one and rename it over "
                "INPUT (the running job keeps reading the old one)."
            )

    def digest(self, should_stop: ShouldStop | None = None) -> str:
        """SHA-256 of the opened file (the resume fingerprint)."""
        h = hashlib.sha256()
        with self.open() as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                if should_stop is not None and should_stop():
                    raise ScanStopped
        self.check_unchanged()
        return h.hexdigest()

    def scan(
        self,
        done: Done | None,
        on_invalid: OnInvalid,
        should_stop: ShouldStop | None = None,
        pairing: Pairing | None = None,
        *,
        skim: bool = True,
    ) -> None:
        """Validate every entry not yet done; invalid ones go to `on_invalid` (once each).

        `pairing` (an incremental rerun) says which entries already have a record, before or
        after parsing them: those are done, not sent. `skim`: blocks of done lines may be
        skipped whole (files/skim.py), with this exact scan as its fallback.
        """
        from .skim import Skim

        # Sized for the entries still to read: a resume of a mostly done file stays small.
        hint = self.parser.size_hint(self.path)
        ids = IdSet(hint - (done.count if done is not None else 0))
        prio = bytearray(1)  # indexed by line; line numbers start at 1
        parse = self.parser.parse
        fast = skim and pairing is None and type(self.parser) is LineParser
        fast = fast and Skim.applies(done, hint)  # request lines, not data rows
        sk = Skim(self, done, line_id, ScanStopped) if fast and done is not None else None
        report = on_invalid if sk is None else sk.invalid.append  # handed on once exact
        with self._entries() if sk is None else sk.entries(should_stop) as entries:
            for n, (line, raw) in enumerate(entries):
                if should_stop is not None and n % STOP_EVERY == 0 and should_stop():
                    raise ScanStopped
                if line > len(prio):  # a data row spanning several lines, or a blank skipped
                    prio.extend(bytes(line - len(prio)))
                if done is not None and line in done:
                    prio.append(0)
                    self.total += 1
                    self.done += 1
                    # Its id still counts: a line redone later (--retry-failed) must not
                    # reuse the id of one that is already answered.
                    if isinstance(raw, bytes) and (rid := line_id(raw, line)) is not None:
                        ids.add(rid)
                    continue
                if (
                    pairing is not None
                    and isinstance(raw, bytes)
                    and (self.shard is None or self.shard.owns(line))
                    and pairing.raw(line, raw, ids.add)
                ):
                    prio.append(0)
                    self.total += 1
                    self.done += 1
                    continue
                item = parse(raw, line)
                if item is None:
                    prio.append(0)
                    continue
                if self.shard is not None and not self.shard.owns(line):
                    # Another shard's line: only its id matters here (duplicates).
                    if isinstance(item, Request):
                        ids.add(item.id)
                    prio.append(0)
                    continue
                self.total += 1
                if isinstance(item, Request) and not ids.add(item.id):
                    item = InvalidLine(line, item.id, f"id: duplicate id {item.id!r}")
                if isinstance(item, InvalidLine):
                    prio.append(0)
                    self.invalid += 1
                    report(item)
                    continue
                if pairing is not None and pairing.request(item):
                    prio.append(0)
                    self.done += 1
                    continue
                prio.append(item.priority)
                self._levels[item.priority] = self._levels.get(item.priority, 0) + 1
                self.pending += 1
                if sk is not None:
                    sk.pending.add(item.id.encode("utf-8", "surrogatepass"))
        if sk is not None:
            if not sk.finish(prio, should_stop):  # a done line's id may be a pending one's
                sk.reset()
                return self.scan(done, on_invalid, should_stop, skim=False)
            for item in sk.invalid:
                on_invalid(item)
        self._prio = prio
        self.check_unchanged()

    def requests(self) -> Iterator[Request]:
        """Valid, not-done requests: priority 10 first, file order within a level."""
        prio = self._prio
        parse = self.parser.parse
        for level in sorted(self._levels, reverse=True):
            self.check_unchanged()
            with self._entries() as entries:
                for n, (line, raw) in enumerate(entries):
                    if n % STOP_EVERY == 0:
                        self.check_unchanged()
                    if line < len(prio) and prio[line] == level:
                        item = parse(raw, line, trusted=True)
                        if isinstance(item, Request):
                            if self.salt and isinstance(raw, bytes):
                                item.line_digest = f"{line_digest(self.salt, raw):016x}"
                            yield item
            # A truncated file ends a pass early: that must not pass for the end of the job.
            self.check_unchanged()


def validate_file(
    path: Path, default_model: str = "gpt-4o-mini", parser: Parser | None = None
) -> tuple[int, list[InvalidLine]]:
    """Every problem in a file, without calling anything: (requests, problems)."""
    problems: list[InvalidLine] = []
    with FileSource(path, default_model, parser) as src:
        src.scan(None, problems.append)
    return src.total, problems


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return h.hexdigest()
