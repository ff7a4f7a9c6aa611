"""`burstq export`: labels back onto the input rows, in input order, memory flat in the rows.

Records come in completion order, so one pass over OUTPUT(s) builds an index, line -> (file,
byte offset) in two flat arrays (10 bytes a line); a second pass walks INPUT in order and
seeks each row's record. Several OUTPUTs are shards of one input: the index spans them all,
and a line recorded twice is refused rather than guessed at.
May import: config, models, errors, files (reader, rows, journal, template).
"""

from __future__ import annotations

import csv
import os
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import InputError, UsageError
from .journal import read_sidecar, sidecar_path
from .reader import file_digest
from .rows import csv_header, decode_row, parquet_columns, require_pyarrow, row_entries

FORMATS = ("csv", "tsv", "jsonl", "parquet")
PREFIX = "burstq_"
MISSING = "no record for this row yet (the run has not finished: rerun it to resume)"
_WITH_TYPES = {"latency_ms": "float", "cost_usd": "float", "attempts": "int", "tokens_used": "int"}
_SCHEMA_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}


@dataclass(slots=True)
class ExportSummary:
    rows: int = 0
    completed: int = 0
    failed: int = 0
    missing: int = 0
    columns: list[str] = field(default_factory=list)


def out_format(dest: str, given: str | None) -> str:
    if given:
        if given.lower() not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {given!r}")
        return given.lower()
    if dest == "-":
        return "csv"
    ext = Path(dest).suffix.lower()
    found = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(ext)
    if found is None and ext in (".parquet", ".pq"):
        found = "parquet"
    if found is None:
        raise UsageError(f"cannot tell the format of {dest} from its name: give --format")
    return found


class _Index:
    """line -> (which OUTPUT, byte offset of its record)."""

    def __init__(self, outputs: list[Path], *, need_keys: bool = True) -> None:
        self.outputs = outputs
        self.need_keys = need_keys  # collect parsed keys (no schema names the label columns)
        self.offsets = array("q")
        self.files = array("H")
        self.parsed_keys: dict[str, None] = {}  # first-seen order
        self.max_line = 0
        for i, path in enumerate(outputs, start=1):
            self._add(i, path)

    def _add(self, i: int, path: Path) -> None:
        try:
            f = path.open("rb")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        with f:
            pos = 0
            for n, raw in enumerate(f, start=1):
                start, pos = pos, pos + len(raw)
                if not raw.endswith(b"\n"):
                    break  # a torn last line (a run still going, or killed): not a record
                if not raw.strip():
                    continue
                rec: Any = None
                line = _fast_line(raw) if not self.need_keys else None
                if line is None:
                    try:
                        rec = orjson.loads(raw)
                        line = int(rec["line"])
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                        raise InputError(f"{path}:{n}: not a burstq record ({exc})") from exc
                if line < 1:
                    raise InputError(f"{path}:{n}: record with line {line}")
                if line >= len(self.offsets):
                    grow = max(line + 1, len(self.offsets) * 2) - len(self.offsets)
                    self.offsets.frombytes(bytes(8 * grow))
                    self.files.frombytes(bytes(2 * grow))
                if self.files[line]:
                    other = self.outputs[self.files[line] - 1]
                    raise InputError(
                        f"input line {line} has a record in {other} and in {path}:{n}: not "
                        "shards of one run (use `burstq merge` first, or export them apart)"
                    )
                self.files[line] = i
                self.offsets[line] = start
                self.max_line = max(self.max_line, line)
                parsed = rec.get("parsed") if isinstance(rec, dict) else None
                if isinstance(parsed, dict):
                    for k in parsed:
                        self.parsed_keys.setdefault(str(k), None)

    def __contains__(self, line: int) -> bool:
        return line < len(self.files) and self.files[line] != 0

    def lines(self) -> Iterator[int]:
        files = self.files
        return (n for n in range(1, self.max_line + 1) if files[n])


_LINE_KEY = b'","line":'


def _fast_line(raw: bytes) -> int | None:
    """The `line` of a record as burstq writes it (`{"request_id":"...","line":N,`) without
    parsing the rest; None for anything else (then it is parsed in full). The id is a JSON
    string, so its bytes hold no unescaped quote: the first match is the top-level key."""
    if not raw.startswith(b'{"request_id":"'):
        return None
    i = raw.find(_LINE_KEY)
    if i < 0:
        return None
    j = raw.find(b",", i + len(_LINE_KEY))
    digits = raw[i + len(_LINE_KEY) : j]
    return int(digits) if digits.isdigit() else None


class _Records:
    """Reads an indexed record back by seeking (the files stay open for the whole walk)."""

    def __init__(self, index: _Index) -> None:
        self.index = index
        self._files = [p.open("rb") for p in index.outputs]

    def get(self, line: int) -> dict[str, Any] | None:
        if line not in self.index:
            return None
        f = self._files[self.index.files[line] - 1]
        f.seek(self.index.offsets[line])
        rec = orjson.loads(f.readline())
        return rec if isinstance(rec, dict) else None

    def close(self) -> None:
        for f in self._files:
            f.close()


