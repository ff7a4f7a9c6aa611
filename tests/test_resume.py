"""Issue 4 end to end: kill a real `burstq run` any way you like, rerun, nothing lost or paid twice.

The kill test runs `python -m burstcli.cli run` as a subprocess against a mock server living in
this test process, so the server's per-prompt counters survive every kill and tell exactly how
many requests were answered twice.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.mock.server import MockConfig, ThreadedMockServer

from .conftest import TEST_KEY, read_jsonl, run_args, run_cli, write_jsonl

pytestmark = pytest.mark.e2e

N = 500
CONCURRENCY = 8


def settled(srv: ThreadedMockServer) -> dict[str, Any]:
    """The mock's counters once no request is in flight there.

    The mock counts a completion after its write of the answer returns, which can be a moment
    after the client has read it, recorded it and exited; reading at once may miss the last.
    """
    deadline = time.monotonic() + 5.0
    while (stats := srv.stats())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.005)
    return stats


def rows(n: int, prefix: str = "kill test") -> list[dict[str, Any]]:
    return [{"id": f"k{i}", "input": f"{prefix} {i}"} for i in range(n)]


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BURSTQ_"))}
    env["OPENAI_API_KEY"] = TEST_KEY
    return env


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def check_lines(path: Path, *, torn_tail_ok: bool) -> tuple[int, bool]:
    """Every complete line is one valid record; returns (records, whether the tail is torn)."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for line in lines:
        rec = orjson.loads(line)  # raises on a torn line in the middle
        assert rec["status"] in ("completed", "failed")
    torn = tail != b""
    assert torn_tail_ok or not torn, tail[:200]
    return len(lines), torn


