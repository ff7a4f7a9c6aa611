"""Issue 11, at the filesystem's edges: files burstq does not own (3), one writer per OUTPUT
(4), INPUT changing under a run (5), filesystem errors (6) and Ctrl-C during the scan (8).
Runs are real: the CLI or a `python -m burstcli.cli` subprocess against the mock server."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from .conftest import TEST_KEY, read_jsonl, run_args, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def rows(n: int, prio: int | None = None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"id": f"r{i}", "input": f"q{i}"} for i in range(n)]
    if prio is not None:
        for i, r in enumerate(out):
            r["priority"] = 9 if i % 2 else 3
    return out


def spawn(argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BURSTQ_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "burstcli.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        **kw,  # type: ignore[arg-type]
    )


def wait_for(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def n_records(out: Path) -> int:
    return out.read_bytes().count(b"\n") if out.exists() else 0


# -- 3. never damage a file burstq does not own -------------------------------------------


def test_files_that_are_not_burstq_output_are_refused_untouched(tmp_path: Path, server) -> None:
    srv = server(latency=0.0)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(3))
    precious = tmp_path / "precious.csv"
    precious.write_bytes(b"id,label\n1,cat\n2,dog")  # no final newline: looks "torn"
    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(b'{"request_id": "x", "status": "completed", "line": 1}\nnot json\n')
    for victim in (precious, notes):
        before = victim.read_bytes()
        for extra in ((), ("--restart",), ("--retry-failed",)):
            res = run_cli(run_args(srv, inp, victim, *extra))
            assert res.exit_code == 2, res.output
            assert "Traceback" not in res.stderr
            assert victim.read_bytes() == before, (victim, extra)
    assert srv.stats()["requests_total"] == 0


def test_a_hard_link_to_input_is_input(tmp_path: Path, server) -> None:
    srv = server(latency=0.0)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(3))
    before = inp.read_bytes()
    link = tmp_path / "link.jsonl"
    os.link(inp, link)
    res = run_cli(run_args(srv, inp, link))
    assert res.exit_code == 2 and "OUTPUT must not be INPUT" in res.stderr
    assert inp.read_bytes() == before


# -- 4. one writer per OUTPUT -------------------------------------------------------------


def test_a_second_run_on_the_same_output_exits_at_once(tmp_path: Path, server) -> None:
    srv = server(latency=0.3)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out = tmp_path / "out.jsonl"
    argv = run_args(srv, inp, out, "--concurrency", "2")
    first = spawn(argv)
    try:
        wait_for(lambda: n_records(out) >= 2)
        t0 = time.monotonic()
        res = run_cli(argv)
        assert time.monotonic() - t0 < 3
        assert res.exit_code == 2, res.output
        assert f"{out} is being written by another burstq run (pid {first.pid})" in res.stderr
    finally:
        first.kill()  # kill -9: the kernel releases the lock
        first.communicate()
    res = run_cli(argv)
    assert res.exit_code == 0, res.output
    assert sorted(r["line"] for r in read_jsonl(out)) == list(range(1, 31))


# -- 5. INPUT changing under a run ----------------------------------------------------------


def test_input_truncated_in_place_stops_the_run_resumably(tmp_path: Path, server) -> None:
    srv = server(latency=0.1)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(40, prio=1))
    original = inp.read_bytes()
    out = tmp_path / "out.jsonl"
    proc = spawn(run_args(srv, inp, out, "--concurrency", "1"))
    wait_for(lambda: n_records(out) >= 2)
    with inp.open("r+b") as f:
        f.truncate(len(original) // 3)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert b"changed while this run was reading it" in err
    inp.write_bytes(original)  # put back: the same command resumes and completes
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 0, res.output
    assert sorted(r["line"] for r in read_jsonl(out)) == list(range(1, 41))


def test_input_replaced_by_rename_does_not_reach_the_run(tmp_path: Path, server) -> None:
    srv = server(latency=0.05)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(30, prio=1))
    out = tmp_path / "out.jsonl"
    proc = spawn(run_args(srv, inp, out, "--concurrency", "1"))
    wait_for(lambda: n_records(out) >= 2)
    new = write_jsonl(tmp_path / "new.jsonl", [{"id": f"new{i}", "input": "n"} for i in range(5)])
    os.replace(new, inp)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    recs = read_jsonl(out)
    assert sorted(r["request_id"] for r in recs) == sorted(f"r{i}" for i in range(30))


# -- 6. filesystem errors are errors --------------------------------------------------------


def test_unwritable_outputs_are_errors_with_exit_2(tmp_path: Path, server) -> None:
    srv = server(latency=0.0)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(2))
    folder = tmp_path / "adir"
    folder.mkdir()
    for out, why in (
        (folder, "it is a directory"),
        (tmp_path / "missing" / "out.jsonl", "no such directory"),
    ):
        res = run_cli(run_args(srv, inp, out))
        assert res.exit_code == 2, res.output
        assert f"Error: cannot write {out}: {why}" in res.stderr
        assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "in.jsonl"]
    assert list(folder.iterdir()) == []
    res = run_cli(run_args(srv, inp, folder), env={"BURSTQ_DEBUG": "1"})
    assert res.exit_code == 2 and "Traceback" in res.stderr  # debug keeps the exit code


def test_a_full_disk_at_start_leaves_nothing_behind(tmp_path: Path, server) -> None:
    srv = server(latency=0.0)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(2))
    out = tmp_path / "out.jsonl"

    def no_room() -> None:  # every write to a file fails, as on a full disk (EFBIG here)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    proc = spawn(run_args(srv, inp, out), preexec_fn=no_room)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert f"Error: cannot write {out}:".encode() in err and b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_non_regular_output_gets_no_sidecar(tmp_path: Path, server) -> None:
    srv = server(latency=0.0)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(3))
    res = run_cli(run_args(srv, inp, Path("/dev/null")))
    assert res.exit_code == 0, res.output
    assert not Path("/dev/null.burstq.json").exists()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    res = run_cli(run_args(srv, inp, fifo))
    reader.join(10)
    assert res.exit_code == 0, res.output
    assert len(got[0].splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "pipe"]


def test_an_input_that_is_a_directory_or_a_device_is_named_as_such(tmp_path: Path) -> None:
    for inp, why in ((tmp_path, "it is a directory"), (Path("/dev/zero"), "not a regular file")):
        for cmd in (
            ["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--simulate"],
            ["validate", str(inp)],
        ):
            res = run_cli(cmd)
            assert res.exit_code == 2, res.output
            assert f"cannot read {inp}: {why}" in res.stderr, res.stderr


# -- 8. Ctrl-C during the initial scan ------------------------------------------------------


@pytest.mark.parametrize("via", ["live", "batch"])
def test_ctrl_c_during_the_scan_of_a_large_file_stops_within_a_second(
    tmp_path: Path, via: str
) -> None:
    inp = tmp_path / "big.jsonl"
    line = orjson.dumps({"input": "a question of ordinary length, nothing more", "priority": 5})
    inp.write_bytes((line + b"\n") * 1_500_000)
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    proc = spawn(
        [
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key",
            TEST_KEY,
        ]
        + ["--progress", "quiet"]
        + (["--via", "batch"] if via == "batch" else [])
    )
    # Wait for the run to be in its scan (the sidecar is written just before it).
    wait_for(lambda: (tmp_path / "out.jsonl.burstq.json").exists())
    # Start-up plus hashing the 1.5M lines: a baseline from this run, as slow as the machine
    # is now. Scanning them (parsing every line) takes several times longer.
    before = time.monotonic() - started
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err
    # The scan checks for the signal every few thousand lines: about 0.3 s to exit on an idle
    # machine. A scan that ignored the signal would first parse all 1.5M lines, several times
    # longer than start-up and hashing took; the bound scales with how busy the runner is.
    assert took < max(3.0, 3 * before), (took, before, err)
    if via == "batch":  # stopped before planning: no batch state, no shard files
        assert not (tmp_path / "out.jsonl.batches.json").exists()
