"""OUTPUT is the journal: records appended as requests finish, scanned again to resume.

Each batch of records goes out in one `os.write` on an O_APPEND descriptor, so a killed process
loses nothing that was written and a reader never sees half a record except, after a hard kill,
the very last line, which `open_for_resume` cuts off (that request is simply redone). A small
sidecar, OUTPUT.burstq.json, remembers which input and which request-shaping options produced
the output, so a resume against something else is refused instead of mixing two jobs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import InputError, ResumeMismatch, UsageError
from ..files.reader import Done

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
                raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.written = 0

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        data = b"".join([orjson.dumps(r) + b"\n" for r in records])
        if not data:
            return
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
        self.written += data.count(b"\n")

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


def write_sidecar(output: Path, fingerprint: dict[str, Any]) -> None:
    side = sidecar_path(output)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_bytes(
        orjson.dumps(
            {"version": SIDECAR_VERSION, **fingerprint},
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )
    )
    os.replace(tmp, side)


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
) -> ResumeState:
    """Check OUTPUT belongs to this job, repair a torn tail, and find what is already done.

    By default OUTPUT holds burstq records, found done by their line number; another `shape`
    (formats.py's Batch API lines) registers its records itself.
    """
    side = sidecar_path(output)
    if restart:
        for p in (output, side):
            p.unlink(missing_ok=True)
    state = ResumeState(ids={} if keep_ids else None)
    if output.exists() and output.stat().st_size > 0:
        old = read_sidecar(side)
        if old is not None:
            _check_fingerprint(output, old, fingerprint)
        state.repaired_bytes = _repair_tail(output)
        _scan(output, state, retry_failed, shape or _burstq_shape(state))
    write_sidecar(output, fingerprint)
    return state


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


def _repair_tail(output: Path) -> int:
    """Cut a torn last line (no newline, or not valid JSON) left by a hard kill."""
    size = output.stat().st_size
    with output.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) != b"\n":
            keep = _last_newline_before(f, size) + 1
        else:
            # Complete, but after a power loss its bytes may not all be there: parse it.
            start = _last_newline_before(f, size - 1) + 1
            f.seek(start)
            try:
                orjson.loads(f.read(size - start))
                return 0
            except orjson.JSONDecodeError:
                keep = start
        f.truncate(keep)
        return size - keep


def _scan(output: Path, state: ResumeState, retry_failed: bool, shape: RecordShape) -> None:
    # With --retry-failed, failed records are replaced, not duplicated: the kept ones stream
    # into a temporary file that atomically replaces OUTPUT.
    tmp = output.with_name(output.name + ".tmp")
    kept = tmp.open("wb") if retry_failed else None
    try:
        with output.open("rb") as f:
            for n, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    rec = orjson.loads(raw)
                    failed = shape.failed(rec)
                    if failed and retry_failed:
                        state.dropped_failed += 1
                        continue
                    shape.take(rec)
                except (
                    orjson.JSONDecodeError,
                    AttributeError,
                    KeyError,
                    TypeError,
                    ValueError,
                ) as exc:
                    raise InputError(
                        f"{output}:{n}: not a {shape.name} ({exc}); refusing to resume over "
                        "it. Use --restart to start over, or another -o OUTPUT."
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
        if kept is not None:
            kept.flush()
            os.fsync(kept.fileno())
            kept.close()
            if state.dropped_failed:
                os.replace(tmp, output)
    finally:
        if kept is not None:
            kept.close()
            tmp.unlink(missing_ok=True)


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
