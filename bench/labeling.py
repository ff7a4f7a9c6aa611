"""Scenario 7 labeling (issue 14), data rows: templates against prepared JSONL, memory in the
number of rows, and the time to export a million records.

- rows/s: the same requests (same prompt, same schema) from a CSV through `--prompt` and
  `--schema`, against a prepared JSONL file of the rendered requests; target >= 0.9x.
- peak RSS: a CSV of `memory_big` rows with all but `memory_sent` already done, against a
  fresh `memory_sent`-row CSV: both send the same requests, so the difference is what the
  number of rows costs (hashing, CSV parsing, per-line tables); target <= 1.2x.
- export: `burstq export` of `memory_big` records written in shuffled order, wall time and
  peak RSS against an export of `memory_sent` records (flat memory: an offset index only).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from . import harness as h

if TYPE_CHECKING:
    from .scenarios import Context

PROMPT = "Review: {{ text }}"
SCHEMA = "label: one of pos/neg, score float"


def _csv(path: Path, n: int) -> Path:
    with path.open("w", newline="") as f:
        f.write("id,text\n")
        for start in range(0, n, 50_000):
            f.write(
                "".join(f'r{i},"say {i}, fine"\n' for i in range(start, min(n, start + 50_000)))
            )
    return path


def _task() -> tuple[object, dict[str, object]]:
    from burstcli.files.schema import parse_dsl, response_format

    schema = parse_dsl(SCHEMA)
    return schema, response_format(schema)


def _prepared(path: Path, n: int) -> Path:
    _, rf = _task()
    with path.open("wb") as f:
        for start in range(0, n, 50_000):
            f.write(
                b"".join(
                    orjson.dumps(
                        {
                            "id": f"r{i}",
                            "messages": [{"role": "user", "content": f"Review: say {i}, fine"}],
                            "params": {"response_format": rf},
                        }
                    )
                    + b"\n"
                    for i in range(start, min(n, start + 50_000))
                )
            )
    return path


def _row_fingerprint(inp: Path, out: Path) -> dict[str, object]:
    from burstcli.config import RunConfig
    from burstcli.files.reader import file_digest
    from burstcli.files.template import load_task

    task, _ = load_task(
        str(inp),
        prompt=PROMPT,
        system=None,
        template=None,
        schema=SCHEMA,
        id_column=None,
        input_format=None,
    )
    cfg = RunConfig(str(inp), str(out), task=task)
    return {"input": str(inp), "shaping": cfg.job.shaping(), "input_sha256": file_digest(inp)}


def _done_records(inp: Path, out: Path, n_done: int, n: int, *, shuffle: bool) -> None:
    """Records of an earlier run of the first n_done rows (row i starts on line i + 2)."""
    from burstcli.files.journal import write_sidecar

    order = list(range(n_done))
    if shuffle:
        random.Random(7).shuffle(order)  # completion order, not input order
    rec = (
        '{{"request_id":"r{i}","line":{line},"status":"completed","output":"{{\\"label\\":'
        '\\"pos\\",\\"score\\":0.5}}","parsed":{{"label":"pos","score":0.5}},"model":"gpt-4o-mini",'
        '"model_used":"gpt-4o-mini","latency_ms":201.3,"attempts":1,"usage":{{"prompt_tokens":9,'
        '"completion_tokens":9,"total_tokens":18}},"tokens_used":18,"cost_usd":2.7e-06,'
        '"error":null,"metadata":null,"finished_at":"2026-12-01T10:00:00.123Z"}}\n'
    )
    with out.open("wb") as f:
        for start in range(0, n_done, 50_000):
            f.write(
                "".join(rec.format(i=i, line=i + 2) for i in order[start : start + 50_000]).encode()
            )
    write_sidecar(out, _row_fingerprint(inp, out))


def labeling(ctx: Context) -> None:
    from .scenarios import BenchError, Figure  # scenarios.py registers this module

    s = ctx.sizes
    n, big = s.memory_sent, s.memory_big
    rows_in = _csv(ctx.workdir / f"rows-{n}.csv", n)
    prepared = _prepared(ctx.workdir / f"prepared-{n}.jsonl", n)
    conc = ["--concurrency", "128"]
    with h.mock_server(ctx.workdir) as srv:
        walls: dict[str, list[float]] = {"rows": [], "jsonl": []}
        rss_small = 0.0
        for _ in range(1 if ctx.quick else 3):
            for kind in ("jsonl", "rows"):  # alternate, so drift hits both alike
                srv.reset()
                out = ctx.fresh_output(f"out-lab-{kind}.jsonl")
                if kind == "rows":
                    run = h.burstq_run(
                        rows_in, out, srv, "--prompt", PROMPT, "--schema", SCHEMA, *conc
                    )
                    rss_small = max(rss_small, run.maxrss_mb)
                else:
                    run = h.burstq_run(prepared, out, srv, *conc)
                if run.returncode != 0:
                    raise BenchError(f"{ctx.label} ({kind}): exit {run.returncode}: {h.tail(run)}")
                recs, ok = h.count_records(out)
                if recs != n or ok != n:
                    raise BenchError(f"{ctx.label} ({kind}): {recs} records, {ok} completed")
                walls[kind].append(run.wall)
        rows_rate, jsonl_rate = n / min(walls["rows"]), n / min(walls["jsonl"])
        ctx.add(
            Figure(
                ctx.label,
                f"rows/s, {n:,} CSV rows via --prompt + --schema",
                rows_rate,
                "req/s",
                "same requests as prepared JSONL",
                jsonl_rate,
                ">= 90 % of baseline",
                rows_rate >= 0.9 * jsonl_rate,
                "best of the runs; wall time includes start-up and the scan",
                {"rows_walls": walls["rows"], "jsonl_walls": walls["jsonl"]},
            )
        )
        big_in = _csv(ctx.workdir / f"rows-{big}.csv", big)
        out_big = ctx.fresh_output("out-lab-big.jsonl")
        _done_records(big_in, out_big, big - n, big, shuffle=False)
        srv.reset()
        run = h.burstq_run(big_in, out_big, srv, "--prompt", PROMPT, "--schema", SCHEMA, *conc)
        if run.returncode != 0:
            raise BenchError(f"{ctx.label} (big): exit {run.returncode}: {h.tail(run)}")
        if srv.stats()["requests_total"] != n:
            raise BenchError(f"{ctx.label} (big): sent {srv.stats()['requests_total']}, not {n}")
        ctx.add(
            Figure(
                ctx.label,
                f"peak RSS, {big:,}-row CSV, {big - n:,} done ({n:,} sent)",
                run.maxrss_mb,
                "MB",
                f"{n:,}-row CSV",
                rss_small,
                "<= 120 % of baseline",
                run.maxrss_mb <= 1.2 * rss_small,
                "both send the same requests; this one also parses and skips the done rows",
                {"wall_s": run.wall},
            )
        )
    exports: dict[int, h.ChildRun] = {}
    for size in (n, big):
        inp = rows_in if size == n else big_in
        out = ctx.fresh_output(f"out-exp-{size}.jsonl")
        _done_records(inp, out, size, size, shuffle=True)
        dest = ctx.workdir / f"labels-{size}.csv"
        exports[size] = h.run_child([*h.burstq_cmd(), "export", str(out), "-o", str(dest)])
        if exports[size].returncode != 0:
            raise BenchError(f"{ctx.label} (export): {h.tail(exports[size])}")
    e_big, e_small = exports[big], exports[n]
    ctx.add(
        Figure(
            ctx.label,
            f"export of {big:,} shuffled records to CSV",
            e_big.wall,
            "s",
            "",
            None,
            "",
            None,
            f"{big / e_big.wall:,.0f} rows/s; peak RSS {e_big.maxrss_mb:.0f} MB against "
            f"{e_small.maxrss_mb:.0f} MB for {n:,} records",
            {"maxrss_mb": e_big.maxrss_mb, "small_maxrss_mb": e_small.maxrss_mb},
        )
    )
