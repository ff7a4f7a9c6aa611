"""The opt-in answer cache (`--cache PATH`): completed answers in SQLite, keyed by fingerprint.

Every run that names the cache looks each request up before it is dispatched: a hit becomes a
completed record with `cached: true`, the original usage, `cost_usd` 0 and `saved_usd` (what it
cost when it was bought), and costs no API call and no rate-limit budget. Only completed
answers are stored; failures never are. The file is stdlib sqlite3 in WAL mode, so several
burstq processes on one machine share it: readers never block, writers queue behind SQLite's
lock (busy timeout) and the first answer stored for a fingerprint wins.

Answers are kept per provider (the base URL without credentials, or "simulate"): a rehearsal
with --simulate or a local vLLM never answers for the real API. Writes are batched: a hit or a
new answer is committed within a fraction of a second (by a writer thread with its own
connection, off the event loop), or at close; one lost to a kill -9 is merely not cached
(OUTPUT, not the cache, is the record of what is done).
May import: files, models, errors.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from ..config import RunConfig
from ..errors import UsageError
from ..files import fingerprint as fpr
from ..models import Request, Result, now_iso

SCHEMA_VERSION = 1
FLUSH_AFTER = 0.2  # seconds: how long an answer may wait in memory before its commit
FLUSH_ROWS = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    provider TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    answer BLOB NOT NULL,
    cost_usd REAL,
    created_at REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    last_hit_at REAL,
    PRIMARY KEY (provider, fingerprint)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_created_at ON answers (created_at);
"""


def provider_key(base_url: str | None, simulated: bool) -> str:
    """Whose answers these are: scheme://host:port/path, no credentials, no trailing slash."""
    if simulated:
        return "simulate"
    parts = urlsplit(base_url or "https://api.openai.com/v1")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def connect(path: Path, *, create: bool = True, any_thread: bool = False) -> sqlite3.Connection:
    if not create and not path.is_file():
        raise UsageError(f"no cache at {path}")
    try:
        conn = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=not any_thread
        )
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit is atomic and never corrupts the file; only the last few
        # commits may be lost to a power cut, which costs nothing but a re-sent request.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"{path} is not a burstq cache: {exc}") from exc
    if row is None or row[0] != str(SCHEMA_VERSION):
        conn.close()
        raise UsageError(f"{path}: cache schema version {row and row[0]!r}, expected 1")
    return conn


def answer_cache(cfg: RunConfig, base_urls: list[str]) -> AnswerCache | None:
    """The cache of one run, if it asked for one: answers kept per provider (its base URL, or
    the set of --endpoints URLs, deployments of one model answering alike)."""
    if cfg.cache is None:
        return None
    provider = ",".join(sorted({provider_key(url, cfg.simulate) for url in base_urls}))
    return AnswerCache(cfg.cache, provider, deterministic_only=cfg.cache_deterministic_only)


@dataclass(slots=True)
class CacheFigures:
    hits: int = 0
    stored: int = 0
    saved_usd: float = 0.0


