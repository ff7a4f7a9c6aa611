"""Data rows in: CSV/TSV (the stdlib csv module), JSONL of objects, Parquet (pyarrow, optional).

Rows stream: one is in memory at a time (a Parquet record batch at most), and each comes with
the file line it starts on (CSV rows may span lines), which is the key the rest of burstq uses
for a request: its record's `line`, resume, `--retry-failed`, priority passes and export.
`RowParser` makes rows flow through the same FileSource/StreamSource as request lines.
May import: config, models, errors, files (reader, template).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ..config import JobSpec, RowTask
from ..errors import InputError, UsageError
from ..models import InvalidLine, Request
from .reader import LineParser, Parser, count_lines

# A long review is not a malformed file: the stdlib's 128 KiB cell limit would say it is.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))

PARQUET_HINT = "reading and writing Parquet needs pyarrow: pip install 'burstq[parquet]'"


@dataclass(slots=True)
class RowProblem:
    message: str


Entry = tuple[int, Any]  # (row number, dict | bytes (a JSONL line) | RowProblem)


def require_pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError as exc:
        raise UsageError(PARQUET_HINT) from exc
    return pq


def _text(source: Path | Iterable[bytes]) -> IO[str]:
    if isinstance(source, Path):
        try:
            # utf-8-sig drops a BOM; newline="" lets csv see CRLF and newlines inside quotes.
            return source.open("r", encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if hasattr(source, "read"):
        stream: Any = source
        return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    return io.TextIOWrapper(io.BytesIO(b"".join(source)), encoding="utf-8-sig", newline="")


def _name(source: Path | Iterable[bytes]) -> str:
    return str(source) if isinstance(source, Path) else "stdin"


def csv_header(source: Path | Iterable[bytes], delimiter: str) -> list[str]:
    with _text(source) as f:
        return _header(csv.reader(f, delimiter=delimiter), _name(source))


def _header(reader: Any, name: str) -> list[str]:
    for fields in reader:
        if not fields:
            continue
        header = [h.strip() for h in fields]
        seen: set[str] = set()
        for i, h in enumerate(header, start=1):
            if not h:
                raise InputError(f"{name}:{reader.line_num}: header column {i} has no name")
            if h in seen:
                raise InputError(f"{name}:{reader.line_num}: header names {h!r} twice")
            seen.add(h)
        return header
    raise InputError(f"{name}: no header row (CSV and TSV input needs one)")


def csv_rows(source: Path | Iterable[bytes], delimiter: str = ",") -> Iterator[tuple[int, Entry]]:
    """(file line the row starts on, (row number, row or RowProblem)) for each data row."""
    name = _name(source)
    with _text(source) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = _header(reader, name)
            width = len(header)
            before = reader.line_num
            rownum = 0
            for fields in reader:
                start, before = before + 1, reader.line_num
                if not fields:
                    continue  # a blank line is not a row
                rownum += 1
                if len(fields) > width:
                    problem = RowProblem(
                        f"row {rownum}: {len(fields)} fields, but the header has {width}"
                    )
                    yield start, (rownum, problem)
                    continue
                # A short row lacks its last columns: a template using them says which.
                yield start, (rownum, dict(zip(header, fields, strict=False)))
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{name}:{reader.line_num + 1}: not UTF-8 text ({exc.reason})"
            ) from exc
        except csv.Error as exc:
            raise InputError(f"{name}:{reader.line_num}: {exc}") from exc


def jsonl_rows(source: Path | Iterable[bytes]) -> Iterator[tuple[int, Entry]]:
    rownum = 0
    for line, raw in LineParser("").entries(source):
        if not raw.strip():
            continue
        rownum += 1
        yield line, (rownum, raw)


def parquet_rows(path: Path, batch_size: int = 4096) -> Iterator[tuple[int, Entry]]:
    pq = require_pyarrow()
    try:
        pf = pq.ParquetFile(path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    rownum = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            rownum += 1
            yield rownum, (rownum, row)


def parquet_columns(path: Path) -> list[str]:
    pq = require_pyarrow()
    return list(pq.ParquetFile(path).schema_arrow.names)


def row_entries(fmt: str, source: Path | Iterable[bytes]) -> Iterator[tuple[int, Entry]]:
    if fmt == "csv":
        return csv_rows(source, ",")
    if fmt == "tsv":
        return csv_rows(source, "\t")
    if fmt == "jsonl":
        return jsonl_rows(source)
    if not isinstance(source, Path):
        raise UsageError("Parquet cannot be read from stdin: give the file")
    return parquet_rows(source)


def decode_row(payload: Any) -> dict[str, Any] | RowProblem:
    """A row's columns from what `row_entries` gave (a JSONL line is parsed only here)."""
    if isinstance(payload, bytes | bytearray):
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return RowProblem(f"invalid JSON: {exc}")
        if not isinstance(obj, dict):
            return RowProblem(f"expected a JSON object, got {type(obj).__name__}")
        return obj
    return payload  # type: ignore[no-any-return]


class RowParser:
    """Data rows as entries of a FileSource/StreamSource: each rendered into one request."""

    def __init__(self, task: RowTask, default_model: str) -> None:
        self.task = task
        self.fmt = task.input_format
        # Here, not at the top: a run of request lines imports this module for parser_for and
        # never needs templates, schemas or pydantic's errors (start-up, issue 19).
        from .template import Renderer

        self.renderer = Renderer(task, default_model)
        if self.fmt == "parquet":
            require_pyarrow()

    def entries(self, source: Path | Iterable[bytes]) -> Iterator[tuple[int, Any]]:
        return row_entries(self.fmt, source)

    def parse(self, raw: Any, line: int, *, trusted: bool = False) -> Request | InvalidLine | None:
        rownum, payload = raw
        row = decode_row(payload)
        if isinstance(row, RowProblem):
            msg = row.message if row.message.startswith("row ") else f"row {rownum}: {row.message}"
            return InvalidLine(line, None, msg)
        return self.renderer.render(row, line, rownum)

    def size_hint(self, path: Path) -> int:
        if self.fmt == "parquet":
            return int(require_pyarrow().ParquetFile(path).metadata.num_rows)
        return count_lines(path)


def parser_for(job: JobSpec) -> Parser:
    """How INPUT becomes requests for this job: request lines, or rows through the task."""
    if job.task is None:
        return LineParser(job.model)
    return RowParser(job.task, job.model)
