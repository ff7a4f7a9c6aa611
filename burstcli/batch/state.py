"""Batch mode's state file, OUTPUT.batches.json: everything needed to reattach to a run's
batches (shards, their file and batch ids, requests carried to the next round). It is saved
atomically before every provider call; it never holds the API key or URL credentials.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import UsageError
from ..redact import redact

BATCH_STATE_SUFFIX = ".batches.json"
STATE_VERSION = 1


def batch_state_path(output: Path) -> Path:
    return output.with_name(output.name + BATCH_STATE_SUFFIX)


@dataclass(slots=True)
class Pending:
    """A request waiting for a shard: new, or carried to the next round after a failure."""

    id: str
    line: int
    endpoint: str
    model: str
    round: int
    bytes: int
    tokens: int
    metadata: bool = False
    list_input: bool = False
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class Shard:
    """One batch file and the batch made from it. `state` walks new -> uploaded -> creating ->
    submitted -> done; `lines` (custom_id -> input line, in file order) is dropped once done."""

    id: str
    endpoint: str
    model: str
    round: int
    lines: dict[str, int] = field(default_factory=dict)
    state: str = "new"
    file_id: str | None = None
    uploaded_at: int | None = None
    batch_id: str | None = None
    status: str | None = None
    tried: list[str] = field(default_factory=list)  # batches refused for the token limit
    bytes: int = 0
    tokens: int = 0
    metadata: bool = False  # some request has metadata: re-read it from INPUT at collection
    list_inputs: list[str] = field(default_factory=list)  # embeddings whose input is a list
    requests: int = 0

    @property
    def active(self) -> bool:
        return self.state != "done"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shard:
        return cls(**data)


@dataclass(slots=True)
class BatchState:
    """Everything needed to reattach: OUTPUT.batches.json. Never holds the API key."""

    run_id: str
    input: str
    input_sha256: str
    base_url: str
    next_shard: int = 1
    shards: list[Shard] = field(default_factory=list)
    retry: list[Pending] = field(default_factory=list)
    group_limits: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "run_id": self.run_id,
            "input": self.input,
            "input_sha256": self.input_sha256,
            "base_url": self.base_url,
            "next_shard": self.next_shard,
            "group_limits": self.group_limits,
            "shards": [s.to_json() for s in self.shards],
            "retry": [asdict(p) for p in self.retry],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchState:
        return cls(
            run_id=data["run_id"],
            input=data["input"],
            input_sha256=data["input_sha256"],
            base_url=data["base_url"],
            next_shard=data["next_shard"],
            shards=[Shard.from_json(s) for s in data["shards"]],
            retry=[Pending(**p) for p in data["retry"]],
            group_limits=dict(data.get("group_limits") or {}),
        )

    def save(self, path: Path, *, fsync: bool = False) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            # Errors carried to the next round are provider text: redacted like every message.
            f.write(redact(orjson.dumps(self.to_json()).decode()).encode())
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)


def load_state(path: Path) -> BatchState | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = orjson.loads(raw)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        return BatchState.from_json(data)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        # Not rebuildable from OUTPUT (batch ids live only here): refuse rather than resubmit
        # and pay twice.
        raise UsageError(
            f"{path} is damaged ({exc}); it records the batches of this run. "
            "Restore it, or use --restart to start over."
        ) from exc


def public_url(url: str) -> str:
    # A base URL may carry credentials (https://user:pass@host); the state file must not.
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return scheme + sep + host.rpartition("@")[2] + slash + path if sep else url