class AnswerCache:
    """The engine's pre-dispatch answer source and post-answer sink (see live/engine.py)."""

    def __init__(self, path: Path, provider: str, *, deterministic_only: bool = False) -> None:
        self.path = path
        self.provider = provider
        self.deterministic_only = deterministic_only
        self.figures = CacheFigures()
        self._conn = connect(path)
        self._new: list[tuple[Any, ...]] = []
        self._hit: list[tuple[float, str, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        # Commits from the event loop go to one writer thread with its own connection: an
        # insert costs ~20 us of B-tree and WAL work, which SQLite does without the GIL, and
        # a lock held by another process then waits there, not in the loop. One thread, so
        # batches commit in order; close() waits for them.
        self._writer: ThreadPoolExecutor | None = None
        self._writer_conn: sqlite3.Connection | None = None

    def lookup(self, req: Request) -> Result | None:
        if self.deterministic_only and not fpr.deterministic(req):
            return None
        fp = fpr.of(req)
        row = self._conn.execute(
            "SELECT answer, cost_usd FROM answers WHERE provider = ? AND fingerprint = ?",
            (self.provider, fp),
        ).fetchone()
        if row is None:
            return None
        try:
            ans = orjson.loads(row[0])
        except orjson.JSONDecodeError:
            return None  # a damaged row is a miss; the fresh answer does not replace it
        saved = row[1]
        self.figures.hits += 1
        if isinstance(saved, int | float):
            self.figures.saved_usd += saved
        self._hit.append((time.time(), self.provider, fp))
        self._schedule()
        return Result(
            request_id=req.id,
            line=req.line,
            status="completed",
            model=req.model,
            model_used=ans.get("model_used"),
            output=ans.get("output"),
            embedding=ans.get("embedding"),
            latency_ms=None,  # no call: a 0 would drag every latency percentile down
            attempts=0,
            usage=ans.get("usage"),
            cost_usd=0.0,
            metadata=req.metadata,
            finished_at=now_iso(),
            truncated=bool(ans.get("truncated")),
            finish_reason=ans.get("finish_reason"),
            parsed=ans.get("parsed"),
            fingerprint=fp,
            line_digest=req.line_digest,
            cached=True,
            saved_usd=saved,
        )

    def store(self, req: Request, result: Result) -> None:
        if result.status != "completed" or result.cached:
            return  # failures are never cached: the next run should try again
        if self.deterministic_only and not fpr.deterministic(req):
            return
        answer = {
            "output": result.output,
            "embedding": result.embedding,
            "model_used": result.model_used,
            "usage": result.usage,
            "finish_reason": result.finish_reason,
            "truncated": result.truncated,
            "parsed": result.parsed,  # a structured answer, validated when it was bought
        }
        self._new.append(
            (
                self.provider,
                fpr.of(req),
                req.endpoint,
                req.model,
                orjson.dumps(answer),
                result.cost_usd,
                time.time(),
            )
        )
        self.figures.stored += 1
        self._schedule()

    def _schedule(self) -> None:
        if len(self._new) + len(self._hit) >= FLUSH_ROWS:
            self.flush(background=True)
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # outside a loop (tests): close() commits
            self._timer = loop.call_later(FLUSH_AFTER, self.flush, True)

    def flush(self, background: bool = False) -> None:
        """Commit what waits: in the writer thread when `background`, else here and now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not (self._new or self._hit):
            return
        new, hit = self._new, self._hit
        self._new, self._hit = [], []
        if not background:
            _commit(self._conn, new, hit)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="burstq-cache")
        self._writer.submit(self._write, new, hit)

    def _write(self, new: list[tuple[Any, ...]], hit: list[tuple[float, str, str]]) -> None:
        # In the writer thread: its connection is opened there too (opening writes the schema
        # row, which may wait for another process's lock).
        if self._writer_conn is None:
            try:
                self._writer_conn = connect(self.path, any_thread=True)
            except (UsageError, sqlite3.Error):
                return  # like a failed commit: cache entries lost, never records
        _commit(self._writer_conn, new, hit)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # the batches handed over are committed first
            if self._writer_conn is not None:
                self._writer_conn.close()
            self._writer, self._writer_conn = None, None
        self.flush()
        self._conn.close()


def _commit(
    conn: sqlite3.Connection, new: list[tuple[Any, ...]], hit: list[tuple[float, str, str]]
) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO answers (provider, fingerprint, endpoint, model, answer, cost_usd,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            new,
        )
        conn.executemany(
            "UPDATE answers SET hits = hits + 1, last_hit_at = ? "
            "WHERE provider = ? AND fingerprint = ?",
            hit,
        )
        conn.execute("COMMIT")
    except sqlite3.Error:
        # A full disk or a lock held too long costs cache entries, never records.
        if conn.in_transaction:
            conn.execute("ROLLBACK")


# -- `burstq cache stats|prune` ---------------------------------------------------------------

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '2w' or '45s' in seconds."""
    m = _AGE.match(text)
    if not m:
        raise UsageError(f"--older-than: {text!r} is not an age like 30d, 12h, 90m or 2w")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def stats(path: Path) -> dict[str, Any]:
    conn = connect(path, create=False)
    try:
        total = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(hits), 0), MIN(created_at), MAX(created_at),"
            " COALESCE(SUM(hits * cost_usd), 0), COALESCE(SUM(cost_usd), 0) FROM answers"
        ).fetchone()
        models: dict[str, Any] = {}
        for model, endpoint, n, hits, saved in conn.execute(
            "SELECT model, endpoint, COUNT(*), SUM(hits), COALESCE(SUM(hits * cost_usd), 0)"
            " FROM answers GROUP BY model, endpoint ORDER BY COUNT(*) DESC, model"
        ):
            models[f"{model} ({endpoint})"] = {"answers": n, "hits": hits, "saved_usd": saved}
        providers = dict(
            conn.execute("SELECT provider, COUNT(*) FROM answers GROUP BY provider").fetchall()
        )
    finally:
        conn.close()
    size = sum(p.stat().st_size for p in _files(path))
    return {
        "path": str(path),
        "answers": total[0],
        "hits": total[1],
        "saved_usd": total[4],
        "bought_usd": total[5],
        "oldest": _iso(total[2]),
        "newest": _iso(total[3]),
        "bytes": size,
        "providers": providers,
        "models": models,
    }


def _files(path: Path) -> Iterator[Path]:
    for suffix in ("", "-wal", "-shm"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            yield p


def prune(path: Path, older_than: float, *, now: float | None = None) -> int:
    """Delete answers bought more than `older_than` seconds ago; returns how many."""
    conn = connect(path, create=False)
    try:
        cutoff = (time.time() if now is None else now) - older_than
        cur = conn.execute("DELETE FROM answers WHERE created_at < ?", (cutoff,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return cur.rowcount
    finally:
        conn.close()
