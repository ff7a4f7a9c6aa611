"""Scenario 11 incremental (issue 15): a rerun after 1 % of a big input's lines changed.

OUTPUT holds a finished record for every line of the original input (records of burstq's
shape with the fingerprint and line digest burstq computes, written by the bench); then every
100th line's prompt is edited and the same command is rerun. Baseline, in the same run: a plain
resume of the unchanged input whose OUTPUT lacks the same number of records, so both runs send
exactly as many requests and the difference is what pairing and rewriting cost.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from . import harness as h
from .scenarios import BenchError, Context, Figure, _check

# Bytes a finished record may cost above the plain resume (README.md, files/rewrite.py): the
# pairing's 62 (fingerprint 8, line digest 8, offset 8, length, line and cost 4 each, two flag
# bytes, two tables of 4-byte slots at 1.5-3 slots a record: up to 24), 4 per input line
# (which record it got), and the duplicate-id table of the scan, ~11 per line validated, which
# a fresh run keeps too but a mostly-done plain resume does not.
BOUND_PER_RECORD = 62 + 4 + 11


def write_finished_output(inp: Path, out: Path) -> None:
    """Every line of `inp` done, as `burstq run inp -o out` leaves it, with the sidecar."""
    from burstcli.config import RunConfig
    from burstcli.files import fingerprint as fpr
    from burstcli.files.journal import write_sidecar
    from burstcli.files.reader import file_digest
    from burstcli.run import shaping

    shape = shaping(RunConfig(str(inp), str(out)))
    salt = fpr.salt(shape)
    buf: list[bytes] = []
    with inp.open("rb") as f, out.open("wb") as o:
        for n, raw in enumerate(f, start=1):
            line = orjson.loads(raw)
            body = {"messages": [{"role": "user", "content": line["input"]}]}
            fp = fpr.digest("chat", "gpt-4o-mini", body).hex()
            rec = h._RECORD.format(i=line["id"][1:], line=n)
            tail = f',"fingerprint":"{fp}","line_digest":"{fpr.line_digest(salt, raw):016x}"}}'
            buf.append((rec.rstrip()[:-1] + tail + "\n").encode())
            if len(buf) >= 50_000:
                o.write(b"".join(buf))
                buf.clear()
        o.write(b"".join(buf))
    write_sidecar(out, {"input": str(inp), "shaping": shape, "input_sha256": file_digest(inp)})


def edit_every_100th(src: Path, dst: Path) -> int:
    n = edited = 0
    with src.open("rb") as f, dst.open("wb") as o:
        for raw in f:
            if n % 100 == 99:
                obj = orjson.loads(raw)
                obj["input"] += " (edited)"
                raw = orjson.dumps(obj) + b"\n"
                edited += 1
            o.write(raw)
            n += 1
    return edited


def incremental(ctx: Context) -> None:
    n = ctx.sizes.resume_lines
    original = ctx.input_file(n)
    changed = ctx.workdir / f"in-{n}-edited.jsonl"
    edited = edit_every_100th(original, changed)
    inp = ctx.workdir / "in-incremental.jsonl"

    # Baseline: today's path, input unchanged, the same number of requests still to send.
    inp.write_bytes(original.read_bytes())
    base_out = ctx.fresh_output("out-incr-baseline.jsonl")
    h.write_done_output(inp, base_out, n - edited)
    with h.mock_server(ctx.workdir) as srv:
        base = h.burstq_run(inp, base_out, srv)
        _check(base, base_out, n, f"{ctx.label} (baseline resume)")
        base_st = srv.stats()

    # The incremental rerun: all lines done for the original, 1 % edited since.
    inp.write_bytes(original.read_bytes())
    out = ctx.fresh_output("out-incr.jsonl")
    write_finished_output(inp, out)
    inp.write_bytes(changed.read_bytes())
    ctx.log(
        f"{n:,} records in OUTPUT ({out.stat().st_size / 1e6:.0f} MB), {edited:,} lines of "
        "INPUT edited since"
    )
    with h.mock_server(ctx.workdir) as srv:
        run = h.burstq_run(inp, out, srv, "--progress", "plain")
        _check(run, out, n, f"{ctx.label} (incremental rerun)")
        st = srv.stats()
    if st["requests_total"] != edited or base_st["requests_total"] != edited:
        raise BenchError(
            f"{ctx.label}: sent {st['requests_total']} (baseline {base_st['requests_total']}), "
            f"expected {edited}"
        )
    plan = next((x for x in run.stderr.decode(errors="replace").splitlines() if "kept" in x), "")
    first = (st["first_request_at"] or run.started) - run.started
    base_first = (base_st["first_request_at"] or base.started) - base.started
    ctx.add(
        Figure(
            ctx.label,
            f"{n:,} lines, 1 % edited: spawn to first request (pair + rewrite)",
            first,
            "s",
            "plain resume, same requests to send",
            base_first,
            "a few seconds (< 5 s)",
            first < 5.0,
            f"whole rerun {run.wall:.1f} s (baseline {base.wall:.1f} s); {plan.strip()}",
            {"rerun_wall_s": run.wall, "baseline_wall_s": base.wall, "plan": plan},
        )
    )
    extra = max(0.0, run.maxrss_mb - base.maxrss_mb) * 1024 * 1024 / n
    ctx.add(
        Figure(
            ctx.label,
            f"{n:,} lines, 1 % edited: peak RSS",
            run.maxrss_mb,
            "MB",
            "plain resume, same requests to send",
            base.maxrss_mb,
            f"<= baseline + {BOUND_PER_RECORD} B/record",
            extra <= BOUND_PER_RECORD,
            f"{extra:.0f} bytes per record above the plain resume",
            {"bytes_per_record_above_baseline": extra},
        )
    )
