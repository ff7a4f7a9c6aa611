"""Resume, or an incremental rerun when INPUT or the request-shaping options changed.

Unchanged input (the sidecar agrees): journal.open_for_resume finds the done lines by line
number, exactly as before; nothing here costs anything extra.

Changed input: every current request is paired with a finished record of the same fingerprint
(files/fingerprint.py); one record serves one request, so identical requests on two lines need
two records. A line whose raw bytes (under the same shaping options) match a record's
`line_digest` is paired without being parsed: the record proves those bytes were a valid
request with that fingerprint; every other line is validated as usual, then looked up by its
fingerprint. OUTPUT is then rewritten to hold exactly one record per current line that has one
(reused records keep their answers, cost and timings, and get the line's number, id and
metadata), in input order; records whose request is gone are dropped; only new and changed
requests are sent, appended after the rewrite as usual.

Crash safety: the new OUTPUT is written to a temporary file in OUTPUT's directory, fsynced, and
renamed over OUTPUT (one atomic step), the directory is fsynced, and only then is the sidecar
updated. A kill at any instant leaves the old OUTPUT (and old sidecar: the rerun pairs again)
or the new one with the old sidecar (the rerun pairs again, finds every record it kept and
changes nothing) or the new one with the new sidecar (a plain resume).

Memory: the pairing keeps, per finished record, a 64-bit fingerprint, a 64-bit line digest, a
64-bit offset, a 32-bit length, line and cost (float32), two flag bytes, and a slot in each of
two open-addressing tables (4 bytes, 1.5 to 3 slots a record): 50 to 62 bytes. Per input line
it adds 4 bytes (which record the line got) and 1 bit (whether the record must be patched).
No Python object per record.
May import: config, models, errors (and the files room).
"""

from __future__ import annotations

import os
import re
import signal
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any

import orjson

from ..config import JobSpec
from ..errors import OutputError
from ..models import InvalidLine, Request
from . import fingerprint as fpr
from .journal import (
    ResumeState,
    changed_since,
    intact_length,
    open_for_resume,
    write_sidecar,
)
from .reader import FileSource, ScanStopped, ShouldStop, line_id

TMP_SUFFIX = ".burstq-rewrite.tmp"
# Test-only: kill -9 this process at a named instant of the rewrite (tests/test_incremental.py).
_KILL_AT = "_BURSTQ_TEST_KILL_AT"


