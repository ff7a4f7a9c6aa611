"""`python -m bench [--quick] [--only NAME[,NAME]] [--json PATH] [--burstcli DIR] [--keep]`.

Runs the scenarios in issue order, prints each figure as it is measured and a table at the end.
The exit status says whether the bench *ran*, never whether a target was met: 0 when every
scenario measured its figures (targets missed or not), 1 when a scenario could not (burstq
exited non-zero, records were missing, a server did not start), 2 for bad arguments. That is
what CI checks with --quick.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from . import harness as h
from .scenarios import FULL, QUICK, SCENARIOS, BenchError, Context, Figure, label, number


def aliases() -> dict[str, str]:
    """--only takes a scenario's name or its number (scenarios.NUMBERS), nothing else."""
    return {str(number(name)): name for name in SCENARIOS}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=h.ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "burstcli"],
            cwd=h.ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", ""
    where = f"{rev} (+ uncommitted burstcli/)" if dirty else rev
    if h.SRC is not None:
        where = f"burstcli/ from {h.SRC} (the repository itself is at {rev})"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "burstq": where,
    }


def fmt_value(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "s":
        return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"
    if unit == "MB":
        return f"{x:.1f} MB"
    if unit in ("req/s", "req/min"):
        return f"{x:,.0f} {unit}"
    if float(x).is_integer():
        return f"{int(x):,} {unit}"
    return f"{x:,.3g} {unit}"


def fmt_ratio(f: Figure) -> str:
    r = f.ratio
    if r is None:
        return "-"
    return f"{r * 100:.1f} %" if r <= 2 else f"{r:.1f}x"


def verdict(f: Figure) -> str:
    return {True: "met", False: "MISSED", None: "info"}[f.met]


def _bunit(f: Figure) -> str:
    return f.unit if f.baseline_unit is None else f.baseline_unit


def report(f: Figure) -> None:
    base = (
        f" vs {f.baseline_name} {fmt_value(f.baseline, _bunit(f))}"
        if f.baseline is not None
        else ""
    )
    print(
        f"[{f.scenario}] {f.name}: {fmt_value(f.value, f.unit)}{base} -> ratio "
        f"{fmt_ratio(f)}; target {f.target or '-'}: {verdict(f)}",
        flush=True,
    )
    if f.note:
        print(f"    {f.note}", flush=True)


def rows_of(figs: list[Figure]) -> list[tuple[str, ...]]:
    rows = [("scenario", "figure", "value", "baseline (same run)", "ratio", "target", "")]
    for f in figs:
        base = (
            f"{fmt_value(f.baseline, _bunit(f))} ({f.baseline_name})"
            if f.baseline is not None
            else f.baseline_name or "-"
        )
        rows.append(
            (
                f.scenario,
                f.name,
                fmt_value(f.value, f.unit),
                base,
                fmt_ratio(f),
                f.target or "-",
                verdict(f),
            )
        )
    return rows


def table(figs: list[Figure]) -> str:
    rows = rows_of(figs)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(figs: list[Figure]) -> str:
    """The figures table as docs/benchmarks.md carries it (misses in bold)."""
    head, *body = rows_of(figs)
    cells = [(*head[:-1], "verdict")] + [
        (*r[:-1], f"**{r[-1]}**" if r[-1] == "MISSED" else r[-1]) for r in body
    ]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
    lines.insert(1, "|" + "---|" * len(head))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="short sizes for CI (about a minute); exit 0 whatever the timings",
    )
    ap.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        default=[],
        help="run only these scenarios, by name or number "
        f"({', '.join(label(n) for n in SCENARIOS)}); repeatable or comma-separated",
    )
    ap.add_argument("--json", metavar="PATH", type=Path, help="write the figures as JSON")
    ap.add_argument(
        "--markdown", metavar="PATH", type=Path, help="write the figures as a Markdown table"
    )
    ap.add_argument("--workdir", type=Path, help="where data files go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the data files")
    ap.add_argument(
        "--burstcli",
        metavar="DIR",
        type=Path,
        help="measure the burstcli/ package in DIR instead of the installed one "
        "(e.g. `git archive HEAD burstcli | tar -x -C DIR`)",
    )
    args = ap.parse_args(argv)
    if args.burstcli:
        h.use_source(args.burstcli)
    compiled = h.compile_burstcli()

    names: list[str] = []
    by_number = aliases()
    for item in args.only:
        for name in filter(None, (x.strip() for x in item.split(","))):
            name = by_number.get(name, name)
            if name not in SCENARIOS:
                choices = ", ".join(label(n) for n in SCENARIOS)
                ap.error(f"unknown scenario {name!r}; choose from {choices}")
            names.append(name)
    names = names or list(SCENARIOS)

    info = machine()
    sizes = QUICK if args.quick else FULL
    print(f"burstq bench ({'quick' if args.quick else 'full'}): {', '.join(map(label, names))}")
    if args.quick:
        print(
            "quick mode checks that the bench runs: its runs are ~10 s, so start-up and the "
            "first round trip weigh on 1 ratelimit and 3 latency; judge targets on a full run"
        )
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
        f"burstq {info['burstq']}",
        flush=True,
    )
    print(f"byte-compiled {compiled} (as an installed wheel is)", flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="burstq-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(sizes=sizes, quick=args.quick, workdir=workdir, report=report)
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    load: dict[str, float | None] = {}
    t_all = time.monotonic()
    try:
        for name in names:
            load[name] = h.load_average()
            print(f"\n== {label(name)} == (load average {load[name]})", flush=True)
            ctx.name = name
            t0 = time.monotonic()
            try:
                SCENARIOS[name](ctx)
            except (BenchError, RuntimeError, OSError, ValueError) as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"!! {name} could not be measured: {errors[name]}", flush=True)
                if not isinstance(exc, BenchError):
                    traceback.print_exc()
            timings[name] = time.monotonic() - t0
            print(f"   ({timings[name]:.1f} s)", flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - t_all
    print(f"\n== figures ({elapsed:.0f} s) ==")
    print(table(ctx.figures))
    missed = [f for f in ctx.figures if f.met is False]
    print(
        f"\n{len(ctx.figures)} figures, {sum(f.met is True for f in ctx.figures)} targets met, "
        f"{len(missed)} missed, {len(errors)} scenarios failed to run"
    )
    for name, err in errors.items():
        print(f"  failed: {name}: {err}")
    if args.json:
        h.dump_json(
            args.json,
            {
                "mode": "quick" if args.quick else "full",
                "machine": info,
                "elapsed_s": elapsed,
                "scenario_seconds": timings,
                "load_average_at_start": load,
                "errors": errors,
                "sizes": vars(sizes),
                "figures": [f.as_dict() for f in ctx.figures],
            },
        )
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown(ctx.figures))
        print(f"wrote {args.markdown}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
