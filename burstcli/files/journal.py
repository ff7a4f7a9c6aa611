"""OUTPUT is the journal: records appended as requests finish, scanned again to resume.

Each batch of records goes out in one `os.write` on an O_APPEND descriptor, so a killed process
loses nothing that was written and a reader never sees half a record except, after a hard kill,
the very last line, which `open_for_resume` cuts off (that request is simply redone). A small
sidecar, OUTPUT.burstq.json, remembers which input and which request-shaping options produced
the output, so a resume against something else is refused instead of mixing two jobs.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import OutputError, ResumeMismatch
from ..files.reader import Done
from .skim import read_blocks, records

SIDECAR_SUFFIX = ".burstq.json"
SIDECAR_VERSION = 1


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


class Journal:
    """Append-only JSONL writer: one write per batch, optional fsync for power loss."""

    def __init__(self, path: Path | None, *, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync and path is not None
        self._fd = -1
        if path is not None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.written = 0

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Records as one write; one that cannot be serialized is written as its line's
        failed record instead, never dropping the others of the batch."""
        self.write_lines([_dumps(r) for r in records])

    def write_lines(self, lines: list[bytes]) -> None:
        """Serialized records (no newline) as one write."""
        if not lines:
            return
        data = b"\n".join(lines) + b"\n"
        if self._fd < 0:  # stdout: whatever object sys.stdout is now (a pipe, a test capture)
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(self._fd)
        self.written += len(lines)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(slots=True)
class ResumeState:
    done: Done = field(default_factory=Done)
    completed: int = 0
    failed: int = 0
    repaired_bytes: int = 0
    dropped_failed: int = 0
    cost_usd: float = 0.0  # spent by earlier runs: --max-cost is a cap on the whole output
    # line -> request_id, kept only for stdin input, which has no digest to prove it is the
    # same input: the reader checks each done line's id against it instead.
    ids: dict[int, str] | None = None

    @property
    def records(self) -> int:
        return self.completed + self.failed


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError):
        return None  # rebuildable: a damaged sidecar is rewritten from this run's options
    return data if isinstance(data, dict) else None


def sidecar_of(output: Path) -> dict[str, Any] | None:
    """OUTPUT's sidecar (which input and options wrote it), or None when there is none."""
    return read_sidecar(sidecar_path(output))