def _find_input(outputs: list[Path], given: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """INPUT and the run's fingerprint (from the sidecars, which must agree)."""
    sides = [(p, read_sidecar(sidecar_path(p))) for p in outputs]
    known = [(p, s) for p, s in sides if s is not None]
    digests = {s.get("input_sha256") for _, s in known if s.get("input_sha256")}
    if len(digests) > 1:
        raise UsageError("these OUTPUTs were written from different inputs: export them apart")
    shapes = {orjson.dumps(s.get("shaping"), option=orjson.OPT_SORT_KEYS) for _, s in known}
    if len(shapes) > 1:
        raise UsageError("these OUTPUTs were written with different options: export them apart")
    fingerprint = known[0][1] if known else {}
    path = given
    if path is None and fingerprint.get("input") not in (None, "-"):
        candidate = Path(str(fingerprint["input"]))
        beside = known[0][0].parent / candidate
        path = candidate if candidate.exists() or candidate.is_absolute() else beside
    if path is not None:
        if not path.is_file():
            raise UsageError(f"cannot read INPUT {path}: no such file (give it with --input)")
        want = fingerprint.get("input_sha256")
        if want and file_digest(path) != want:
            raise UsageError(
                f"{path} changed since the run wrote {known[0][0]}: its rows no longer match "
                "the records' line numbers"
            )
    return path, fingerprint


def export(
    outputs: list[Path],
    dest: str,
    *,
    input: Path | None = None,
    with_fields: list[str] | None = None,
    fmt: str | None = None,
) -> ExportSummary:
    fmt = out_format(dest, fmt)
    if fmt == "parquet":
        if dest == "-":
            raise UsageError("Parquet goes to a file, not stdout")
        require_pyarrow()
    in_path, fingerprint = _find_input(outputs, input)
    for p in [*outputs, *([in_path] if in_path else [])]:
        if dest != "-" and Path(dest).resolve() == p.resolve():
            raise UsageError(f"-o {dest} would overwrite {p}")
    task = (fingerprint.get("shaping") or {}).get("task")
    if task is not None and in_path is None:
        raise UsageError("the run read data rows from stdin: give that data with --input FILE")
    index = _Index(outputs, need_keys=not (task and task.get("fields")))
    records = _Records(index)
    try:
        if task is not None and in_path is not None:
            columns, rows = _row_walk(task, in_path, records)
            labels = list(task.get("fields") or []) or ["output"]
        else:
            columns, rows = ["request_id"], _line_walk(index, records)
            labels = list(index.parsed_keys) or ["output"]
        plan = _Plan(columns, labels, list(with_fields or []), task)
        summary = ExportSummary(columns=plan.names)
        writer = _writer(fmt, dest, plan)
        try:
            for row, rec in rows:
                summary.rows += 1
                status = (rec or {}).get("status")
                if status == "completed":
                    summary.completed += 1
                elif status == "failed":
                    summary.failed += 1
                else:
                    summary.missing += 1
                writer.write(plan.values(row, rec))
            writer.close(commit=True)
        except BaseException:
            writer.close(commit=False)
            raise
    finally:
        records.close()
    return summary


def _row_walk(
    task: dict[str, Any], path: Path, records: _Records
) -> tuple[list[str], Iterator[tuple[dict[str, Any], dict[str, Any] | None]]]:
    fmt = str(task.get("input_format") or "csv")
    if fmt in ("csv", "tsv"):
        columns = csv_header(path, "," if fmt == "csv" else "\t")
    elif fmt == "parquet":
        columns = parquet_columns(path)
    else:  # JSONL objects need not share keys: one pass for the union, in first-seen order
        seen: dict[str, None] = {}
        for _, (_, payload) in row_entries(fmt, path):
            row = decode_row(payload)
            if isinstance(row, dict):
                for k in row:
                    seen.setdefault(str(k), None)
        columns = list(seen)

    def walk() -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
        for line, (_, payload) in row_entries(fmt, path):
            row = decode_row(payload)
            yield (row if isinstance(row, dict) else {}), records.get(line)

    return columns, walk()


def _line_walk(
    index: _Index, records: _Records
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    for line in index.lines():
        rec = records.get(line)
        yield {"request_id": (rec or {}).get("request_id")}, rec


class _Plan:
    """Column names (clashes with input columns get a prefix) and each row's values."""

    def __init__(
        self, columns: list[str], labels: list[str], extra: list[str], task: dict[str, Any] | None
    ) -> None:
        taken = set(columns)
        self.columns = columns
        self.names = list(columns)
        self.added: list[tuple[str, str]] = []  # (column name, what it holds)
        for what in [*(f"label:{x}" for x in labels), "status", "error", *extra]:
            base = what.split(":", 1)[1] if what.startswith("label:") else what
            name = base
            while name in taken:
                name = PREFIX + name
            taken.add(name)
            self.names.append(name)
            self.added.append((name, what))
        props = ((task or {}).get("schema") or {}).get("properties") or {}
        self.types: dict[str, str] = {}
        for name, what in self.added:
            if what.startswith("label:"):
                typ = (props.get(what[6:]) or {}).get("type")
                if isinstance(typ, list):
                    typ = next((t for t in typ if t != "null"), None)
                self.types[name] = _SCHEMA_TYPES.get(str(typ), "json")
            else:
                self.types[name] = _WITH_TYPES.get(what, "str")

    def values(self, row: dict[str, Any], rec: dict[str, Any] | None) -> list[Any]:
        out = [row.get(c) for c in self.columns]
        parsed = (rec or {}).get("parsed")
        for _, what in self.added:
            if what.startswith("label:"):
                key = what[6:]
                if isinstance(parsed, dict):
                    out.append(parsed.get(key))
                elif key == "output" and rec is not None:
                    out.append(rec.get("output"))
                else:
                    out.append(None)
            elif what == "status":
                out.append(rec.get("status") if rec else "missing")
            elif what == "error":
                err = (rec or {}).get("error") if rec else {"type": "missing", "message": MISSING}
                out.append(f"{err.get('type')}: {err.get('message')}" if err else None)
            else:
                out.append(rec.get(what) if rec else None)
        return out


class _Writer:
    def __init__(self, dest: str, binary: bool) -> None:
        self.dest = dest
        self.tmp: Path | None = None
        if dest == "-":
            self.fh: IO[Any] = sys.stdout.buffer if binary else sys.stdout
        else:
            # Written aside and renamed: a failed export never leaves half a file behind.
            self.tmp = Path(dest).with_name(f".{Path(dest).name}.burstq-tmp")
            try:
                if binary:
                    self.fh = self.tmp.open("wb")
                else:
                    self.fh = self.tmp.open("w", newline="", encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot write {dest}: {exc.strerror or exc}") from exc

    def write(self, values: list[Any]) -> None:
        raise NotImplementedError

    def close(self, *, commit: bool) -> None:
        if self.tmp is None:
            self.fh.flush()
            return
        self.fh.close()
        if commit:
            os.replace(self.tmp, self.dest)
        else:
            self.tmp.unlink(missing_ok=True)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return repr(v) if isinstance(v, float) else str(v)
    return orjson.dumps(v, default=str).decode()


class _CsvWriter(_Writer):
    def __init__(self, dest: str, plan: _Plan, delimiter: str) -> None:
        super().__init__(dest, binary=False)
        self._w = csv.writer(self.fh, delimiter=delimiter, lineterminator="\n")
        self._w.writerow(plan.names)

    def write(self, values: list[Any]) -> None:
        self._w.writerow([_cell(v) for v in values])


class _JsonlWriter(_Writer):
    def __init__(self, dest: str, plan: _Plan) -> None:
        super().__init__(dest, binary=True)
        self.names = plan.names

    def write(self, values: list[Any]) -> None:
        row = dict(zip(self.names, values, strict=True))
        self.fh.write(orjson.dumps(row, default=str) + b"\n")


class _ParquetWriter(_Writer):
    CHUNK = 8192

    def __init__(self, dest: str, plan: _Plan) -> None:
        super().__init__(dest, binary=True)
        import pyarrow as pa  # type: ignore[import-untyped]

        self.pa = pa
        arrow = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
        self.kinds = ["str"] * len(plan.columns) + [plan.types[n] for n, _ in plan.added]
        fields = [
            pa.field(n, arrow.get(k, pa.string()))
            for n, k in zip(plan.names, self.kinds, strict=True)
        ]
        self.schema = pa.schema(fields)
        self.pq = require_pyarrow()
        self._w = self.pq.ParquetWriter(self.fh, self.schema)
        self._rows: list[list[Any]] = []

    def write(self, values: list[Any]) -> None:
        self._rows.append([self._fit(k, v) for k, v in zip(self.kinds, values, strict=True)])
        if len(self._rows) >= self.CHUNK:
            self._flush()

    @staticmethod
    def _fit(kind: str, v: Any) -> Any:
        if v is None:
            return None
        if kind in ("str", "json"):
            return v if isinstance(v, str) else _cell(v)
        if kind == "int":
            return v if isinstance(v, int) and not isinstance(v, bool) else None
        if kind == "float":
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
        return v if isinstance(v, bool) else None

    def _flush(self) -> None:
        if self._rows:
            cols = list(zip(*self._rows, strict=True))
            self._w.write_table(
                self.pa.Table.from_arrays(
                    [
                        self.pa.array(list(c), type=f.type)
                        for c, f in zip(cols, self.schema, strict=True)
                    ],
                    schema=self.schema,
                )
            )
            self._rows = []

    def close(self, *, commit: bool) -> None:
        if commit:
            self._flush()
        self._w.close()
        super().close(commit=commit)


def _writer(fmt: str, dest: str, plan: _Plan) -> _Writer:
    if fmt == "csv":
        return _CsvWriter(dest, plan, ",")
    if fmt == "tsv":
        return _CsvWriter(dest, plan, "\t")
    if fmt == "jsonl":
        return _JsonlWriter(dest, plan)
    return _ParquetWriter(dest, plan)