def wait_for(cond: Any, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            return
        assert time.monotonic() < deadline, "burstq made no progress"
        time.sleep(0.002)


def test_kill_9_and_ctrl_c_then_resume_exactly_once(tmp_path: Path) -> None:
    srv = ThreadedMockServer(MockConfig(latency=0.02, latency_jitter=0.03, seed=5)).start()
    try:
        _kill_test(tmp_path, srv)
    finally:
        srv.close()


def _kill_test(tmp_path: Path, srv: ThreadedMockServer) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(N))
    out = tmp_path / "out.jsonl"
    args = [
        "run",
        str(inp),
        "-o",
        str(out),
        "--base-url",
        srv.base_url,
        "--concurrency",
        str(CONCURRENCY),
        "--progress",
        "quiet",
        "--backoff-base",
        "0.01",
    ]
    cmd = [sys.executable, "-m", "burstcli.cli", *args]
    env = subprocess_env()
    rng = random.Random(20261127)

    logs = tmp_path / "logs"
    logs.mkdir()
    runs: list[Path] = []

    def start(extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        runs.append(logs / f"run{len(runs)}.stderr")
        with runs[-1].open("wb") as err:
            return subprocess.Popen(
                [*cmd, *extra],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def finish(proc: subprocess.Popen[bytes]) -> str:
        proc.wait(timeout=60)
        return runs[-1].read_text()

    kills = torn_tails = 0
    # 1. SIGKILL early, at a random instant of start-up or the first requests.
    proc = start()
    time.sleep(rng.uniform(0.05, 0.5))
    proc.kill()
    finish(proc)
    kills += 1
    # 2. SIGKILL after a random number of further records, at a random phase.
    for _ in range(4):
        have = complete_lines(out)
        target = have + rng.randint(20, 90)
        proc = start()
        wait_for(lambda t=target: complete_lines(out) >= t, proc)
        time.sleep(rng.uniform(0, 0.03))
        assert proc.poll() is None, "finished before the kill point"
        proc.kill()
        finish(proc)
        kills += 1
        _, torn = check_lines(out, torn_tail_ok=True)
        torn_tails += torn
    # 3. Ctrl-C once: in-flight requests finish, a resume hint, exit 130.
    have = complete_lines(out)
    proc = start(("--api-key", TEST_KEY))
    wait_for(lambda: complete_lines(out) >= have + 40, proc)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    err = finish(proc)
    assert proc.returncode == 130, err
    assert "burstq: interrupted; to resume, run the same command again:" in err
    assert "  " + shlex.join(["burstq", *args]) in err.splitlines()
    assert TEST_KEY not in err
    check_lines(out, torn_tail_ok=False)  # a clean stop leaves no torn line
    # 4. Rerun until done.
    for _ in range(3):
        proc = start()
        err = finish(proc)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, err

    n_records, torn = check_lines(out, torn_tail_ok=False)
    recs = read_jsonl(out)
    ids = [r["request_id"] for r in recs]
    assert n_records == len(recs) == N
    assert sorted(ids) == sorted(f"k{i}" for i in range(N))
    assert all(r["status"] == "completed" for r in recs)
    assert all(r["output"] == f"echo: kill test {r['request_id'][1:]}" for r in recs)

    stats = settled(srv)
    completed = stats["completed_by_prompt"]
    assert set(completed) == {f"kill test {i}" for i in range(N)}
    answered_twice = sum(c - 1 for c in completed.values())
    resent = stats["requests_total"] - N
    print(
        f"\nkill test: {N} requests, concurrency {CONCURRENCY}, {kills} x SIGKILL + 1 x "
        f"SIGINT, torn tails repaired {torn_tails}; re-sent {resent} request(s), answered "
        f"twice {answered_twice} (bound {kills * CONCURRENCY})"
    )
    assert max(completed.values()) <= 2
    assert answered_twice <= resent <= kills * CONCURRENCY

    # 5. A finished run rerun sends nothing and exits 0.
    before = settled(srv)["requests_total"]
    proc = start()
    err = finish(proc)
    assert proc.returncode == 0, err
    assert settled(srv)["requests_total"] == before
    assert read_jsonl(out) == recs


# -- in-process reruns (fast) --------------------------------------------------------------


def test_finished_run_rerun_sends_nothing(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    before = out.read_bytes()
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 0
    assert settled(srv)["requests_total"] == 30
    assert out.read_bytes() == before


def test_changed_input_is_an_incremental_rerun(tmp_path: Path, server) -> None:
    # Issue 15: no longer refused; only the new line is sent (tests/test_incremental.py has more).
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    write_jsonl(inp, rows(21))  # one more line
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 0, res.output
    assert "kept 20, dropped 0, to send 1" in res.stderr
    assert settled(srv)["requests_total"] == 21
    assert sorted(r["line"] for r in read_jsonl(out)) == list(range(1, 22))


def test_changed_output_format_is_refused(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", rows(5))
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    before = out.read_bytes()
    res = run_cli(run_args(srv, inp, out, "--output-format", "openai-batch"))
    assert res.exit_code == 2
    assert "other request options (output_format: None -> 'openai-batch')" in res.stderr
    assert settled(srv)["requests_total"] == 5
    assert out.read_bytes() == before


def test_restart_starts_over(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    write_jsonl(inp, rows(25, prefix="changed"))
    res = run_cli(run_args(srv, inp, out, "--restart"))
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == 25 and {r["output"][:13] for r in recs} == {"echo: changed"}
    assert settled(srv)["requests_total"] == 45


def test_torn_tail_is_repaired_and_only_that_request_redone(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", rows(10))
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    data = out.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    victim = orjson.loads(last)
    out.write_bytes(data[: len(data) - len(last) - 1] + last[:37])  # kill -9 mid-write
    res = run_cli(run_args(srv, inp, out, "--progress", "plain"))
    assert res.exit_code == 0
    assert f"burstq: warning: repaired a torn last line in {out} (37 bytes)" in res.stderr
    recs = read_jsonl(out)
    assert sorted(r["line"] for r in recs) == list(range(1, 11))
    stats = settled(srv)
    assert stats["requests_total"] == 11
    assert stats["completed_by_prompt"][f"kill test {victim['request_id'][1:]}"] == 2


def test_sigterm_exits_143_and_resumes(tmp_path: Path) -> None:
    with ThreadedMockServer(MockConfig(latency=0.05)) as srv:
        inp = write_jsonl(tmp_path / "in.jsonl", rows(200))
        out = tmp_path / "out.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "burstcli.cli",
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            srv.base_url,
            "--concurrency",
            "4",
            "--progress",
            "quiet",
        ]
        proc = subprocess.Popen(
            cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        wait_for(lambda: complete_lines(out) >= 10, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err.decode()
        assert b"to resume, run the same command again" in err
        n, _ = check_lines(out, torn_tail_ok=False)
        assert 10 <= n < 200
        assert settled(srv)["requests_total"] == n  # the grace period let in-flight ones finish
        res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr.decode()
        assert sorted(r["line"] for r in read_jsonl(out)) == list(range(1, 201))
        assert settled(srv)["completed_by_prompt"] == {f"kill test {i}": 1 for i in range(200)}


def test_rerun_after_a_big_last_record(tmp_path: Path, server) -> None:
    # One embedding of 5,000 dimensions is a ~100 KB record.
    srv = server()
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "small", "input": "x"},
            {
                "id": "big",
                "endpoint": "embeddings",
                "model": "text-embedding-3-small",
                "input": "y",
                "params": {"dimensions": 5000},
                "priority": 1,
            },
        ],
    )
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    before = out.read_bytes()
    assert len(before.rstrip(b"\n").rsplit(b"\n", 1)[1]) > 65536
    res = run_cli(run_args(srv, inp, out))
    assert out.read_bytes() == before, "a finished record was cut"
    assert res.exit_code == 0, res.stderr
    assert settled(srv)["requests_total"] == 2


def stdin_rows(prefix: str, n: int) -> bytes:
    return b"".join(
        orjson.dumps({"id": f"{prefix}{i}", "input": f"{prefix} {i}"}) + b"\n" for i in range(n)
    )


def test_stdin_resume_with_the_same_content(tmp_path: Path, server) -> None:
    srv = server()
    out = tmp_path / "out.jsonl"
    args = [
        "run",
        "-",
        "-o",
        str(out),
        "--base-url",
        srv.base_url,
        "--api-key",
        TEST_KEY,
        "--progress",
        "quiet",
    ]
    data = stdin_rows("s", 12)
    assert run_cli(args, input=stdin_rows("s", 7)).exit_code == 0  # an earlier, shorter feed
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:4]))  # as if killed after four records
    res = run_cli(args, input=data)
    assert res.exit_code == 0
    recs = read_jsonl(out)
    assert sorted(r["request_id"] for r in recs) == sorted(f"s{i}" for i in range(12))
    assert settled(srv)["requests_total"] == 7 + 8


def test_stdin_resume_with_other_content_is_refused(tmp_path: Path, server) -> None:
    srv = server()
    out = tmp_path / "out.jsonl"
    args = [
        "run",
        "-",
        "-o",
        str(out),
        "--base-url",
        srv.base_url,
        "--api-key",
        TEST_KEY,
        "--progress",
        "quiet",
    ]
    assert run_cli(args, input=stdin_rows("a", 5)).exit_code == 0
    before = out.read_bytes()
    res = run_cli(args, input=stdin_rows("b", 8))
    # Either refused (exit 2, nothing sent) or every line of the new stream answered; what
    # happens today is neither: b0..b4 are skipped as "done" because a0..a4 were.
    ids = sorted(r["request_id"] for r in read_jsonl(out))
    assert (
        res.exit_code == 2 and out.read_bytes() == before and settled(srv)["requests_total"] == 5
    ), (res.exit_code, ids)


def _slow_run(
    tmp_path: Path, srv: ThreadedMockServer, *extra: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out = tmp_path / "out.jsonl"
    errf = tmp_path / "stderr.txt"
    cmd = [
        sys.executable,
        "-m",
        "burstcli.cli",
        "run",
        str(inp),
        "-o",
        str(out),
        "--base-url",
        srv.base_url,
        "--concurrency",
        "4",
        "--progress",
        "quiet",
        *extra,
    ]
    with errf.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    wait_for(lambda: srv.stats()["in_flight"] >= 1, proc)
    assert proc.poll() is None
    return proc, out, errf


def test_grace_period_ends_then_exit_130_with_nothing_half_done(tmp_path: Path) -> None:
    with ThreadedMockServer(MockConfig(latency=5.0)) as srv:
        proc, out, errf = _slow_run(tmp_path, srv, "--grace", "0.3")
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        took = time.monotonic() - t
        assert proc.returncode == 130, errf.read_text()
        assert 0.25 <= took < 3.0
        assert check_lines(out, torn_tail_ok=False) == (0, False)
        stats = settled(srv)
        assert stats["requests_total"] == 1 and stats["completed_by_prompt"] == {}


def test_second_ctrl_c_skips_the_grace(tmp_path: Path) -> None:
    with ThreadedMockServer(MockConfig(latency=5.0)) as srv:
        proc, out, errf = _slow_run(tmp_path, srv)  # default grace: 10 s
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        assert proc.poll() is None  # waiting for the in-flight request
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert proc.returncode == 130, errf.read_text()
        assert time.monotonic() - t < 3.0
        assert "to resume, run the same command again" in errf.read_text()
        assert check_lines(out, torn_tail_ok=False) == (0, False)


def test_resuming_a_big_finished_output_is_fast(tmp_path: Path, server) -> None:
    n = 100_000
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(
        b"".join(orjson.dumps({"id": f"r{i}", "input": f"question {i}"}) + b"\n" for i in range(n))
    )
    out = tmp_path / "out.jsonl"
    srv = server()
    args = run_args(srv, inp, out)
    # Make OUTPUT as a finished run would: one short run writes the sidecar, then the records.
    small = write_jsonl(tmp_path / "tiny.jsonl", rows(1))
    assert run_cli(run_args(srv, small, out)).exit_code == 0
    side = tmp_path / "out.jsonl.burstq.json"
    fp = orjson.loads(side.read_bytes())
    fp.update(input=str(inp), input_sha256=hashlib.sha256(inp.read_bytes()).hexdigest())
    side.write_bytes(orjson.dumps(fp))
    out.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "request_id": f"r{i}",
                    "line": i + 1,
                    "status": "completed",
                    "output": "x",
                    "model": "gpt-4o-mini",
                    "attempts": 1,
                    "error": None,
                }
            )
            + b"\n"
            for i in range(n)
        )
    )
    before = settled(srv)["requests_total"]
    t = time.monotonic()
    res = run_cli(args)
    took = time.monotonic() - t
    print(f"\nresume of a finished {n:,}-line output: {took:.2f} s")
    assert res.exit_code == 0, res.output
    assert settled(srv)["requests_total"] == before
    assert took < 5.0
