"""Plumbing shared by the scenarios: servers as child processes, burstq runs, data files.

Every burstq run is a fresh child process started from the console script through
bench/spawn.py, which times it from spawn to exit and reaps it with os.wait4, so its own CPU
time and peak RSS come back with it (no /usr/bin/time needed, no mixing with other children as
RUSAGE_CHILDREN would, and no inheriting the bench's own high-water mark; see spawn.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
SPAWN = Path(__file__).resolve().parent / "spawn.py"
SRC: Path | None = None  # --burstcli DIR: measure the package in DIR, not the installed one


def use_source(path: Path) -> None:
    """Measure the burstcli/ found in `path` (e.g. a `git archive` snapshot of a commit while
    the working tree is being edited): children get it first on PYTHONPATH, and so does this
    process, which imports burstcli to write resume sidecars."""
    global SRC
    SRC = path.resolve()
    if not (SRC / "burstcli" / "__init__.py").is_file():
        raise SystemExit(f"--burstcli: no burstcli/ package in {SRC}")
    sys.path.insert(0, str(SRC))


def burstq_cmd() -> list[str]:
    """The installed console script next to this interpreter (what users run)."""
    script = Path(PYTHON).parent / "burstq"
    if script.exists():
        return [str(script)]
    found = shutil.which("burstq")
    return [found] if found else [PYTHON, "-m", "burstcli.cli"]


def compile_burstcli() -> str:
    """Byte-compile the burstcli/ that children import, as `pip install` does for a wheel.

    With PYTHONDONTWRITEBYTECODE=1 in the environment (as on the machines this bench runs on)
    an editable install never gets a __pycache__, so every spawned burstq compiled its ~50
    modules from source: ~0.42 G instructions, ~20 % of a 1-request run's start-up, that no
    installed copy pays. compileall writes the .pyc files whatever that variable says; Python
    still reads them. Returns the directory compiled."""
    code = (
        "import burstcli, compileall, os, sys; d = os.path.dirname(burstcli.__file__); "
        "compileall.compile_dir(d, quiet=1); sys.stdout.write(d)"
    )
    with tempfile.TemporaryDirectory() as cwd:  # not the repo root: what the console script sees
        out = subprocess.run(
            [PYTHON, "-c", code], env=clean_env(), cwd=cwd, capture_output=True, text=True
        )
    return out.stdout.strip() or f"(not compiled: {out.stderr.strip()[-200:]})"


def clean_env() -> dict[str, str]:
    """The environment minus anything that would steer burstq (a real key, BURSTQ_* options)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BURSTQ_"))}
    env["PYTHONUNBUFFERED"] = "1"
    if SRC is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path

    @property
    def root(self) -> str:
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.root + "/mock/stats", timeout=30) as resp:
            data: dict[str, Any] = orjson.loads(resp.read())
        # Per-prompt maps can hold a million keys; the bench only needs their size.
        for key in ("completed_by_prompt", "attempts_by_prompt"):
            if isinstance(data.get(key), dict):
                data[key + "_n"] = len(data[key])
                data[key + "_max"] = max(data[key].values(), default=0)
                del data[key]
        return data

    def reset(self) -> None:
        req = urllib.request.Request(self.root + "/mock/reset", data=b"", method="POST")
        try:
            urllib.request.urlopen(req, timeout=30).read()
        except OSError:
            pass  # the fast server has no reset: start a new one instead