def _kill_point(name: str) -> None:
    if os.environ.get(_KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(slots=True)
class Plan:
    """What an incremental rerun does, printed before anything is sent."""

    incremental: bool
    kept: int = 0
    dropped: int = 0
    to_send: int = 0
    invalid: int = 0

    def line(self) -> str:
        head = "incremental rerun (INPUT or options changed)" if self.incremental else "resume"
        text = (
            f"burstq: {head}: kept {self.kept:,}, dropped {self.dropped:,}, "
            f"to send {self.to_send:,}"
        )
        if self.invalid:
            text += f" ({self.invalid:,} invalid lines recorded, not sent)"
        return text


class _Table:
    """Open addressing over 64-bit keys (linear probing, duplicates side by side), holding
    record indexes: 4 bytes a slot, 1.5 to 3 slots a record (at most 2/3 full)."""

    def __init__(self, keys: array[int]) -> None:
        size = 1024
        while size < 1.5 * len(keys):
            size *= 2
        slots = array("I", bytes(4 * size))
        mask = size - 1
        for n, key in enumerate(keys):
            if key:  # 0: this record has no such key
                i = key & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = n + 1
        self.slots, self.mask, self.keys = slots, mask, keys

    def find(self, key: int, taken: bytearray) -> int:
        """A record with this key not taken yet, or -1."""
        slots, keys, mask = self.slots, self.keys, self.mask
        i = key & mask
        while v := slots[i]:
            if keys[v - 1] == key and not taken[v - 1]:
                return v - 1
            i = (i + 1) & mask
        return -1


class Pool:
    """OUTPUT's finished records as parallel arrays, found by fingerprint or by line digest."""

    def __init__(self) -> None:
        self.fps = array("Q")
        self.digests = array("Q")  # 0 when the record has none
        self.offsets = array("Q")
        self.lengths = array("I")
        self.lines = array("I")
        self.costs = array("f")  # float32: 7 digits a record, summed in float64
        self.failed = bytearray()
        self.taken = bytearray()
        self.records = 0  # every record read, servable or not
        self.by_fp: _Table | None = None
        self.by_digest: _Table | None = None

    def add(
        self, fp: int, digest: int, offset: int, length: int, line: int, failed: bool, cost: float
    ) -> None:
        self.costs.append(cost)
        self.fps.append(fp)
        self.digests.append(digest)
        self.offsets.append(offset)
        self.lengths.append(length)
        self.lines.append(line)
        self.failed.append(failed)

    def index(self) -> None:
        self.taken = bytearray(len(self.fps))
        self.by_fp = _Table(self.fps)
        self.by_digest = _Table(self.digests)


# The head and tail of a record as Result.record() writes it, read without a JSON parse; any
# other line is parsed in full.
_HEAD = re.compile(rb'\{"request_id":"(?:[^"\\]|\\.)*","line":(\d+),"status":"(completed|failed)"')
_TAIL = re.compile(rb',"fingerprint":"([0-9a-f]{32})"(?:,"line_digest":"([0-9a-f]{16})")?\}\r?\n?$')


# Result.record() writes ..."tokens_used":N,"cost_usd":X,... ; null (unknown) adds 0.
_COST = re.compile(rb'"tokens_used":(?:-?\d+|null),"cost_usd":(-?[0-9][0-9.eE+-]*|null)')
# The usual tail, 84 bytes: ,"fingerprint":"<32 hex>","line_digest":"<16 hex>"}\n
_FP_AT, _DG_AT, _END = b',"fingerprint":"', b'","line_digest":"', b'"}\n'


def _cost(raw: bytes, start: int) -> float:
    m = _COST.search(raw, start)
    if m is None or m.group(1) == b"null":
        return 0.0
    try:
        return float(m.group(1))
    except ValueError:
        return 0.0


def _read_pool(
    output: Path, retry_failed: bool, limit: int, should_stop: ShouldStop | None = None
) -> Pool:
    """Every record of OUTPUT that can serve a request: it has a fingerprint (invalid-line
    records and records written before fingerprints have none), and is not a failure that
    --retry-failed redoes."""
    pool = Pool()
    offset = 0
    head, tail = _HEAD.match, _TAIL.search
    with output.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            at, offset = offset, offset + len(raw)
            if offset > limit:
                break  # a torn last line
            if should_stop is not None and n % 8192 == 0 and should_stop():
                raise ScanStopped
            h = head(raw)
            fp_hex = dg_hex = None
            if h is not None:
                if raw[-84:-68] == _FP_AT and raw[-36:-19] == _DG_AT and raw[-3:] == _END:
                    fp_hex, dg_hex = raw[-68:-52], raw[-19:-3]
                elif (t := tail(raw, max(0, len(raw) - 120))) is not None:
                    fp_hex, dg_hex = t.group(1)[:16], t.group(2)
            if fp_hex is not None and h is not None:
                pool.records += 1
                failed = h.group(2) == b"failed"
                if not (failed and retry_failed):
                    fp = int(fp_hex, 16) or 1
                    dgi = (int(dg_hex, 16) or 1) if dg_hex else 0
                    cost = _cost(raw, h.end())
                    pool.add(fp, dgi, at, len(raw), int(h.group(1)), failed, cost)
                continue
            if not raw.strip():
                continue
            _read_parsed(output, n, raw, at, pool, retry_failed)
    pool.index()
    return pool


def _read_parsed(output: Path, n: int, raw: bytes, at: int, pool: Pool, retry_failed: bool) -> None:
    try:
        rec = orjson.loads(raw)
        line = int(rec["line"])
        failed = rec["status"] == "failed"
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise OutputError(
            f"{output}:{n}: not a burstq record ({exc}); refusing to rewrite it (nothing was "
            "changed). Use --restart to start over, or another -o OUTPUT."
        ) from exc
    pool.records += 1
    fp = rec.get("fingerprint")
    if not fpr.is_fingerprint(fp) or (failed and retry_failed) or line < 1:
        return
    digest = rec.get("line_digest")
    dg = 0
    if isinstance(digest, str) and len(digest) == 16:
        try:
            dg = int(digest, 16) or 1
        except ValueError:
            dg = 0
    cost = rec.get("cost_usd")
    cost = float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else 0.0
    pool.add(fpr.short(fp), dg, at, len(raw), line, failed, cost)


class _Pairing:
    """files/reader.Pairing for one rerun: the current lines take the pool's records."""

    def __init__(self, pool: Pool, n_lines: int, salt: bytes, state: ResumeState) -> None:
        self.pool = pool
        self.salt = salt
        self.state = state
        self.line_rec = array("I", bytes(4 * (n_lines + 2)))  # line -> record index + 1
        self.patch = bytearray((n_lines >> 3) + 2)  # 1 bit a line: line, id or metadata moved
        self.kept = 0

    def _take(self, r: int, line: int, patch: bool) -> None:
        self.pool.taken[r] = 1
        if line >= len(self.line_rec):  # the size hint was low (data rows)
            self.line_rec.extend(bytes(4 * (line + 1 - len(self.line_rec))))
            self.patch.extend(bytes((line >> 3) + 1 - len(self.patch)))
        self.line_rec[line] = r + 1
        if patch:
            self.patch[line >> 3] |= 1 << (line & 7)
        self.kept += 1
        self.state.cost_usd += self.pool.costs[r]
        if self.pool.failed[r]:
            self.state.failed += 1
        else:
            self.state.completed += 1

    def raw(self, line: int, raw: bytes, add_id: Callable[[str], bool]) -> bool:
        pool = self.pool
        assert pool.by_digest is not None
        data = self.salt + raw.rstrip(b"\r\n")  # fingerprint.line_digest, inlined: per line
        key = int.from_bytes(blake2b(data, digest_size=8).digest(), "little") or 1
        r = pool.by_digest.find(key, pool.taken)
        if r < 0:
            return False
        # The same bytes under the same options: the same request, and a valid line; only
        # its id is needed (for the duplicate check), and only a moved line is patched.
        rid = line_id(raw, line)
        if rid is None or not add_id(rid):
            return False
        self._take(r, line, pool.lines[r] != line)
        return True

    def request(self, req: Request) -> bool:
        pool = self.pool
        assert pool.by_fp is not None
        r = pool.by_fp.find(fpr.short(fpr.of(req)), pool.taken)
        if r < 0:
            return False
        # Other bytes for the same request (whitespace, key order, another id): patch it.
        self._take(r, req.line, True)
        return True


@dataclass(slots=True)
class Resumed:
    """What the run starts from: the resume state and INPUT's invalid lines (INPUT scanned)."""

    state: ResumeState
    invalid: list[InvalidLine] = field(default_factory=list)
    plan: Plan = field(default_factory=lambda: Plan(False))


def resume(
    output: Path,
    src: FileSource,
    fingerprint: dict[str, Any],
    job: JobSpec,
    should_stop: ShouldStop | None = None,
    *,
    dry_run: bool = False,
) -> Resumed:
    """Open OUTPUT for a run of `job` over `src` (a file) and scan it: resume OUTPUT as it is,
    or pair and rewrite it when INPUT or the options changed. `dry_run` changes nothing."""
    restart, retry_failed = job.restart, job.retry_failed
    src.salt = fpr.salt(fingerprint.get("shaping", {}))
    invalid: list[InvalidLine] = []
    if restart or not changed_since(output, fingerprint):
        state = open_for_resume(
            output, fingerprint, restart=restart, retry_failed=retry_failed, dry_run=dry_run
        )
        src.scan(state.done, invalid.append, should_stop)
        plan = Plan(False, state.records, state.dropped_failed, src.pending, src.invalid)
        return Resumed(state, invalid, plan)
    state = ResumeState()
    # Proven ours by its sidecar: a torn last line (a hard kill) is left out, and cut below.
    size = output.stat().st_size
    keep = intact_length(output)
    pool = _read_pool(output, retry_failed, keep, should_stop)
    pairing = _Pairing(pool, src.parser.size_hint(src.path), src.salt, state)
    src.scan(None, invalid.append, should_stop, pairing=pairing)
    plan = Plan(True, pairing.kept, pool.records - pairing.kept, src.pending, src.invalid)
    if not dry_run:
        state.repaired_bytes = size - keep
        _rewrite(output, src, pool, pairing)
        write_sidecar(output, fingerprint)
    return Resumed(state, invalid, plan)


def dry_run(job: JobSpec) -> tuple[Plan, int]:
    """--dry-run: the plan of a run of `job` (and INPUT's request count); changes nothing."""
    from .rows import parser_for

    with FileSource(Path(job.input), job.model, parser_for(job), shard=job.shard) as src:
        fingerprint = {"input": job.input, "shaping": job.shaping(), "input_sha256": src.digest()}
        resumed = resume(Path(job.output), src, fingerprint, job, dry_run=True)
    return resumed.plan, src.total


def _rewrite(output: Path, src: FileSource, pool: Pool, pairing: _Pairing) -> None:
    """The kept records, in input order, atomically in place of OUTPUT.

    Records are read with seek + read, not mmap: mapped pages of a large OUTPUT would count
    in the process's RSS (the page cache serves both the same).
    """
    tmp = output.with_name(output.name + TMP_SUFFIX)
    offsets, lengths, line_rec, patch = pool.offsets, pool.lengths, pairing.line_rec, pairing.patch
    n_lines = len(line_rec)
    with (
        output.open("rb", buffering=1 << 16) as old,
        tmp.open("wb") as new,
        src.entries() as entries,
    ):
        buf: list[bytes] = []
        for line, raw_in in entries:
            r = line_rec[line] if line < n_lines else 0
            if not r:
                continue
            old.seek(offsets[r - 1])  # within the buffer when records are in input order
            rec = old.read(lengths[r - 1])
            if not rec.endswith(b"\n"):
                rec += b"\n"
            if patch[line >> 3] & (1 << (line & 7)):
                rec = _patched(rec, raw_in, line, src)
            buf.append(rec)
            if len(buf) >= 4096:
                new.write(b"".join(buf))
                buf.clear()
                _kill_point("rewrite-mid")
        new.write(b"".join(buf))
        _kill_point("rewrite-mid")
        new.flush()
        os.fsync(new.fileno())
    _kill_point("rewrite-before-rename")
    os.replace(tmp, output)
    _fsync_dir(output.parent)
    _kill_point("rewrite-after-rename")


def _patched(rec: bytes, raw_in: Any, line: int, src: FileSource) -> bytes:
    """A kept record carrying the current line's number, id and metadata."""
    obj = orjson.loads(rec)
    obj["line"] = line
    req = src.parser.parse(raw_in, line, trusted=True)
    if isinstance(req, Request):  # always, for a line the scan paired
        obj["request_id"] = req.id
        obj["metadata"] = req.metadata
    return orjson.dumps(obj) + b"\n"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
