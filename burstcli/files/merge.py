"""`burstq merge`: the shard outputs of one input joined into one OUTPUT, in input order.

Every shard output must prove it is burstq's (its sidecar), from the same input (same SHA-256)
and the same request-shaping options, each from a different shard of the same N. The input is
re-read to know which lines need a record; the merge refuses unless every such line has
exactly one record across the shards (a missing line names the shard to rerun). The result
gets the sidecar of an unsharded run of the same input, so `burstq run INPUT -o MERGED`
resumes on it as its own: a rerun sends nothing, `--retry-failed` redoes only failed records.

Memory: one 8-byte offset per input line, not the records themselves.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError, UsageError, missing_file
from .journal import sidecar_of, sidecar_path, write_sidecar
from .reader import file_digest

_SHOW = 10  # line numbers listed in a refusal


@dataclass(slots=True)
class MergeReport:
    output: Path
    records: int = 0
    completed: int = 0
    failed: int = 0
    shards: list[str] = field(default_factory=list)


def _fingerprint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise missing_file(path)
    side = sidecar_of(path)
    if side is None:
        raise InputError(
            f"{path} has no {sidecar_path(path).name}: not an output of `burstq run` "
            "(or its sidecar was removed), so it cannot be merged"
        )
    return side


def _find_input(named: str, given: Path | None, outputs: list[Path], sha: str) -> Path:
    candidates = [given] if given is not None else [Path(named)]
    if given is None:
        candidates += [o.parent / Path(named).name for o in outputs]
    for c in candidates:
        if c.is_file() and file_digest(c) == sha:
            return c
    if given is not None:
        raise InputError(f"{given} is not the input the shard outputs were written from")
    raise InputError(
        f"cannot find the input {named!r} the shards were written from (same SHA-256) to "
        "check that every line has a record; pass it with --input FILE"
    )


def merge(outputs: list[Path], dest: Path, *, input_path: Path | None = None) -> MergeReport:
    if not outputs:
        raise UsageError("give the shard outputs to merge")
    resolved = {o.resolve() for o in outputs}
    if len(resolved) != len(outputs):
        raise UsageError("the same shard output is named twice")
    if dest.resolve() in resolved:
        raise UsageError("-o must be a new file, not one of the shard outputs")
    if dest.exists() and sidecar_of(dest) is None:
        raise UsageError(
            f"{dest} exists and is not a burstq output (no sidecar): refusing to replace it"
        )
    prints = [_fingerprint(o) for o in outputs]
    first = prints[0]
    sha = first.get("input_sha256")
    if not sha:
        raise InputError(
            f"{outputs[0]} was written from stdin: shards of a stream cannot be merged"
        )
    base_shape = {k: v for k, v in first.get("shaping", {}).items() if k != "shard"}
    if base_shape.get("output_format", "burstq") != "burstq":
        raise UsageError(
            "only burstq-format outputs can be merged (openai-batch has no line numbers)"
        )
    shards: list[tuple[int, int] | None] = []
    for path, fp in zip(outputs, prints, strict=True):
        if fp.get("input_sha256") != sha:
            raise InputError(f"{path} was written from another input than {outputs[0]}")
        shape = dict(fp.get("shaping", {}))
        spec = shape.pop("shard", None)
        if shape != base_shape:
            raise InputError(f"{path} was written with other request options than {outputs[0]}")
        if spec is None:
            shards.append(None)
        else:
            i, n = (int(x) for x in str(spec).split("/"))
            shards.append((i, n))
    counts = {s[1] for s in shards if s is not None}
    if len(counts) > 1 or (counts and None in shards):
        raise InputError("the outputs come from different splits (--shard I/N with other N)")
    indices = [s[0] for s in shards if s is not None]
    if len(set(indices)) != len(indices):
        raise InputError("two outputs are of the same shard")
    source = _find_input(str(first.get("input", "")), input_path, outputs, sha)

    # Which lines need a record: every non-blank line (invalid ones get a failed record).
    expected = bytearray(1)
    with source.open("rb") as f:
        for raw in f:
            expected.append(1 if raw.strip() else 0)
    nlines = len(expected) - 1
    where = array("q", [-1]) * (nlines + 1)  # line -> (file index << 40) | offset
    sizes = array("l", [0]) * (nlines + 1)
    dupes: list[int] = []
    strays: list[tuple[Path, int]] = []
    report = MergeReport(dest, shards=[f"{s[0]}/{s[1]}" if s else "all" for s in shards])
    for fi, (path, spec) in enumerate(zip(outputs, shards, strict=True)):
        with path.open("rb") as f:
            offset = 0
            for n, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                if not raw.endswith(b"\n"):
                    raise InputError(
                        f"{path}:{n}: torn last line (the run was killed): rerun that shard's "
                        "command once to repair and finish it, then merge"
                    )
                try:
                    rec = orjson.loads(raw)
                    line = int(rec["line"])
                    status = rec["status"]
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise InputError(f"{path}:{n}: not a burstq record ({exc})") from exc
                if not 1 <= line <= nlines or not expected[line]:
                    strays.append((path, line))
                    continue
                if spec is not None and (line - 1) % spec[1] != spec[0]:
                    strays.append((path, line))
                    continue
                if where[line] >= 0:
                    dupes.append(line)
                    continue
                where[line] = (fi << 40) | start
                sizes[line] = len(raw)
                report.records += 1
                if status == "failed":
                    report.failed += 1
                else:
                    report.completed += 1
    if strays:
        p, line = strays[0]
        raise InputError(
            f"{len(strays)} records name lines their shard does not own or the input does "
            f"not have (first: {p} line {line})"
        )
    if dupes:
        shown = ", ".join(map(str, sorted(dupes)[:_SHOW]))
        raise InputError(f"{len(dupes)} lines have more than one record (lines {shown})")
    missing = [ln for ln in range(1, nlines + 1) if expected[ln] and where[ln] < 0]
    if missing:
        shown = ", ".join(map(str, missing[:_SHOW]))
        n_all = counts.pop() if counts else None
        owners = sorted({(ln - 1) % n_all for ln in missing}) if n_all else []
        hint = (
            " (shards " + ", ".join(f"{i}/{n_all}" for i in owners) + ": rerun them to finish)"
            if n_all
            else ""
        )
        raise InputError(
            f"{len(missing)} lines of {source} have no record yet (lines {shown}){hint}; "
            "nothing was written"
        )

    tmp = dest.with_name(dest.name + ".merge.tmp")
    fds = [os.open(p, os.O_RDONLY) for p in outputs]
    try:
        with tmp.open("wb") as out:
            buf: list[bytes] = []
            size = 0
            for line in range(1, nlines + 1):
                w = where[line]
                if w < 0:
                    continue
                buf.append(os.pread(fds[w >> 40], sizes[line], w & ((1 << 40) - 1)))
                size += sizes[line]
                if size >= 1 << 20:
                    out.write(b"".join(buf))
                    buf, size = [], 0
            out.write(b"".join(buf))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        for fd in fds:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    fingerprint = {k: v for k, v in first.items() if k != "version"}
    fingerprint["shaping"] = base_shape
    write_sidecar(dest, fingerprint)
    return report