def _start_server(cmd: list[str], workdir: Path, name: str) -> Server:
    log = workdir / f"{name}.log"
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=clean_env(), cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if "listening on " in line:
                return Server(proc, line.rsplit("listening on ", 1)[1].strip(), log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    last = log.read_text(errors="replace").strip().splitlines()[-3:]
    raise RuntimeError(f"{name} did not start: {' / '.join(last)}")


@contextmanager
def mock_server(
    workdir: Path,
    *,
    latency: float = 0.0,
    rpm: int | None = None,
    tpm: int | None = None,
    extra: Sequence[str] = (),
) -> Iterator[Server]:
    """The project's own mock server (`burstq mock-server`), in its own process."""
    cmd = [*burstq_cmd(), "mock-server", "--port", "0", "--latency", str(latency), *extra]
    if rpm:
        cmd += ["--rpm", str(rpm)]
    if tpm:
        cmd += ["--tpm", str(tpm)]
    srv = _start_server(cmd, workdir, f"mock-l{latency}-r{rpm}{'-'.join(['', *extra])}")
    try:
        yield srv
    finally:
        _stop(srv.proc)


@contextmanager
def fast_server(workdir: Path) -> Iterator[Server]:
    """bench/fastserver.py: a canned-answer server that costs next to nothing per request."""
    srv = _start_server([PYTHON, "-m", "bench.fastserver", "--port", "0"], workdir, "fast")
    try:
        yield srv
    finally:
        _stop(srv.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- child processes --------------------------------------------------------------------------


@dataclass
class ChildRun:
    argv: list[str]
    returncode: int
    wall: float  # seconds, spawn to exit
    maxrss_mb: float  # peak resident set of the child, from wait4
    started: float  # time.monotonic() just before spawn (same clock as the mock's stats)
    cpu: float  # user + system CPU seconds of the child
    stdout: bytes = b""
    stderr: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


def run_child(argv: Sequence[str], *, timeout: float = 1800) -> ChildRun:
    """Run argv to completion through bench/spawn.py: wall time and the child's own peak RSS."""
    argv = list(argv)
    if not os.path.isabs(argv[0]):
        argv[0] = shutil.which(argv[0]) or argv[0]
    with (
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryDirectory() as tmp,
    ):
        report = Path(tmp) / "report.json"
        proc = subprocess.run(
            [PYTHON, "-S", str(SPAWN), str(report), str(timeout), *argv],
            stdout=out,
            stderr=err,
            env=clean_env(),
            cwd=ROOT,
            check=False,
        )
        err.seek(0)
        out.seek(0)
        stdout, stderr = out.read(), err.read()
        if not report.exists():
            raise RuntimeError(
                f"bench/spawn.py failed ({proc.returncode}): "
                f"{stderr.decode(errors='replace')[-500:]}"
            )
        r = orjson.loads(report.read_bytes())
    return ChildRun(
        argv,
        r["returncode"],
        r["wall"],
        r["maxrss_kb"] / 1024,
        r["started"],
        r["cpu"],
        stdout,
        stderr,
    )


def burstq_run(
    inp: Path, out: Path, server: Server, *extra: str, quiet: bool = False, timeout: float = 1800
) -> ChildRun:
    """`burstq run INPUT -o OUTPUT` against `server`, as a user would type it."""
    argv = [
        *burstq_cmd(),
        "run",
        str(inp),
        "-o",
        str(out),
        "--base-url",
        server.base_url,
        "--api-key",
        "sk-bench-not-a-key",
    ]
    argv += ["--quiet"] if quiet else ["--progress", "quiet"]
    return run_child([*argv, *extra], timeout=timeout)


def median_wall(argv: Sequence[str], repeat: int) -> tuple[float, list[float]]:
    walls = [run_child(argv).wall for _ in range(repeat)]
    return statistics.median(walls), walls


def summary_line(run: ChildRun) -> str:
    for line in run.stderr.decode(errors="replace").splitlines():
        if line.startswith("burstq:") and "completed" in line:
            return line
    return ""


def tail(run: ChildRun, n: int = 600) -> str:
    return run.stderr.decode(errors="replace")[-n:]


# -- data files -------------------------------------------------------------------------------


def write_input(path: Path, n: int) -> Path:
    """n native chat requests with distinct ids and short prompts (the per-request cost is
    what the bench is after, not prompt size)."""
    chunk = 50_000
    with path.open("wb") as f:
        for start in range(0, n, chunk):
            f.write(
                "".join(
                    f'{{"id": "r{i}", "input": "say {i}"}}\n'
                    for i in range(start, min(n, start + chunk))
                ).encode()
            )
    return path


_RECORD = (
    '{{"request_id":"r{i}","line":{line},"status":"completed","output":"echo: say {i}",'
    '"model":"gpt-4o-mini","model_used":"gpt-4o-mini","latency_ms":201.3,"attempts":1,'
    '"usage":{{"prompt_tokens":6,"completion_tokens":3,"total_tokens":9}},'
    '"tokens_used":9,"cost_usd":2.7e-06,"error":null,"metadata":null,'
    '"finished_at":"2026-11-27T10:00:00.123Z"}}\n'
)


def write_done_output(inp: Path, out: Path, n_done: int) -> None:
    """Pretend an earlier `burstq run inp -o out` finished the first n_done lines.

    Records have the shape burstq writes; the sidecar is written by burstq's own
    journal.write_sidecar with the fingerprint runner._execute builds (input as given,
    input_sha256, runner.shaping of the default options), so the rerun accepts it as its own.
    """
    from burstcli.config import RunConfig
    from burstcli.files.journal import write_sidecar
    from burstcli.files.reader import file_digest
    from burstcli.run import shaping

    chunk = 50_000
    with out.open("wb") as f:
        for start in range(0, n_done, chunk):
            f.write(
                "".join(
                    _RECORD.format(i=i, line=i + 1)
                    for i in range(start, min(n_done, start + chunk))
                ).encode()
            )
    fingerprint = {
        "input": str(inp),
        "shaping": shaping(RunConfig(str(inp), str(out))),
        "input_sha256": file_digest(inp),
    }
    write_sidecar(out, fingerprint)


_REPORT_ERRORS = ("server_error", "timeout", "rate_limit_exceeded", "malformed_response")
_REPORT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")


def write_records(path: Path, n: int, seconds: float = 3600.0) -> Path:
    """n output records of burstq's shape spread over `seconds` of run: 3 models, 2 endpoints,
    ~4 % failures of 4 types, retries, a latency spread over three orders of magnitude."""
    import random

    rng = random.Random(7)
    t0 = 1_795_000_000.0  # 2026-11-18: any fixed instant
    chunk = 50_000
    with path.open("wb") as f:
        for start in range(0, n, chunk):
            lines = []
            for i in range(start, min(n, start + chunk)):
                t = t0 + seconds * i / n
                stamp = (
                    time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
                    + f".{int(t % 1 * 1000):03d}Z"
                )
                model = _REPORT_MODELS[i % 3]
                attempts = 1 + (rng.random() < 0.1) + (rng.random() < 0.03)
                if rng.random() < 0.04:
                    err = _REPORT_ERRORS[i % 4]
                    lines.append(
                        f'{{"request_id":"r{i}","line":{i + 1},"status":"failed","output":null,'
                        f'"model":"{model}","model_used":null,"latency_ms":null,'
                        f'"attempts":{attempts + 2},"usage":null,"tokens_used":0,"cost_usd":null,'
                        f'"error":{{"type":"{err}","message":"x","status_code":500}},'
                        f'"metadata":null,"endpoint":"ep-{i % 2}","finished_at":"{stamp}"}}\n'
                    )
                    continue
                latency = rng.lognormvariate(6.3, 0.8)
                lines.append(
                    f'{{"request_id":"r{i}","line":{i + 1},"status":"completed","output":"ok",'
                    f'"model":"{model}","model_used":"{model}","latency_ms":{latency:.1f},'
                    f'"attempts":{attempts},"usage":{{"prompt_tokens":12,"completion_tokens":5,'
                    f'"total_tokens":17}},"tokens_used":17,"cost_usd":2.7e-06,"error":null,'
                    f'"metadata":null,"endpoint":"ep-{i % 2}","finished_at":"{stamp}"}}\n'
                )
            f.write("".join(lines).encode())
    return path


def count_records(path: Path) -> tuple[int, int]:
    """(records, completed) in an output file."""
    n = ok = 0
    with path.open("rb") as f:
        for raw in f:
            n += 1
            if b'"status":"completed"' in raw:
                ok += 1
    return n, ok


def finished_span(path: Path, skip: int = 0) -> float | None:
    """Seconds between the first and last finished_at of records after `skip` lines."""
    from datetime import datetime

    first = last = None
    with path.open("rb") as f:
        for n, raw in enumerate(f):
            if n < skip:
                continue
            at = raw.rfind(b'"finished_at":"')
            if at < 0:
                continue
            stamp = raw[at + 15 : raw.index(b'"', at + 15)].decode()
            t = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
    return None if first is None or last is None else last - first


def load_average() -> float | None:
    """1-minute load average: other work on the machine skews every timing, so it is logged."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
