"""`burstq report`: the charts of one or more outputs in one self-contained HTML file."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError, UsageError
from .app import app, boundary, err
from .app import env as _env


@app.command()
@boundary
def report(
    output: Annotated[
        list[Path],
        typer.Argument(
            help="Output files of `burstq run` (JSONL): one run, or the shards of one; a file "
            "still being written is fine."
        ),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            envvar=_env("report_output"),
            help="Where the HTML goes ('-' for stdout). An existing file is replaced only "
            "if it is a burstq report.",
        ),
    ] = "report.html",
    rpm: Annotated[
        float | None,
        typer.Option(
            envvar=_env("report_rpm"),
            min=0.001,
            help="The rpm ceiling to draw over the throughput. Default: the --rpm the run "
            "recorded in OUTPUT's sidecar (none when it learned its limits).",
        ),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option(envvar=_env("report_title"), help="Page title. Default: the file name."),
    ] = None,
) -> None:
    """Charts of a run in one offline HTML file: throughput against the rpm ceiling, latency,
    errors and retries over time, tokens and cost by model and endpoint, attempts per request.

    The page fetches nothing and runs no script (inline SVG), so it opens offline and can be
    mailed or kept as a CI artifact. Records are aggregated while streaming: memory stays flat
    for millions of records. Needs the optional extra: pip install 'burstq[report]'.

    Example:

        burstq report responses.jsonl -o report.html

        burstq report shard-*.jsonl -o report.html --rpm 3000
    """
    from ..observe.report import build
    from ..observe.report_html import MARKER, render

    for path in output:
        if not path.is_file():
            raise InputError(f"cannot read {path}: no such file")
    dest = None if to == "-" else Path(to)
    if dest is not None:
        if any(dest.resolve() == p.resolve() for p in output):
            raise UsageError(f"-o {dest} is one of the outputs being read")
        _check_replaceable(dest, MARKER)
    page = render(build(output, rpm=rpm), title=title)
    if dest is None:
        sys.stdout.write(page)
        sys.stdout.flush()
        return
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    err(f"burstq: wrote {dest} ({len(page.encode()) / 1024:,.0f} KB)")


def _check_replaceable(dest: Path, marker: str) -> None:
    # burstq never modifies a file it cannot prove is its own: a report it wrote starts so.
    try:
        with dest.open("rb") as f:
            head = f.read(len(marker.encode()))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    if head != marker.encode():
        raise UsageError(
            f"{dest} exists and is not a burstq report; refusing to overwrite it "
            "(remove it or choose another -o)"
        )
