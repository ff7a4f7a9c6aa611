"""Shared fixtures: a real mock server on loopback and a CLI runner with a clean environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner, Result

from burstcli.cli import app
from burstcli.mock.server import MockConfig, ThreadedMockServer

TEST_KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may pick up a real key, base URL or BURSTQ_* option from the developer's shell.
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "BURSTQ_")):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[Callable[..., ThreadedMockServer]]:
    """Factory: start a mock server with the given MockConfig fields; closed after the test."""
    started: list[ThreadedMockServer] = []

    def make(**config: Any) -> ThreadedMockServer:
        srv = ThreadedMockServer(MockConfig(**config)).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.close()


def write_jsonl(path: Path, rows: Sequence[dict[str, Any] | str]) -> Path:
    with path.open("wb") as f:
        for row in rows:
            f.write((row.encode() if isinstance(row, str) else orjson.dumps(row)) + b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def run_cli(
    args: Sequence[str], *, input: str | bytes | None = None, env: dict[str, str] | None = None
) -> Result:
    runner = CliRunner()
    return runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)


def run_args(srv: ThreadedMockServer, inp: Path, out: Path, *extra: str) -> list[str]:
    """A `burstq run` against the mock with fast backoff and plain progress."""
    return [
        "run",
        str(inp),
        "-o",
        str(out),
        "--base-url",
        srv.base_url,
        "--api-key",
        TEST_KEY,
        "--backoff-base",
        "0.01",
        "--progress",
        "quiet",
        *extra,
    ]