def _dumps(rec: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(rec)
    except (TypeError, ValueError) as exc:
        return orjson.dumps(_unwritable(rec, exc))


def _unwritable(rec: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """The failed record of one that could not be serialized, from its identifying fields."""
    error = {
        "type": "internal_error",
        "message": f"the record could not be written: {exc}",
        "status_code": None,
    }
    ids = {k: rec[k] for k in ("id", "custom_id", "request_id", "line") if k in rec}
    ids = {k: v for k, v in ids.items() if isinstance(v, str | int) and not isinstance(v, bool)}
    if "custom_id" in ids:  # the Batch API's output line shape
        return {
            "id": ids.get("id"),
            "custom_id": ids["custom_id"],
            "response": None,
            "error": error,
        }
    return {
        "request_id": ids.get("request_id"),
        "line": ids.get("line"),
        "status": "failed",
        "output": None,
        "error": error,
        "finished_at": rec.get("finished_at") if isinstance(rec.get("finished_at"), str) else None,
    }


def write_sidecar(output: Path, fingerprint: dict[str, Any]) -> None:
    side = sidecar_path(output)
    data = orjson.dumps(
        {"version": SIDECAR_VERSION, **fingerprint},
        option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
    )
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=side.parent, prefix=side.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, side)
    except OSError as exc:
        if tmp:  # a full disk or a read-only directory leaves nothing behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from exc


UNRECORDED = "unrecorded_attempts"


def add_unrecorded(output: Path, attempts: int) -> None:
    """Remember attempts of requests that were in flight when a run stopped: they have no
    record (a rerun redoes them), but they were sent and may be billed, so stats counts them."""
    side = sidecar_path(output)
    if attempts <= 0 or not output.is_file():
        return
    data = read_sidecar(side) or {"version": SIDECAR_VERSION}
    data[UNRECORDED] = int(data.get(UNRECORDED) or 0) + attempts
    tmp = side.with_name(side.name + ".tmp")
    try:
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        os.replace(tmp, side)
    except OSError:
        pass  # the records are safe; this is only a count


def unrecorded_attempts(output: Path) -> int:
    data = read_sidecar(sidecar_path(output)) or {}
    value = data.get(UNRECORDED)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _check_fingerprint(output: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    if (
        old.get("input_sha256")
        and new.get("input_sha256")
        and old["input_sha256"] != new["input_sha256"]
    ):
        raise ResumeMismatch(
            f"{output} was written from a different input ({old.get('input')!s}, "
            "since changed or replaced). Use --restart to start over, or another -o OUTPUT."
        )
    old_shape, new_shape = old.get("shaping", {}), new.get("shaping", {})
    changed = sorted(
        k for k in set(old_shape) | set(new_shape) if old_shape.get(k) != new_shape.get(k)
    )
    if changed:
        detail = ", ".join(f"{k}: {old_shape.get(k)!r} -> {new_shape.get(k)!r}" for k in changed)
        raise ResumeMismatch(
            f"{output} was written with other request options ({detail}). Rerun with the "
            "original options to resume, or use --restart to start over."
        )


def changed_since(output: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether OUTPUT (non-empty, with its sidecar) was written from another input or with
    other request-shaping options: the case for an incremental rerun (files/rewrite.py).
    A change of output format or of shard is not: those records cannot be paired, or belong
    to another job (another shard's lines), so it stays refused."""
    if not output.exists() or output.stat().st_size == 0:
        return False
    old = read_sidecar(sidecar_path(output))
    if old is None:
        return False
    old_shape, new_shape = old.get("shaping", {}), fingerprint.get("shaping", {})
    for key in ("output_format", "shard"):
        if old_shape.get(key) != new_shape.get(key):
            return False  # open_for_resume refuses it
    old_sha, new_sha = old.get("input_sha256"), fingerprint.get("input_sha256")
    return bool(old_sha and new_sha and old_sha != new_sha) or old_shape != new_shape


def intact_length(output: Path) -> int:
    """Bytes of an OUTPUT proven ours (its sidecar) before a torn last line. Reads only."""
    return _intact_length(output, output.stat().st_size, proven=True)


@dataclass(frozen=True, slots=True)
class RecordShape:
    """How to read one line of OUTPUT when resuming: `take(rec)` registers a kept record
    (raising KeyError, TypeError or ValueError when the line is not of this shape) and
    `failed(rec)` tells a failed one, for --retry-failed."""

    name: str
    take: Callable[[dict[str, Any]], None]
    failed: Callable[[dict[str, Any]], bool]


def open_for_resume(
    output: Path,
    fingerprint: dict[str, Any],
    *,
    restart: bool = False,
    retry_failed: bool = False,
    keep_ids: bool = False,
    shape: RecordShape | None = None,
    dry_run: bool = False,
) -> ResumeState:
    """Check OUTPUT belongs to this job, repair a torn tail, and find what is already done.

    By default OUTPUT holds burstq records, found done by their line number; another `shape`
    (formats.py's Batch API lines) registers its records itself. Nothing is modified (cut,
    rewritten or deleted) before OUTPUT is proven burstq's: its sidecar matches, or every
    complete line is a record of the shape. Anything else is refused untouched. `dry_run`
    changes nothing at all (--restart is only counted as a fresh start).
    """
    side = sidecar_path(output)
    old = read_sidecar(side)
    size = output.stat().st_size if output.exists() else 0
    if restart:
        if size and old is None:
            _prove_ours(output)
        if not dry_run:
            for p in (output, side):
                p.unlink(missing_ok=True)
        old, size = None, 0
    state = ResumeState(ids={} if keep_ids else None)
    if size > 0:
        if old is not None:
            _check_fingerprint(output, old, fingerprint)
        keep = _intact_length(output, size, proven=old is not None)
        # Proven ours, and nothing kept but line numbers: plain records need no JSON parse.
        skim = old is not None and shape is None and not retry_failed and not keep_ids
        take = shape or _burstq_shape(state)
        _scan(output, state, retry_failed, take, keep, dry_run=dry_run, skim=skim)
        if keep < size and output.stat().st_size > keep and not dry_run:
            with output.open("rb+") as f:
                f.truncate(keep)
        state.repaired_bytes = size - keep
        if old is not None and old.get(UNRECORDED):
            fingerprint = {**fingerprint, UNRECORDED: old[UNRECORDED]}  # carried over
    if not dry_run:
        write_sidecar(output, fingerprint)
    return state


def _not_ours(output: Path, why: str) -> OutputError:
    return OutputError(
        f"{output} is not a burstq output ({why}); refusing to touch it. Choose another -o OUTPUT."
    )


def _prove_ours(output: Path) -> None:
    """Without a sidecar, --restart deletes OUTPUT only if its complete lines are records."""
    with output.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n") or not raw.strip():
                continue
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or not (
                ("request_id" in rec and "status" in rec) or "custom_id" in rec
            ):
                raise _not_ours(output, f"line {n} is not a record")


def _burstq_shape(state: ResumeState) -> RecordShape:
    def take(rec: dict[str, Any]) -> None:
        line = int(rec["line"])
        state.done.add(line)
        if state.ids is not None:
            state.ids[line] = str(rec.get("request_id"))

    return RecordShape("burstq record", take, lambda rec: rec["status"] == "failed")


def _last_newline_before(f: IO[bytes], pos: int) -> int:
    """Offset of the last b"\\n" strictly before `pos`, or -1; reads backwards in chunks."""
    chunk = 1 << 16
    while pos > 0:
        lo = max(0, pos - chunk)
        f.seek(lo)
        i = f.read(pos - lo).rfind(b"\n")
        if i >= 0:
            return lo + i
        pos = lo
    return -1


def _intact_length(output: Path, size: int, *, proven: bool) -> int:
    """Bytes of OUTPUT before a torn last line (none: `size`). Reads only.

    A hard kill can leave a last line without its newline: that is cut. After a power loss a
    complete-looking last line may hold garbage: that is cut only when the sidecar proves the
    file ours; otherwise the scan refuses it, like any line that is not a record.
    """
    with output.open("rb") as f:
        f.seek(size - 1)
        if f.read(1) != b"\n":
            keep = _last_newline_before(f, size) + 1
            f.seek(keep)
            if not f.read(2).startswith(b"{"):  # burstq's torn line is the start of a record
                raise _not_ours(output, "its last line is not a record")
            if keep == 0 and not proven:
                raise _not_ours(output, "it holds no complete record")
            return keep
        if not proven:
            return size
        start = _last_newline_before(f, size - 1) + 1
        f.seek(start)
        try:
            orjson.loads(f.read(size - start))
            return size
        except orjson.JSONDecodeError:
            return start


def _scan(
    output: Path,
    state: ResumeState,
    retry_failed: bool,
    shape: RecordShape,
    limit: int,
    *,
    dry_run: bool = False,
    skim: bool = False,
) -> None:
    # Reads the first `limit` bytes only (a torn tail is not read); with --retry-failed the
    # kept records stream into a temporary file that atomically replaces OUTPUT. `skim`: blocks
    # of plain records are counted without a JSON parse (files/skim.py), the rest line by line.
    kept = None
    tmp = ""
    if retry_failed and not dry_run:
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=output.name + ".", suffix=".tmp")
        kept = os.fdopen(fd, "wb")
    n = 0
    try:
        with output.open("rb") as f:
            for _, block in read_blocks(f, limit):
                if skim and (got := records(block, state.done, state.cost_usd)) is not None:
                    n += got[0]
                    state.completed += got[0] - got[1]
                    state.failed += got[1]
                    state.cost_usd = got[2]
                    continue
                for n, raw in enumerate(io.BytesIO(block), start=n + 1):  # noqa: B020
                    _scan_line(output, n, raw, state, retry_failed, shape, kept)
        if kept is not None:
            kept.flush()
            os.fsync(kept.fileno())
            kept.close()
            if state.dropped_failed:
                os.replace(tmp, output)
    finally:
        if kept is not None:
            kept.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _scan_line(
    output: Path,
    n: int,
    raw: bytes,
    state: ResumeState,
    retry_failed: bool,
    shape: RecordShape,
    kept: IO[bytes] | None,
) -> None:
    if not raw.strip():
        return
    try:
        rec = orjson.loads(raw)
        failed = shape.failed(rec)
        if failed and retry_failed:
            state.dropped_failed += 1
            return
        shape.take(rec)
    except (
        orjson.JSONDecodeError,
        AttributeError,
        KeyError,
        TypeError,
        ValueError,
    ) as exc:
        raise OutputError(
            f"{output}:{n}: not a {shape.name} ({exc}); refusing to resume over "
            "it (nothing was changed). Use --restart to start over, or another "
            "-o OUTPUT."
        ) from exc
    if kept is not None:
        kept.write(raw)
    cost = rec.get("cost_usd")
    if isinstance(cost, int | float):
        state.cost_usd += cost
    if failed:
        state.failed += 1
    else:
        state.completed += 1


def iter_records(path: Path) -> Iterable[dict[str, Any]]:
    """Records of an output file, skipping a torn last line (the file may be growing)."""
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec
